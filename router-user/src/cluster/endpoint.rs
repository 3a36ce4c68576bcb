//! Who an endpoint is (identity and metadata) and whether it may take new requests.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// Identity and static facts about one model-server endpoint (a pod's `ip:port`).
///
/// Written by membership sources (the Kubernetes pod watcher or static flags); the scheduler
/// reads it from snapshots. `models` empty means "unknown": the endpoint is assumed to serve every
/// model of its pool, as GIE assumes for an InferencePool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointMeta {
    pub addr: SocketAddr,
    /// InferencePool (or static pool) the endpoint belongs to.
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub namespace: String,
    /// Kubernetes node, which is also the agent that reports for the endpoint.
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Base models served, when known.
    #[serde(default)]
    pub models: Vec<String>,
    /// LoRA adapters the endpoint can load, when known (the live loaded set comes from loads).
    #[serde(default)]
    pub adapters: Vec<String>,
}

impl EndpointMeta {
    /// Metadata with only an address (static flags, tests, the simulation).
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            pool: String::new(),
            pod_name: String::new(),
            namespace: String::new(),
            node: String::new(),
            labels: BTreeMap::new(),
            models: Vec::new(),
            adapters: Vec::new(),
        }
    }

    pub fn with_models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }
}

/// Whether an endpoint takes new requests. Requests already routed always run to completion.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum Health {
    /// Takes new requests.
    #[default]
    Ready,
    /// Finishing what it has (pod terminating, operator drain); gets no new requests.
    Draining,
    /// Gets no new requests; the reason is shown in decisions and logs.
    Unhealthy(String),
}

impl Health {
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self::Unhealthy(reason.into())
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready => f.write_str("ready"),
            Self::Draining => f.write_str("draining"),
            Self::Unhealthy(reason) => write!(f, "unhealthy ({reason})"),
        }
    }
}
