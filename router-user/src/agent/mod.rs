//! The node agent (`switchyard agent`): one per GPU node. It turns model-server load, GPU
//! telemetry and live connection counts into per-backend weights and health, programs the eBPF
//! dataplane with them, and streams node reports to the EPP, which answers with cluster weights
//! (docs/agent.md).
pub mod backoff;
pub mod cli;
pub mod config;
pub mod endpoints;
pub mod gpus;
pub mod http;
pub mod link;
pub mod metrics;
pub mod pools;
pub mod proto;
pub mod report;
pub mod run;
pub mod score;
pub mod snapshot;
pub mod steering;
pub mod tls;
pub mod verdict;
pub mod view;
