//! Prometheus metrics of the endpoint picker and the proxy.
//!
//! Names follow GIE's EPP where it has one (`inference_objective_*`, `inference_pool_*`,
//! `inference_extension_scheduler_e2e_duration_seconds`), so existing dashboards and alerts
//! work; Switchyard's own are `switchyard_*`. Model-name labels come from client input, so at
//! most [`MAX_MODEL_LABELS`] distinct names are tracked and the rest count as `other` (an
//! unbounded label set is how a picker runs out of memory).
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::{MICROS_PER_SEC, Micros};
use crate::cluster::Snapshot;

/// Distinct model names tracked as label values.
pub const MAX_MODEL_LABELS: usize = 256;
/// Label value for models beyond [`MAX_MODEL_LABELS`].
pub const OTHER_MODEL: &str = "other";
/// Load samples older than this are left out of the pool averages.
const POOL_AVERAGE_MAX_AGE: Micros = 10 * MICROS_PER_SEC;

type ModelPair = [(&'static str, Arc<str>); 2];
type ModelOnly = [(&'static str, Arc<str>); 1];
type ErrorLabels = [(&'static str, Arc<str>); 3];
type OneLabel = [(&'static str, String); 1];
type TwoLabels = [(&'static str, String); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0,
        1200.0, 1800.0, 2700.0, 3600.0,
    ])
}

fn request_size_histogram() -> Histogram {
    Histogram::new((6..=30).map(|power| f64::from(1u32 << power)))
}

fn response_size_histogram() -> Histogram {
    Histogram::new([
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
        32778.0, 65536.0,
    ])
}

fn input_token_histogram() -> Histogram {
    Histogram::new(
        [1.0, 8.0]
            .into_iter()
            .chain((4..=20).map(|power| f64::from(1u32 << power))),
    )
}

fn output_token_histogram() -> Histogram {
    Histogram::new(
        [1.0, 8.0]
            .into_iter()
            .chain((4..=13).map(|power| f64::from(1u32 << power))),
    )
}

fn per_token_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ])
}

fn first_token_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2,
    ])
}

fn ratio_histogram() -> Histogram {
    Histogram::new((0..=10).map(|tenth| f64::from(tenth) / 10.0))
}

/// Model and target model of one request, as metric labels.
#[derive(Clone, Debug)]
pub struct ModelLabels {
    model: Arc<str>,
    target: Arc<str>,
}

/// Why a request was refused, for `switchyard_rejected_requests_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    BadRequest,
    BodyTooLarge,
    UnknownModel,
    NoEndpoints,
    Saturated,
    Internal,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::BodyTooLarge => "body-too-large",
            Self::UnknownModel => "unknown-model",
            Self::NoEndpoints => "no-endpoints",
            Self::Saturated => "saturated",
            Self::Internal => "internal",
        }
    }
}

/// How one endpoint's load is sourced, for `switchyard_endpoint_load_source`.
#[derive(Clone, Debug)]
pub struct EndpointScrape {
    pub addr: SocketAddr,
    /// `agent` (pushed by a node agent), `scrape` (polled by this process) or `none`.
    pub source: &'static str,
    /// Consecutive failed scrapes (0 for agent-reported endpoints).
    pub consecutive_failures: u32,
}

