//! What the endpoint picker knows about its pool: the pool's settings, its endpoints and the
//! priorities of its objectives, assembled from cluster objects by one pure function.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;

use super::api::{
    AppProtocol, EndpointPickerRef, FailureMode, POOL_GROUP, POOL_KIND, SpecErrors,
    parse_objective, parse_pool,
};
use super::pod_endpoints::{PodEndpoint, pod_endpoints, pod_labels, selector_matches};

/// The pool's settings as the scheduler uses them (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub namespace: String,
    /// `metadata.generation`: changes with every spec edit.
    pub generation: Option<i64>,
    pub selector: BTreeMap<String, String>,
    /// The pool's `targetPorts` in order; an endpoint's `rank` indexes this list.
    pub target_ports: Vec<u16>,
    pub app_protocol: AppProtocol,
    /// What the gateway does without an answer from the EPP (FailClose when no picker is named).
    pub failure_mode: FailureMode,
    pub endpoint_picker: Option<EndpointPickerRef>,
}

/// Whether the pool can be served, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolHealth {
    /// The first complete read of the cluster has not finished yet.
    Syncing,
    /// The pool exists and is valid (it may still have no ready endpoint).
    Ready,
    /// No InferencePool of that name exists (never created, or deleted): no endpoints.
    NotFound,
    /// The pool exists but breaks the schema: no endpoints until it is fixed.
    Invalid(SpecErrors),
}

/// An InferenceObjective as the scheduler uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Objective {
    /// Higher is more important; negative is sheddable; unset in the resource reads as 0.
    pub priority: i32,
}

/// A consistent snapshot of the pool, published on a `tokio::sync::watch` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    /// Bumped on every published change (0: nothing published yet).
    pub revision: u64,
    pub health: PoolHealth,
    /// The pool's settings when `health` is `Ready`.
    pub pool: Option<PoolInfo>,
    /// One entry per selected pod IP × target port, ready or not, sorted by address. Empty
    /// unless `health` is `Ready`.
    pub endpoints: Vec<PodEndpoint>,
    /// Objectives that reference this pool, by name.
    pub objectives: HashMap<String, Objective>,
    /// Objectives that reference this pool (or whose reference cannot be read) but are invalid,
    /// with the reason; they count as absent (priority 0).
    pub rejected_objectives: BTreeMap<String, SpecErrors>,
}

impl Default for PoolState {
    fn default() -> Self {
        Self::syncing()
    }
}

impl PoolState {
    /// The state before the first complete read of the cluster.
    pub fn syncing() -> Self {
        Self {
            revision: 0,
            health: PoolHealth::Syncing,
            pool: None,
            endpoints: Vec::new(),
            objectives: HashMap::new(),
            rejected_objectives: BTreeMap::new(),
        }
    }

    /// The endpoints that may be picked.
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &PodEndpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    /// The priority of requests naming this objective (0 for an unknown one, as upstream).
    pub fn priority_of(&self, objective: &str) -> i32 {
        self.objectives.get(objective).map_or(0, |o| o.priority)
    }

    /// Equal in everything but the revision.
    pub fn same_content(&self, other: &Self) -> bool {
        self.health == other.health
            && self.pool == other.pool
            && self.endpoints == other.endpoints
            && self.objectives == other.objectives
            && self.rejected_objectives == other.rejected_objectives
    }
}

/// Builds the pool's state from what the cluster holds: the pool object as read (None when it
/// does not exist), every pod of its namespace, and every InferenceObjective of its namespace.
/// Objects are raw JSON so that an undecodable one becomes a clear error instead of a lost event.
pub fn assemble_pool_state<'a>(
    pool: Option<serde_json::Value>,
    pods: impl IntoIterator<Item = &'a Pod>,
    objectives: impl IntoIterator<Item = serde_json::Value>,
) -> PoolState {
    let mut state = PoolState::syncing();
    let pool = match pool.map(parse_pool) {
        None => {
            state.health = PoolHealth::NotFound;
            return state;
        }
        Some(Err(errors)) => {
            state.health = PoolHealth::Invalid(errors);
            return state;
        }
        Some(Ok(pool)) => pool,
    };
    let info = PoolInfo {
        name: pool.metadata.name.clone().unwrap_or_default(),
        namespace: pool.metadata.namespace.clone().unwrap_or_default(),
        generation: pool.metadata.generation,
        selector: pool.spec.selector.match_labels.clone(),
        // Validation guarantees every number is in 1..=65535.
        target_ports: pool
            .spec
            .target_ports
            .iter()
            .filter_map(|p| u16::try_from(p.number).ok())
            .collect(),
        app_protocol: pool.spec.app_protocol,
        failure_mode: pool
            .spec
            .endpoint_picker_ref
            .as_ref()
            .map_or(FailureMode::default(), |p| p.failure_mode),
        endpoint_picker: pool.spec.endpoint_picker_ref.clone(),
    };

    state.endpoints = select_endpoints(&info, pods);
    let (objectives, rejected) = pool_objectives(&info.name, objectives);
    state.objectives = objectives;
    state.rejected_objectives = rejected;
    state.pool = Some(info);
    state.health = PoolHealth::Ready;
    state
}

