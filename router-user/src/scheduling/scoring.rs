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
use crate::{clock::Micros, cluster::LiveEndpoint, telemetry::LoraState};

/// What a pick knows about one eligible endpoint, compact (the pick loop writes one per
/// endpoint and reads it back twice, so its size is most of the loop's memory traffic).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Candidate {
    pub position: u32,
    pub flags: u8,
    pub inflight: u32,
    /// Fresh load sample (valid with `FRESH`): waiting, running, KV usage, and the estimated
    /// queue = waiting + requests this router sent since the sample (≥ 0).
    pub waiting: f32,
    pub running: f32,
    pub kv: f32,
    pub queue: f32,
    pub inflight_tokens: f32,
    /// Fresh GPU signals (valid with `GPU`).
    pub gpu_headroom: f32,
    pub gpu_util: f32,
    /// Live connections (valid with `CONNECTIONS`).
    pub connections: f32,
    /// Leading prompt blocks this endpoint holds (shared prefix index).
    pub prefix_blocks: u32,
    /// Leading prompt blocks in the cache-aware policy's own tree, and that tree's size.
    pub tree_blocks: u32,
    pub tree_size: u32,
    pub lora: f32,
    /// Prompt tokens this router sent that the endpoint has probably not computed yet.
    pub backlog: f32,
    /// Σ weight × value of the scorers that need no pool statistics (filled in the first pass).
    pub partial: f32,
    /// TTFT cost: filled in the first pass for fresh endpoints (NaN until then), after the
    /// statistics for unknown ones.
    pub ttft_cost: f32,
    pub oracle_cost: f32,
}

impl Candidate {
    pub const FRESH: u8 = 1;
    pub const GPU: u8 = 2;
    pub const THROTTLED: u8 = 4;
    pub const CONNECTIONS: u8 = 8;
    pub const SESSION: u8 = 16;

    #[inline]
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline]
    pub fn fresh(&self) -> bool {
        self.has(Self::FRESH)
    }
}

/// Optional signals a profile reads (the others are always read: they share a cache line).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Needs {
    pub inflight_tokens: bool,
    pub connections: bool,
}

/// Reads the live signals of an endpoint once, from its hot cache line.
#[inline]
pub(crate) fn read_live(
    position: u32,
    live: &LiveEndpoint,
    now: Micros,
    staleness: Micros,
    gpu_staleness: Micros,
    needs: Needs,
) -> Candidate {
    let hot = live.hot();
    let mut candidate = Candidate {
        position,
        inflight: hot.inflight,
        lora: 1.0,
        ttft_cost: f32::NAN,
        ..Candidate::default()
    };
    if hot.load_fresh(now, staleness) {
        candidate.flags |= Candidate::FRESH;
        let waiting = hot.waiting();
        candidate.waiting = waiting as f32;
        candidate.running = hot.running() as f32;
        candidate.kv = hot.kv_usage();
        let since = i64::from(hot.inflight) - i64::from(hot.inflight_at_sample);
        candidate.queue = (i64::from(waiting) + since).max(0) as f32;
    }
    if hot.gpu_fresh(now, gpu_staleness) {
        candidate.flags |= Candidate::GPU;
        if hot.gpu_throttled() {
            candidate.flags |= Candidate::THROTTLED;
        }
        candidate.gpu_headroom = hot.gpu_headroom();
        candidate.gpu_util = hot.gpu_utilization();
    }
    if needs.inflight_tokens {
        candidate.inflight_tokens = live.inflight_tokens() as f32;
    }
    if needs.connections
        && let Some((count, _)) = live.connections()
    {
        candidate.flags |= Candidate::CONNECTIONS;
        candidate.connections = count as f32;
    }
    candidate
}

/// Min/max helper.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub min: f64,
    pub max: f64,
}

