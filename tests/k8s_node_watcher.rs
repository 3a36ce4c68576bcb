//! The agent's node-pod watcher against a fake API server: only this node's pods, container
//! IDs without runtime prefix, churn, API failures.
mod k8s_support;

use std::time::Duration;

use k8s_support::{FakeApiServer, Resource, pod, wait_for};
use serde_json::{Value, json};
use switchyard::k8s::{NodePodWatchConfig, NodePods, run_node_pod_watcher};

fn config() -> NodePodWatchConfig {
    let mut config = NodePodWatchConfig::new("node-a");
    config.debounce = Duration::from_millis(20);
    config
}

/// A pod on `node` with one started container (ID with runtime prefix) and one not started.
fn node_pod(name: &str, namespace: &str, node: &str, ip: &str, container_id: &str) -> Value {
    let mut pod = pod(name, namespace, Some(ip), true, json!({"app": name}));
    pod["spec"]["nodeName"] = json!(node);
    pod["spec"]["containers"] = json!([
        {"name": "engine", "image": "vllm", "ports": [{"containerPort": 8000, "name": "http"}]},
        {"name": "sidecar", "image": "proxy"},
    ]);
    pod["status"]["containerStatuses"] = json!([
        {"name": "engine", "containerID": container_id, "image": "vllm", "imageID": "",
         "ready": true, "restartCount": 0},
        {"name": "sidecar", "image": "proxy", "imageID": "", "ready": false, "restartCount": 0},
    ]);
    pod
}

fn add_node_pod(
    api: &FakeApiServer,
    name: &str,
    namespace: &str,
    node: &str,
    ip: &str,
    container_id: &str,
) {
    api.apply(
        Resource::Pods,
        node_pod(name, namespace, node, ip, container_id),
    );
}

fn names(pods: &NodePods) -> Vec<String> {
    pods.pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

#[tokio::test]
async fn only_this_nodes_pods_with_container_ids() {
    let (client, api) = FakeApiServer::start();
    add_node_pod(
        &api,
        "vllm-0",
        "llm",
        "node-a",
        "10.1.0.5",
        "containerd://abc123",
    );
    add_node_pod(
        &api,
        "sgl-0",
        "other",
        "node-a",
        "10.1.0.6",
        "cri-o://def456",
    );
    add_node_pod(&api, "far", "llm", "node-b", "10.2.0.5", "containerd://zzz");
    let (mut rx, _task) = run_node_pod_watcher(client, config());
    assert!(!rx.borrow().synced);
    let pods = wait_for(&mut rx, "synced", |p| p.synced).await;
    assert_eq!(names(&pods), ["llm/vllm-0", "other/sgl-0"]);
    let vllm = pods
        .by_container_id("abc123")
        .expect("containerd prefix stripped");
    assert_eq!(vllm.name, "vllm-0");
    assert_eq!(
        vllm.container_ids.len(),
        1,
        "a container without ID is skipped"
    );
    assert_eq!(vllm.container_ids[0].runtime, "containerd");
    assert_eq!(vllm.ports[0].port, 8000);
    assert_eq!(vllm.uid, "uid-vllm-0");
    assert_eq!(
        pods.by_container_id("def456").map(|p| p.name.as_str()),
        Some("sgl-0")
    );
    assert_eq!(
        pods.by_ip("10.1.0.6".parse().expect("ip"))
            .map(|p| p.name.as_str()),
        Some("sgl-0")
    );

    let calls = api.calls();
    assert!(calls.iter().all(|c| c.resource == Resource::Pods
        && c.namespace.is_none()
        && c.field_selector.as_deref() == Some("spec.nodeName=node-a")));
    assert!(calls.iter().any(|c| c.verb == "list") && calls.iter().any(|c| c.verb == "watch"));
    assert!(api.unexpected().is_empty(), "{:?}", api.unexpected());
}

#[tokio::test]
async fn churn_on_the_node() {
    let (client, api) = FakeApiServer::start();
    let (mut rx, _task) = run_node_pod_watcher(client, config());
    let pods = wait_for(&mut rx, "synced", |p| p.synced).await;
    assert!(pods.pods.is_empty());

    add_node_pod(&api, "a", "llm", "node-a", "10.1.0.5", "containerd://one");
    add_node_pod(&api, "b", "llm", "node-b", "10.2.0.5", "containerd://two");
    wait_for(&mut rx, "pod a", |p| names(p) == ["llm/a"]).await;

    // Container restarted: new ID.
    add_node_pod(&api, "a", "llm", "node-a", "10.1.0.5", "containerd://three");
    let pods = wait_for(&mut rx, "new container id", |p| {
        p.by_container_id("three").is_some()
    })
    .await;
    assert!(pods.by_container_id("one").is_none());

    api.delete(Resource::Pods, "llm", "a");
    wait_for(&mut rx, "pod a deleted", |p| p.pods.is_empty()).await;
}

#[tokio::test]
async fn failed_lists_are_retried() {
    let (client, api) = FakeApiServer::start();
    add_node_pod(&api, "a", "llm", "node-a", "10.1.0.5", "containerd://one");
    api.fail_lists(Resource::Pods, 1);
    let (mut rx, _task) = run_node_pod_watcher(client, config());
    let pods = wait_for(&mut rx, "synced after a failure", |p| p.synced).await;
    assert_eq!(names(&pods), ["llm/a"]);
}
