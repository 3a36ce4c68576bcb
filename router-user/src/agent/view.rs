//! What the agent knows after one pass of its loop: the record it publishes to the reporter
//! (node reports), the metrics, `/debug/state` and `switchyard agent snapshot`.
use std::net::SocketAddr;

use serde::Serialize;

use super::score::{Drain, PoolWeightsOut};
use crate::clock::Micros;
use crate::telemetry::health::GpuHealth;
use crate::telemetry::{EndpointLoad, EngineKind, GpuSample};

/// One pass of the agent: everything it sensed and decided.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeView {
    pub node: String,
    /// When the pass ran (agent wall clock, Unix µs).
    pub at: Micros,
    /// `nvml`, `sim` or `absent`.
    pub telemetry: &'static str,
    /// The model servers on this node, sorted by address.
    pub endpoints: Vec<EndpointView>,
    /// Live connection counters per backend address (every pool), sorted by address.
    pub connections: Vec<ConnectionView>,
    pub gpus: Vec<GpuView>,
    /// Pools as programmed (or as they would be, without steering).
    pub pools: Vec<PoolView>,
    /// VIPs configured on this agent, and whether it also programs the EPP's pools.
    pub interest: InterestView,
}

/// One model server on the node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndpointView {
    pub addr: SocketAddr,
    /// Kubernetes pod (`namespace/name`), when known.
    pub pod: Option<String>,
    pub engine: Option<EngineKind>,
    /// The last good reading (`None`: never scraped successfully).
    pub load: Option<EndpointLoad>,
    /// The last scrape failed with this error.
    pub scrape_error: Option<String>,
    /// UUIDs of the GPUs its processes run on.
    pub gpus: Vec<String>,
    /// Set when the agent drains it.
    pub drain: Option<Drain>,
    /// Local score among the node's endpoints, 0..1 (1: the cheapest).
    pub score: f64,
}

/// Connection counters of one backend, summed over the pools that list it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionView {
    pub addr: SocketAddr,
    pub opened: u64,
    pub closed: u64,
    /// +1 per reading of the counters.
    pub seq: u64,
    pub counted_at: Micros,
}

impl ConnectionView {
    pub fn live(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }
}

/// One GPU with its health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuView {
    pub sample: GpuSample,
    /// +1 per reading of this GPU.
    pub seq: u64,
    #[serde(serialize_with = "health_label")]
    pub health: GpuHealth,
}

impl GpuView {
    /// `healthy`, `degraded` or `unhealthy`.
    pub fn health_label(&self) -> &'static str {
        health_state(&self.health)
    }

    /// The reasons, joined (empty when healthy).
    pub fn health_reason(&self) -> String {
        health_reason(&self.health)
    }
}

/// `healthy`, `degraded` or `unhealthy`.
pub fn health_state(health: &GpuHealth) -> &'static str {
    match health {
        GpuHealth::Healthy => "healthy",
        GpuHealth::Degraded(_) => "degraded",
        GpuHealth::Unhealthy(_) => "unhealthy",
    }
}

/// The reasons of a GPU's health, joined (empty when healthy).
pub fn health_reason(health: &GpuHealth) -> String {
    match health {
        GpuHealth::Healthy => String::new(),
        GpuHealth::Degraded(reasons) => reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        GpuHealth::Unhealthy(reason) => reason.to_string(),
    }
}

fn health_label<S: serde::Serializer>(
    health: &GpuHealth,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut state = serializer.serialize_struct("GpuHealth", 2)?;
    state.serialize_field("state", health_state(health))?;
    state.serialize_field("reason", &health_reason(health))?;
    state.end()
}

/// Where a pool's VIP and backends come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolSource {
    /// `--pool VIP=ADDR,...` (or the config file).
    Static,
    /// The EPP's cluster view.
    Epp,
}

/// One pool and what was (or would be) programmed for it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolView {
    pub vip: SocketAddr,
    pub name: Option<String>,
    pub source: PoolSource,
    pub weights: PoolWeightsOut,
    /// Age of the cluster weights used, when there were any.
    pub cluster_age: Option<Micros>,
    /// Every backend drained; the least bad were kept.
    pub kept_least_bad: bool,
    /// Every backend dead: connects are refused.
    pub refusing: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InterestView {
    pub pool_vips: Vec<SocketAddr>,
    pub discover_pools: bool,
}
