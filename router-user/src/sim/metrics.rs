//! The `/metrics` page of the simulated server, with each engine's real metric names, label
//! sets, types and histogram buckets (vLLM `vllm/v1/metrics/loggers.py`, SGLang
//! `python/sglang/srt/metrics/collector.py`).
use std::collections::VecDeque;

use super::engine::Engine;
use super::prom_text::{LabelOrder, PromWriter};
use super::stats::{EngineCounters, LatencyHistograms};
use crate::clock::{MICROS_PER_SEC, Micros};
use crate::telemetry::{EngineKind, LoraState};

/// Everything the page shows, copied out of the engine under its lock.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    pub kind: EngineKind,
    pub model: String,
    pub waiting: usize,
    pub running: usize,
    pub kv_cache_usage: f64,
    pub block_size: u32,
    pub num_gpu_blocks: u32,
    pub used_blocks: u32,
    pub counters: EngineCounters,
    pub histograms: LatencyHistograms,
    pub lora: Option<LoraState>,
    pub last_prefill_hit_rate: f64,
    /// Output tokens per second since the previous scrape (SGLang `gen_throughput`).
    pub gen_throughput: f64,
}

impl MetricsSnapshot {
    pub fn of(engine: &Engine, model: &str, gen_throughput: f64) -> Self {
        Self {
            kind: engine.config().engine_kind,
            model: model.to_owned(),
            waiting: engine.num_waiting(),
            running: engine.num_running(),
            kv_cache_usage: engine.kv_cache_usage(),
            block_size: engine.block_size(),
            num_gpu_blocks: engine.num_gpu_blocks(),
            used_blocks: engine.num_used_blocks(),
            counters: engine.counters().clone(),
            histograms: engine.histograms().clone(),
            lora: engine.lora_state(),
            last_prefill_hit_rate: engine.last_prefill_hit_rate(),
            gen_throughput,
        }
    }
}

/// Output tokens per second between consecutive scrapes, on the engine's clock.
#[derive(Clone, Debug, Default)]
pub struct ThroughputMeter {
    last: Option<(Micros, u64)>,
    rate: f64,
}

impl ThroughputMeter {
    pub fn observe(&mut self, now: Micros, generated: u64) -> f64 {
        match self.last {
            Some((at, tokens)) if now > at => {
                let seconds = (now - at) as f64 / MICROS_PER_SEC as f64;
                self.rate = generated.saturating_sub(tokens) as f64 / seconds;
                self.last = Some((now, generated));
            }
            Some(_) => {}
            None => self.last = Some((now, generated)),
        }
        self.rate
    }
}

/// vLLM's `lora_requests_info` is a gauge set to the current time under labels naming the
/// running and waiting adapters; old label combinations stay in the registry, so a scraper
/// must take the newest series. The history here reproduces that (bounded).
#[derive(Clone, Debug, Default)]
pub struct LoraInfoHistory {
    series: VecDeque<(String, String, f64)>,
}

const LORA_SERIES_KEPT: usize = 32;

impl LoraInfoHistory {
    pub fn observe(&mut self, state: &LoraState, unix_seconds: f64) {
        let running = state.running.join(",");
        let waiting = state.waiting.join(",");
        if let Some(entry) = self
            .series
            .iter_mut()
            .find(|(r, w, _)| *r == running && *w == waiting)
        {
            entry.2 = unix_seconds;
            return;
        }
        if self.series.len() == LORA_SERIES_KEPT {
            self.series.pop_front();
        }
        self.series.push_back((running, waiting, unix_seconds));
    }
}

/// Renders the page for the snapshot's engine kind.
pub fn render(snapshot: &MetricsSnapshot, lora_history: &LoraInfoHistory) -> String {
    match snapshot.kind {
        EngineKind::Sglang => render_sglang(snapshot),
        _ => render_vllm(snapshot, lora_history),
    }
}

