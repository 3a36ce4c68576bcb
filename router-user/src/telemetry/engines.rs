//! Turns one engine's `/metrics` page into an [`EndpointLoad`]: which metric names each engine
//! uses (vLLM v1 and v0, SGLang, TensorRT-LLM's `trtllm-serve`, Triton's TensorRT-LLM backend),
//! how series are combined, and the state needed between scrapes (counter baselines for rates,
//! the sequence number). The table with sources is in docs/telemetry.md.
use std::borrow::Cow;

use crate::clock::Micros;
use crate::telemetry::load::{EndpointLoad, EngineKind, LoraState};
use crate::telemetry::prom::{self, ParseError, Sample};

/// Why a page could not be turned into a load reading. The previous reading stays valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormalizeError {
    // Not a `#[source]`: the message already carries it, and chains would print it twice.
    #[error("malformed metrics text: {0}")]
    Parse(ParseError),
    #[error(
        "cannot tell the engine: no vllm:, sglang:, trtllm_ or nv_trt_llm_ / nv_inference_ metrics on the page"
    )]
    UnknownEngine,
    #[error("{engine} page lacks `{metric}`{hint}")]
    MissingMetric {
        engine: EngineKind,
        metric: &'static str,
        hint: &'static str,
    },
    #[error("the body is JSON, not Prometheus text{hint}")]
    NotPrometheusText { hint: &'static str },
}

impl From<ParseError> for NormalizeError {
    fn from(err: ParseError) -> Self {
        Self::Parse(err)
    }
}

/// Guesses the engine from the metric names on a page.
pub fn detect_engine(text: &str) -> Result<Option<EngineKind>, ParseError> {
    let mut found = None;
    let mut triton_generic = false;
    prom::parse(
        text,
        |name| {
            if found.is_none() {
                found = engine_of_name(name);
                triton_generic |= name.starts_with("nv_inference_");
            }
            None::<()>
        },
        |(), _| {},
    )?;
    Ok(found.or(triton_generic.then_some(EngineKind::Triton)))
}

fn engine_of_name(name: &str) -> Option<EngineKind> {
    if name.starts_with("vllm:") {
        Some(EngineKind::Vllm)
    } else if name.starts_with("sglang:") {
        Some(EngineKind::Sglang)
    } else if name.starts_with("trtllm_") || name.starts_with("trtllm:") {
        Some(EngineKind::Trtllm)
    } else if name.starts_with("nv_trt_llm_") {
        Some(EngineKind::Triton)
    } else {
        None
    }
}

/// The default scrape path of each engine: `trtllm-serve` serves JSON iteration stats on
/// `/metrics` and Prometheus text on `/prometheus/metrics`.
pub fn default_metrics_path(engine: Option<EngineKind>) -> &'static str {
    match engine {
        Some(EngineKind::Trtllm) => "/prometheus/metrics",
        _ => "/metrics",
    }
}

/// What a metric line feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Waiting,
    Running,
    KvUsage,
    KvUsageLegacy,
    PrefixQueries,
    PrefixHits,
    PrefixQueriesLegacy,
    PrefixHitsLegacy,
    /// Blocks missed by the prefix cache (TensorRT-LLM counts reused vs missed blocks).
    PrefixMisses,
    PrefixHitRateGauge,
    LoraInfo,
    CacheConfig,
    BlockSize,
    NumBlocks,
    UsedBlocks,
    TtftSum,
    TtftCount,
    ItlSum,
    ItlCount,
    ItlLegacySum,
    ItlLegacyCount,
    /// Triton `nv_trt_llm_request_metrics{request_type=...}`.
    TritonRequests,
    /// Triton `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=...}`.
    TritonKvBlocks,
    /// Triton `nv_inference_pending_request_count`.
    TritonPending,
}

