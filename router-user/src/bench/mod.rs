//! `switchyard bench ...`: measurements whose figures go into `docs/benchmarks.md`.
//! Timings are measured here, never asserted in tests.
pub mod dataplane;
pub mod metrics;
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
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Dataplane(args) => dataplane::run(args).await,
    }
}
