//! Follows one routed request to its end: moves its in-flight count when it is served elsewhere
//! (a gateway retry, a proxy fallback), watches the response for usage and timing, and settles
//! everything exactly once: on the response's end, or, when dropped early (client reset, stream
//! error, cancel), by releasing the in-flight state without usage.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::admission::Admission;
use super::decisions::Outcome;
use super::metrics::{Completion, ModelLabels};
use super::usage::{Observed, ResponseObserver};
use crate::clock::Micros;
use crate::cluster::Inflight;
use crate::scheduling::{BlockHash, Scheduler, SchedulingRequest};

/// What the scheduler needs to teach its index when the request lands somewhere else.
#[derive(Clone, Debug)]
pub struct RouteMemo {
    pub model: String,
    pub prefix: Vec<BlockHash>,
    pub session: Option<String>,
    pub input_tokens: u32,
    pub max_tokens: Option<u32>,
    pub priority: i32,
}

impl RouteMemo {
    fn request(&self) -> SchedulingRequest<'_> {
        SchedulingRequest {
            model: &self.model,
            lora: None,
            prefix: &self.prefix,
            input_tokens: self.input_tokens,
            max_tokens: self.max_tokens,
            priority: self.priority,
            session: self.session.as_deref(),
            subset: None,
        }
    }
}

/// A decision acted on: what a tracker starts from.
pub(super) struct StartedRoute {
    pub guard: Inflight,
    pub memo: RouteMemo,
    /// The scheduler that picked, and the time it picked at.
    pub picked_by: (Arc<Scheduler>, Micros),
    pub decision_id: u64,
    pub predicted_hit: f64,
}

/// One routed request until its response ends.
pub struct RequestTracker {
    admission: Arc<Admission>,
    labels: ModelLabels,
    guard: Option<Inflight>,
    addr: SocketAddr,
    memo: RouteMemo,
    /// The scheduler that picked, and when, until the prefix index learned the route.
    unlearned: Option<(Arc<Scheduler>, Micros)>,
    decision_id: u64,
    predicted_hit: f64,
    received: Instant,
    routed: Instant,
    status: Option<u16>,
    observer: Option<ResponseObserver>,
    settled: bool,
}

impl std::fmt::Debug for RequestTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTracker")
            .field("addr", &self.addr)
            .field("decision_id", &self.decision_id)
            .field("status", &self.status)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl RequestTracker {
    pub(super) fn start(
        admission: Arc<Admission>,
        labels: ModelLabels,
        route: StartedRoute,
        received: Instant,
    ) -> Self {
        admission.metrics.active().inc();
        Self {
            addr: route.guard.addr(),
            admission,
            labels,
            guard: Some(route.guard),
            memo: route.memo,
            unlearned: Some(route.picked_by),
            decision_id: route.decision_id,
            predicted_hit: route.predicted_hit,
            received,
            routed: Instant::now(),
            status: None,
            observer: None,
            settled: false,
        }
    }

    /// The endpoint the request is counted against.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn decision_id(&self) -> u64 {
        self.decision_id
    }

    /// Teaches the scheduler (prefix index, sessions) that the request went to its endpoint.
    /// Call once the routing answer is on its way; later calls do nothing.
    pub fn learn(&mut self) {
        if let Some((scheduler, at)) = self.unlearned.take() {
            scheduler.on_routed(&self.memo.request(), self.addr, at);
        }
    }

    /// The gateway reports the endpoint that served (`x-gateway-destination-endpoint-served`).
    pub fn served(&mut self, addr: SocketAddr) {
        if addr != self.addr {
            tracing::debug!(decision = self.decision_id, chosen = %self.addr, served = %addr,
                "served by another endpoint than the one chosen");
            self.move_to(addr);
        }
    }

    /// The proxy retries on `addr` after failing to connect to the current endpoint.
    pub fn retry_on(&mut self, addr: SocketAddr) {
        self.admission.metrics.retried(self.addr);
        self.move_to(addr);
    }

    /// Moves the in-flight count and teaches the scheduler where the prompt really went.
    fn move_to(&mut self, addr: SocketAddr) {
        // The endpoint it lands on is learned below, not the one first chosen.
        self.unlearned = None;
        let tokens = self.guard.as_ref().map_or(0, Inflight::tokens);
        // Release the old count before taking the new one.
        self.guard = None;
        self.guard = self.admission.table.begin(&addr, tokens);
        let now = self.admission.clock.now();
        self.admission
            .scheduler
            .current()
            .on_routed(&self.memo.request(), addr, now);
        self.addr = addr;
        self.admission
            .decisions
            .update(self.decision_id, |realised| {
                realised.served = Some(addr);
            });
    }

    /// The response's status and content type arrived.
    pub fn response_started(&mut self, status: u16, content_type: Option<&str>) {
        self.status = Some(status);
        self.observer = Some(ResponseObserver::new(content_type, self.routed));
    }

    /// Response body bytes went by.
    pub fn response_data(&mut self, chunk: &[u8]) {
        let routed = self.routed;
        self.observer
            .get_or_insert_with(|| ResponseObserver::new(None, routed))
            .observe(chunk, Instant::now());
    }

    /// What was observed so far.
    pub fn observed(&self) -> Observed {
        self.observer
            .as_ref()
            .map(ResponseObserver::observed)
            .unwrap_or_default()
    }

    /// The response ended normally: settle with its usage.
    pub fn finish(mut self) -> Observed {
        self.settle(Outcome::Completed)
    }

    fn settle(&mut self, outcome: Outcome) -> Observed {
        if self.settled {
            return self.observed();
        }
        self.settled = true;
        if outcome == Outcome::Completed {
            self.learn();
        }
        let observed = self
            .observer
            .as_mut()
            .map(ResponseObserver::finish)
            .unwrap_or_default();
        let metrics = &self.admission.metrics;
        if let Some(guard) = self.guard.take() {
            match (&outcome, observed.usage) {
                (Outcome::Completed, Some(usage)) => guard.complete(&usage),
                _ => drop(guard),
            }
        }
        if outcome == Outcome::Completed {
            if let Some(status) = self.status.filter(|status| *status >= 400) {
                metrics.error(&self.labels, &status.to_string());
            }
            metrics.completed(
                &self.labels,
                &Completion {
                    duration_s: self.received.elapsed().as_secs_f64(),
                    response_bytes: observed.bytes,
                    first_token_s: observed.first_token.map(|d| d.as_secs_f64()),
                    per_output_token_s: observed.per_output_token.map(|d| d.as_secs_f64()),
                    usage: observed.usage,
                    predicted_hit: self.predicted_hit,
                },
            );
        }
        metrics.request_ended(&self.labels);
        metrics.active().dec();
        self.admission.decisions.settle(
            self.decision_id,
            self.addr,
            self.status,
            observed.usage.as_ref(),
            outcome,
        );
        observed
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Outcome::Cancelled);
        }
    }
}
