//! Everything but generation: health, models, metrics, the GPU view, load, faults.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::AppState;
use crate::clock::{Clock, MICROS_PER_SEC, SystemClock};
use crate::openai::{ApiError, ModelCard, ModelList, ModelPermission};
use crate::sim::faults::{Faults, FaultsPatch, HealthFault, MetricsFault};
use crate::sim::gpu::GpuReport;
use crate::sim::metrics::{MetricsSnapshot, render};
use crate::sim::prom_text::CONTENT_TYPE;
use crate::telemetry::{EndpointLoad, EngineKind, GpuSample};

/// FastAPI's answer for unknown paths, as vLLM sends it.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"detail": "Not Found"})),
    )
        .into_response()
}

pub(crate) async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    match state.faults.lock().faults.health {
        HealthFault::Ok => StatusCode::OK,
        HealthFault::Fail => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let created = state.started_unix;
    let card = |id: &str, root: &str, parent: Option<&str>, max_model_len: Option<u32>, n: u64| {
        ModelCard {
            id: id.to_owned(),
            object: "model".to_owned(),
            created,
            owned_by: state.kind.as_str().to_owned(),
            root: Some(root.to_owned()),
            parent: parent.map(str::to_owned),
            max_model_len,
            permission: vec![ModelPermission::open(
                format!("modelperm-{n:032x}"),
                created,
            )],
        }
    };
    let mut data = vec![card(
        &state.model,
        &state.model,
        None,
        Some(state.max_model_len),
        0,
    )];
    for (index, lora) in state.lora_modules.iter().enumerate() {
        data.push(card(
            &lora.name,
            &lora.path,
            Some(&state.model),
            None,
            index as u64 + 1,
        ));
    }
    Json(ModelList {
        object: "list".to_owned(),
        data,
    })
}

fn render_metrics(state: &AppState) -> String {
    let now = state.clock.now();
    let mut snapshot = {
        let core = state.core.lock();
        MetricsSnapshot::of(&core.engine, &state.model, 0.0)
    };
    let mut memory = state.metrics_memory.lock();
    snapshot.gen_throughput = memory
        .throughput
        .observe(now, snapshot.counters.generation_tokens);
    if let Some(lora) = &snapshot.lora {
        let unix_seconds = SystemClock.now() as f64 / MICROS_PER_SEC as f64;
        memory.lora_history.observe(lora, unix_seconds);
    }
    render(&snapshot, &memory.lora_history)
}

/// `GET /metrics[?name[]=...]`. A vLLM server answers the `name[]` query as prometheus_client's
/// restricted registry does: only the samples named, with their families' HELP and TYPE lines.
/// SGLang runs prometheus_client in multiprocess mode, whose restricted registry is empty; the
/// simulator then ignores the query, and scrapers ask SGLang for whole pages anyway.
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let (mode, delay_ms) = {
        let faults = &state.faults.lock().faults;
        (faults.metrics, faults.metrics_delay_ms)
    };
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let text = match mode {
        MetricsFault::Missing => return not_found().await,
        MetricsFault::Error => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        MetricsFault::Frozen => {
            let mut faults = state.faults.lock();
            faults
                .frozen_metrics
                .get_or_insert_with(|| render_metrics(&state))
                .clone()
        }
        MetricsFault::Normal => render_metrics(&state),
    };
    let names = match state.kind {
        EngineKind::Vllm => query.as_deref().map(requested_names),
        _ => None,
    };
    let text = match names {
        Some(names) if !names.is_empty() => restrict(&text, &names),
        _ => text,
    };
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn live_gpu(state: &AppState) -> GpuSample {
    let mut sample = state.core.lock().engine.gpu(state.clock.now());
    // Stamped with the wall clock: readers age samples against their own clock.
    sample.sampled_at = SystemClock.now();
    sample
}

pub(crate) async fn gpu(State(state): State<Arc<AppState>>) -> Response {
    let sample = {
        let mut faults = state.faults.lock();
        let gpu_faults = faults.faults.gpu.clone();
        if gpu_faults.missing {
            return ApiError::service_unavailable("GPU telemetry unavailable (fault injection).")
                .into_response();
        }
        let mut sample = if gpu_faults.frozen {
            faults
                .frozen_gpu
                .get_or_insert_with(|| live_gpu(&state))
                .clone()
        } else {
            live_gpu(&state)
        };
        gpu_faults.distort(&mut sample);
        sample
    };
    Json(GpuReport { gpus: vec![sample] }).into_response()
}

