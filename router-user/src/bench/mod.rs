//! `switchyard bench ...`: measurements whose figures go into `docs/benchmarks.md`.
//! Timings are measured here, never asserted in tests.
pub mod agent;
pub mod dataplane;
pub mod extproc;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cost the eBPF dataplane adds to connect() (root): VIP through the programs vs direct.
    Dataplane(dataplane::DataplaneBenchArgs),
    /// Latency and CPU the ext-proc endpoint picker adds per request (loopback, open loop).
    Extproc(extproc::ExtprocBenchArgs),
    /// The node agent: its CPU per endpoint and how fast a load change reaches the kernel's
    /// map (root for the latency).
    Agent(agent::AgentBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Dataplane(args) => dataplane::run(args).await,
        // Runs its own runtimes (picker and client apart, for CPU accounting) on a plain thread.
        BenchCommand::Extproc(args) => tokio::task::spawn_blocking(move || extproc::run(args))
            .await
            .map_err(|err| anyhow::anyhow!("benchmark thread failed: {err}"))?,
        BenchCommand::Agent(args) => agent::run(args).await,
    }
}
