//! Scheduler behaviour: scorers, filters, picker, saturation, stale handling, config errors,
//! built-in profiles, hot reload.
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::*;
use crate::{
    clock::{MICROS_PER_MS, Micros},
    cluster::{EndpointMeta, EndpointTable, Health, Snapshot},
    telemetry::{EndpointLoad, GpuSample, LoraState, ThrottleReasons},
};

const NOW: Micros = 10_000 * MICROS_PER_MS;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8000))
}

fn table(n: u8) -> EndpointTable {
    let table = EndpointTable::new();
    table.set_members((1..=n).map(|i| EndpointMeta::new(addr(i))));
    table
}

fn set_load(table: &EndpointTable, endpoint: SocketAddr, waiting: u32, kv: f64) {
    let seq = table
        .snapshot()
        .get(&endpoint)
        .and_then(|e| e.live().last_load())
        .map_or(1, |l| l.seq + 1);
    let applied = table.update_load(
        &endpoint,
        EndpointLoad {
            waiting,
            running: 4,
            kv_cache_usage: kv,
            sampled_at: NOW,
            seq,
            ..EndpointLoad::default()
        },
    );
    assert_eq!(applied, crate::cluster::LoadUpdate::Applied);
}

fn scheduler(yaml_profile: &str) -> Scheduler {
    Scheduler::builtin_with(yaml_profile, SchedulerOptions::seeded(7)).expect("built-in")
}

fn pick(scheduler: &Scheduler, request: &SchedulingRequest<'_>, snapshot: &Snapshot) -> SocketAddr {
    scheduler
        .pick(request, snapshot, NOW)
        .expect("picked")
        .primary()
}

fn single_scorer(plugin: &str, params: &str) -> Scheduler {
    let yaml = format!(
        "plugins:\n- type: {plugin}\n{params}- type: max-score-picker\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: {plugin}\n  - pluginRef: max-score-picker\n"
    );
    Scheduler::from_yaml(&yaml, SchedulerOptions::seeded(1)).expect("valid")
}

fn contribution(decision: &Decision, endpoint: SocketAddr, plugin: &str) -> f64 {
    decision
        .ranked
        .iter()
        .find(|r| r.addr == endpoint)
        .and_then(|r| r.contributions.iter().find(|c| &*c.plugin == plugin))
        .map(|c| c.score)
        .expect("explained")
}

// ---------- scorers ----------

#[test]
fn queue_scorer_is_min_max_and_unknown_scores_zero() {
    let table = table(4);
    set_load(&table, addr(1), 0, 0.1);
    set_load(&table, addr(2), 5, 0.1);
    set_load(&table, addr(3), 10, 0.1);
    let scheduler = single_scorer("queue-scorer", "");
    let snapshot = table.snapshot();
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &snapshot, NOW)
        .expect("picked");
    assert_eq!(decision.primary(), addr(1));
    assert_eq!(contribution(&decision, addr(1), "queue-scorer"), 1.0);
    assert_eq!(contribution(&decision, addr(2), "queue-scorer"), 0.5);
    assert_eq!(contribution(&decision, addr(3), "queue-scorer"), 0.0);
    assert_eq!(decision.ranked.len(), DEFAULT_PICKS);
    // addr(4) never reported: it is not idle, it ranks last.
    assert!(decision.ranked.iter().all(|r| r.addr != addr(4)));
}

#[test]
fn kv_scorer_is_free_fraction() {
    let table = table(2);
    set_load(&table, addr(1), 0, 0.75);
    set_load(&table, addr(2), 0, 0.25);
    let scheduler = single_scorer("kv-cache-utilization-scorer", "");
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &table.snapshot(), NOW)
        .expect("picked");
    assert_eq!(decision.primary(), addr(2));
    let kv = contribution(&decision, addr(2), "kv-cache-utilization-scorer");
    assert!((kv - 0.75).abs() < 1e-3);
}

#[test]
fn prefix_scorer_prefers_the_endpoint_that_got_the_prefix() {
    let table = table(4);
    let scheduler = scheduler("gie-default");
    for i in 1..=4 {
        set_load(&table, addr(i), 0, 0.1);
    }
    let blocks = scheduler.hash_tokens("m", &(0..640).collect::<Vec<u32>>());
    assert_eq!(blocks.len(), 10);
    let request = SchedulingRequest {
        prefix: &blocks,
        input_tokens: 640,
        ..SchedulingRequest::new("m")
    };
    scheduler.on_routed(
        &SchedulingRequest {
            prefix: &blocks[..6],
            ..request
        },
        addr(3),
        NOW,
    );
    let decision = scheduler
        .pick(&request, &table.snapshot(), NOW)
        .expect("picked");
    assert_eq!(decision.primary(), addr(3));
    assert!((decision.predicted_prefix_hit - 0.6).abs() < 1e-9);
    assert!((contribution(&decision, addr(3), "prefix-cache-scorer") - 0.6).abs() < 1e-9);
    assert!(decision.explain().contains("prefix-cache-scorer"));
}

