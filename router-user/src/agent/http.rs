//! The agent's HTTP port (`--metrics-port`, 9091): `/metrics` (Prometheus text), `/healthz`
//! (liveness: the loop ran recently), `/readyz` (readiness: endpoints known and the first
//! pass programmed), `/debug/state` (the last [`NodeView`] as JSON).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::AgentMetrics;
use super::view::NodeView;
use crate::clock::{Clock, MICROS_PER_SEC, Micros};

/// A loop that has not run for this long is not alive.
const LIVENESS_LIMIT: Micros = 10 * MICROS_PER_SEC;

/// What the probes look at, written by the agent's loop.
#[derive(Debug, Default)]
pub struct Probes {
    last_pass: AtomicU64,
    ready: AtomicBool,
    /// Why the agent is not ready (for `/readyz`'s body).
    not_ready: parking_lot::Mutex<String>,
}

impl Probes {
    pub fn passed(&self, at: Micros) {
        self.last_pass.store(at, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool, reason: &str) {
        self.ready.store(ready, Ordering::Relaxed);
        if !ready {
            reason.clone_into(&mut self.not_ready.lock());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<AgentMetrics>,
    probes: Arc<Probes>,
    views: watch::Receiver<Arc<NodeView>>,
    clock: Arc<dyn Clock>,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    probes: Arc<Probes>,
    views: watch::Receiver<Arc<NodeView>>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/state", get(state))
        .with_state(AppState {
            metrics,
            probes,
            views,
            clock,
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics server ended");
        }
    });
    Ok(bound)
}

async fn metrics_page(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let last = state.probes.last_pass.load(Ordering::Relaxed);
    let age = state.clock.now().saturating_sub(last);
    if last != 0 && age <= LIVENESS_LIMIT {
        (StatusCode::OK, "ok\n").into_response()
    } else if last == 0 {
        (StatusCode::OK, "starting\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the agent loop has not run for {} s\n",
                age / MICROS_PER_SEC
            ),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.probes.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = state.probes.not_ready.lock().clone();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response()
    }
}

async fn state(State(state): State<AppState>) -> Response {
    let view = state.views.borrow().clone();
    match serde_json::to_string_pretty(&*view) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}
