//! Pure pod logic for the node agent: the pods of one node with what maps a process or a socket
//! to its pod (container IDs, pod IPs, ports).
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// A container's runtime ID as the kubelet reports it, split into runtime and bare ID (the bare
/// ID is what appears in cgroup paths such as `cri-containerd-<id>.scope`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId {
    /// The container's name in the pod spec.
    pub container: String,
    /// `containerd`, `cri-o`, `docker`, ... (empty when the kubelet gave no prefix).
    pub runtime: String,
    /// The ID with the `<runtime>://` prefix removed.
    pub id: String,
}

/// A port a container declares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub container: String,
    pub name: Option<String>,
    pub port: u16,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: String,
}

/// One pod of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `Pending`, `Running`, ... as reported.
    pub phase: Option<String>,
    /// Host-network pods share the node's IP.
    pub host_network: bool,
    /// Every pod IP (dual-stack pods have two), primary first.
    pub pod_ips: Vec<IpAddr>,
    /// Running or terminated containers, init and ephemeral containers included.
    pub container_ids: Vec<ContainerId>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    /// Ready condition True and not terminating.
    pub ready: bool,
}

/// The pods of one node, published on a `tokio::sync::watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePods {
    /// Bumped on every published change (0: nothing published yet).
    pub revision: u64,
    /// The first complete read of the node's pods has finished.
    pub synced: bool,
    /// Sorted by namespace, then name.
    pub pods: Vec<NodePod>,
}

impl NodePods {
    /// The pod running the container with this bare ID.
    pub fn by_container_id(&self, id: &str) -> Option<&NodePod> {
        self.pods
            .iter()
            .find(|p| p.container_ids.iter().any(|c| c.id == id))
    }

    /// The non-host-network pod with this IP (host-network pods all share the node's IP).
    pub fn by_ip(&self, ip: IpAddr) -> Option<&NodePod> {
        self.pods
            .iter()
            .find(|p| !p.host_network && p.pod_ips.contains(&ip))
    }

    /// Equal in everything but the revision.
    pub fn same_content(&self, other: &Self) -> bool {
        self.synced == other.synced && self.pods == other.pods
    }
}

/// Splits `containerd://abc` into (`containerd`, `abc`); an ID without a prefix is kept whole.
/// None for an empty ID (a container that has not started has none).
pub fn split_container_id(raw: &str) -> Option<(String, String)> {
    let (runtime, id) = raw.split_once("://").unwrap_or(("", raw));
    if id.is_empty() {
        None
    } else {
        Some((runtime.to_string(), id.to_string()))
    }
}

fn container_ids<'a>(statuses: impl IntoIterator<Item = &'a ContainerStatus>) -> Vec<ContainerId> {
    statuses
        .into_iter()
        .filter_map(|s| {
            let (runtime, id) = split_container_id(s.container_id.as_deref()?)?;
            Some(ContainerId {
                container: s.name.clone(),
                runtime,
                id,
            })
        })
        .collect()
}

/// The agent's view of a pod; None for a pod without name, namespace or UID.
pub fn node_pod(pod: &Pod) -> Option<NodePod> {
    let meta = &pod.metadata;
    let (name, namespace, uid) = (
        meta.name.clone()?,
        meta.namespace.clone()?,
        meta.uid.clone()?,
    );
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();

    let mut pod_ips: Vec<IpAddr> = Vec::new();
    let primary = status.and_then(|s| s.pod_ip.as_deref());
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten();
    for ip in primary
        .into_iter()
        .chain(listed.map(|p| p.ip.as_str()))
        .filter_map(|ip| ip.parse().ok())
    {
        if !pod_ips.contains(&ip) {
            pod_ips.push(ip);
        }
    }

    let statuses = status.into_iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .chain(s.ephemeral_container_statuses.iter().flatten())
    });

    let ports = spec
        .into_iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .flat_map(|c| {
            c.ports.iter().flatten().filter_map(move |p| {
                Some(ContainerPort {
                    container: c.name.clone(),
                    name: p.name.clone(),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                })
            })
        })
        .collect();

    Some(NodePod {
        name,
        namespace,
        uid,
        phase: status.and_then(|s| s.phase.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        pod_ips,
        container_ids: container_ids(statuses),
        labels: meta.labels.clone().unwrap_or_default(),
        ports,
        ready: super::pod_endpoints::is_pod_ready(pod),
    })
}

