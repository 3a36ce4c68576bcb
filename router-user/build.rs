//! Builds the BPF object (router-ebpf) for the host's endianness with the nightly toolchain and
//! bpf-linker (`cargo xtask setup` installs both); `include_bytes_aligned!` embeds it.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    // aya-build forwards every line the inner cargo prints as a build warning; keep it to errors.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../router-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize()?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "router-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
