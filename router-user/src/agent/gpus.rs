//! GPU readings for the agent: where they come from, which endpoint each GPU belongs to, and
//! the per-GPU history health assessment needs.
//!
//! - NVML (a real node): GPUs are attributed to endpoints through their processes' pods
//!   (`/proc/<pid>/cgroup`, `--proc-root`), or for static endpoints through `--gpu-map`.
//! - Simulated servers: each endpoint's own `GET /sim/gpu` is its GPU, so the association is
//!   exact without /proc.
//! - Absent: the agent routes on model-server signals only.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::endpoints::LocalEndpoint;
use super::view::GpuView;
use crate::clock::{Clock, Micros};
use crate::telemetry::GpuSample;
use crate::telemetry::gpu_sim::SimGpuTelemetry;
use crate::telemetry::gpu_source::{
    GpuError, GpuTelemetry, TelemetryMode, TelemetryOptions, TelemetrySelectError, TelemetryState,
    select_telemetry,
};
use crate::telemetry::health::{HealthPolicy, HealthTracker};
use crate::telemetry::nvml::NvmlOptions;
use crate::telemetry::pods::{ProcRoot, attribute_gpus};

/// GPUs not read for this long are forgotten.
const FORGET_AFTER: Micros = 300_000_000;

enum Backend {
    Absent,
    Nvml {
        telemetry: Box<dyn GpuTelemetry>,
        proc_root: ProcRoot,
    },
    /// One simulated GPU view per server.
    Sim(Vec<(SocketAddr, SimGpuTelemetry)>),
}

/// Where the agent's GPU readings come from.
pub struct GpuSource {
    backend: Backend,
    state: TelemetryState,
}

/// One round of readings, with each endpoint's GPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuRound {
    /// One per GPU (UUIDs unique).
    pub samples: Vec<GpuSample>,
    pub errors: Vec<GpuError>,
    /// Endpoint → UUIDs of the GPUs its processes use.
    pub owners: BTreeMap<SocketAddr, Vec<String>>,
}

/// Inputs to [`GpuSource::select`].
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub mode: TelemetryMode,
    /// Simulated servers to read `/sim/gpu` from (`--sim-endpoint`; with `--telemetry sim`
    /// and none given, the endpoints themselves).
    pub sim_endpoints: Vec<SocketAddr>,
    pub sim_timeout: Duration,
    pub nvml: NvmlOptions,
    pub proc_root: ProcRoot,
}

