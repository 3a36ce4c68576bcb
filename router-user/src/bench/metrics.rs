//! What one benchmark run measures, and the recorder that measures it.
//!
//! The cluster simulation feeds a [`Recorder`] from engine events on virtual time; a live
//! benchmark can feed the same recorder from streamed responses on the wall clock. Either way the
//! result is one [`RunMetrics`], the figures of one policy at one rate (`docs/bench.md` defines
//! each).
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::clock::{MICROS_PER_SEC, Micros};

/// The figures of one run. Latencies in milliseconds; `None` when nothing was measured (e.g.
/// every request was rejected).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Requests the client sent (completed + rejected + errors).
    pub requests: u64,
    pub completed: u64,
    /// Sheddable requests the router refused because every endpoint was saturated (HTTP 429).
    pub rejected_429: u64,
    /// Requests that failed otherwise (no endpoint, refused by the engine).
    pub errors: u64,
    /// Follow-up turns never sent because an earlier turn of their conversation failed.
    pub abandoned: u64,
    /// From the first arrival to the last completion, seconds.
    pub duration_s: f64,
    /// Completed requests per second of `duration_s`.
    pub throughput_rps: f64,
    /// Output tokens of completed requests per second of `duration_s`.
    pub output_tokens_per_s: f64,
    /// Time to first token: arrival at the router → first output token.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p90_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub ttft_mean_ms: Option<f64>,
    /// Inter-token latency: gaps between consecutive output tokens of a request, all tokens.
    pub itl_p50_ms: Option<f64>,
    pub itl_p90_ms: Option<f64>,
    /// End-to-end latency: arrival → last token.
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p90_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    /// Prompt tokens served from the engines' prefix caches / prompt tokens, over completed
    /// requests (what the engines report as cached when a request is first scheduled).
    pub prefix_hit_rate: Option<f64>,
    /// Sequences the engines preempted (KV cache exhausted) during the run.
    pub preemptions: u64,
}

/// Latencies are recorded in microseconds with 3 significant digits (0.1 % resolution) up to
/// one hour; longer values saturate.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600 * MICROS_PER_SEC, 3)
        .expect("static histogram bounds are valid")
}

/// Accumulates one run's measurements.
#[derive(Clone, Debug)]
pub struct Recorder {
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    e2e: Histogram<u64>,
    requests: u64,
    completed: u64,
    rejected: u64,
    errors: u64,
    abandoned: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    output_tokens: u64,
    first_arrival: Option<Micros>,
    last_finish: Option<Micros>,
    finishes: Vec<Micros>,
    /// Output tokens produced per [`TIMELINE_BUCKET`] of time.
    timeline: Vec<u32>,
}

