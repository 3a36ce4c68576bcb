use super::*;
use crate::bench::workload::{SharedPrefixParams, WorkloadSpec};

fn tiny_shared_prefix() -> Workload {
    WorkloadSpec::SharedPrefix(SharedPrefixParams {
        groups: 6,
        prompts_per_group: 3,
        system_tokens: 1_024,
        question_tokens: 128,
        output_tokens: 32,
    })
    .generate(60, 1)
    .expect("valid workload")
}

fn config(servers: usize) -> SimConfig {
    SimConfig {
        servers,
        warmup: 0.0,
        ..SimConfig::default()
    }
}

#[test]
fn addresses_round_trip() {
    for index in [0, 1, 63, 254, 255, 1_000] {
        assert_eq!(server_index(&server_addr(index)), Some(index));
    }
    assert_eq!(server_index(&"10.0.0.1:9000".parse().unwrap()), None);
    assert_eq!(server_index(&"10.0.0.0:8000".parse().unwrap()), None);
}

#[test]
fn every_request_completes_and_is_counted() {
    let workload = tiny_shared_prefix();
    for name in ["round-robin", "switchyard", "oracle"] {
        let policy = Policy::builtin(name).expect("built-in");
        let arrivals = workload.arrival_times(20.0, 3);
        let outcome = simulate(&workload, &policy, &arrivals, &config(3)).expect("ran");
        let metrics = &outcome.metrics;
        assert_eq!((metrics.requests, metrics.completed), (60, 60), "{name}");
        assert_eq!(outcome.routed.iter().sum::<u64>(), 60, "{name}");
        assert!(metrics.ttft_p50_ms.is_some_and(|ms| ms > 0.0), "{name}");
        assert!(metrics.prefix_hit_rate.is_some_and(|h| h > 0.0), "{name}");
        assert!(metrics.throughput_rps > 0.0, "{name}");
    }
}

#[test]
fn warm_up_requests_are_served_but_not_measured() {
    let workload = tiny_shared_prefix();
    let policy = Policy::builtin("least-request").expect("built-in");
    let config = SimConfig {
        warmup: 0.5,
        ..config(2)
    };
    let outcome = simulate(
        &workload,
        &policy,
        &workload.arrival_times(10.0, 1),
        &config,
    )
    .expect("ran");
    assert_eq!(outcome.metrics.requests, 30);
    assert_eq!(outcome.metrics.completed, 30);
    assert_eq!(outcome.routed.iter().sum::<u64>(), 60, "all were served");
    let err = run_at_rate(
        &workload,
        &policy,
        1.0,
        &SimConfig {
            warmup: 1.0,
            ..config
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("warm-up"), "{err}");
}

#[test]
fn round_robin_spreads_evenly() {
    let workload = tiny_shared_prefix();
    let policy = Policy::builtin("round-robin").expect("built-in");
    let outcome = simulate(
        &workload,
        &policy,
        &workload.arrival_times(5.0, 1),
        &config(3),
    )
    .expect("ran");
    assert_eq!(outcome.routed, vec![20, 20, 20]);
}

#[test]
fn sheddable_requests_get_429_when_saturated() {
    let workload = tiny_shared_prefix();
    let policy = Policy::builtin("least-request").expect("built-in");
    let config = SimConfig {
        servers: 1,
        sheddable_share: 1.0,
        ..SimConfig::default()
    };
    // Everything at once: the single server's queue passes the saturation threshold.
    let outcome = simulate(
        &workload,
        &policy,
        &workload.arrival_times(f64::INFINITY, 1),
        &config,
    )
    .expect("ran");
    let metrics = &outcome.metrics;
    assert!(metrics.rejected_429 > 0, "{metrics:?}");
    assert_eq!(metrics.rejected_429 + metrics.completed, 60);
}

#[test]
fn bad_settings_are_refused() {
    let workload = tiny_shared_prefix();
    let policy = Policy::builtin("random").expect("built-in");
    let err = simulate(&workload, &policy, &[], &config(2)).unwrap_err();
    assert!(matches!(err, SimError::Arrivals { .. }), "{err}");
    let err = run_at_rate(&workload, &policy, 1.0, &config(0)).unwrap_err();
    assert!(err.to_string().contains("servers"), "{err}");
    let err = run_at_rate(&workload, &policy, 1.0, &config(65)).unwrap_err();
    assert!(err.to_string().contains("servers"), "{err}");
    assert!(Policy::builtin("fastest").is_err());
}