/// Every metric, registered once.
pub struct Metrics {
    /// Written once more after start by [`Metrics::register_more`] (services started later).
    registry: parking_lot::RwLock<Registry>,
    pool: String,
    models: Mutex<HashSet<Arc<str>>>,
    /// Endpoint label values of the per-endpoint counters, pruned when endpoints leave.
    endpoint_labels: Mutex<HashSet<String>>,
    request_total: Family<ModelPair, Counter>,
    request_error_total: Family<ErrorLabels, Counter>,
    request_duration: HistogramFamily<ModelPair>,
    request_sizes: HistogramFamily<ModelPair>,
    response_sizes: HistogramFamily<ModelPair>,
    input_tokens: HistogramFamily<ModelPair>,
    output_tokens: HistogramFamily<ModelPair>,
    normalized_tpot: HistogramFamily<ModelPair>,
    running_requests: Family<ModelOnly, Gauge>,
    pool_kv: Family<OneLabel, FloatGauge>,
    pool_queue: Family<OneLabel, FloatGauge>,
    pool_ready: Family<OneLabel, Gauge>,
    pool_pod_queue: Family<TwoLabels, Gauge>,
    pick_duration: Histogram,
    routing_duration: Histogram,
    pick_mean: MeanSeconds,
    routing_mean: MeanSeconds,
    first_token: HistogramFamily<ModelPair>,
    per_output_token: HistogramFamily<ModelPair>,
    decisions: Family<OneLabel, Counter>,
    rejected: Family<TwoLabels, Counter>,
    predicted_hit: Histogram,
    realised_hit: Histogram,
    predicted_cached_tokens: Counter,
    realised_cached_tokens: Counter,
    retries: Family<OneLabel, Counter>,
    endpoint_inflight: Family<OneLabel, Gauge>,
    endpoint_load_age: Family<OneLabel, FloatGauge>,
    endpoint_source: Family<TwoLabels, Gauge>,
    endpoint_scrape_failures: Family<OneLabel, Gauge>,
    config_reloads: Family<OneLabel, Counter>,
    active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("pool", &self.pool).finish()
    }
}

