//! `switchyard bench ...`: measurements whose figures go into `docs/benchmarks.md`.
//! Timings are measured here, never asserted in tests.
pub mod agent;
pub mod dataplane;

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
    /// The node agent: its CPU per endpoint and how fast a load change reaches the kernel's
    /// map (root for the latency).
    Agent(agent::AgentBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Dataplane(args) => dataplane::run(args).await,
        BenchCommand::Agent(args) => agent::run(args).await,
    }
}
