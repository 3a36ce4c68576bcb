//! The simulated model server over HTTP: one [`Engine`] driven in (scaled) real time behind
//! vLLM's OpenAI-compatible API, `/metrics`, `/health`, the GPU view and the fault admin API.
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`,
//! `GET /health`, `GET /metrics`, `POST /reset_prefix_cache` (as vLLM), and the simulator's own
//! `GET /sim/gpu` (`{"gpus": [GpuSample]}`), `GET /sim/load` (an `EndpointLoad`),
//! `GET|POST|DELETE /admin/faults`. Every answer carries [`SERVED_BY_HEADER`] with the
//! listening address, so a client behind a router or a VIP can tell which server answered.
mod admin;
mod api;
mod clock;
mod driver;
mod generation;
mod stop;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use self::clock::SimClock;
use super::engine::{Engine, EngineConfig, EngineEvent, EventDetail};
use super::faults::Faults;
use super::gpu::GpuIdentity;
use super::metrics::{LoraInfoHistory, ThroughputMeter};
use super::profile::Profile;
use crate::clock::{Clock, MICROS_PER_SEC};
use crate::telemetry::{EngineKind, GpuSample};

/// Response header naming the server that answered (`ip:port` it listens on).
pub const SERVED_BY_HEADER: &str = "x-served-by";

/// Largest request body accepted (long prompts are the point of some tests).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A LoRA adapter the server serves (`--lora-modules name[=path]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub path: String,
}

