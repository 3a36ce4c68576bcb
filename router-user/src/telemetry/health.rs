//! Is a GPU fit to take traffic? A pure assessment of one reading (and the one before it), plus
//! a small tracker that keeps the per-GPU history the assessment needs.
//!
//! Unhealthy (drain): a critical XID error, one after which NVIDIA's XID catalog says the GPU
//! needs a reset or replacement before it can be trusted again:
//! - 48 double-bit ECC error; 94 contained and 95 uncontained ECC error (Ampere+ memory errors);
//! - 63 row-remapping / page-retirement event pending, 64 row-remapping failure;
//! - 74 NVLink error; 79 GPU fallen off the bus;
//! - 62 internal micro-controller halt; 119 and 120 GSP RPC timeout / GSP error;
//! - 140 unrecovered ECC error.
//!
//! Other XIDs (13 graphics engine exception, 31 MMU fault, 43 GPU stopped processing, 45
//! preemptive cleanup) are usually one application's fault: degraded while recent, not unhealthy.
//!
//! Degraded (route less, keep serving): new uncorrected ECC errors, memory nearly exhausted,
//! stale or frozen readings, clocks slowed by temperature, power or hardware.
use std::collections::HashMap;

use crate::clock::{MICROS_PER_SEC, Micros};
use crate::telemetry::gpu::{GpuSample, ThrottleReasons};

/// XID codes that make a GPU unhealthy, with what they mean.
pub const CRITICAL_XIDS: &[(u64, &str)] = &[
    (48, "double-bit ECC error"),
    (62, "internal micro-controller halt"),
    (63, "ECC page retirement / row remapping pending"),
    (64, "ECC page retirement / row remapping failure"),
    (74, "NVLink error"),
    (79, "GPU has fallen off the bus"),
    (94, "contained ECC error"),
    (95, "uncontained ECC error"),
    (119, "GSP RPC timeout"),
    (120, "GSP error"),
    (140, "unrecovered ECC error"),
];

pub fn critical_xid(code: u64) -> Option<&'static str> {
    CRITICAL_XIDS
        .iter()
        .find_map(|(xid, meaning)| (*xid == code).then_some(*meaning))
}

#[derive(Clone, Debug, PartialEq)]
pub enum HealthReason {
    CriticalXid { code: u64, meaning: &'static str },
    Xid { code: u64 },
    NewUncorrectedEcc { before: u64, now: u64 },
    MemoryExhausted { used_fraction: f64 },
    StaleReading { age: Micros },
    FrozenReading { unchanged_for: Micros },
    ThermalSlowdown,
    HardwareSlowdown,
    PowerBrake,
    PowerCap,
}

impl std::fmt::Display for HealthReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CriticalXid { code, meaning } => write!(f, "critical XID {code} ({meaning})"),
            Self::Xid { code } => write!(f, "XID {code}"),
            Self::NewUncorrectedEcc { before, now } => {
                write!(f, "uncorrected ECC errors rose from {before} to {now}")
            }
            Self::MemoryExhausted { used_fraction } => {
                write!(f, "memory {:.1}% used", used_fraction * 100.0)
            }
            Self::StaleReading { age } => write!(f, "reading is {} ms old", age / 1_000),
            Self::FrozenReading { unchanged_for } => {
                write!(
                    f,
                    "reading unchanged for {} s",
                    unchanged_for / MICROS_PER_SEC
                )
            }
            Self::ThermalSlowdown => f.write_str("thermal slowdown"),
            Self::HardwareSlowdown => f.write_str("hardware slowdown"),
            Self::PowerBrake => f.write_str("power brake slowdown"),
            Self::PowerCap => f.write_str("software power cap"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum GpuHealth {
    Healthy,
    Degraded(Vec<HealthReason>),
    Unhealthy(HealthReason),
}

impl GpuHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy)
    }

    pub fn is_unhealthy(&self) -> bool {
        matches!(self, Self::Unhealthy(_))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthPolicy {
    /// Used memory above this fraction of the total is "exhausted" (inference servers
    /// preallocate ~90%, so this only trips when something else also fills the GPU).
    pub memory_exhausted_fraction: f64,
    /// A reading older than this is stale.
    pub max_age: Micros,
    /// A reading identical (all but its timestamp) to one this much older is frozen.
    pub frozen_after: Micros,
    /// How long the tracker keeps reporting a one-off event (new ECC errors, a non-critical XID).
    pub event_hold: Micros,
    /// The software power cap is normal at full load on many boards; count it only if asked.
    pub power_cap_degrades: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            memory_exhausted_fraction: 0.98,
            max_age: 5 * MICROS_PER_SEC,
            frozen_after: 30 * MICROS_PER_SEC,
            event_hold: 60 * MICROS_PER_SEC,
            power_cap_degrades: false,
        }
    }
}

