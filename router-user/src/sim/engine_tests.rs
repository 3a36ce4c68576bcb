//! Engine behaviour on a virtual clock.
use std::collections::HashMap;

use super::*;
use crate::sim::profile::StepModel;

fn engine_with(profile: Profile, config: EngineConfig) -> Engine {
    Engine::new(profile, config)
}

fn engine() -> Engine {
    engine_with(Profile::default(), EngineConfig::default())
}

/// Distinct token ids in a range that never collides with another prompt's range.
fn tokens(base: u32, len: u32) -> Arc<[u32]> {
    (0..len).map(|i| base * 1_000_000 + i).collect()
}

fn request(id: u64, prompt: Arc<[u32]>, max_tokens: u32, arrival: Micros) -> SimRequest {
    SimRequest {
        id,
        prompt,
        max_tokens,
        ignore_eos: true,
        lora: None,
        arrival,
    }
}

/// Advances until the engine is idle; returns every event.
fn run_to_idle(engine: &mut Engine) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    let mut guard = 0;
    while let Some(at) = engine.next_event_at() {
        engine.advance_into(at, &mut events);
        guard += 1;
        assert!(guard < 1_000_000, "engine never went idle");
    }
    events
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    first_token: Option<Micros>,
    finished: Option<Micros>,
    reason: Option<FinishReason>,
    usage: RequestUsage,
    tokens: u32,
    preempted: u32,
}

fn outcomes(events: &[EngineEvent]) -> HashMap<u64, Outcome> {
    let mut map: HashMap<u64, Outcome> = HashMap::new();
    for event in events {
        match *event {
            EngineEvent::FirstToken {
                id,
                at,
                cached_tokens,
            } => {
                let entry = map.entry(id).or_default();
                assert!(entry.first_token.is_none(), "two first tokens for {id}");
                entry.first_token = Some(at);
                entry.usage.cached_tokens = cached_tokens;
            }
            EngineEvent::Token { id, generated, .. } => {
                let entry = map.entry(id).or_default();
                assert_eq!(generated, entry.tokens + 1, "tokens of {id} out of order");
                entry.tokens = generated;
            }
            EngineEvent::Finished {
                id,
                at,
                reason,
                usage,
            } => {
                let entry = map.entry(id).or_default();
                entry.finished = Some(at);
                entry.reason = Some(reason);
                entry.usage = usage;
            }
            EngineEvent::Preempted { id, .. } => map.entry(id).or_default().preempted += 1,
        }
    }
    map
}

fn small_kv_profile(blocks: u64) -> Profile {
    Profile {
        kv_capacity_tokens: blocks * 16,
        ..Profile::default()
    }
}

#[test]
fn idle_engine_has_no_events_and_waits_for_arrivals() {
    let mut engine = engine();
    assert_eq!(engine.next_event_at(), None);
    assert!(engine.advance(1_000_000).is_empty());
    assert_eq!(engine.now(), 1_000_000);
    engine
        .submit(request(1, tokens(1, 100), 4, 2_000_000))
        .unwrap();
    assert_eq!(engine.next_event_at(), Some(2_000_000));
    // Not yet arrived: nothing runs before its arrival.
    engine.advance(1_500_000);
    assert_eq!(engine.num_waiting(), 0);
    assert!(!engine.is_busy());
    engine.advance(2_000_000);
    assert!(engine.is_busy());
    assert_eq!(engine.num_running(), 1);
    let events = run_to_idle(&mut engine);
    let outcome = outcomes(&events)[&1];
    assert_eq!(outcome.tokens, 4);
    assert_eq!(outcome.reason, Some(FinishReason::Length));
    assert!(outcome.first_token.unwrap() > 2_000_000);
    assert_eq!(engine.num_used_blocks(), 0, "all blocks returned");
}

