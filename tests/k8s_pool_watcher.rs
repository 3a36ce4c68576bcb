//! The EPP's pool watcher against a fake API server: initial sync, pod churn, pool edits,
//! objective changes, invalid and deleted pools, API failures, shutdown.
mod k8s_support;

use std::time::Duration;

use k8s_support::{FakeApiServer, Resource, objective, pool, wait_for, wait_until};
use serde_json::{Value, json};
use switchyard::k8s::api::{AppProtocol, FailureMode};
use switchyard::k8s::{PoolHealth, PoolState, PoolWatchConfig, run_pool_watcher};

const NS: &str = "llm";

fn config() -> PoolWatchConfig {
    let mut config = PoolWatchConfig::new("pool", NS);
    config.debounce = Duration::from_millis(20);
    config
}

fn spec(ports: &[u16], app: &str) -> Value {
    json!({
        "selector": {"matchLabels": {"app": app}},
        "targetPorts": ports.iter().map(|p| json!({"number": p})).collect::<Vec<_>>(),
        "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
    })
}

fn addrs(state: &PoolState) -> Vec<(String, bool)> {
    state
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.ready))
        .collect()
}

fn ready(state: &PoolState) -> bool {
    state.health == PoolHealth::Ready
}

#[tokio::test]
async fn initial_sync_publishes_the_whole_pool() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    api.apply_pool("another-pool", NS, spec(&[9000], "vllm"));
    api.apply_pod("a", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    api.apply_pod("b", NS, Some("10.0.0.2"), false, json!({"app": "vllm"}));
    api.apply_pod("c", NS, Some("10.0.0.3"), true, json!({"app": "other"}));
    api.apply_pod(
        "d",
        "elsewhere",
        Some("10.0.0.4"),
        true,
        json!({"app": "vllm"}),
    );
    api.apply_objective("critical", NS, "pool", Some(5));

    let (mut rx, _task) = run_pool_watcher(client, config());
    assert_eq!(rx.borrow().health, PoolHealth::Syncing);
    let state = wait_for(&mut rx, "a ready pool", ready).await;
    assert_eq!(state.revision, 1);
    assert_eq!(
        addrs(&state),
        [
            ("10.0.0.1:8000".into(), true),
            ("10.0.0.2:8000".into(), false)
        ]
    );
    let info = state.pool.as_ref().expect("pool info");
    assert_eq!((info.name.as_str(), info.namespace.as_str()), ("pool", NS));
    assert_eq!(info.target_ports, [8000]);
    assert_eq!(info.app_protocol, AppProtocol::Http);
    assert_eq!(info.failure_mode, FailureMode::FailClose);
    assert_eq!(state.priority_of("critical"), 5);

    // One list and one watch per resource, all in the pool's namespace, the pool by name.
    let calls = api.calls();
    for resource in [
        Resource::Pods,
        Resource::InferencePools,
        Resource::InferenceObjectives,
    ] {
        for verb in ["list", "watch"] {
            assert!(
                calls.iter().any(|c| c.resource == resource
                    && c.verb == verb
                    && c.namespace.as_deref() == Some(NS)),
                "no {verb} of {resource:?} in {calls:#?}"
            );
        }
    }
    assert!(
        calls
            .iter()
            .filter(|c| c.resource == Resource::InferencePools)
            .all(|c| c.field_selector.as_deref() == Some("metadata.name=pool"))
    );
    assert!(api.unexpected().is_empty(), "{:?}", api.unexpected());
}

#[tokio::test]
async fn pod_churn_reaches_the_state() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    let (mut rx, _task) = run_pool_watcher(client, config());
    let state = wait_for(&mut rx, "an empty ready pool", ready).await;
    assert!(state.endpoints.is_empty());

    // Added, not ready yet.
    api.apply_pod("a", NS, Some("10.0.0.1"), false, json!({"app": "vllm"}));
    wait_for(&mut rx, "unready endpoint", |s| {
        addrs(s) == [("10.0.0.1:8000".into(), false)]
    })
    .await;
    // Readiness flips.
    api.apply_pod("a", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    wait_for(&mut rx, "ready endpoint", |s| {
        addrs(s) == [("10.0.0.1:8000".into(), true)]
    })
    .await;
    // A pod without an IP yet contributes nothing; an unrelated pod is ignored.
    api.apply_pod("b", NS, None, false, json!({"app": "vllm"}));
    api.apply_pod("x", NS, Some("10.0.0.9"), true, json!({"app": "web"}));
    // IP change (pod re-created under the same name).
    api.apply_pod("a", NS, Some("10.0.0.7"), true, json!({"app": "vllm"}));
    let state = wait_for(&mut rx, "new IP", |s| {
        addrs(s) == [("10.0.0.7:8000".into(), true)]
    })
    .await;
    assert_eq!(state.endpoints[0].pod_name, "a");
    // Labels change so the pod leaves the pool.
    api.apply_pod("a", NS, Some("10.0.0.7"), true, json!({"app": "moved"}));
    wait_for(&mut rx, "pod left by label", |s| s.endpoints.is_empty()).await;
    api.apply_pod("a", NS, Some("10.0.0.7"), true, json!({"app": "vllm"}));
    wait_for(&mut rx, "pod back", |s| s.endpoints.len() == 1).await;
    // Deleted.
    assert!(api.delete(Resource::Pods, NS, "a"));
    let state = wait_for(&mut rx, "pod deleted", |s| s.endpoints.is_empty()).await;
    assert_eq!(state.health, PoolHealth::Ready);
}