/// Each engine's metric names (after its prefix) and what they feed: the one table both the
/// reader and the server-side filter use.
const VLLM_FIELDS: &[(&str, Field)] = &[
    ("num_requests_waiting", Field::Waiting),
    ("num_requests_running", Field::Running),
    ("kv_cache_usage_perc", Field::KvUsage),
    ("gpu_cache_usage_perc", Field::KvUsageLegacy),
    ("prefix_cache_queries_total", Field::PrefixQueries),
    ("prefix_cache_hits_total", Field::PrefixHits),
    ("gpu_prefix_cache_queries_total", Field::PrefixQueriesLegacy),
    ("gpu_prefix_cache_hits_total", Field::PrefixHitsLegacy),
    ("gpu_prefix_cache_hit_rate", Field::PrefixHitRateGauge),
    ("lora_requests_info", Field::LoraInfo),
    ("cache_config_info", Field::CacheConfig),
];

/// Latency histograms vLLM and SGLang both publish (under their own prefix).
const LATENCY_FIELDS: &[(&str, Field)] = &[
    ("time_to_first_token_seconds_sum", Field::TtftSum),
    ("time_to_first_token_seconds_count", Field::TtftCount),
    ("inter_token_latency_seconds_sum", Field::ItlSum),
    ("inter_token_latency_seconds_count", Field::ItlCount),
    ("time_per_output_token_seconds_sum", Field::ItlLegacySum),
    ("time_per_output_token_seconds_count", Field::ItlLegacyCount),
];

const SGLANG_FIELDS: &[(&str, Field)] = &[
    ("num_queue_reqs", Field::Waiting),
    ("num_running_reqs", Field::Running),
    ("token_usage", Field::KvUsage),
    ("prompt_tokens_total", Field::PrefixQueries),
    ("cached_tokens_total", Field::PrefixHits),
    ("cache_hit_rate", Field::PrefixHitRateGauge),
];

const TRTLLM_FIELDS: &[(&str, Field)] = &[
    ("num_requests_waiting", Field::Waiting),
    ("num_requests_running", Field::Running),
    ("kv_cache_utilization", Field::KvUsage),
    ("kv_cache_reused_blocks_total", Field::PrefixHits),
    ("kv_cache_missed_blocks_total", Field::PrefixMisses),
    ("kv_cache_hit_rate", Field::PrefixHitRateGauge),
    ("kv_cache_tokens_per_block", Field::BlockSize),
    ("kv_cache_max_blocks", Field::NumBlocks),
    ("kv_cache_used_blocks", Field::UsedBlocks),
    ("time_to_first_token_seconds_sum", Field::TtftSum),
    ("time_to_first_token_seconds_count", Field::TtftCount),
    ("time_per_output_token_seconds_sum", Field::ItlSum),
    ("time_per_output_token_seconds_count", Field::ItlCount),
];

const TRITON_FIELDS: &[(&str, Field)] = &[
    ("nv_trt_llm_request_metrics", Field::TritonRequests),
    ("nv_trt_llm_kv_cache_block_metrics", Field::TritonKvBlocks),
    ("nv_inference_pending_request_count", Field::TritonPending),
];

type FieldTable = &'static [(&'static str, Field)];

/// The tables of `engine` and the prefix its names carry on the page.
fn fields(engine: EngineKind) -> (&'static str, &'static [FieldTable]) {
    match engine {
        EngineKind::Vllm => ("vllm:", &[VLLM_FIELDS, LATENCY_FIELDS]),
        EngineKind::Sglang => ("sglang:", &[SGLANG_FIELDS, LATENCY_FIELDS]),
        EngineKind::Trtllm => ("trtllm_", &[TRTLLM_FIELDS]),
        EngineKind::Triton => ("", &[TRITON_FIELDS]),
    }
}

fn field_of(engine: EngineKind, name: &str) -> Option<Field> {
    let (prefix, tables) = fields(engine);
    let short = match engine {
        // trtllm-serve writes `trtllm_`; Dynamo re-exports the same metrics as `trtllm:`.
        EngineKind::Trtllm => name
            .strip_prefix(prefix)
            .or_else(|| name.strip_prefix("trtllm:"))?,
        _ => name.strip_prefix(prefix)?,
    };
    tables
        .iter()
        .flat_map(|table| table.iter())
        .find_map(|(entry, field)| (*entry == short).then_some(*field))
}