#[test]
fn step_times_follow_the_documented_model() {
    let profile = Profile::default();
    let model = profile.step.clone();
    let mut engine = engine_with(profile, EngineConfig::default());
    engine.submit(request(1, tokens(1, 1000), 3, 0)).unwrap();
    let events = run_to_idle(&mut engine);
    let times: Vec<Micros> = events
        .iter()
        .filter_map(|event| match *event {
            EngineEvent::Token { at, .. } => Some(at),
            _ => None,
        })
        .collect();
    let prefill = StepWork {
        prefill_tokens: 1000,
        kv_tokens_read: 1000,
        ..StepWork::default()
    };
    assert_eq!(
        times[0],
        model.step_us(&prefill, 1.0, 0.0).round() as Micros
    );
    for (index, pair) in times.windows(2).enumerate() {
        // Decode step reading the prompt plus the tokens generated so far.
        let decode = StepWork {
            decode_seqs: 1,
            kv_tokens_read: 1001 + index as u64,
            ..StepWork::default()
        };
        assert_eq!(
            pair[1] - pair[0],
            model.step_us(&decode, 1.0, 0.0).round() as Micros
        );
    }
}

#[test]
fn default_step_model_matches_published_h100_figures() {
    // Calibration targets (docs/sim.md): prefill 25-40k tok/s, a decode step ~7 ms at batch 1
    // and 10-12 ms at batch 64 (1k-token contexts).
    let model = StepModel::default();
    let chunk = StepWork {
        prefill_tokens: 8192,
        kv_tokens_read: 8192,
        ..StepWork::default()
    };
    let prefill_rate = 8192.0 / (model.step_us(&chunk, 1.0, 0.0) / 1e6);
    assert!(
        (25_000.0..=40_000.0).contains(&prefill_rate),
        "prefill {prefill_rate} tok/s"
    );
    let batch = |seqs: u32| StepWork {
        decode_seqs: seqs,
        kv_tokens_read: u64::from(seqs) * 1024,
        ..StepWork::default()
    };
    let one = model.step_us(&batch(1), 1.0, 0.0) / 1000.0;
    let sixty_four = model.step_us(&batch(64), 1.0, 0.0) / 1000.0;
    assert!((6.0..=8.0).contains(&one), "batch 1 step {one} ms");
    assert!(
        (9.0..=12.0).contains(&sixty_four),
        "batch 64 step {sixty_four} ms"
    );
}

#[test]
fn ttft_grows_with_queueing() {
    let mut engine = engine();
    // Each prompt takes half of a step's token budget: two prefills per step.
    for id in 0..8 {
        engine
            .submit(request(id, tokens(id as u32 + 1, 4096), 2, 0))
            .unwrap();
    }
    let events = run_to_idle(&mut engine);
    let outcomes = outcomes(&events);
    let ttfts: Vec<Micros> = (0..8)
        .map(|id| outcomes[&id].first_token.unwrap())
        .collect();
    assert!(ttfts.windows(2).all(|pair| pair[0] <= pair[1]), "{ttfts:?}");
    assert!(
        ttfts[7] > 3 * ttfts[0],
        "queued requests wait for earlier prefills: {ttfts:?}"
    );
    assert_eq!(engine.histograms().ttft.count(), 8);
    assert!(engine.histograms().queue.sum() > 0.0);
}

#[test]
fn shared_prefix_hits_the_cache_and_cuts_prefill_time() {
    let shared = tokens(7, 2000);
    let with_tail = |tail: u32| -> Arc<[u32]> {
        shared
            .iter()
            .copied()
            .chain((0..100).map(|i| 900_000_000 + tail * 1000 + i))
            .collect()
    };
    let mut engine = engine();
    engine.submit(request(1, with_tail(1), 1, 0)).unwrap();
    let first = outcomes(&run_to_idle(&mut engine))[&1];
    assert_eq!(first.usage.cached_tokens, 0);
    let hits_before = engine.counters().prefix_hits;
    assert_eq!(engine.cached_prefix_tokens(&with_tail(2), None), 2000);

    let start = engine.now();
    engine.submit(request(2, with_tail(2), 1, start)).unwrap();
    let second = outcomes(&run_to_idle(&mut engine))[&2];
    // 2000 shared tokens = 125 full blocks.
    assert_eq!(second.usage.cached_tokens, 125 * 16);
    assert_eq!(engine.counters().prefix_hits - hits_before, 2000);
    let cold_ttft = first.first_token.unwrap();
    let warm_ttft = second.first_token.unwrap() - start;
    assert!(
        warm_ttft * 4 < cold_ttft,
        "warm {warm_ttft} vs cold {cold_ttft}"
    );

    // A different LoRA adapter does not share the base model's cache.
    assert_eq!(
        engine.cached_prefix_tokens(&with_tail(3), Some("adapter")),
        0
    );
    engine.reset_prefix_cache();
    assert_eq!(engine.cached_prefix_tokens(&with_tail(2), None), 0);
}

