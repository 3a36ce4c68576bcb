//! Per-candidate features, pool statistics, and the scorers' formulas (each in [0, 1]).
//!
//! Stale-or-unknown policy (the same for every scorer): a load sample older than the saturation
//! detector's `metricsStalenessThreshold`, or no sample at all, is *unknown*, and unknown is
//! never idle. Load scorers give an unknown endpoint their worst value (0); cost models assume it
//! is as loaded as the most loaded fresh endpoint, plus what this router has in flight there;
//! the saturation check counts it as having no capacity. The router's own in-flight counts are
//! always fresh and always used.
use super::{
    exact::ExactState,
    plugins::{CacheAwareParams, CostParams, GpuScorerParams, InflightMode},
    request::SchedulingRequest,
};
use crate::{
    clock::Micros,
    cluster::{GpuSignals, LiveEndpoint, LoadFeatures},
    telemetry::LoraState,
};

/// What a pick knows about one eligible endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Candidate {
    pub position: u32,
    /// Fresh load sample; `None` = unknown (never sampled, or stale).
    pub load: Option<LoadFeatures>,
    pub inflight: u32,
    pub inflight_tokens: u64,
    /// Fresh GPU signals.
    pub gpu: Option<GpuSignals>,
    pub connections: Option<u32>,
    /// Leading prompt blocks this endpoint holds (shared prefix index).
    pub prefix_blocks: u32,
    /// Leading prompt blocks in the cache-aware policy's own tree, and that tree's size.
    pub tree_blocks: u32,
    pub tree_size: u32,
    pub session: bool,
    pub lora: f32,
    pub exact: Option<ExactState>,
    /// Model-cost estimates filled between the statistics and the scoring pass.
    pub ttft_cost: f64,
    pub oracle_cost: f64,
}

impl Candidate {
    /// Requests the router sent since the load sample arrived, minus those that finished.
    #[inline]
    pub fn inflight_since_sample(&self, load: &LoadFeatures) -> i64 {
        i64::from(self.inflight) - i64::from(load.inflight_at_sample)
    }
}

/// Reads the live signals of an endpoint once.
#[inline]
pub(crate) fn read_live(
    position: u32,
    live: &LiveEndpoint,
    now: Micros,
    staleness: Micros,
    gpu_staleness: Micros,
) -> Candidate {
    let load = live.load().filter(|load| load.age(now) <= staleness);
    let gpu = live
        .gpu()
        .filter(|gpu| now.saturating_sub(gpu.sampled_at) <= gpu_staleness);
    Candidate {
        position,
        load,
        inflight: live.inflight_requests(),
        inflight_tokens: live.inflight_tokens(),
        gpu,
        connections: live.connections().map(|(count, _)| count),
        ..Candidate::default()
    }
}

/// Min/max helper.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub min: f64,
    pub max: f64,
}

