//! `switchyard telemetry ...`: look at what the sensing layer sees, one shot at a time.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::clock::{Clock, SystemClock};
use crate::telemetry::engines::LoadNormalizer;
use crate::telemetry::gpu_source::{GpuTelemetryArgs, select_telemetry};
use crate::telemetry::health::{GpuHealth, HealthPolicy, assess};
use crate::telemetry::load::EngineKind;
use crate::telemetry::pods::{ProcRoot, attribute_gpus};
use crate::telemetry::prom;
use crate::telemetry::scrape::{ScrapeArgs, ScrapeTarget, Scraper, scrape_once};

#[derive(Debug, Args)]
pub struct TelemetryArgs {
    #[command(subcommand)]
    pub command: TelemetryCommand,
}

#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Scrape model servers once and print their normalised load as JSON lines.
    Scrape {
        /// `IP:PORT[/PATH][@ENGINE]`, e.g. `10.0.3.7:8000@vllm`.
        #[arg(required = true)]
        targets: Vec<ScrapeTarget>,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Scrape model servers continuously; print each endpoint's status once a second.
    Watch {
        /// `IP:PORT[/PATH][@ENGINE]`, e.g. `10.0.3.7:8000@vllm`.
        #[arg(required = true)]
        targets: Vec<ScrapeTarget>,
        #[command(flatten)]
        cadence: ScrapeArgs,
        /// Stop after this long (default: until interrupted).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Check a saved metrics page: every line strictly, then the engine's normalisation.
    Check {
        file: PathBuf,
        /// The engine; detected from the metric names when omitted.
        #[arg(long)]
        engine: Option<EngineKind>,
    },
    /// Read the GPUs once: samples, health, pods using them, errors.
    Gpu {
        #[command(flatten)]
        source: GpuTelemetryArgs,
        /// Where the host's /proc is (`/host/proc` in the agent's container).
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
    },
}

pub async fn run(args: TelemetryArgs) -> anyhow::Result<()> {
    match args.command {
        TelemetryCommand::Scrape { targets, timeout } => scrape(targets, timeout).await,
        TelemetryCommand::Watch {
            targets,
            cadence,
            duration,
        } => watch(targets, &cadence, duration).await,
        TelemetryCommand::Check { file, engine } => check(&file, engine),
        TelemetryCommand::Gpu { source, proc_root } => gpu(&source, proc_root).await,
    }
}

async fn scrape(targets: Vec<ScrapeTarget>, timeout: Duration) -> anyhow::Result<()> {
    let results = futures::future::join_all(
        targets
            .iter()
            .map(|target| scrape_once(target, timeout, &SystemClock)),
    )
    .await;
    let mut failed = 0;
    for (target, result) in targets.iter().zip(results) {
        let line = match result {
            Ok(load) => json!({ "target": target.to_string(), "load": load }),
            Err(err) => {
                failed += 1;
                json!({ "target": target.to_string(), "error": err.to_string() })
            }
        };
        println!("{line}");
    }
    anyhow::ensure!(failed == 0, "{failed} of {} scrapes failed", targets.len());
    Ok(())
}

async fn watch(
    targets: Vec<ScrapeTarget>,
    cadence: &ScrapeArgs,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let scraper = Scraper::spawn(cadence.config(targets), Arc::clone(&clock))?;
    let stop = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = clock.now();
        for status in scraper.statuses() {
            let age_ms = status.load.as_ref().map(|load| load.age(now) / 1_000);
            println!(
                "{}",
                json!({
                    "target": status.target.to_string(),
                    "engine": status.engine,
                    "age_ms": age_ms,
                    "load": status.load,
                    "consecutive_failures": status.scrape.consecutive_failures,
                    "latency_us": status.scrape.latency,
                    "last_error": status.scrape.last_error.map(|(_, message)| message),
                })
            );
        }
    }
}

fn check(file: &PathBuf, engine: Option<EngineKind>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let summary = prom::parse_all(&text, |_| {}).with_context(|| file.display().to_string())?;
    let load = LoadNormalizer::new(engine)
        .normalize(&text, SystemClock.now())
        .with_context(|| file.display().to_string())?;
    println!(
        "{}",
        json!({
            "lines": summary.lines,
            "samples": summary.samples,
            "eof": summary.saw_eof,
            "load": load,
        })
    );
    Ok(())
}

async fn gpu(source: &GpuTelemetryArgs, proc_root: PathBuf) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let selection = select_telemetry(source.telemetry, &source.options(Arc::clone(&clock)))?;
    println!("{}", json!({ "telemetry": selection.state.to_string() }));
    let Some(backend) = selection.backend else {
        return Ok(());
    };
    let readings = backend.sample().await;
    let now = clock.now();
    let attributions = attribute_gpus(&readings.samples, &ProcRoot::new(proc_root), |_| None::<()>);
    for (sample, attribution) in readings.samples.iter().zip(&attributions) {
        let health = match assess(sample, None, now, &HealthPolicy::default()) {
            GpuHealth::Healthy => "healthy".to_owned(),
            GpuHealth::Degraded(reasons) => format!(
                "degraded: {}",
                reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            GpuHealth::Unhealthy(reason) => format!("unhealthy: {reason}"),
        };
        let pods: Vec<_> = attribution
            .pods
            .iter()
            .map(|usage| {
                json!({
                    "pod_uid": usage.pod.pod_uid,
                    "container_id": usage.pod.container_id,
                    "pids": usage.pids,
                    "used_memory_bytes": usage.used_memory_bytes,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "gpu": sample, "health": health, "pods": pods,
                    "unattributed_pids": attribution.unattributed_pids })
        );
    }
    for error in &readings.errors {
        println!("{}", json!({ "error": error.to_string() }));
    }
    Ok(())
}