#[test]
fn lora_affinity_follows_gie_levels() {
    let state = |running: &[&str], waiting: &[&str], max: u32| LoraState {
        running: running.iter().map(|s| s.to_string()).collect(),
        waiting: waiting.iter().map(|s| s.to_string()).collect(),
        max_loras: max,
    };
    let request = SchedulingRequest {
        lora: Some("sql"),
        ..SchedulingRequest::new("m")
    };
    let score = |s: Option<&LoraState>| scoring::lora(&request, s);
    assert_eq!(score(Some(&state(&["sql"], &[], 1))), 1.0);
    assert_eq!(score(Some(&state(&["chat"], &[], 2))), 0.8);
    assert_eq!(score(Some(&state(&["chat"], &["sql"], 2))), 0.6);
    assert_eq!(score(Some(&state(&["chat"], &[], 1))), 0.0);
    assert_eq!(score(None), 0.0);
    assert_eq!(scoring::lora(&SchedulingRequest::new("m"), None), 1.0);

    let table = table(2);
    for (endpoint, lora) in [
        (addr(1), state(&["chat"], &[], 1)),
        (addr(2), state(&["sql"], &[], 1)),
    ] {
        table.update_load(
            &endpoint,
            EndpointLoad {
                lora: Some(lora),
                sampled_at: NOW,
                seq: 1,
                ..EndpointLoad::default()
            },
        );
    }
    let scheduler = single_scorer("lora-affinity-scorer", "");
    assert_eq!(pick(&scheduler, &request, &table.snapshot()), addr(2));
}

#[test]
fn inflight_scorer_sees_requests_between_samples() {
    let table = table(3);
    let snapshot = table.snapshot();
    let scheduler = scheduler("least-request");
    let _a = snapshot.begin(&addr(1), 10);
    let _b = snapshot.begin(&addr(1), 10);
    let _c = snapshot.begin(&addr(2), 10);
    assert_eq!(
        pick(&scheduler, &SchedulingRequest::new("m"), &snapshot),
        addr(3)
    );
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &snapshot, NOW)
        .expect("picked");
    let order: Vec<SocketAddr> = decision.ranked.iter().map(|r| r.addr).collect();
    assert_eq!(order, vec![addr(3), addr(2), addr(1)]);
    assert_eq!(contribution(&decision, addr(2), "inflight-scorer"), 0.5);
}

#[test]
fn gpu_scorer_prefers_headroom_and_unthrottled_and_is_neutral_without_data() {
    let table = table(3);
    let gpu = |used: u64, util: u32, throttled: bool| GpuSample {
        memory_used_bytes: used,
        memory_total_bytes: 100,
        gpu_utilization_pct: util,
        throttle_reasons: ThrottleReasons(if throttled {
            ThrottleReasons::SW_THERMAL_SLOWDOWN
        } else {
            0
        }),
        sampled_at: NOW,
        ..GpuSample::default()
    };
    table.update_gpu(&addr(1), &[gpu(90, 90, true)]);
    table.update_gpu(&addr(2), &[gpu(20, 10, false)]);
    let scheduler = single_scorer("gpu-scorer", "");
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &table.snapshot(), NOW)
        .expect("picked");
    assert_eq!(decision.primary(), addr(2));
    assert_eq!(contribution(&decision, addr(3), "gpu-scorer"), 0.5);
    let best = contribution(&decision, addr(2), "gpu-scorer");
    assert!(
        (best - (0.4 * 0.8 + 0.3 * 0.9 + 0.3)).abs() < 1e-3,
        "{best}"
    );
    let worst = contribution(&decision, addr(1), "gpu-scorer");
    assert!((0.0..0.5).contains(&worst));
    // Readings older than the threshold are ignored.
    let later = NOW + 6_000 * MICROS_PER_MS;
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &table.snapshot(), later)
        .expect("picked");
    assert_eq!(contribution(&decision, addr(2), "gpu-scorer"), 0.5);
}

#[test]
fn scores_are_clamped_to_unit_interval() {
    let range = scoring::Range { min: 0.0, max: 1.0 };
    assert_eq!(scoring::relative_cost(0.0, &range, 0.1), 1.0);
    assert!((scoring::relative_cost(1.0, &range, 0.1) - 0.1 / 1.1).abs() < 1e-12);
    assert_eq!(
        scoring::relative_cost(1.0, &scoring::Range::default(), 0.1),
        0.0
    );
    assert_eq!(range.lower_is_better(-3.0), 1.0);
    assert_eq!(range.lower_is_better(7.0), 0.0);
    assert_eq!(scoring::prefix_fraction(12, 10), 1.0);
    assert_eq!(scoring::prefix_fraction(3, 0), 0.0);
    // Every contribution of a real decision is within [0, 1].
    let table = table(8);
    for i in 1..=8 {
        set_load(&table, addr(i), u32::from(i) * 3, f64::from(i) / 8.0);
    }
    let scheduler = scheduler("switchyard");
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &table.snapshot(), NOW)
        .expect("picked");
    for ranked in &decision.ranked {
        for part in &ranked.contributions {
            assert!((0.0..=1.0).contains(&part.score), "{part:?}");
        }
    }
}

#[test]
fn session_affinity_returns_to_the_sessions_endpoint() {
    let table = table(4);
    let scheduler = single_scorer("session-affinity-scorer", "  parameters:\n    ttl: 1s\n");
    let request = SchedulingRequest {
        session: Some("conv-42"),
        ..SchedulingRequest::new("m")
    };
    scheduler.on_routed(&request, addr(3), NOW);
    assert_eq!(pick(&scheduler, &request, &table.snapshot()), addr(3));
    let expired = scheduler
        .pick(&request, &table.snapshot(), NOW + 2_000 * MICROS_PER_MS)
        .expect("picked");
    assert_eq!(
        contribution(&expired, expired.primary(), "session-affinity-scorer"),
        0.0
    );
}

// ---------- filters ----------

