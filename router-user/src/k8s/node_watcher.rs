//! The node agent's view of the cluster: the pods scheduled on its own node (field selector
//! `spec.nodeName=<node>`), kept in a reflector cache and published as [`NodePods`].
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::node_pods::{NodePods, assemble_node_pods, strip_pod_for_node};
use super::publish::{DEFAULT_DEBOUNCE, publish_loop, signals};

/// Which node's pods to watch.
#[derive(Debug, Clone)]
pub struct NodePodWatchConfig {
    pub node_name: String,
    /// Coalescing window for bursts of changes (keep it well under a second).
    pub debounce: Duration,
}

impl NodePodWatchConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

const PODS_SOURCE: &str = "node-pods";

/// Starts watching the node's pods in every namespace; must be called inside a tokio runtime.
/// The receiver holds an unsynced empty list until the first complete read. The task ends when
/// every receiver is dropped; API errors are logged and retried with backoff.
pub fn run_node_pod_watcher(
    client: Client,
    config: NodePodWatchConfig,
) -> (watch::Receiver<NodePods>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(NodePods::default());
    let handle = tokio::spawn(watch_node(client, config, tx));
    (rx, handle)
}

async fn watch_node(client: Client, config: NodePodWatchConfig, tx: watch::Sender<NodePods>) {
    let pods: Api<Pod> = Api::all(client);
    let (store, writer) = reflector::store::<Pod>();
    let events = watcher(
        pods,
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name)),
    )
    .default_backoff()
    .modify(strip_pod_for_node)
    .reflect(writer);
    let assemble = || {
        let pods = store.state();
        assemble_node_pods(pods.iter().map(AsRef::as_ref), true)
    };
    let node = config.node_name.clone();
    let on_change = |old: &NodePods, new: &NodePods| {
        if !old.synced {
            tracing::info!(node = %node, pods = new.pods.len(), "node pods synced");
        } else {
            tracing::debug!(node = %node, pods = new.pods.len(), "node pods changed");
        }
    };
    tracing::info!(node = %config.node_name, "watching the pods of this node");
    publish_loop(
        signals(PODS_SOURCE, events).boxed(),
        &[PODS_SOURCE],
        config.debounce,
        tx,
        assemble,
        on_change,
    )
    .await;
}
