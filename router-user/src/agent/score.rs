//! What a backend costs a new connection, and the weights that follow from it. The formula and
//! its reasons are in docs/agent.md ("Scoring"); the EPP computes cluster weights with the same
//! functions (`cluster::reports`), so a node's local scores and the cluster's agree on what
//! "loaded" means.
//!
//! The cost is the scheduler's TTFT cost model (docs/scheduling.md) for a request whose prefix
//! nobody holds (a new connection's requests are not known yet), plus two terms that matter for
//! connections, which carry many requests: how full the KV cache is, and how many live
//! connections the backend already has compared with the pool's mean.
use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::clock::{MICROS_PER_MS, MICROS_PER_SEC, Micros};
use crate::scheduling::CostParams;
use crate::telemetry::EndpointLoad;

/// The weight written for a pool's best backend; the others get their share of it.
pub const WEIGHT_SCALE: u32 = 1000;

/// Trust below this counts as none (the cluster weights are ignored).
const MIN_TRUST: f64 = 0.01;

#[derive(Clone, Debug, PartialEq)]
pub struct ScoreParams {
    /// The scheduler's cost model parameters (queue, running batch, KV pressure, throttling).
    pub cost: CostParams,
    /// Cost of a full KV cache below the soft limit, linear in usage (a connection's later
    /// requests have less room), in units of one prefill.
    pub kv_fill_cost: f64,
    /// Cost of having as many live connections as the pool's mean plus one, in prefills.
    pub connection_cost: f64,
    /// A load sample older than this is unknown (never idle).
    pub load_stale_after: Micros,
    /// Cluster weights are trusted fully for this long after they arrive...
    pub cluster_fresh_for: Micros,
    /// ...then their trust halves every `cluster_half_life`, decaying toward local scores.
    pub cluster_half_life: Micros,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            cost: CostParams::default(),
            kv_fill_cost: 0.5,
            connection_cost: 0.25,
            load_stale_after: 500 * MICROS_PER_MS,
            cluster_fresh_for: 3 * MICROS_PER_SEC,
            cluster_half_life: 10 * MICROS_PER_SEC,
        }
    }
}

/// One load reading of a backend, as scoring needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadReading {
    pub waiting: u32,
    pub running: u32,
    /// KV-cache usage, 0..=1.
    pub kv_usage: f64,
    /// The engine's recent prefix-cache hit rate, when it reports one.
    pub engine_hit: Option<f64>,
    pub sampled_at: Micros,
    /// Requests known to have been sent since the sample (the EPP's in-flight accounting):
    /// counted as queued.
    pub sent_since_sample: u32,
}

impl LoadReading {
    /// A scraped sample, with nothing known to have been sent since.
    pub fn of(load: &EndpointLoad) -> Self {
        Self {
            waiting: load.waiting,
            running: load.running,
            kv_usage: load.kv_cache_usage,
            engine_hit: load.prefix_cache_hit_rate,
            sampled_at: load.sampled_at,
            sent_since_sample: 0,
        }
    }
}

/// Why a backend gets no new connections. Ordered from least to most severe: when every
/// backend of a pool is drained, the least severe ones that are still alive are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainKind {
    /// GPU telemetry present but its readings are too old to vouch for the GPU.
    StaleGpuTelemetry,
    /// A GPU the backend uses has (almost) no free memory.
    GpuMemoryExhausted,
    /// A GPU the backend uses needs a reset (critical XID, uncorrected ECC errors).
    GpuFault,
    /// The pod is not ready or is terminating (Kubernetes), or the EPP marks it down.
    NotReady,
    /// The model server does not answer.
    Unreachable,
}

