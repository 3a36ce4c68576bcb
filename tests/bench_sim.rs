//! `switchyard bench sim`: the simulation is deterministic (same seed, same numbers).
use switchyard::bench::{
    sim::{Policy, SimConfig, run_at_rate},
    workload::{SharedPrefixParams, WorkloadKind, WorkloadSpec},
};

fn tiny_config(seed: u64) -> SimConfig {
    SimConfig {
        servers: 3,
        warmup: 0.0,
        seed,
        ..SimConfig::default()
    }
}

fn tiny_shared_prefix() -> WorkloadSpec {
    WorkloadSpec::SharedPrefix(SharedPrefixParams {
        groups: 8,
        prompts_per_group: 3,
        system_tokens: 1_500,
        question_tokens: 300,
        output_tokens: 40,
    })
}

#[test]
fn same_seed_same_numbers() {
    for spec in [
        tiny_shared_prefix(),
        WorkloadSpec::default_for(WorkloadKind::MultiTurn),
        WorkloadSpec::default_for(WorkloadKind::MultiLora),
    ] {
        let workload = spec.generate(80, 7).expect("valid workload");
        for name in ["random", "switchyard", "oracle"] {
            let policy = Policy::builtin(name).expect("built-in");
            let first = run_at_rate(&workload, &policy, 6.0, &tiny_config(7)).expect("ran");
            let again = run_at_rate(&workload, &policy, 6.0, &tiny_config(7)).expect("ran");
            assert_eq!(
                first, again,
                "{} / {name}: same seed, same numbers",
                workload.name
            );
            assert_eq!(first.completed, 80, "{} / {name}", workload.name);
            let other = run_at_rate(&workload, &policy, 6.0, &tiny_config(8)).expect("ran");
            assert_ne!(
                first, other,
                "{} / {name}: another seed draws other arrivals",
                workload.name
            );
        }
    }
}
