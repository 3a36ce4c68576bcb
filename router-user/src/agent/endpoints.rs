//! Which model servers run on this node: static (`--endpoints`) or the node's pods (Kubernetes).
//!
//! In Kubernetes an endpoint is a pod of this node that
//! - carries every label of `--endpoint-selector` (`key=value,...`; empty selects every pod),
//! - declares a TCP container port listed in `--endpoint-port` (a number or a port name;
//!   default 8000, the chart's default target port), one endpoint per matching port,
//! - is not host-network (its IP would be the node's, shared with every other such pod) and
//!   has an IP.
//!
//! Pods that are not ready stay listed (their scraper state survives a readiness flap) but are
//! drained. The agent's pod watcher drops annotations to keep its cache small, so discovery
//! uses labels and ports only.
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::k8s::{NodePod, NodePods};
use crate::telemetry::EngineKind;
use crate::telemetry::scrape::ScrapeTarget;

/// One model server the agent scrapes and scores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub target: ScrapeTarget,
    /// The pod serving it (Kubernetes), for GPU attribution and readiness.
    pub pod: Option<PodIdentity>,
    /// GPU indices given with `--gpu-map` (static endpoints with NVML).
    pub gpu_indices: Vec<u32>,
}

impl LocalEndpoint {
    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub uid: String,
    /// `namespace/name`
    pub name: String,
    pub ready: bool,
}

/// `key=value,...`; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub BTreeMap<String, String>);

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut labels = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("`{pair}` has an empty key"));
            }
            labels.insert(key.to_owned(), value.trim().to_owned());
        }
        Ok(Self(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&pairs.join(","))
    }
}

/// A container port by number or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl FromStr for PortRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty port".into());
        }
        match text.parse::<u16>() {
            Ok(0) => Err("port 0 cannot be dialled".into()),
            Ok(port) => Ok(Self::Number(port)),
            Err(_) if text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                Ok(Self::Name(text.to_owned()))
            }
            Err(_) => Err(format!("`{text}` is neither a port number nor a port name")),
        }
    }
}

/// How the agent finds model servers among the node's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDiscovery {
    pub selector: LabelSelector,
    pub ports: Vec<PortRef>,
    /// `None`: detected from each page.
    pub engine: Option<EngineKind>,
}

impl PodDiscovery {
    /// The endpoints among `pods`, sorted by address.
    pub fn endpoints(&self, pods: &NodePods) -> Vec<LocalEndpoint> {
        let mut endpoints: Vec<LocalEndpoint> = pods
            .pods
            .iter()
            .filter(|pod| !pod.host_network && self.selector.matches(&pod.labels))
            .flat_map(|pod| self.pod_endpoints(pod))
            .collect();
        endpoints.sort_by_key(LocalEndpoint::addr);
        endpoints.dedup_by_key(|e| e.addr());
        endpoints
    }

    fn pod_endpoints<'a>(&'a self, pod: &'a NodePod) -> impl Iterator<Item = LocalEndpoint> + 'a {
        let ip = pod.pod_ips.first().copied();
        let mut ports: Vec<u16> = pod
            .ports
            .iter()
            .filter(|port| port.protocol.eq_ignore_ascii_case("TCP"))
            .filter(|port| {
                self.ports.iter().any(|wanted| match wanted {
                    PortRef::Number(number) => *number == port.port,
                    PortRef::Name(name) => port.name.as_deref() == Some(name.as_str()),
                })
            })
            .map(|port| port.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ip.into_iter().flat_map(move |ip| {
            ports.clone().into_iter().map(move |port| {
                let mut target = ScrapeTarget::new(SocketAddr::new(ip, port));
                target.engine = self.engine;
                LocalEndpoint {
                    target,
                    pod: Some(PodIdentity {
                        uid: pod.uid.clone(),
                        name: format!("{}/{}", pod.namespace, pod.name),
                        ready: pod.ready,
                    }),
                    gpu_indices: Vec::new(),
                }
            })
        })
    }
}

/// `ADDR=INDEX[,INDEX...]`: the GPUs a static endpoint runs on (NVML indices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMapping {
    pub addr: SocketAddr,
    pub indices: Vec<u32>,
}

impl FromStr for GpuMapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, indices) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not ADDR=INDEX[,INDEX...]"))?;
        let addr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{addr}` is not an ip:port address"))?;
        let indices = indices
            .split(',')
            .map(|index| {
                index
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{index}` is not a GPU index"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        Ok(Self { addr, indices })
    }
}

