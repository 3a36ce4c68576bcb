//! Pure pod logic for the endpoint picker: which pods a pool selects, whether a pod can take
//! traffic, and the endpoints (pod IP × target port) a pod contributes.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;

/// One routable address of a pool: a pod's IP and one of the pool's target ports. A pod serving
/// several ports (data-parallel ranks, one engine per port) contributes one endpoint per port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodEndpoint {
    /// `podIP:targetPort`, the value the EPP puts in `x-gateway-destination-endpoint`.
    pub addr: SocketAddr,
    pub pod_name: String,
    pub namespace: String,
    /// The node the pod runs on (the agent of that node reports its load).
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The pod's Ready condition is True and it is not terminating. Only ready endpoints may be
    /// picked; the others are listed so per-endpoint state can be kept across readiness flaps.
    pub ready: bool,
    /// The pod has a deletion timestamp: it finishes its in-flight requests and gets no new ones.
    pub terminating: bool,
    /// Index of this endpoint's port in the pool's `targetPorts` (the data-parallel rank).
    pub rank: usize,
}

/// Whether `labels` carry every `key: value` of the selector. An empty selector selects nothing:
/// upstream requires at least one label, and selecting every pod in the namespace by accident is
/// worse than selecting none.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod's labels (empty when it has none).
pub fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod is Running with its Ready condition True and is not terminating.
pub fn is_pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let running = status.phase.as_deref() == Some("Running");
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    running && ready_condition && !is_terminating(pod)
}

/// Whether the pod has finished for good (its IP may already belong to another pod).
fn has_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod's primary IP, if it has one yet.
pub fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

/// The endpoints a pod contributes to a pool with these target ports: none for a pod without
/// a name, namespace or IP, or one that has finished; otherwise one per port, in port order.
pub fn pod_endpoints(pod: &Pod, target_ports: &[u16]) -> Vec<PodEndpoint> {
    let (Some(name), Some(namespace), Some(ip)) = (
        pod.metadata.name.as_ref(),
        pod.metadata.namespace.as_ref(),
        pod_ip(pod),
    ) else {
        return Vec::new();
    };
    if has_finished(pod) {
        return Vec::new();
    }
    let ready = is_pod_ready(pod);
    let terminating = is_terminating(pod);
    let labels = pod_labels(pod);
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    target_ports
        .iter()
        .enumerate()
        .map(|(rank, &port)| PodEndpoint {
            addr: SocketAddr::new(ip, port),
            pod_name: name.clone(),
            namespace: namespace.clone(),
            node_name: node_name.clone(),
            labels: labels.clone(),
            ready,
            terminating,
            rank,
        })
        .collect()
}

/// Keeps only what the endpoint picker reads from a pod (metadata, node, phase, IP, conditions):
/// the pod cache of a busy namespace then costs a fraction of the full objects.
pub fn strip_pod_for_endpoints(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name,
            ..Default::default()
        });
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    /// A running, ready pod with these labels and IP.
    pub(crate) fn ready_pod(name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub(crate) fn set_ready(pod: &mut Pod, ready: bool) {
        let status = pod.status.get_or_insert_with(Default::default);
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]);
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_needs_every_label_and_is_never_empty() {
        let pod = labels(&[("app", "vllm"), ("tier", "gpu")]);
        assert!(selector_matches(&labels(&[("app", "vllm")]), &pod));
        assert!(selector_matches(
            &labels(&[("app", "vllm"), ("tier", "gpu")]),
            &pod
        ));
        assert!(!selector_matches(
            &labels(&[("app", "vllm"), ("tier", "cpu")]),
            &pod
        ));
        assert!(!selector_matches(&labels(&[("other", "x")]), &pod));
        assert!(!selector_matches(&BTreeMap::new(), &pod));
    }

    #[test]
    fn readiness() {
        let mut pod = ready_pod("a", "10.0.0.1", &[]);
        assert!(is_pod_ready(&pod));
        set_ready(&mut pod, false);
        assert!(!is_pod_ready(&pod));
        set_ready(&mut pod, true);
        pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!is_pod_ready(&pod), "terminating pods take no new requests");
        let mut pending = ready_pod("b", "10.0.0.2", &[]);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert!(!is_pod_ready(&pending));
        assert!(!is_pod_ready(&Pod::default()));
    }

    #[test]
    fn one_endpoint_per_target_port() {
        let pod = ready_pod("a", "10.0.0.1", &[("app", "vllm")]);
        let endpoints = pod_endpoints(&pod, &[8000, 8001, 8002]);
        let addrs: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.1:8002"]);
        let ranks: Vec<usize> = endpoints.iter().map(|e| e.rank).collect();
        assert_eq!(ranks, [0, 1, 2]);
        assert!(endpoints.iter().all(|e| e.ready && !e.terminating));
        assert_eq!(endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(
            endpoints[0].labels.get("app").map(String::as_str),
            Some("vllm")
        );
    }

    #[test]
    fn ipv6_endpoints() {
        let pod = ready_pod("a", "fd00::5", &[]);
        assert_eq!(
            pod_endpoints(&pod, &[8000])[0].addr.to_string(),
            "[fd00::5]:8000"
        );
    }

    #[test]
    fn pods_without_ip_or_finished_contribute_nothing() {
        let mut no_ip = ready_pod("a", "10.0.0.1", &[]);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        assert!(pod_endpoints(&no_ip, &[8000]).is_empty());
        let mut garbage_ip = ready_pod("a", "not-an-ip", &[]);
        assert!(pod_endpoints(&garbage_ip, &[8000]).is_empty());
        garbage_ip.status.as_mut().unwrap().pod_ip = Some("10.0.0.1".into());
        garbage_ip.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(pod_endpoints(&garbage_ip, &[8000]).is_empty());
    }

    #[test]
    fn unready_and_terminating_pods_are_listed_but_not_ready() {
        let mut pod = ready_pod("a", "10.0.0.1", &[]);
        set_ready(&mut pod, false);
        let endpoints = pod_endpoints(&pod, &[8000]);
        assert_eq!(endpoints.len(), 1);
        assert!(!endpoints[0].ready);
        let mut pod = ready_pod("a", "10.0.0.1", &[]);
        pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let endpoints = pod_endpoints(&pod, &[8000]);
        assert!(!endpoints[0].ready && endpoints[0].terminating);
    }

    #[test]
    fn stripping_keeps_what_endpoints_need() {
        let mut pod = ready_pod("a", "10.0.0.1", &[("app", "x")]);
        pod.metadata.annotations = Some(labels(&[("big", "annotation")]));
        pod.spec.as_mut().unwrap().containers = vec![Default::default()];
        let before = pod_endpoints(&pod, &[8000]);
        strip_pod_for_endpoints(&mut pod);
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.spec.as_ref().unwrap().containers.is_empty());
        assert_eq!(pod_endpoints(&pod, &[8000]), before);
    }
}
