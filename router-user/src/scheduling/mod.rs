//! Scheduling: choose the endpoint for every request.
//!
//! A profile runs filters (drop endpoints), then weighted scorers (each clamped to [0, 1],
//! summed with their weights), then a picker (max score with a seeded random tie-break, random,
//! or round robin) that returns the primary and top-k fallbacks. Profiles are written in GIE's
//! `EndpointPickerConfig` YAML ([`EndpointPickerConfig`]); seven are built in
//! ([`BUILTIN_PROFILES`]). The same [`Scheduler`] runs in the Envoy endpoint picker, the
//! in-process proxy and the cluster simulation, so it takes time as an argument (`now`), draws
//! randomness from its seed, and never blocks a pick on a writer.
//!
//! Use:
//! ```
//! use switchyard::{cluster::{EndpointMeta, EndpointTable}, scheduling::*};
//! let table = EndpointTable::new();
//! table.set_members([EndpointMeta::new("10.0.0.1:8000".parse().unwrap())]);
//! let scheduler = Scheduler::builtin("switchyard").unwrap();
//! let mut hasher = scheduler.prefix_hasher("llama");
//! hasher.update(br#"{"model":"llama","messages":[...]}"#);
//! let blocks = hasher.finish();
//! let request = SchedulingRequest { prefix: &blocks, input_tokens: 12, ..SchedulingRequest::new("llama") };
//! let snapshot = table.snapshot();
//! let decision = scheduler.pick(&request, &snapshot, 0).unwrap();
//! let guard = scheduler.route(&decision, &request, &snapshot); // released on drop
//! # drop(guard);
//! ```
mod backlog;
mod builtin;
mod config;
mod decision;
mod duration;
mod exact;
mod filters;
mod pick_bench;
mod picker;
mod plugins;
mod prefix_hash;
mod prefix_index;
mod reload;
mod request;
mod scheduler;
mod scoring;
mod session;

pub use builtin::{BUILTIN_PROFILES, builtin_yaml};
pub use config::{
    CompiledProfile, ConfigError, EndpointPickerConfig, PluginSpec, ProfilePluginSpec,
    SaturationConfig, SaturationDetectorSpec, SchedulingProfileSpec,
};
pub use decision::{Contribution, Decision, EXPLAINED, NoEndpoints, PickError, RankedEndpoint};
pub use duration::{GoDuration, parse_go_duration};
pub use exact::{ExactState, ExactStateSource};
pub use filters::gpu_fault;
pub use pick_bench::{BENCH_NOW, PickBenchError, PickFixture, PickLatency, run_pick_bench};
pub use plugins::{
    AffinitySampleParams, CacheAwareParams, CostParams, DEFAULT_FATAL_XIDS, DEFAULT_PICKS,
    GpuHealthParams, GpuScorerParams, InflightMode, InflightParams, PLUGIN_TYPES, PickerParams,
    PrefixParams, SaturationFilterParams, SessionParams,
};
pub use prefix_hash::{
    DEFAULT_BLOCK_BYTES, DEFAULT_BLOCK_TOKENS, DEFAULT_MAX_BLOCKS, PrefixHasher, hash_token_blocks,
};
pub use prefix_index::{PrefixIndex, PrefixMatch};
pub use reload::SchedulerHandle;
pub use request::{BlockHash, DEFAULT_OUTPUT_TOKENS, SchedulingRequest};
pub use scheduler::{Scheduler, SchedulerOptions};
pub use session::SessionTable;

#[cfg(test)]
mod tests;
