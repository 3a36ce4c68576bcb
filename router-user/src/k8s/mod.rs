//! Kubernetes integration: the Inference Extension resources (`InferencePool`,
//! `InferenceObjective`), their CRDs, and the watchers that turn cluster state into what the
//! endpoint picker ([`run_pool_watcher`] → [`PoolState`]) and the node agent
//! ([`run_node_pod_watcher`] → [`NodePods`]) consume.
pub mod api;
pub mod cli;
pub mod crdgen;
pub mod node_pods;
pub mod node_watcher;
pub mod pod_endpoints;
pub mod pool_state;
pub mod pool_watcher;
mod publish;

pub use node_pods::{ContainerId, ContainerPort, NodePod, NodePods};
pub use node_watcher::{NodePodWatchConfig, run_node_pod_watcher};
pub use pod_endpoints::PodEndpoint;
pub use pool_state::{Objective, PoolHealth, PoolInfo, PoolState};
pub use pool_watcher::{PoolWatchConfig, run_pool_watcher};
pub use publish::DEFAULT_DEBOUNCE;
