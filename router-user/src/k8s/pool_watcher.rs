//! The endpoint picker's view of the cluster: its InferencePool, the pods of the pool's
//! namespace and the namespace's InferenceObjectives, kept in reflector caches (list once, then
//! watch; no polling) and published as a [`PoolState`] on a `tokio::sync::watch` channel.
//!
//! Pods are watched namespace-wide and filtered by the pool's selector in memory, as GIE's EPP
//! does: a selector edit then takes effect at once, without a re-list.
use std::time::Duration;

use futures::StreamExt;
use futures::stream::select_all;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::{InferenceObjective, InferencePool};
use super::pod_endpoints::strip_pod_for_endpoints;
use super::pool_state::{PoolHealth, PoolState, assemble_pool_state};
use super::publish::{DEFAULT_DEBOUNCE, publish_loop, signals};

/// Which pool to watch.
#[derive(Debug, Clone)]
pub struct PoolWatchConfig {
    pub pool_name: String,
    pub namespace: String,
    /// Coalescing window for bursts of changes (keep it well under a second).
    pub debounce: Duration,
}

impl PoolWatchConfig {
    pub fn new(pool_name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            pool_name: pool_name.into(),
            namespace: namespace.into(),
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

const POOL_SOURCE: &str = "inferencepool";
const PODS_SOURCE: &str = "pods";
const OBJECTIVES_SOURCE: &str = "inferenceobjectives";

/// Starts watching; must be called inside a tokio runtime. The receiver holds
/// [`PoolState::syncing`] until the first complete read, then every change (revision bumped).
/// The task ends when every receiver is dropped. API errors (including missing RBAC or a
/// missing CRD) are logged and retried with backoff; they never end the task.
pub fn run_pool_watcher(
    client: Client,
    config: PoolWatchConfig,
) -> (watch::Receiver<PoolState>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(PoolState::syncing());
    let handle = tokio::spawn(watch_pool(client, config, tx));
    (rx, handle)
}

async fn watch_pool(client: Client, config: PoolWatchConfig, tx: watch::Sender<PoolState>) {
    let namespace = config.namespace.as_str();
    // Pools and objectives are read as untyped objects so that one that does not decode
    // becomes a clear `Invalid` state instead of an event the watcher drops.
    let pool_resource = ApiResource::erase::<InferencePool>(&());
    let objective_resource = ApiResource::erase::<InferenceObjective>(&());
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &pool_resource);
    let objectives: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &objective_resource);
    let pods: Api<Pod> = Api::namespaced(client, namespace);

    let pool_writer = Writer::new(pool_resource);
    let pool_store = pool_writer.as_reader();
    let pool_events = watcher(
        pools,
        watcher::Config::default().fields(&format!("metadata.name={}", config.pool_name)),
    )
    .default_backoff()
    .reflect(pool_writer);

    let objective_writer = Writer::new(objective_resource);
    let objective_store = objective_writer.as_reader();
    let objective_events = watcher(objectives, watcher::Config::default())
        .default_backoff()
        .reflect(objective_writer);

    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let pod_events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .modify(strip_pod_for_endpoints)
        .reflect(pod_writer);

    let merged = select_all([
        signals(POOL_SOURCE, pool_events),
        signals(PODS_SOURCE, pod_events),
        signals(OBJECTIVES_SOURCE, objective_events),
    ])
    .boxed();

    let pool_name = config.pool_name.clone();
    let assemble = || {
        let pool = pool_store
            .state()
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(pool_name.as_str()))
            .and_then(|p| serde_json::to_value(p.as_ref()).ok());
        let pods = pod_store.state();
        let objectives = objective_store
            .state()
            .into_iter()
            .filter_map(|o| serde_json::to_value(o.as_ref()).ok());
        assemble_pool_state(pool, pods.iter().map(AsRef::as_ref), objectives)
    };
    let on_change = |old: &PoolState, new: &PoolState| log_change(&config, old, new);
    tracing::info!(
        pool = %config.pool_name,
        namespace = %config.namespace,
        "watching InferencePool, its pods and InferenceObjectives"
    );
    publish_loop(
        merged,
        &[POOL_SOURCE, PODS_SOURCE, OBJECTIVES_SOURCE],
        config.debounce,
        tx,
        assemble,
        on_change,
    )
    .await;
}

/// Logs what an operator needs to know: health transitions loudly, endpoint churn quietly.
fn log_change(config: &PoolWatchConfig, old: &PoolState, new: &PoolState) {
    let (pool, namespace) = (config.pool_name.as_str(), config.namespace.as_str());
    if old.health != new.health {
        match &new.health {
            PoolHealth::Ready => tracing::info!(
                pool,
                namespace,
                endpoints = new.endpoints.len(),
                ready = new.ready_endpoints().count(),
                objectives = new.objectives.len(),
                "InferencePool is ready"
            ),
            PoolHealth::NotFound => tracing::warn!(
                pool,
                namespace,
                "InferencePool does not exist (deleted or not created yet): endpoint set emptied"
            ),
            PoolHealth::Invalid(errors) => tracing::error!(
                pool,
                namespace,
                %errors,
                "InferencePool is invalid: endpoint set emptied until it is fixed"
            ),
            PoolHealth::Syncing => {}
        }
    } else if old.endpoints != new.endpoints || old.pool != new.pool {
        tracing::debug!(
            pool,
            namespace,
            endpoints = new.endpoints.len(),
            ready = new.ready_endpoints().count(),
            "pool endpoints changed"
        );
    }
    for (name, errors) in &new.rejected_objectives {
        if old.rejected_objectives.get(name) != Some(errors) {
            tracing::warn!(namespace, objective = %name, %errors, "InferenceObjective is invalid; ignored");
        }
    }
}