fn render_vllm(s: &MetricsSnapshot, lora_history: &LoraInfoHistory) -> String {
    let mut w = PromWriter::new(LabelOrder::AsGiven);
    let labels = [("model_name", s.model.as_str()), ("engine", "0")];
    let c = &s.counters;
    let h = &s.histograms;
    w.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        &labels,
        s.running as f64,
    );
    w.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        &labels,
        s.waiting as f64,
    );
    w.gauge(
        "vllm:gpu_cache_usage_perc",
        "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        &labels,
        s.kv_cache_usage,
    );
    w.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        &labels,
        s.kv_cache_usage,
    );
    w.counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        &labels,
        c.prefix_queries as f64,
    );
    w.counter(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        &labels,
        c.prefix_hits as f64,
    );
    w.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        &labels,
        c.preemptions as f64,
    );
    w.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        &labels,
        c.prompt_tokens as f64,
    );
    w.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        &labels,
        c.generation_tokens as f64,
    );
    let success: Vec<(Vec<(&str, &str)>, f64)> = [
        ("stop", c.finished_stop),
        ("length", c.finished_length),
        ("abort", c.finished_abort),
    ]
    .into_iter()
    .map(|(reason, count)| {
        let mut series = labels.to_vec();
        series.push(("finished_reason", reason));
        (series, count as f64)
    })
    .collect();
    w.counter_series(
        "vllm:request_success",
        "Count of successfully processed requests.",
        &success,
    );
    w.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        &labels,
        &h.request_prompt_tokens,
    );
    w.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        &labels,
        &h.request_generation_tokens,
    );
    w.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &labels,
        &h.ttft,
    );
    w.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &labels,
        &h.itl,
    );
    w.histogram(
        "vllm:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
        &labels,
        &h.itl,
    );
    w.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &labels,
        &h.e2e,
    );
    w.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &labels,
        &h.queue,
    );
    let block_size = s.block_size.to_string();
    let num_gpu_blocks = s.num_gpu_blocks.to_string();
    w.gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        &[
            ("block_size", &block_size),
            ("gpu_memory_utilization", "0.9"),
            ("swap_space", "4"),
            ("cache_dtype", "auto"),
            ("num_gpu_blocks_override", "None"),
            ("enable_prefix_caching", "True"),
            ("prefix_caching_hash_algo", "builtin"),
            ("num_gpu_blocks", &num_gpu_blocks),
            ("num_cpu_blocks", "None"),
            ("engine", "0"),
        ],
        1.0,
    );
    if let Some(lora) = &s.lora {
        let max_lora = lora.max_loras.to_string();
        let series: Vec<(Vec<(&str, &str)>, f64)> = lora_history
            .series
            .iter()
            .map(|(running, waiting, at)| {
                (
                    vec![
                        ("max_lora", max_lora.as_str()),
                        ("waiting_lora_adapters", waiting.as_str()),
                        ("running_lora_adapters", running.as_str()),
                    ],
                    *at,
                )
            })
            .collect();
        w.gauge_series(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            &series,
        );
    }
    w.finish()
}

