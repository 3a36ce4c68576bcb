//! `switchyard bench ...`: measurements whose figures go into `docs/benchmarks.md`.
//! Timings are measured here, never asserted in tests.
pub mod agent;
pub mod cpu;
pub mod dataplane;
pub mod extproc;
pub mod live;
pub mod metrics;
pub mod pick;
pub mod report;
pub mod sim;
pub mod workload;

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
    /// Routers side by side on real processes over loopback: direct, switchyard proxy,
    /// switchyard EPP behind a minimal gateway, sglang-router (latency, throughput, prefix
    /// hits, router CPU).
    Live(Box<live::LiveBenchArgs>),
    /// Routing policies side by side on a simulated cluster (virtual time): latency and
    /// throughput against request rate, markdown + JSON + plots.
    Sim(Box<sim::cli::SimBenchArgs>),
    /// `Scheduler::pick` latency at 16, 256 and 2,048 endpoints.
    Pick(pick::PickBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Dataplane(args) => dataplane::run(args).await,
        // Runs its own runtimes (picker and client apart, for CPU accounting) on a plain thread.
        BenchCommand::Extproc(args) => tokio::task::spawn_blocking(move || extproc::run(args))
            .await
            .map_err(|err| anyhow::anyhow!("benchmark thread failed: {err}"))?,
        BenchCommand::Agent(args) => agent::run(args).await,
        BenchCommand::Live(args) => live::run(*args).await,
        BenchCommand::Sim(args) => sim::cli::run(*args).await,
        BenchCommand::Pick(args) => pick::run(args).await,
    }
}
