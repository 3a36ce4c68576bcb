//! Build steps:
//! - the BPF object (router-ebpf) for the host's endianness, with the nightly toolchain and
//!   bpf-linker (`cargo xtask setup` installs both); `include_bytes_aligned!` embeds it;
//! - the gRPC schema `proto/switchyard/v1/*.proto` (node reports), parsed by protox (pure Rust,
//!   no `protoc` on the machine) and turned into Rust by tonic-prost-build.
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    compile_protos(&manifest_dir.join("../proto"))?;
    build_ebpf(&manifest_dir)
}

fn compile_protos(proto_root: &Path) -> anyhow::Result<()> {
    let proto_root = proto_root.canonicalize()?;
    let files = [proto_root.join("switchyard/v1/node_reports.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

fn build_ebpf(manifest_dir: &Path) -> anyhow::Result<()> {
    // aya-build forwards every line the inner cargo prints as a build warning; keep it to errors.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let ebpf_dir = manifest_dir.join("../router-ebpf").canonicalize()?;
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