#[tokio::test]
async fn pool_edits_change_selection_and_ports() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    api.apply_pod("v", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    api.apply_pod("s", NS, Some("10.0.0.2"), true, json!({"app": "sglang"}));
    let (mut rx, _task) = run_pool_watcher(client, config());
    wait_for(&mut rx, "vllm pod", |s| {
        addrs(s) == [("10.0.0.1:8000".into(), true)]
    })
    .await;

    // Selector edit: the other pod set, without any pod event.
    let mut edited = pool("pool", NS, spec(&[8000], "sglang"));
    edited["metadata"]["generation"] = json!(2);
    api.apply(Resource::InferencePools, edited);
    let state = wait_for(&mut rx, "sglang pod", |s| {
        addrs(s) == [("10.0.0.2:8000".into(), true)]
    })
    .await;
    assert_eq!(state.pool.as_ref().and_then(|p| p.generation), Some(2));

    // Ports edit: data-parallel ranks, one endpoint per port, rank = port index.
    let mut edited = pool("pool", NS, spec(&[8000, 8001, 8002], "sglang"));
    edited["spec"]["appProtocol"] = json!("kubernetes.io/h2c");
    edited["spec"]["endpointPickerRef"]["failureMode"] = json!("FailOpen");
    api.apply(Resource::InferencePools, edited);
    let state = wait_for(&mut rx, "three ranks", |s| s.endpoints.len() == 3).await;
    let ranks: Vec<(String, usize)> = state
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.rank))
        .collect();
    assert_eq!(
        ranks,
        [
            ("10.0.0.2:8000".into(), 0),
            ("10.0.0.2:8001".into(), 1),
            ("10.0.0.2:8002".into(), 2)
        ]
    );
    let info = state.pool.as_ref().expect("pool");
    assert_eq!(info.app_protocol, AppProtocol::H2c);
    assert_eq!(info.failure_mode, FailureMode::FailOpen);
}

#[tokio::test]
async fn objective_changes_reach_the_state() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    let (mut rx, _task) = run_pool_watcher(client, config());
    wait_for(&mut rx, "ready pool", ready).await;

    api.apply_objective("chat", NS, "pool", Some(10));
    api.apply_objective("batch", NS, "pool", Some(-1));
    api.apply_objective("default", NS, "pool", None);
    api.apply_objective("theirs", NS, "other", Some(99));
    let state = wait_for(&mut rx, "three objectives", |s| s.objectives.len() == 3).await;
    assert_eq!(
        (
            state.priority_of("chat"),
            state.priority_of("batch"),
            state.priority_of("default")
        ),
        (10, -1, 0)
    );
    assert_eq!(state.priority_of("theirs"), 0);

    api.apply_objective("chat", NS, "pool", Some(20));
    wait_for(&mut rx, "priority edit", |s| s.priority_of("chat") == 20).await;

    // Moved to another pool, then deleted.
    api.apply_objective("batch", NS, "other", Some(-1));
    wait_for(&mut rx, "objective moved away", |s| {
        !s.objectives.contains_key("batch")
    })
    .await;
    api.delete(Resource::InferenceObjectives, NS, "chat");
    wait_for(&mut rx, "objective deleted", |s| {
        !s.objectives.contains_key("chat")
    })
    .await;

    // An invalid objective is reported, not applied, and the rest stays.
    let mut broken = objective("broken", NS, "pool", None);
    broken["spec"]["priority"] = json!("very high");
    api.apply(Resource::InferenceObjectives, broken);
    let state = wait_for(&mut rx, "rejected objective", |s| {
        s.rejected_objectives.contains_key("broken")
    })
    .await;
    assert!(state.rejected_objectives["broken"].mentions("spec.priority"));
    assert_eq!(state.objectives.len(), 1);
    assert_eq!(state.health, PoolHealth::Ready);
}