impl Metrics {
    /// `pool` labels the `inference_pool_*` gauges (the InferencePool name, or a static name).
    pub fn new(pool: impl Into<String>) -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            pool: pool.into(),
            models: Mutex::new(HashSet::new()),
            endpoint_labels: Mutex::new(HashSet::new()),
            request_total: Family::default(),
            request_error_total: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            request_sizes: Family::new_with_constructor(request_size_histogram),
            response_sizes: Family::new_with_constructor(response_size_histogram),
            input_tokens: Family::new_with_constructor(input_token_histogram),
            output_tokens: Family::new_with_constructor(output_token_histogram),
            normalized_tpot: Family::new_with_constructor(per_token_histogram),
            running_requests: Family::default(),
            pool_kv: Family::default(),
            pool_queue: Family::default(),
            pool_ready: Family::default(),
            pool_pod_queue: Family::default(),
            // GIE's buckets start at 100 µs; picks here take microseconds, so finer ones first.
            pick_duration: Histogram::new([
                0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.0001, 0.0002, 0.0005, 0.001, 0.002,
                0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
            routing_duration: Histogram::new([
                0.000_01, 0.000_02, 0.000_05, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01,
                0.02, 0.05, 0.1,
            ]),
            pick_mean: MeanSeconds::default(),
            routing_mean: MeanSeconds::default(),
            first_token: Family::new_with_constructor(first_token_histogram),
            per_output_token: Family::new_with_constructor(per_token_histogram),
            decisions: Family::default(),
            rejected: Family::default(),
            predicted_hit: ratio_histogram(),
            realised_hit: ratio_histogram(),
            predicted_cached_tokens: Counter::default(),
            realised_cached_tokens: Counter::default(),
            retries: Family::default(),
            endpoint_inflight: Family::default(),
            endpoint_load_age: Family::default(),
            endpoint_source: Family::default(),
            endpoint_scrape_failures: Family::default(),
            config_reloads: Family::default(),
            active: Gauge::default(),
            registry: parking_lot::RwLock::new(Registry::default()),
        };
        let m = &metrics;
        let r = &mut registry;
        r.register(
            "inference_objective_request",
            "Counter of inference objective requests broken out for each model and target model.",
            m.request_total.clone(),
        );
        r.register(
            "inference_objective_request_error",
            "Counter of inference objective requests errors broken out for each model and target model.",
            m.request_error_total.clone(),
        );
        r.register(
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds for each model and target model.",
            m.request_duration.clone(),
        );
        r.register(
            "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes for each model and target model.",
            m.request_sizes.clone(),
        );
        r.register(
            "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes for each model and target model.",
            m.response_sizes.clone(),
        );
        r.register(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests in each model.",
            m.input_tokens.clone(),
        );
        r.register(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests in each model.",
            m.output_tokens.clone(),
        );
        r.register(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Inference objective latency divided by number of output tokens in seconds for each model and target model.",
            m.normalized_tpot.clone(),
        );
        r.register(
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.",
            m.running_requests.clone(),
        );
        r.register(
            "inference_pool_average_kv_cache_utilization",
            "The average kv cache utilization for an inference server pool.",
            m.pool_kv.clone(),
        );
        r.register(
            "inference_pool_average_queue_size",
            "The average number of requests pending in the model server queue.",
            m.pool_queue.clone(),
        );
        r.register(
            "inference_pool_ready_pods",
            "The number of ready pods in the inference server pool.",
            m.pool_ready.clone(),
        );
        r.register(
            "inference_pool_per_pod_queue_size",
            "The total number of queue for each model server pod under the inference pool.",
            m.pool_pod_queue.clone(),
        );
        r.register(
            "inference_extension_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            m.pick_duration.clone(),
        );
        r.register(
            "switchyard_request_routing_duration_seconds",
            "The router's own work per routed request: from the complete body to the decision (parse, prefix hashing left, pick, bookkeeping).",
            m.routing_duration.clone(),
        );
        r.register(
            "switchyard_request_time_to_first_token_seconds",
            "Time from routing to the first streamed event (or first body byte) of the response.",
            m.first_token.clone(),
        );
        r.register(
            "switchyard_request_time_per_output_token_seconds",
            "Mean time between streamed output tokens after the first (streams with usage).",
            m.per_output_token.clone(),
        );
        r.register(
            "switchyard_decisions",
            "Requests routed, by chosen endpoint.",
            m.decisions.clone(),
        );
        r.register(
            "switchyard_rejected_requests",
            "Requests answered by the router itself, by reason and HTTP status.",
            m.rejected.clone(),
        );
        r.register(
            "switchyard_prefix_predicted_hit_ratio",
            "Predicted fraction of the prompt in the chosen endpoint's prefix cache, per decision.",
            m.predicted_hit.clone(),
        );
        r.register(
            "switchyard_prefix_realised_hit_ratio",
            "Realised prefix-cache hit (usage cached_tokens / prompt_tokens), per response that reports it.",
            m.realised_hit.clone(),
        );
        r.register(
            "switchyard_prefix_predicted_cached_tokens",
            "Prompt tokens predicted to be cached (predicted hit x prompt tokens), for responses that report cached tokens.",
            m.predicted_cached_tokens.clone(),
        );
        r.register(
            "switchyard_prefix_realised_cached_tokens",
            "Prompt tokens the engines reported as cached (usage prompt_tokens_details.cached_tokens).",
            m.realised_cached_tokens.clone(),
        );
        r.register(
            "switchyard_retries",
            "Requests moved to a fallback endpoint, by the endpoint that failed.",
            m.retries.clone(),
        );
        r.register(
            "switchyard_endpoint_inflight_requests",
            "Requests this router has in flight per endpoint.",
            m.endpoint_inflight.clone(),
        );
        r.register(
            "switchyard_endpoint_load_age_seconds",
            "Age of the endpoint's latest load sample (absent: never sampled).",
            m.endpoint_load_age.clone(),
        );
        r.register(
            "switchyard_endpoint_load_source",
            "Where the endpoint's load comes from (agent, scrape, none); value 1.",
            m.endpoint_source.clone(),
        );
        r.register(
            "switchyard_endpoint_scrape_consecutive_failures",
            "Consecutive failed metrics scrapes of the endpoint (agent-less mode).",
            m.endpoint_scrape_failures.clone(),
        );
        r.register(
            "switchyard_config_reloads",
            "Scheduler configuration reloads, by result (applied, rejected).",
            m.config_reloads.clone(),
        );
        r.register(
            "switchyard_active_requests",
            "Requests (ext-proc streams or proxied requests) being processed.",
            m.active.clone(),
        );
        Self {
            registry: parking_lot::RwLock::new(registry),
            ..metrics
        }
    }