impl DrainKind {
    /// A dead backend cannot serve at all: a pool of only dead backends refuses connects.
    pub fn is_dead(self) -> bool {
        matches!(self, Self::NotReady | Self::Unreachable)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drain {
    pub kind: DrainKind,
    pub reason: String,
}

impl Drain {
    pub fn new(kind: DrainKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// Everything scoring knows about one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendInputs {
    pub addr: SocketAddr,
    /// The latest load reading; `None` when never read (or the backend is on another node).
    pub load: Option<LoadReading>,
    /// A GPU of the backend runs slower than it could (power cap, thermal, hardware).
    pub throttled: bool,
    /// Live connections to the backend, when counted.
    pub live_connections: Option<u64>,
    /// Set when the backend should get no new connections.
    pub drain: Option<Drain>,
}

impl BackendInputs {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            load: None,
            throttled: false,
            live_connections: None,
            drain: None,
        }
    }
}

/// A backend's place in its pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendScore {
    pub addr: SocketAddr,
    /// In units of one full prefill (see the module docs).
    pub cost: f64,
    /// `(min cost + smoothing) / (cost + smoothing)` over the pool's eligible backends: 1 for
    /// the cheapest, 0 when drained.
    pub score: f64,
    /// The cost came from a fresh load reading (else the backend was assumed as loaded as the
    /// most loaded fresh one).
    pub fresh: bool,
    pub drain: Option<Drain>,
    /// Drained, but kept because every backend of the pool is drained and this one is among
    /// the least bad that are still alive.
    pub kept: bool,
}

impl BackendScore {
    /// Gets connections: not drained, or kept as the least bad.
    pub fn eligible(&self) -> bool {
        self.drain.is_none() || self.kept
    }

    /// Its weight on its own (before any blend): the score scaled to [`WEIGHT_SCALE`], at least
    /// 1 when eligible, 0 when not.
    pub fn weight(&self) -> u32 {
        if self.eligible() {
            ((f64::from(WEIGHT_SCALE) * self.score).round() as u32).clamp(1, WEIGHT_SCALE)
        } else {
            0
        }
    }
}

/// The scores of one pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolScores {
    pub backends: Vec<BackendScore>,
    /// Every backend was drained; the least bad live ones were kept.
    pub kept_least_bad: bool,
    /// Every backend is dead: the pool refuses connects.
    pub all_dead: bool,
}