fn render_sglang(s: &MetricsSnapshot) -> String {
    let mut w = PromWriter::new(LabelOrder::Sorted);
    let scheduler = [
        ("model_name", s.model.as_str()),
        ("engine_type", "unified"),
        ("tp_rank", "0"),
        ("pp_rank", "0"),
    ];
    let tokenizer = [("model_name", s.model.as_str())];
    let c = &s.counters;
    let h = &s.histograms;
    let capacity = u64::from(s.num_gpu_blocks) * u64::from(s.block_size);
    let used = u64::from(s.used_blocks) * u64::from(s.block_size);
    w.gauge(
        "sglang:num_running_reqs",
        "The number of running requests.",
        &scheduler,
        s.running as f64,
    );
    w.gauge(
        "sglang:num_used_tokens",
        "The number of used tokens.",
        &scheduler,
        used as f64,
    );
    w.gauge(
        "sglang:token_usage",
        "The token usage.",
        &scheduler,
        s.kv_cache_usage,
    );
    w.gauge(
        "sglang:gen_throughput",
        "The generation throughput (token/s).",
        &scheduler,
        s.gen_throughput,
    );
    w.gauge(
        "sglang:num_queue_reqs",
        "The number of requests in the waiting queue.",
        &scheduler,
        s.waiting as f64,
    );
    w.gauge(
        "sglang:cache_hit_rate",
        "The prefix cache hit rate.",
        &scheduler,
        s.last_prefill_hit_rate,
    );
    w.gauge(
        "sglang:max_total_num_tokens",
        "Maximum total number of tokens in the KV cache pool.",
        &scheduler,
        capacity as f64,
    );
    w.histogram(
        "sglang:queue_time_seconds",
        "Histogram of queueing time in seconds.",
        &scheduler,
        &h.queue,
    );
    if let Some(lora) = &s.lora {
        let used = lora.running.len() as f64;
        let total = f64::from(lora.max_loras);
        w.gauge(
            "sglang:lora_pool_slots_used",
            "Number of LoRA adapter slots currently occupied in GPU memory.",
            &scheduler,
            used,
        );
        w.gauge(
            "sglang:lora_pool_slots_total",
            "Total number of LoRA adapter slots available (max_loras_per_batch).",
            &scheduler,
            total,
        );
        w.gauge(
            "sglang:lora_pool_utilization",
            "LoRA pool utilization ratio (used/total). 1.0 means pool is full.",
            &scheduler,
            if total > 0.0 { used / total } else { 0.0 },
        );
    }
    w.counter(
        "sglang:prompt_tokens",
        "Number of prefill tokens processed.",
        &tokenizer,
        c.prompt_tokens as f64,
    );
    w.counter(
        "sglang:generation_tokens",
        "Number of generation tokens processed.",
        &tokenizer,
        c.generation_tokens as f64,
    );
    w.counter(
        "sglang:cached_tokens",
        "Number of cached prompt tokens.",
        &tokenizer,
        c.prefix_hits as f64,
    );
    w.counter(
        "sglang:num_requests",
        "Number of requests processed.",
        &tokenizer,
        (c.finished_stop + c.finished_length) as f64,
    );
    w.counter(
        "sglang:num_aborted_requests",
        "Number of requests aborted.",
        &tokenizer,
        c.finished_abort as f64,
    );
    w.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &tokenizer,
        &h.ttft,
    );
    w.histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &tokenizer,
        &h.itl,
    );
    w.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        &tokenizer,
        &h.e2e,
    );
    w.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sim::{EngineConfig, Profile, SimRequest};

    fn busy_engine(kind: EngineKind, max_loras: u32) -> Engine {
        let mut engine = Engine::new(
            Profile::default(),
            EngineConfig {
                engine_kind: kind,
                max_loras,
                ..EngineConfig::default()
            },
        );
        for id in 0..6u64 {
            engine
                .submit(SimRequest {
                    id,
                    prompt: Arc::from(vec![7u32; 300]),
                    max_tokens: 40,
                    ignore_eos: true,
                    lora: (max_loras > 0 && id % 2 == 0).then(|| Arc::from("ad")),
                    arrival: 0,
                })
                .unwrap();
        }
        engine.advance(300_000);
        engine
    }

    /// Value of the one sample named `name` (with any labels).
    fn value(text: &str, name: &str) -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn vllm_page_matches_engine_state() {
        let engine = busy_engine(EngineKind::Vllm, 2);
        let snapshot = MetricsSnapshot::of(&engine, "llama", 0.0);
        let mut history = LoraInfoHistory::default();
        history.observe(snapshot.lora.as_ref().unwrap(), 1.0);
        history.observe(&LoraState::default(), 2.0);
        let text = render(&snapshot, &history);
        let counters = engine.counters();
        for (name, expected) in [
            ("vllm:num_requests_running", engine.num_running() as f64),
            ("vllm:num_requests_waiting", engine.num_waiting() as f64),
            ("vllm:kv_cache_usage_perc", engine.kv_cache_usage()),
            ("vllm:prefix_cache_hits_total", counters.prefix_hits as f64),
            (
                "vllm:generation_tokens_total",
                counters.generation_tokens as f64,
            ),
            (
                "vllm:time_to_first_token_seconds_count",
                engine.histograms().ttft.count() as f64,
            ),
        ] {
            assert_eq!(value(&text, name), expected, "{name}");
        }
        assert!(text.contains("vllm:num_requests_running{model_name=\"llama\",engine=\"0\"}"));
        assert!(text.contains("# TYPE vllm:prefix_cache_queries_total counter"));
        assert!(text.contains("num_gpu_blocks=\"26875\""));
        assert!(text.contains(
            "vllm:request_success_total{model_name=\"llama\",engine=\"0\",finished_reason=\"length\"}"
        ));
        // Two label combinations, newest last, each with its own timestamp.
        let lora_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vllm:lora_requests_info{"))
            .collect();
        assert_eq!(lora_lines.len(), 2, "{lora_lines:?}");
        assert!(lora_lines[0].contains("running_lora_adapters=\"ad\""));
        assert!(lora_lines[1].ends_with(" 2.0"));
    }

    #[test]
    fn sglang_page_uses_sglang_names() {
        let engine = busy_engine(EngineKind::Sglang, 0);
        let snapshot = MetricsSnapshot::of(&engine, "llama", 12.5);
        let text = render(&snapshot, &LoraInfoHistory::default());
        for (name, expected) in [
            ("sglang:num_running_reqs", engine.num_running() as f64),
            ("sglang:num_queue_reqs", engine.num_waiting() as f64),
            ("sglang:token_usage", engine.kv_cache_usage()),
            ("sglang:gen_throughput", 12.5),
        ] {
            assert_eq!(value(&text, name), expected, "{name}");
        }
        assert!(text.contains(
            "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"llama\",pp_rank=\"0\",tp_rank=\"0\"}"
        ));
        assert!(text.contains(
            "sglang:time_to_first_token_seconds_bucket{le=\"0.1\",model_name=\"llama\"}"
        ));
        assert!(!text.contains("vllm:"));
        assert!(!text.contains("lora"));
    }

    #[test]
    fn throughput_meter_rates_between_scrapes() {
        let mut meter = ThroughputMeter::default();
        assert_eq!(meter.observe(0, 0), 0.0);
        assert_eq!(meter.observe(2_000_000, 100), 50.0);
        assert_eq!(meter.observe(2_000_000, 150), 50.0);
    }
}