#[test]
fn health_model_and_subset_filters() {
    let table = EndpointTable::new();
    table.set_members([
        EndpointMeta::new(addr(1)).with_models(["llama"]),
        EndpointMeta::new(addr(2)).with_models(["qwen"]),
        EndpointMeta::new(addr(3)),
        EndpointMeta::new(addr(4)),
    ]);
    table.set_health(&addr(4), Health::Draining);
    let scheduler = scheduler("round-robin");
    let snapshot = table.snapshot();
    for _ in 0..10 {
        let chosen = pick(&scheduler, &SchedulingRequest::new("llama"), &snapshot);
        assert!(chosen == addr(1) || chosen == addr(3), "{chosen}");
    }
    let subset = [addr(2), addr(3)];
    let request = SchedulingRequest {
        subset: Some(&subset),
        ..SchedulingRequest::new("qwen")
    };
    for _ in 0..5 {
        let chosen = pick(&scheduler, &request, &snapshot);
        assert!(chosen == addr(2) || chosen == addr(3));
    }
    let only_draining = [addr(4)];
    let err = scheduler
        .pick(
            &SchedulingRequest {
                subset: Some(&only_draining),
                ..SchedulingRequest::new("qwen")
            },
            &snapshot,
            NOW,
        )
        .expect_err("draining only");
    assert_eq!(
        err,
        PickError::NoEndpoints(NoEndpoints::NoneReady {
            draining: 1,
            unhealthy: 0
        })
    );
    assert_eq!(err.http_status(), 503);
    assert_eq!(err.dropped_reason(), "rejected-no-endpoints");

    let none: [SocketAddr; 0] = [];
    let strangers = [addr(99)];
    for (subset, expected) in [
        (&none[..], NoEndpoints::EmptySubset),
        (&strangers[..], NoEndpoints::SubsetNotMembers(1)),
    ] {
        let err = scheduler
            .pick(
                &SchedulingRequest {
                    subset: Some(subset),
                    ..SchedulingRequest::new("qwen")
                },
                &snapshot,
                NOW,
            )
            .expect_err("no candidates");
        assert_eq!(err, PickError::NoEndpoints(expected));
    }
    let only_llama = [addr(1)];
    let err = scheduler
        .pick(
            &SchedulingRequest {
                subset: Some(&only_llama),
                ..SchedulingRequest::new("qwen")
            },
            &snapshot,
            NOW,
        )
        .expect_err("model not served in subset");
    assert_eq!(
        err,
        PickError::NoEndpoints(NoEndpoints::NoModel("qwen".into()))
    );
    assert_eq!(
        scheduler.pick(
            &SchedulingRequest::new("m"),
            &EndpointTable::new().snapshot(),
            NOW
        ),
        Err(PickError::NoEndpoints(NoEndpoints::EmptyPool))
    );
}

#[test]
fn gpu_health_filter_removes_fatal_xid_and_ecc_only() {
    let table = table(4);
    let sample = |xid: Option<u64>, ecc: Option<u64>| GpuSample {
        memory_total_bytes: 100,
        last_xid: xid,
        ecc_uncorrected: ecc,
        sampled_at: 1, // old: health events count whatever their age
        ..GpuSample::default()
    };
    table.update_gpu(&addr(1), &[sample(Some(79), None)]);
    table.update_gpu(&addr(2), &[sample(None, Some(2))]);
    table.update_gpu(&addr(3), &[sample(Some(13), None)]); // application error: not fatal
    let scheduler = scheduler("switchyard");
    let snapshot = table.snapshot();
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &snapshot, NOW)
        .expect("picked");
    assert_eq!(decision.candidates, 2);
    let mut picked: Vec<SocketAddr> = decision.ranked.iter().map(|r| r.addr).collect();
    picked.sort();
    assert_eq!(picked, vec![addr(3), addr(4)]);

    let params = GpuHealthParams::default();
    let signals =
        |xid, ecc| crate::cluster::GpuSignals::from_samples(&[sample(xid, ecc)]).expect("one");
    assert_eq!(
        gpu_fault(&signals(Some(48), None), &params).as_deref(),
        Some("GPU XID 48")
    );
    assert!(gpu_fault(&signals(Some(31), Some(0)), &params).is_none());

    let sick = [addr(1), addr(2)];
    let err = scheduler
        .pick(
            &SchedulingRequest {
                subset: Some(&sick),
                ..SchedulingRequest::new("m")
            },
            &snapshot,
            NOW,
        )
        .expect_err("all sick");
    assert_eq!(
        err,
        PickError::NoEndpoints(NoEndpoints::Filtered(Arc::from("gpu-health-filter")))
    );
}

#[test]
fn saturation_filter_drops_saturated_but_never_everyone() {
    let yaml = "plugins:\n- type: saturation-filter\n- type: random-picker\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: saturation-filter\n  - pluginRef: random-picker\n";
    let scheduler = Scheduler::from_yaml(yaml, SchedulerOptions::seeded(3)).expect("valid");
    let table = table(3);
    set_load(&table, addr(1), 9, 0.1); // queue over 5
    set_load(&table, addr(2), 0, 0.95); // KV over 0.8
    set_load(&table, addr(3), 1, 0.2);
    let snapshot = table.snapshot();
    for _ in 0..20 {
        assert_eq!(
            pick(&scheduler, &SchedulingRequest::new("m"), &snapshot),
            addr(3)
        );
    }
    set_load(&table, addr(3), 9, 0.2);
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &snapshot, NOW)
        .expect("everyone saturated: filter keeps all");
    assert_eq!(decision.candidates, 3);
}

// ---------- saturation, shedding, stale ----------

