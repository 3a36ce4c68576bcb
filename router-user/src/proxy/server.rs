//! The proxy's HTTP server: OpenAI routes scheduled in-process, `/v1/models` forwarded to a
//! ready endpoint, `/health`, and the observability endpoints (`/metrics`, `/debug/*`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::upstream::{ForwardError, ObservedBody, Upstream, content_type, response_headers};
use crate::openai::ApiError;
use crate::serving::http::observability_router;
use crate::serving::policy::{DROPPED_REASON_HEADER, OBJECTIVE_HEADERS};
use crate::serving::request_body::BodyTooLarge;
use crate::serving::{Rejection, RequestMeta, Serving};

/// Attempts for a bodyless request (one endpoint, then others after connect failures).
const BODYLESS_ATTEMPTS: usize = 3;

/// Where and how the proxy listens and forwards.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// A separate listener for `/metrics` and `/debug/*` (they are on `listen` too).
    pub metrics_listen: Option<SocketAddr>,
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response headers (a long prefill counts).
    pub response_timeout: Duration,
    /// After SIGTERM: `/health` answers 503 this long before the listener closes.
    pub drain_period: Duration,
    /// Longest wait for requests in flight once the listener closed.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

struct ProxyState {
    serving: Arc<Serving>,
    upstream: Upstream,
    draining: AtomicBool,
}

