//! The per-endpoint state that changes between snapshots, readable without locks.
//!
//! Loads, GPU readings, connection counts and the router's own in-flight counts change far more
//! often than membership, so they are not copied into snapshots: each endpoint owns one
//! cache-line-aligned cell of atomics that writers update in place and the scheduler reads with
//! plain loads. Features are packed and normalised when written, so a pick reads one or two words
//! per signal and does no arithmetic on raw records. Two words of one signal may be read from
//! different updates (e.g. a new queue length with the previous sample's timestamp); the scheduler
//! tolerates that, it never needs a consistent multi-field view.
use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::{
    clock::Micros,
    telemetry::{EndpointLoad, GpuSample},
};

const Q16: f64 = 65_535.0;
const INV_Q16: f32 = 1.0 / 65_535.0;
const HIT_UNKNOWN: u64 = 0xff;
const HIT_SCALE: f64 = 250.0;
const KNOWN_BIT: u64 = 1 << 63;

/// The load features the scheduler uses, decoded from the packed word.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadFeatures {
    pub waiting: u32,
    pub running: u32,
    /// KV-cache blocks in use, 0..=1.
    pub kv_usage: f32,
    /// The engine's recent prefix-cache hit rate, 0..=1, when it reports one.
    pub prefix_hit_rate: Option<f32>,
    /// When the engine took the sample (producer clock).
    pub sampled_at: Micros,
    /// The router's in-flight count for this endpoint when the sample arrived; the difference to
    /// the current count is what the router sent (or saw finish) since the sample.
    pub inflight_at_sample: u32,
}

impl LoadFeatures {
    fn pack(load: &EndpointLoad) -> u64 {
        let waiting = u64::from(load.waiting.min(u32::from(u16::MAX)));
        let running = u64::from(load.running.min(u32::from(u16::MAX)));
        let kv = (clamp01(load.kv_cache_usage) * Q16).round() as u64;
        let hit = load
            .prefix_cache_hit_rate
            .filter(|rate| rate.is_finite())
            .map_or(HIT_UNKNOWN, |rate| {
                (clamp01(rate) * HIT_SCALE).round() as u64
            });
        KNOWN_BIT | waiting | running << 16 | kv << 32 | hit << 48
    }

    fn unpack(word: u64, sampled_at: Micros, inflight_at_sample: u32) -> Option<Self> {
        if word & KNOWN_BIT == 0 {
            return None;
        }
        let hit = (word >> 48) & 0xff;
        Some(Self {
            waiting: (word & 0xffff) as u32,
            running: ((word >> 16) & 0xffff) as u32,
            kv_usage: ((word >> 32) & 0xffff) as f32 * INV_Q16,
            prefix_hit_rate: (hit != HIT_UNKNOWN).then(|| hit as f32 * (1.0 / HIT_SCALE as f32)),
            sampled_at,
            inflight_at_sample,
        })
    }

    /// Age of the sample at `now` (zero when the producer's clock is slightly ahead).
    pub fn age(&self, now: Micros) -> Micros {
        now.saturating_sub(self.sampled_at)
    }
}

/// GPU signals of an endpoint, aggregated over the GPUs it uses (tensor parallelism spans
/// several): the tightest memory, the busiest GPU, any throttling, the worst health event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuSignals {
    /// Smallest free-memory fraction over the GPUs, 0..=1.
    pub memory_headroom: f32,
    /// Highest kernel-busy percentage over the GPUs.
    pub utilization_pct: u8,
    /// Highest memory-busy percentage over the GPUs.
    pub memory_utilization_pct: u8,
    /// Some GPU runs slower than it could for reasons outside the workload (power cap, thermal,
    /// hardware slowdown).
    pub throttled: bool,
    /// Most recent critical XID on any of the GPUs (the largest code when several differ).
    pub last_xid: Option<u16>,
    /// Largest volatile uncorrected ECC error count over the GPUs (saturates at 255).
    pub ecc_uncorrected: u8,
    /// Oldest sample time over the GPUs.
    pub sampled_at: Micros,
}

