//! What a pick returns: the ranked endpoints and why, or why none.
use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use serde::Serialize;

use crate::clock::Micros;

// serde's `rc` feature is off in the workspace; names are plain strings on the wire.
fn serialize_str<S: serde::Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value)
}

/// One scorer's part in an endpoint's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contribution {
    /// Plugin name (as configured).
    #[serde(serialize_with = "serialize_str")]
    pub plugin: Arc<str>,
    pub weight: f64,
    /// The scorer's value, in [0, 1].
    pub score: f64,
}

impl Contribution {
    pub fn weighted(&self) -> f64 {
        self.weight * self.score
    }
}

/// One endpoint of the ranking.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankedEndpoint {
    pub addr: SocketAddr,
    /// Weighted sum of the scorers (what the picker ranked by).
    pub score: f64,
    /// Predicted fraction of the prompt already in this endpoint's prefix cache.
    pub prefix_hit: f64,
    /// Per-scorer parts; filled for the first [`EXPLAINED`] endpoints.
    pub contributions: Vec<Contribution>,
}

/// How many ranked endpoints carry per-scorer contributions (chosen, runner-up, one more).
pub const EXPLAINED: usize = 3;

/// The scheduler's answer for one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Profile that decided.
    #[serde(serialize_with = "serialize_str")]
    pub profile: Arc<str>,
    /// Primary first, then fallbacks in order (the picker's `maxNumOfEndpoints`).
    pub ranked: Vec<RankedEndpoint>,
    /// Predicted prefix-cache hit fraction at the primary.
    pub predicted_prefix_hit: f64,
    /// Endpoints that passed every filter.
    pub candidates: u32,
    /// Endpoints in the snapshot.
    pub members: u32,
    pub snapshot_version: u64,
    /// `now` the pick ran at.
    pub at: Micros,
}

impl Decision {
    /// The endpoint to route to.
    pub fn primary(&self) -> SocketAddr {
        // A decision always has at least one endpoint (the scheduler returns an error instead).
        self.ranked.first().map_or_else(
            || SocketAddr::from(([0, 0, 0, 0], 0)),
            |endpoint| endpoint.addr,
        )
    }

    /// Endpoints to retry on, best first.
    pub fn fallbacks(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.ranked.iter().skip(1).map(|endpoint| endpoint.addr)
    }

    /// `ip:port,ip:port` of the ranking, as the endpoint-picker protocol's fallback list.
    pub fn endpoint_list(&self) -> String {
        let mut out = String::new();
        for (i, endpoint) in self.ranked.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}", endpoint.addr);
        }
        out
    }

    /// One line for logs: chosen vs runner-up with each scorer's weighted part.
    pub fn explain(&self) -> String {
        let mut out = format!("profile {}: ", self.profile);
        for (i, endpoint) in self.ranked.iter().take(2).enumerate() {
            if i > 0 {
                out.push_str(" over ");
            }
            let _ = write!(
                out,
                "{} (score {:.3}, prefix {:.0}%",
                endpoint.addr,
                endpoint.score,
                endpoint.prefix_hit * 100.0
            );
            for part in &endpoint.contributions {
                let _ = write!(out, ", {} {:.3}", part.plugin, part.weighted());
            }
            out.push(')');
        }
        let _ = write!(out, "; {} of {} eligible", self.candidates, self.members);
        out
    }
}

/// Why no endpoint could be picked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// No endpoint may take the request (HTTP 503).
    #[error("no endpoint available: {0}")]
    NoEndpoints(NoEndpoints),
    /// The request is sheddable and the pool is saturated (HTTP 429).
    #[error("pool saturated, sheddable request dropped: {reason}")]
    Saturated { reason: String },
}

/// Detail of [`PickError::NoEndpoints`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoEndpoints {
    #[error("the pool has no endpoints")]
    EmptyPool,
    #[error("the subset hint is empty")]
    EmptySubset,
    #[error("none of the {0} endpoints in the subset hint is a member of the pool")]
    SubsetNotMembers(usize),
    #[error("no endpoint serves model `{0}`")]
    NoModel(String),
    #[error("no endpoint is ready ({draining} draining, {unhealthy} unhealthy)")]
    NoneReady { draining: u32, unhealthy: u32 },
    #[error("filter `{0}` removed every endpoint")]
    Filtered(Arc<str>),
}

impl PickError {
    /// HTTP status for the client, per the endpoint-picker protocol's mapping.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NoEndpoints(_) => 503,
            Self::Saturated { .. } => 429,
        }
    }

    /// Value for the `x-llm-d-request-dropped-reason` header.
    pub fn dropped_reason(&self) -> &'static str {
        match self {
            Self::NoEndpoints(_) => "rejected-no-endpoints",
            Self::Saturated { .. } => "rejected-saturated",
        }
    }
}