#[tokio::test]
async fn invalid_pool_is_an_error_state_not_a_crash() {
    let (client, api) = FakeApiServer::start();
    let mut invalid = spec(&[8000, 8000], "vllm");
    invalid["endpointPickerRef"] = json!({"name": "epp"});
    api.apply_pool("pool", NS, invalid);
    api.apply_pod("a", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    let (mut rx, task) = run_pool_watcher(client, config());
    let state = wait_for(&mut rx, "invalid pool", |s| {
        matches!(s.health, PoolHealth::Invalid(_))
    })
    .await;
    let PoolHealth::Invalid(errors) = &state.health else {
        unreachable!()
    };
    assert!(errors.mentions("spec.targetPorts[1].number"), "{errors}");
    assert!(errors.mentions("spec.endpointPickerRef.port"), "{errors}");
    assert!(state.endpoints.is_empty() && state.pool.is_none());

    // Fixed: served.
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    wait_for(&mut rx, "fixed pool", |s| {
        ready(s) && s.endpoints.len() == 1
    })
    .await;

    // Broken in a way that does not even decode: still a clean error state.
    let mut undecodable = spec(&[8000], "vllm");
    undecodable["appProtocol"] = json!("grpc");
    api.apply_pool("pool", NS, undecodable);
    let state = wait_for(&mut rx, "undecodable pool", |s| {
        matches!(s.health, PoolHealth::Invalid(_))
    })
    .await;
    let PoolHealth::Invalid(errors) = &state.health else {
        unreachable!()
    };
    assert!(errors.mentions("spec.appProtocol"), "{errors}");
    assert!(state.endpoints.is_empty());
    assert!(!task.is_finished());
}

#[tokio::test]
async fn pool_deletion_empties_the_endpoint_set() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    api.apply_pod("a", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    api.apply_objective("chat", NS, "pool", Some(3));
    let (mut rx, task) = run_pool_watcher(client, config());
    wait_for(&mut rx, "ready pool", |s| {
        ready(s) && s.endpoints.len() == 1
    })
    .await;

    assert!(api.delete(Resource::InferencePools, NS, "pool"));
    let state = wait_for(&mut rx, "pool gone", |s| s.health == PoolHealth::NotFound).await;
    assert!(state.endpoints.is_empty() && state.pool.is_none() && state.objectives.is_empty());
    assert!(!task.is_finished());

    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    let state = wait_for(&mut rx, "pool back", |s| ready(s) && s.endpoints.len() == 1).await;
    assert_eq!(state.priority_of("chat"), 3);
}

#[tokio::test]
async fn missing_pool_at_start_is_not_found() {
    let (client, api) = FakeApiServer::start();
    api.apply_pod("a", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    let (mut rx, _task) = run_pool_watcher(client, config());
    let state = wait_for(&mut rx, "not found", |s| s.health == PoolHealth::NotFound).await;
    assert!(state.endpoints.is_empty());
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    wait_for(&mut rx, "created", |s| ready(s) && s.endpoints.len() == 1).await;
}

#[tokio::test]
async fn failed_lists_are_retried() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    api.apply_pod("a", NS, Some("10.0.0.1"), true, json!({"app": "vllm"}));
    api.fail_lists(Resource::Pods, 2);
    let (mut rx, _task) = run_pool_watcher(client, config());
    // No state is published from a partial read: Syncing until the pods list succeeds.
    let state = wait_for(&mut rx, "recovered", |s| s.health != PoolHealth::Syncing).await;
    assert_eq!(addrs(&state), [("10.0.0.1:8000".into(), true)]);
    let pod_lists = api
        .calls()
        .iter()
        .filter(|c| c.resource == Resource::Pods && c.verb == "list")
        .count();
    assert!(pod_lists >= 3, "{pod_lists} pod lists");
}

#[tokio::test]
async fn a_burst_of_changes_is_published_once() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    let mut config = config();
    // A wide window: the point is coalescing, not speed.
    config.debounce = Duration::from_millis(500);
    let (mut rx, _task) = run_pool_watcher(client, config);
    let first = wait_for(&mut rx, "ready", ready).await;
    for i in 0..30 {
        let name = format!("p{i}");
        let ip = format!("10.0.1.{i}");
        api.apply_pod(&name, NS, Some(&ip), true, json!({"app": "vllm"}));
    }
    let state = wait_for(&mut rx, "30 endpoints", |s| s.endpoints.len() == 30).await;
    assert!(
        state.revision - first.revision <= 2,
        "30 pod events became {} publications",
        state.revision - first.revision
    );
}

#[tokio::test]
async fn watcher_stops_when_every_receiver_is_gone() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, spec(&[8000], "vllm"));
    let (mut rx, task) = run_pool_watcher(client, config());
    wait_for(&mut rx, "ready", ready).await;
    wait_until("three open watches", || api.open_watches() == 3).await;
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("watcher task ends")
        .expect("watcher task does not panic");
}
