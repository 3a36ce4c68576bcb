//! The metrics reader and normaliser on every engine fixture in `tests/fixtures/metrics/`.
mod telemetry_support;
use telemetry_support as support;

use support::{fixture, set_value};
use switchyard::telemetry::engines::{LoadNormalizer, NormalizeError, detect_engine};
use switchyard::telemetry::prom::{self, ParseErrorKind};
use switchyard::telemetry::{EndpointLoad, EngineKind};

const FIXTURES: &[(&str, EngineKind)] = &[
    ("metrics/vllm.txt", EngineKind::Vllm),
    ("metrics/vllm_v0_legacy.txt", EngineKind::Vllm),
    ("metrics/vllm_openmetrics.txt", EngineKind::Vllm),
    ("metrics/sglang.txt", EngineKind::Sglang),
    ("metrics/trtllm.txt", EngineKind::Trtllm),
    ("metrics/triton.txt", EngineKind::Triton),
    ("metrics/triton_legacy.txt", EngineKind::Triton),
];

fn read(path: &str) -> EndpointLoad {
    LoadNormalizer::new(None)
        .normalize(&fixture(path), 1_000)
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Reads `first`, then `first` with the given samples changed, and returns the second reading.
fn second_reading(engine: Option<EngineKind>, path: &str, changes: &[(&str, f64)]) -> EndpointLoad {
    let first = fixture(path);
    let second = changes.iter().fold(first.clone(), |page, (name, value)| {
        set_value(&page, name, *value)
    });
    let mut normalizer = LoadNormalizer::new(engine);
    normalizer.normalize(&first, 1).unwrap();
    normalizer.normalize(&second, 2).unwrap()
}

fn close(actual: Option<f64>, expected: f64) -> bool {
    actual.is_some_and(|value| (value - expected).abs() < 1e-9)
}

#[test]
fn every_fixture_is_valid_exposition_text_of_its_engine() {
    for (path, engine) in FIXTURES {
        let text = fixture(path);
        let summary = prom::parse_all(&text, |_| {}).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert!(summary.samples > 5, "{path}");
        assert_eq!(detect_engine(&text).unwrap(), Some(*engine), "{path}");
        assert_eq!(read(path).engine, *engine, "{path}");
    }
}

#[test]
fn vllm_v1_page() {
    let load = read("metrics/vllm.txt");
    assert_eq!((load.waiting, load.running), (3, 12));
    assert_eq!(load.kv_cache_usage, 0.4375);
    assert_eq!(load.block_size, Some(16));
    assert_eq!(load.num_gpu_blocks, Some(27306));
    // One page has no interval yet, and v1 publishes no ready-made rate.
    assert_eq!(load.prefix_cache_hit_rate, None);
    assert_eq!(load.ttft_mean_s, None);
    let lora = load.lora.expect("LoRA series on the page");
    assert_eq!(lora.running, vec!["sql-lora", "chat-lora"]);
    assert_eq!(lora.waiting, vec!["code-lora"]);
    assert_eq!(lora.max_loras, 4);
    assert_eq!((load.sampled_at, load.seq), (1_000, 1));
}

#[test]
fn vllm_rates_and_latencies_come_from_two_scrapes() {
    let load = second_reading(
        Some(EngineKind::Vllm),
        "metrics/vllm.txt",
        &[
            ("vllm:prefix_cache_queries_total", 185344.0 + 4096.0),
            ("vllm:prefix_cache_hits_total", 122880.0 + 3072.0),
            ("vllm:time_to_first_token_seconds_sum", 25.6 + 2.0),
            ("vllm:time_to_first_token_seconds_count", 128.0 + 10.0),
            ("vllm:inter_token_latency_seconds_sum", 120.5 + 3.0),
            ("vllm:inter_token_latency_seconds_count", 6025.0 + 100.0),
        ],
    );
    assert!(close(load.prefix_cache_hit_rate, 0.75), "{load:?}");
    assert!(close(load.ttft_mean_s, 0.2), "{load:?}");
    assert!(close(load.itl_mean_s, 0.03), "{load:?}");
    assert_eq!(load.seq, 2);
}

#[test]
fn vllm_counter_reset_between_scrapes() {
    let first = fixture("metrics/vllm.txt");
    // The server restarted: every counter starts again from a small value.
    let mut restarted = set_value(&first, "vllm:prefix_cache_queries_total", 1000.0);
    restarted = set_value(&restarted, "vllm:prefix_cache_hits_total", 250.0);
    let mut normalizer = LoadNormalizer::new(None);
    normalizer.normalize(&first, 1).unwrap();
    let load = normalizer.normalize(&restarted, 2).unwrap();
    assert!(close(load.prefix_cache_hit_rate, 0.25), "{load:?}");
    let mut after = set_value(&restarted, "vllm:prefix_cache_queries_total", 2000.0);
    after = set_value(&after, "vllm:prefix_cache_hits_total", 1250.0);
    assert!(close(
        normalizer
            .normalize(&after, 3)
            .unwrap()
            .prefix_cache_hit_rate,
        1.0
    ));
}

#[test]
fn vllm_v0_legacy_page() {
    let load = read("metrics/vllm_v0_legacy.txt");
    assert_eq!((load.waiting, load.running), (5, 7));
    assert_eq!(load.kv_cache_usage, 0.912);
    assert!(close(load.prefix_cache_hit_rate, 0.6133), "{load:?}");
    assert_eq!(
        (load.block_size, load.num_gpu_blocks),
        (Some(16), Some(7812))
    );
    let lora = load.lora.unwrap();
    assert_eq!(lora.running, vec!["fr-adapter"]);
    assert_eq!(lora.waiting, vec!["de-adapter", "es-adapter"]);
    assert_eq!(lora.max_loras, 2);
}

#[test]
fn vllm_legacy_latency_names_feed_the_same_fields() {
    let load = second_reading(
        None,
        "metrics/vllm_v0_legacy.txt",
        &[
            ("vllm:time_per_output_token_seconds_sum", 729.39 + 5.0),
            ("vllm:time_per_output_token_seconds_count", 24313.0 + 200.0),
        ],
    );
    assert!(close(load.itl_mean_s, 0.025), "{load:?}");
}

#[test]
fn vllm_openmetrics_page_with_eof_and_exemplar() {
    let load = read("metrics/vllm_openmetrics.txt");
    assert_eq!((load.waiting, load.running), (0, 1));
    assert_eq!(load.kv_cache_usage, 0.0625);
    assert_eq!(load.lora, None);
}

#[test]
fn sglang_data_parallel_page() {
    let load = read("metrics/sglang.txt");
    assert_eq!((load.waiting, load.running), (6, 40));
    assert!((load.kv_cache_usage - 0.5).abs() < 1e-12);
    // The engine's own rate stands in until the counters have an interval.
    assert!(close(load.prefix_cache_hit_rate, 0.70), "{load:?}");
    assert_eq!((load.block_size, load.num_gpu_blocks), (None, None));
    assert_eq!(load.lora, None);

    let load = second_reading(
        Some(EngineKind::Sglang),
        "metrics/sglang.txt",
        &[
            ("sglang:prompt_tokens_total", 1204224.0 + 1000.0),
            ("sglang:cached_tokens_total", 842956.0 + 900.0),
        ],
    );
    assert!(close(load.prefix_cache_hit_rate, 0.9), "{load:?}");
}

#[test]
fn trtllm_serve_page() {
    let load = read("metrics/trtllm.txt");
    assert_eq!((load.waiting, load.running), (9, 64));
    assert_eq!(load.kv_cache_usage, 0.625);
    assert!(close(load.prefix_cache_hit_rate, 0.4), "{load:?}");
    assert_eq!(
        (load.block_size, load.num_gpu_blocks),
        (Some(32), Some(3328))
    );

    let load = second_reading(
        None,
        "metrics/trtllm.txt",
        &[
            ("trtllm_kv_cache_reused_blocks_total", 6120.0 + 30.0),
            ("trtllm_kv_cache_missed_blocks_total", 9180.0 + 10.0),
        ],
    );
    assert!(close(load.prefix_cache_hit_rate, 0.75), "{load:?}");
}

#[test]
fn trtllm_names_reexported_by_dynamo_read_the_same() {
    let text = fixture("metrics/trtllm.txt").replace("trtllm_", "trtllm:");
    let load = LoadNormalizer::new(None).normalize(&text, 1).unwrap();
    assert_eq!(
        (load.engine, load.waiting, load.running),
        (EngineKind::Trtllm, 9, 64)
    );
}

#[test]
fn triton_pages() {
    let load = read("metrics/triton.txt");
    assert_eq!((load.waiting, load.running), (6, 30));
    assert_eq!(load.kv_cache_usage, 0.5);
    assert_eq!(
        (load.block_size, load.num_gpu_blocks),
        (Some(64), Some(6240))
    );
    assert_eq!(load.prefix_cache_hit_rate, None);

    // Without `waiting` and `fraction`: held = active - scheduled, plus Triton's own queue.
    let legacy = read("metrics/triton_legacy.txt");
    assert_eq!((legacy.waiting, legacy.running), (4 + 3, 10));
    assert_eq!(legacy.kv_cache_usage, 0.25);
}

#[test]
fn malformed_pages_fail_with_the_line_and_the_problem() {
    let cases: &[(&str, usize, ParseErrorKind)] = &[
        (
            "metrics/malformed/truncated_label.txt",
            7,
            ParseErrorKind::UnterminatedLabelValue,
        ),
        (
            "metrics/malformed/bad_value.txt",
            3,
            ParseErrorKind::InvalidValue("twelve".into()),
        ),
        (
            "metrics/malformed/bad_escape.txt",
            3,
            ParseErrorKind::InvalidEscape('m'),
        ),
        (
            "metrics/malformed/after_eof.txt",
            4,
            ParseErrorKind::ContentAfterEof,
        ),
    ];
    for (path, line, kind) in cases {
        let err = LoadNormalizer::new(None)
            .normalize(&fixture(path), 1)
            .unwrap_err();
        match &err {
            NormalizeError::Parse(parse) => {
                assert_eq!((parse.line, &parse.kind), (*line, kind), "{path}");
                assert!(err.to_string().contains(&format!("line {line}:")), "{err}");
            }
            other => panic!("{path}: expected a parse error, got {other}"),
        }
    }
}

#[test]
fn trtllm_json_stats_are_refused_with_the_right_path() {
    // The JSON shape trtllm-serve documents for /metrics (docs/source/commands/trtllm-serve.rst).
    let err = LoadNormalizer::new(None)
        .normalize(&fixture("metrics/malformed/trtllm_json.json"), 1)
        .unwrap_err();
    assert!(
        matches!(err, NormalizeError::NotPrometheusText { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/prometheus/metrics"), "{err}");
}

#[test]
fn a_configured_engine_that_does_not_match_the_page_is_an_error_not_idle() {
    let err = LoadNormalizer::new(Some(EngineKind::Sglang))
        .normalize(&fixture("metrics/vllm.txt"), 1)
        .unwrap_err();
    assert!(err.to_string().contains("sglang:num_queue_reqs"), "{err}");
}
