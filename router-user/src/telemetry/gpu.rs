//! One GPU as NVML reports it. The real backend (nvml-wrapper) and the simulated servers' GPU
//! view produce the same record; field meanings and units follow NVML.
use serde::{Deserialize, Serialize};

use crate::clock::Micros;

/// NVML clock-throttle reason bits (`nvmlClocksEventReasons`), kept as NVML defines them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ThrottleReasons(pub u64);

impl ThrottleReasons {
    pub const GPU_IDLE: u64 = 0x1;
    pub const APPLICATIONS_CLOCKS_SETTING: u64 = 0x2;
    pub const SW_POWER_CAP: u64 = 0x4;
    pub const HW_SLOWDOWN: u64 = 0x8;
    pub const SYNC_BOOST: u64 = 0x10;
    pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
    pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
    pub const HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;
    pub const DISPLAY_CLOCK_SETTING: u64 = 0x100;

    /// Reasons that mean the GPU runs slower than it could for reasons outside the workload.
    pub const SLOWDOWN_MASK: u64 = Self::SW_POWER_CAP
        | Self::HW_SLOWDOWN
        | Self::SW_THERMAL_SLOWDOWN
        | Self::HW_THERMAL_SLOWDOWN
        | Self::HW_POWER_BRAKE_SLOWDOWN;

    pub fn is_slowed_down(self) -> bool {
        self.0 & Self::SLOWDOWN_MASK != 0
    }
}

/// A compute process on the GPU (NVML `running_compute_processes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// Bytes of GPU memory the process uses; `None` when NVML cannot tell (e.g. under MIG).
    pub used_memory_bytes: Option<u64>,
}

/// One reading of one GPU. Optional fields are the ones NVML may not support on every device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Percent of time a kernel ran over the last sample period (NVML `utilization_rates.gpu`).
    pub gpu_utilization_pct: u32,
    /// Percent of time memory was read or written (NVML `utilization_rates.memory`).
    pub memory_utilization_pct: u32,
    pub power_mw: Option<u32>,
    pub power_limit_mw: Option<u32>,
    pub temperature_c: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub throttle_reasons: ThrottleReasons,
    /// Volatile uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected: Option<u64>,
    /// Most recent critical XID error code seen on this GPU, if any.
    pub last_xid: Option<u64>,
    pub processes: Vec<GpuProcess>,
    /// When the reading was taken, on the producer's clock.
    pub sampled_at: Micros,
}

impl GpuSample {
    /// Free memory as a fraction of the total, 0..=1 (0 when the total is unknown).
    pub fn memory_headroom(&self) -> f64 {
        if self.memory_total_bytes == 0 {
            return 0.0;
        }
        let free = self
            .memory_total_bytes
            .saturating_sub(self.memory_used_bytes);
        free as f64 / self.memory_total_bytes as f64
    }
}