#[test]
fn sheddable_requests_are_dropped_only_when_saturated() {
    let table = table(2);
    set_load(&table, addr(1), 6, 0.1);
    set_load(&table, addr(2), 0, 0.9);
    let scheduler = scheduler("gie-default");
    let snapshot = table.snapshot();
    let sheddable = SchedulingRequest {
        priority: -1,
        ..SchedulingRequest::new("m")
    };
    let err = scheduler
        .pick(&sheddable, &snapshot, NOW)
        .expect_err("saturated");
    assert_eq!(err.http_status(), 429);
    assert_eq!(err.dropped_reason(), "rejected-saturated");
    assert!(
        err.to_string().contains("none of 2 endpoints has capacity"),
        "{err}"
    );
    // Critical requests are still routed.
    assert!(
        scheduler
            .pick(&SchedulingRequest::new("m"), &snapshot, NOW)
            .is_ok()
    );
    // Capacity comes back.
    set_load(&table, addr(2), 0, 0.5);
    assert_eq!(pick(&scheduler, &sheddable, &snapshot), addr(2));
    // Requests this router sent since the sample count: five in flight → saturated again.
    let guards: Vec<_> = (0..5)
        .filter_map(|_| snapshot.begin(&addr(2), 10))
        .collect();
    assert!(scheduler.pick(&sheddable, &snapshot, NOW).is_err());
    drop(guards);
}

#[test]
fn stale_and_unknown_metrics_are_not_idle() {
    let table = table(3);
    set_load(&table, addr(1), 3, 0.5);
    // addr(2): never scraped. addr(3): idle but 300 ms old (staleness 200 ms).
    table.update_load(
        &addr(3),
        EndpointLoad {
            sampled_at: NOW - 300 * MICROS_PER_MS,
            seq: 1,
            ..EndpointLoad::default()
        },
    );
    let snapshot = table.snapshot();
    for profile in ["gie-default", "switchyard"] {
        let scheduler = scheduler(profile);
        for _ in 0..10 {
            assert_eq!(
                pick(&scheduler, &SchedulingRequest::new("m"), &snapshot),
                addr(1),
                "{profile} must prefer the fresh, loaded endpoint over unknown ones"
            );
        }
    }
    // Sheddable traffic: unknown and stale endpoints have no capacity.
    let sheddable = SchedulingRequest {
        priority: -5,
        ..SchedulingRequest::new("m")
    };
    let only_unknown = [addr(2), addr(3)];
    let err = scheduler("switchyard")
        .pick(
            &SchedulingRequest {
                subset: Some(&only_unknown),
                ..sheddable
            },
            &snapshot,
            NOW,
        )
        .expect_err("no fresh metrics");
    assert!(err.to_string().contains("2 without fresh metrics"), "{err}");
}

// ---------- picker ----------

#[test]
fn tie_break_is_random_but_deterministic_for_a_seed() {
    let table = table(16);
    let snapshot = table.snapshot();
    let run = |seed: u64| -> Vec<SocketAddr> {
        let scheduler = Scheduler::builtin_with("gie-default", SchedulerOptions::seeded(seed))
            .expect("built-in");
        (0..64)
            .map(|_| pick(&scheduler, &SchedulingRequest::new("m"), &snapshot))
            .collect()
    };
    let first = run(42);
    assert_eq!(first, run(42));
    assert_ne!(first, run(43));
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert!(
        distinct.len() >= 8,
        "ties spread over endpoints: {}",
        distinct.len()
    );
}

#[test]
fn top_k_fallbacks_are_distinct_and_ranked() {
    let table = table(6);
    for i in 1..=6 {
        set_load(&table, addr(i), u32::from(i), 0.1);
    }
    let yaml = "plugins:\n- type: queue-scorer\n- type: max-score-picker\n  parameters:\n    maxNumOfEndpoints: 4\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n  - pluginRef: max-score-picker\n";
    let scheduler = Scheduler::from_yaml(yaml, SchedulerOptions::default()).expect("valid");
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &table.snapshot(), NOW)
        .expect("picked");
    let order: Vec<SocketAddr> = decision.ranked.iter().map(|r| r.addr).collect();
    assert_eq!(order, vec![addr(1), addr(2), addr(3), addr(4)]);
    assert_eq!(
        decision.fallbacks().collect::<Vec<_>>(),
        order[1..].to_vec()
    );
    assert_eq!(
        decision.endpoint_list(),
        "10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000,10.0.0.4:8000"
    );
    assert!(decision.ranked.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(decision.ranked[0].contributions.len(), 1);
    assert!(decision.ranked[EXPLAINED].contributions.is_empty());
}

// ---------- built-in profiles ----------

#[test]
fn every_builtin_builds_and_the_oracle_needs_a_source() {
    for name in BUILTIN_PROFILES {
        let yaml = builtin_yaml(name).expect("listed");
        let config = EndpointPickerConfig::from_yaml(yaml).expect("valid YAML");
        let result = Scheduler::from_config(&config, SchedulerOptions::default());
        if name == "oracle" {
            assert!(matches!(
                result,
                Err(ConfigError::OracleWithoutSource { .. })
            ));
        } else {
            assert_eq!(result.expect("builds").name(), name);
        }
    }
    assert!(matches!(
        Scheduler::builtin("fastest"),
        Err(ConfigError::UnknownBuiltin { .. })
    ));
}

#[test]
fn round_robin_cycles_through_eligible_endpoints() {
    let table = table(3);
    let scheduler = scheduler("round-robin");
    let snapshot = table.snapshot();
    let picks: Vec<SocketAddr> = (0..6)
        .map(|_| pick(&scheduler, &SchedulingRequest::new("m"), &snapshot))
        .collect();
    assert_eq!(
        picks,
        vec![addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]
    );
}

