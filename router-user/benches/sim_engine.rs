//! How fast the simulated engine advances virtual time on one core.
//!
//! Workload: Azure-trace-shaped requests (prompt lognormal μ 6.63 σ 0.99, output lognormal
//! μ 5.02 σ 0.86, clipped), half of them opening with one of 16 shared 1,024-token system
//! prompts, Poisson arrivals at 12 req/s per engine (about 70 % of an H100's capacity in the
//! default profile). Throughput is in simulated tokens (prompt + output) per second of wall
//! time; `docs/benchmarks.md` converts it to tokens and requests per millisecond.
//!
//! Each case runs twice: `sim_engine/*` measures wall time, `sim_engine_cpu/*` the benchmark
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which stays meaningful on a machine shared
//! with other work.
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::measurement::{Measurement, ValueFormatter};
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

type Pending = std::iter::Peekable<std::vec::IntoIter<SimRequest>>;

/// When an engine next needs attention: its next event or its next arrival.
fn next_time(engine: &Engine, pending: &mut Pending) -> Option<u64> {
    match (
        engine.next_event_at(),
        pending.peek().map(|request| request.arrival),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Engines on one virtual clock, fed their requests at arrival time: a heap always hands out
/// the engine whose next event (or arrival) is earliest, until every request finished.
fn run_cluster(mut engines: Vec<(Engine, Pending)>) -> u64 {
    let mut events = Vec::with_capacity(4096);
    let mut finished = 0u64;
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = engines
        .iter_mut()
        .enumerate()
        .filter_map(|(index, (engine, pending))| {
            Some(Reverse((next_time(engine, pending)?, index)))
        })
        .collect();
    while let Some(Reverse((at, index))) = heap.pop() {
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
        if let Some(next) = next_time(engine, pending) {
            heap.push(Reverse((next, index)));
        }
    }
    finished
}

/// CPU time of the calling thread, in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec and the clock id is a Linux constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = f64;
    type Value = f64;

    fn start(&self) -> f64 {
        thread_cpu_ns()
    }
    fn end(&self, start: f64) -> f64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            t if t < 1e3 => (1.0, "ns cpu"),
            t if t < 1e6 => (1e-3, "µs cpu"),
            t if t < 1e9 => (1e-6, "ms cpu"),
            _ => (1e-9, "s cpu"),
        };
        values.iter_mut().for_each(|value| *value *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_iteration = match throughput {
            Throughput::Elements(n)
            | Throughput::Bytes(n)
            | Throughput::BytesDecimal(n)
            | Throughput::Bits(n) => *n as f64,
        };
        // Millions per CPU-second.
        values
            .iter_mut()
            .for_each(|ns| *ns = per_iteration / *ns * 1e3);
        "Melem/s cpu"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench_engine<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
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

fn bench_wall(c: &mut Criterion) {
    bench_engine(c, "sim_engine");
}

fn bench_cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench_engine(c, "sim_engine_cpu");
}

criterion_group! {
    name = wall;
    // No plots: the report fonts are not installed on headless machines.
    config = Criterion::default().without_plots();
    targets = bench_wall
}

criterion_group! {
    name = cpu;
    config = Criterion::default().without_plots().with_measurement(ThreadCpuTime);
    targets = bench_cpu
}

criterion_main!(wall, cpu);