impl Default for Range {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Range {
    pub const EMPTY: Range = Range {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

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
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    /// Waiting queue over fresh candidates (GIE's queue scorer normalises by it).
    pub waiting: Range,
    /// Estimated queue, running and KV usage over fresh candidates: what an unknown endpoint is
    /// assumed to have.
    pub fresh_queue: Range,
    pub fresh_running: Range,
    pub fresh_kv: Range,
    pub inflight: Range,
    pub inflight_tokens: Range,
    pub connections: Range,
    pub tree_blocks_max: u32,
    pub tree_size: Range,
    pub ttft_cost: Range,
    pub oracle_cost: Range,
}

impl Default for Stats {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Stats {
    pub const EMPTY: Stats = Stats {
        waiting: Range::EMPTY,
        fresh_queue: Range::EMPTY,
        fresh_running: Range::EMPTY,
        fresh_kv: Range::EMPTY,
        inflight: Range::EMPTY,
        inflight_tokens: Range::EMPTY,
        connections: Range::EMPTY,
        tree_blocks_max: 0,
        tree_size: Range::EMPTY,
        ttft_cost: Range::EMPTY,
        oracle_cost: Range::EMPTY,
    };

    #[inline]
    pub fn observe(&mut self, candidate: &Candidate) {
        if candidate.fresh() {
            self.waiting.add(f64::from(candidate.waiting));
            self.fresh_queue.add(f64::from(candidate.queue));
            self.fresh_running.add(f64::from(candidate.running));
            self.fresh_kv.add(f64::from(candidate.kv));
        }
        self.inflight.add(f64::from(candidate.inflight));
        self.inflight_tokens
            .add(f64::from(candidate.inflight_tokens));
        if candidate.has(Candidate::CONNECTIONS) {
            self.connections.add(f64::from(candidate.connections));
        }
        self.tree_blocks_max = self.tree_blocks_max.max(candidate.tree_blocks);
        self.tree_size.add(f64::from(candidate.tree_size));
        if !candidate.ttft_cost.is_nan() {
            self.ttft_cost.add(f64::from(candidate.ttft_cost));
        }
    }
}

/// GIE queue scorer: min-max of the waiting queue over fresh candidates; unknown scores 0.
#[inline]
pub(crate) fn queue(candidate: &Candidate, stats: &Stats) -> f64 {
    if candidate.fresh() {
        stats.waiting.lower_is_better(f64::from(candidate.waiting))
    } else {
        0.0
    }
}

/// GIE KV-cache utilisation scorer: 1 − usage; unknown scores 0.
#[inline]
pub(crate) fn kv_cache(candidate: &Candidate) -> f64 {
    if candidate.fresh() {
        1.0 - f64::from(candidate.kv)
    } else {
        0.0
    }
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
            .lower_is_better(f64::from(candidate.inflight_tokens)),
    }
}

/// Live connections, min-max normalised; endpoints without a count score neutral.
#[inline]
pub(crate) fn connections(candidate: &Candidate, stats: &Stats) -> f64 {
    if candidate.has(Candidate::CONNECTIONS) {
        stats
            .connections
            .lower_is_better(f64::from(candidate.connections))
    } else {
        0.5
    }
}

/// GPU state: memory headroom, idle compute, not throttled; neutral 0.5 without fresh readings.
#[inline]
pub(crate) fn gpu(candidate: &Candidate, params: &GpuScorerParams) -> f64 {
    if !candidate.has(Candidate::GPU) {
        return 0.5;
    }
    let total = params.headroom_weight + params.utilization_weight + params.throttle_weight;
    let throttled = candidate.has(Candidate::THROTTLED);
    let value = params.headroom_weight * f64::from(candidate.gpu_headroom)
        + params.utilization_weight * (1.0 - f64::from(candidate.gpu_util))
        + params.throttle_weight * if throttled { 0.0 } else { 1.0 };
    (value / total).clamp(0.0, 1.0)
}

/// The TTFT cost model (docs/scheduling.md): the uncached share of this prompt's prefill, plus
/// the queue it joins and the batch it shares, stretched on a throttled GPU, plus the KV
/// pressure. In units of "one full prefill of this prompt". `None` for an endpoint without a
/// fresh sample: see [`ttft_cost_unknown`].
#[inline]
pub(crate) fn ttft_cost_fresh(
    candidate: &Candidate,
    prefix_hit: f64,
    input_tokens: u32,
    params: &CostParams,
) -> Option<f64> {
    candidate.fresh().then(|| {
        cost_model(
            candidate,
            prefix_hit,
            input_tokens,
            f64::from(candidate.queue),
            f64::from(candidate.running),
            f64::from(candidate.kv),
            params,
        )
    })
}

/// The cost of an endpoint without a fresh sample. Unknown is not idle: it is taken to be as
/// loaded as the most loaded fresh endpoint, plus this router's requests in flight there, with
/// KV at the soft limit when nothing is fresh either.
pub(crate) fn ttft_cost_unknown(
    candidate: &Candidate,
    stats: &Stats,
    prefix_hit: f64,
    input_tokens: u32,
    params: &CostParams,
) -> f64 {
    let worst = |range: &Range, fallback: f64| {
        if range.is_empty() {
            fallback
        } else {
            range.max
        }
    };
    cost_model(
        candidate,
        prefix_hit,
        input_tokens,
        worst(&stats.fresh_queue, 0.0) + f64::from(candidate.inflight),
        worst(&stats.fresh_running, 0.0),
        worst(&stats.fresh_kv, params.kv_soft_limit),
        params,
    )
}

#[inline]
fn cost_model(
    candidate: &Candidate,
    prefix_hit: f64,
    input_tokens: u32,
    queue: f64,
    running: f64,
    kv: f64,
    params: &CostParams,
) -> f64 {
    let slowdown = if candidate.has(Candidate::THROTTLED) {
        1.0 + params.throttle_slowdown
    } else {
        1.0
    };
    // Requests queued where this prompt's prefix is cached are mostly its own group: they share
    // the cache as much as this request would. (The engine's reported hit rate over the last
    // sample interval was used here first; it covers a handful of requests, and in the
    // simulation its noise fed back: a few misses made the queue look expensive, requests
    // spread, hit rates fell further.)
    let backlog = f64::from(candidate.backlog) / f64::from(input_tokens.max(1));
    cost(
        prefix_hit,
        queue,
        running,
        kv_pressure(kv, params),
        slowdown,
        params,
    ) + slowdown * params.backlog_cost * backlog
}

/// KV usage above the soft limit, scaled to 0..=1 at a full cache.
#[inline]
fn kv_pressure(kv: f64, params: &CostParams) -> f64 {
    ((kv - params.kv_soft_limit) / (1.0 - params.kv_soft_limit)).clamp(0.0, 1.0)
}

/// The formula of docs/scheduling.md, in units of one full prefill of this prompt.
#[inline]
fn cost(
    prefix_hit: f64,
    queue: f64,
    running: f64,
    kv_pressure: f64,
    slowdown: f64,
    params: &CostParams,
) -> f64 {
    slowdown
        * ((1.0 - prefix_hit)
            + params.queue_cost * queue * (1.0 - prefix_hit).max(params.queue_miss_floor)
            + params.running_cost * running)
        + params.kv_cost * kv_pressure
}

/// The same model on exact engine state (the oracle).
pub(crate) fn oracle_cost(
    exact: &ExactState,
    request: &SchedulingRequest<'_>,
    params: &CostParams,
) -> f64 {
    let prompt = f64::from(request.input_tokens.max(1));
    let cached = f64::from(exact.cached_prefix_tokens).min(prompt);
    let hit = cached / prompt;
    let needed = (prompt - cached) as u64 + u64::from(request.max_tokens.unwrap_or(0));
    // It either fits in the free KV now or waits for memory.
    let kv_pressure = if needed > exact.kv_free_tokens {
        1.0
    } else {
        0.0
    };
    cost(
        hit,
        f64::from(exact.waiting),
        f64::from(exact.running),
        kv_pressure,
        1.0,
        params,
    ) + params.backlog_cost * exact.pending_prefill_tokens as f64 / prompt
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
