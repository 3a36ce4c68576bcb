//! What the engine counts: the numbers behind `/metrics` and [`crate::telemetry::EndpointLoad`].
//!
//! Histograms use each engine's own bucket boundaries (vLLM `vllm/v1/metrics/loggers.py`,
//! SGLang `python/sglang/srt/metrics/collector.py`), so a scraper sees the real `le` labels.
use super::hist::Histogram;
use crate::telemetry::EngineKind;

const VLLM_TTFT: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const VLLM_ITL: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const VLLM_REQUEST_LATENCY: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const SGLANG_TTFT: [f64; 18] = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0,
];
const SGLANG_ITL: [f64; 23] = [
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
    0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000,
];
const SGLANG_E2E: [f64; 22] = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0, 600.0, 1200.0, 1800.0, 2400.0,
];
const SGLANG_QUEUE: [f64; 36] = [
    0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0,
    80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0,
    1400.0, 1600.0, 1800.0, 2000.0, 2500.0, 3000.0,
];

/// vLLM's `build_1_2_5_buckets(max)`: 1, 2, 5, 10, 20, 50, ... up to `max`.
fn one_two_five(max: u32) -> Vec<f64> {
    let mut bounds = Vec::new();
    let mut scale = 1u64;
    loop {
        for mantissa in [1u64, 2, 5] {
            let value = mantissa * scale;
            if value > u64::from(max) {
                return bounds;
            }
            bounds.push(value as f64);
        }
        scale *= 10;
    }
}

/// Per-request latency and size distributions, in seconds and tokens.
#[derive(Clone, Debug)]
pub struct LatencyHistograms {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
}

impl LatencyHistograms {
    pub fn for_engine(kind: EngineKind, max_model_len: u32) -> Self {
        let sizes = one_two_five(max_model_len);
        match kind {
            EngineKind::Sglang => Self {
                ttft: Histogram::new(&SGLANG_TTFT),
                itl: Histogram::new(&SGLANG_ITL),
                e2e: Histogram::new(&SGLANG_E2E),
                queue: Histogram::new(&SGLANG_QUEUE),
                request_prompt_tokens: Histogram::new(&sizes),
                request_generation_tokens: Histogram::new(&sizes),
            },
            _ => Self {
                ttft: Histogram::new(&VLLM_TTFT),
                itl: Histogram::new(&VLLM_ITL),
                e2e: Histogram::new(&VLLM_REQUEST_LATENCY),
                queue: Histogram::new(&VLLM_REQUEST_LATENCY),
                request_prompt_tokens: Histogram::new(&sizes),
                request_generation_tokens: Histogram::new(&sizes),
            },
        }
    }
}

/// Monotonic counters since the engine started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub requests_submitted: u64,
    /// Prompt tokens of requests that produced their first token (cached ones included).
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Prompt tokens looked up in the prefix cache when a request was scheduled.
    pub prefix_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_hits: u64,
    pub preemptions: u64,
    pub finished_stop: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    pub steps: u64,
    /// Virtual microseconds the GPU spent in steps.
    pub busy_us: u64,
    /// Prompt (and recomputed) tokens the GPU actually computed.
    pub prefill_tokens_computed: u64,
    pub lora_loads: u64,
}

impl EngineCounters {
    pub fn finished(&self) -> u64 {
        self.finished_stop + self.finished_length + self.finished_abort
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_match_vllm() {
        assert_eq!(
            one_two_five(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(one_two_five(131_072).last(), Some(&100_000.0));
    }

    #[test]
    fn engines_use_their_own_buckets() {
        let vllm = LatencyHistograms::for_engine(EngineKind::Vllm, 1024);
        let sglang = LatencyHistograms::for_engine(EngineKind::Sglang, 1024);
        assert_eq!(vllm.ttft.bounds().len(), 22);
        assert_eq!(sglang.ttft.bounds()[0], 0.1);
        assert_eq!(sglang.itl.bounds().len(), 23);
    }
}