#[test]
fn concurrent_requests_share_blocks_a_running_request_computed() {
    let shared = tokens(3, 1600);
    let mut engine = engine();
    engine.submit(request(1, shared.clone(), 200, 0)).unwrap();
    // Let the first request finish its prefill, then send the same prompt.
    let first_end = engine.next_event_at().unwrap();
    engine.advance(first_end);
    let later = engine.now();
    engine.submit(request(2, shared.clone(), 1, later)).unwrap();
    let outcome = outcomes(&run_to_idle(&mut engine))[&2];
    assert_eq!(outcome.usage.cached_tokens, 1584, "all but the last block");
}

#[test]
fn kv_exhaustion_preempts_the_newest_and_everything_still_finishes() {
    // 100 blocks; four requests that each grow to 60 blocks.
    let mut engine = engine_with(small_kv_profile(100), EngineConfig::default());
    for id in 0..4 {
        engine
            .submit(request(id, tokens(id as u32 + 1, 160), 800, 0))
            .unwrap();
    }
    let events = run_to_idle(&mut engine);
    let outcomes = outcomes(&events);
    let preempted: u32 = outcomes.values().map(|o| o.preempted).sum();
    assert!(preempted > 0, "no preemption");
    assert_eq!(engine.counters().preemptions, u64::from(preempted));
    // The oldest request is never the victim.
    assert_eq!(outcomes[&0].preempted, 0);
    for outcome in outcomes.values() {
        assert_eq!(outcome.usage.completion_tokens, 800);
        assert_eq!(
            outcome.tokens, 800,
            "streamed tokens continue after recompute"
        );
    }
    assert_eq!(engine.num_used_blocks(), 0);
    assert_eq!(engine.counters().generation_tokens, 4 * 800);
    // Recomputing costs prefill: more tokens computed than prompts alone.
    assert!(engine.counters().prefill_tokens_computed > 4 * 160);
}

#[test]
fn lora_requests_wait_while_the_slots_are_full() {
    let config = EngineConfig {
        max_loras: 1,
        ..EngineConfig::default()
    };
    let mut engine = engine_with(Profile::default(), config);
    let lora = |id: u64, name: &str, max_tokens: u32| SimRequest {
        lora: Some(Arc::from(name)),
        ..request(id, tokens(id as u32 + 1, 64), max_tokens, 0)
    };
    engine.submit(lora(1, "a", 50)).unwrap();
    engine.submit(lora(2, "b", 5)).unwrap();
    engine.submit(lora(3, "a", 5)).unwrap();
    engine.advance(0);
    let state = engine.lora_state().unwrap();
    assert_eq!(state.running, vec!["a".to_owned()]);
    assert_eq!(state.waiting, vec!["b".to_owned()]);
    assert_eq!(state.max_loras, 1);
    assert!(engine.lora_resident("a") && !engine.lora_resident("b"));
    let events = run_to_idle(&mut engine);
    let outcomes = outcomes(&events);
    // Same adapter runs alongside; the other waits for the slot.
    assert!(outcomes[&3].finished.unwrap() < outcomes[&1].finished.unwrap());
    assert!(outcomes[&2].first_token.unwrap() > outcomes[&1].finished.unwrap());
    assert_eq!(engine.counters().lora_loads, 2);
    assert!(
        engine
            .submit(request(9, tokens(9, 8), 1, engine.now()))
            .is_ok()
    );
    let no_lora = engine_with(Profile::default(), EngineConfig::default())
        .submit(lora(1, "a", 1))
        .unwrap_err();
    assert_eq!(no_lora, SubmitError::LoraDisabled);
}

