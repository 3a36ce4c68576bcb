//! A realistic fleet and request mix for timing `Scheduler::pick`, shared by the criterion bench
//! (`benches/pick.rs`) and [`run_pick_bench`] (an hdrhistogram loop for a `bench pick` command).
//!
//! The fleet: every endpoint with a fresh load sample (queue 0-12, KV 10-95 %), GPU readings,
//! a few requests in flight. The prefix index is warmed like a shared-prefix workload: a common
//! preamble every endpoint has seen (it hits the per-block holder cap), and `groups` system
//! prompts of ~6,000 tokens, each cached on a few endpoints. Requests are a group's system
//! prompt plus a fresh ~1,200-token question, hashed before timing (hashing is the body path's
//! cost, measured separately).
use std::{net::SocketAddr, time::Instant};

use hdrhistogram::Histogram;

use super::{
    BlockHash, ConfigError, Scheduler, SchedulerOptions, SchedulingRequest, picker::mix64,
};
use crate::{
    clock::{MICROS_PER_MS, Micros},
    cluster::{EndpointMeta, EndpointTable, Inflight, Snapshot},
    telemetry::{EndpointLoad, GpuSample},
};

/// `now` of every timed pick (virtual; samples are taken just before).
pub const BENCH_NOW: Micros = 1_000_000 * MICROS_PER_MS;
const PREAMBLE_TOKENS: u32 = 512;
const SYSTEM_PROMPT_TOKENS: u32 = 6_000;
const QUESTION_TOKENS: u32 = 1_200;

/// A fleet of endpoints in an endpoint table, a scheduler with a warmed index, and requests.
pub struct PickFixture {
    pub table: EndpointTable,
    pub scheduler: Scheduler,
    pub snapshot: std::sync::Arc<Snapshot>,
    pub requests: Vec<(Vec<BlockHash>, u32)>,
    _inflight: Vec<Inflight>,
}

fn endpoint_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8000))
}

fn tokens(seed: u64, len: u32) -> impl Iterator<Item = u32> {
    (0..u64::from(len)).map(move |i| (mix64(seed ^ i) % 128_000) as u32)
}

impl PickFixture {
    /// `profile` is a built-in name; `groups` shared system prompts; `requests` distinct requests
    /// (each count raised to at least 1).
    pub fn new(
        profile: &str,
        endpoints: usize,
        groups: usize,
        requests: usize,
    ) -> Result<Self, PickBenchError> {
        let (endpoints, groups, requests) = (endpoints.max(1), groups.max(1), requests.max(1));
        let table = EndpointTable::new();
        table.set_members((0..endpoints).map(|i| EndpointMeta::new(endpoint_addr(i))));
        let mut inflight = Vec::new();
        for i in 0..endpoints {
            let addr = endpoint_addr(i);
            let r = mix64(i as u64);
            table.update_load(
                &addr,
                EndpointLoad {
                    waiting: (r % 13) as u32,
                    running: 8 + (r >> 8) as u32 % 48,
                    kv_cache_usage: 0.1 + ((r >> 16) % 850) as f64 / 1_000.0,
                    prefix_cache_hit_rate: Some(((r >> 32) % 100) as f64 / 100.0),
                    sampled_at: BENCH_NOW - 20 * MICROS_PER_MS,
                    seq: 1,
                    ..EndpointLoad::default()
                },
            );
            table.update_gpu(
                &addr,
                &[GpuSample {
                    memory_used_bytes: 60 + (r >> 40) % 20,
                    memory_total_bytes: 80,
                    gpu_utilization_pct: ((r >> 48) % 100) as u32,
                    sampled_at: BENCH_NOW - 500 * MICROS_PER_MS,
                    ..GpuSample::default()
                }],
            );
            for _ in 0..(r >> 56) % 4 {
                inflight.extend(table.begin(&addr, 8_000));
            }
        }
        let scheduler = Scheduler::builtin_with(profile, SchedulerOptions::seeded(1))?;
        let snapshot = table.snapshot();
        let model = "bench-model";
        let preamble: Vec<u32> = tokens(u64::MAX, PREAMBLE_TOKENS).collect();
        let group_prompt = |group: usize| -> Vec<u32> {
            let mut prompt = preamble.clone();
            prompt.extend(tokens(group as u64, SYSTEM_PROMPT_TOKENS - PREAMBLE_TOKENS));
            prompt
        };
        // Warm: every endpoint saw the preamble; each group lives on 3 endpoints.
        let preamble_blocks = scheduler.hash_tokens(model, &preamble);
        for i in 0..endpoints {
            let request = SchedulingRequest {
                prefix: &preamble_blocks,
                ..SchedulingRequest::new(model)
            };
            scheduler.on_routed(&request, endpoint_addr(i), BENCH_NOW);
        }
        let prompts: Vec<Vec<u32>> = (0..groups).map(group_prompt).collect();
        for (group, prompt) in prompts.iter().enumerate() {
            let blocks = scheduler.hash_tokens(model, prompt);
            for replica in 0..3 {
                let request = SchedulingRequest {
                    prefix: &blocks,
                    ..SchedulingRequest::new(model)
                };
                let target = mix64((group * 3 + replica) as u64) as usize % endpoints;
                scheduler.on_routed(&request, endpoint_addr(target), BENCH_NOW);
            }
        }
        let requests = (0..requests)
            .map(|n| {
                let mut prompt = prompts[n % groups].clone();
                prompt.extend(tokens(1_000_000 + n as u64, QUESTION_TOKENS));
                let input = prompt.len() as u32;
                (scheduler.hash_tokens(model, &prompt), input)
            })
            .collect();
        Ok(Self {
            table,
            scheduler,
            snapshot,
            requests,
            _inflight: inflight,
        })
    }

