//! Where the endpoint set comes from: a static list (`--endpoints`), a file re-read when it
//! changes (`--endpoints-file`), or the Kubernetes InferencePool (`--pool-name`), whose pods
//! and InferenceObjectives reach the table within a second of a change.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::availability::Availability;
use super::policy::Objectives;
use crate::cluster::{EndpointMeta, Health};
use crate::k8s::{PoolHealth, PoolState, PoolWatchConfig, run_pool_watcher};

/// How often the endpoints file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// The endpoint-source flags, shared by `switchyard epp` and `switchyard proxy`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EndpointSourceArgs {
    /// Static endpoints instead of Kubernetes: `IP:PORT,IP:PORT,...`.
    #[arg(long, value_delimiter = ',', conflicts_with = "endpoints_file")]
    pub endpoints: Vec<SocketAddr>,
    /// A YAML or JSON list of endpoints (`IP:PORT` strings, or objects with `addr`, `models`,
    /// `labels`, `draining`), re-read when it changes.
    #[arg(long)]
    pub endpoints_file: Option<PathBuf>,
    /// The InferencePool whose pods are the endpoints (Kubernetes; ignored with --endpoints or
    /// --endpoints-file, where it only names the pool in metrics).
    #[arg(long)]
    pub pool_name: Option<String>,
    /// Namespace of the InferencePool, its pods and InferenceObjectives.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub pool_namespace: String,
}

/// A resolved endpoint source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    Static(Vec<SocketAddr>),
    File(PathBuf),
    Pool { name: String, namespace: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "no endpoint source: give --pool-name (Kubernetes), --endpoints IP:PORT,... or --endpoints-file FILE"
    )]
    Missing,
    #[error("cannot read endpoints file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot reach the Kubernetes API (needed for --pool-name {pool}): {reason}")]
    Kubernetes { pool: String, reason: String },
}

impl EndpointSourceArgs {
    pub fn source(&self) -> Result<EndpointSource, SourceError> {
        if !self.endpoints.is_empty() {
            Ok(EndpointSource::Static(self.endpoints.clone()))
        } else if let Some(path) = &self.endpoints_file {
            Ok(EndpointSource::File(path.clone()))
        } else if let Some(name) = &self.pool_name {
            Ok(EndpointSource::Pool {
                name: name.clone(),
                namespace: self.pool_namespace.clone(),
            })
        } else {
            Err(SourceError::Missing)
        }
    }

    /// The pool name for metrics labels.
    pub fn pool_label(&self) -> String {
        self.pool_name
            .clone()
            .unwrap_or_else(|| "static".to_owned())
    }
}

/// One entry of an endpoints file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileEntry {
    Addr(SocketAddr),
    Full {
        #[serde(flatten)]
        meta: EndpointMeta,
        #[serde(default)]
        draining: bool,
    },
}

/// Parses an endpoints file (YAML, of which JSON is a subset).
pub fn parse_endpoints_file(text: &str, pool: &str) -> Result<Vec<(EndpointMeta, Health)>, String> {
    let entries: Vec<FileEntry> = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let (mut meta, health) = match entry {
            FileEntry::Addr(addr) => (EndpointMeta::new(addr), Health::Ready),
            FileEntry::Full { meta, draining } => (
                meta,
                if draining {
                    Health::Draining
                } else {
                    Health::Ready
                },
            ),
        };
        if let Some(first) = seen.insert(meta.addr, index) {
            return Err(format!(
                "entry {index}: {} is already entry {first}",
                meta.addr
            ));
        }
        if meta.pool.is_empty() {
            meta.pool = pool.to_owned();
        }
        out.push((meta, health));
    }
    Ok(out)
}

/// The running source. Dropping it stops its task.
#[derive(Debug)]
pub struct SourceHandle {
    /// `true` once the first complete endpoint set was applied.
    pub synced: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts feeding `availability` (and `objectives`, for Kubernetes) from `source`. A pool
/// source uses `client`, or the in-cluster / kubeconfig client when `None`.
pub async fn start_source(
    source: EndpointSource,
    pool: &str,
    availability: Arc<Availability>,
    objectives: Arc<Objectives>,
    client: Option<kube::Client>,
) -> Result<SourceHandle, SourceError> {
    let (synced_tx, synced) = watch::channel(false);
    let task = match source {
        EndpointSource::Static(addrs) => {
            let members = addrs
                .into_iter()
                .map(|addr| {
                    let mut meta = EndpointMeta::new(addr);
                    meta.pool = pool.to_owned();
                    (meta, Health::Ready)
                })
                .collect::<Vec<_>>();
            tracing::info!(endpoints = members.len(), "static endpoints");
            availability.set_members(members);
            let _ = synced_tx.send(true);
            None
        }
        EndpointSource::File(path) => {
            let text = read_file(&path).await?;
            let members =
                parse_endpoints_file(&text, pool).map_err(|reason| SourceError::File {
                    path: path.clone(),
                    reason,
                })?;
            tracing::info!(path = %path.display(), endpoints = members.len(), "endpoints file");
            availability.set_members(members);
            let _ = synced_tx.send(true);
            Some(tokio::spawn(watch_file(
                path,
                text,
                pool.to_owned(),
                availability,
            )))
        }
        EndpointSource::Pool { name, namespace } => {
            let client =
                match client {
                    Some(client) => client,
                    None => kube::Client::try_default().await.map_err(|err| {
                        SourceError::Kubernetes {
                            pool: name.clone(),
                            reason: err.to_string(),
                        }
                    })?,
                };
            let (states, watcher) =
                run_pool_watcher(client, PoolWatchConfig::new(&name, &namespace));
            Some(tokio::spawn(follow_pool(
                states,
                watcher,
                availability,
                objectives,
                synced_tx,
            )))
        }
    };
    Ok(SourceHandle { synced, task })
}

async fn read_file(path: &Path) -> Result<String, SourceError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|err| SourceError::File {
            path: path.to_owned(),
            reason: err.to_string(),
        })
}