/// Static endpoints from their targets and the `--gpu-map` entries.
pub fn static_endpoints(
    targets: &[ScrapeTarget],
    engine: Option<EngineKind>,
    gpu_map: &[GpuMapping],
) -> Vec<LocalEndpoint> {
    let mut endpoints: Vec<LocalEndpoint> = targets
        .iter()
        .map(|target| {
            let mut target = target.clone();
            if target.engine.is_none() {
                target.engine = engine;
            }
            LocalEndpoint {
                gpu_indices: gpu_map
                    .iter()
                    .filter(|m| m.addr == target.addr)
                    .flat_map(|m| m.indices.iter().copied())
                    .collect(),
                target,
                pod: None,
            }
        })
        .collect();
    endpoints.sort_by_key(LocalEndpoint::addr);
    endpoints.dedup_by_key(|e| e.addr());
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::ContainerPort;

    fn pod(
        name: &str,
        ip: &str,
        labels: &[(&str, &str)],
        ports: &[(u16, Option<&str>)],
        ready: bool,
    ) -> NodePod {
        NodePod {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            phase: Some("Running".into()),
            host_network: false,
            pod_ips: vec![ip.parse().unwrap()],
            container_ids: Vec::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ports: ports
                .iter()
                .map(|(port, name)| ContainerPort {
                    container: "engine".into(),
                    name: name.map(Into::into),
                    port: *port,
                    protocol: "TCP".into(),
                })
                .collect(),
            ready,
        }
    }

    #[test]
    fn pods_become_endpoints_by_selector_and_port() {
        let mut host = pod(
            "host",
            "10.0.0.9",
            &[("app", "vllm")],
            &[(8000, None)],
            true,
        );
        host.host_network = true;
        let pods = NodePods {
            revision: 1,
            synced: true,
            pods: vec![
                pod(
                    "a",
                    "10.1.0.2",
                    &[("app", "vllm")],
                    &[(8000, Some("http")), (9000, Some("metrics"))],
                    true,
                ),
                pod(
                    "b",
                    "10.1.0.3",
                    &[("app", "vllm")],
                    &[(8001, Some("http"))],
                    false,
                ),
                pod("c", "10.1.0.4", &[("app", "other")], &[(8000, None)], true),
                host,
            ],
        };
        let discovery = PodDiscovery {
            selector: "app=vllm".parse().unwrap(),
            ports: vec![PortRef::Number(8000), "http".parse().unwrap()],
            engine: Some(EngineKind::Vllm),
        };
        let endpoints = discovery.endpoints(&pods);
        let addrs: Vec<String> = endpoints.iter().map(|e| e.addr().to_string()).collect();
        assert_eq!(addrs, ["10.1.0.2:8000", "10.1.0.3:8001"]);
        assert_eq!(endpoints[0].target.engine, Some(EngineKind::Vllm));
        let pod_b = endpoints[1].pod.as_ref().unwrap();
        assert_eq!((pod_b.name.as_str(), pod_b.ready), ("default/b", false));

        let everything = PodDiscovery {
            selector: LabelSelector::default(),
            ports: vec![PortRef::Number(8000)],
            engine: None,
        };
        assert_eq!(
            everything.endpoints(&pods).len(),
            2,
            "a and c; never host-network pods"
        );
    }

    #[test]
    fn flags_parse_with_clear_errors() {
        assert_eq!(
            "a=b, c=d".parse::<LabelSelector>().unwrap().to_string(),
            "a=b,c=d"
        );
        assert!(
            "a".parse::<LabelSelector>()
                .unwrap_err()
                .contains("key=value")
        );
        assert_eq!(
            "http".parse::<PortRef>().unwrap(),
            PortRef::Name("http".into())
        );
        assert!("0".parse::<PortRef>().is_err());
        assert!("a b".parse::<PortRef>().is_err());
        let mapping: GpuMapping = "127.0.0.1:8001=0,1".parse().unwrap();
        assert_eq!(mapping.indices, [0, 1]);
        assert!(
            "127.0.0.1:8001"
                .parse::<GpuMapping>()
                .unwrap_err()
                .contains("ADDR=INDEX")
        );
        assert!("x=1".parse::<GpuMapping>().unwrap_err().contains("ip:port"));
    }

    #[test]
    fn static_endpoints_take_the_engine_and_gpu_map() {
        let targets: Vec<ScrapeTarget> = vec![
            "127.0.0.1:8002".parse().unwrap(),
            "127.0.0.1:8001@sglang".parse().unwrap(),
        ];
        let map = vec!["127.0.0.1:8002=3".parse().unwrap()];
        let endpoints = static_endpoints(&targets, Some(EngineKind::Vllm), &map);
        assert_eq!(endpoints[0].target.engine, Some(EngineKind::Sglang));
        assert_eq!(endpoints[1].target.engine, Some(EngineKind::Vllm));
        assert_eq!(endpoints[1].gpu_indices, [3]);
    }
}
