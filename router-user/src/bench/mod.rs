//! `switchyard bench ...`: measurements whose figures go into `docs/benchmarks.md`.
//! Timings are measured here, never asserted in tests.
pub mod dataplane;
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
    /// Routing policies side by side on a simulated cluster (virtual time): latency and
    /// throughput against request rate, markdown + JSON + plots.
    Sim(Box<sim::cli::SimBenchArgs>),
    /// `Scheduler::pick` latency at 16, 256 and 2,048 endpoints.
    Pick(pick::PickBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Dataplane(args) => dataplane::run(args).await,
        BenchCommand::Sim(args) => sim::cli::run(*args).await,
        BenchCommand::Pick(args) => pick::run(args).await,
    }
}
