//! `switchyard agent snapshot`: one reading of the node, the way `nvidia-smi` prints one reading
//! of the GPUs: every endpoint scraped once, every GPU read once, the agent's verdicts and local
//! scores, and live connection counts when a dataplane is pinned. A table for people, or JSON.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::future::join_all;
use serde::Serialize;

use super::endpoints::LocalEndpoint;
use super::gpus::{GpuSource, GpuTracker};
use super::score::{BackendInputs, LoadReading, ScoreParams, score_pool};
use super::verdict::{ScrapeFailure, VerdictParams, drain_for, throttled};
use super::view::{GpuView, health_reason, health_state};
use crate::clock::{Clock, Micros};
use crate::dataplane::Dataplane;
use crate::telemetry::gpu_source::TelemetryState;
use crate::telemetry::scrape::{EndpointStatus, ScrapeState, scrape_once};

/// One reading of the node.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// `nvml`, `sim` or `absent`.
    pub telemetry: &'static str,
    /// Why telemetry is absent, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry_reason: Option<String>,
    pub gpus: Vec<GpuLine>,
    pub endpoints: Vec<EndpointLine>,
    /// When the reading was taken (Unix µs).
    pub at: Micros,
}

#[derive(Clone, Debug, Serialize)]
pub struct GpuLine {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub utilization_pct: u32,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub throttled: bool,
    pub last_xid: Option<u64>,
    pub health: &'static str,
    pub health_reason: String,
    /// Endpoints whose processes use this GPU.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointLine {
    pub address: SocketAddr,
    pub engine: Option<String>,
    pub waiting: Option<u32>,
    pub running: Option<u32>,
    pub kv_cache_usage: Option<f64>,
    pub prefix_cache_hit_rate: Option<f64>,
    /// Local score among the listed endpoints, 0..1 (1: the cheapest).
    pub score: f64,
    /// The weight the agent would program, 0..=1000.
    pub weight: u32,
    pub healthy: bool,
    /// Why the agent drains it.
    pub drained: Option<String>,
    pub gpus: Vec<String>,
    /// Live connections the pinned dataplane counts to it, when one is pinned.
    pub live_connections: Option<u64>,
    /// Why the scrape failed.
    pub error: Option<String>,
}

/// Takes one reading of `endpoints`.
pub async fn take(
    endpoints: &[LocalEndpoint],
    source: &GpuSource,
    timeout: Duration,
    pin_root: Option<&Path>,
    clock: &dyn Clock,
) -> Snapshot {
    let now = clock.now();
    let round = source.sample(endpoints).await;
    let mut tracker = GpuTracker::new(VerdictParams::default().gpu);
    tracker.apply(&round, now);
    let scrapes = join_all(
        endpoints
            .iter()
            .map(|endpoint| scrape_once(&endpoint.target, timeout, clock)),
    )
    .await;
    let connections: HashMap<SocketAddr, u64> = pin_root
        .and_then(|root| Dataplane::open_pinned(root).ok())
        .and_then(|dataplane| dataplane.connection_counts().ok())
        .map(|counts| {
            counts
                .into_iter()
                .map(|(addr, c)| (addr, c.live()))
                .collect()
        })
        .unwrap_or_default();

    let params = VerdictParams::default();
    let mut inputs = Vec::with_capacity(endpoints.len());
    let mut lines = Vec::with_capacity(endpoints.len());
    for (endpoint, scraped) in endpoints.iter().zip(scrapes) {
        let addr = endpoint.addr();
        let uuids = tracker.owned_by(&addr).to_vec();
        let views: Vec<&GpuView> = uuids.iter().filter_map(|u| tracker.get(u)).collect();
        // One failed scrape: a transport failure reads as unreachable at once here.
        let status = EndpointStatus {
            target: endpoint.target.clone(),
            engine: scraped.as_ref().ok().map(|load| load.engine),
            load: scraped.as_ref().ok().cloned(),
            scrape: match &scraped {
                Ok(_) => ScrapeState::default(),
                Err(err) => ScrapeState {
                    last_error: Some((now, err.to_string())),
                    consecutive_failures: if ScrapeFailure::of(&err.to_string())
                        == ScrapeFailure::Transport
                    {
                        2
                    } else {
                        1
                    },
                    ..ScrapeState::default()
                },
            },
        };
        let drain = drain_for(
            Some(&status),
            0,
            endpoint.pod.as_ref().map(|p| p.ready),
            &views,
            now,
            &params,
        );
        let load = scraped.as_ref().ok();
        inputs.push(BackendInputs {
            addr,
            load: load.map(LoadReading::of),
            throttled: throttled(&views, now, &params),
            live_connections: connections.get(&addr).copied(),
            drain: drain.clone(),
        });
        lines.push(EndpointLine {
            address: addr,
            engine: load.map(|l| l.engine.to_string()),
            waiting: load.map(|l| l.waiting),
            running: load.map(|l| l.running),
            kv_cache_usage: load.map(|l| l.kv_cache_usage),
            prefix_cache_hit_rate: load.and_then(|l| l.prefix_cache_hit_rate),
            score: 0.0,
            weight: 0,
            healthy: drain.is_none(),
            drained: drain.map(|d| d.reason),
            gpus: uuids,
            live_connections: connections.get(&addr).copied(),
            error: scraped.err().map(|err| err.to_string()),
        });
    }
    let scores = score_pool(&inputs, now, &ScoreParams::default());
    for (line, score) in lines.iter_mut().zip(&scores.backends) {
        line.score = score.score;
        line.weight = score.weight();
    }
    let gpus = tracker
        .views()
        .into_iter()
        .map(|view| {
            let sample = &view.sample;
            GpuLine {
                index: sample.index,
                uuid: sample.uuid.clone(),
                name: sample.name.clone(),
                memory_used_bytes: sample.memory_used_bytes,
                memory_total_bytes: sample.memory_total_bytes,
                utilization_pct: sample.gpu_utilization_pct,
                temperature_c: sample.temperature_c,
                power_w: sample.power_mw.map(|mw| f64::from(mw) / 1000.0),
                throttled: sample.throttle_reasons.is_slowed_down(),
                last_xid: sample.last_xid,
                health: health_state(&view.health),
                health_reason: health_reason(&view.health),
                endpoints: lines
                    .iter()
                    .filter(|line| line.gpus.contains(&sample.uuid))
                    .map(|line| line.address)
                    .collect(),
            }
        })
        .collect();
    let state = source.state();
    Snapshot {
        telemetry: state.label(),
        telemetry_reason: match state {
            TelemetryState::Absent(reason) => Some(reason.clone()),
            _ => None,
        },
        gpus,
        endpoints: lines,
        at: now,
    }
}

