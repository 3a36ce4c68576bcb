//! Endpoint-table semantics: membership, ordering of samples, in-flight guards, concurrency.
use std::{net::SocketAddr, sync::Arc, thread};

use super::*;
use crate::telemetry::{EndpointLoad, GpuSample};

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8000))
}

fn load(seq: u64, waiting: u32) -> EndpointLoad {
    EndpointLoad {
        waiting,
        sampled_at: seq * 10,
        seq,
        ..EndpointLoad::default()
    }
}

#[test]
fn set_members_adds_removes_and_keeps_state_of_stayers() {
    let table = EndpointTable::new();
    let change = table.set_members([addr(2), addr(1)].map(EndpointMeta::new));
    assert_eq!(change.added, vec![addr(1), addr(2)]);
    assert_eq!(table.update_load(&addr(1), load(1, 4)), LoadUpdate::Applied);
    let guard = table.begin(&addr(1), 100).expect("member");

    let change = table.set_members([addr(1), addr(3)].map(EndpointMeta::new));
    assert_eq!(change.added, vec![addr(3)]);
    assert_eq!(change.removed, vec![addr(2)]);
    let snapshot = table.snapshot();
    let stayer = snapshot.get(&addr(1)).expect("kept");
    assert_eq!(stayer.live().load().map(|l| l.waiting), Some(4));
    assert_eq!(stayer.live().inflight_requests(), 1);
    assert_eq!(stayer.live().inflight_tokens(), 100);
    assert!(snapshot.get(&addr(2)).is_none());
    drop(guard);
    assert_eq!(stayer.live().inflight_requests(), 0);
}

#[test]
fn removed_member_keeps_no_state_when_it_returns() {
    let table = EndpointTable::new();
    table.set_members([EndpointMeta::new(addr(1))]);
    table.update_load(&addr(1), load(7, 9));
    let guard = table.begin(&addr(1), 10).expect("member");
    assert!(table.set_health(&addr(1), Health::Draining));
    assert!(table.remove_member(&addr(1)));
    assert_eq!(
        table.update_load(&addr(1), load(8, 9)),
        LoadUpdate::UnknownEndpoint
    );
    assert!(table.begin(&addr(1), 10).is_none());

    table.upsert_member(EndpointMeta::new(addr(1)));
    let snapshot = table.snapshot();
    let back = snapshot.get(&addr(1)).expect("re-added");
    assert_eq!(
        back.live().load(),
        None,
        "load sample must not survive removal"
    );
    assert_eq!(back.live().inflight_requests(), 0);
    assert_eq!(back.health, Health::Ready);
    // A seq lower than before removal is accepted: ordering state was forgotten too.
    assert_eq!(table.update_load(&addr(1), load(1, 2)), LoadUpdate::Applied);
    // The old request finishing does not touch the new member's counts.
    drop(guard);
    assert_eq!(back.live().inflight_requests(), 0);
}

#[test]
fn update_load_drops_older_seq() {
    let table = EndpointTable::new();
    table.set_members([EndpointMeta::new(addr(1))]);
    assert_eq!(table.update_load(&addr(1), load(3, 3)), LoadUpdate::Applied);
    assert_eq!(table.update_load(&addr(1), load(2, 2)), LoadUpdate::Stale);
    assert_eq!(table.update_load(&addr(1), load(4, 4)), LoadUpdate::Applied);
    let snapshot = table.snapshot();
    let live = snapshot.get(&addr(1)).expect("member").live();
    assert_eq!(live.load().map(|l| l.waiting), Some(4));
    assert_eq!(live.last_load().map(|l| l.seq), Some(4));
}

#[test]
fn signal_updates_do_not_republish_but_membership_does() {
    let table = EndpointTable::new();
    table.set_members([EndpointMeta::new(addr(1))]);
    let before = table.snapshot();
    table.update_load(&addr(1), load(1, 1));
    assert!(table.update_gpu(
        &addr(1),
        &[GpuSample {
            memory_total_bytes: 10,
            ..GpuSample::default()
        }]
    ));
    assert!(!table.update_gpu(&addr(1), &[]));
    assert!(table.update_connections(&addr(1), 3, 5));
    let after = table.snapshot();
    assert!(Arc::ptr_eq(&before, &after));
    // The old snapshot sees the new signals: they live in the shared cell.
    let live = before.get(&addr(1)).expect("member").live();
    assert_eq!(live.connections(), Some((3, 5)));
    assert!(live.gpu().is_some());

    // Unchanged metadata publishes nothing; changed metadata and health do.
    assert!(table.upsert_member(EndpointMeta::new(addr(1))).is_empty());
    assert!(Arc::ptr_eq(&after, &table.snapshot()));
    let change = table.upsert_member(EndpointMeta::new(addr(1)).with_models(["llama"]));
    assert_eq!(change.updated, vec![addr(1)]);
    let newer = table.snapshot();
    assert!(newer.version() > after.version());
    assert_eq!(
        newer
            .get(&addr(1))
            .and_then(|e| e.live().load())
            .map(|l| l.waiting),
        Some(1)
    );
}