impl GpuSignals {
    /// Aggregates the readings of the GPUs one endpoint uses; `None` for an empty slice.
    pub fn from_samples(samples: &[GpuSample]) -> Option<Self> {
        let first = samples.first()?;
        let mut signals = Self {
            memory_headroom: 1.0,
            utilization_pct: 0,
            memory_utilization_pct: 0,
            throttled: false,
            last_xid: None,
            ecc_uncorrected: 0,
            sampled_at: first.sampled_at,
        };
        for gpu in samples {
            signals.memory_headroom = signals.memory_headroom.min(gpu.memory_headroom() as f32);
            signals.utilization_pct = signals
                .utilization_pct
                .max(gpu.gpu_utilization_pct.min(100) as u8);
            signals.memory_utilization_pct = signals
                .memory_utilization_pct
                .max(gpu.memory_utilization_pct.min(100) as u8);
            signals.throttled |= gpu.throttle_reasons.is_slowed_down();
            if let Some(xid) = gpu.last_xid {
                let xid = xid.min(u64::from(u16::MAX)) as u16;
                signals.last_xid = Some(signals.last_xid.map_or(xid, |seen| seen.max(xid)));
            }
            let ecc = gpu.ecc_uncorrected.unwrap_or(0).min(255) as u8;
            signals.ecc_uncorrected = signals.ecc_uncorrected.max(ecc);
            signals.sampled_at = signals.sampled_at.min(gpu.sampled_at);
        }
        Some(signals)
    }

    fn pack(&self) -> u64 {
        let headroom = (clamp01(f64::from(self.memory_headroom)) * Q16).round() as u64;
        KNOWN_BIT
            | headroom
            | u64::from(self.utilization_pct) << 16
            | u64::from(self.memory_utilization_pct) << 24
            | u64::from(self.last_xid.unwrap_or(0)) << 32
            | u64::from(self.ecc_uncorrected) << 48
            | u64::from(self.throttled) << 56
    }

    fn unpack(word: u64, sampled_at: Micros) -> Option<Self> {
        if word & KNOWN_BIT == 0 {
            return None;
        }
        let xid = ((word >> 32) & 0xffff) as u16;
        Some(Self {
            memory_headroom: (word & 0xffff) as f32 * INV_Q16,
            utilization_pct: ((word >> 16) & 0xff) as u8,
            memory_utilization_pct: ((word >> 24) & 0xff) as u8,
            last_xid: (xid != 0).then_some(xid),
            ecc_uncorrected: ((word >> 48) & 0xff) as u8,
            throttled: (word >> 56) & 1 == 1,
            sampled_at,
        })
    }
}

/// The hot words of a cell, for the scheduler's pick loop: read with plain loads, decoded
/// without building intermediate records.
#[derive(Clone, Copy, Debug)]
pub struct HotRead {
    pub inflight: u32,
    pub inflight_at_sample: u32,
    load: u64,
    load_at: Micros,
    gpu: u64,
    gpu_at: Micros,
}

impl HotRead {
    /// A load sample exists and is at most `staleness` old at `now`.
    #[inline]
    pub fn load_fresh(&self, now: Micros, staleness: Micros) -> bool {
        self.load & KNOWN_BIT != 0 && now.saturating_sub(self.load_at) <= staleness
    }

    #[inline]
    pub fn waiting(&self) -> u32 {
        (self.load & 0xffff) as u32
    }

    #[inline]
    pub fn running(&self) -> u32 {
        ((self.load >> 16) & 0xffff) as u32
    }

    #[inline]
    pub fn kv_usage(&self) -> f32 {
        ((self.load >> 32) & 0xffff) as f32 * INV_Q16
    }

    /// The engine's reported prefix-cache hit rate, when it reports one.
    #[inline]
    pub fn prefix_hit_rate(&self) -> Option<f32> {
        let hit = (self.load >> 48) & 0xff;
        (hit != HIT_UNKNOWN).then(|| hit as f32 * (1.0 / HIT_SCALE as f32))
    }