/// The cost of one backend with a known load (see the module docs and docs/agent.md).
pub fn backend_cost(
    load: &LoadReading,
    throttled: bool,
    live_connections: Option<u64>,
    mean_live: f64,
    params: &ScoreParams,
) -> f64 {
    let cost = &params.cost;
    let slowdown = if throttled {
        1.0 + cost.throttle_slowdown
    } else {
        1.0
    };
    let queued_miss =
        (1.0 - load.engine_hit.unwrap_or(0.0).clamp(0.0, 1.0)).max(cost.queue_miss_floor);
    let queue = f64::from(load.waiting) + f64::from(load.sent_since_sample);
    let kv = if load.kv_usage.is_finite() {
        load.kv_usage.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let kv_pressure = ((kv - cost.kv_soft_limit) / (1.0 - cost.kv_soft_limit)).clamp(0.0, 1.0);
    let connections = live_connections.map_or(0.0, |live| live as f64 / (mean_live + 1.0));
    slowdown
        * (1.0
            + cost.queue_cost * queue * queued_miss
            + cost.running_cost * f64::from(load.running))
        + cost.kv_cost * kv_pressure
        + params.kv_fill_cost * kv
        + params.connection_cost * connections
}

/// Scores the backends of one pool at `now`.
///
/// Stale or missing loads are unknown, and unknown is never idle: such a backend is costed as
/// loaded as the most loaded fresh eligible one (queue, batch and KV taken separately, as the
/// scheduler does), or at the KV soft limit when nothing is fresh. Drained backends score 0;
/// when every backend is drained, the least severe live ones are kept (never an empty table
/// while something can serve), and a pool whose backends are all dead refuses.
pub fn score_pool(backends: &[BackendInputs], now: Micros, params: &ScoreParams) -> PoolScores {
    let fresh = |b: &BackendInputs| {
        b.load
            .filter(|load| now.saturating_sub(load.sampled_at) <= params.load_stale_after)
    };
    let any_live = backends.iter().any(|b| b.drain.is_none());
    // Who competes for connections: the undrained, or the least bad drained ones.
    let keep_kind = if any_live {
        None
    } else {
        backends
            .iter()
            .filter_map(|b| b.drain.as_ref().map(|d| d.kind))
            .filter(|kind| !kind.is_dead())
            .min()
    };
    let competes = |b: &BackendInputs| match (&b.drain, keep_kind) {
        (None, _) => true,
        (Some(drain), Some(kind)) => drain.kind == kind,
        (Some(_), None) => false,
    };

    let mut worst: Option<LoadReading> = None;
    let (mut live_sum, mut live_count) = (0.0, 0u32);
    for backend in backends.iter().filter(|b| competes(b)) {
        if let Some(load) = fresh(backend) {
            let w = worst.get_or_insert(load);
            w.waiting = w.waiting.max(load.waiting + load.sent_since_sample);
            w.running = w.running.max(load.running);
            w.kv_usage = w.kv_usage.max(load.kv_usage);
            w.engine_hit = None;
        }
        if let Some(live) = backend.live_connections {
            live_sum += live as f64;
            live_count += 1;
        }
    }
    let mean_live = if live_count == 0 {
        0.0
    } else {
        live_sum / f64::from(live_count)
    };
    let unknown = worst.unwrap_or(LoadReading {
        waiting: 0,
        running: 0,
        kv_usage: params.cost.kv_soft_limit,
        engine_hit: None,
        sampled_at: now,
        sent_since_sample: 0,
    });

    let mut scores: Vec<BackendScore> = backends
        .iter()
        .map(|backend| {
            let reading = fresh(backend);
            let mut load = reading.unwrap_or(unknown);
            if reading.is_none() {
                // Requests sent since an old sample still count against it.
                load.waiting += backend.load.map_or(0, |l| l.sent_since_sample);
                load.sent_since_sample = 0;
            }
            BackendScore {
                addr: backend.addr,
                cost: backend_cost(
                    &load,
                    backend.throttled,
                    backend.live_connections,
                    mean_live,
                    params,
                ),
                score: 0.0,
                fresh: reading.is_some(),
                drain: backend.drain.clone(),
                kept: backend.drain.is_some() && competes(backend),
            }
        })
        .collect();
    let min_cost = scores
        .iter()
        .filter(|s| s.eligible())
        .map(|s| s.cost)
        .fold(f64::INFINITY, f64::min);
    let smoothing = params.cost.smoothing;
    for score in scores.iter_mut().filter(|s| s.eligible()) {
        score.score = ((min_cost + smoothing) / (score.cost + smoothing)).clamp(0.0, 1.0);
    }
    PoolScores {
        all_dead: !backends.is_empty() && !any_live && keep_kind.is_none(),
        kept_least_bad: keep_kind.is_some(),
        backends: scores,
    }
}

/// How much the cluster weights count, given their age: fully while fresh, then halving every
/// half-life, and not at all below 1 %.
pub fn cluster_trust(age: Micros, params: &ScoreParams) -> f64 {
    if age <= params.cluster_fresh_for {
        return 1.0;
    }
    if params.cluster_half_life == 0 {
        return 0.0;
    }
    let half_lives = (age - params.cluster_fresh_for) as f64 / params.cluster_half_life as f64;
    let trust = 0.5f64.powf(half_lives);
    if trust < MIN_TRUST { 0.0 } else { trust }
}

/// One backend as the EPP weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterBackend {
    pub weight: u32,
    pub down: bool,
}

/// The EPP's weights for one pool and how old they are.
#[derive(Clone, Copy, Debug)]
pub struct ClusterInput<'a> {
    pub backends: &'a BTreeMap<SocketAddr, ClusterBackend>,
    pub age: Micros,
}

/// One backend as it is written into the dataplane.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgrammedBackend {
    pub addr: SocketAddr,
    /// 0..=WEIGHT_SCALE; 0 only when `down`.
    pub weight: u32,
    pub down: bool,
    /// Share of new connections from local scores alone.
    pub local_share: f64,
    /// Share the cluster weights give it, when they list it.
    pub cluster_share: Option<f64>,
    /// Share actually programmed.
    pub share: f64,
}

/// What to program for a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolWeightsOut {
    pub backends: Vec<ProgrammedBackend>,
    /// How much the cluster weights counted (0: local scores only).
    pub trust: f64,
    /// The cluster marked every eligible backend down; local scores were used instead.
    pub cluster_ignored: bool,
}

