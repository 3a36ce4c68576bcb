//! Injected faults for reliability tests (`POST/GET/DELETE /admin/faults`).
//!
//! A POST body is a patch: fields it names replace the current value, others stay; unknown
//! fields are rejected so a typo cannot silently inject nothing. DELETE restores normal
//! behaviour. Random choices (which request fails, hangs or drops) use the server's seed.
use serde::{Deserialize, Deserializer, Serialize};

use crate::telemetry::{GpuSample, ThrottleReasons};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsFault {
    #[default]
    Normal,
    /// Serve the page as it was when the fault was set (stale numbers).
    Frozen,
    /// 404.
    Missing,
    /// 500.
    Error,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthFault {
    #[default]
    Ok,
    /// `/health` answers 503.
    Fail,
}

/// The GPU view's faults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFaults {
    /// Keep reporting the reading taken when the fault was set.
    pub frozen: bool,
    /// Report this XID as the last critical error (e.g. 79: fallen off the bus).
    pub xid: Option<u64>,
    /// Report memory full.
    pub memory_full: bool,
    /// Report thermal throttling (hot, clocks down, throttle bits) and slow the engine down.
    pub thermal_throttle: bool,
    /// `/sim/gpu` answers 503 (reader sees no GPU data).
    pub missing: bool,
}

/// Engine slowdown while the GPU reports thermal throttling.
pub const THERMAL_SLOWDOWN: f64 = 1.5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Added before every API answer starts.
    pub latency_ms: u64,
    /// Share of API requests answered with `error_status`.
    pub error_rate: f64,
    pub error_status: u16,
    /// Share of API requests that never answer (until the client gives up).
    pub hang_rate: f64,
    /// Share of API requests whose connection is cut: streams after `drop_after_tokens`
    /// tokens, other answers before the body.
    pub drop_rate: f64,
    pub drop_after_tokens: u32,
    pub health: HealthFault,
    pub metrics: MetricsFault,
    /// Added before `/metrics` answers.
    pub metrics_delay_ms: u64,
    pub gpu: GpuFaults,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            error_status: 500,
            hang_rate: 0.0,
            drop_rate: 0.0,
            drop_after_tokens: 4,
            health: HealthFault::Ok,
            metrics: MetricsFault::Normal,
            metrics_delay_ms: 0,
            gpu: GpuFaults::default(),
        }
    }
}

/// `Some(None)` for an explicit JSON null, `None` when the field is absent.
fn explicit_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuFaultsPatch {
    pub frozen: Option<bool>,
    /// A number sets it; `null` clears it.
    #[serde(deserialize_with = "explicit_null")]
    pub xid: Option<Option<u64>>,
    pub memory_full: Option<bool>,
    pub thermal_throttle: Option<bool>,
    pub missing: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsPatch {
    pub latency_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
    pub hang_rate: Option<f64>,
    pub drop_rate: Option<f64>,
    pub drop_after_tokens: Option<u32>,
    pub health: Option<HealthFault>,
    pub metrics: Option<MetricsFault>,
    pub metrics_delay_ms: Option<u64>,
    pub gpu: Option<GpuFaultsPatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("`{field}` must be between 0 and 1, got {value}")]
    Rate { field: &'static str, value: String },
    #[error("`error_status` must be a 5xx status, got {0}")]
    Status(u16),
}

impl Faults {
    /// Applies a patch, validating the result; on error nothing changes.
    pub fn apply(&mut self, patch: FaultsPatch) -> Result<(), FaultError> {
        let mut next = self.clone();
        let rate = |field: &'static str, value: Option<f64>, current: f64| match value {
            None => Ok(current),
            Some(value) if (0.0..=1.0).contains(&value) => Ok(value),
            Some(value) => Err(FaultError::Rate {
                field,
                value: value.to_string(),
            }),
        };
        next.error_rate = rate("error_rate", patch.error_rate, self.error_rate)?;
        next.hang_rate = rate("hang_rate", patch.hang_rate, self.hang_rate)?;
        next.drop_rate = rate("drop_rate", patch.drop_rate, self.drop_rate)?;
        if let Some(status) = patch.error_status {
            if !(500..=599).contains(&status) {
                return Err(FaultError::Status(status));
            }
            next.error_status = status;
        }
        next.latency_ms = patch.latency_ms.unwrap_or(self.latency_ms);
        next.drop_after_tokens = patch.drop_after_tokens.unwrap_or(self.drop_after_tokens);
        next.health = patch.health.unwrap_or(self.health);
        next.metrics = patch.metrics.unwrap_or(self.metrics);
        next.metrics_delay_ms = patch.metrics_delay_ms.unwrap_or(self.metrics_delay_ms);
        if let Some(gpu) = patch.gpu {
            next.gpu.frozen = gpu.frozen.unwrap_or(self.gpu.frozen);
            if let Some(xid) = gpu.xid {
                next.gpu.xid = xid;
            }
            next.gpu.memory_full = gpu.memory_full.unwrap_or(self.gpu.memory_full);
            next.gpu.thermal_throttle = gpu.thermal_throttle.unwrap_or(self.gpu.thermal_throttle);
            next.gpu.missing = gpu.missing.unwrap_or(self.gpu.missing);
        }
        *self = next;
        Ok(())
    }

    /// Slowdown the engine should run with under these faults.
    pub fn engine_slowdown(&self) -> f64 {
        if self.gpu.thermal_throttle {
            THERMAL_SLOWDOWN
        } else {
            1.0
        }
    }
}