/// Assembles the node's pod list (sorted, pods without identity dropped).
pub fn assemble_node_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>, synced: bool) -> NodePods {
    let mut pods: Vec<NodePod> = pods.into_iter().filter_map(node_pod).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    NodePods {
        revision: 0,
        synced,
        pods,
    }
}

/// Drops what the agent never reads from a pod (managed fields, annotations).
pub fn strip_pod_for_node(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodIP, PodSpec};

    use super::super::pod_endpoints::tests::ready_pod;
    use super::*;

    fn status(name: &str, id: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: id.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn container_id_prefixes_are_stripped() {
        assert_eq!(
            split_container_id("containerd://0123abc"),
            Some(("containerd".into(), "0123abc".into()))
        );
        assert_eq!(
            split_container_id("cri-o://deadbeef"),
            Some(("cri-o".into(), "deadbeef".into()))
        );
        assert_eq!(split_container_id("bare"), Some(("".into(), "bare".into())));
        assert_eq!(split_container_id("containerd://"), None);
        assert_eq!(split_container_id(""), None);
    }

    fn gpu_pod() -> Pod {
        let mut pod = ready_pod("vllm-0", "10.1.0.7", &[("app", "vllm")]);
        pod.metadata.uid = Some("uid-1".into());
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        spec.containers = vec![Container {
            name: "engine".into(),
            ports: Some(vec![
                k8s_openapi::api::core::v1::ContainerPort {
                    container_port: 8000,
                    name: Some("http".into()),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::ContainerPort {
                    container_port: 8001,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }];
        let st = pod.status.as_mut().unwrap();
        st.pod_ips = Some(vec![
            PodIP {
                ip: "10.1.0.7".into(),
            },
            PodIP {
                ip: "fd00::7".into(),
            },
        ]);
        st.container_statuses = Some(vec![
            status("engine", Some("containerd://aaa111")),
            status("sidecar", None),
        ]);
        st.init_container_statuses = Some(vec![status("init", Some("cri-o://bbb222"))]);
        pod
    }

    #[test]
    fn pod_to_node_pod() {
        let pod = node_pod(&gpu_pod()).expect("identity");
        assert_eq!((pod.name.as_str(), pod.uid.as_str()), ("vllm-0", "uid-1"));
        assert_eq!(
            pod.pod_ips,
            [
                "10.1.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        let ids: Vec<(&str, &str, &str)> = pod
            .container_ids
            .iter()
            .map(|c| (c.container.as_str(), c.runtime.as_str(), c.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("init", "cri-o", "bbb222"),
                ("engine", "containerd", "aaa111")
            ]
        );
        let ports: Vec<(u16, &str)> = pod
            .ports
            .iter()
            .map(|p| (p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, [(8000, "TCP"), (8001, "TCP")]);
        assert!(pod.ready && !pod.host_network);
        assert_eq!(pod.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn pods_without_identity_are_dropped() {
        let mut pod = gpu_pod();
        pod.metadata.uid = None;
        assert!(node_pod(&pod).is_none());
    }

    #[test]
    fn lookups() {
        let mut host = gpu_pod();
        host.metadata.name = Some("host-agent".into());
        host.spec.as_mut().unwrap().host_network = Some(true);
        host.status.as_mut().unwrap().container_statuses = None;
        host.status.as_mut().unwrap().init_container_statuses = None;
        let pods = assemble_node_pods([&gpu_pod(), &host], true);
        assert_eq!(pods.pods[0].name, "host-agent", "sorted by namespace/name");
        assert_eq!(
            pods.by_container_id("aaa111").map(|p| p.name.as_str()),
            Some("vllm-0")
        );
        assert_eq!(pods.by_container_id("nope"), None);
        let ip = "10.1.0.7".parse().unwrap();
        assert_eq!(pods.by_ip(ip).map(|p| p.name.as_str()), Some("vllm-0"));
    }
}
