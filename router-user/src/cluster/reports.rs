//! The EPP side of node reports (`switchyard.v1.NodeReports`, docs/agent.md): node agents
//! stream what they sense; this module merges it into the [`EndpointTable`] and answers each
//! node with cluster weights for the pools it steers.
//!
//! - [`NodeReportsService`]: the gRPC service (`server()` for tonic, `covered()` for the
//!   agent-less scraper, `stats()` for `/metrics`).
//! - [`PoolDirectory`]: the pools, their VIPs and members, filled from configuration.
//! - [`compute_weights`]: the cluster-weight formula, on a table snapshot.
//! - [`Merger`]: per-node state, report ordering, rebasing of sample times, disconnects.
//!
//! [`EndpointTable`]: crate::cluster::EndpointTable
mod directory;
mod merge;
mod service;
mod weights;

pub use directory::{PoolDirectory, PoolEntry, PoolEntryError, PoolMembers};
pub use merge::{Applied, Merger, ReportError, StreamId};
pub use service::{NodeReportsService, ReportsOptions, ReportsServiceError, ReportsStats};
pub use weights::{ClusterWeights, compute_weights};