/// Width of one bucket of the output-token timeline.
pub const TIMELINE_BUCKET: Micros = 100_000;

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            ttft: histogram(),
            itl: histogram(),
            e2e: histogram(),
            requests: 0,
            completed: 0,
            rejected: 0,
            errors: 0,
            abandoned: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            output_tokens: 0,
            first_arrival: None,
            last_finish: None,
            finishes: Vec::new(),
            timeline: Vec::new(),
        }
    }

    /// A request was sent at `at`.
    pub fn sent(&mut self, at: Micros) {
        self.requests += 1;
        self.first_arrival = Some(self.first_arrival.map_or(at, |first| first.min(at)));
    }

    pub fn first_token(&mut self, sent: Micros, at: Micros) {
        self.ttft.saturating_record(at.saturating_sub(sent).max(1));
    }

    /// An output token was produced at `at` (every token, the first included).
    pub fn output_token(&mut self, at: Micros) {
        let bucket = (at / TIMELINE_BUCKET) as usize;
        if bucket >= self.timeline.len() {
            self.timeline.resize(bucket + 1, 0);
        }
        self.timeline[bucket] += 1;
    }

    /// Output tokens per second produced between `from` and `to` (whole buckets).
    pub fn output_rate(&self, from: Micros, to: Micros) -> f64 {
        let (first, last) = (
            (from / TIMELINE_BUCKET) as usize,
            (to / TIMELINE_BUCKET) as usize,
        );
        if last <= first {
            return 0.0;
        }
        let tokens: u64 = self
            .timeline
            .iter()
            .skip(first)
            .take(last - first)
            .map(|&count| u64::from(count))
            .sum();
        tokens as f64 / ((last - first) as u64 * TIMELINE_BUCKET) as f64 * MICROS_PER_SEC as f64
    }

    /// Gap between two consecutive output tokens of one request.
    pub fn token_gap(&mut self, gap: Micros) {
        self.itl.saturating_record(gap.max(1));
    }

    pub fn completed(
        &mut self,
        sent: Micros,
        at: Micros,
        prompt_tokens: u64,
        cached_tokens: u64,
        output_tokens: u64,
    ) {
        self.completed += 1;
        self.e2e.saturating_record(at.saturating_sub(sent).max(1));
        self.prompt_tokens += prompt_tokens;
        self.cached_tokens += cached_tokens;
        self.output_tokens += output_tokens;
        self.last_finish = Some(self.last_finish.map_or(at, |last| last.max(at)));
        self.finishes.push(at);
    }

    pub fn rejected(&mut self) {
        self.rejected += 1;
    }

    pub fn failed(&mut self) {
        self.errors += 1;
    }

    pub fn abandoned(&mut self) {
        self.abandoned += 1;
    }

    /// Completion times so far, in completion order.
    pub fn finishes(&self) -> &[Micros] {
        &self.finishes
    }

    /// The figures; `preemptions` comes from the servers.
    pub fn summary(&self, preemptions: u64) -> RunMetrics {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        let quantile =
            |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| ms(h.value_at_quantile(q)));
        let duration = match (self.first_arrival, self.last_finish) {
            (Some(first), Some(last)) if last > first => {
                (last - first) as f64 / MICROS_PER_SEC as f64
            }
            _ => 0.0,
        };
        let per_second = |count: u64| {
            if duration > 0.0 {
                count as f64 / duration
            } else {
                0.0
            }
        };
        RunMetrics {
            requests: self.requests,
            completed: self.completed,
            rejected_429: self.rejected,
            errors: self.errors,
            abandoned: self.abandoned,
            duration_s: duration,
            throughput_rps: per_second(self.completed),
            output_tokens_per_s: per_second(self.output_tokens),
            ttft_p50_ms: quantile(&self.ttft, 0.50),
            ttft_p90_ms: quantile(&self.ttft, 0.90),
            ttft_p99_ms: quantile(&self.ttft, 0.99),
            ttft_mean_ms: (!self.ttft.is_empty()).then(|| self.ttft.mean() / 1_000.0),
            itl_p50_ms: quantile(&self.itl, 0.50),
            itl_p90_ms: quantile(&self.itl, 0.90),
            e2e_p50_ms: quantile(&self.e2e, 0.50),
            e2e_p90_ms: quantile(&self.e2e, 0.90),
            e2e_p99_ms: quantile(&self.e2e, 0.99),
            prefix_hit_rate: (self.prompt_tokens > 0)
                .then(|| self.cached_tokens as f64 / self.prompt_tokens as f64),
            preemptions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_computes_rates_and_quantiles() {
        let mut recorder = Recorder::new();
        for i in 0..100u64 {
            let sent = i * 10_000;
            recorder.sent(sent);
            recorder.first_token(sent, sent + (i + 1) * 1_000);
            recorder.token_gap(20_000);
            recorder.completed(sent, sent + 200_000, 1_000, 250, 50);
        }
        recorder.sent(5);
        recorder.rejected();
        for at in [50_000, 150_000, 160_000, 350_000] {
            recorder.output_token(at);
        }
        assert_eq!(recorder.output_rate(0, 200_000), 15.0);
        assert_eq!(recorder.output_rate(100_000, 400_000), 10.0);
        assert_eq!(recorder.output_rate(100_000, 100_000), 0.0);
        let metrics = recorder.summary(3);
        assert_eq!(
            (metrics.requests, metrics.completed, metrics.rejected_429),
            (101, 100, 1)
        );
        // First arrival 0, last completion 990 ms + 200 ms.
        assert!((metrics.duration_s - 1.19).abs() < 1e-9);
        assert!((metrics.throughput_rps - 100.0 / 1.19).abs() < 1e-9);
        assert!((metrics.output_tokens_per_s - 5_000.0 / 1.19).abs() < 1e-6);
        let p90 = metrics.ttft_p90_ms.expect("measured");
        assert!((p90 - 90.0).abs() < 0.1, "{p90}");
        assert_eq!(metrics.itl_p50_ms.map(f64::round), Some(20.0));
        assert_eq!(metrics.prefix_hit_rate, Some(0.25));
        assert_eq!(metrics.preemptions, 3);
        assert_eq!(recorder.finishes().len(), 100);
    }

    #[test]
    fn nothing_measured_is_none_not_zero() {
        let mut recorder = Recorder::new();
        recorder.sent(0);
        recorder.failed();
        let metrics = recorder.summary(0);
        assert_eq!(metrics.ttft_p50_ms, None);
        assert_eq!(metrics.prefix_hit_rate, None);
        assert_eq!(metrics.throughput_rps, 0.0);
        assert_eq!(metrics.errors, 1);
    }
}
