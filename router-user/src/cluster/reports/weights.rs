//! Cluster weights: per pool, a weight for every backend, from the merged view of every node's
//! reports. The formula is the agent's (`agent::score`), applied to the endpoint table: the
//! scheduler's TTFT cost for a request with no cached prefix, plus KV fill and live connections
//! (summed over every node), with this EPP's requests sent since each sample counted as queued,
//! exactly as the scheduler counts them (docs/agent.md, "Cluster weights").
use std::net::SocketAddr;

use crate::agent::proto::{BackendWeight, PoolWeights};
use crate::agent::score::{BackendInputs, Drain, DrainKind, LoadReading, ScoreParams, score_pool};
use crate::clock::Micros;
use crate::cluster::{Health, Snapshot, SnapshotEndpoint};
use crate::scheduling::{GpuHealthParams, gpu_fault};

use super::directory::PoolEntry;

/// GPU readings older than this do not count as throttled (the scheduler's gpu-scorer default).
const GPU_STALE_AFTER: Micros = 5_000_000;

/// The weights of every pool of the directory at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterWeights {
    /// Sorted by pool name; backends sorted by address.
    pub pools: Vec<PoolWeights>,
    /// The directory was complete when these were computed.
    pub complete: bool,
    pub computed_at: Micros,
}

impl ClusterWeights {
    /// The pools a node asked for: those whose VIP it listed, and with `discover`, every pool
    /// with a VIP.
    pub fn for_interest<'a>(
        &'a self,
        vips: &'a [SocketAddr],
        discover: bool,
    ) -> impl Iterator<Item = &'a PoolWeights> + 'a {
        self.pools.iter().filter(move |pool| {
            pool.vip
                .parse::<SocketAddr>()
                .is_ok_and(|vip| discover || vips.contains(&vip))
        })
    }
}