#[test]
fn lora_load_delay_is_added_to_the_step_that_loads() {
    let profile = Profile::default();
    let config = EngineConfig {
        max_loras: 2,
        ..EngineConfig::default()
    };
    let mut plain = engine_with(profile.clone(), config.clone());
    plain.submit(request(1, tokens(1, 64), 1, 0)).unwrap();
    let plain_ttft = outcomes(&run_to_idle(&mut plain))[&1].first_token.unwrap();
    let mut with_lora = engine_with(profile.clone(), config);
    let mut req = request(1, tokens(1, 64), 1, 0);
    req.lora = Some(Arc::from("x"));
    with_lora.submit(req).unwrap();
    let lora_ttft = outcomes(&run_to_idle(&mut with_lora))[&1]
        .first_token
        .unwrap();
    let expected = profile.lora_load_us + profile.step.lora_us_per_adapter;
    assert_eq!(lora_ttft - plain_ttft, expected.round() as Micros);
}

#[test]
fn metrics_agree_with_internal_state() {
    let mut engine = engine();
    for id in 0..40u64 {
        let mut req = request(
            id,
            tokens(id as u32 % 5 + 1, 300 + id as u32),
            64,
            id * 5_000,
        );
        req.ignore_eos = id % 2 == 0;
        engine.submit(req).unwrap();
    }
    let mut events = engine.advance(100_000);
    let load = engine.load(100_000);
    assert_eq!(load.waiting as usize, engine.num_waiting());
    assert_eq!(load.running as usize, engine.num_running());
    assert!((load.kv_cache_usage - engine.kv_cache_usage()).abs() < 1e-12);
    assert_eq!(load.block_size, Some(16));
    assert_eq!(
        load.num_gpu_blocks,
        Some(u64::from(engine.num_gpu_blocks()))
    );
    assert_eq!(load.seq, 1);
    events.extend(run_to_idle(&mut engine));
    let outcomes = outcomes(&events);
    let counters = engine.counters().clone();
    let completion: u64 = outcomes
        .values()
        .map(|o| u64::from(o.usage.completion_tokens))
        .sum();
    let prompt: u64 = outcomes
        .values()
        .map(|o| u64::from(o.usage.prompt_tokens))
        .sum();
    assert_eq!(counters.generation_tokens, completion);
    assert_eq!(counters.prompt_tokens, prompt);
    assert_eq!(counters.finished(), 40);
    assert_eq!(counters.finished_length + counters.finished_stop, 40);
    let hist = engine.histograms();
    assert_eq!(hist.ttft.count(), 40);
    assert_eq!(hist.e2e.count(), 40);
    assert_eq!(
        hist.itl.count() + 40,
        completion,
        "one ITL per token after the first"
    );
    // Same prompts repeat (id % 5): the cache hits and the interval rate shows it.
    let later = engine.load(engine.now());
    assert!(later.prefix_cache_hit_rate.unwrap() > 0.5, "{later:?}");
    assert_eq!(later.seq, 2);
    assert!(later.ttft_mean_s.unwrap() > 0.0 && later.itl_mean_s.unwrap() > 0.0);
    assert_eq!(later.waiting + later.running, 0);
    // Natural lengths never exceed max_tokens, and some stop early.
    assert!(outcomes.values().all(|o| o.usage.completion_tokens <= 64));
    assert!(counters.finished_stop > 0);
}

#[test]
fn abort_frees_everything_and_counts() {
    let mut engine = engine();
    engine.submit(request(1, tokens(1, 5000), 100, 0)).unwrap();
    engine.submit(request(2, tokens(2, 50), 100, 0)).unwrap();
    engine.advance(0);
    assert!(engine.num_used_blocks() > 0);
    let usage = engine.abort(1).unwrap();
    assert_eq!(usage.completion_tokens, 0);
    assert_eq!(engine.abort(1), None);
    assert_eq!(engine.request_state(1), None);
    let events = run_to_idle(&mut engine);
    let outcomes = outcomes(&events);
    assert!(
        !outcomes.contains_key(&1),
        "aborted request produced events"
    );
    assert_eq!(outcomes[&2].tokens, 100);
    assert_eq!(engine.counters().finished_abort, 1);
    assert_eq!(engine.num_used_blocks(), 0);
    // Aborting a request that has not arrived yet.
    let now = engine.now();
    engine
        .submit(request(3, tokens(3, 10), 1, now + 1_000_000))
        .unwrap();
    assert_eq!(
        engine.request_state(3).unwrap().phase,
        RequestPhase::Arriving
    );
    assert!(engine.abort(3).is_some());
    assert_eq!(engine.next_event_at(), None);
}