impl GpuFaults {
    /// Alters a live reading as the faults say (freezing is handled by the caller).
    pub fn distort(&self, sample: &mut GpuSample) {
        if let Some(xid) = self.xid {
            sample.last_xid = Some(xid);
        }
        if self.memory_full {
            let extra = sample
                .memory_total_bytes
                .saturating_sub(sample.memory_used_bytes);
            sample.memory_used_bytes = sample.memory_total_bytes;
            for process in &mut sample.processes {
                if let Some(used) = process.used_memory_bytes.as_mut() {
                    *used += extra;
                }
            }
        }
        if self.thermal_throttle {
            sample.temperature_c = Some(92);
            sample.sm_clock_mhz = Some(1200);
            sample.throttle_reasons = ThrottleReasons(
                (sample.throttle_reasons.0 & !ThrottleReasons::GPU_IDLE)
                    | ThrottleReasons::SW_THERMAL_SLOWDOWN
                    | ThrottleReasons::HW_THERMAL_SLOWDOWN,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> FaultsPatch {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn patches_merge_and_validate() {
        let mut faults = Faults::default();
        faults
            .apply(patch(r#"{"error_rate":0.5,"gpu":{"xid":79}}"#))
            .unwrap();
        faults
            .apply(patch(
                r#"{"latency_ms":20,"gpu":{"thermal_throttle":true}}"#,
            ))
            .unwrap();
        assert_eq!(faults.error_rate, 0.5);
        assert_eq!(faults.latency_ms, 20);
        assert_eq!(faults.gpu.xid, Some(79));
        assert!(faults.gpu.thermal_throttle);
        assert_eq!(faults.engine_slowdown(), THERMAL_SLOWDOWN);
        faults.apply(patch(r#"{"gpu":{"xid":null}}"#)).unwrap();
        assert_eq!(faults.gpu.xid, None);
        let before = faults.clone();
        assert!(faults.apply(patch(r#"{"error_rate":2}"#)).is_err());
        assert!(faults.apply(patch(r#"{"error_status":404}"#)).is_err());
        assert_eq!(faults, before, "a rejected patch changes nothing");
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"eror_rate":1}"#).is_err());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"metrics":"frozen"}"#).is_ok());
    }

    #[test]
    fn gpu_distortions() {
        let mut sample = GpuSample {
            memory_used_bytes: 10,
            memory_total_bytes: 100,
            throttle_reasons: ThrottleReasons(ThrottleReasons::GPU_IDLE),
            processes: vec![crate::telemetry::GpuProcess {
                pid: 1,
                used_memory_bytes: Some(5),
            }],
            ..GpuSample::default()
        };
        GpuFaults {
            xid: Some(79),
            memory_full: true,
            thermal_throttle: true,
            ..GpuFaults::default()
        }
        .distort(&mut sample);
        assert_eq!(sample.last_xid, Some(79));
        assert_eq!(sample.memory_used_bytes, 100);
        assert_eq!(sample.processes[0].used_memory_bytes, Some(95));
        assert!(sample.throttle_reasons.is_slowed_down());
        assert_eq!(sample.throttle_reasons.0 & ThrottleReasons::GPU_IDLE, 0);
    }
}
