//! `cargo xtask test`: the whole check suite CI runs.
use std::{path::Path, process::Command};

use anyhow::Context as _;
use clap::Args;

use crate::{cargo, nightly_cargo, run_step};

#[derive(Args)]
pub struct TestArgs {
    /// Skip the fmt and clippy steps (quick local iteration).
    #[arg(long)]
    no_lint: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    if !args.no_lint {
        run_step("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
        run_step(
            "clippy (userspace)",
            cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "router-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        // The BPF crate is linted apart: with the userspace crates in the same invocation,
        // feature unification pulls std (via aya) into router-common and the panic handler
        // clashes. panic=abort because unwinding needs std.
        run_step(
            "clippy (bpf)",
            nightly_cargo().args([
                "clippy",
                "--package",
                "router-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
                "-C",
                "panic=abort",
                "-Zpanic_abort_tests",
            ]),
        )?;
    }
    prepare_kernel_mounts();
    run_step(
        "unit and integration tests",
        cargo().args(["test", "--workspace", "--exclude", "router-ebpf"]),
    )
}

/// The dataplane's integration tests need bpffs at /sys/fs/bpf; mount it when we can (root)
/// and it is missing. The tests themselves decide whether they can run and say why not.
fn prepare_kernel_mounts() {
    let bpffs = Path::new("/sys/fs/bpf");
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.split(' ').nth(2) == Some("bpf"))
    });
    if mounted || !is_root() || !bpffs.exists() {
        return;
    }
    let result = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .context("mount bpffs");
    match result {
        Ok(status) if status.success() => eprintln!("xtask: mounted bpffs on /sys/fs/bpf"),
        Ok(status) => eprintln!("xtask: mounting bpffs on /sys/fs/bpf failed: {status}"),
        Err(err) => eprintln!("xtask: {err:#}"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
