//! `cargo xtask setup`: the eBPF toolchain, installed idempotently.
//!
//! - the nightly toolchain with `rust-src` (BPF targets are built with `-Z build-std=core`);
//! - `bpf-linker`, linked against the libLLVM inside the nightly sysroot, so no system LLVM is
//!   needed and its major version always matches rustc's. A stamp file records what was built;
//!   a second run only checks it.
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::run_step;

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

/// The nightly toolchain used for BPF (override with EBPF_NIGHTLY, e.g. `nightly-2026-05-19`).
pub fn nightly() -> String {
    std::env::var("EBPF_NIGHTLY").unwrap_or_else(|_| NIGHTLY.to_string())
}

pub fn run() -> anyhow::Result<()> {
    let nightly = nightly();
    ensure_components("stable", &["rustfmt", "clippy"])?;
    ensure_nightly(&nightly)?;
    ensure_bpf_linker(&nightly)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_nightly(nightly: &str) -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs)")?;
    if !toolchains.lines().any(|line| line.starts_with(nightly)) {
        run_step(
            "install nightly",
            Command::new("rustup").args(["toolchain", "install", nightly, "--profile", "minimal"]),
        )?;
    }
    ensure_components(nightly, &["rust-src", "clippy"])
}

/// Adds the rustup components a toolchain lacks (the active toolchain's name is `stable` for a
/// default rustup install; a pinned toolchain is left to rust-toolchain files).
fn ensure_components(toolchain: &str, wanted: &[&str]) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    for component in wanted {
        if !installed.lines().any(|line| line.starts_with(component)) {
            run_step(
                &format!("install {component} ({toolchain})"),
                Command::new("rustup").args([
                    "component",
                    "add",
                    component,
                    "--toolchain",
                    toolchain,
                ]),
            )?;
        }
    }
    Ok(())
}

fn ensure_bpf_linker(nightly: &str) -> anyhow::Result<()> {
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args([&format!("+{nightly}"), "--print", "sysroot"]))?.trim(),
    );
    let lib_dir = sysroot.join("lib");
    let llvm_so = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: cannot build bpf-linker",
                lib_dir.display()
            )
        })?;
    let llvm_major = llvm_so
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("libLLVM.so."))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|major| !major.is_empty())
        .with_context(|| format!("cannot read the LLVM version from {}", llvm_so.display()))?
        .to_string();

    let shim = std::env::var_os("BPF_LLVM_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/bpf-linker-llvm")
        });
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major}");
    let stamp = shim.join("installed");
    let linker_runs = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if linker_runs && fs::read_to_string(&stamp).is_ok_and(|have| have.trim() == want) {
        eprintln!("xtask: setup ok: nightly + rust-src, {want}");
        return Ok(());
    }

    // bpf-linker's build looks for `libLLVM.so` under LLVM_PREFIX/lib and keeps that directory
    // in its rpath, so the shim directory must stay after the install.
    let shim_lib = shim.join("lib");
    fs::create_dir_all(&shim_lib)
        .with_context(|| format!("cannot create {}", shim_lib.display()))?;
    for name in [
        "libLLVM.so".to_string(),
        llvm_so
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    ] {
        let link = shim_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_so, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    run_step(
        "install bpf-linker (about a minute)",
        Command::new("cargo").env("LLVM_PREFIX", &shim).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ]),
    )?;
    output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)")?;
    fs::write(&stamp, format!("{want}\n"))
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    eprintln!("xtask: installed {want}");
    Ok(())
}