/// The sample names to ask a prometheus_client server for (`?name[]=...`), for engines served
/// by it (vLLM, trtllm-serve): the page then carries only what we read. `None` for servers that
/// ignore the query (Triton) or answer it with nothing (SGLang runs prometheus_client in
/// multiprocess mode, where the restricted registry is empty).
pub fn server_filter_names(engine: EngineKind) -> Option<impl Iterator<Item = String>> {
    match engine {
        EngineKind::Vllm | EngineKind::Trtllm => {
            let (prefix, tables) = fields(engine);
            Some(
                tables
                    .iter()
                    .flat_map(|table| table.iter())
                    .map(move |(name, _)| format!("{prefix}{name}")),
            )
        }
        EngineKind::Sglang | EngineKind::Triton => None,
    }
}

/// A sum over series that remembers whether any series was seen.
#[derive(Clone, Copy, Debug, Default)]
struct Total {
    sum: f64,
    series: u32,
}

impl Total {
    fn add(&mut self, value: f64) {
        if value.is_finite() {
            self.sum += value;
            self.series += 1;
        }
    }

    fn sum(self) -> Option<f64> {
        (self.series > 0).then_some(self.sum)
    }

    fn mean(self) -> Option<f64> {
        (self.series > 0).then(|| self.sum / f64::from(self.series))
    }
}

/// The newest `vllm:lora_requests_info` series, borrowed from the page.
#[derive(Clone, Copy, Debug)]
struct LoraSeries<'a> {
    stamp: f64,
    running: &'a str,
    waiting: &'a str,
    max_lora: &'a str,
}

/// Everything read from one page, before it is committed.
#[derive(Debug, Default)]
struct Reading<'a> {
    waiting: Total,
    running: Total,
    kv: Total,
    kv_legacy: Total,
    prefix_queries: Total,
    prefix_hits: Total,
    prefix_queries_legacy: Total,
    prefix_hits_legacy: Total,
    prefix_misses: Total,
    prefix_rate_gauge: Total,
    lora: Option<LoraSeries<'a>>,
    block_size: Option<f64>,
    num_blocks: Total,
    used_blocks: Total,
    ttft_sum: Total,
    ttft_count: Total,
    itl_sum: Total,
    itl_count: Total,
    itl_legacy_sum: Total,
    itl_legacy_count: Total,
    triton_active: Total,
    triton_pending: Total,
}

impl<'a> Reading<'a> {
    fn absorb(&mut self, field: Field, sample: Sample<'a>) {
        use Field::*;
        let value = sample.value;
        match field {
            Waiting => self.waiting.add(value),
            Running => self.running.add(value),
            KvUsage => self.kv.add(value),
            KvUsageLegacy => self.kv_legacy.add(value),
            PrefixQueries => self.prefix_queries.add(value),
            PrefixHits => self.prefix_hits.add(value),
            PrefixQueriesLegacy => self.prefix_queries_legacy.add(value),
            PrefixHitsLegacy => self.prefix_hits_legacy.add(value),
            PrefixMisses => self.prefix_misses.add(value),
            PrefixHitRateGauge => self.prefix_rate_gauge.add(value),
            LoraInfo => self.absorb_lora(sample),
            CacheConfig => {
                let labels = sample.labels;
                if let Some(size) = labels.get("block_size").and_then(|v| v.raw().parse().ok()) {
                    self.block_size = Some(size);
                }
                // Before the engine has profiled memory the label reads "None".
                if let Some(blocks) = labels
                    .get("num_gpu_blocks")
                    .and_then(|v| v.raw().parse::<f64>().ok())
                {
                    self.num_blocks.add(blocks);
                }
            }
            BlockSize => self.set_block_size(value),
            NumBlocks => self.num_blocks.add(value),
            UsedBlocks => self.used_blocks.add(value),
            TtftSum => self.ttft_sum.add(value),
            TtftCount => self.ttft_count.add(value),
            ItlSum => self.itl_sum.add(value),
            ItlCount => self.itl_count.add(value),
            ItlLegacySum => self.itl_legacy_sum.add(value),
            ItlLegacyCount => self.itl_legacy_count.add(value),
            TritonRequests => match sample.labels.get("request_type") {
                Some(kind) if kind.eq_str("waiting") => self.waiting.add(value),
                Some(kind) if kind.eq_str("scheduled") => self.running.add(value),
                Some(kind) if kind.eq_str("active") => self.triton_active.add(value),
                _ => {}
            },
            TritonKvBlocks => match sample.labels.get("kv_cache_block_type") {
                Some(kind) if kind.eq_str("fraction") => self.kv.add(value),
                Some(kind) if kind.eq_str("used") => self.used_blocks.add(value),
                Some(kind) if kind.eq_str("max") => self.num_blocks.add(value),
                Some(kind) if kind.eq_str("tokens_per") => self.set_block_size(value),
                _ => {}
            },
            TritonPending => self.triton_pending.add(value),
        }
    }