/// The bound proxy.
pub struct ProxyServer {
    config: ProxyConfig,
    state: Arc<ProxyState>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
}

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyServer")
            .field("listen", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// Streamed tokens are small writes: without TCP_NODELAY, Nagle holds each one until the
/// client's delayed ACK (up to 40 ms).
fn set_nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY on a client connection");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

impl ProxyServer {
    pub async fn bind(config: ProxyConfig, serving: Arc<Serving>) -> Result<Self, ProxyError> {
        let listener = bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let state = Arc::new(ProxyState {
            upstream: Upstream::new(config.connect_timeout, config.response_timeout),
            serving,
            draining: AtomicBool::new(false),
        });
        Ok(Self {
            config,
            state,
            listener,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown`, then drains: `/health` 503 for the drain period, then the
    /// listener closes and requests in flight (streams included) finish, up to the timeout.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ProxyError> {
        let observability = observability_router(self.state.serving.clone());
        let app = Router::new()
            .route("/v1/completions", post(route_request))
            .route("/v1/chat/completions", post(route_request))
            .route("/v1/models", get(forward_bodyless))
            .route("/health", get(health))
            .with_state(self.state.clone())
            .merge(observability.clone());
        let stop_accepting = CancellationToken::new();
        let stop = stop_accepting.clone();
        let mut main = tokio::spawn(async move {
            axum::serve(self.listener.tap_io(set_nodelay), app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        let metrics_task = self.metrics.map(|listener| {
            let stop = stop_accepting.clone();
            tokio::spawn(async move {
                axum::serve(listener.tap_io(set_nodelay), observability)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        });
        tracing::info!("proxy serving");
        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            result = &mut main => Some(result),
        };
        let result = match early {
            Some(result) => result,
            None => {
                self.state.draining.store(true, Ordering::Relaxed);
                tracing::info!(
                    drain_seconds = self.config.drain_period.as_secs_f64(),
                    "draining: /health answers 503"
                );
                tokio::time::sleep(self.config.drain_period).await;
                stop_accepting.cancel();
                match tokio::time::timeout(self.config.shutdown_timeout, &mut main).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("requests still open after the shutdown timeout; stopping");
                        main.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        stop_accepting.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        match result {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(err)) => Err(ProxyError::Serve(err)),
        }
    }
}

async fn health(State(state): State<Arc<ProxyState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return error_response(&ApiError::service_unavailable("draining"), None);
    }
    if !state.serving.is_synced() {
        return error_response(
            &ApiError::service_unavailable("the endpoint set is not known yet"),
            None,
        );
    }
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

fn error_response(error: &ApiError, dropped_reason: Option<&'static str>) -> Response {
    let mut response = error.clone().into_response();
    if let Some(reason) = dropped_reason {
        response
            .headers_mut()
            .insert(DROPPED_REASON_HEADER, HeaderValue::from_static(reason));
    }
    response
}

fn bad_gateway(message: String) -> Response {
    error_response(
        &ApiError::from_status(StatusCode::BAD_GATEWAY, message),
        None,
    )
}

fn rejection_response(rejection: &Rejection) -> Response {
    error_response(&rejection.error, rejection.dropped_reason)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Reads the body into one buffer (the one the scanner and the forward use), up to `limit`.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ReadError> {
    let announced = header_str(headers, CONTENT_LENGTH.as_str())
        .and_then(|length| length.parse::<usize>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(ReadError::TooLarge(BodyTooLarge { limit }));
    }
    let mut buffer = Vec::with_capacity(announced.unwrap_or(0).min(limit));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| ReadError::Client(err.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if buffer.len() + data.len() > limit {
                return Err(ReadError::TooLarge(BodyTooLarge { limit }));
            }
            buffer.extend_from_slice(data);
        }
    }
    Ok(buffer)
}

enum ReadError {
    TooLarge(BodyTooLarge),
    Client(String),
}

/// The upstream's answer to the client: status, headers minus hop-by-hop ones, the body
/// streamed through (watched by `tracker` when given).
fn pass_through(
    response: http::Response<hyper::body::Incoming>,
    tracker: Option<crate::serving::RequestTracker>,
) -> Response {
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::new(ObservedBody::new(body, tracker)));
    *out.status_mut() = parts.status;
    *out.headers_mut() = response_headers(&parts.headers);
    out
}

/// `POST /v1/completions`, `POST /v1/chat/completions`.
async fn route_request(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let received = Instant::now();
    let admission = state.serving.admission().clone();
    let (parts, body) = request.into_parts();
    let bytes = match read_body(body, &parts.headers, admission.max_body_bytes()).await {
        Ok(bytes) => bytes,
        Err(ReadError::TooLarge(err)) => {
            return rejection_response(&admission.reject_too_large(err));
        }
        Err(ReadError::Client(reason)) => {
            return error_response(
                &ApiError::invalid_body(format!("cannot read the request body: {reason}")),
                None,
            );
        }
    };
    let mut request_body = admission.body();
    if let Err(err) = request_body.push_owned(bytes) {
        return rejection_response(&admission.reject_too_large(err));
    }
    let session = state
        .serving
        .session_header()
        .and_then(|name| header_str(&parts.headers, name.as_str()));
    let meta = RequestMeta {
        objective: OBJECTIVE_HEADERS
            .iter()
            .find_map(|name| header_str(&parts.headers, name)),
        session,
        subset: None,
        received,
    };
    let routed = match admission.admit(request_body, &meta) {
        Ok(routed) => routed,
        Err(rejection) => return rejection_response(&rejection),
    };
    let mut tracker = routed.tracker;
    // Before forwarding, so concurrent requests with this prefix already see where it went.
    tracker.learn();
    let body = Bytes::from(routed.body);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let candidates: Vec<SocketAddr> = std::iter::once(routed.decision.primary())
        .chain(routed.decision.fallbacks())
        .collect();
    let availability = state.serving.availability();
    let mut last_error = None;
    for (attempt, addr) in candidates.iter().copied().enumerate() {
        if attempt > 0 {
            tracker.retry_on(addr);
        }
        match state
            .upstream
            .send(addr, &parts.method, &path, &parts.headers, body.clone())
            .await
        {
            Ok(response) => {
                availability.answered(addr, response.status().as_u16());
                tracker
                    .response_started(response.status().as_u16(), content_type(response.headers()));
                return pass_through(response, Some(tracker));
            }
            Err(ForwardError::Connect { addr, reason }) => {
                tracing::warn!(endpoint = %addr, %reason, "connect failed; trying the next endpoint");
                availability.connect_failed(addr, &reason);
                last_error = Some(format!("cannot connect to {addr}: {reason}"));
            }
            Err(err @ ForwardError::Timeout { .. }) => {
                tracing::warn!(error = %err, "upstream timed out");
                return error_response(
                    &ApiError::from_status(StatusCode::GATEWAY_TIMEOUT, err.to_string()),
                    None,
                );
            }
            Err(err @ ForwardError::Failed { .. }) => {
                tracing::warn!(error = %err, "upstream failed after the request was sent");
                return bad_gateway(err.to_string());
            }
        }
    }
    bad_gateway(format!(
        "no endpoint could be reached ({} tried): {}",
        candidates.len(),
        last_error.unwrap_or_default()
    ))
}

/// `GET /v1/models`: forwarded to a ready endpoint (the least busy one).
async fn forward_bodyless(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let admission = state.serving.admission();
    let mut last_error = String::new();
    for _ in 0..BODYLESS_ATTEMPTS {
        let addr = match admission.pick_bodyless(None) {
            Ok(addr) => addr,
            Err(rejection) => return rejection_response(&rejection),
        };
        match state
            .upstream
            .send(addr, &parts.method, &path, &parts.headers, Bytes::new())
            .await
        {
            Ok(response) => {
                state
                    .serving
                    .availability()
                    .answered(addr, response.status().as_u16());
                return pass_through(response, None);
            }
            Err(ForwardError::Connect { addr, reason }) => {
                state.serving.availability().connect_failed(addr, &reason);
                last_error = reason;
            }
            Err(err) => {
                return bad_gateway(err.to_string());
            }
        }
    }
    bad_gateway(format!("no endpoint could be reached: {last_error}"))
}