#[test]
fn random_picker_spreads_evenly() {
    let table = table(4);
    let scheduler = scheduler("random");
    let snapshot = table.snapshot();
    let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
    for _ in 0..4_000 {
        *counts
            .entry(pick(&scheduler, &SchedulingRequest::new("m"), &snapshot))
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4);
    assert!(
        counts.values().all(|&n| (800..1200).contains(&n)),
        "{counts:?}"
    );
}

#[test]
fn cache_aware_sticks_to_the_cached_endpoint_until_imbalanced() {
    let table = table(3);
    let scheduler = scheduler("sglang-cache-aware");
    let snapshot = table.snapshot();
    let blocks: Vec<BlockHash> = (1..=10).collect();
    let request = SchedulingRequest {
        prefix: &blocks,
        ..SchedulingRequest::new("m")
    };
    // Cold: smallest tree wins, then the request teaches the tree.
    let first = pick(&scheduler, &request, &snapshot);
    scheduler.on_routed(&request, first, NOW);
    let mut guards = Vec::new();
    for _ in 0..65 {
        let decision = scheduler.pick(&request, &snapshot, NOW).expect("picked");
        assert_eq!(decision.primary(), first, "sticks while balanced");
        guards.push(
            scheduler
                .route(&decision, &request, &snapshot)
                .expect("member"),
        );
    }
    // 65 in flight there vs 0 elsewhere: abs > 64 and rel > 1.5 → shortest queue.
    let decision = scheduler.pick(&request, &snapshot, NOW).expect("picked");
    assert_ne!(decision.primary(), first, "imbalance sends it elsewhere");
    // Below the cache threshold, the smallest tree wins.
    drop(guards);
    let other: Vec<BlockHash> = (100..110).collect();
    let fresh = SchedulingRequest {
        prefix: &other,
        ..SchedulingRequest::new("m")
    };
    assert_ne!(pick(&scheduler, &fresh, &snapshot), first);
}

#[test]
fn gie_default_herds_between_samples_but_switchyard_does_not() {
    // The last sample showed addr(1) idle and the others busy; a burst of distinct prompts
    // arrives before the next sample.
    let table = table(4);
    set_load(&table, addr(1), 0, 0.2);
    for i in 2..=4 {
        set_load(&table, addr(i), 2, 0.5);
    }
    let snapshot = table.snapshot();
    let spread = |name: &str| {
        let scheduler = scheduler(name);
        let mut guards = Vec::new();
        let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
        for n in 0..12u32 {
            let tokens: Vec<u32> = (n * 10_000..n * 10_000 + 1_280).collect();
            let blocks = scheduler.hash_tokens("m", &tokens);
            let request = SchedulingRequest {
                prefix: &blocks,
                input_tokens: 1_280,
                ..SchedulingRequest::new("m")
            };
            let decision = scheduler.pick(&request, &snapshot, NOW).expect("picked");
            *counts.entry(decision.primary()).or_default() += 1;
            guards.push(
                scheduler
                    .route(&decision, &request, &snapshot)
                    .expect("member"),
            );
        }
        counts.get(&addr(1)).copied().unwrap_or(0)
    };
    assert_eq!(
        spread("gie-default"),
        12,
        "GIE sees no load change until the next sample"
    );
    let switchyard = spread("switchyard");
    assert!(
        (2..=6).contains(&switchyard),
        "in-flight accounting spreads the burst: {switchyard} of 12 on the idle endpoint"
    );
}

#[test]
fn switchyard_trades_prefix_against_queue() {
    let table = table(2);
    let scheduler = scheduler("switchyard");
    let blocks = scheduler.hash_tokens("m", &(0..6_400).collect::<Vec<u32>>());
    let request = SchedulingRequest {
        prefix: &blocks,
        input_tokens: 6_400,
        ..SchedulingRequest::new("m")
    };
    // addr(1) holds half of the prompt (from an earlier request whose prefill is long done);
    // addr(2) nothing.
    let earlier = NOW - 10 * crate::clock::MICROS_PER_SEC;
    let half = SchedulingRequest {
        prefix: &blocks[..50],
        ..request
    };
    scheduler.on_routed(&half, addr(1), earlier);
    set_load(&table, addr(1), 0, 0.3);
    set_load(&table, addr(2), 0, 0.3);
    let snapshot = table.snapshot();
    assert_eq!(
        pick(&scheduler, &request, &snapshot),
        addr(1),
        "cached, same queue"
    );
    // 0.5 + 1 × 0.5 = 1.0 vs 1.0: still even; 3 queued (0.5 + 1.5) is not worth half a prefill.
    set_load(&table, addr(1), 3, 0.3);
    assert_eq!(pick(&scheduler, &request, &snapshot), addr(2));
    set_load(&table, addr(1), 0, 0.99);
    assert_eq!(pick(&scheduler, &request, &snapshot), addr(2), "full KV");
    // A 90 % cached prefix is worth a short queue whose requests the cache also serves:
    // 0.1 + 3 × 0.1 = 0.4 < 1.0.
    let mostly = SchedulingRequest {
        prefix: &blocks[..90],
        ..request
    };
    scheduler.on_routed(&mostly, addr(1), earlier);
    set_load(&table, addr(1), 3, 0.3);
    assert_eq!(pick(&scheduler, &request, &snapshot), addr(1));
    // ... but not a long one (0.1 + 12 × 0.1 = 1.3).
    set_load(&table, addr(1), 12, 0.3);
    assert_eq!(pick(&scheduler, &request, &snapshot), addr(2));
}