    /// Registers the metrics of a service started after this (the node-report service), so
    /// one `/metrics` page shows them.
    pub fn register_more(&self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry.write());
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Label values for a request's model and target model (bounded set).
    pub fn model_labels(&self, model: &str, target: &str) -> ModelLabels {
        ModelLabels {
            model: self.bounded(model),
            target: self.bounded(target),
        }
    }

    fn bounded(&self, name: &str) -> Arc<str> {
        let mut models = self.models.lock();
        if let Some(known) = models.get(name) {
            return known.clone();
        }
        if models.len() >= MAX_MODEL_LABELS {
            return Arc::from(OTHER_MODEL);
        }
        let label: Arc<str> = Arc::from(name);
        models.insert(label.clone());
        label
    }

    fn pair(labels: &ModelLabels) -> ModelPair {
        [
            ("model_name", labels.model.clone()),
            ("target_model_name", labels.target.clone()),
        ]
    }

    /// A request was routed.
    pub fn routed(&self, labels: &ModelLabels, request_bytes: usize, endpoint: SocketAddr) {
        let pair = Self::pair(labels);
        self.request_total.get_or_create(&pair).inc();
        self.request_sizes
            .get_or_create(&pair)
            .observe(request_bytes as f64);
        self.decisions
            .get_or_create(&[("endpoint", self.endpoint_label(endpoint))])
            .inc();
        self.running_requests
            .get_or_create(&[("model_name", labels.model.clone())])
            .inc();
    }

    /// A routed request ended (any way); pairs with [`routed`](Self::routed).
    pub fn request_ended(&self, labels: &ModelLabels) {
        self.running_requests
            .get_or_create(&[("model_name", labels.model.clone())])
            .dec();
    }

    /// The router refused a request itself.
    pub fn rejected(&self, labels: Option<&ModelLabels>, reason: RejectReason, status: u16) {
        self.rejected
            .get_or_create(&[
                ("reason", reason.as_str().to_owned()),
                ("code", status.to_string()),
            ])
            .inc();
        if let Some(labels) = labels {
            self.error(labels, &status.to_string());
        }
    }

    /// `inference_objective_request_error_total{error_code}`.
    pub fn error(&self, labels: &ModelLabels, code: &str) {
        self.request_error_total
            .get_or_create(&[
                ("model_name", labels.model.clone()),
                ("target_model_name", labels.target.clone()),
                ("error_code", Arc::from(code)),
            ])
            .inc();
    }

    pub fn pick_latency(&self, seconds: f64) {
        self.pick_duration.observe(seconds);
        self.pick_mean.add(seconds);
    }

    pub fn routing_latency(&self, seconds: f64) {
        self.routing_duration.observe(seconds);
        self.routing_mean.add(seconds);
    }

    /// Mean pick time and mean routing work so far, seconds (for benchmarks).
    pub fn mean_pick_and_routing(&self) -> (f64, f64) {
        (self.pick_mean.mean(), self.routing_mean.mean())
    }

    pub fn predicted_hit(&self, ratio: f64) {
        self.predicted_hit.observe(ratio);
    }