/// The endpoints of the pods in the pool's namespace that its selector picks, one per address:
/// when two pods claim one address (host-network pods, an IP reused before the old pod is
/// gone), the ready, non-terminating one wins.
pub fn select_endpoints<'a>(
    pool: &PoolInfo,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<PodEndpoint> {
    let mut endpoints: Vec<PodEndpoint> = pods
        .into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(pool.namespace.as_str()))
        .filter(|pod| selector_matches(&pool.selector, &pod_labels(pod)))
        .flat_map(|pod| pod_endpoints(pod, &pool.target_ports))
        .collect();
    endpoints.sort_by(|a, b| {
        (a.addr, !a.ready, a.terminating, &a.pod_name).cmp(&(
            b.addr,
            !b.ready,
            b.terminating,
            &b.pod_name,
        ))
    });
    endpoints.dedup_by_key(|e| e.addr);
    endpoints
}

/// The objectives that reference the pool `pool_name`, and the invalid ones that do or might.
pub fn pool_objectives(
    pool_name: &str,
    objectives: impl IntoIterator<Item = serde_json::Value>,
) -> (HashMap<String, Objective>, BTreeMap<String, SpecErrors>) {
    let mut valid = HashMap::new();
    let mut rejected = BTreeMap::new();
    for raw in objectives {
        let name = raw
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        // Read the reference from the raw object so an invalid objective of another pool is
        // not reported here; when it cannot be read, report it (it may be ours).
        let referenced = raw
            .pointer("/spec/poolRef/name")
            .and_then(|n| n.as_str())
            .map(str::to_string);
        if referenced.as_deref().is_some_and(|r| r != pool_name) {
            continue;
        }
        match parse_objective(raw) {
            Ok(objective) => {
                let pool_ref = &objective.spec.pool_ref;
                if pool_ref.group == POOL_GROUP && pool_ref.kind == POOL_KIND {
                    valid.insert(
                        name,
                        Objective {
                            priority: objective.spec.priority.unwrap_or(0),
                        },
                    );
                }
            }
            Err(errors) => {
                rejected.insert(name, errors);
            }
        }
    }
    (valid, rejected)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::pod_endpoints::tests::{ready_pod, set_ready};
    use super::*;

    fn pool_json(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "pool", "namespace": "ns", "generation": 3},
            "spec": spec,
        })
    }

    fn vllm_pool() -> serde_json::Value {
        pool_json(json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": 8000}, {"number": 8001}],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}, "failureMode": "FailOpen"},
        }))
    }

    fn objective(name: &str, pool: &str, priority: Option<i32>) -> serde_json::Value {
        let mut spec = json!({"poolRef": {"name": pool}});
        if let Some(p) = priority {
            spec["priority"] = json!(p);
        }
        json!({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferenceObjective",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
        })
    }

    #[test]
    fn ready_pool_with_data_parallel_endpoints() {
        let pods = [
            ready_pod("b", "10.0.0.2", &[("app", "vllm")]),
            ready_pod("a", "10.0.0.1", &[("app", "vllm"), ("extra", "x")]),
            ready_pod("other", "10.0.0.3", &[("app", "sglang")]),
        ];
        let state = assemble_pool_state(Some(vllm_pool()), &pods, []);
        assert_eq!(state.health, PoolHealth::Ready);
        let info = state.pool.as_ref().expect("pool");
        assert_eq!(info.target_ports, [8000, 8001]);
        assert_eq!(info.failure_mode, FailureMode::FailOpen);
        assert_eq!(info.generation, Some(3));
        let addrs: Vec<String> = state.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "10.0.0.1:8000",
                "10.0.0.1:8001",
                "10.0.0.2:8000",
                "10.0.0.2:8001"
            ]
        );
        assert_eq!(state.ready_endpoints().count(), 4);
    }

    #[test]
    fn pods_of_other_namespaces_are_ignored() {
        let mut pod = ready_pod("a", "10.0.0.1", &[("app", "vllm")]);
        pod.metadata.namespace = Some("elsewhere".into());
        let state = assemble_pool_state(Some(vllm_pool()), [&pod], []);
        assert!(state.endpoints.is_empty());
    }

    #[test]
    fn unready_pods_are_listed_not_ready() {
        let mut pod = ready_pod("a", "10.0.0.1", &[("app", "vllm")]);
        set_ready(&mut pod, false);
        let state = assemble_pool_state(Some(vllm_pool()), [&pod], []);
        assert_eq!(state.endpoints.len(), 2);
        assert_eq!(state.ready_endpoints().count(), 0);
    }

    #[test]
    fn an_address_claimed_twice_goes_to_the_ready_pod() {
        let mut old = ready_pod("old", "10.0.0.1", &[("app", "vllm")]);
        set_ready(&mut old, false);
        let new = ready_pod("new", "10.0.0.1", &[("app", "vllm")]);
        let state = assemble_pool_state(Some(vllm_pool()), [&old, &new], []);
        assert_eq!(state.endpoints.len(), 2);
        assert!(
            state
                .endpoints
                .iter()
                .all(|e| e.pod_name == "new" && e.ready)
        );
    }

    #[test]
    fn missing_pool_has_no_endpoints() {
        let pods = [ready_pod("a", "10.0.0.1", &[("app", "vllm")])];
        let state = assemble_pool_state(None, &pods, [objective("o", "pool", Some(1))]);
        assert_eq!(state.health, PoolHealth::NotFound);
        assert!(state.pool.is_none() && state.endpoints.is_empty() && state.objectives.is_empty());
    }

    #[test]
    fn invalid_pool_has_no_endpoints_and_says_why() {
        let pods = [ready_pod("a", "10.0.0.1", &[("app", "vllm")])];
        let invalid = pool_json(json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": 8000}, {"number": 8000}],
        }));
        let state = assemble_pool_state(Some(invalid), &pods, []);
        match &state.health {
            PoolHealth::Invalid(errors) => {
                assert!(errors.mentions("spec.targetPorts[1].number"), "{errors}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(state.endpoints.is_empty());
    }

    #[test]
    fn objectives_of_this_pool_only() {
        let mut foreign_group = objective("foreign", "pool", Some(9));
        foreign_group["spec"]["poolRef"]["group"] = json!("example.com");
        let mut broken = objective("broken", "pool", None);
        broken["spec"]["priority"] = json!("urgent");
        let mut broken_elsewhere = objective("broken-elsewhere", "other", None);
        broken_elsewhere["spec"]["priority"] = json!("urgent");
        let state = assemble_pool_state(
            Some(vllm_pool()),
            [],
            [
                objective("critical", "pool", Some(10)),
                objective("default", "pool", None),
                objective("batch", "pool", Some(-5)),
                objective("not-ours", "other-pool", Some(100)),
                foreign_group,
                broken,
                broken_elsewhere,
            ],
        );
        assert_eq!(state.objectives.len(), 3);
        assert_eq!(state.priority_of("critical"), 10);
        assert_eq!(state.priority_of("default"), 0);
        assert_eq!(state.priority_of("batch"), -5);
        assert_eq!(state.priority_of("not-ours"), 0);
        assert_eq!(state.priority_of("unknown"), 0);
        assert_eq!(
            state.rejected_objectives.keys().collect::<Vec<_>>(),
            ["broken"]
        );
        assert!(state.rejected_objectives["broken"].mentions("spec.priority"));
    }

    #[test]
    fn same_content_ignores_revision() {
        let a = assemble_pool_state(Some(vllm_pool()), [], []);
        let mut b = a.clone();
        b.revision = 7;
        assert!(a.same_content(&b));
        b.health = PoolHealth::NotFound;
        assert!(!a.same_content(&b));
    }
}