#[test]
fn switchyard_spreads_prefill_work_it_sent_until_it_drains() {
    // Both endpoints look the same in their samples; a long prompt was just sent to addr(1).
    let table = table(2);
    set_load(&table, addr(1), 0, 0.3);
    set_load(&table, addr(2), 0, 0.3);
    let snapshot = table.snapshot();
    let scheduler = scheduler("switchyard");
    let long: Vec<u32> = (0..12_000).collect();
    let long_blocks = scheduler.hash_tokens("m", &long);
    let sent = SchedulingRequest {
        prefix: &long_blocks,
        input_tokens: 12_000,
        ..SchedulingRequest::new("m")
    };
    scheduler.on_routed(&sent, addr(1), NOW);
    let short: Vec<u32> = (50_000..51_000).collect();
    let short_blocks = scheduler.hash_tokens("m", &short);
    let request = SchedulingRequest {
        prefix: &short_blocks,
        input_tokens: 1_000,
        ..SchedulingRequest::new("m")
    };
    // 12,000 tokens at 30,000 tokens/s: 400 ms of prefill ahead at addr(1).
    for _ in 0..8 {
        assert_eq!(
            scheduler.pick(&request, &snapshot, NOW).unwrap().primary(),
            addr(2)
        );
    }
    let decision = scheduler
        .pick(&request, &snapshot, NOW + 300 * MICROS_PER_MS)
        .unwrap();
    assert_eq!(decision.primary(), addr(2), "still 100 ms of it left");
    // Drained: no preference from the backlog any more (ties break either way).
    let later = NOW + 500 * MICROS_PER_MS;
    let firsts: std::collections::HashSet<SocketAddr> = (0..32)
        .map(|_| {
            scheduler
                .pick(&request, &snapshot, later)
                .unwrap()
                .primary()
        })
        .collect();
    assert_eq!(firsts.len(), 2, "{firsts:?}");
}

#[test]
fn oracle_counts_pending_prefill() {
    let table = table(2);
    let idle = ExactState {
        waiting: 0,
        running: 2,
        kv_free_tokens: 100_000,
        cached_prefix_tokens: 0,
        pending_prefill_tokens: 0,
    };
    let source = FixedState(HashMap::from([
        (
            addr(1),
            ExactState {
                pending_prefill_tokens: 4_000,
                ..idle
            },
        ),
        (addr(2), idle),
    ]));
    let scheduler = Scheduler::builtin_with(
        "oracle",
        SchedulerOptions {
            exact_state: Some(Arc::new(source)),
            ..SchedulerOptions::default()
        },
    )
    .expect("source attached");
    let request = SchedulingRequest {
        input_tokens: 1_000,
        ..SchedulingRequest::new("m")
    };
    let decision = scheduler.pick(&request, &table.snapshot(), NOW).unwrap();
    assert_eq!(decision.primary(), addr(2));
}

#[derive(Debug)]
struct FixedState(HashMap<SocketAddr, ExactState>);

impl ExactStateSource for FixedState {
    fn exact(&self, endpoint: SocketAddr, _request: &SchedulingRequest<'_>) -> Option<ExactState> {
        self.0.get(&endpoint).copied()
    }
}

#[test]
fn oracle_ranks_by_exact_state() {
    let table = table(3);
    let state = |waiting, cached| ExactState {
        waiting,
        running: 2,
        kv_free_tokens: 100_000,
        cached_prefix_tokens: cached,
        pending_prefill_tokens: 0,
    };
    let source = FixedState(HashMap::from([
        (addr(1), state(2, 1_000)),
        (addr(2), state(0, 900)),
        (addr(3), state(0, 0)),
    ]));
    let scheduler = Scheduler::builtin_with(
        "oracle",
        SchedulerOptions {
            exact_state: Some(Arc::new(source)),
            ..SchedulerOptions::default()
        },
    )
    .expect("source attached");
    let request = SchedulingRequest {
        input_tokens: 1_000,
        ..SchedulingRequest::new("m")
    };
    let decision = scheduler
        .pick(&request, &table.snapshot(), NOW)
        .expect("picked");
    assert_eq!(decision.primary(), addr(2));
    assert!((decision.predicted_prefix_hit - 0.9).abs() < 1e-9);
    // addr(1): fully cached but 2 queued (2 × 0.1 floor) beats an uncached idle addr(3) (1.0).
    let order: Vec<SocketAddr> = decision.ranked.iter().map(|r| r.addr).collect();
    assert_eq!(order, vec![addr(2), addr(1), addr(3)]);
}

// ---------- config errors ----------

