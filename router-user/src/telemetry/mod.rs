//! What the router knows about each endpoint and GPU: the normalised records every part shares.
//!
//! Producers: the agent's model-server scraper and GPU backends (NVML or simulated), the EPP's
//! agent-less scraper, the cluster simulation. Consumers: the scheduler, the agent's scoring,
//! node reports. Every sample carries the time it was taken and a sequence number, so consumers
//! know its age: stale is not idle, and never-seen is not idle.
pub mod cli;
pub mod engines;
pub mod gpu;
pub mod gpu_sim;
pub mod gpu_source;
pub mod health;
pub mod http;
pub mod load;
pub mod nvml;
pub mod pods;
pub mod prom;
pub mod scrape;

pub use gpu::{GpuProcess, GpuSample, ThrottleReasons};
pub use load::{EndpointLoad, EngineKind, LoraState};
