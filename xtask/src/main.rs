//! Project automation: `cargo xtask setup | test | demo`.
//!
//! Each command installs what it needs first (nightly rust-src, bpf-linker), so a fresh machine
//! needs nothing but rustup and cargo.
mod setup;
mod test;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Switchyard project automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the nightly toolchain with rust-src and bpf-linker (idempotent).
    Setup,
    /// Setup, then fmt check, clippy (userspace with -D warnings, BPF crate apart), unit tests and
    /// the root-only integration tests.
    Test(test::TestArgs),
    /// Setup, then run the whole system on loopback with simulated model servers.
    Demo {
        /// Extra arguments passed to `switchyard demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Test(args) => setup::run().and_then(|()| test::run(&args)),
        Task::Demo { args } => setup::run().and_then(|()| demo(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--package",
        "router-user",
        "--bin",
        "switchyard",
        "--",
        "--log",
        "warn",
        "demo",
    ]);
    cmd.args(args);
    run_step("demo", &mut cmd)
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// `cargo` from the environment cargo gave us, run in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo` of the nightly toolchain (through rustup), run in the workspace root.
pub(crate) fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &setup::nightly(), "cargo"]);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs one step, printing its name and duration; a non-zero exit fails the task.
pub(crate) fn run_step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: ── {name}: {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {name}"))?;
    eprintln!("xtask: ── {name}: {status} in {:.1?}", started.elapsed());
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