fn config_error(yaml: &str) -> String {
    match Scheduler::from_yaml(yaml, SchedulerOptions::default()) {
        Ok(_) => panic!("accepted invalid config:\n{yaml}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn config_errors_name_the_field_and_position() {
    let cases = [
        (
            "plugins:\n- type: queue-scorer\n- type: fancy-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n",
            "plugins[1].type: unknown plugin type `fancy-scorer`",
        ),
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n  - pluginRef: kv\n",
            "schedulingProfiles[0].plugins[1].pluginRef: `kv` does not name a plugin (defined: queue-scorer)",
        ),
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n    weight: -2\n",
            "schedulingProfiles[0].plugins[0].weight: must be a finite number > 0 (got -2)",
        ),
        (
            "plugins:\n- type: max-score-picker\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: max-score-picker\n    weight: 3\n",
            "schedulingProfiles[0].plugins[0].weight: `max-score-picker` is a picker; only scorers take a weight",
        ),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters:\n    lruCapacityPerServer: 0\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: prefix-cache-scorer\n",
            "plugins[0].parameters.lruCapacityPerServer: (prefix-cache-scorer `prefix-cache-scorer`) must be at least 1",
        ),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters:\n    lruCapacity: 10\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: prefix-cache-scorer\n",
            "unknown field `lruCapacity`",
        ),
        (
            "plugins:\n- type: ttft-scorer\n  name: cost\n  parameters:\n    kvSoftLimit: 1.5\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: cost\n",
            "plugins[0].parameters.kvSoftLimit: (ttft-scorer `cost`) must be between 0 and 1 (got 1.5)",
        ),
        (
            "plugins:\n- type: queue-scorer\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n",
            "plugins[1].name: `queue-scorer` is already the name of plugins[0]",
        ),
        (
            "plugins:\n- type: random-picker\n- type: max-score-picker\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: random-picker\n  - pluginRef: max-score-picker\n",
            "schedulingProfiles[0].plugins[1].pluginRef: a profile has one picker",
        ),
        (
            "apiVersion: v2\nplugins: []\nschedulingProfiles: []\n",
            "apiVersion: `v2` is not supported",
        ),
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles: []\n",
            "schedulingProfiles: at least one profile is required",
        ),
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: a\n  plugins:\n  - pluginRef: queue-scorer\n- name: b\n  plugins:\n  - pluginRef: queue-scorer\n",
            "several profiles (`a`, `b`) and none named `default`",
        ),
        (
            "plugins:\n- type: queue-scorer\nsaturationDetector:\n  metricsStalenessThreshold: 5 fortnights\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n",
            "unknown unit",
        ),
        (
            "plugins:\n- type: queue-scorer\nsaturationDetector:\n  queueDepthThreshold: 0\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n",
            "saturationDetector.queueDepthThreshold: must be a whole number ≥ 1 (got 0)",
        ),
        (
            "plugins:\n- type: queue-scorer\n  parameters: {x: 1}\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n",
            "plugins[0].parameters: (queue-scorer `queue-scorer`) this plugin takes no parameters",
        ),
        ("plugins: [\n", "invalid scheduler config"),
        (
            "plugin: []\nschedulingProfiles: []\n",
            "unknown field `plugin`",
        ),
    ];
    for (yaml, expected) in cases {
        let message = config_error(yaml);
        assert!(
            message.contains(expected),
            "expected `{expected}` in `{message}`"
        );
    }
}

#[test]
fn gie_configs_parse_with_their_field_names() {
    let yaml = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [dataLayer]
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
  name: kv
- type: prefix-cache-scorer
  parameters:
    hashBlockSize: 64
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: max-score-picker
  parameters:
    maxNumOfEndpoints: 1
- type: single-profile-handler
saturationDetector:
  queueDepthThreshold: 8
  kvCacheUtilThreshold: 0.9
  metricsStalenessThreshold: 150ms
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: kv
    weight: 1.5
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
- name: other
  plugins:
  - pluginRef: queue-scorer
";
    let scheduler = Scheduler::from_yaml(yaml, SchedulerOptions::default()).expect("valid");
    let profile = scheduler.profile();
    assert_eq!(&*profile.name, "default");
    assert_eq!(profile.saturation.queue_depth_threshold, 8);
    assert_eq!(profile.saturation.metrics_staleness, 150 * MICROS_PER_MS);
    assert_eq!(profile.prefix.hash_block_size, 64);
    let other = Scheduler::from_yaml(
        yaml,
        SchedulerOptions {
            profile: Some("other".into()),
            ..SchedulerOptions::default()
        },
    )
    .expect("valid");
    assert_eq!(other.name(), "other");
    let table = table(2);
    let decision = scheduler
        .pick(&SchedulingRequest::new("m"), &table.snapshot(), NOW)
        .expect("picked");
    assert_eq!(decision.ranked.len(), 1);
}

// ---------- hot reload ----------

#[test]
fn reload_swaps_only_valid_configs_and_keeps_the_prefix_index() {
    let handle = SchedulerHandle::new(scheduler("gie-default"));
    let blocks: Vec<BlockHash> = (1..=4).collect();
    let request = SchedulingRequest {
        prefix: &blocks,
        ..SchedulingRequest::new("m")
    };
    handle.current().on_routed(&request, addr(2), NOW);

    let err = handle
        .reload_yaml(
            "plugins:\n- type: nope\nschedulingProfiles: []\n",
            SchedulerOptions::default(),
        )
        .expect_err("invalid");
    assert!(err.to_string().contains("unknown plugin type"));
    assert_eq!(handle.current().name(), "gie-default");

    let weights_changed = builtin_yaml("gie-default")
        .expect("listed")
        .replace("weight: 3", "weight: 5");
    handle
        .reload_yaml(&weights_changed, SchedulerOptions::default())
        .expect("valid");
    let current = handle.current();
    assert_eq!(current.profile().scorers[2].weight, 5.0);
    let table = table(4);
    assert_eq!(
        pick(&current, &request, &table.snapshot()),
        addr(2),
        "index survived reload"
    );
}

#[test]
fn sync_members_forgets_departed_endpoints() {
    let table = table(2);
    let scheduler = scheduler("switchyard");
    let blocks: Vec<BlockHash> = (1..=4).collect();
    let request = SchedulingRequest {
        prefix: &blocks,
        ..SchedulingRequest::new("m")
    };
    scheduler.on_routed(&request, addr(2), NOW);
    table.remove_member(&addr(2));
    scheduler.sync_members(&table.snapshot());
    let index = scheduler.prefix_index().expect("switchyard uses the index");
    assert_eq!(index.blocks_of(&addr(2)), 0);
    assert_eq!(index.distinct_blocks(), 0);
}

