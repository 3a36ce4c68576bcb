//! The simulated hardware + model: KV capacity, scheduler limits and the step-time model.
//!
//! Defaults describe Llama-3.1-8B-Instruct in bf16 on one H100 80GB under vLLM; `docs/sim.md`
//! explains each number and the public measurements it comes from. A profile file (YAML or
//! JSON; YAML is a superset of JSON) overrides any subset of fields.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Step time in microseconds is
/// `(base + prefill·prefill_tokens + decode·decode_seqs + kv_read·kv_tokens_read
///   + lora·distinct_adapters) · slowdown + lora_load · adapters_loaded`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepModel {
    /// Fixed cost of one forward pass: reading the weights once plus launch overhead.
    pub base_us: f64,
    /// Per prompt token computed in the step (GEMM-bound prefill).
    pub prefill_us_per_token: f64,
    /// Per sequence decoding one token (sampling, per-sequence kernels).
    pub decode_us_per_seq: f64,
    /// Per token of KV cache the step's attention reads (context of every scheduled sequence).
    pub kv_read_us_per_token: f64,
    /// Per distinct LoRA adapter in the batch (punica-style kernels).
    pub lora_us_per_adapter: f64,
}

impl Default for StepModel {
    fn default() -> Self {
        Self {
            base_us: 7_000.0,
            prefill_us_per_token: 25.0,
            decode_us_per_seq: 10.0,
            kv_read_us_per_token: 0.039,
            lora_us_per_adapter: 150.0,
        }
    }
}

/// What one engine step computes; the input of [`StepModel::step_us`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepWork {
    /// Prompt (or recomputed) tokens computed in the step.
    pub prefill_tokens: u32,
    /// Sequences producing one decode token.
    pub decode_seqs: u32,
    /// KV-cache tokens attention reads: the context of every scheduled sequence.
    pub kv_tokens_read: u64,
    /// Distinct LoRA adapters in the batch.
    pub lora_adapters: u32,
    /// Adapters brought into a GPU slot for this step.
    pub lora_loads: u32,
}

impl StepModel {
    /// Duration of a step in microseconds (see the type's formula).
    pub fn step_us(&self, work: &StepWork, slowdown: f64, lora_load_us: f64) -> f64 {
        let compute = self.base_us
            + self.prefill_us_per_token * f64::from(work.prefill_tokens)
            + self.decode_us_per_seq * f64::from(work.decode_seqs)
            + self.kv_read_us_per_token * work.kv_tokens_read as f64
            + self.lora_us_per_adapter * f64::from(work.lora_adapters);
        compute * slowdown + lora_load_us * f64::from(work.lora_loads)
    }
}

/// Natural output length (tokens until EOS) for requests that do not set `ignore_eos`:
/// lognormal, seeded per request. Defaults follow the Azure LLM inference trace (conversation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputLength {
    pub mu: f64,
    pub sigma: f64,
}

impl Default for OutputLength {
    fn default() -> Self {
        Self {
            mu: 5.02,
            sigma: 0.86,
        }
    }
}

/// Board power as NVML reports it, linear in utilisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerModel {
    pub idle_w: f64,
    pub busy_w: f64,
    pub limit_w: f64,
}

impl Default for PowerModel {
    fn default() -> Self {
        Self {
            idle_w: 70.0,
            busy_w: 620.0,
            limit_w: 700.0,
        }
    }
}

/// GPU temperature: first-order lag toward `idle_c + (busy_c - idle_c) · busy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThermalModel {
    pub idle_c: f64,
    pub busy_c: f64,
    pub time_constant_s: f64,
}

impl Default for ThermalModel {
    fn default() -> Self {
        Self {
            idle_c: 32.0,
            busy_c: 72.0,
            time_constant_s: 30.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Free-form name shown in logs.
    pub name: String,
    /// NVML device name.
    pub gpu_name: String,
    pub gpu_memory_bytes: u64,
    /// Model weights resident on the GPU.
    pub weights_bytes: u64,
    /// CUDA context, activations and CUDA graphs.
    pub runtime_overhead_bytes: u64,
    /// KV bytes per token (all layers, K and V).
    pub kv_bytes_per_token: u64,
    /// KV cache size in tokens; the block count is `kv_capacity_tokens / block_size`.
    pub kv_capacity_tokens: u64,
    pub block_size: u32,
    pub max_num_batched_tokens: u32,
    pub max_num_seqs: u32,
    pub max_model_len: u32,
    pub step: StepModel,
    /// Time to bring a LoRA adapter into a GPU slot, added to the step that first uses it.
    pub lora_load_us: f64,
    pub output_length: OutputLength,
    pub power: PowerModel,
    pub thermal: ThermalModel,
    /// Multiplies every step's compute time (a slower or throttled GPU); 1.0 is nominal.
    pub slowdown: f64,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            name: "llama-3.1-8b-bf16-h100".to_owned(),
            gpu_name: "NVIDIA H100 80GB HBM3".to_owned(),
            gpu_memory_bytes: 80 * GIB,
            weights_bytes: 16_060_000_000,
            runtime_overhead_bytes: 2 * GIB,
            kv_bytes_per_token: 128 * 1024,
            kv_capacity_tokens: 430_000,
            block_size: 16,
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            max_model_len: 131_072,
            step: StepModel::default(),
            lora_load_us: 25_000.0,
            output_length: OutputLength::default(),
            power: PowerModel::default(),
            thermal: ThermalModel::default(),
            slowdown: 1.0,
        }
    }
}