#[test]
fn milestones_mode_skips_token_events_but_not_timing() {
    let run = |events: EventDetail| {
        let config = EngineConfig {
            events,
            ..EngineConfig::default()
        };
        let mut engine = engine_with(Profile::default(), config);
        for id in 0..5 {
            engine
                .submit(request(id, tokens(1, 500), 20, id * 1000))
                .unwrap();
        }
        run_to_idle(&mut engine)
    };
    let full = run(EventDetail::Tokens);
    let milestones = run(EventDetail::Milestones);
    assert!(
        milestones
            .iter()
            .all(|e| !matches!(e, EngineEvent::Token { .. }))
    );
    let strip: Vec<EngineEvent> = full
        .into_iter()
        .filter(|e| !matches!(e, EngineEvent::Token { .. }))
        .collect();
    assert_eq!(strip, milestones);
}

#[test]
fn runs_are_deterministic_for_a_seed() {
    let run = |seed: u64| {
        let config = EngineConfig {
            seed,
            ..EngineConfig::default()
        };
        let mut engine = engine_with(Profile::default(), config);
        for id in 0..30u64 {
            let mut req = request(id, tokens(1, 200), 500, id * 3_000);
            req.ignore_eos = false;
            engine.submit(req).unwrap();
        }
        run_to_idle(&mut engine)
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn submit_rejects_bad_requests() {
    let mut engine = engine_with(
        small_kv_profile(10),
        EngineConfig {
            max_model_len: Some(1000),
            ..EngineConfig::default()
        },
    );
    assert_eq!(
        engine.submit(request(1, tokens(1, 0), 1, 0)),
        Err(SubmitError::EmptyPrompt)
    );
    assert_eq!(
        engine.submit(request(1, tokens(1, 10), 0, 0)),
        Err(SubmitError::ZeroMaxTokens)
    );
    assert!(matches!(
        engine.submit(request(1, tokens(1, 990), 20, 0)),
        Err(SubmitError::ContextLength {
            max_model_len: 1000,
            ..
        })
    ));
    assert!(matches!(
        engine.submit(request(1, tokens(1, 150), 20, 0)),
        Err(SubmitError::KvCapacity { available: 10, .. })
    ));
    engine.submit(request(1, tokens(1, 10), 1, 0)).unwrap();
    assert_eq!(
        engine.submit(request(1, tokens(1, 10), 1, 0)),
        Err(SubmitError::DuplicateId(1))
    );
    engine.advance(500);
    assert!(matches!(
        engine.submit(request(2, tokens(1, 10), 1, 100)),
        Err(SubmitError::ArrivalInPast { .. })
    ));
}

#[test]
fn batch_respects_max_num_seqs_and_token_budget() {
    let profile = Profile {
        max_num_seqs: 4,
        max_num_batched_tokens: 100,
        ..Profile::default()
    };
    let mut engine = engine_with(profile, EngineConfig::default());
    for id in 0..10 {
        engine
            .submit(request(id, tokens(id as u32 + 1, 30), 5, 0))
            .unwrap();
    }
    engine.advance(0);
    // 100-token budget: three 30-token prompts and a 10-token chunk of the fourth.
    assert_eq!(engine.num_running(), 4);
    assert_eq!(engine.request_state(3).unwrap().computed_tokens, 0);
    let step_end = engine.next_event_at().unwrap();
    engine.advance(step_end);
    assert_eq!(engine.request_state(3).unwrap().computed_tokens, 10);
    assert_eq!(engine.num_waiting(), 6);
    run_to_idle(&mut engine);
    assert_eq!(engine.counters().finished(), 10);
}

#[test]
fn gpu_view_follows_load() {
    let mut engine = engine();
    let idle = engine.gpu(0);
    for id in 0..32 {
        engine
            .submit(request(id, tokens(id as u32 + 1, 2000), 300, 0))
            .unwrap();
    }
    engine.advance(2_000_000);
    let busy = engine.gpu(2_000_000);
    assert!(busy.gpu_utilization_pct > 90, "{busy:?}");
    assert!(busy.memory_used_bytes > idle.memory_used_bytes);
    assert!(busy.power_mw > idle.power_mw);
    assert_eq!(busy.processes.len(), 1);
    assert_eq!(busy.sampled_at, 2_000_000);
}
