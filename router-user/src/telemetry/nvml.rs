//! GPU readings from NVML (nvml-wrapper 0.13) on a dedicated OS thread.
//!
//! NVML calls block (a GPU falling off the bus can stall them for seconds), so they never run
//! on the async runtime: one thread owns the library handle, the device handles and one XID
//! event set per GPU, answers sample requests over a channel, and between requests polls the
//! event sets with a zero timeout so critical XID errors are caught without blocking anything.
//! Errors stay local: a field NVML does not support is `None` (ECC on consumer boards, process
//! memory under MIG), any other failure is reported for that GPU or field only.
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use futures::future::BoxFuture;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock as NvmlClock, EccCounter, MemoryError, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::telemetry::gpu::{GpuProcess, GpuSample, ThrottleReasons};
use crate::telemetry::gpu_source::{GpuError, GpuReadings, GpuTelemetry, TelemetryState};

/// How often the NVML thread drains XID events when nobody asks for samples.
const XID_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// At most this many queued events are drained per poll, so a storm cannot starve sampling.
const XID_DRAIN_LIMIT: usize = 64;

#[derive(Clone, Debug)]
pub struct NvmlOptions {
    /// Library names or paths tried in order. Containers get `libnvidia-ml.so.1` from the
    /// NVIDIA container toolkit; the unversioned name exists only where driver dev files are.
    pub library_paths: Vec<OsString>,
}

impl Default for NvmlOptions {
    fn default() -> Self {
        Self {
            library_paths: vec!["libnvidia-ml.so.1".into(), "libnvidia-ml.so".into()],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NvmlStartError {
    #[error("libnvidia-ml could not be loaded (tried {tried}): {reason}")]
    LibraryNotFound { tried: String, reason: String },
    #[error("the NVIDIA driver is not loaded: {0}")]
    DriverNotLoaded(String),
    #[error("NVML initialisation failed: {0}")]
    Init(String),
    #[error("cannot start the NVML thread: {0}")]
    Thread(String),
}

impl NvmlStartError {
    /// The machine has no usable NVIDIA stack (as opposed to a broken one).
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            Self::LibraryNotFound { .. } | Self::DriverNotLoaded(_)
        )
    }
}

type Reply = oneshot::Sender<GpuReadings>;

/// Handle to the NVML thread. Dropping it stops the thread (within one poll interval).
pub struct NvmlTelemetry {
    requests: mpsc::Sender<Reply>,
    device_count: u32,
    driver_version: String,
}

impl NvmlTelemetry {
    /// Loads NVML and opens every GPU; returns once the thread is ready or has failed.
    pub fn start(options: NvmlOptions, clock: Arc<dyn Clock>) -> Result<Self, NvmlStartError> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (requests, request_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("nvml".into())
            .spawn(move || nvml_thread(&options, clock.as_ref(), &ready_tx, &request_rx))
            .map_err(|err| NvmlStartError::Thread(err.to_string()))?;
        let (device_count, driver_version) = ready_rx
            .recv()
            .map_err(|_| NvmlStartError::Thread("the NVML thread exited during start".into()))??;
        tracing::info!(gpus = device_count, driver = %driver_version, "NVML telemetry started");
        Ok(Self {
            requests,
            device_count,
            driver_version,
        })
    }

    pub fn device_count(&self) -> u32 {
        self.device_count
    }

    pub fn driver_version(&self) -> &str {
        &self.driver_version
    }
}

impl GpuTelemetry for NvmlTelemetry {
    fn state(&self) -> TelemetryState {
        TelemetryState::Nvml
    }

    fn sample(&self) -> BoxFuture<'_, GpuReadings> {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(reply).is_ok();
        Box::pin(async move {
            let stopped = || GpuReadings {
                samples: Vec::new(),
                errors: vec![GpuError {
                    gpu: None,
                    source: "nvml".into(),
                    field: None,
                    message: "the NVML thread has stopped".into(),
                    lost: false,
                }],
            };
            if !sent {
                return stopped();
            }
            answer.await.unwrap_or_else(|_| stopped())
        })
    }
}

