//! The `switchyard.v1` wire schema (`proto/switchyard/v1/node_reports.proto`, compiled by
//! build.rs) and the conversions between its messages and the shared records.
//!
//! Conversions from the wire are checked: an address that does not parse, an unknown engine or
//! a non-finite fraction is a [`WireError`] naming the field, never a panic or a silent zero.
use std::net::SocketAddr;

use crate::clock::Micros;
use crate::telemetry::{EndpointLoad, EngineKind, GpuSample, LoraState, ThrottleReasons};

/// Generated messages, client and server.
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("switchyard.v1");
}

pub use pb::{
    BackendWeight, ClusterView, Connections, EndpointReport, GpuList, GpuReport, Interest, Load,
    NodeReport, PoolWeights, Verdict,
};

/// The revision of `switchyard.v1` this build writes (additive revisions; see the proto file).
pub const SCHEMA_VERSION: u32 = 1;

/// Largest message either side accepts (a full report of 256 endpoints and 16 GPUs is ~40 KiB).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// A field on the wire that cannot be turned into a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{field}: `{value}` is not an ip:port address")]
    Address { field: &'static str, value: String },
    #[error("{field}: {reason}")]
    Value { field: &'static str, reason: String },
}

/// Parses an `ip:port` field.
pub fn parse_addr(field: &'static str, value: &str) -> Result<SocketAddr, WireError> {
    value.parse().map_err(|_| WireError::Address {
        field,
        value: value.chars().take(64).collect(),
    })
}

impl From<&EndpointLoad> for Load {
    fn from(load: &EndpointLoad) -> Self {
        Self {
            engine: load.engine.as_str().to_owned(),
            waiting: load.waiting,
            running: load.running,
            kv_cache_usage: load.kv_cache_usage,
            prefix_cache_hit_rate: load.prefix_cache_hit_rate,
            block_size: load.block_size,
            num_gpu_blocks: load.num_gpu_blocks,
            ttft_mean_s: load.ttft_mean_s,
            itl_mean_s: load.itl_mean_s,
            lora: load.lora.as_ref().map(|lora| pb::Lora {
                running: lora.running.clone(),
                waiting: lora.waiting.clone(),
                max_loras: lora.max_loras,
            }),
        }
    }
}

impl Load {
    /// The record, stamped with the sample's sequence number and time (on the receiver's clock).
    pub fn to_endpoint_load(
        &self,
        seq: u64,
        sampled_at: Micros,
    ) -> Result<EndpointLoad, WireError> {
        let engine = self
            .engine
            .parse::<EngineKind>()
            .map_err(|reason| WireError::Value {
                field: "load.engine",
                reason,
            })?;
        Ok(EndpointLoad {
            engine,
            waiting: self.waiting,
            running: self.running,
            kv_cache_usage: fraction("load.kv_cache_usage", self.kv_cache_usage)?,
            prefix_cache_hit_rate: self
                .prefix_cache_hit_rate
                .map(|rate| fraction("load.prefix_cache_hit_rate", rate))
                .transpose()?,
            lora: self.lora.as_ref().map(|lora| LoraState {
                running: lora.running.clone(),
                waiting: lora.waiting.clone(),
                max_loras: lora.max_loras,
            }),
            block_size: self.block_size,
            num_gpu_blocks: self.num_gpu_blocks,
            ttft_mean_s: self.ttft_mean_s.filter(|v| v.is_finite() && *v >= 0.0),
            itl_mean_s: self.itl_mean_s.filter(|v| v.is_finite() && *v >= 0.0),
            sampled_at,
            seq,
        })
    }
}

fn fraction(field: &'static str, value: f64) -> Result<f64, WireError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(WireError::Value {
            field,
            reason: format!("{value} is not a fraction from 0 to 1"),
        })
    }
}

impl From<&GpuSample> for pb::GpuSample {
    fn from(gpu: &GpuSample) -> Self {
        Self {
            index: gpu.index,
            name: gpu.name.clone(),
            memory_used_bytes: gpu.memory_used_bytes,
            memory_total_bytes: gpu.memory_total_bytes,
            gpu_utilization_pct: gpu.gpu_utilization_pct,
            memory_utilization_pct: gpu.memory_utilization_pct,
            power_mw: gpu.power_mw,
            power_limit_mw: gpu.power_limit_mw,
            temperature_c: gpu.temperature_c,
            sm_clock_mhz: gpu.sm_clock_mhz,
            throttle_reasons: gpu.throttle_reasons.0,
            ecc_uncorrected: gpu.ecc_uncorrected,
            last_xid: gpu.last_xid,
        }
    }
}

impl pb::GpuSample {
    /// The record (processes are not sent: they only matter on the node).
    pub fn to_gpu_sample(&self, uuid: &str, sampled_at: Micros) -> GpuSample {
        GpuSample {
            index: self.index,
            uuid: uuid.to_owned(),
            name: self.name.clone(),
            memory_used_bytes: self.memory_used_bytes,
            memory_total_bytes: self.memory_total_bytes,
            gpu_utilization_pct: self.gpu_utilization_pct.min(100),
            memory_utilization_pct: self.memory_utilization_pct.min(100),
            power_mw: self.power_mw,
            power_limit_mw: self.power_limit_mw,
            temperature_c: self.temperature_c,
            sm_clock_mhz: self.sm_clock_mhz,
            throttle_reasons: ThrottleReasons(self.throttle_reasons),
            ecc_uncorrected: self.ecc_uncorrected,
            last_xid: self.last_xid,
            processes: Vec::new(),
            sampled_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_round_trips_and_bad_values_are_named() {
        let load = EndpointLoad {
            engine: EngineKind::Sglang,
            waiting: 3,
            running: 9,
            kv_cache_usage: 0.5,
            prefix_cache_hit_rate: Some(0.25),
            lora: Some(LoraState {
                running: vec!["a".into()],
                waiting: vec![],
                max_loras: 2,
            }),
            block_size: Some(16),
            num_gpu_blocks: Some(1000),
            ttft_mean_s: Some(0.1),
            itl_mean_s: None,
            sampled_at: 5,
            seq: 7,
        };
        let wire = Load::from(&load);
        assert_eq!(wire.to_endpoint_load(7, 5).unwrap(), load);

        let mut bad = wire.clone();
        bad.kv_cache_usage = f64::NAN;
        let err = bad.to_endpoint_load(1, 1).unwrap_err();
        assert!(err.to_string().contains("load.kv_cache_usage"), "{err}");
        let mut bad = wire;
        bad.engine = "tgi".into();
        let err = bad.to_endpoint_load(1, 1).unwrap_err();
        assert!(err.to_string().contains("unknown engine"), "{err}");
    }

    #[test]
    fn gpu_round_trips_without_processes() {
        let gpu = GpuSample {
            index: 1,
            uuid: "GPU-1".into(),
            name: "H100".into(),
            memory_used_bytes: 10,
            memory_total_bytes: 100,
            gpu_utilization_pct: 50,
            last_xid: Some(79),
            throttle_reasons: ThrottleReasons(ThrottleReasons::HW_SLOWDOWN),
            sampled_at: 9,
            ..GpuSample::default()
        };
        let wire = pb::GpuSample::from(&gpu);
        assert_eq!(wire.to_gpu_sample("GPU-1", 9), gpu);
    }

    #[test]
    fn addresses_are_checked() {
        assert!(parse_addr("x", "10.0.0.1:80").is_ok());
        let err = parse_addr("endpoints.address", "pod-a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoints.address: `pod-a` is not an ip:port address"
        );
    }
}
