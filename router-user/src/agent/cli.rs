//! `switchyard agent [flags]` (run the node agent) and `switchyard agent snapshot` (one reading).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::config::{AgentSettings, EngineSetting, RunArgs};
use super::endpoints::{GpuMapping, PodDiscovery, static_endpoints};
use super::gpus::{GpuOptions, GpuSource};
use super::link::LinkConfig;
use super::run::{AgentConfig, Discovery, start};
use super::score::ScoreParams;
use super::snapshot;
use super::verdict::VerdictParams;
use crate::clock::{Clock, Micros, SystemClock};
use crate::dataplane::DEFAULT_PIN_ROOT;
use crate::k8s::{NodePodWatchConfig, run_node_pod_watcher};
use crate::telemetry::gpu_source::GpuTelemetryArgs;
use crate::telemetry::nvml::NvmlOptions;
use crate::telemetry::pods::ProcRoot;
use crate::telemetry::scrape::{ScrapeConfig, ScrapeTarget};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// One reading of the node's model servers and GPUs, like nvidia-smi: a table, or --json.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Model servers, `IP:PORT[/PATH][@ENGINE]`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<ScrapeTarget>,
    /// auto (detected), vllm, sglang, trtllm or triton.
    #[arg(long, default_value = "auto", env = "SWITCHYARD_ENGINE")]
    pub engine: EngineSetting,
    #[command(flatten)]
    pub gpu: GpuTelemetryArgs,
    /// `ADDR=INDEX[,INDEX...]`: the GPUs an endpoint runs on (NVML).
    #[arg(long = "gpu-map")]
    pub gpu_map: Vec<GpuMapping>,
    /// The host's /proc (GPU process → pod).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where the dataplane is pinned (live connection counts, when readable).
    #[arg(long, env = "SWITCHYARD_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Budget of each scrape.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AgentCommand::Snapshot(snapshot)) => run_snapshot(snapshot).await,
        None => run_agent(&args.run).await,
    }
}

async fn run_snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let endpoints = static_endpoints(&args.endpoints, args.engine.0, &args.gpu_map);
    let options = gpu_options(&args.gpu, ProcRoot::new(&args.proc_root));
    let addrs: Vec<_> = endpoints.iter().map(|e| e.addr()).collect();
    let source = GpuSource::select(&options, &addrs, clock.clone())?;
    let reading = snapshot::take(
        &endpoints,
        &source,
        args.timeout,
        Some(&args.pin_root),
        clock.as_ref(),
    )
    .await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reading)?);
    } else {
        print!("{}", snapshot::render(&reading));
    }
    Ok(())
}

fn gpu_options(args: &GpuTelemetryArgs, proc_root: ProcRoot) -> GpuOptions {
    let mut nvml = NvmlOptions::default();
    if !args.nvml_libraries.is_empty() {
        nvml.library_paths = args
            .nvml_libraries
            .iter()
            .map(|p| p.clone().into_os_string())
            .collect();
    }
    GpuOptions {
        mode: args.telemetry,
        sim_endpoints: args.sim_endpoints.clone(),
        sim_timeout: args.sim_timeout,
        nvml,
        proc_root,
    }
}

/// The host name, for a node name outside Kubernetes.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn run_agent(args: &RunArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    // The agent's work is many small wake-ups (a scrape per endpoint, reports, passes, counter
    // reads) that each take microseconds; on one thread they cost no cross-thread wake-ups,
    // which on a busy node cost more than the work itself (docs/benchmarks.md, Node agent).
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("switchyard-agent".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(run_agent_here(settings)));
            let _ = done_tx.send(result);
        })
        .context("cannot start the agent's thread")?;
    done.await
        .context("the agent's thread ended without a result")?
}

async fn run_agent_here(settings: AgentSettings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (config, watcher) = agent_config(settings).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    tracing::info!(node = %config.node, "starting the node agent");
    let agent = start(config, clock, shutdown.clone()).await?;
    tokio::spawn(cancel_on_signal(shutdown));
    let result = agent.wait().await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    result.context("the agent failed")
}

/// Cancels `shutdown` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    shutdown.cancel();
}