impl Default for Range {
    fn default() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Range {
    #[inline]
    pub fn add(&mut self, value: f64) {
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn is_empty(&self) -> bool {
        self.min > self.max
    }

    /// 1 at the minimum, 0 at the maximum (lower is better); 1 when all equal.
    #[inline]
    pub fn lower_is_better(&self, value: f64) -> f64 {
        if self.max <= self.min {
            1.0
        } else {
            ((self.max - value) / (self.max - self.min)).clamp(0.0, 1.0)
        }
    }
}

/// Pool statistics over the eligible candidates, gathered in the first pass.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    /// Waiting queue over fresh candidates (GIE's queue scorer normalises by it).
    pub waiting: Range,
    /// Estimated queue (sample + in-flight since), running and KV usage over fresh candidates:
    /// what an unknown endpoint is assumed to have.
    pub fresh_queue: Range,
    pub fresh_running: Range,
    pub fresh_kv: Range,
    pub inflight: Range,
    pub inflight_tokens: Range,
    pub connections: Range,
    pub prefix_blocks_max: u32,
    pub tree_blocks_max: u32,
    pub tree_size: Range,
    pub ttft_cost: Range,
    pub oracle_cost: Range,
}

impl Stats {
    #[inline]
    pub fn observe(&mut self, candidate: &Candidate) {
        if let Some(load) = &candidate.load {
            self.waiting.add(f64::from(load.waiting));
            let queue = (i64::from(load.waiting) + candidate.inflight_since_sample(load)).max(0);
            self.fresh_queue.add(queue as f64);
            self.fresh_running.add(f64::from(load.running));
            self.fresh_kv.add(f64::from(load.kv_usage));
        }
        self.inflight.add(f64::from(candidate.inflight));
        self.inflight_tokens.add(candidate.inflight_tokens as f64);
        if let Some(connections) = candidate.connections {
            self.connections.add(f64::from(connections));
        }
        self.prefix_blocks_max = self.prefix_blocks_max.max(candidate.prefix_blocks);
        self.tree_blocks_max = self.tree_blocks_max.max(candidate.tree_blocks);
        self.tree_size.add(f64::from(candidate.tree_size));
    }
}

/// GIE queue scorer: min-max of the waiting queue over fresh candidates; unknown scores 0.
#[inline]
pub(crate) fn queue(candidate: &Candidate, stats: &Stats) -> f64 {
    candidate.load.map_or(0.0, |load| {
        stats.waiting.lower_is_better(f64::from(load.waiting))
    })
}

/// GIE KV-cache utilisation scorer: 1 − usage; unknown scores 0.
#[inline]
pub(crate) fn kv_cache(candidate: &Candidate) -> f64 {
    candidate
        .load
        .map_or(0.0, |load| 1.0 - f64::from(load.kv_usage))
}

/// Fraction of the prompt's blocks the endpoint holds (GIE approximate prefix scorer).
#[inline]
pub(crate) fn prefix_fraction(blocks: u32, request_blocks: usize) -> f64 {
    if request_blocks == 0 {
        0.0
    } else {
        (f64::from(blocks) / request_blocks as f64).min(1.0)
    }
}

/// GIE LoRA affinity: loaded 1.0 > free slot 0.8 > waiting 0.6 > none 0. Requests without an
/// adapter score 1 everywhere (neutral); an endpoint without LoRA data scores 0.
pub(crate) fn lora(request: &SchedulingRequest<'_>, state: Option<&LoraState>) -> f32 {
    let Some(adapter) = request.lora else {
        return 1.0;
    };
    let Some(state) = state else {
        return 0.0;
    };
    let has = |list: &[String]| list.iter().any(|name| name == adapter);
    if has(&state.running) {
        1.0
    } else if ((state.running.len() + state.waiting.len()) as u64) < u64::from(state.max_loras) {
        0.8
    } else if has(&state.waiting) {
        0.6
    } else {
        0.0
    }
}

/// Router-side in-flight load, min-max normalised (lower is better).
#[inline]
pub(crate) fn inflight(candidate: &Candidate, stats: &Stats, mode: InflightMode) -> f64 {
    match mode {
        InflightMode::Requests => stats
            .inflight
            .lower_is_better(f64::from(candidate.inflight)),
        InflightMode::Tokens => stats
            .inflight_tokens
            .lower_is_better(candidate.inflight_tokens as f64),
    }
}

/// Live connections, min-max normalised; endpoints without a count score neutral.
#[inline]
pub(crate) fn connections(candidate: &Candidate, stats: &Stats) -> f64 {
    candidate.connections.map_or(0.5, |count| {
        stats.connections.lower_is_better(f64::from(count))
    })
}

/// GPU state: memory headroom, idle compute, not throttled; neutral 0.5 without fresh readings.
#[inline]
pub(crate) fn gpu(candidate: &Candidate, params: &GpuScorerParams) -> f64 {
    let Some(gpu) = &candidate.gpu else {
        return 0.5;
    };
    let total = params.headroom_weight + params.utilization_weight + params.throttle_weight;
    let value = params.headroom_weight * f64::from(gpu.memory_headroom)
        + params.utilization_weight * (1.0 - f64::from(gpu.utilization_pct) / 100.0)
        + params.throttle_weight * if gpu.throttled { 0.0 } else { 1.0 };
    (value / total).clamp(0.0, 1.0)
}

/// The TTFT cost model (docs/scheduling.md): the uncached share of this prompt's prefill, plus
/// the queue it joins and the batch it shares, stretched on a throttled GPU, plus the KV
/// pressure. In units of "one full prefill of this prompt".
pub(crate) fn ttft_cost(
    candidate: &Candidate,
    stats: &Stats,
    prefix_hit: f64,
    params: &CostParams,
) -> f64 {
    let (queue, running, kv) = match &candidate.load {
        Some(load) => (
            (i64::from(load.waiting) + candidate.inflight_since_sample(load)).max(0) as f64,
            f64::from(load.running),
            f64::from(load.kv_usage),
        ),
        // Unknown is not idle: as loaded as the most loaded fresh endpoint, plus our own
        // requests there; fully loaded KV when nothing is fresh either.
        None => {
            let worst = |range: &Range, fallback: f64| {
                if range.is_empty() {
                    fallback
                } else {
                    range.max
                }
            };
            (
                worst(&stats.fresh_queue, 0.0) + f64::from(candidate.inflight),
                worst(&stats.fresh_running, 0.0),
                worst(&stats.fresh_kv, params.kv_soft_limit),
            )
        }
    };
    let slowdown = match &candidate.gpu {
        Some(gpu) if gpu.throttled => 1.0 + params.throttle_slowdown,
        _ => 1.0,
    };
    let kv_pressure = ((kv - params.kv_soft_limit) / (1.0 - params.kv_soft_limit)).clamp(0.0, 1.0);
    slowdown * ((1.0 - prefix_hit) + params.queue_cost * queue + params.running_cost * running)
        + params.kv_cost * kv_pressure
}

/// The same model on exact engine state (the oracle); an endpoint the source does not know
/// costs as much as the worst known one, plus one.
pub(crate) fn oracle_cost(
    candidate: &Candidate,
    request: &SchedulingRequest<'_>,
    params: &CostParams,
) -> Option<f64> {
    let exact = candidate.exact?;
    let prompt = f64::from(request.input_tokens.max(1));
    let cached = f64::from(exact.cached_prefix_tokens).min(prompt);
    let needed = (prompt - cached) as u64 + u64::from(request.max_tokens.unwrap_or(0));
    let kv_pressure = if needed > exact.kv_free_tokens {
        1.0
    } else {
        0.0
    };
    Some(
        (1.0 - cached / prompt)
            + params.queue_cost * f64::from(exact.waiting)
            + params.running_cost * f64::from(exact.running)
            + params.kv_cost * kv_pressure,
    )
}

/// Lower cost is better: `(min + smoothing) / (cost + smoothing)`, 1 for the cheapest.
#[inline]
pub(crate) fn relative_cost(cost: f64, range: &Range, smoothing: f64) -> f64 {
    if range.is_empty() {
        return 0.0;
    }
    ((range.min + smoothing) / (cost + smoothing)).clamp(0.0, 1.0)
}

/// SGLang's cache-aware policy as a score: when the router's own loads are imbalanced, the
/// least loaded wins; otherwise the best prefix match wins if it covers more than
/// `cacheThreshold` of the prompt, else the endpoint with the smallest tree.
pub(crate) fn cache_aware(
    candidate: &Candidate,
    stats: &Stats,
    request_blocks: usize,
    params: &CacheAwareParams,
) -> f64 {
    let (min_load, max_load) = (stats.inflight.min, stats.inflight.max);
    let imbalanced = max_load - min_load > f64::from(params.balance_abs_threshold)
        && max_load > min_load * params.balance_rel_threshold;
    if imbalanced {
        return stats
            .inflight
            .lower_is_better(f64::from(candidate.inflight));
    }
    let best_rate = prefix_fraction(stats.tree_blocks_max, request_blocks);
    if best_rate > params.cache_threshold {
        if candidate.tree_blocks == stats.tree_blocks_max {
            1.0
        } else {
            0.0
        }
    } else {
        stats
            .tree_size
            .lower_is_better(f64::from(candidate.tree_size))
    }
}