impl GpuSource {
    /// Applies `--telemetry` (see `telemetry::gpu_source`): `auto` tries NVML, then the
    /// simulated view if `--sim-endpoint` is given, else none (one warning).
    pub fn select(
        options: &GpuOptions,
        endpoints: &[SocketAddr],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TelemetrySelectError> {
        let mut sims = options.sim_endpoints.clone();
        if sims.is_empty() && options.mode == TelemetryMode::Sim {
            sims = endpoints.to_vec();
        }
        let selection = select_telemetry(
            options.mode,
            &TelemetryOptions {
                nvml: options.nvml.clone(),
                sim_endpoints: sims.clone(),
                sim_timeout: options.sim_timeout,
                clock,
            },
        )?;
        let backend = match (&selection.state, selection.backend) {
            (TelemetryState::Nvml, Some(telemetry)) => Backend::Nvml {
                telemetry,
                proc_root: options.proc_root.clone(),
            },
            // One reader per server, so each server's GPU is known to be its own.
            (TelemetryState::Sim, Some(_)) => Backend::Sim(
                sims.iter()
                    .map(|addr| {
                        (
                            *addr,
                            SimGpuTelemetry::new(vec![*addr], options.sim_timeout),
                        )
                    })
                    .collect(),
            ),
            _ => Backend::Absent,
        };
        Ok(Self {
            backend,
            state: selection.state,
        })
    }

    /// No GPU telemetry (snapshots and tests).
    pub fn absent(reason: impl Into<String>) -> Self {
        Self {
            backend: Backend::Absent,
            state: TelemetryState::Absent(reason.into()),
        }
    }

    pub fn state(&self) -> &TelemetryState {
        &self.state
    }

    /// Reads every GPU once and attributes them to `endpoints`.
    pub async fn sample(&self, endpoints: &[LocalEndpoint]) -> GpuRound {
        match &self.backend {
            Backend::Absent => GpuRound::default(),
            Backend::Sim(servers) => sample_sims(servers).await,
            Backend::Nvml {
                telemetry,
                proc_root,
            } => {
                let readings = telemetry.sample().await;
                let owners = attribute(&readings.samples, endpoints, proc_root);
                GpuRound {
                    samples: readings.samples,
                    errors: readings.errors,
                    owners,
                }
            }
        }
    }
}

async fn sample_sims(servers: &[(SocketAddr, SimGpuTelemetry)]) -> GpuRound {
    let rounds = join_all(
        servers
            .iter()
            .map(|(addr, sim)| async move { (*addr, sim.sample().await) }),
    )
    .await;
    let mut round = GpuRound::default();
    let mut seen: HashSet<String> = HashSet::new();
    for (addr, readings) in rounds {
        round.errors.extend(readings.errors);
        for mut sample in readings.samples {
            if !seen.insert(sample.uuid.clone()) {
                // Simulated servers started with the same seed share a UUID: keep them apart.
                sample.uuid = format!("{}/{addr}", sample.uuid);
                seen.insert(sample.uuid.clone());
            }
            round
                .owners
                .entry(addr)
                .or_default()
                .push(sample.uuid.clone());
            round.samples.push(sample);
        }
    }
    round
}

/// Endpoint → GPUs: through pods for Kubernetes endpoints, `--gpu-map` for static ones.
fn attribute(
    samples: &[GpuSample],
    endpoints: &[LocalEndpoint],
    proc_root: &ProcRoot,
) -> BTreeMap<SocketAddr, Vec<String>> {
    let mut owners: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    for endpoint in endpoints {
        for index in &endpoint.gpu_indices {
            if let Some(sample) = samples.iter().find(|s| s.index == *index) {
                owners
                    .entry(endpoint.addr())
                    .or_default()
                    .push(sample.uuid.clone());
            }
        }
    }
    let mut by_pod: HashMap<&str, Vec<SocketAddr>> = HashMap::new();
    for endpoint in endpoints {
        if let Some(pod) = &endpoint.pod {
            by_pod
                .entry(pod.uid.as_str())
                .or_default()
                .push(endpoint.addr());
        }
    }
    if by_pod.is_empty() {
        return owners;
    }
    for gpu in attribute_gpus(samples, proc_root, |pod| {
        by_pod.get(pod.pod_uid.as_str()).cloned()
    }) {
        for usage in &gpu.pods {
            for addr in usage.resolved.iter().flatten() {
                let uuids = owners.entry(*addr).or_default();
                if !uuids.contains(&gpu.gpu_uuid) {
                    uuids.push(gpu.gpu_uuid.clone());
                }
            }
        }
    }
    owners
}

/// The latest reading of every GPU, its health, and which endpoints use it.
pub struct GpuTracker {
    health: HealthTracker,
    policy: HealthPolicy,
    gpus: BTreeMap<String, GpuView>,
    owners: BTreeMap<SocketAddr, Vec<String>>,
}

impl GpuTracker {
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            health: HealthTracker::new(policy.clone()),
            policy,
            gpus: BTreeMap::new(),
            owners: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Takes a new round at `now`. GPUs missing from it keep their last reading, which ages
    /// (and turns stale); GPUs unread for five minutes are forgotten.
    pub fn apply(&mut self, round: &GpuRound, now: Micros) {
        for sample in &round.samples {
            let health = self.health.assess(sample, now);
            match self.gpus.get_mut(&sample.uuid) {
                Some(view) => {
                    if view.sample != *sample {
                        view.seq += 1;
                        view.sample = sample.clone();
                    }
                    view.health = health;
                }
                None => {
                    self.gpus.insert(
                        sample.uuid.clone(),
                        GpuView {
                            sample: sample.clone(),
                            seq: 1,
                            health,
                        },
                    );
                }
            }
        }
        for (addr, uuids) in &round.owners {
            self.owners.insert(*addr, uuids.clone());
        }
        self.gpus
            .retain(|_, view| now.saturating_sub(view.sample.sampled_at) <= FORGET_AFTER);
        let current: Vec<GpuSample> = self.gpus.values().map(|v| v.sample.clone()).collect();
        self.health.retain(&current);
    }