async fn watch_file(
    path: PathBuf,
    mut last: String,
    pool: String,
    availability: Arc<Availability>,
) {
    let mut ticker = tokio::time::interval(FILE_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err,
                    "cannot read the endpoints file; keeping the current endpoints");
                continue;
            }
        };
        if text == last {
            continue;
        }
        match parse_endpoints_file(&text, &pool) {
            Ok(members) => {
                let count = members.len();
                let change = availability.set_members(members);
                tracing::info!(path = %path.display(), endpoints = count,
                    added = change.added.len(), removed = change.removed.len(),
                    "endpoints file changed");
                last = text;
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason,
                    "invalid endpoints file; keeping the current endpoints");
                // Do not log the same broken content every second.
                last = text;
            }
        }
    }
}

/// The table's view of a pool state: every endpoint with its health.
pub fn pool_members(state: &PoolState) -> Vec<(EndpointMeta, Health)> {
    let pool = state
        .pool
        .as_ref()
        .map(|info| info.name.clone())
        .unwrap_or_default();
    state
        .endpoints
        .iter()
        .map(|endpoint| {
            let meta = EndpointMeta {
                addr: endpoint.addr,
                pool: pool.clone(),
                pod_name: endpoint.pod_name.clone(),
                namespace: endpoint.namespace.clone(),
                node: endpoint.node_name.clone().unwrap_or_default(),
                labels: endpoint.labels.clone(),
                models: Vec::new(),
                adapters: Vec::new(),
            };
            let health = if endpoint.terminating {
                Health::Draining
            } else if endpoint.ready {
                Health::Ready
            } else {
                Health::unhealthy("pod not ready")
            };
            (meta, health)
        })
        .collect()
}

async fn follow_pool(
    mut states: watch::Receiver<PoolState>,
    watcher: JoinHandle<()>,
    availability: Arc<Availability>,
    objectives: Arc<Objectives>,
    synced: watch::Sender<bool>,
) {
    // Keeps the watcher alive for as long as this task runs; aborted with it.
    let _watcher = AbortOnDrop(watcher);
    loop {
        let state = states.borrow_and_update().clone();
        if state.health != PoolHealth::Syncing {
            apply_pool_state(&state, &availability, &objectives);
            let _ = synced.send(true);
        }
        if states.changed().await.is_err() {
            tracing::error!("the InferencePool watcher stopped; keeping the last endpoint set");
            return;
        }
    }
}

/// Applies one pool state: members and health, objective priorities.
pub fn apply_pool_state(state: &PoolState, availability: &Availability, objectives: &Objectives) {
    let change = availability.set_members(pool_members(state));
    objectives.set_cluster(
        state
            .objectives
            .iter()
            .map(|(name, objective)| (name.clone(), objective.priority)),
    );
    if !change.is_empty() {
        tracing::info!(
            revision = state.revision,
            endpoints = state.endpoints.len(),
            ready = state.ready_endpoints().count(),
            added = change.added.len(),
            removed = change.removed.len(),
            "pool endpoints applied"
        );
    }
    if state.endpoints.is_empty()
        && matches!(state.health, PoolHealth::NotFound | PoolHealth::Invalid(_))
    {
        tracing::warn!("no endpoints: every request is answered 503 until the pool is back");
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_file_accepts_strings_and_objects() {
        let text = "
- 10.0.0.1:8000
- addr: 10.0.0.2:8000
  models: [llama]
  labels: {zone: a}
- addr: 10.0.0.3:8000
  draining: true
";
        let members = parse_endpoints_file(text, "p").unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].0.pool, "p");
        assert_eq!(members[1].0.models, vec!["llama".to_owned()]);
        assert_eq!(members[2].1, Health::Draining);
        let json = r#"["10.0.0.1:8000", {"addr": "10.0.0.2:8000"}]"#;
        assert_eq!(parse_endpoints_file(json, "p").unwrap().len(), 2);
        assert!(parse_endpoints_file("- nope", "p").is_err());
        let duplicate = parse_endpoints_file("- 10.0.0.1:1\n- 10.0.0.1:1", "p").unwrap_err();
        assert!(duplicate.contains("already entry 0"), "{duplicate}");
    }

    #[test]
    fn source_flags_pick_one() {
        let mut args = EndpointSourceArgs::default();
        assert!(matches!(args.source(), Err(SourceError::Missing)));
        args.pool_name = Some("pool".into());
        assert!(matches!(args.source(), Ok(EndpointSource::Pool { .. })));
        args.endpoints = vec!["127.0.0.1:1".parse().unwrap()];
        assert!(matches!(args.source(), Ok(EndpointSource::Static(_))));
        assert_eq!(args.pool_label(), "pool");
    }
}