    fn set_block_size(&mut self, value: f64) {
        if value.is_finite() && value > 0.0 {
            self.block_size = Some(value);
        }
    }

    /// vLLM sets the series of the current adapter sets to the current time, and old label
    /// combinations stay on the page: the series with the largest value is the current one.
    fn absorb_lora(&mut self, sample: Sample<'a>) {
        if !sample.value.is_finite() {
            return;
        }
        let labels = sample.labels;
        let series = LoraSeries {
            stamp: sample.value,
            running: labels.get("running_lora_adapters").map_or("", |v| v.raw()),
            waiting: labels.get("waiting_lora_adapters").map_or("", |v| v.raw()),
            max_lora: labels.get("max_lora").map_or("", |v| v.raw()),
        };
        if self.lora.is_none_or(|newest| series.stamp >= newest.stamp) {
            self.lora = Some(series);
        }
    }
}

/// A ratio of two counters over the interval since it last had data, robust to resets.
#[derive(Clone, Copy, Debug, Default)]
struct DeltaRatio {
    baseline: Option<(f64, f64)>,
    last: Option<f64>,
}

impl DeltaRatio {
    /// `numerator` and `denominator` are cumulative counters. Returns the ratio of their
    /// increases since the last interval in which the denominator grew; an interval without
    /// growth keeps the previous ratio. A counter that went down was reset (engine restart): the
    /// increase is then its new value, as Prometheus' `rate()` assumes.
    fn update(&mut self, numerator: f64, denominator: f64) -> Option<f64> {
        match self.baseline {
            None => self.baseline = Some((numerator, denominator)),
            Some((prev_num, prev_den)) => {
                let reset = numerator < prev_num || denominator < prev_den;
                let (d_num, d_den) = if reset {
                    (numerator, denominator)
                } else {
                    (numerator - prev_num, denominator - prev_den)
                };
                if d_den > 0.0 {
                    self.last = Some(d_num / d_den);
                    self.baseline = Some((numerator, denominator));
                } else if reset {
                    self.baseline = Some((numerator, denominator));
                }
            }
        }
        self.last
    }
}

/// Per-endpoint normalisation state: the engine, counter baselines and the sequence number.
#[derive(Debug, Default)]
pub struct LoadNormalizer {
    configured: Option<EngineKind>,
    detected: Option<EngineKind>,
    /// The last page did not match the detected engine: detect again on the next one.
    redetect: bool,
    prefix_rate: DeltaRatio,
    ttft: DeltaRatio,
    itl: DeltaRatio,
    seq: u64,
}

impl LoadNormalizer {
    /// `engine: None` detects the engine from the first page (and again if it stops matching).
    pub fn new(engine: Option<EngineKind>) -> Self {
        Self {
            configured: engine,
            ..Self::default()
        }
    }

    /// The engine the pages are read as: configured, or detected from the last good page.
    pub fn engine(&self) -> Option<EngineKind> {
        self.configured.or(self.detected)
    }

    /// Reads `text` taken at `now` into `out`. On error `out` and the counter baselines are left
    /// exactly as they were, so the last good reading (with its old timestamp) stays.
    pub fn normalize_into(
        &mut self,
        text: &str,
        now: Micros,
        out: &mut EndpointLoad,
    ) -> Result<(), NormalizeError> {
        let engine = match (self.configured, self.detected) {
            (Some(engine), _) => engine,
            (None, Some(engine)) if !self.redetect => engine,
            (None, _) => self.detect(text)?,
        };
        let mut reading = Reading::default();
        let result = prom::parse(
            text,
            |name| field_of(engine, name),
            |field, sample| reading.absorb(field, sample),
        );
        if let Err(err) = result {
            return Err(self.explain_parse_error(text, err));
        }
        let required = match Required::check(engine, &reading) {
            Ok(required) => required,
            Err(err) => {
                // An auto-detected engine may have been replaced behind the same address.
                self.redetect = self.configured.is_none();
                return Err(err);
            }
        };
        self.commit(engine, &reading, required, now, out);
        Ok(())
    }

