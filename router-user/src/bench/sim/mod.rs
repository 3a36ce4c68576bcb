//! `switchyard bench sim`: routing policies side by side on a simulated cluster.
//!
//! A discrete-event simulation on virtual time: N servers, each a full [`sim::Engine`] (its own
//! KV cache, queue and LoRA slots, and the GPU view), in front of them the real scheduler on the
//! real endpoint table — the code path of the endpoint picker: [`EndpointTable`] updates,
//! `Scheduler::pick`, `route` with its [`Inflight`] guard, prefix hashes of the prompt tokens.
//! The router knows what a real one knows: engine load arrives as a timestamped sample every
//! `load_interval` per server (staggered, so between samples the table is stale), GPU samples
//! likewise, and only the router's own in-flight accounting is live. The `oracle` profile
//! instead reads the engines' exact state through an [`ExactStateSource`].
//!
//! [`run_at_rate`] is one run (one policy, one rate); [`sweep`] runs policies × rates on
//! threads. Same seed, same numbers.
//!
//! [`sim::Engine`]: crate::sim::Engine
//! [`EndpointTable`]: crate::cluster::EndpointTable
//! [`Inflight`]: crate::cluster::Inflight
//! [`ExactStateSource`]: crate::scheduling::ExactStateSource
pub mod cli;
mod cluster;
mod exact;
mod policy;
pub mod sweep;

use std::net::SocketAddr;

pub use policy::{Policy, PolicyError};
pub use sweep::{RateGrid, RunLength, SweepOutput, SweepPlan, estimate_capacity, run_sweep};

use super::{
    metrics::{Recorder, RunMetrics},
    workload::Workload,
};
use crate::{
    clock::{MICROS_PER_MS, Micros},
    scheduling::ConfigError,
    sim::Profile,
};

/// Most servers one simulation runs.
pub const MAX_SERVERS: usize = 64;

/// How the simulated cluster and its router behave.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub servers: usize,
    /// How often each server's load sample reaches the endpoint table (scrape or agent push).
    pub load_interval: Micros,
    /// How often each server's GPU sample reaches the table.
    pub gpu_interval: Micros,
    /// Share of requests marked sheddable (priority −1): dropped with 429 when every endpoint
    /// is saturated.
    pub sheddable_share: f64,
    /// Share of the open-loop arrivals, the earliest, that only warm the caches: they are
    /// routed and served but not measured (a router in production runs with warm caches).
    pub warmup: f64,
    /// Seeds the arrival times, the scheduler's draws and which requests are sheddable (the
    /// workload's content comes from the seed it was generated with, normally the same).
    pub seed: u64,
    /// The engine model of every server (default: Llama-3.1-8B on an H100).
    pub profile: Profile,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            servers: 8,
            load_interval: 50 * MICROS_PER_MS,
            gpu_interval: 50 * MICROS_PER_MS,
            sheddable_share: 0.0,
            warmup: 0.1,
            seed: 0,
            profile: Profile::default(),
        }
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), SimError> {
        if self.servers == 0 || self.servers > MAX_SERVERS {
            return Err(SimError::Invalid(format!(
                "servers must be 1..={MAX_SERVERS}, got {}",
                self.servers
            )));
        }
        if self.load_interval == 0 || self.gpu_interval == 0 {
            return Err(SimError::Invalid(
                "sample intervals must be positive".to_owned(),
            ));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(SimError::Invalid(format!(
                "warm-up share must be within 0..1, got {}",
                self.warmup
            )));
        }
        if !(0.0..=1.0).contains(&self.sheddable_share) {
            return Err(SimError::Invalid(format!(
                "sheddable share must be within 0..=1, got {}",
                self.sheddable_share
            )));
        }
        self.profile
            .validate()
            .map_err(|err| SimError::Invalid(err.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation settings: {0}")]
    Invalid(String),
    #[error("policy `{policy}`: {source}")]
    Policy { policy: String, source: ConfigError },
    #[error(transparent)]
    UnknownPolicy(#[from] PolicyError),
    #[error(
        "the simulation stalled at {at} µs with {outstanding} requests unfinished (an engine \
         has queued work it cannot schedule)"
    )]
    Stalled { at: Micros, outstanding: usize },
    #[error("workload `{workload}`: {reason}")]
    Workload { workload: String, reason: String },
    #[error("workload `{workload}` has {requests} requests but {arrivals} arrival times")]
    Arrivals {
        workload: String,
        requests: u32,
        arrivals: usize,
    },
}

/// What one run produced.
#[derive(Debug)]
pub struct SimOutcome {
    pub metrics: RunMetrics,
    /// The raw measurements (completion times, for capacity estimates).
    pub recorder: Recorder,
    /// Requests routed to each server.
    pub routed: Vec<u64>,
    /// Virtual time when the last request finished.
    pub end: Micros,
}

/// The address of simulated server `index` (10.0.x.y:8000, in index order).
pub fn server_addr(index: usize) -> SocketAddr {
    let n = index + 1;
    SocketAddr::from(([10, 0, (n >> 8) as u8, (n & 0xff) as u8], 8000))
}

/// The index of a simulated server's address.
pub fn server_index(addr: &SocketAddr) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let [a, b, c, d] = v4.ip().octets();
    if (a, b, v4.port()) != (10, 0, 8000) {
        return None;
    }
    ((usize::from(c) << 8) | usize::from(d)).checked_sub(1)
}

/// Runs `workload` under `policy` with the open-loop arrivals at `arrivals` (one per open
/// request, see [`Workload::arrival_times`]).
pub fn simulate(
    workload: &Workload,
    policy: &Policy,
    arrivals: &[Micros],
    config: &SimConfig,
) -> Result<SimOutcome, SimError> {
    config.validate()?;
    if arrivals.len() != workload.open as usize {
        return Err(SimError::Arrivals {
            workload: workload.name.clone(),
            requests: workload.open,
            arrivals: arrivals.len(),
        });
    }
    cluster::Cluster::new(workload, policy, config)?.run(arrivals)
}

/// One run at a mean rate of `rate` requests per second.
pub fn run_at_rate(
    workload: &Workload,
    policy: &Policy,
    rate: f64,
    config: &SimConfig,
) -> Result<RunMetrics, SimError> {
    let arrivals = workload.arrival_times(rate, config.seed);
    simulate(workload, policy, &arrivals, config).map(|outcome| outcome.metrics)
}

#[cfg(test)]
mod tests;