/// Assesses `sample` at `now`, comparing with `previous` (an earlier reading of the same GPU)
/// for new ECC errors, new XIDs and frozen values.
pub fn assess(
    sample: &GpuSample,
    previous: Option<&GpuSample>,
    now: Micros,
    policy: &HealthPolicy,
) -> GpuHealth {
    if let Some(code) = sample.last_xid
        && let Some(meaning) = critical_xid(code)
    {
        return GpuHealth::Unhealthy(HealthReason::CriticalXid { code, meaning });
    }
    let mut reasons = Vec::new();
    if let Some(code) = sample.last_xid
        && previous.is_none_or(|prev| prev.last_xid != Some(code))
    {
        reasons.push(HealthReason::Xid { code });
    }
    if let (Some(now_count), Some(before)) = (
        sample.ecc_uncorrected,
        previous.and_then(|prev| prev.ecc_uncorrected),
    ) && now_count > before
    {
        reasons.push(HealthReason::NewUncorrectedEcc {
            before,
            now: now_count,
        });
    }
    if sample.memory_total_bytes > 0 {
        let used = sample.memory_used_bytes as f64 / sample.memory_total_bytes as f64;
        if used > policy.memory_exhausted_fraction {
            reasons.push(HealthReason::MemoryExhausted {
                used_fraction: used,
            });
        }
    }
    let age = now.saturating_sub(sample.sampled_at);
    if age > policy.max_age {
        reasons.push(HealthReason::StaleReading { age });
    }
    if let Some(prev) = previous {
        let unchanged_for = sample.sampled_at.saturating_sub(prev.sampled_at);
        if unchanged_for >= policy.frozen_after && same_values(sample, prev) {
            reasons.push(HealthReason::FrozenReading { unchanged_for });
        }
    }
    let throttle = sample.throttle_reasons.0;
    if throttle & (ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN) != 0
    {
        reasons.push(HealthReason::ThermalSlowdown);
    }
    if throttle & ThrottleReasons::HW_SLOWDOWN != 0 {
        reasons.push(HealthReason::HardwareSlowdown);
    }
    if throttle & ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN != 0 {
        reasons.push(HealthReason::PowerBrake);
    }
    if policy.power_cap_degrades && throttle & ThrottleReasons::SW_POWER_CAP != 0 {
        reasons.push(HealthReason::PowerCap);
    }
    if reasons.is_empty() {
        GpuHealth::Healthy
    } else {
        GpuHealth::Degraded(reasons)
    }
}

/// Everything but the timestamp.
fn same_values(a: &GpuSample, b: &GpuSample) -> bool {
    let mut b_now = b.clone();
    b_now.sampled_at = a.sampled_at;
    *a == b_now
}

/// Keeps, per GPU UUID, what [`assess`] needs across readings: the reading since which values
/// have not changed (to see frozen ones) and recent one-off events (held for `event_hold`).
#[derive(Debug, Default)]
pub struct HealthTracker {
    policy: HealthPolicy,
    gpus: HashMap<String, TrackedGpu>,
}

#[derive(Debug)]
struct TrackedGpu {
    /// The first reading of the current run of identical readings.
    unchanged_since: GpuSample,
    /// The reading just before this one.
    previous: GpuSample,
    /// One-off reasons and when they were first seen.
    events: Vec<(Micros, HealthReason)>,
}

impl HealthTracker {
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            gpus: HashMap::new(),
        }
    }

    pub fn assess(&mut self, sample: &GpuSample, now: Micros) -> GpuHealth {
        let policy = &self.policy;
        let key = gpu_key(sample);
        let Some(tracked) = self.gpus.get_mut(&key) else {
            self.gpus.insert(
                key,
                TrackedGpu {
                    unchanged_since: sample.clone(),
                    previous: sample.clone(),
                    events: Vec::new(),
                },
            );
            return assess(sample, None, now, policy);
        };
        let against_previous = assess(sample, Some(&tracked.previous), now, policy);
        let frozen = assess(sample, Some(&tracked.unchanged_since), now, policy);
        if !same_values(sample, &tracked.unchanged_since) {
            tracked.unchanged_since = sample.clone();
        }
        tracked.previous = sample.clone();
        let mut reasons = match against_previous {
            GpuHealth::Unhealthy(reason) => return GpuHealth::Unhealthy(reason),
            GpuHealth::Healthy => Vec::new(),
            GpuHealth::Degraded(reasons) => reasons,
        };
        for reason in reasons.iter().filter(|r| is_event(r)) {
            tracked.events.push((now, reason.clone()));
        }
        tracked
            .events
            .retain(|(seen, _)| now.saturating_sub(*seen) <= policy.event_hold);
        // Events come back from the held list; frozen is judged against the run's start.
        reasons.retain(|r| !is_event(r) && !matches!(r, HealthReason::FrozenReading { .. }));
        reasons.extend(tracked.events.iter().map(|(_, reason)| reason.clone()));
        if let GpuHealth::Degraded(frozen) = frozen {
            reasons.extend(
                frozen
                    .into_iter()
                    .filter(|r| matches!(r, HealthReason::FrozenReading { .. })),
            );
        }
        if reasons.is_empty() {
            GpuHealth::Healthy
        } else {
            GpuHealth::Degraded(reasons)
        }
    }

    /// Forgets GPUs not among `current` (e.g. after a node's GPUs change).
    pub fn retain(&mut self, current: &[GpuSample]) {
        self.gpus
            .retain(|key, _| current.iter().any(|sample| gpu_key(sample) == *key));
    }
}

/// GPUs are tracked by UUID; by index when NVML could not read the UUID.
fn gpu_key(sample: &GpuSample) -> String {
    if sample.uuid.is_empty() {
        format!("index:{}", sample.index)
    } else {
        sample.uuid.clone()
    }
}

fn is_event(reason: &HealthReason) -> bool {
    matches!(
        reason,
        HealthReason::Xid { .. } | HealthReason::NewUncorrectedEcc { .. }
    )
}
