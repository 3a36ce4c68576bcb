//! The cluster endpoint table: the router's shared, concurrent view of every model-server
//! endpoint (pod `ip:port`).
//!
//! Per endpoint: identity and metadata ([`EndpointMeta`]), health ([`Health`]), the latest load
//! sample ([`LoadFeatures`], absent = unknown), GPU signals from the node agent ([`GpuSignals`]),
//! node-local live connection counts from the eBPF dataplane, and the router's own in-flight
//! accounting ([`Inflight`] guards). Readers (the scheduler) take an immutable [`Snapshot`] with
//! one atomic load and never lock; signals that change per sample live in per-endpoint atomic
//! cells the snapshot points to, so updating one endpoint costs O(1) at any fleet size.
mod endpoint;
mod inflight;
mod live;
pub mod reports;
mod snapshot;
mod table;

pub use endpoint::{EndpointMeta, Health};
pub use inflight::Inflight;
pub use live::{
    EndpointTotals, GpuSignals, HotRead, LiveEndpoint, LoadFeatures, LoadUpdate, TokenUsage,
};
pub use snapshot::{ModelFilter, PositionSet, Snapshot, SnapshotEndpoint};
pub use table::{EndpointTable, MembershipChange};

#[cfg(test)]
mod tests;