#[test]
fn health_changes_are_published() {
    let table = EndpointTable::new();
    table.set_members([EndpointMeta::new(addr(1))]);
    assert!(table.set_health(&addr(1), Health::unhealthy("readiness probe failed")));
    assert!(!table.set_health(&addr(9), Health::Draining));
    let snapshot = table.snapshot();
    assert_eq!(
        snapshot.get(&addr(1)).map(|e| e.health.to_string()),
        Some("unhealthy (readiness probe failed)".to_owned())
    );
}

#[test]
fn snapshot_resolves_models() {
    let table = EndpointTable::new();
    table.set_members([
        EndpointMeta::new(addr(1)).with_models(["llama"]),
        EndpointMeta::new(addr(2)).with_models(["qwen"]),
        EndpointMeta::new(addr(3)),
    ]);
    let snapshot = table.snapshot();
    let llama = snapshot.model_filter("llama");
    let unknown = snapshot.model_filter("mistral");
    let allowed: Vec<bool> = (0..3).map(|p| llama.allows(p)).collect();
    assert_eq!(allowed, vec![true, false, true]);
    let allowed: Vec<bool> = (0..3).map(|p| unknown.allows(p)).collect();
    assert_eq!(allowed, vec![false, false, true]);
    assert!(snapshot.serves_model(1, "qwen"));
}

#[test]
fn inflight_guards_release_on_drop_complete_and_panic() {
    let table = EndpointTable::new();
    table.set_members([EndpointMeta::new(addr(1))]);
    let snapshot = table.snapshot();
    let live = snapshot.get(&addr(1)).expect("member").live();

    let mut first = snapshot.begin(&addr(1), 100).expect("member");
    let second = table.begin(&addr(1), 50).expect("member");
    assert_eq!((live.inflight_requests(), live.inflight_tokens()), (2, 150));
    first.set_tokens(120);
    assert_eq!(live.inflight_tokens(), 170);
    first.complete(&TokenUsage {
        prompt_tokens: 90,
        completion_tokens: 30,
        cached_prompt_tokens: Some(64),
    });
    assert_eq!((live.inflight_requests(), live.inflight_tokens()), (1, 50));
    let totals = live.totals();
    assert_eq!((totals.routed, totals.completed), (2, 1));
    assert_eq!(totals.cached_prompt_tokens, 64);

    // A request path that panics (client cancel, handler error) still releases.
    let table = Arc::new(table);
    let worker = {
        let table = table.clone();
        thread::spawn(move || {
            let _guard = table.begin(&addr(1), 10).expect("member");
            panic!("handler failed");
        })
    };
    assert!(worker.join().is_err());
    drop(second);
    assert_eq!((live.inflight_requests(), live.inflight_tokens()), (0, 0));
}

#[test]
fn concurrent_writers_and_readers_agree_on_counts() {
    let table = Arc::new(EndpointTable::new());
    table.set_members((1..=4).map(|i| EndpointMeta::new(addr(i))));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let table = table.clone();
            thread::spawn(move || {
                for i in 0..2_000u64 {
                    let target = addr((i % 4) as u8 + 1);
                    let guard = table.begin(&target, 3).expect("member");
                    table.update_load(&target, load(i + 1 + t * 10_000, i as u32));
                    if i % 500 == 0 {
                        table.set_health(&target, Health::Ready);
                    }
                    drop(guard);
                }
            })
        })
        .collect();
    for handle in threads {
        handle.join().expect("no panic");
    }
    let snapshot = table.snapshot();
    for endpoint in snapshot.endpoints() {
        assert_eq!(endpoint.live().inflight_requests(), 0);
        assert_eq!(endpoint.live().inflight_tokens(), 0);
        assert_eq!(endpoint.live().totals().routed, 2_000);
        assert!(endpoint.live().load().is_some());
    }
}
