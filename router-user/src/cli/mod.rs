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
    /// The node agent: scores model servers and GPUs, programs the eBPF dataplane, reports to
    /// the EPP. `agent snapshot` prints one reading.
    Agent(Box<crate::agent::cli::AgentArgs>),
    /// eBPF connect-time steering: attach programs, program pools, show live connection counts.
    Dataplane(crate::dataplane::cli::DataplaneArgs),
    /// Print the CustomResourceDefinitions (InferencePool, InferenceObjective) as YAML.
    Crdgen(crate::k8s::cli::CrdgenArgs),
    /// Measurements: `bench sim` (routing policies on a simulated cluster), `bench pick`
    /// (scheduler latency), `bench extproc` (endpoint-picker latency and CPU), `bench agent`
    /// (agent CPU and change-to-map latency), `bench dataplane` (connect cost of steering).
    Bench(crate::bench::BenchArgs),
    /// The whole system on loopback (`cargo xtask demo`): simulated servers, the node agent, the
    /// endpoint picker, the eBPF dataplane (as root) and the proxy with each policy, then tables
    /// of where requests went and the latency they got.
    Demo(crate::demo::DemoArgs),
    /// What the node agent senses: scrape model servers, check a metrics page, read the GPUs.
    Telemetry(crate::telemetry::cli::TelemetryArgs),
    /// Simulated vLLM / SGLang model server (OpenAI API, /metrics, GPU view, fault injection).
    Sim(crate::sim::cli::SimArgs),
    /// Endpoint picker for Envoy (ext-proc, Gateway API Inference Extension protocol).
    Epp(Box<crate::extproc::cli::EppArgs>),
    /// OpenAI-compatible proxy running the same scheduler in-process (no Envoy needed).
    Proxy(Box<crate::proxy::cli::ProxyArgs>),
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
        Command::Agent(args) => crate::agent::cli::run(*args).await,
        Command::Dataplane(args) => crate::dataplane::cli::run(args).await,
        Command::Crdgen(args) => crate::k8s::cli::run_crdgen(args),
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Telemetry(args) => crate::telemetry::cli::run(args).await,
        Command::Sim(args) => crate::sim::cli::run(args).await,
        Command::Epp(args) => crate::extproc::cli::run(*args).await,
        Command::Proxy(args) => crate::proxy::cli::run(*args).await,
    }
}