pub(crate) async fn load(State(state): State<Arc<AppState>>) -> Json<EndpointLoad> {
    let now = state.clock.now();
    Json(state.core.lock().engine.load(now))
}

pub(crate) async fn reset_prefix_cache(State(state): State<Arc<AppState>>) -> StatusCode {
    state.core.lock().engine.reset_prefix_cache();
    StatusCode::OK
}

pub(crate) async fn get_faults(State(state): State<Arc<AppState>>) -> Json<Faults> {
    Json(state.faults.lock().faults.clone())
}

/// Installs `faults`, dropping frozen snapshots no longer wanted and setting the engine's
/// slowdown. Takes the fault lock before the engine lock, as every path does.
fn install(
    state: &AppState,
    update: impl FnOnce(&mut Faults) -> Result<(), ApiError>,
) -> Result<Faults, ApiError> {
    let mut fault_state = state.faults.lock();
    update(&mut fault_state.faults)?;
    if fault_state.faults.metrics != MetricsFault::Frozen {
        fault_state.frozen_metrics = None;
    }
    if !fault_state.faults.gpu.frozen {
        fault_state.frozen_gpu = None;
    }
    let slowdown = fault_state.faults.engine_slowdown();
    state.core.lock().engine.set_runtime_slowdown(slowdown);
    Ok(fault_state.faults.clone())
}

pub(crate) async fn post_faults(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(err) => {
            return ApiError::invalid_body(format!("Invalid fault set: {err}")).into_response();
        }
    };
    let installed = install(&state, |faults| {
        faults
            .apply(patch)
            .map_err(|err| ApiError::bad_request(err.to_string()))
    });
    match installed {
        Ok(faults) => {
            tracing::info!(?faults, "faults changed");
            Json(faults).into_response()
        }
        Err(err) => err.into_response(),
    }
}

pub(crate) async fn delete_faults(State(state): State<Arc<AppState>>) -> Response {
    match install(&state, |faults| {
        *faults = Faults::default();
        Ok(())
    }) {
        Ok(faults) => {
            tracing::info!("faults reset");
            Json(faults).into_response()
        }
        Err(err) => err.into_response(),
    }
}

/// The `name[]` values of a query string (percent-decoded).
fn requested_names(query: &str) -> HashSet<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "name[]")
        .map(|(_, value)| value.into_owned())
        .collect()
}

/// The samples of `text` whose name is in `names`, each family's comment lines kept once before
/// its first kept sample; families with no kept sample are left out entirely.
fn restrict(text: &str, names: &HashSet<String>) -> String {
    let mut out = String::with_capacity(text.len() / 4);
    let mut comments = String::new();
    let mut comments_written = false;
    for line in text.lines() {
        if line.starts_with('#') {
            if line.starts_with("# HELP ") {
                comments.clear();
                comments_written = false;
            }
            if !comments_written {
                comments.push_str(line);
                comments.push('\n');
            }
            continue;
        }
        let name = line
            .split(|c: char| c == '{' || c.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        if names.contains(name) {
            if !comments_written {
                out.push_str(&comments);
                comments_written = true;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"m\"} 2.0\n\
# HELP vllm:prefix_cache_hits Hits.\n# TYPE vllm:prefix_cache_hits counter\n\
vllm:prefix_cache_hits_total{model_name=\"m\"} 10.0\n\
vllm:prefix_cache_hits_created{model_name=\"m\"} 1.7e9\n";

    #[test]
    fn the_query_names_samples_percent_encoded_or_not() {
        let names = requested_names(
            "name%5B%5D=vllm%3Anum_requests_running&name[]=vllm:prefix_cache_hits_total&other=1",
        );
        assert_eq!(names.len(), 2);
        assert!(names.contains("vllm:num_requests_running"));
        assert!(names.contains("vllm:prefix_cache_hits_total"));
    }

    #[test]
    fn only_named_samples_stay_with_their_family_comments() {
        let names: HashSet<String> = ["vllm:prefix_cache_hits_total".to_owned()].into();
        let page = restrict(PAGE, &names);
        assert_eq!(
            page,
            "# HELP vllm:prefix_cache_hits Hits.\n# TYPE vllm:prefix_cache_hits counter\n\
vllm:prefix_cache_hits_total{model_name=\"m\"} 10.0\n"
        );
        // A family name is not a sample name: prometheus_client returns nothing for it.
        let family: HashSet<String> = ["vllm:prefix_cache_hits".to_owned()].into();
        assert_eq!(restrict(PAGE, &family), "");
    }
}
