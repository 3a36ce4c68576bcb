//! What NVML would report for the simulated GPU, derived from the engine's own activity.
//!
//! Utilisation is the busy fraction of the last second of virtual time (NVML's "a kernel was
//! running" definition); power is linear in it; temperature lags it with a first-order filter;
//! memory used is the driver reserve + weights + runtime overhead + KV blocks in use. (A real
//! vLLM reserves its whole KV pool at start, so real NVML memory stays flat; the simulator shows
//! blocks in use instead so memory readings follow load, as the router's GPU view expects.)
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::profile::Profile;
use super::tokens::mix64;
use crate::clock::{MICROS_PER_SEC, Micros};
use crate::telemetry::{GpuProcess, GpuSample, ThrottleReasons};

/// NVML's utilisation sample period is between 1/6 s and 1 s; use the long end.
const UTILIZATION_WINDOW_US: Micros = MICROS_PER_SEC;
/// Memory the driver holds on any GPU with a context open.
const DRIVER_RESERVED_BYTES: u64 = 512 * 1024 * 1024;
const BOOST_CLOCK_MHZ: u32 = 1980;
const IDLE_CLOCK_MHZ: u32 = 345;
/// Below this utilisation NVML reports the idle clock-event reason.
const IDLE_UTILIZATION: f64 = 0.05;

/// Body of the simulated server's `GET /sim/gpu`: the GPUs of the node as NVML reports them
/// (one per simulated server).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuReport {
    pub gpus: Vec<GpuSample>,
}

/// The identity the simulated GPU reports (`--gpu-index`, `--gpu-uuid`, the server's pid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    pub index: u32,
    pub uuid: String,
    /// Pid listed as the GPU's compute process (the sim server's own pid; 0 in-process).
    pub pid: u32,
}

impl GpuIdentity {
    /// A stable, NVML-shaped UUID derived from `seed` and `index`.
    pub fn simulated(index: u32, seed: u64) -> Self {
        let a = mix64(seed ^ u64::from(index));
        let b = mix64(a);
        Self {
            index,
            uuid: format!(
                "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xffff,
                b >> 48,
                b & 0xffff_ffff_ffff
            ),
            pid: 0,
        }
    }
}

fn lag(temp: f64, target: f64, dt_us: Micros, tau_s: f64) -> f64 {
    if tau_s <= 0.0 {
        return target;
    }
    let alpha = 1.0 - (-(dt_us as f64) / (tau_s * MICROS_PER_SEC as f64)).exp();
    temp + (target - temp) * alpha
}

/// Busy intervals of recent steps plus a temperature state.
#[derive(Clone, Debug)]
pub(crate) struct GpuActivity {
    recent: VecDeque<(Micros, Micros)>,
    in_flight: Option<(Micros, Micros)>,
    temp_c: f64,
    temp_at: Micros,
    idle_c: f64,
    busy_c: f64,
    tau_s: f64,
}

impl GpuActivity {
    pub fn new(profile: &Profile, now: Micros) -> Self {
        Self {
            recent: VecDeque::with_capacity(256),
            in_flight: None,
            temp_c: profile.thermal.idle_c,
            temp_at: now,
            idle_c: profile.thermal.idle_c,
            busy_c: profile.thermal.busy_c,
            tau_s: profile.thermal.time_constant_s,
        }
    }

    pub fn step_started(&mut self, start: Micros, end: Micros) {
        self.in_flight = Some((start, end));
    }

    pub fn step_finished(&mut self) {
        let Some((start, end)) = self.in_flight.take() else {
            return;
        };
        self.temp_c = self.temperature_over(self.temp_c, self.temp_at, start, end);
        self.temp_at = end;
        self.recent.push_back((start, end));
        let horizon = end.saturating_sub(UTILIZATION_WINDOW_US);
        while self.recent.front().is_some_and(|&(_, e)| e < horizon) {
            self.recent.pop_front();
        }
    }

    /// Temperature at `end` after idling from `from` to `start` and running until `end`.
    fn temperature_over(&self, temp: f64, from: Micros, start: Micros, end: Micros) -> f64 {
        let idle = lag(temp, self.idle_c, start.saturating_sub(from), self.tau_s);
        lag(
            idle,
            self.busy_c,
            end.saturating_sub(start.max(from)),
            self.tau_s,
        )
    }

    pub fn temperature(&self, now: Micros) -> f64 {
        match self.in_flight {
            Some((start, end)) if start < now => {
                self.temperature_over(self.temp_c, self.temp_at, start, end.min(now))
            }
            _ => lag(
                self.temp_c,
                self.idle_c,
                now.saturating_sub(self.temp_at),
                self.tau_s,
            ),
        }
    }

