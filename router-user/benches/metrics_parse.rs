//! Parse and normalise cost per engine fixture: what one scrape costs the agent after the bytes
//! have arrived. `normalize` reads only the families the engine's table names (the scraper's
//! path); `parse_all` checks every line (the strict mode tests use).
//!
//! Run: `cargo bench -p router-user --bench metrics_parse`
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard::telemetry::EndpointLoad;
use switchyard::telemetry::engines::LoadNormalizer;
use switchyard::telemetry::prom;

const FIXTURES: &[&str] = &[
    "vllm.txt",
    "vllm_v0_legacy.txt",
    "sglang.txt",
    "trtllm.txt",
    "triton.txt",
];

fn load_fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/metrics")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

fn bench(c: &mut Criterion) {
    for name in FIXTURES {
        let text = load_fixture(name);
        let mut group = c.benchmark_group(name.trim_end_matches(".txt"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function("normalize", |b| {
            let mut normalizer = LoadNormalizer::new(None);
            let mut load = EndpointLoad::default();
            let mut now = 0;
            b.iter(|| {
                now += 1;
                normalizer
                    .normalize_into(black_box(&text), now, &mut load)
                    .expect("fixture normalises");
                black_box(&load);
            });
        });
        group.bench_function("parse_all", |b| {
            b.iter(|| {
                let mut samples = 0usize;
                prom::parse_all(black_box(&text), |_| samples += 1).expect("fixture parses");
                black_box(samples)
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Plots need system fonts, which build machines often lack; the numbers are what we keep.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
