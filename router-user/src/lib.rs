//! Switchyard: a GPU-aware inference router for Kubernetes.
//!
//! The library holds every part; `main.rs` only calls [`cli::main`]. Modules by concept:
//! - [`dataplane`]: eBPF connect-time steering (load, pin, program pools, read counts).
//! - [`telemetry`]: the normalised endpoint-load and GPU records every part shares.
//! - [`clock`]: real and virtual time (the cluster simulation drives the same code).
//! - [`cluster`]: the shared endpoint table (membership, loads, GPU signals, in-flight counts).
//! - [`scheduling`]: filters, scorers and pickers that choose the endpoint for each request.
//! - [`cli`]: the `switchyard` command line.
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod dataplane;
pub mod logging;
pub mod scheduling;
pub mod telemetry;