    /// Convenience for one-off reads: a fresh reading without carrying anything over.
    pub fn normalize(&mut self, text: &str, now: Micros) -> Result<EndpointLoad, NormalizeError> {
        let mut out = EndpointLoad::default();
        self.normalize_into(text, now, &mut out)?;
        Ok(out)
    }

    fn detect(&mut self, text: &str) -> Result<EngineKind, NormalizeError> {
        if looks_like_json(text) {
            return Err(NormalizeError::NotPrometheusText { hint: JSON_HINT });
        }
        let engine = detect_engine(text)?.ok_or(NormalizeError::UnknownEngine)?;
        self.redetect = false;
        if self.detected != Some(engine) {
            // Baselines of another engine's counters mean nothing for this one.
            *self = Self {
                configured: self.configured,
                detected: Some(engine),
                seq: self.seq,
                ..Self::default()
            };
        }
        Ok(engine)
    }

    fn explain_parse_error(&self, text: &str, err: ParseError) -> NormalizeError {
        if looks_like_json(text) {
            NormalizeError::NotPrometheusText { hint: JSON_HINT }
        } else {
            NormalizeError::Parse(err)
        }
    }

    fn commit(
        &mut self,
        engine: EngineKind,
        reading: &Reading<'_>,
        required: Required,
        now: Micros,
        out: &mut EndpointLoad,
    ) {
        self.seq += 1;
        out.engine = engine;
        out.waiting = to_count(required.waiting);
        out.running = to_count(required.running);
        out.kv_cache_usage = required.kv_usage.clamp(0.0, 1.0);
        out.prefix_cache_hit_rate = self
            .prefix_hit_rate(engine, reading)
            .map(|r| r.clamp(0.0, 1.0));
        out.block_size = reading
            .block_size
            .filter(|size| *size >= 1.0)
            .map(|size| size.min(f64::from(u32::MAX)) as u32);
        out.num_gpu_blocks = reading
            .num_blocks
            .mean()
            .filter(|blocks| *blocks >= 0.0)
            .map(|blocks| blocks as u64);
        out.ttft_mean_s = self.ttft.update_total(reading.ttft_sum, reading.ttft_count);
        out.itl_mean_s = if reading.itl_count.series > 0 {
            self.itl.update_total(reading.itl_sum, reading.itl_count)
        } else {
            self.itl
                .update_total(reading.itl_legacy_sum, reading.itl_legacy_count)
        };
        write_lora(reading.lora, &mut out.lora);
        out.sampled_at = now;
        out.seq = self.seq;
    }

    fn prefix_hit_rate(&mut self, engine: EngineKind, reading: &Reading<'_>) -> Option<f64> {
        let counters = match engine {
            EngineKind::Trtllm => reading
                .prefix_hits
                .sum()
                .zip(reading.prefix_misses.sum())
                .map(|(hits, misses)| (hits, hits + misses)),
            _ => reading
                .prefix_hits
                .sum()
                .zip(reading.prefix_queries.sum())
                .or_else(|| {
                    reading
                        .prefix_hits_legacy
                        .sum()
                        .zip(reading.prefix_queries_legacy.sum())
                }),
        };
        // Some engines also publish a ready-made rate (vLLM v0 has nothing else; SGLang and
        // TensorRT-LLM have both): it stands in until two scrapes give a counter interval.
        // Negative gauges mean "not enabled" (vLLM v0 reports -1 for a cache it does not have).
        counters
            .and_then(|(hits, queries)| self.prefix_rate.update(hits, queries))
            .or_else(|| reading.prefix_rate_gauge.mean().filter(|rate| *rate >= 0.0))
    }
}