fn load(options: &NvmlOptions) -> Result<Nvml, NvmlStartError> {
    let mut last = None;
    for path in &options.library_paths {
        match Nvml::builder().lib_path(path).init() {
            Ok(nvml) => return Ok(nvml),
            Err(NvmlError::LibloadingError(err)) => last = Some(err.to_string()),
            Err(NvmlError::DriverNotLoaded) => {
                return Err(NvmlStartError::DriverNotLoaded(
                    "NVML loaded but reports no driver".into(),
                ));
            }
            Err(err) => return Err(NvmlStartError::Init(err.to_string())),
        }
    }
    let tried = options
        .library_paths
        .iter()
        .map(|path| path.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    Err(NvmlStartError::LibraryNotFound {
        tried,
        reason: last.unwrap_or_else(|| "no library path configured".into()),
    })
}

type Ready = mpsc::SyncSender<Result<(u32, String), NvmlStartError>>;

fn nvml_thread(
    options: &NvmlOptions,
    clock: &dyn Clock,
    ready: &Ready,
    requests: &mpsc::Receiver<Reply>,
) {
    let nvml = match load(options) {
        Ok(nvml) => nvml,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(err) => {
            let _ = ready.send(Err(NvmlStartError::Init(format!("device count: {err}"))));
            return;
        }
    };
    let driver = nvml
        .sys_driver_version()
        .unwrap_or_else(|_| "unknown".into());
    let mut gpus: Vec<GpuHandle<'_>> = (0..count)
        .map(|index| GpuHandle::open(&nvml, index))
        .collect();
    if ready.send(Ok((count, driver))).is_err() {
        return;
    }
    loop {
        match requests.recv_timeout(XID_POLL_INTERVAL) {
            Ok(reply) => {
                let now = clock.now();
                let mut readings = GpuReadings::default();
                for gpu in &mut gpus {
                    gpu.drain_xid();
                    gpu.read(&nvml, now, &mut readings);
                }
                let _ = reply.send(readings);
            }
            Err(RecvTimeoutError::Timeout) => gpus.iter_mut().for_each(GpuHandle::drain_xid),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One GPU as the NVML thread tracks it.
struct GpuHandle<'nvml> {
    index: u32,
    device: Option<Device<'nvml>>,
    uuid: String,
    name: String,
    xid_events: Option<EventSet<'nvml>>,
    last_xid: Option<u64>,
    /// The last failure to open the device, so it is logged once, not on every read.
    open_error: Option<String>,
}

impl<'nvml> GpuHandle<'nvml> {
    fn open(nvml: &'nvml Nvml, index: u32) -> Self {
        let mut handle = Self {
            index,
            device: None,
            uuid: String::new(),
            name: String::new(),
            xid_events: None,
            last_xid: None,
            open_error: None,
        };
        handle.connect(nvml);
        handle
    }

    /// (Re)acquires the device handle, identity and XID event set; failures are retried on the
    /// next read.
    fn connect(&mut self, nvml: &'nvml Nvml) {
        let device = match nvml.device_by_index(self.index) {
            Ok(device) => device,
            Err(err) => {
                let message = err.to_string();
                if self.open_error.as_ref() != Some(&message) {
                    tracing::warn!(gpu = self.index, error = %message, "cannot open GPU");
                    self.open_error = Some(message);
                }
                return;
            }
        };
        self.open_error = None;
        self.uuid = device.uuid().unwrap_or_default();
        self.name = device.name().unwrap_or_default();
        self.xid_events = register_xid_events(nvml, &device, self.index);
        self.device = Some(device);
    }

    fn drain_xid(&mut self) {
        let Some(events) = &self.xid_events else {
            return;
        };
        for _ in 0..XID_DRAIN_LIMIT {
            match events.wait(0) {
                Ok(event) => {
                    if !event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                        continue;
                    }
                    match event.event_data {
                        Some(XidError::Value(code)) => {
                            if self.last_xid != Some(code) {
                                tracing::warn!(gpu = self.index, uuid = %self.uuid, xid = code, "XID error");
                            }
                            self.last_xid = Some(code);
                        }
                        _ => tracing::warn!(gpu = self.index, "XID error with an unknown code"),
                    }
                }
                Err(NvmlError::Timeout) => return,
                Err(err) => {
                    tracing::debug!(gpu = self.index, error = %err, "XID event poll failed");
                    return;
                }
            }
        }
    }

    fn read(&mut self, nvml: &'nvml Nvml, now: crate::clock::Micros, out: &mut GpuReadings) {
        if self.device.is_none() {
            self.connect(nvml);
        }
        let Some(device) = &self.device else {
            let reason = self.open_error.as_deref().unwrap_or("unknown error");
            let message = format!("cannot open the device: {reason}");
            out.errors.push(self.error(None, message, false));
            return;
        };
        let memory = match device.memory_info() {
            Ok(memory) => memory,
            Err(err) => {
                // Without memory the reading is useless for routing; report the whole GPU.
                let lost = matches!(err, NvmlError::GpuLost);
                out.errors
                    .push(self.error(None, format!("memory_info: {err}"), lost));
                if lost {
                    self.device = None;
                    self.xid_events = None;
                }
                return;
            }
        };
        let mut fields = FieldReader {
            gpu: self,
            errors: &mut out.errors,
        };
        let utilization = fields.read("utilization", device.utilization_rates());
        let power_mw = fields.read("power_usage", device.power_usage());
        let power_limit_mw = fields.read("enforced_power_limit", device.enforced_power_limit());
        let temperature_c = fields.read("temperature", device.temperature(TemperatureSensor::Gpu));
        let sm_clock_mhz = fields.read("sm_clock", device.clock_info(NvmlClock::SM));
        let throttle = fields.read("clocks_event_reasons", device.current_throttle_reasons());
        let ecc_uncorrected = fields.read(
            "ecc_uncorrected",
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        );
        let processes = fields
            .read(
                "running_compute_processes",
                device.running_compute_processes(),
            )
            .unwrap_or_default()
            .into_iter()
            .map(|process| GpuProcess {
                pid: process.pid,
                used_memory_bytes: match process.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect();
        out.samples.push(GpuSample {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            gpu_utilization_pct: utilization.as_ref().map_or(0, |u| u.gpu),
            memory_utilization_pct: utilization.as_ref().map_or(0, |u| u.memory),
            power_mw,
            power_limit_mw,
            temperature_c,
            sm_clock_mhz,
            throttle_reasons: ThrottleReasons(throttle.map_or(0, |reasons| reasons.bits())),
            ecc_uncorrected,
            last_xid: self.last_xid,
            processes,
            sampled_at: now,
        });
    }

    fn error(&self, field: Option<&'static str>, message: String, lost: bool) -> GpuError {
        GpuError {
            gpu: Some(self.index),
            source: self.uuid.clone(),
            field,
            message,
            lost,
        }
    }
}

/// Reads optional fields: NotSupported is a normal `None`, other failures are reported.
struct FieldReader<'a, 'nvml> {
    gpu: &'a GpuHandle<'nvml>,
    errors: &'a mut Vec<GpuError>,
}

impl FieldReader<'_, '_> {
    fn read<T>(&mut self, field: &'static str, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(NvmlError::NotSupported) => None,
            Err(err) => {
                let lost = matches!(err, NvmlError::GpuLost);
                self.errors
                    .push(self.gpu.error(Some(field), err.to_string(), lost));
                None
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn register_xid_events<'nvml>(
    nvml: &'nvml Nvml,
    device: &Device<'nvml>,
    index: u32,
) -> Option<EventSet<'nvml>> {
    // One set per GPU: a failed registration releases the set, and must not cost the others.
    let set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(err) => {
            tracing::warn!(gpu = index, error = %err, "cannot create an NVML event set");
            return None;
        }
    };
    match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
        Ok(set) => Some(set),
        Err(err) => {
            tracing::info!(gpu = index, error = %err.error, "XID events unavailable on this GPU");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn register_xid_events<'nvml>(
    _nvml: &'nvml Nvml,
    _device: &Device<'nvml>,
    _index: u32,
) -> Option<EventSet<'nvml>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn a_missing_library_is_the_clean_absent_path() {
        let options = NvmlOptions {
            library_paths: vec!["/nonexistent/libnvidia-ml.so.1".into()],
        };
        let err = match NvmlTelemetry::start(options, Arc::new(SystemClock)) {
            Ok(_) => panic!("a library that does not exist loaded"),
            Err(err) => err,
        };
        assert!(err.is_absent(), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/libnvidia-ml.so.1"),
            "{message}"
        );
    }
}
