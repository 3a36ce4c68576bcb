//! Exact engine state, for the oracle profile (only the simulation can provide it).
use std::net::SocketAddr;

use super::request::SchedulingRequest;

/// What the simulated engine knows exactly about one endpoint at decision time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactState {
    pub waiting: u32,
    pub running: u32,
    /// KV-cache tokens free right now.
    pub kv_free_tokens: u64,
    /// Tokens of this request's prompt already in the endpoint's prefix cache.
    pub cached_prefix_tokens: u32,
    /// Prompt tokens of queued or prefilling requests the engine has yet to compute (what the
    /// `ttft-scorer` estimates as its prefill backlog).
    pub pending_prefill_tokens: u64,
}

/// Source of [`ExactState`]; the cluster simulation implements it and attaches it with
/// [`SchedulerOptions::exact_state`](super::SchedulerOptions::exact_state). A profile that uses
/// the `oracle-scorer` cannot be built without one.
pub trait ExactStateSource: Send + Sync + std::fmt::Debug {
    /// `None` when the endpoint is unknown to the source (it is then scored as the worst).
    fn exact(&self, endpoint: SocketAddr, request: &SchedulingRequest<'_>) -> Option<ExactState>;
}
