//! Kubernetes integration: the Inference Extension resources (`InferencePool`,
//! `InferenceObjective`), their CRDs, and the watchers that turn cluster state into what the
//! endpoint picker and the node agent consume.
pub mod api;
pub mod cli;
pub mod crdgen;