    /// A completed response: latency, sizes, tokens, stream timing, realised prefix hit.
    pub fn completed(&self, labels: &ModelLabels, done: &Completion) {
        let pair = Self::pair(labels);
        self.request_duration
            .get_or_create(&pair)
            .observe(done.duration_s);
        self.response_sizes
            .get_or_create(&pair)
            .observe(done.response_bytes as f64);
        if let Some(first) = done.first_token_s {
            self.first_token.get_or_create(&pair).observe(first);
        }
        if let Some(per_token) = done.per_output_token_s {
            self.per_output_token
                .get_or_create(&pair)
                .observe(per_token);
        }
        let Some(usage) = done.usage else {
            return;
        };
        if usage.prompt_tokens > 0 {
            self.input_tokens
                .get_or_create(&pair)
                .observe(usage.prompt_tokens as f64);
        }
        if usage.completion_tokens > 0 {
            self.output_tokens
                .get_or_create(&pair)
                .observe(usage.completion_tokens as f64);
            self.normalized_tpot
                .get_or_create(&pair)
                .observe(done.duration_s / usage.completion_tokens as f64);
        }
        if let Some(cached) = usage.cached_prompt_tokens
            && usage.prompt_tokens > 0
        {
            let prompt = usage.prompt_tokens as f64;
            self.realised_hit.observe((cached as f64 / prompt).min(1.0));
            self.realised_cached_tokens.inc_by(cached);
            self.predicted_cached_tokens
                .inc_by((done.predicted_hit.clamp(0.0, 1.0) * prompt).round() as u64);
        }
    }

    pub fn retried(&self, failed: SocketAddr) {
        self.retries
            .get_or_create(&[("endpoint", self.endpoint_label(failed))])
            .inc();
    }

    fn endpoint_label(&self, endpoint: SocketAddr) -> String {
        let label = endpoint.to_string();
        let mut labels = self.endpoint_labels.lock();
        if !labels.contains(&label) {
            labels.insert(label.clone());
        }
        label
    }

    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&[("result", result.to_owned())])
            .inc();
    }

    pub fn active(&self) -> &Gauge {
        &self.active
    }

    /// Recomputes the pool and per-endpoint gauges from the endpoint table (called before each
    /// `/metrics` answer, so removed endpoints disappear).
    pub fn refresh(&self, snapshot: &Snapshot, now: Micros, scrapes: &[EndpointScrape]) {
        let mut ready = 0i64;
        let (mut kv_sum, mut queue_sum, mut sampled) = (0.0, 0.0, 0u32);
        self.endpoint_inflight.clear();
        self.endpoint_load_age.clear();
        self.pool_pod_queue.clear();
        let pool = [("name", self.pool.clone())];
        for endpoint in snapshot.endpoints() {
            let addr = endpoint.addr().to_string();
            if endpoint.health.is_ready() {
                ready += 1;
            }
            let live = endpoint.live();
            self.endpoint_inflight
                .get_or_create(&[("endpoint", addr.clone())])
                .set(i64::from(live.inflight_requests()));
            if let Some(load) = live.load() {
                let age = load.age(now);
                self.endpoint_load_age
                    .get_or_create(&[("endpoint", addr.clone())])
                    .set(age as f64 / MICROS_PER_SEC as f64);
                let pod = if endpoint.meta.pod_name.is_empty() {
                    addr
                } else {
                    endpoint.meta.pod_name.clone()
                };
                self.pool_pod_queue
                    .get_or_create(&[("model_server_pod", pod), ("name", self.pool.clone())])
                    .set(i64::from(load.waiting));
                if age <= POOL_AVERAGE_MAX_AGE {
                    kv_sum += f64::from(load.kv_usage);
                    queue_sum += f64::from(load.waiting);
                    sampled += 1;
                }
            }
        }
        self.pool_ready.get_or_create(&pool).set(ready);
        let average = |sum: f64| {
            if sampled == 0 {
                0.0
            } else {
                sum / f64::from(sampled)
            }
        };
        self.pool_kv.get_or_create(&pool).set(average(kv_sum));
        self.pool_queue.get_or_create(&pool).set(average(queue_sum));
        // Counters of endpoints that left the pool go (their series end; rates handle that).
        let members: HashSet<String> = snapshot
            .endpoints()
            .iter()
            .map(|endpoint| endpoint.addr().to_string())
            .collect();
        self.endpoint_labels.lock().retain(|label| {
            let keep = members.contains(label);
            if !keep {
                let labels = [("endpoint", label.clone())];
                self.decisions.remove(&labels);
                self.retries.remove(&labels);
            }
            keep
        });
        self.endpoint_source.clear();
        self.endpoint_scrape_failures.clear();
        for scrape in scrapes {
            let addr = scrape.addr.to_string();
            self.endpoint_source
                .get_or_create(&[
                    ("endpoint", addr.clone()),
                    ("source", scrape.source.to_owned()),
                ])
                .set(1);
            if scrape.source == "scrape" {
                self.endpoint_scrape_failures
                    .get_or_create(&[("endpoint", addr)])
                    .set(i64::from(scrape.consecutive_failures));
            }
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry.read());
        out
    }
}

