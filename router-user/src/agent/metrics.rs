//! The agent's Prometheus metrics (`/metrics` on `--metrics-port`), all `switchyard_agent_*`.
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The result of one pool update, for `switchyard_agent_map_updates_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapUpdate {
    Written,
    Unchanged,
    Error,
}

/// Every metric the agent exports. Cheap to share (`Arc`); each field is a handle.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Duration of successful and failed metrics scrapes.
    pub scrape_latency: Histogram,
    /// Failed scrapes by endpoint and kind (`parse`, `http`, `timeout`).
    pub scrape_errors: Family<Labels, Counter>,
    /// Dataplane pool updates by result (`written`, `unchanged`, `error`).
    pub map_updates: Family<Labels, Counter>,
    /// The three series of `map_updates`, resolved once (a pass must not allocate labels).
    map_written: Counter,
    map_unchanged: Counter,
    map_errors: Counter,
    /// Selection-table swaps (the eligible set or a weight changed).
    pub table_swaps: Counter,
    /// Age of load samples when a report carries them (sensing → report).
    pub report_sample_age: Histogram,
    /// Time from sending a report to the first cluster view that acknowledges it (an upper
    /// bound: views are sent on change and at least once a second).
    pub report_round_trip: Histogram,
    pub reports_sent: Counter,
    /// Reports not sent because the stream was full (the next one carries the changes).
    pub reports_skipped: Counter,
    pub views_received: Counter,
    /// 1 for the current telemetry source (`nvml`, `sim`, `absent`).
    pub telemetry_state: Family<Labels, Gauge>,
    /// 1 while a report stream to the EPP is open.
    pub epp_connected: Gauge,
    /// Connection attempts to the EPP by result (`ok`, `error`).
    pub epp_connects: Family<Labels, Counter>,
    /// Age of the cluster weights in use, seconds (-1: none received yet).
    pub cluster_weights_age: Gauge<f64, AtomicU64>,
    /// How much the cluster weights count (1 fresh, decaying to 0).
    pub cluster_trust: Gauge<f64, AtomicU64>,
    /// 1 when the agent programs the dataplane, 0 when it runs without steering.
    pub steering: Gauge,
    /// Local score per endpoint, 0..1.
    pub endpoint_score: Family<Labels, Gauge<f64, AtomicU64>>,
    /// 1 when the endpoint is drained.
    pub endpoint_drained: Family<Labels, Gauge>,
    /// Weight programmed per pool and backend.
    pub backend_weight: Family<Labels, Gauge>,
    /// Passes of the main loop (sense, score, program).
    pub passes: Counter,
    /// Duration of one pass (scoring and programming, not waiting).
    pub pass_duration: Histogram,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let seconds = || Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let mut metrics = Self {
            registry: Registry::default(),
            scrape_latency: seconds(),
            scrape_errors: Family::default(),
            map_updates: Family::default(),
            map_written: Counter::default(),
            map_unchanged: Counter::default(),
            map_errors: Counter::default(),
            table_swaps: Counter::default(),
            report_sample_age: seconds(),
            report_round_trip: seconds(),
            reports_sent: Counter::default(),
            reports_skipped: Counter::default(),
            views_received: Counter::default(),
            telemetry_state: Family::default(),
            epp_connected: Gauge::default(),
            epp_connects: Family::default(),
            cluster_weights_age: Gauge::default(),
            cluster_trust: Gauge::default(),
            steering: Gauge::default(),
            endpoint_score: Family::default(),
            endpoint_drained: Family::default(),
            backend_weight: Family::default(),
            passes: Counter::default(),
            pass_duration: seconds(),
        };
        metrics.cluster_weights_age.set(-1.0);
        let series = |result: &str| {
            metrics
                .map_updates
                .get_or_create(&labels([("result", result)]))
                .clone()
        };
        metrics.map_written = series("written");
        metrics.map_unchanged = series("unchanged");
        metrics.map_errors = series("error");
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "switchyard_agent_scrape_latency_seconds",
            "Duration of model-server metrics scrapes",
            self.scrape_latency.clone(),
        );
        r.register(
            "switchyard_agent_scrape_errors",
            "Failed model-server scrapes by endpoint and kind (parse, http, timeout)",
            self.scrape_errors.clone(),
        );
        r.register(
            "switchyard_agent_map_updates",
            "Dataplane pool updates by result (written, unchanged, error)",
            self.map_updates.clone(),
        );
        r.register(
            "switchyard_agent_table_swaps",
            "Selection tables swapped into the dataplane",
            self.table_swaps.clone(),
        );
        r.register(
            "switchyard_agent_report_sample_age_seconds",
            "Age of load samples when a node report carries them",
            self.report_sample_age.clone(),
        );
        r.register(
            "switchyard_agent_report_round_trip_seconds",
            "From sending a node report to the first cluster view acknowledging it (upper bound)",
            self.report_round_trip.clone(),
        );
        r.register(
            "switchyard_agent_reports_sent",
            "Node reports sent to the EPP",
            self.reports_sent.clone(),
        );
        r.register(
            "switchyard_agent_reports_skipped",
            "Node reports not sent because the stream was full",
            self.reports_skipped.clone(),
        );
        r.register(
            "switchyard_agent_views_received",
            "Cluster views received from the EPP",
            self.views_received.clone(),
        );
        r.register(
            "switchyard_agent_telemetry_state",
            "GPU telemetry source (1 for the current state: nvml, sim, absent)",
            self.telemetry_state.clone(),
        );
        r.register(
            "switchyard_agent_epp_connected",
            "1 while a report stream to the EPP is open",
            self.epp_connected.clone(),
        );
        r.register(
            "switchyard_agent_epp_connects",
            "Connection attempts to the EPP by result",
            self.epp_connects.clone(),
        );
        r.register(
            "switchyard_agent_cluster_weights_age_seconds",
            "Age of the cluster weights in use (-1: none yet)",
            self.cluster_weights_age.clone(),
        );
        r.register(
            "switchyard_agent_cluster_trust",
            "How much the cluster weights count (1 fresh, decaying to 0 as they age)",
            self.cluster_trust.clone(),
        );
        r.register(
            "switchyard_agent_steering",
            "1 when the agent programs the eBPF dataplane",
            self.steering.clone(),
        );
        r.register(
            "switchyard_agent_endpoint_score",
            "Local score of each model server, 0..1",
            self.endpoint_score.clone(),
        );
        r.register(
            "switchyard_agent_endpoint_drained",
            "1 when the agent drains the model server",
            self.endpoint_drained.clone(),
        );
        r.register(
            "switchyard_agent_backend_weight",
            "Weight programmed per pool VIP and backend",
            self.backend_weight.clone(),
        );
        r.register(
            "switchyard_agent_passes",
            "Passes of the agent loop (sense, score, program)",
            self.passes.clone(),
        );
        r.register(
            "switchyard_agent_pass_duration_seconds",
            "Duration of one pass of the agent loop",
            self.pass_duration.clone(),
        );
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn set_telemetry_state(&self, state: &str) {
        for label in ["nvml", "sim", "absent"] {
            self.telemetry_state
                .get_or_create(&labels([("state", label)]))
                .set(i64::from(label == state));
        }
    }

    pub fn scrape_error(&self, endpoint: &str, kind: &str) {
        self.scrape_errors
            .get_or_create(&labels([("endpoint", endpoint), ("kind", kind)]))
            .inc();
    }

    /// Counts one pool update: written (something changed in the maps), unchanged, or failed.
    pub fn map_update(&self, result: MapUpdate) {
        match result {
            MapUpdate::Written => self.map_written.inc(),
            MapUpdate::Unchanged => self.map_unchanged.inc(),
            MapUpdate::Error => self.map_errors.inc(),
        };
    }

    pub fn epp_connect(&self, result: &str) {
        self.epp_connects
            .get_or_create(&labels([("result", result)]))
            .inc();
    }

    pub fn endpoint(&self, endpoint: &str, score: f64, drained: bool) {
        self.endpoint_score
            .get_or_create(&labels([("endpoint", endpoint)]))
            .set(score);
        self.endpoint_drained
            .get_or_create(&labels([("endpoint", endpoint)]))
            .set(i64::from(drained));
    }

    pub fn backend_weight(&self, vip: &str, backend: &str, weight: u32) {
        self.backend_weight
            .get_or_create(&labels([("vip", vip), ("backend", backend)]))
            .set(i64::from(weight));
    }

    /// Forgets per-endpoint and per-backend series of endpoints and pools that are gone.
    pub fn forget_endpoint(&self, endpoint: &str) {
        self.endpoint_score
            .remove(&labels([("endpoint", endpoint)]));
        self.endpoint_drained
            .remove(&labels([("endpoint", endpoint)]));
    }

    pub fn forget_backend(&self, vip: &str, backend: &str) {
        self.backend_weight
            .remove(&labels([("vip", vip), ("backend", backend)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_their_names() {
        let metrics = AgentMetrics::new();
        metrics.set_telemetry_state("sim");
        metrics.map_update(MapUpdate::Written);
        metrics.endpoint("10.0.0.1:8000", 0.5, false);
        metrics.backend_weight("10.96.0.1:80", "10.0.0.1:8000", 1000);
        metrics.scrape_latency.observe(0.002);
        let text = metrics.encode();
        for needle in [
            "switchyard_agent_telemetry_state{state=\"sim\"} 1",
            "switchyard_agent_telemetry_state{state=\"nvml\"} 0",
            "switchyard_agent_map_updates_total{result=\"written\"} 1",
            "switchyard_agent_endpoint_score{endpoint=\"10.0.0.1:8000\"} 0.5",
            "switchyard_agent_cluster_weights_age_seconds -1.0",
            "switchyard_agent_scrape_latency_seconds_count 1",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
        metrics.forget_endpoint("10.0.0.1:8000");
        assert!(!metrics.encode().contains("endpoint_score{"));
    }
}
