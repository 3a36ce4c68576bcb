//! `Scheduler::pick` latency at 16, 256 and 2,048 endpoints (Switchyard's full profile and GIE's
//! default for comparison), plus the costs around it: recording a route and hashing a body.
//! After criterion's runs, an hdrhistogram loop prints mean / p50 / p99 / p99.9 per fleet size
//! (criterion reports means and medians, not tails).
//!
//! `cargo bench -p router-user --bench pick`
use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use switchyard::scheduling::{BENCH_NOW, PickFixture, PrefixHasher, run_pick_bench};

const SIZES: [usize; 3] = [16, 256, 2_048];
const PROFILES: [&str; 2] = ["switchyard", "gie-default"];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for profile in PROFILES {
        for endpoints in SIZES {
            let fixture = PickFixture::new(profile, endpoints, 64, 256).expect("built-in profile");
            let mut n = 0usize;
            group.bench_with_input(BenchmarkId::new(profile, endpoints), &endpoints, |b, _| {
                b.iter(|| {
                    n += 1;
                    let request = fixture.request(n);
                    black_box(
                        fixture
                            .scheduler
                            .pick(&request, &fixture.snapshot, BENCH_NOW),
                    )
                })
            });
        }
    }
    group.finish();
}

fn around_pick(c: &mut Criterion) {
    let fixture = PickFixture::new("switchyard", 256, 64, 256).expect("built-in profile");
    let mut n = 0usize;
    c.bench_function("on_routed/switchyard/256", |b| {
        b.iter(|| {
            n += 1;
            let request = fixture.request(n);
            let target = fixture.snapshot.endpoints()[n % 256].addr();
            fixture.scheduler.on_routed(&request, target, BENCH_NOW);
        })
    });
    let body: Vec<u8> = (0..32 * 1024u32)
        .map(|i| b"abcdefgh jklmnop"[(i % 16) as usize])
        .collect();
    let mut group = c.benchmark_group("prefix_hasher");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("32KiB_in_8KiB_chunks", |b| {
        b.iter(|| {
            let mut hasher = PrefixHasher::new("bench-model");
            for chunk in body.chunks(8 * 1024) {
                hasher.update(chunk);
            }
            black_box(hasher.finish())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = pick, around_pick
}

/// `PICK_HDR_ONLY=1` skips criterion; `PICK_PROFILES=a,b` picks the built-in profiles timed.
fn main() {
    if std::env::var_os("PICK_HDR_ONLY").is_none() {
        benches();
        Criterion::default()
            .without_plots()
            .configure_from_args()
            .final_summary();
    }
    // Only under `cargo bench` (which passes --bench), not `cargo test --benches`.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let profiles: Vec<String> = std::env::var("PICK_PROFILES").map_or_else(
        |_| PROFILES.iter().map(|p| p.to_string()).collect(),
        |list| list.split(',').map(str::to_owned).collect(),
    );
    println!("\npick latency, one thread, hdrhistogram (ns):");
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "profile", "endpoints", "mean", "p50", "p99", "p99.9", "max"
    );
    for profile in &profiles {
        for endpoints in SIZES {
            let picks = if endpoints >= 2_048 { 50_000 } else { 200_000 };
            let r = match run_pick_bench(profile, endpoints, picks) {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("{profile}: {err}");
                    continue;
                }
            };
            println!(
                "{:<12} {:>9} {:>9.0} {:>9} {:>9} {:>9} {:>9}",
                r.profile, r.endpoints, r.mean_ns, r.p50_ns, r.p99_ns, r.p999_ns, r.max_ns
            );
        }
    }
}