impl DeltaRatio {
    fn update_total(&mut self, sum: Total, count: Total) -> Option<f64> {
        match sum.sum().zip(count.sum()) {
            Some((sum, count)) => self.update(sum, count),
            None => None,
        }
    }
}

/// The fields every reading must have, resolved from each engine's names.
#[derive(Clone, Copy, Debug)]
struct Required {
    waiting: f64,
    running: f64,
    kv_usage: f64,
}

impl Required {
    fn check(engine: EngineKind, reading: &Reading<'_>) -> Result<Self, NormalizeError> {
        let missing = |metric, hint| NormalizeError::MissingMetric {
            engine,
            metric,
            hint,
        };
        let used_fraction = reading
            .used_blocks
            .sum()
            .zip(reading.num_blocks.sum())
            .filter(|(_, max)| *max > 0.0)
            .map(|(used, max)| used / max);
        match engine {
            EngineKind::Vllm => Ok(Self {
                waiting: reading
                    .waiting
                    .sum()
                    .ok_or_else(|| missing("vllm:num_requests_waiting", ""))?,
                running: reading
                    .running
                    .sum()
                    .ok_or_else(|| missing("vllm:num_requests_running", ""))?,
                kv_usage: reading
                    .kv
                    .mean()
                    .or(reading.kv_legacy.mean())
                    .ok_or_else(|| {
                        missing(
                            "vllm:kv_cache_usage_perc",
                            " (nor the older vllm:gpu_cache_usage_perc)",
                        )
                    })?,
            }),
            EngineKind::Sglang => Ok(Self {
                waiting: reading.waiting.sum().ok_or_else(|| {
                    missing("sglang:num_queue_reqs", " (is --enable-metrics set?)")
                })?,
                running: reading
                    .running
                    .sum()
                    .ok_or_else(|| missing("sglang:num_running_reqs", ""))?,
                kv_usage: reading
                    .kv
                    .mean()
                    .ok_or_else(|| missing("sglang:token_usage", ""))?,
            }),
            EngineKind::Trtllm => {
                const HINT: &str = " (set enable_iter_perf_stats: true in the LLM API options)";
                Ok(Self {
                    waiting: reading
                        .waiting
                        .sum()
                        .ok_or_else(|| missing("trtllm_num_requests_waiting", HINT))?,
                    running: reading
                        .running
                        .sum()
                        .ok_or_else(|| missing("trtllm_num_requests_running", HINT))?,
                    kv_usage: reading
                        .kv
                        .mean()
                        .or(used_fraction)
                        .ok_or_else(|| missing("trtllm_kv_cache_utilization", HINT))?,
                })
            }
            EngineKind::Triton => {
                let running = reading.running.sum().ok_or_else(|| {
                    missing(
                        "nv_trt_llm_request_metrics{request_type=\"scheduled\"}",
                        " (is the TensorRT-LLM backend loaded?)",
                    )
                })?;
                // Older backends have no `waiting` type: requests the batch manager holds but
                // has not scheduled, plus those Triton still queues in front of the model.
                let waiting = reading.waiting.sum().unwrap_or_else(|| {
                    let held = reading
                        .triton_active
                        .sum()
                        .map_or(0.0, |active| (active - running).max(0.0));
                    held + reading.triton_pending.sum().unwrap_or(0.0)
                });
                Ok(Self {
                    waiting,
                    running,
                    kv_usage: reading.kv.mean().or(used_fraction).ok_or_else(|| {
                        missing(
                            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"}",
                            " (nor used/max blocks)",
                        )
                    })?,
                })
            }
        }
    }
}

const JSON_HINT: &str =
    " (trtllm-serve serves JSON stats on /metrics; scrape /prometheus/metrics instead)";

fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().as_bytes().first(), Some(b'[' | b'{'))
}

fn to_count(value: f64) -> u32 {
    if value.is_nan() || value <= 0.0 {
        0
    } else {
        value.round().min(f64::from(u32::MAX)) as u32
    }
}

/// Writes the adapter lists, reusing the strings already in `slot` (no churn per scrape).
fn write_lora(series: Option<LoraSeries<'_>>, slot: &mut Option<LoraState>) {
    let Some(series) = series else {
        *slot = None;
        return;
    };
    let state = slot.get_or_insert_with(LoraState::default);
    fill_names(&mut state.running, series.running);
    fill_names(&mut state.waiting, series.waiting);
    state.max_loras = series.max_lora.trim().parse().unwrap_or(0);
}

