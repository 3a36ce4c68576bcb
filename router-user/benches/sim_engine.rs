//! How fast the simulated engine advances virtual time on one core.
//!
//! Workload: Azure-trace-shaped requests (prompt lognormal μ 6.63 σ 0.99, output lognormal
//! μ 5.02 σ 0.86, clipped), half of them opening with one of 16 shared 1,024-token system
//! prompts, Poisson arrivals at 12 req/s per engine (about 70 % of an H100's capacity in the
//! default profile). Throughput is in simulated tokens (prompt + output) per second of wall
//! time; `docs/benchmarks.md` converts it to tokens and requests per millisecond.
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};
use switchyard::sim::{Engine, EngineConfig, EngineEvent, EventDetail, Profile, SimRequest};

const REQUESTS_PER_ENGINE: usize = 2_000;
/// Per engine in the 64-engine run (keeps the prompts of all engines in memory at once small).
const REQUESTS_PER_CLUSTER_ENGINE: usize = 250;
const RATE_PER_SEC: f64 = 12.0;

struct Workload {
    requests: Vec<SimRequest>,
    tokens: u64,
}

fn workload(seed: u64, id_base: u64, count: usize) -> Workload {
    let mut rng = SmallRng::seed_from_u64(seed);
    let prompt_len = LogNormal::new(6.63, 0.99).expect("valid lognormal");
    let output_len = LogNormal::new(5.02, 0.86).expect("valid lognormal");
    let gaps = Exp::new(RATE_PER_SEC).expect("valid rate");
    let systems: Vec<Vec<u32>> = (0..16u32)
        .map(|group| (0..1024).map(|i| group * 10_000 + i).collect())
        .collect();
    let mut arrival = 0.0f64;
    let mut tokens = 0u64;
    let requests = (0..count as u64)
        .map(|index| {
            arrival += gaps.sample(&mut rng);
            let own = (prompt_len.sample(&mut rng) as u32).clamp(16, 6_000);
            let mut prompt: Vec<u32> = Vec::with_capacity(own as usize + 1024);
            if rng.random_bool(0.5) {
                prompt.extend_from_slice(&systems[rng.random_range(0..systems.len())]);
            }
            prompt.extend((0..own).map(|i| 1_000_000 + (index as u32) * 8_000 + i));
            let max_tokens = (output_len.sample(&mut rng) as u32).clamp(1, 2_000);
            tokens += prompt.len() as u64 + u64::from(max_tokens);
            SimRequest {
                id: id_base + index,
                prompt: Arc::from(prompt),
                max_tokens,
                ignore_eos: true,
                lora: None,
                arrival: (arrival * 1e6) as u64,
            }
        })
        .collect();
    Workload { requests, tokens }
}

fn new_engine(events: EventDetail) -> Engine {
    Engine::new(
        Profile::default(),
        EngineConfig {
            events,
            ..EngineConfig::default()
        },
    )
}

/// Engines on one virtual clock, fed their requests at arrival time: always advance the engine
/// whose next event (or next arrival) is earliest, until every request finished.
fn run_cluster(
    mut engines: Vec<(Engine, std::iter::Peekable<std::vec::IntoIter<SimRequest>>)>,
) -> u64 {
    let mut events = Vec::with_capacity(4096);
    let mut finished = 0u64;
    loop {
        let mut best: Option<(u64, usize)> = None;
        for (index, (engine, pending)) in engines.iter_mut().enumerate() {
            let candidate = match (engine.next_event_at(), pending.peek().map(|r| r.arrival)) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => continue,
            };
            if best.is_none_or(|(at, _)| candidate < at) {
                best = Some((candidate, index));
            }
        }
        let Some((at, index)) = best else { break };
        let (engine, pending) = &mut engines[index];
        engine.advance_into(at, &mut events);
        while pending.peek().is_some_and(|request| request.arrival <= at) {
            if let Some(request) = pending.next() {
                engine.submit(request).expect("valid request");
            }
        }
        finished += events
            .iter()
            .filter(|event| matches!(event, EngineEvent::Finished { .. }))
            .count() as u64;
        events.clear();
    }
    finished
}

fn bench_engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_engine");
    group.sample_size(10);
    let probe = workload(1, 0, REQUESTS_PER_ENGINE);
    group.throughput(Throughput::Elements(probe.tokens));
    for (name, detail) in [
        ("one_engine_milestones", EventDetail::Milestones),
        ("one_engine_token_events", EventDetail::Tokens),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (
                        new_engine(detail),
                        workload(1, 0, REQUESTS_PER_ENGINE).requests,
                    )
                },
                |(engine, requests)| {
                    black_box(run_cluster(vec![(engine, requests.into_iter().peekable())]))
                },
                BatchSize::LargeInput,
            )
        });
    }
    let cluster_tokens: u64 = (0..64)
        .map(|seed| workload(seed, seed << 32, REQUESTS_PER_CLUSTER_ENGINE).tokens)
        .sum();
    group.throughput(Throughput::Elements(cluster_tokens));
    group.bench_function("cluster_64_engines_milestones", |b| {
        b.iter_batched(
            || {
                (0..64u64)
                    .map(|seed| {
                        let requests =
                            workload(seed, seed << 32, REQUESTS_PER_CLUSTER_ENGINE).requests;
                        (
                            new_engine(EventDetail::Milestones),
                            requests.into_iter().peekable(),
                        )
                    })
                    .collect::<Vec<_>>()
            },
            |engines| black_box(run_cluster(engines)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