    /// GPU readings exist and are at most `staleness` old at `now`.
    #[inline]
    pub fn gpu_fresh(&self, now: Micros, staleness: Micros) -> bool {
        self.gpu & KNOWN_BIT != 0 && now.saturating_sub(self.gpu_at) <= staleness
    }

    /// Some GPU reported an XID or an uncorrected ECC error (whatever the reading's age).
    #[inline]
    pub fn gpu_has_event(&self) -> bool {
        self.gpu & KNOWN_BIT != 0 && (self.gpu >> 32) & 0xff_ffff != 0
    }

    /// The decoded GPU signals, if any were reported.
    pub fn gpu_signals(&self) -> Option<GpuSignals> {
        GpuSignals::unpack(self.gpu, self.gpu_at)
    }

    #[inline]
    pub fn gpu_headroom(&self) -> f32 {
        (self.gpu & 0xffff) as f32 * INV_Q16
    }

    #[inline]
    pub fn gpu_utilization(&self) -> f32 {
        ((self.gpu >> 16) & 0xff) as f32 * 0.01
    }

    #[inline]
    pub fn gpu_throttled(&self) -> bool {
        (self.gpu >> 56) & 1 == 1
    }
}

/// Tokens an OpenAI response reports in its `usage` block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`, when the engine reports it: the realised
    /// prefix-cache hit, to compare with the predicted one.
    pub cached_prompt_tokens: Option<u64>,
}

/// Outcome of a load update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadUpdate {
    Applied,
    /// Older than (or the same as) what the table has: dropped.
    Stale,
    /// The address is not a member (removed, or not yet added): dropped.
    UnknownEndpoint,
}

/// Cumulative counters of one endpoint, for metrics and for comparing predicted with realised
/// prefix hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointTotals {
    pub routed: u64,
    pub completed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_prompt_tokens: u64,
}

#[derive(Debug, Default)]
struct LoadOrder {
    seq: u64,
    sampled_at: Micros,
    seen: bool,
}

/// The live cell of one endpoint. Hot fields first: a pick touches only the first cache line.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct LiveEndpoint {
    inflight_requests: AtomicU32,
    inflight_at_sample: AtomicU32,
    load: AtomicU64,
    load_at: AtomicU64,
    gpu: AtomicU64,
    gpu_at: AtomicU64,
    inflight_tokens: AtomicU64,
    connections: AtomicU32,
    _pad: AtomicU32,
    connections_at: AtomicU64,
    // Cold: writers, totals and the full records (debug views, LoRA lists).
    routed_total: AtomicU64,
    completed_total: AtomicU64,
    prompt_tokens_total: AtomicU64,
    completion_tokens_total: AtomicU64,
    cached_tokens_total: AtomicU64,
    last_load: ArcSwapOption<EndpointLoad>,
    load_order: Mutex<LoadOrder>,
}

