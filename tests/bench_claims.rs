//! The routing claims that matter, on a deterministic simulation small enough for a debug build:
//! on the shared-prefix workload near saturation, Switchyard's profile beats round-robin on p90
//! TTFT and is no worse than GIE's default profile.
//!
//! The cluster is scaled down with the workload so the regime stays GIE's: four servers with
//! 60,000 tokens of KV cache each; 24 system prompts of 1,500 tokens × 4 questions of 300 tokens
//! (65k distinct prompt tokens: more than one server holds, less than the cluster does), 100
//! output tokens. Its capacity (`switchyard bench sim` calibration with these settings) is
//! about 120 requests per second; the test runs at 0.85× and 1.0× of that. Figures for the
//! full-size workloads are in docs/benchmarks.md.
use switchyard::{
    bench::{
        sim::{Policy, SimConfig, run_at_rate},
        workload::{SharedPrefixParams, WorkloadSpec},
    },
    sim::Profile,
};

const SEED: u64 = 1;
const RATES: [f64; 2] = [100.0, 120.0];

fn p90_ttft(policy: &str, rate: f64) -> f64 {
    let workload = WorkloadSpec::SharedPrefix(SharedPrefixParams {
        groups: 24,
        prompts_per_group: 4,
        system_tokens: 1_500,
        question_tokens: 300,
        output_tokens: 100,
    })
    .generate(400, SEED)
    .expect("valid workload");
    let config = SimConfig {
        servers: 4,
        seed: SEED,
        profile: Profile {
            name: "h100-60k-kv".to_owned(),
            kv_capacity_tokens: 60_000,
            ..Profile::default()
        },
        ..SimConfig::default()
    };
    let policy = Policy::builtin(policy).expect("built-in");
    let metrics = run_at_rate(&workload, &policy, rate, &config).expect("simulated");
    assert_eq!(metrics.completed, metrics.requests, "{metrics:?}");
    metrics.ttft_p90_ms.expect("requests completed")
}

#[test]
fn switchyard_beats_round_robin_and_matches_gie_near_saturation() {
    for rate in RATES {
        let switchyard = p90_ttft("switchyard", rate);
        let round_robin = p90_ttft("round-robin", rate);
        let gie = p90_ttft("gie-default", rate);
        eprintln!(
            "{rate} req/s: p90 TTFT switchyard {switchyard:.1} ms, round-robin {round_robin:.1} \
             ms, gie-default {gie:.1} ms"
        );
        assert!(
            switchyard < 0.5 * round_robin,
            "{rate} req/s: switchyard p90 TTFT {switchyard:.1} ms is not under half of \
             round-robin's {round_robin:.1} ms"
        );
        assert!(
            switchyard <= gie,
            "{rate} req/s: switchyard p90 TTFT {switchyard:.1} ms is worse than gie-default's \
             {gie:.1} ms"
        );
    }
}