/// A running mean of durations (prometheus-client's histograms do not expose theirs).
#[derive(Debug, Default)]
struct MeanSeconds {
    nanos: AtomicU64,
    count: AtomicU64,
}

impl MeanSeconds {
    fn add(&self, seconds: f64) {
        self.nanos
            .fetch_add((seconds * 1e9) as u64, std::sync::atomic::Ordering::Relaxed);
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn mean(&self) -> f64 {
        let count = self.count.load(std::sync::atomic::Ordering::Relaxed).max(1);
        self.nanos.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9 / count as f64
    }
}

/// What a finished request reports to [`Metrics::completed`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Completion {
    pub duration_s: f64,
    pub response_bytes: u64,
    pub first_token_s: Option<f64>,
    pub per_output_token_s: Option<f64>,
    pub usage: Option<crate::cluster::TokenUsage>,
    pub predicted_hit: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{EndpointMeta, EndpointTable};
    use crate::telemetry::EndpointLoad;

    #[test]
    fn names_follow_gie_and_labels_are_bounded() {
        let metrics = Metrics::new("pool-a");
        let labels = metrics.model_labels("m", "t");
        metrics.routed(&labels, 100, "10.0.0.1:8000".parse().unwrap());
        metrics.routed(&labels, 100, "10.9.9.9:1".parse().unwrap());
        metrics.request_ended(&labels);
        metrics.rejected(Some(&labels), RejectReason::Saturated, 429);
        metrics.completed(
            &labels,
            &Completion {
                duration_s: 0.5,
                response_bytes: 10,
                usage: Some(crate::cluster::TokenUsage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    cached_prompt_tokens: Some(5),
                }),
                predicted_hit: 0.4,
                ..Completion::default()
            },
        );
        let table = EndpointTable::new();
        table.set_members([EndpointMeta::new("10.0.0.1:8000".parse().unwrap())]);
        table.update_load(
            &"10.0.0.1:8000".parse().unwrap(),
            EndpointLoad {
                waiting: 4,
                kv_cache_usage: 0.5,
                sampled_at: 100,
                seq: 1,
                ..EndpointLoad::default()
            },
        );
        metrics.refresh(&table.snapshot(), 200, &[]);
        let text = metrics.encode();
        for needle in [
            "inference_objective_request_total{model_name=\"m\",target_model_name=\"t\"} 2",
            "inference_objective_request_error_total{model_name=\"m\",target_model_name=\"t\",error_code=\"429\"} 1",
            "inference_objective_running_requests{model_name=\"m\"} 1",
            "inference_pool_ready_pods{name=\"pool-a\"} 1",
            "inference_pool_average_queue_size{name=\"pool-a\"} 4",
            "inference_pool_average_kv_cache_utilization{name=\"pool-a\"} 0.5",
            "switchyard_prefix_realised_cached_tokens_total 5",
            "switchyard_prefix_predicted_cached_tokens_total 4",
            "switchyard_rejected_requests_total{reason=\"saturated\",code=\"429\"} 1",
            "inference_objective_input_tokens_bucket",
            "switchyard_decisions_total{endpoint=\"10.0.0.1:8000\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text.contains("10.9.9.9:1"),
            "a departed endpoint's series are pruned"
        );
        for index in 0..MAX_MODEL_LABELS + 5 {
            metrics.model_labels(&format!("model-{index}"), "t");
        }
        assert_eq!(
            &*metrics.model_labels("yet-another", "t").model,
            OTHER_MODEL
        );
    }
}