fn fill_names(names: &mut Vec<String>, joined: &str) {
    let unescaped: Cow<'_, str> = prom::unescape_raw(joined);
    let mut count = 0;
    for name in unescaped
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        match names.get_mut(count) {
            Some(existing) if existing == name => {}
            Some(existing) => {
                existing.clear();
                existing.push_str(name);
            }
            None => names.push(name.to_owned()),
        }
        count += 1;
    }
    names.truncate(count);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vllm_page(waiting: u32, queries: f64, hits: f64) -> String {
        format!(
            "vllm:num_requests_waiting{{engine=\"0\",model_name=\"m\"}} {waiting}\n\
             vllm:num_requests_running{{engine=\"0\",model_name=\"m\"}} 2\n\
             vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"m\"}} 0.25\n\
             vllm:prefix_cache_queries_total{{engine=\"0\",model_name=\"m\"}} {queries}\n\
             vllm:prefix_cache_hits_total{{engine=\"0\",model_name=\"m\"}} {hits}\n"
        )
    }

    #[test]
    fn hit_rate_comes_from_counter_deltas() {
        let mut normalizer = LoadNormalizer::new(Some(EngineKind::Vllm));
        let first = normalizer
            .normalize(&vllm_page(1, 1000.0, 900.0), 10)
            .unwrap();
        assert_eq!(
            first.prefix_cache_hit_rate, None,
            "one scrape has no interval"
        );
        let second = normalizer
            .normalize(&vllm_page(1, 1400.0, 1000.0), 20)
            .unwrap();
        assert_eq!(second.prefix_cache_hit_rate, Some(0.25));
        // No new queries: the last interval's rate stays.
        let idle = normalizer
            .normalize(&vllm_page(1, 1400.0, 1000.0), 30)
            .unwrap();
        assert_eq!(idle.prefix_cache_hit_rate, Some(0.25));
        // The engine restarted: counters went down, so the new values are the increase.
        let reset = normalizer
            .normalize(&vllm_page(1, 200.0, 150.0), 40)
            .unwrap();
        assert_eq!(reset.prefix_cache_hit_rate, Some(0.75));
        let after = normalizer
            .normalize(&vllm_page(1, 300.0, 160.0), 50)
            .unwrap();
        assert_eq!(after.prefix_cache_hit_rate, Some(0.1));
        assert_eq!(after.seq, 5);
        assert_eq!(after.sampled_at, 50);
    }

    #[test]
    fn a_failed_page_leaves_the_last_reading_and_baselines() {
        let mut normalizer = LoadNormalizer::new(None);
        let mut load = EndpointLoad::default();
        normalizer
            .normalize_into(&vllm_page(4, 100.0, 50.0), 1, &mut load)
            .unwrap();
        let before = load.clone();
        let err = normalizer
            .normalize_into("vllm:num_requests_waiting{x=\"1} 3\n", 2, &mut load)
            .unwrap_err();
        assert!(matches!(err, NormalizeError::Parse(_)), "{err}");
        assert_eq!(load, before);
        normalizer
            .normalize_into(&vllm_page(4, 200.0, 100.0), 3, &mut load)
            .unwrap();
        assert_eq!(load.prefix_cache_hit_rate, Some(0.5));
        assert_eq!(load.seq, 2);
    }

    #[test]
    fn a_page_missing_metrics_keeps_the_baselines_of_the_same_engine() {
        let mut normalizer = LoadNormalizer::new(None);
        normalizer.normalize(&vllm_page(1, 100.0, 50.0), 1).unwrap();
        // e.g. an empty page from a server that honours `?name[]=` with nothing.
        let err = normalizer.normalize("", 2).unwrap_err();
        assert!(matches!(err, NormalizeError::MissingMetric { .. }), "{err}");
        let load = normalizer
            .normalize(&vllm_page(1, 300.0, 250.0), 3)
            .unwrap();
        assert_eq!(load.prefix_cache_hit_rate, Some(1.0));
        // A different engine behind the same address starts over.
        let sglang = "sglang:num_queue_reqs 1\nsglang:num_running_reqs 2\nsglang:token_usage 0.5\n";
        assert!(normalizer.normalize(sglang, 4).is_err());
        let load = normalizer.normalize(sglang, 5).unwrap();
        assert_eq!(
            (load.engine, load.prefix_cache_hit_rate),
            (EngineKind::Sglang, None)
        );
    }

    #[test]
    fn negative_rate_gauges_mean_unknown() {
        let page = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n\
                    vllm:gpu_cache_usage_perc 0.1\nvllm:gpu_prefix_cache_hit_rate -1\n";
        let load = LoadNormalizer::new(None).normalize(page, 1).unwrap();
        assert_eq!(load.prefix_cache_hit_rate, None);
    }

    #[test]
    fn data_parallel_engines_are_summed_and_averaged() {
        let page = "vllm:num_requests_waiting{engine=\"0\"} 3\n\
                    vllm:num_requests_waiting{engine=\"1\"} 4\n\
                    vllm:num_requests_running{engine=\"0\"} 10\n\
                    vllm:num_requests_running{engine=\"1\"} 12\n\
                    vllm:kv_cache_usage_perc{engine=\"0\"} 0.2\n\
                    vllm:kv_cache_usage_perc{engine=\"1\"} 0.4\n";
        let load = LoadNormalizer::new(None).normalize(page, 1).unwrap();
        assert_eq!((load.waiting, load.running), (7, 22));
        assert!((load.kv_cache_usage - 0.3).abs() < 1e-12);
    }

    #[test]
    fn newest_lora_series_wins() {
        let page = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.1\n\
            vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"old\",waiting_lora_adapters=\"\"} 1.7000000005e+09\n\
            vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"sql,chat\",waiting_lora_adapters=\"code\"} 1.7000000009e+09\n\
            vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.7000000001e+09\n";
        let mut normalizer = LoadNormalizer::new(None);
        let mut load = EndpointLoad::default();
        normalizer.normalize_into(page, 1, &mut load).unwrap();
        let lora = load.lora.clone().unwrap();
        assert_eq!(lora.running, vec!["sql", "chat"]);
        assert_eq!(lora.waiting, vec!["code"]);
        assert_eq!(lora.max_loras, 4);
        let later = page.replace("1.7000000001e+09", "1.8e+09");
        normalizer.normalize_into(&later, 2, &mut load).unwrap();
        let lora = load.lora.unwrap();
        assert!(lora.running.is_empty() && lora.waiting.is_empty());
    }

    #[test]
    fn missing_metrics_name_the_metric_and_the_fix() {
        let err = LoadNormalizer::new(Some(EngineKind::Trtllm))
            .normalize(
                "trtllm_request_success_total{finished_reason=\"stop\"} 3\n",
                1,
            )
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("trtllm_num_requests_waiting"), "{message}");
        assert!(message.contains("enable_iter_perf_stats"), "{message}");
    }

    #[test]
    fn json_bodies_point_at_the_prometheus_path() {
        let err = LoadNormalizer::new(None)
            .normalize("[{\"iter\": 1, \"kvCacheStats\": {}}]", 1)
            .unwrap_err();
        assert!(matches!(err, NormalizeError::NotPrometheusText { .. }));
        assert!(err.to_string().contains("/prometheus/metrics"));
    }

    #[test]
    fn unknown_pages_are_not_read_as_idle() {
        let err = LoadNormalizer::new(None)
            .normalize("process_cpu_seconds_total 12\n", 1)
            .unwrap_err();
        assert_eq!(err, NormalizeError::UnknownEngine);
    }

    #[test]
    fn counts_round_and_saturate() {
        assert_eq!(to_count(-1.0), 0);
        assert_eq!(to_count(f64::NAN), 0);
        assert_eq!(to_count(2.6), 3);
        assert_eq!(to_count(1e20), u32::MAX);
    }

    #[test]
    fn lora_names_reuse_their_strings() {
        let mut names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let pointer = names[0].as_ptr();
        fill_names(&mut names, "a, x");
        assert_eq!(names, vec!["a", "x"]);
        assert_eq!(names[0].as_ptr(), pointer);
    }
}