/// Builds the agent's configuration (and starts the pod watcher in Kubernetes).
pub async fn agent_config(
    settings: AgentSettings,
) -> anyhow::Result<(AgentConfig, Option<tokio::task::JoinHandle<()>>)> {
    let node = settings.node_name.clone().unwrap_or_else(hostname);
    let (discovery, watcher) = if !settings.endpoints.is_empty() {
        let endpoints = static_endpoints(&settings.endpoints, settings.engine, &settings.gpu_map);
        (Discovery::Static(endpoints), None)
    } else if let Some(node_name) = &settings.node_name {
        let client = kube::Client::try_default()
            .await
            .context("no --endpoints, so the agent watches this node's pods: cannot reach the Kubernetes API (in-cluster config or kubeconfig)")?;
        let (pods, task) = run_node_pod_watcher(client, NodePodWatchConfig::new(node_name.clone()));
        let discovery = PodDiscovery {
            selector: settings.endpoint_selector.clone(),
            ports: settings.endpoint_ports.clone(),
            engine: settings.engine,
        };
        tracing::info!(node = %node_name, selector = %discovery.selector, "model servers: this node's pods");
        (Discovery::Pods { pods, discovery }, Some(task))
    } else {
        bail!(
            "no model servers to watch: give --endpoints IP:PORT,... (static), or --node-name NODE \
             (Kubernetes: the model-server pods of this node)"
        );
    };
    let scrape = ScrapeConfig {
        interval: settings.scrape_interval,
        timeout: settings.scrape_timeout,
        server_side_filter: settings.server_side_filter,
        ..ScrapeConfig::default()
    };
    scrape.validate()?;
    let mut nvml = NvmlOptions::default();
    if !settings.nvml_libraries.is_empty() {
        nvml.library_paths = settings
            .nvml_libraries
            .iter()
            .map(|p| p.clone().into_os_string())
            .collect();
    }
    let link = match &settings.epp {
        Some(epp) => Some(LinkConfig {
            tls: settings.tls.files()?,
            tls_server_name: settings.tls_server_name.clone(),
            report_interval: settings.report_interval,
            ..LinkConfig::new(epp.clone(), node.clone(), rand::random::<u64>() | 1)
        }),
        None => {
            if settings.tls.files()?.is_some() {
                tracing::warn!("--tls-* given without --epp: nothing to secure");
            }
            None
        }
    };
    let micros = |d: Duration| d.as_micros() as Micros;
    let config = AgentConfig {
        node,
        discovery,
        pools: settings.pools.clone(),
        discover_pools: settings.epp_pools,
        scrape,
        gpu: GpuOptions {
            mode: settings.telemetry,
            sim_endpoints: settings.sim_endpoints.clone(),
            sim_timeout: settings.sim_timeout,
            nvml,
            proc_root: ProcRoot::new(&settings.proc_root),
        },
        gpu_interval: settings.gpu_interval,
        connections_interval: Duration::from_millis(50),
        score: ScoreParams {
            load_stale_after: micros(settings.load_stale_after),
            cluster_fresh_for: micros(settings.cluster_fresh_for),
            cluster_half_life: micros(settings.cluster_half_life),
            ..ScoreParams::default()
        },
        verdict: VerdictParams {
            unreachable_after: micros(settings.unreachable_after),
            ..VerdictParams::default()
        },
        cgroup: settings.cgroup.clone(),
        pin_root: settings.pin_root.clone(),
        link,
        http: Some(settings.metrics),
        warmup: Duration::from_secs(1),
    };
    Ok((config, watcher))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    use super::*;

    fn agent(args: &[&str]) -> AgentArgs {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|err| panic!("{err}"));
        match cli.command {
            Command::Agent(args) => *args,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn the_flags_the_chart_passes_parse() {
        let args = agent(&[
            "switchyard",
            "--log",
            "info",
            "--log-format",
            "json",
            "agent",
            "--node-name",
            "gpu-7",
            "--epp",
            "sy-epp.default.svc:9002",
            "--telemetry",
            "auto",
            "--metrics-port",
            "9091",
        ]);
        assert!(args.command.is_none());
        let settings = args.run.resolve().unwrap();
        assert_eq!(settings.node_name.as_deref(), Some("gpu-7"));
        assert_eq!(settings.epp.as_deref(), Some("sy-epp.default.svc:9002"));
        assert_eq!(settings.metrics.port(), 9091);
    }

    #[test]
    fn snapshot_is_a_subcommand_with_its_own_flags() {
        let args = agent(&[
            "switchyard",
            "agent",
            "snapshot",
            "--endpoints",
            "127.0.0.1:8001,127.0.0.1:8002",
            "--json",
        ]);
        let Some(AgentCommand::Snapshot(snapshot)) = args.command else {
            panic!("expected the snapshot subcommand");
        };
        assert_eq!(snapshot.endpoints.len(), 2);
        assert!(snapshot.json);
        assert!(
            Cli::try_parse_from(["switchyard", "agent", "snapshot"]).is_err(),
            "endpoints are required"
        );
    }

    #[tokio::test]
    async fn without_endpoints_or_node_the_agent_says_what_to_give() {
        let err = agent_config(RunArgs::default().resolve().unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("--endpoints"), "{err}");
    }
}