/// The reading as tables for people.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    match &snapshot.telemetry_reason {
        Some(reason) => out.push_str(&format!("GPU telemetry: absent ({reason})\n")),
        None => out.push_str(&format!("GPU telemetry: {}\n", snapshot.telemetry)),
    }
    if !snapshot.gpus.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header([
            "GPU",
            "NAME",
            "MEMORY",
            "UTIL",
            "TEMP",
            "POWER",
            "HEALTH",
            "ENDPOINTS",
        ]);
        for gpu in &snapshot.gpus {
            let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
            table.add_row([
                gpu.index.to_string(),
                gpu.name.clone(),
                format!(
                    "{:.1} / {:.1} GiB",
                    gib(gpu.memory_used_bytes),
                    gib(gpu.memory_total_bytes)
                ),
                format!("{}%", gpu.utilization_pct),
                gpu.temperature_c.map_or("-".into(), |t| format!("{t} C")),
                gpu.power_w.map_or("-".into(), |w| format!("{w:.0} W")),
                if gpu.health_reason.is_empty() {
                    gpu.health.to_owned()
                } else {
                    format!("{} ({})", gpu.health, gpu.health_reason)
                },
                gpu.endpoints
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "ENDPOINT", "ENGINE", "WAITING", "RUNNING", "KV", "HIT", "CONNS", "SCORE", "WEIGHT",
        "STATE",
    ]);
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    for line in &snapshot.endpoints {
        let state = match (&line.drained, &line.error) {
            (Some(reason), _) => format!("drained: {reason}"),
            (None, Some(error)) => format!("ok (scrape failed: {error})"),
            (None, None) => "ok".into(),
        };
        table.add_row([
            line.address.to_string(),
            or_dash(line.engine.clone()),
            or_dash(line.waiting.map(|v| v.to_string())),
            or_dash(line.running.map(|v| v.to_string())),
            or_dash(line.kv_cache_usage.map(|v| format!("{:.1}%", v * 100.0))),
            or_dash(
                line.prefix_cache_hit_rate
                    .map(|v| format!("{:.0}%", v * 100.0)),
            ),
            or_dash(line.live_connections.map(|v| v.to_string())),
            format!("{:.2}", line.score),
            line.weight.to_string(),
            state,
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out
}
