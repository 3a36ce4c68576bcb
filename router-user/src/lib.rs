//! Switchyard: a GPU-aware inference router for Kubernetes.
//!
//! The library holds every part; `main.rs` only calls [`cli::main`]. Modules by concept:
//! - [`dataplane`]: eBPF connect-time steering (load, pin, program pools, read counts).
//! - [`cli`]: the `switchyard` command line.
pub mod cli;
pub mod dataplane;
pub mod logging;
