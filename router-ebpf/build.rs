use which::which;

/// Building this crate depends on the `bpf-linker` binary, which cargo cannot track as an
/// artifact dependency; rebuild whenever that binary changes (as aya-template does).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