// ---------- sampling ----------

#[test]
fn affinity_sample_keeps_affine_endpoints_and_bounds_the_rest() {
    let yaml = "plugins:\n- type: affinity-sample-filter\n  parameters:\n    sampleSize: 4\n- type: prefix-cache-scorer\n- type: session-affinity-scorer\n- type: max-score-picker\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: affinity-sample-filter\n  - pluginRef: prefix-cache-scorer\n    weight: 2\n  - pluginRef: session-affinity-scorer\n  - pluginRef: max-score-picker\n";
    let scheduler = Scheduler::from_yaml(yaml, SchedulerOptions::seeded(5)).expect("valid");
    let table = table(64);
    let snapshot = table.snapshot();
    let blocks: Vec<BlockHash> = (1..=8).collect();
    scheduler.on_routed(
        &SchedulingRequest {
            prefix: &blocks,
            ..SchedulingRequest::new("m")
        },
        addr(40),
        NOW,
    );
    scheduler.on_routed(
        &SchedulingRequest {
            session: Some("s"),
            ..SchedulingRequest::new("m")
        },
        addr(50),
        NOW,
    );
    let request = SchedulingRequest {
        prefix: &blocks,
        session: Some("s"),
        ..SchedulingRequest::new("m")
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let decision = scheduler.pick(&request, &snapshot, NOW).expect("picked");
        assert_eq!(decision.candidates, 6, "2 affine + 4 sampled");
        assert_eq!(decision.primary(), addr(40));
        assert_eq!(decision.ranked[1].addr, addr(50));
        seen.extend(decision.ranked.iter().skip(2).map(|r| r.addr));
    }
    assert!(
        seen.len() > 20,
        "the sample moves between requests: {}",
        seen.len()
    );
    // Adapter requests look at everyone (no adapter index to find the loaded ones).
    let adapter = SchedulingRequest {
        lora: Some("x"),
        ..SchedulingRequest::new("m")
    };
    assert_eq!(
        scheduler
            .pick(&adapter, &snapshot, NOW)
            .expect("picked")
            .candidates,
        64
    );
    // A sheddable request is only shed after looking beyond the sample.
    for i in 1..=64 {
        set_load(&table, addr(i), 9, 0.9);
    }
    set_load(&table, addr(33), 0, 0.1);
    let blocked: Vec<SocketAddr> = (1..=64).filter(|&i| i != 33).map(addr).collect();
    let err = scheduler
        .pick(
            &SchedulingRequest {
                priority: -1,
                subset: Some(&blocked),
                ..SchedulingRequest::new("m")
            },
            &snapshot,
            NOW,
        )
        .expect_err("no capacity in the subset");
    assert_eq!(err.http_status(), 429);
    let sheddable = SchedulingRequest {
        priority: -1,
        ..SchedulingRequest::new("m")
    };
    for _ in 0..10 {
        // Without the full-scan fallback most samples of 4 would miss the one endpoint with
        // capacity and shed.
        scheduler
            .pick(&sheddable, &snapshot, NOW)
            .expect("capacity exists beyond the sample");
    }
}

#[test]
fn walk_visits_every_position_once() {
    for len in [1usize, 2, 7, 64, 100, 2_048] {
        for draw in [0u64, 1, 0xdead_beef_cafe, u64::MAX] {
            let (start, stride) = super::scheduler::walk(draw, len);
            let mut seen = vec![false; len];
            for step in 0..len {
                let position = (start + step * stride) % len;
                assert!(!seen[position], "len {len} draw {draw}: {position} twice");
                seen[position] = true;
            }
        }
    }
}

// ---------- concurrency ----------

#[test]
fn concurrent_picks_and_routes_settle_their_accounting() {
    let table = Arc::new(table(16));
    for i in 1..=16 {
        set_load(&table, addr(i), u32::from(i % 4), 0.3);
    }
    let scheduler = Arc::new(scheduler("switchyard"));
    let workers: Vec<_> = (0..4u32)
        .map(|worker| {
            let (table, scheduler) = (table.clone(), scheduler.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for n in 0..500u32 {
                    let tokens: Vec<u32> = (0..640).map(|t| t + (n % 8) * 1_000).collect();
                    let blocks = scheduler.hash_tokens("m", &tokens);
                    let request = SchedulingRequest {
                        prefix: &blocks,
                        input_tokens: 640,
                        session: Some(if worker % 2 == 0 { "even" } else { "odd" }),
                        ..SchedulingRequest::new("m")
                    };
                    let snapshot = table.snapshot();
                    let decision = scheduler.pick(&request, &snapshot, NOW).expect("picked");
                    held.push(
                        scheduler
                            .route(&decision, &request, &snapshot)
                            .expect("member"),
                    );
                    if held.len() > 8 {
                        drop(held.remove(0));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("no panic");
    }
    let snapshot = table.snapshot();
    let routed: u64 = snapshot
        .endpoints()
        .iter()
        .map(|e| {
            assert_eq!(e.live().inflight_requests(), 0);
            e.live().totals().routed
        })
        .sum();
    assert_eq!(routed, 2_000);
    let index = scheduler.prefix_index().expect("switchyard keeps an index");
    assert!(index.distinct_blocks() >= 8 * 10);
}
