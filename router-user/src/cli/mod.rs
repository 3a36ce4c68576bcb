//! The `switchyard` command line: one subcommand per part of the system.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::{self, LogArgs};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "GPU-aware inference router for Kubernetes: node agent, endpoint picker, proxy, eBPF dataplane"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// eBPF connect-time steering: attach programs, program pools, show live connection counts.
    Dataplane(crate::dataplane::cli::DataplaneArgs),
    /// Print the CustomResourceDefinitions (InferencePool, InferenceObjective) as YAML.
    Crdgen(crate::k8s::cli::CrdgenArgs),
    /// Measurements: `bench dataplane` (connect cost of steering), `bench sim` (routing
    /// policies on a simulated cluster), `bench pick` (scheduler latency).
    Bench(crate::bench::BenchArgs),
    /// Self-contained demo (root): steer a weighted pool in a temporary cgroup and show where
    /// connections went.
    Demo(crate::demo::DemoArgs),
    /// What the node agent senses: scrape model servers, check a metrics page, read the GPUs.
    Telemetry(crate::telemetry::cli::TelemetryArgs),
    /// Simulated vLLM / SGLang model server (OpenAI API, /metrics, GPU view, fault injection).
    Sim(crate::sim::cli::SimArgs),
}

/// Parses arguments, runs the subcommand on a tokio runtime, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dataplane(args) => crate::dataplane::cli::run(args).await,
        Command::Crdgen(args) => crate::k8s::cli::run_crdgen(args),
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Telemetry(args) => crate::telemetry::cli::run(args).await,
        Command::Sim(args) => crate::sim::cli::run(args).await,
    }
}