/// Computes the weights of every pool in `pools` from `snapshot` at `now`.
pub fn compute_weights(
    snapshot: &Snapshot,
    pools: &[PoolEntry],
    complete: bool,
    now: Micros,
    params: &ScoreParams,
    gpu_health: &GpuHealthParams,
) -> ClusterWeights {
    let mut out = ClusterWeights {
        pools: Vec::with_capacity(pools.len()),
        complete,
        computed_at: now,
    };
    let mut inputs = Vec::new();
    for pool in pools {
        inputs.clear();
        inputs.extend(
            snapshot
                .endpoints()
                .iter()
                .filter(|endpoint| pool.contains(endpoint))
                .map(|endpoint| backend_inputs(endpoint, now, gpu_health)),
        );
        let scores = score_pool(&inputs, now, params);
        let backends = scores
            .backends
            .iter()
            .map(|score| {
                let eligible = score.eligible();
                let reason = match (&score.drain, score.kept) {
                    (Some(drain), true) => {
                        format!("kept (every backend drained): {}", drain.reason)
                    }
                    (Some(drain), false) => drain.reason.clone(),
                    (None, _) if score.fresh => format!("cost {:.2}", score.cost),
                    (None, _) => format!("cost {:.2} (no fresh load: as the busiest)", score.cost),
                };
                BackendWeight {
                    address: score.addr.to_string(),
                    weight: score.weight(),
                    down: !eligible,
                    reason,
                }
            })
            .collect();
        out.pools.push(PoolWeights {
            name: pool.name.clone(),
            vip: pool.vip.map(|vip| vip.to_string()).unwrap_or_default(),
            backends,
        });
    }
    out.pools.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn backend_inputs(
    endpoint: &SnapshotEndpoint,
    now: Micros,
    gpu_health: &GpuHealthParams,
) -> BackendInputs {
    let live = endpoint.live();
    let hot = live.hot();
    let load = live.load().map(|features| LoadReading {
        waiting: features.waiting,
        running: features.running,
        kv_usage: f64::from(features.kv_usage),
        engine_hit: features.prefix_hit_rate.map(f64::from),
        sampled_at: features.sampled_at,
        sent_since_sample: hot.inflight.saturating_sub(hot.inflight_at_sample),
    });
    let gpu = live.gpu();
    let drain = match &endpoint.health {
        Health::Ready => gpu
            .as_ref()
            .and_then(|signals| gpu_fault(signals, gpu_health))
            .map(|reason| Drain::new(DrainKind::GpuFault, reason)),
        Health::Draining => Some(Drain::new(DrainKind::NotReady, "draining")),
        Health::Unhealthy(reason) => Some(Drain::new(DrainKind::NotReady, reason.clone())),
    };
    BackendInputs {
        addr: endpoint.addr(),
        load,
        throttled: gpu.is_some_and(|signals| {
            signals.throttled && now.saturating_sub(signals.sampled_at) <= GPU_STALE_AFTER
        }),
        live_connections: live.connections().map(|(count, _)| u64::from(count)),
        drain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::score::WEIGHT_SCALE;
    use crate::cluster::reports::directory::PoolMembers;
    use crate::cluster::{EndpointMeta, EndpointTable};
    use crate::telemetry::{EndpointLoad, GpuSample};

    const NOW: Micros = 50_000_000;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8000))
    }

    fn meta(i: u8, pool: &str) -> EndpointMeta {
        EndpointMeta {
            pool: pool.into(),
            ..EndpointMeta::new(addr(i))
        }
    }

    fn load(waiting: u32, seq: u64) -> EndpointLoad {
        EndpointLoad {
            waiting,
            running: 2,
            kv_cache_usage: 0.3,
            sampled_at: NOW - 20_000,
            seq,
            ..EndpointLoad::default()
        }
    }

    fn weight(weights: &ClusterWeights, pool: &str, i: u8) -> (u32, bool) {
        let pool = weights.pools.iter().find(|p| p.name == pool).unwrap();
        let backend = pool
            .backends
            .iter()
            .find(|b| b.address == addr(i).to_string())
            .unwrap();
        (backend.weight, backend.down)
    }

    #[test]
    fn weights_follow_load_health_and_gpu_faults_per_pool() {
        let table = EndpointTable::new();
        table.set_members([meta(1, "a"), meta(2, "a"), meta(3, "a"), meta(4, "b")]);
        table.update_load(&addr(1), load(0, 1));
        table.update_load(&addr(2), load(4, 1));
        table.update_load(&addr(3), load(0, 1));
        table.update_load(&addr(4), load(9, 1));
        table.update_gpu(
            &addr(3),
            &[GpuSample {
                last_xid: Some(79),
                memory_total_bytes: 10,
                sampled_at: NOW,
                ..GpuSample::default()
            }],
        );
        let pools = [
            PoolEntry::new(
                "a",
                Some("10.96.0.1:80".parse().unwrap()),
                PoolMembers::Named,
            ),
            PoolEntry::new("b", None, PoolMembers::Named),
        ];
        let weights = compute_weights(
            &table.snapshot(),
            &pools,
            true,
            NOW,
            &ScoreParams::default(),
            &GpuHealthParams::default(),
        );
        assert_eq!(weight(&weights, "a", 1), (WEIGHT_SCALE, false));
        let (w2, down2) = weight(&weights, "a", 2);
        assert!(!down2 && w2 < WEIGHT_SCALE / 2, "queue 4 weighs less: {w2}");
        assert_eq!(weight(&weights, "a", 3), (0, true), "XID 79 is down");
        assert_eq!(
            weight(&weights, "b", 4),
            (WEIGHT_SCALE, false),
            "alone in its pool"
        );

        // In-flight requests this EPP sent since the sample count as queued.
        let guards: Vec<_> = (0..4).map(|_| table.begin(&addr(1), 10).unwrap()).collect();
        let weights = compute_weights(
            &table.snapshot(),
            &pools,
            true,
            NOW,
            &ScoreParams::default(),
            &GpuHealthParams::default(),
        );
        assert_eq!(weight(&weights, "a", 1).0, weight(&weights, "a", 2).0);
        drop(guards);

        table.set_health(&addr(2), Health::unhealthy("node agent: unreachable"));
        let weights = compute_weights(
            &table.snapshot(),
            &pools,
            true,
            NOW,
            &ScoreParams::default(),
            &GpuHealthParams::default(),
        );
        assert_eq!(weight(&weights, "a", 2), (0, true));

        let vips = ["10.96.0.1:80".parse().unwrap()];
        assert_eq!(weights.for_interest(&vips, false).count(), 1);
        assert_eq!(weights.for_interest(&[], false).count(), 0);
        assert_eq!(weights.for_interest(&[], true).count(), 1, "b has no VIP");
    }
}