const GIB: u64 = 1024 * 1024 * 1024;

/// Largest block size the engine supports (it hashes one block from a stack buffer).
pub const MAX_BLOCK_SIZE: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("profile {path} is not valid YAML/JSON for a sim profile: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("profile field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Profile {
    /// Reads a YAML or JSON profile; fields it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|err| match err {
            ProfileError::Parse { source, .. } => ProfileError::Parse {
                path: shown,
                source,
            },
            other => other,
        })
    }

    /// Parses profile text (YAML or JSON) and validates it.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let profile: Profile =
            serde_yaml::from_str(text).map_err(|source| ProfileError::Parse {
                path: "<text>".to_owned(),
                source,
            })?;
        profile.validate()?;
        Ok(profile)
    }

    pub fn num_gpu_blocks(&self) -> u32 {
        let blocks = self.kv_capacity_tokens / u64::from(self.block_size.max(1));
        u32::try_from(blocks).unwrap_or(u32::MAX)
    }

    pub fn block_bytes(&self) -> u64 {
        self.kv_bytes_per_token * u64::from(self.block_size)
    }

    pub fn validate(&self) -> Result<(), ProfileError> {
        fn invalid(field: &'static str, reason: impl Into<String>) -> ProfileError {
            ProfileError::Invalid {
                field,
                reason: reason.into(),
            }
        }
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return Err(invalid(
                "block_size",
                format!("must be 1..={MAX_BLOCK_SIZE}, got {}", self.block_size),
            ));
        }
        if self.num_gpu_blocks() < 2 {
            return Err(invalid(
                "kv_capacity_tokens",
                format!(
                    "must hold at least two blocks, got {} tokens",
                    self.kv_capacity_tokens
                ),
            ));
        }
        if self.max_num_batched_tokens == 0 {
            return Err(invalid("max_num_batched_tokens", "must be at least 1"));
        }
        if self.max_num_seqs == 0 {
            return Err(invalid("max_num_seqs", "must be at least 1"));
        }
        if self.max_model_len == 0 {
            return Err(invalid("max_model_len", "must be at least 1"));
        }
        let step = &self.step;
        for (field, value) in [
            ("step.base_us", step.base_us),
            ("step.prefill_us_per_token", step.prefill_us_per_token),
            ("step.decode_us_per_seq", step.decode_us_per_seq),
            ("step.kv_read_us_per_token", step.kv_read_us_per_token),
            ("step.lora_us_per_adapter", step.lora_us_per_adapter),
            ("lora_load_us", self.lora_load_us),
            ("output_length.sigma", self.output_length.sigma),
            ("thermal.time_constant_s", self.thermal.time_constant_s),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(
                    field,
                    format!("must be a finite number >= 0, got {value}"),
                ));
            }
        }
        if step.base_us <= 0.0 {
            // A zero-cost step would let virtual time stand still while tokens flow.
            return Err(invalid("step.base_us", "must be > 0"));
        }
        if !self.output_length.mu.is_finite() {
            return Err(invalid("output_length.mu", "must be finite"));
        }
        if !self.slowdown.is_finite() || self.slowdown <= 0.0 {
            return Err(invalid(
                "slowdown",
                format!("must be > 0, got {}", self.slowdown),
            ));
        }
        if self.gpu_memory_bytes == 0 {
            return Err(invalid("gpu_memory_bytes", "must be > 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_is_valid_and_sized_like_an_h100() {
        let profile = Profile::default();
        profile.validate().expect("default profile");
        assert_eq!(profile.num_gpu_blocks(), 26_875);
        let kv_total = profile.kv_capacity_tokens * profile.kv_bytes_per_token;
        let resident = profile.weights_bytes + profile.runtime_overhead_bytes + kv_total;
        // vLLM's default gpu_memory_utilization is 0.9: weights + cache fit under it.
        assert!(resident < profile.gpu_memory_bytes * 9 / 10, "{resident}");
    }

    #[test]
    fn partial_yaml_and_json_override_defaults() {
        let yaml = Profile::parse("kv_capacity_tokens: 1600\nstep:\n  base_us: 1000\n").unwrap();
        assert_eq!(yaml.num_gpu_blocks(), 100);
        assert_eq!(yaml.step.base_us, 1000.0);
        assert_eq!(
            yaml.step.prefill_us_per_token,
            StepModel::default().prefill_us_per_token
        );
        let json = Profile::parse(r#"{"slowdown": 1.5, "max_num_seqs": 8}"#).unwrap();
        assert_eq!(json.slowdown, 1.5);
        assert_eq!(json.max_num_seqs, 8);
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let err = Profile::parse("block_size: 0").unwrap_err();
        assert!(err.to_string().contains("block_size"), "{err}");
        let err = Profile::parse("step:\n  base_us: -1").unwrap_err();
        assert!(err.to_string().contains("step.base_us"), "{err}");
        let err = Profile::parse("no_such_field: 1").unwrap_err();
        assert!(err.to_string().contains("no_such_field"), "{err}");
        let err = Profile::parse("slowdown: 0").unwrap_err();
        assert!(err.to_string().contains("slowdown"), "{err}");
    }
}