impl std::str::FromStr for LoraModule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, path) = match spec.split_once('=') {
            Some((name, path)) => (name.trim(), path.trim()),
            None => (spec.trim(), spec.trim()),
        };
        if name.is_empty() || path.is_empty() {
            return Err(format!(
                "invalid LoRA module `{spec}` (expected NAME or NAME=PATH)"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            path: path.to_owned(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub engine_kind: EngineKind,
    /// Served model name.
    pub model: String,
    pub lora_modules: Vec<LoraModule>,
    pub max_loras: u32,
    pub profile: Profile,
    pub max_model_len: Option<u32>,
    /// Virtual time runs this many times faster than the wall clock.
    pub speed: f64,
    pub seed: u64,
    /// Extra slowdown of this server's GPU (`--slow-gpu`).
    pub slow_gpu: f64,
    pub gpu_index: u32,
    pub gpu_uuid: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            engine_kind: EngineKind::Vllm,
            model: "meta-llama/Llama-3.1-8B-Instruct".to_owned(),
            lora_modules: Vec::new(),
            max_loras: 1,
            profile: Profile::default(),
            max_model_len: None,
            speed: 1.0,
            seed: 0,
            slow_gpu: 1.0,
            gpu_index: 0,
            gpu_uuid: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ServerError> {
        if !matches!(self.engine_kind, EngineKind::Vllm | EngineKind::Sglang) {
            return Err(ServerError::Config(format!(
                "engine `{}` is not simulated (use vllm or sglang)",
                self.engine_kind
            )));
        }
        if !self.speed.is_finite() || self.speed <= 0.0 {
            return Err(ServerError::Config(format!(
                "speed must be > 0, got {}",
                self.speed
            )));
        }
        if !self.slow_gpu.is_finite() || self.slow_gpu <= 0.0 {
            return Err(ServerError::Config(format!(
                "slow-gpu must be > 0, got {}",
                self.slow_gpu
            )));
        }
        if self.model.is_empty() {
            return Err(ServerError::Config("the model name is empty".to_owned()));
        }
        if !self.lora_modules.is_empty() && self.max_loras == 0 {
            return Err(ServerError::Config(
                "LoRA modules need --max-loras of at least 1".to_owned(),
            ));
        }
        if let Some(clash) = self
            .lora_modules
            .iter()
            .find(|lora| lora.name == self.model)
        {
            return Err(ServerError::Config(format!(
                "LoRA module `{}` has the base model's name",
                clash.name
            )));
        }
        self.profile
            .validate()
            .map_err(|err| ServerError::Config(err.to_string()))
    }
}

/// The engine and who listens to each of its requests; one lock for both so events and
/// submissions never race.
pub(crate) struct Core {
    pub engine: Engine,
    pub streams: HashMap<u64, mpsc::UnboundedSender<EngineEvent>>,
}

/// What `/metrics` remembers between scrapes.
#[derive(Default)]
pub(crate) struct MetricsMemory {
    pub lora_history: LoraInfoHistory,
    pub throughput: ThroughputMeter,
}

pub(crate) struct FaultState {
    pub faults: Faults,
    pub frozen_metrics: Option<String>,
    pub frozen_gpu: Option<GpuSample>,
    pub rng: SmallRng,
}

pub(crate) struct AppState {
    pub core: Mutex<Core>,
    /// Wakes the driver after a submission or abort changed what the engine will do next.
    pub wake: Notify,
    pub clock: SimClock,
    pub kind: EngineKind,
    pub model: String,
    pub lora_modules: Vec<LoraModule>,
    pub max_model_len: u32,
    pub seed: u64,
    /// Unix seconds at start (`created` of `/v1/models`).
    pub started_unix: u64,
    pub faults: Mutex<FaultState>,
    pub next_id: AtomicU64,
    pub metrics_memory: Mutex<MetricsMemory>,
}

impl AppState {
    fn new(config: ServerConfig) -> Self {
        let clock = SimClock::new(config.speed);
        let mut gpu = GpuIdentity::simulated(config.gpu_index, config.seed);
        if let Some(uuid) = &config.gpu_uuid {
            gpu.uuid.clone_from(uuid);
        }
        gpu.pid = std::process::id();
        let engine_config = EngineConfig {
            engine_kind: config.engine_kind,
            max_loras: if config.lora_modules.is_empty() {
                0
            } else {
                config.max_loras
            },
            seed: config.seed,
            events: EventDetail::Tokens,
            slowdown: config.slow_gpu,
            max_model_len: config.max_model_len,
            gpu,
            start: clock.now(),
        };
        let engine = Engine::new(config.profile, engine_config);
        let max_model_len = engine.max_model_len();
        let started_unix = clock.now() / MICROS_PER_SEC;
        Self {
            core: Mutex::new(Core {
                engine,
                streams: HashMap::new(),
            }),
            wake: Notify::new(),
            clock,
            kind: config.engine_kind,
            model: config.model,
            lora_modules: config.lora_modules,
            max_model_len,
            seed: config.seed,
            started_unix,
            faults: Mutex::new(FaultState {
                faults: Faults::default(),
                frozen_metrics: None,
                frozen_gpu: None,
                rng: SmallRng::seed_from_u64(config.seed ^ 0xFA17),
            }),
            next_id: AtomicU64::new(1),
            metrics_memory: Mutex::new(MetricsMemory::default()),
        }
    }
}

fn router(state: Arc<AppState>, served_by: http::HeaderValue) -> Router {
    let stamp = move |mut response: axum::response::Response| {
        let served_by = served_by.clone();
        async move {
            response.headers_mut().insert(SERVED_BY_HEADER, served_by);
            response
        }
    };
    Router::new()
        .route("/v1/completions", post(api::completions))
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/v1/models", get(admin::models))
        .route("/health", get(admin::health))
        .route("/metrics", get(admin::metrics))
        .route("/reset_prefix_cache", post(admin::reset_prefix_cache))
        .route("/sim/gpu", get(admin::gpu))
        .route("/sim/load", get(admin::load))
        .route(
            "/admin/faults",
            get(admin::get_faults)
                .post(admin::post_faults)
                .delete(admin::delete_faults),
        )
        .fallback(admin::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(stamp))
        .with_state(state)
}

/// A bound simulated server, not yet serving.
pub struct SimServer {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl SimServer {
    /// Validates the configuration and binds `addr` (port 0 picks a free port).
    pub async fn bind(config: ServerConfig, addr: &str) -> Result<Self, ServerError> {
        config.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(Self {
            listener,
            state: Arc::new(AppState::new(config)),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(ServerError::Serve)
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let addr = self.local_addr()?;
        let served_by = http::HeaderValue::from_str(&addr.to_string())
            .map_err(|err| ServerError::Serve(std::io::Error::other(err)))?;
        let driver = tokio::spawn(driver::drive(self.state.clone(), shutdown.clone()));
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle holds each one until the
        // client's delayed ACK (up to 40 ms); Python servers (uvicorn) set it too.
        let listener = self.listener.tap_io(|stream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%err, "cannot set TCP_NODELAY");
            }
        });
        let result = axum::serve(listener, router(self.state, served_by))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .map_err(ServerError::Serve);
        shutdown.cancel();
        let _ = driver.await;
        result
    }

    /// Serves on a background task; the returned handle stops it when dropped.
    pub fn spawn(self) -> Result<RunningServer, ServerError> {
        let addr = self.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.serve(shutdown.clone()));
        Ok(RunningServer {
            addr,
            shutdown,
            task: Some(task),
        })
    }
}

/// A server running on a background task (tests, in-process demos).
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl RunningServer {
    /// Stops accepting, lets open requests end, and waits for the server to finish.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|err| ServerError::Serve(std::io::Error::other(err)))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