    /// The `n`-th request (cycling).
    pub fn request(&self, n: usize) -> SchedulingRequest<'_> {
        let (blocks, input) = &self.requests[n % self.requests.len()];
        SchedulingRequest {
            prefix: blocks,
            input_tokens: *input,
            max_tokens: Some(1_000),
            ..SchedulingRequest::new("bench-model")
        }
    }
}

/// Latency distribution of one fleet size, in nanoseconds.
#[derive(Clone, Debug)]
pub struct PickLatency {
    pub profile: String,
    pub endpoints: usize,
    pub picks: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// Why a pick benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum PickBenchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("latency histogram: {0}")]
    Histogram(String),
}

/// Times `picks` picks (after `picks / 10` warm-up picks) on one thread.
pub fn run_pick_bench(
    profile: &str,
    endpoints: usize,
    picks: u64,
) -> Result<PickLatency, PickBenchError> {
    let fixture = PickFixture::new(profile, endpoints, 64, 256)?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|err| PickBenchError::Histogram(err.to_string()))?;
    let warmup = picks / 10;
    let mut sink = 0usize;
    for n in 0..(warmup + picks) {
        let request = fixture.request(n as usize);
        let started = Instant::now();
        let decision = fixture
            .scheduler
            .pick(&request, &fixture.snapshot, BENCH_NOW);
        let elapsed = started.elapsed().as_nanos() as u64;
        sink = sink.wrapping_add(decision.map_or(0, |d| d.ranked.len()));
        if n >= warmup {
            histogram.saturating_record(elapsed.max(1));
        }
    }
    std::hint::black_box(sink);
    Ok(PickLatency {
        profile: profile.to_owned(),
        endpoints,
        picks,
        mean_ns: histogram.mean(),
        p50_ns: histogram.value_at_quantile(0.50),
        p99_ns: histogram.value_at_quantile(0.99),
        p999_ns: histogram.value_at_quantile(0.999),
        max_ns: histogram.max(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_requests_hit_their_groups() {
        let fixture = PickFixture::new("switchyard", 32, 4, 8).expect("built-in");
        let decision = fixture
            .scheduler
            .pick(&fixture.request(0), &fixture.snapshot, BENCH_NOW)
            .expect("picked");
        assert!(
            decision.ranked.iter().any(|r| r.prefix_hit > 0.5),
            "{}",
            decision.explain()
        );
        let latency = run_pick_bench("switchyard", 16, 50).expect("built-in");
        assert_eq!(latency.picks, 50);
        assert!(latency.p50_ns <= latency.p99_ns && latency.p99_ns <= latency.max_ns);
        assert!(matches!(
            run_pick_bench("fastest", 16, 10),
            Err(PickBenchError::Config(ConfigError::UnknownBuiltin { .. }))
        ));
        assert!(PickFixture::new("random", 0, 0, 0).is_ok());
    }
}
