//! Switchyard: a GPU-aware inference router for Kubernetes.
//!
//! The library holds every part; `main.rs` only calls [`cli::main`]. Modules by concept:
//! - [`agent`]: the node agent (scores, dataplane programming, node reports to the EPP).
//! - [`bench`]: `switchyard bench ...` measurements (figures in `docs/benchmarks.md`).
//! - [`dataplane`]: eBPF connect-time steering (load, pin, program pools, read counts).
//! - [`demo`]: `switchyard demo`, the whole system on loopback with simulated servers.
//! - [`telemetry`]: the normalised endpoint-load and GPU records every part shares.
//! - [`k8s`]: InferencePool / InferenceObjective resources, CRDs, cluster watchers.
//! - [`clock`]: real and virtual time (the cluster simulation drives the same code).
//! - [`openai`]: OpenAI-compatible request/response/error types and the routing view.
//! - [`sim`]: a simulated vLLM / SGLang model server (in-process engine and HTTP server).
//! - [`cluster`]: the shared endpoint table (membership, loads, GPU signals, in-flight counts).
//! - [`scheduling`]: filters, scorers and pickers that choose the endpoint for each request.
//! - [`serving`]: what the endpoint picker and the proxy share (sources, admission, metrics).
//! - [`extproc`]: the Envoy ext-proc endpoint picker (`switchyard epp`).
//! - [`proxy`]: the standalone OpenAI-compatible proxy (`switchyard proxy`).
//! - [`cli`]: the `switchyard` command line.
pub mod agent;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod dataplane;
pub mod demo;
pub mod extproc;
pub mod k8s;
pub mod logging;
pub mod openai;
pub mod proxy;
pub mod scheduling;
pub mod serving;
pub mod sim;
pub mod telemetry;