    /// Forgets the owners of endpoints that are gone.
    pub fn retain_endpoints(&mut self, endpoints: &[SocketAddr]) {
        self.owners.retain(|addr, _| endpoints.contains(addr));
    }

    /// UUIDs of the GPUs `addr` uses.
    pub fn owned_by(&self, addr: &SocketAddr) -> &[String] {
        self.owners.get(addr).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, uuid: &str) -> Option<&GpuView> {
        self.gpus.get(uuid)
    }

    /// Every GPU, by UUID.
    pub fn views(&self) -> Vec<GpuView> {
        self.gpus.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::health::GpuHealth;

    fn sample(uuid: &str, xid: Option<u64>, at: Micros) -> GpuSample {
        GpuSample {
            uuid: uuid.into(),
            memory_total_bytes: 100,
            memory_used_bytes: 50,
            last_xid: xid,
            sampled_at: at,
            ..GpuSample::default()
        }
    }

    #[test]
    fn the_tracker_keeps_readings_counts_changes_and_assesses_health() {
        let mut tracker = GpuTracker::new(HealthPolicy::default());
        let addr: SocketAddr = "10.0.0.1:8000".parse().unwrap();
        let round = GpuRound {
            samples: vec![sample("GPU-a", None, 1_000)],
            errors: Vec::new(),
            owners: [(addr, vec!["GPU-a".to_string()])].into(),
        };
        tracker.apply(&round, 1_000);
        assert_eq!(tracker.owned_by(&addr), ["GPU-a".to_string()]);
        assert_eq!(tracker.get("GPU-a").unwrap().seq, 1);
        tracker.apply(&round, 2_000);
        assert_eq!(
            tracker.get("GPU-a").unwrap().seq,
            1,
            "same reading, same seq"
        );
        let faulty = GpuRound {
            samples: vec![sample("GPU-a", Some(79), 3_000)],
            ..round.clone()
        };
        tracker.apply(&faulty, 3_000);
        let view = tracker.get("GPU-a").unwrap();
        assert_eq!(view.seq, 2);
        assert!(matches!(view.health, GpuHealth::Unhealthy(_)));
        // A GPU missing from later rounds keeps its last reading until forgotten.
        tracker.apply(&GpuRound::default(), 4_000);
        assert!(tracker.get("GPU-a").is_some());
        tracker.apply(&GpuRound::default(), 3_000 + FORGET_AFTER + 1);
        assert!(tracker.get("GPU-a").is_none());
        tracker.retain_endpoints(&[]);
        assert!(tracker.owned_by(&addr).is_empty());
    }

    #[test]
    fn static_endpoints_own_their_mapped_gpus() {
        let mut endpoint = LocalEndpoint {
            target: crate::telemetry::scrape::ScrapeTarget::new("127.0.0.1:8001".parse().unwrap()),
            pod: None,
            gpu_indices: vec![1],
        };
        let mut gpu0 = sample("GPU-0", None, 1);
        gpu0.index = 0;
        let mut gpu1 = sample("GPU-1", None, 1);
        gpu1.index = 1;
        let owners = attribute(
            &[gpu0, gpu1],
            std::slice::from_ref(&endpoint),
            &ProcRoot::new("/nonexistent"),
        );
        assert_eq!(
            owners.get(&endpoint.addr()).unwrap(),
            &["GPU-1".to_string()]
        );
        endpoint.gpu_indices.clear();
        let owners = attribute(&[], &[endpoint], &ProcRoot::new("/nonexistent"));
        assert!(owners.is_empty());
    }
}
