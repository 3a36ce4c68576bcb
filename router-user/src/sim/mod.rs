//! `switchyard sim`: a simulated vLLM / SGLang model server.
//!
//! [`engine::Engine`] is the model server's scheduler and KV cache as a pure state machine on
//! virtual time (the cluster benchmark runs many in one process); the server drives one in
//! real time behind an OpenAI-compatible HTTP API with the engines' own `/metrics` and an
//! NVML-shaped GPU view. `docs/sim.md` documents the model and its defaults.
pub mod calibrate;
pub mod cli;
pub mod engine;
pub mod faults;
pub mod gpu;
mod hist;
mod kv;
mod lora;
pub mod metrics;
pub mod profile;
pub mod prom_text;
pub mod server;
pub mod stats;
pub mod tokens;

pub use engine::{
    Engine, EngineConfig, EngineEvent, EventDetail, FinishReason, RequestPhase, RequestState,
    RequestUsage, SimRequest, SubmitError,
};
pub use gpu::{GpuIdentity, GpuReport};
pub use hist::Histogram;
pub use profile::{Profile, ProfileError, StepModel, StepWork};
pub use server::{
    LoraModule, RunningServer, SERVED_BY_HEADER, ServerConfig, ServerError, SimServer,
};