impl LiveEndpoint {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Applies a load sample unless it is older than the one the cell has.
    ///
    /// Ordering rule: a sample is newer when its `seq` is larger, or when its `seq` is not larger
    /// but it was taken later (the producer restarted and its sequence began again). A sample
    /// with a smaller-or-equal `seq` and an earlier-or-equal time is a reordered or duplicate
    /// delivery and is dropped.
    pub(crate) fn update_load(&self, load: EndpointLoad) -> LoadUpdate {
        let mut order = self.load_order.lock();
        let newer = !order.seen || load.seq > order.seq || load.sampled_at > order.sampled_at;
        if !newer {
            return LoadUpdate::Stale;
        }
        order.seen = true;
        order.seq = load.seq;
        order.sampled_at = load.sampled_at;
        self.inflight_at_sample.store(
            self.inflight_requests.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.load_at.store(load.sampled_at, Ordering::Relaxed);
        self.load
            .store(LoadFeatures::pack(&load), Ordering::Release);
        self.last_load.store(Some(Arc::new(load)));
        LoadUpdate::Applied
    }

    pub(crate) fn update_gpu(&self, signals: &GpuSignals) {
        self.gpu_at.store(signals.sampled_at, Ordering::Relaxed);
        self.gpu.store(signals.pack(), Ordering::Release);
    }

    pub(crate) fn update_connections(&self, live: u32, at: Micros) {
        self.connections_at.store(at, Ordering::Relaxed);
        self.connections.store(live, Ordering::Release);
    }

    /// Latest load features, `None` when no sample ever arrived.
    #[inline]
    pub fn load(&self) -> Option<LoadFeatures> {
        let word = self.load.load(Ordering::Acquire);
        LoadFeatures::unpack(
            word,
            self.load_at.load(Ordering::Relaxed),
            self.inflight_at_sample.load(Ordering::Relaxed),
        )
    }

    /// The hot words in one go, for the pick loop.
    #[inline]
    pub fn hot(&self) -> HotRead {
        HotRead {
            inflight: self.inflight_requests.load(Ordering::Relaxed),
            inflight_at_sample: self.inflight_at_sample.load(Ordering::Relaxed),
            load: self.load.load(Ordering::Acquire),
            load_at: self.load_at.load(Ordering::Relaxed),
            gpu: self.gpu.load(Ordering::Acquire),
            gpu_at: self.gpu_at.load(Ordering::Relaxed),
        }
    }

    /// The full latest load record (LoRA lists, engine details), `None` before the first sample.
    pub fn last_load(&self) -> Option<Arc<EndpointLoad>> {
        self.last_load.load_full()
    }

    /// Latest GPU signals, `None` when no agent reported any.
    #[inline]
    pub fn gpu(&self) -> Option<GpuSignals> {
        GpuSignals::unpack(
            self.gpu.load(Ordering::Acquire),
            self.gpu_at.load(Ordering::Relaxed),
        )
    }

    /// Live connections the node's dataplane counts to this endpoint (all clients, all router
    /// replicas) and when they were counted; `None` before the first report. A pooled HTTP/2
    /// connection carries many requests: this is not a request count.
    pub fn connections(&self) -> Option<(u32, Micros)> {
        let at = self.connections_at.load(Ordering::Relaxed);
        (at != 0).then(|| (self.connections.load(Ordering::Acquire), at))
    }

    /// Requests this router has routed to the endpoint that have not completed.
    #[inline]
    pub fn inflight_requests(&self) -> u32 {
        self.inflight_requests.load(Ordering::Relaxed)
    }

    /// Estimated tokens (prompt plus expected output) of the requests in flight.
    #[inline]
    pub fn inflight_tokens(&self) -> u64 {
        self.inflight_tokens.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> EndpointTotals {
        EndpointTotals {
            routed: self.routed_total.load(Ordering::Relaxed),
            completed: self.completed_total.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens_total.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens_total.load(Ordering::Relaxed),
            cached_prompt_tokens: self.cached_tokens_total.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn begin(&self, tokens: u64) {
        self.inflight_requests.fetch_add(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.routed_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn adjust_tokens(&self, from: u64, to: u64) {
        if to >= from {
            self.inflight_tokens.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.inflight_tokens.fetch_sub(from - to, Ordering::Relaxed);
        }
    }

    pub(crate) fn end(&self, tokens: u64, usage: Option<&TokenUsage>) {
        self.inflight_requests.fetch_sub(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_sub(tokens, Ordering::Relaxed);
        self.completed_total.fetch_add(1, Ordering::Relaxed);
        if let Some(usage) = usage {
            self.prompt_tokens_total
                .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
            self.completion_tokens_total
                .fetch_add(usage.completion_tokens, Ordering::Relaxed);
            if let Some(cached) = usage.cached_prompt_tokens {
                self.cached_tokens_total
                    .fetch_add(cached, Ordering::Relaxed);
            }
        }
    }
}

fn clamp01(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ThrottleReasons;

    fn load(seq: u64, at: Micros, waiting: u32) -> EndpointLoad {
        EndpointLoad {
            waiting,
            running: 7,
            kv_cache_usage: 0.25,
            prefix_cache_hit_rate: Some(0.5),
            sampled_at: at,
            seq,
            ..EndpointLoad::default()
        }
    }

    #[test]
    fn load_round_trips_through_the_packed_word() {
        let cell = LiveEndpoint::new();
        assert_eq!(cell.load(), None);
        assert_eq!(cell.update_load(load(1, 100, 3)), LoadUpdate::Applied);
        let features = cell.load().expect("sample applied");
        assert_eq!((features.waiting, features.running), (3, 7));
        assert!((features.kv_usage - 0.25).abs() < 1e-4);
        assert_eq!(features.prefix_hit_rate, Some(0.5));
        assert_eq!(features.sampled_at, 100);
    }

    #[test]
    fn out_of_range_values_saturate_or_clamp() {
        let cell = LiveEndpoint::new();
        let mut sample = load(1, 1, 1_000_000);
        sample.kv_cache_usage = 7.0;
        sample.prefix_cache_hit_rate = Some(f64::NAN);
        cell.update_load(sample);
        let features = cell.load().expect("applied");
        assert_eq!(features.waiting, u32::from(u16::MAX));
        assert_eq!(features.kv_usage, 1.0);
        assert_eq!(features.prefix_hit_rate, None);
    }

    #[test]
    fn older_and_duplicate_samples_are_dropped_but_restarts_are_not() {
        let cell = LiveEndpoint::new();
        assert_eq!(cell.update_load(load(5, 500, 5)), LoadUpdate::Applied);
        assert_eq!(cell.update_load(load(4, 400, 4)), LoadUpdate::Stale);
        assert_eq!(cell.update_load(load(5, 500, 9)), LoadUpdate::Stale);
        assert_eq!(cell.load().map(|l| l.waiting), Some(5));
        // The producer restarted: its sequence began again, but the sample is newer in time.
        assert_eq!(cell.update_load(load(1, 900, 1)), LoadUpdate::Applied);
        assert_eq!(cell.load().map(|l| l.waiting), Some(1));
    }

    #[test]
    fn load_sample_records_inflight_at_arrival() {
        let cell = LiveEndpoint::new();
        cell.begin(10);
        cell.begin(10);
        cell.update_load(load(1, 1, 0));
        cell.begin(10);
        let features = cell.load().expect("applied");
        assert_eq!(features.inflight_at_sample, 2);
        assert_eq!(cell.inflight_requests(), 3);
    }

    #[test]
    fn gpu_signals_take_the_worst_gpu() {
        let gpu = |used: u64, util: u32, xid: Option<u64>, at: Micros| GpuSample {
            memory_used_bytes: used,
            memory_total_bytes: 100,
            gpu_utilization_pct: util,
            last_xid: xid,
            sampled_at: at,
            ..GpuSample::default()
        };
        let mut throttled = gpu(10, 10, None, 50);
        throttled.throttle_reasons = ThrottleReasons(ThrottleReasons::HW_THERMAL_SLOWDOWN);
        throttled.ecc_uncorrected = Some(3);
        let signals =
            GpuSignals::from_samples(&[gpu(80, 90, Some(79), 60), throttled]).expect("two GPUs");
        assert!((signals.memory_headroom - 0.2).abs() < 1e-6);
        assert_eq!(signals.utilization_pct, 90);
        assert!(signals.throttled);
        assert_eq!(signals.last_xid, Some(79));
        assert_eq!(signals.ecc_uncorrected, 3);
        assert_eq!(signals.sampled_at, 50);
        assert_eq!(GpuSignals::from_samples(&[]), None);

        let cell = LiveEndpoint::new();
        assert_eq!(cell.gpu(), None);
        cell.update_gpu(&signals);
        let read = cell.gpu().expect("reported");
        assert_eq!(read.last_xid, Some(79));
        assert!(read.throttled);
        assert!((read.memory_headroom - 0.2).abs() < 1e-4);
    }

    #[test]
    fn the_hot_fields_fit_one_cache_line() {
        assert_eq!(std::mem::align_of::<LiveEndpoint>(), 64);
        assert!(std::mem::offset_of!(LiveEndpoint, connections_at) < 64);
    }
}
