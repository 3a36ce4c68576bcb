//! Where GPU readings come from: NVML on a real node, the simulated servers' GPU view in tests
//! and demos, or nowhere (the agent then routes on model-server signals alone and says so).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::clock::Clock;
use crate::telemetry::gpu::GpuSample;
use crate::telemetry::gpu_sim::SimGpuTelemetry;
use crate::telemetry::nvml::{NvmlOptions, NvmlStartError, NvmlTelemetry};

/// `--telemetry auto|nvml|sim|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TelemetryMode {
    /// NVML if libnvidia-ml loads, else the simulated GPUs if endpoints are configured, else none.
    #[default]
    Auto,
    /// NVML only; failing to load it is an error.
    Nvml,
    /// The simulated servers' `/sim/gpu` only.
    Sim,
    /// No GPU telemetry.
    Off,
}

/// What the agent can export about its GPU view (e.g. as a labelled gauge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TelemetryState {
    Nvml,
    Sim,
    /// No GPU telemetry, and why.
    Absent(String),
}

impl TelemetryState {
    /// A short, stable label for metrics: `nvml`, `sim` or `absent`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Nvml => "nvml",
            Self::Sim => "sim",
            Self::Absent(_) => "absent",
        }
    }

    pub fn is_present(&self) -> bool {
        !matches!(self, Self::Absent(_))
    }
}

impl std::fmt::Display for TelemetryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent(reason) => write!(f, "absent ({reason})"),
            other => f.write_str(other.label()),
        }
    }
}

/// A problem with one GPU, one of its fields, or one simulated endpoint. The other GPUs and
/// fields of the same round are unaffected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuError {
    /// The GPU index, when the error is about one GPU.
    pub gpu: Option<u32>,
    /// The GPU's UUID, or the simulated endpoint's address.
    pub source: String,
    /// The field that could not be read; `None` when the whole GPU or endpoint was unreadable.
    pub field: Option<&'static str>,
    pub message: String,
    /// NVML says the GPU fell off the bus or is otherwise inaccessible.
    pub lost: bool,
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gpu {
            Some(index) => write!(f, "GPU {index}")?,
            None => f.write_str("GPU source")?,
        }
        if !self.source.is_empty() {
            write!(f, " ({})", self.source)?;
        }
        if let Some(field) = self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One round of readings: a sample per readable GPU, errors alongside.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReadings {
    pub samples: Vec<GpuSample>,
    pub errors: Vec<GpuError>,
}

/// A source of GPU readings. `sample` never blocks the async runtime.
pub trait GpuTelemetry: Send + Sync {
    fn state(&self) -> TelemetryState;
    fn sample(&self) -> BoxFuture<'_, GpuReadings>;
}

/// Inputs to [`select_telemetry`].
#[derive(Clone)]
pub struct TelemetryOptions {
    pub nvml: NvmlOptions,
    /// Simulated model servers whose `GET /sim/gpu` reports their GPUs.
    pub sim_endpoints: Vec<SocketAddr>,
    pub sim_timeout: Duration,
    pub clock: Arc<dyn Clock>,
}

/// The GPU telemetry flags, for the agent (and `switchyard telemetry gpu`) to flatten.
#[derive(Clone, Debug, clap::Args)]
pub struct GpuTelemetryArgs {
    /// Where GPU readings come from: NVML, the simulated servers' `/sim/gpu`, or nowhere.
    #[arg(long, value_enum, default_value_t, env = "SWITCHYARD_TELEMETRY")]
    pub telemetry: TelemetryMode,
    /// A simulated model server whose `GET /sim/gpu` reports its GPUs (repeatable).
    #[arg(long = "sim-endpoint")]
    pub sim_endpoints: Vec<SocketAddr>,
    /// Time allowed for one `/sim/gpu` request.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub sim_timeout: Duration,
    /// NVML library to load, tried in order (repeatable; default libnvidia-ml.so.1, then
    /// libnvidia-ml.so).
    #[arg(long = "nvml-library")]
    pub nvml_libraries: Vec<std::path::PathBuf>,
}

impl GpuTelemetryArgs {
    pub fn options(&self, clock: Arc<dyn Clock>) -> TelemetryOptions {
        let mut nvml = NvmlOptions::default();
        if !self.nvml_libraries.is_empty() {
            nvml.library_paths = self
                .nvml_libraries
                .iter()
                .map(|path| path.clone().into_os_string())
                .collect();
        }
        TelemetryOptions {
            nvml,
            sim_endpoints: self.sim_endpoints.clone(),
            sim_timeout: self.sim_timeout,
            clock,
        }
    }
}

/// The chosen backend (none when absent) and the state to export.
pub struct TelemetrySelection {
    pub backend: Option<Box<dyn GpuTelemetry>>,
    pub state: TelemetryState,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetrySelectError {
    // Not a `#[source]`: the message already carries it, and chains would print it twice.
    #[error("--telemetry nvml: {0}")]
    Nvml(NvmlStartError),
    #[error("--telemetry sim needs at least one simulated endpoint")]
    NoSimEndpoints,
}

/// Applies the `--telemetry` semantics. `auto` never fails: without NVML and without simulated
/// endpoints it logs one line and returns [`TelemetryState::Absent`].
pub fn select_telemetry(
    mode: TelemetryMode,
    options: &TelemetryOptions,
) -> Result<TelemetrySelection, TelemetrySelectError> {
    let sim = || -> Result<TelemetrySelection, TelemetrySelectError> {
        if options.sim_endpoints.is_empty() {
            return Err(TelemetrySelectError::NoSimEndpoints);
        }
        Ok(TelemetrySelection {
            backend: Some(Box::new(SimGpuTelemetry::new(
                options.sim_endpoints.clone(),
                options.sim_timeout,
            ))),
            state: TelemetryState::Sim,
        })
    };
    let nvml = || {
        NvmlTelemetry::start(options.nvml.clone(), Arc::clone(&options.clock)).map(|backend| {
            TelemetrySelection {
                backend: Some(Box::new(backend) as Box<dyn GpuTelemetry>),
                state: TelemetryState::Nvml,
            }
        })
    };
    match mode {
        TelemetryMode::Off => Ok(absent("disabled by --telemetry off".to_owned())),
        TelemetryMode::Nvml => nvml().map_err(TelemetrySelectError::Nvml),
        TelemetryMode::Sim => sim(),
        TelemetryMode::Auto => match nvml() {
            Ok(selection) => Ok(selection),
            Err(err) if !options.sim_endpoints.is_empty() => {
                tracing::info!(reason = %err, "NVML unavailable; using the simulated GPU view");
                sim()
            }
            Err(err) => {
                tracing::warn!(
                    reason = %err,
                    "GPU telemetry absent: NVML unavailable and no simulated endpoints; \
                     routing on model-server signals only"
                );
                Ok(absent(err.to_string()))
            }
        },
    }
}

fn absent(reason: String) -> TelemetrySelection {
    TelemetrySelection {
        backend: None,
        state: TelemetryState::Absent(reason),
    }
}
