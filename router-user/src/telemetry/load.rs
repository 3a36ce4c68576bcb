//! The per-endpoint load record, normalised across vLLM, SGLang, TensorRT-LLM and Triton.
use serde::{Deserialize, Serialize};

use crate::clock::Micros;

/// Which model server produced a sample (decides metric names and units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Vllm,
    Sglang,
    Trtllm,
    Triton,
}

impl EngineKind {
    pub const ALL: [EngineKind; 4] = [Self::Vllm, Self::Sglang, Self::Trtllm, Self::Triton];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Trtllm => "trtllm",
            Self::Triton => "triton",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown engine `{s}` (expected vllm, sglang, trtllm or triton)")
            })
    }
}

/// LoRA adapters as the engine reports them (vLLM `vllm:lora_requests_info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraState {
    /// Adapters with requests running (loaded on the GPU).
    pub running: Vec<String>,
    /// Adapters with requests waiting for a slot.
    pub waiting: Vec<String>,
    /// Adapter slots on the GPU (`--max-loras`).
    pub max_loras: u32,
}

/// One normalised reading of a model server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointLoad {
    pub engine: EngineKind,
    /// Requests queued, not yet scheduled.
    pub waiting: u32,
    /// Requests in the running batch.
    pub running: u32,
    /// Fraction of KV-cache blocks in use, 0..=1.
    pub kv_cache_usage: f64,
    /// Prefix-cache hit rate over the last interval (hits / queries, by tokens), when known.
    pub prefix_cache_hit_rate: Option<f64>,
    pub lora: Option<LoraState>,
    /// KV block size in tokens, when the engine reports it.
    pub block_size: Option<u32>,
    /// KV blocks on the GPU, when the engine reports it.
    pub num_gpu_blocks: Option<u64>,
    /// Mean time to first token over the last interval, seconds.
    pub ttft_mean_s: Option<f64>,
    /// Mean inter-token latency over the last interval, seconds.
    pub itl_mean_s: Option<f64>,
    /// When the sample was taken, on the producer's clock.
    pub sampled_at: Micros,
    /// Increases by one per sample of this endpoint; lets consumers drop reordered updates.
    pub seq: u64,
}

impl EndpointLoad {
    /// Age of the sample at `now`, saturating at zero for clocks slightly ahead.
    pub fn age(&self, now: Micros) -> Micros {
        now.saturating_sub(self.sampled_at)
    }
}
