//! The observability HTTP endpoints: `/metrics` (Prometheus), `/debug/decisions` (recent
//! routing decisions, explained) and `/debug/endpoints` (what the scheduler sees per endpoint).
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::Serving;
use crate::clock::{Clock, MICROS_PER_SEC, SystemClock};

/// Content type of the OpenMetrics text prometheus-client writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics`, `/debug/decisions`, `/debug/endpoints`.
pub fn observability_router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/decisions", get(decisions))
        .route("/debug/endpoints", get(endpoints))
        .with_state(serving)
}

async fn metrics(State(serving): State<Arc<Serving>>) -> Response {
    ([(CONTENT_TYPE, OPENMETRICS)], serving.metrics_text()).into_response()
}

#[derive(Debug, Deserialize)]
struct DecisionsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn decisions(
    State(serving): State<Arc<Serving>>,
    Query(query): Query<DecisionsQuery>,
) -> Response {
    let records = serving
        .admission()
        .decisions()
        .recent(query.limit.unwrap_or(100));
    axum::Json(records).into_response()
}

#[derive(Debug, Serialize)]
struct EndpointView {
    addr: std::net::SocketAddr,
    pod: String,
    health: String,
    inflight_requests: u32,
    inflight_tokens: u64,
    load_age_seconds: Option<f64>,
    waiting: Option<u32>,
    running: Option<u32>,
    kv_cache_usage: Option<f32>,
    routed_total: u64,
    cached_prompt_tokens_total: u64,
    prompt_tokens_total: u64,
}

async fn endpoints(State(serving): State<Arc<Serving>>) -> Response {
    let now = SystemClock.now();
    let snapshot = serving.table().snapshot();
    let views: Vec<EndpointView> = snapshot
        .endpoints()
        .iter()
        .map(|endpoint| {
            let live = endpoint.live();
            let load = live.load();
            let totals = live.totals();
            EndpointView {
                addr: endpoint.addr(),
                pod: endpoint.meta.pod_name.clone(),
                health: endpoint.health.to_string(),
                inflight_requests: live.inflight_requests(),
                inflight_tokens: live.inflight_tokens(),
                load_age_seconds: load.map(|l| l.age(now) as f64 / MICROS_PER_SEC as f64),
                waiting: load.map(|l| l.waiting),
                running: load.map(|l| l.running),
                kv_cache_usage: load.map(|l| l.kv_usage),
                routed_total: totals.routed,
                cached_prompt_tokens_total: totals.cached_prompt_tokens,
                prompt_tokens_total: totals.prompt_tokens,
            }
        })
        .collect();
    axum::Json(views).into_response()
}