    /// Busy fraction of `[now - 1 s, now]`.
    pub fn utilization(&self, now: Micros) -> f64 {
        let from = now.saturating_sub(UTILIZATION_WINDOW_US);
        let window = now - from;
        if window == 0 {
            return 0.0;
        }
        let overlap = |(start, end): (Micros, Micros)| end.min(now).saturating_sub(start.max(from));
        let busy: Micros = self.recent.iter().copied().map(overlap).sum::<Micros>()
            + self.in_flight.map_or(0, overlap);
        (busy as f64 / window as f64).clamp(0.0, 1.0)
    }

    pub fn sample(
        &self,
        now: Micros,
        profile: &Profile,
        identity: &GpuIdentity,
        kv_blocks_used: u32,
    ) -> GpuSample {
        let util = self.utilization(now);
        let process_bytes = profile.weights_bytes
            + profile.runtime_overhead_bytes
            + u64::from(kv_blocks_used) * profile.block_bytes();
        let memory_used = (process_bytes + DRIVER_RESERVED_BYTES).min(profile.gpu_memory_bytes);
        let power = &profile.power;
        let power_w = power.idle_w + (power.busy_w - power.idle_w) * util;
        let idle = util < IDLE_UTILIZATION;
        GpuSample {
            index: identity.index,
            uuid: identity.uuid.clone(),
            name: profile.gpu_name.clone(),
            memory_used_bytes: memory_used,
            memory_total_bytes: profile.gpu_memory_bytes,
            gpu_utilization_pct: (util * 100.0).round() as u32,
            // Decode is memory-bound: memory is busy most of the time kernels run.
            memory_utilization_pct: (util * 80.0).round() as u32,
            power_mw: Some((power_w * 1000.0).round() as u32),
            power_limit_mw: Some((power.limit_w * 1000.0).round() as u32),
            temperature_c: Some(self.temperature(now).round() as u32),
            sm_clock_mhz: Some(if idle {
                IDLE_CLOCK_MHZ
            } else {
                BOOST_CLOCK_MHZ
            }),
            throttle_reasons: ThrottleReasons(if idle { ThrottleReasons::GPU_IDLE } else { 0 }),
            ecc_uncorrected: Some(0),
            last_xid: None,
            processes: vec![GpuProcess {
                pid: identity.pid,
                used_memory_bytes: Some(process_bytes),
            }],
            sampled_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_the_busy_share_of_the_last_second() {
        let profile = Profile::default();
        let mut gpu = GpuActivity::new(&profile, 0);
        assert_eq!(gpu.utilization(2 * MICROS_PER_SEC), 0.0);
        gpu.step_started(1_000_000, 1_250_000);
        gpu.step_finished();
        gpu.step_started(1_500_000, 1_750_000);
        assert!((gpu.utilization(1_750_000) - 0.5).abs() < 1e-9);
        // Half of the in-flight step has run at 1.625 s.
        assert!((gpu.utilization(1_625_000) - 0.375).abs() < 1e-9);
        gpu.step_finished();
        assert!((gpu.utilization(2_500_000) - 0.25).abs() < 1e-9);
        assert_eq!(gpu.utilization(3_000_000), 0.0);
    }

    #[test]
    fn temperature_rises_under_load_and_cools_when_idle() {
        let profile = Profile::default();
        let mut gpu = GpuActivity::new(&profile, 0);
        let idle = gpu.temperature(10 * MICROS_PER_SEC);
        assert!((idle - profile.thermal.idle_c).abs() < 1e-9);
        gpu.step_started(0, 60 * MICROS_PER_SEC);
        gpu.step_finished();
        let hot = gpu.temperature(60 * MICROS_PER_SEC);
        assert!(hot > profile.thermal.idle_c + 30.0, "{hot}");
        let cooled = gpu.temperature(600 * MICROS_PER_SEC);
        assert!(cooled < hot - 20.0, "{cooled}");
    }

    #[test]
    fn sample_reflects_kv_use_and_identity() {
        let profile = Profile::default();
        let gpu = GpuActivity::new(&profile, 0);
        let identity = GpuIdentity::simulated(3, 1);
        assert!(
            identity.uuid.starts_with("GPU-") && identity.uuid.len() == 40,
            "{}",
            identity.uuid
        );
        let empty = gpu.sample(0, &profile, &identity, 0);
        let loaded = gpu.sample(0, &profile, &identity, 1000);
        assert_eq!(
            loaded.memory_used_bytes - empty.memory_used_bytes,
            1000 * profile.block_bytes()
        );
        assert_eq!(empty.index, 3);
        assert!(empty.throttle_reasons.0 & ThrottleReasons::GPU_IDLE != 0);
        assert!(empty.memory_used_bytes < empty.memory_total_bytes);
    }
}