/// Blends local scores with the cluster weights (trusted per [`cluster_trust`]).
///
/// Shares, not raw weights, are blended. The cluster weights only redistribute the share local
/// scoring gives the backends they list, so a backend the EPP does not know keeps its local
/// share. Local drains always win: the node sees its own servers first. A blend that would
/// leave no backend eligible falls back to the local shares.
pub fn blend(
    scores: &PoolScores,
    cluster: Option<ClusterInput<'_>>,
    params: &ScoreParams,
) -> PoolWeightsOut {
    let local_total: f64 = scores
        .backends
        .iter()
        .filter(|b| b.eligible())
        .map(|b| b.score)
        .sum();
    let local_share = |b: &BackendScore| {
        if b.eligible() && local_total > 0.0 {
            b.score / local_total
        } else {
            0.0
        }
    };
    let trust = cluster.map_or(0.0, |c| cluster_trust(c.age, params));
    let listed = |b: &BackendScore| {
        cluster
            .and_then(|c| c.backends.get(&b.addr))
            .filter(|_| b.eligible())
    };
    let cluster_total: f64 = scores
        .backends
        .iter()
        .filter_map(listed)
        .filter(|c| !c.down)
        .map(|c| f64::from(c.weight))
        .sum();
    let listed_local: f64 = scores
        .backends
        .iter()
        .filter(|b| listed(b).is_some())
        .map(local_share)
        .sum();

    let mut out = PoolWeightsOut {
        trust,
        ..PoolWeightsOut::default()
    };
    for backend in &scores.backends {
        let local = local_share(backend);
        let cluster_share = listed(backend).map(|c| {
            if c.down || cluster_total <= 0.0 {
                0.0
            } else {
                f64::from(c.weight) / cluster_total
            }
        });
        let share = match cluster_share {
            Some(c) => trust * c * listed_local + (1.0 - trust) * local,
            None => local,
        };
        out.backends.push(ProgrammedBackend {
            addr: backend.addr,
            weight: 0,
            down: true,
            local_share: local,
            cluster_share,
            share,
        });
    }
    if local_total > 0.0 && out.backends.iter().all(|b| b.share <= 0.0) {
        out.cluster_ignored = true;
        for backend in &mut out.backends {
            backend.share = backend.local_share;
        }
    }
    let max_share = out.backends.iter().map(|b| b.share).fold(0.0, f64::max);
    for backend in &mut out.backends {
        if backend.share > 0.0 && max_share > 0.0 {
            let weight = (f64::from(WEIGHT_SCALE) * backend.share / max_share).round() as u32;
            backend.weight = weight.clamp(1, WEIGHT_SCALE);
            backend.down = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 100 * MICROS_PER_SEC;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8000))
    }

    fn loaded(i: u8, waiting: u32, kv: f64) -> BackendInputs {
        BackendInputs {
            load: Some(LoadReading {
                waiting,
                running: 4,
                kv_usage: kv,
                engine_hit: None,
                sampled_at: NOW - 10 * MICROS_PER_MS,
                sent_since_sample: 0,
            }),
            ..BackendInputs::new(addr(i))
        }
    }

    fn drained(mut b: BackendInputs, kind: DrainKind) -> BackendInputs {
        b.drain = Some(Drain::new(kind, format!("{kind:?}")));
        b
    }

    fn score_of(scores: &PoolScores, i: u8) -> f64 {
        scores
            .backends
            .iter()
            .find(|b| b.addr == addr(i))
            .map(|b| b.score)
            .unwrap()
    }

    #[test]
    fn cost_rises_with_queue_and_kv_and_score_falls() {
        let params = ScoreParams::default();
        let mut last = 0.0;
        for waiting in [0, 1, 2, 5, 20] {
            let cost = backend_cost(
                &loaded(1, waiting, 0.3).load.unwrap(),
                false,
                None,
                0.0,
                &params,
            );
            assert!(cost > last, "queue {waiting}: {cost} <= {last}");
            last = cost;
        }
        let mut last = 0.0;
        for kv in [0.0, 0.2, 0.5, 0.79, 0.85, 0.95, 1.0] {
            let cost = backend_cost(&loaded(1, 0, kv).load.unwrap(), false, None, 0.0, &params);
            assert!(cost > last, "kv {kv}: {cost} <= {last}");
            last = cost;
        }
        let scores = score_pool(
            &[loaded(1, 0, 0.2), loaded(2, 3, 0.2), loaded(3, 3, 0.95)],
            NOW,
            &params,
        );
        assert_eq!(score_of(&scores, 1), 1.0);
        assert!(score_of(&scores, 2) < 1.0);
        assert!(score_of(&scores, 3) < score_of(&scores, 2));
    }

    #[test]
    fn throttling_and_connections_cost_more() {
        let params = ScoreParams::default();
        let load = loaded(1, 2, 0.3).load.unwrap();
        let base = backend_cost(&load, false, Some(5), 5.0, &params);
        assert!(backend_cost(&load, true, Some(5), 5.0, &params) > base);
        assert!(backend_cost(&load, false, Some(20), 5.0, &params) > base);
        let mut a = loaded(1, 0, 0.3);
        let mut b = loaded(2, 0, 0.3);
        a.live_connections = Some(2);
        b.live_connections = Some(40);
        let scores = score_pool(&[a, b], NOW, &params);
        assert!(score_of(&scores, 1) > score_of(&scores, 2));
    }

    #[test]
    fn stale_and_unknown_loads_are_not_idle() {
        let params = ScoreParams::default();
        let mut stale = loaded(2, 0, 0.0);
        stale.load.as_mut().unwrap().sampled_at = NOW - 2 * MICROS_PER_SEC;
        let unknown = BackendInputs::new(addr(3));
        let scores = score_pool(&[loaded(1, 6, 0.5), stale, unknown], NOW, &params);
        // Both are costed as loaded as the most loaded fresh backend: no better than it.
        assert!(!scores.backends[1].fresh && !scores.backends[2].fresh);
        assert!(score_of(&scores, 2) <= score_of(&scores, 1) + 1e-9);
        assert!(score_of(&scores, 3) <= score_of(&scores, 1) + 1e-9);
        // Nothing fresh: everyone alike, nobody idle-looking.
        let scores = score_pool(
            &[BackendInputs::new(addr(1)), BackendInputs::new(addr(2))],
            NOW,
            &params,
        );
        assert_eq!(score_of(&scores, 1), score_of(&scores, 2));
    }

    #[test]
    fn drained_backends_get_nothing() {
        let params = ScoreParams::default();
        let scores = score_pool(
            &[
                loaded(1, 9, 0.9),
                drained(loaded(2, 0, 0.0), DrainKind::GpuFault),
            ],
            NOW,
            &params,
        );
        assert_eq!(score_of(&scores, 2), 0.0);
        assert_eq!(score_of(&scores, 1), 1.0);
        assert!(!scores.kept_least_bad && !scores.all_dead);
        let out = blend(&scores, None, &params);
        assert!(out.backends[1].down && out.backends[1].weight == 0);
        assert_eq!(out.backends[0].weight, WEIGHT_SCALE);
    }

    #[test]
    fn all_drained_keeps_the_least_bad_alive_and_all_dead_refuses() {
        let params = ScoreParams::default();
        let scores = score_pool(
            &[
                drained(loaded(1, 0, 0.1), DrainKind::GpuFault),
                drained(loaded(2, 5, 0.1), DrainKind::StaleGpuTelemetry),
                drained(loaded(3, 0, 0.1), DrainKind::StaleGpuTelemetry),
                drained(loaded(4, 0, 0.1), DrainKind::Unreachable),
            ],
            NOW,
            &params,
        );
        assert!(scores.kept_least_bad && !scores.all_dead);
        let kept: Vec<SocketAddr> = scores
            .backends
            .iter()
            .filter(|b| b.eligible())
            .map(|b| b.addr)
            .collect();
        assert_eq!(kept, [addr(2), addr(3)]);
        assert!(score_of(&scores, 3) > score_of(&scores, 2));
        let out = blend(&scores, None, &params);
        assert_eq!(out.backends.iter().filter(|b| !b.down).count(), 2);

        let scores = score_pool(
            &[
                drained(loaded(1, 0, 0.1), DrainKind::Unreachable),
                drained(loaded(2, 0, 0.1), DrainKind::NotReady),
            ],
            NOW,
            &params,
        );
        assert!(scores.all_dead);
        assert!(
            blend(&scores, None, &params)
                .backends
                .iter()
                .all(|b| b.down)
        );
    }

    #[test]
    fn trust_is_full_while_fresh_then_halves() {
        let params = ScoreParams::default();
        assert_eq!(cluster_trust(0, &params), 1.0);
        assert_eq!(cluster_trust(params.cluster_fresh_for, &params), 1.0);
        let one_half_life = params.cluster_fresh_for + params.cluster_half_life;
        assert!((cluster_trust(one_half_life, &params) - 0.5).abs() < 1e-9);
        assert!(cluster_trust(one_half_life + params.cluster_half_life, &params) < 0.26);
        assert_eq!(
            cluster_trust(one_half_life + 10 * params.cluster_half_life, &params),
            0.0
        );
    }

    #[test]
    fn blend_follows_the_cluster_while_fresh_and_decays_to_local() {
        let params = ScoreParams::default();
        // Locally alike; the cluster (which sees other nodes' traffic) prefers backend 2.
        let scores = score_pool(&[loaded(1, 0, 0.2), loaded(2, 0, 0.2)], NOW, &params);
        let cluster: BTreeMap<SocketAddr, ClusterBackend> = [
            (
                addr(1),
                ClusterBackend {
                    weight: 250,
                    down: false,
                },
            ),
            (
                addr(2),
                ClusterBackend {
                    weight: 1000,
                    down: false,
                },
            ),
        ]
        .into();
        let at = |age| {
            blend(
                &scores,
                Some(ClusterInput {
                    backends: &cluster,
                    age,
                }),
                &params,
            )
        };
        let fresh = at(0);
        assert_eq!(fresh.trust, 1.0);
        assert_eq!(fresh.backends[1].weight, WEIGHT_SCALE);
        assert_eq!(fresh.backends[0].weight, 250);
        let aging = at(params.cluster_fresh_for + params.cluster_half_life);
        assert!((aging.trust - 0.5).abs() < 1e-9);
        assert!(aging.backends[0].weight > 250 && aging.backends[0].weight < WEIGHT_SCALE);
        let old = at(params.cluster_fresh_for + 20 * params.cluster_half_life);
        assert_eq!(old.trust, 0.0);
        assert_eq!(old.backends[0].weight, old.backends[1].weight);
        let none = blend(&scores, None, &params);
        let weights =
            |out: &PoolWeightsOut| out.backends.iter().map(|b| b.weight).collect::<Vec<_>>();
        assert_eq!(weights(&none), weights(&old));
    }

    #[test]
    fn blend_keeps_local_drains_local_shares_for_unlisted_and_never_empties() {
        let params = ScoreParams::default();
        let scores = score_pool(
            &[
                loaded(1, 0, 0.2),
                drained(loaded(2, 0, 0.2), DrainKind::Unreachable),
                loaded(3, 0, 0.2),
            ],
            NOW,
            &params,
        );
        // The cluster still likes 2 (it has not heard yet) and does not know 3.
        let cluster: BTreeMap<SocketAddr, ClusterBackend> = [
            (
                addr(1),
                ClusterBackend {
                    weight: 1000,
                    down: false,
                },
            ),
            (
                addr(2),
                ClusterBackend {
                    weight: 1000,
                    down: false,
                },
            ),
        ]
        .into();
        let out = blend(
            &scores,
            Some(ClusterInput {
                backends: &cluster,
                age: 0,
            }),
            &params,
        );
        assert!(out.backends[1].down, "local drain wins");
        assert_eq!(out.backends[0].weight, out.backends[2].weight);
        assert!(
            (out.backends[2].share - 0.5).abs() < 1e-9,
            "unlisted keeps its local share"
        );

        // The cluster marks everything down: local shares instead of an empty table.
        let all_down: BTreeMap<SocketAddr, ClusterBackend> = [
            (
                addr(1),
                ClusterBackend {
                    weight: 0,
                    down: true,
                },
            ),
            (
                addr(3),
                ClusterBackend {
                    weight: 0,
                    down: true,
                },
            ),
        ]
        .into();
        let out = blend(
            &scores,
            Some(ClusterInput {
                backends: &all_down,
                age: 0,
            }),
            &params,
        );
        assert!(out.cluster_ignored);
        assert_eq!(out.backends.iter().filter(|b| !b.down).count(), 2);
    }
}
