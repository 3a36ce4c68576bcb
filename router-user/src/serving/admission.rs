//! From a complete request body to a routing decision, or to the error the client gets: the
//! part of request handling the endpoint picker and the proxy share.
//!
//! Status mapping (the endpoint-picker protocol's, in OpenAI's error shape):
//! 400 body not JSON / no `model` / bad field types; 413 body over the limit; 404 no endpoint
//! serves the model (when endpoints declare their models); 503 no eligible endpoint (empty pool,
//! empty or foreign subset hint, none ready); 429 a sheddable request (negative priority) while
//! every candidate is saturated. 429 and 503 carry `x-llm-d-request-dropped-reason`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::StatusCode;

use super::decisions::{DecisionContext, DecisionLog};
use super::metrics::{Metrics, ModelLabels, RejectReason};
use super::policy::{ModelRewrites, Objectives};
use super::request_body::{BodyTooLarge, RequestBody};
use super::tracker::{RequestTracker, RouteMemo, StartedRoute};
use crate::clock::Clock;
use crate::cluster::EndpointTable;
use crate::openai::{ApiError, RoutingViewError, parse_routing_view};
use crate::scheduling::{Decision, NoEndpoints, PickError, SchedulerHandle, SchedulingRequest};

/// Bytes of prompt per token, for the in-flight token estimate before the engine reports usage.
const BYTES_PER_TOKEN: usize = 4;

/// What the request says about itself besides its body.
#[derive(Clone, Copy, Debug)]
pub struct RequestMeta<'a> {
    /// `x-gateway-inference-objective`.
    pub objective: Option<&'a str>,
    /// Session key for session affinity (the configured session header).
    pub session: Option<&'a str>,
    /// Envoy's subset hint: pick only among these; `Some(&[])` means none may be picked.
    pub subset: Option<&'a [SocketAddr]>,
    /// When the request arrived (headers), for the request-duration metric.
    pub received: Instant,
}

/// The router answers the request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub error: ApiError,
    /// Value for `x-llm-d-request-dropped-reason`, when the request was dropped for capacity.
    pub dropped_reason: Option<&'static str>,
    pub reason: RejectReason,
}

impl Rejection {
    pub fn status(&self) -> u16 {
        self.error.status.as_u16()
    }

    /// The OpenAI-shaped JSON body.
    pub fn body_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(&self.error.body).unwrap_or_default()
    }

    fn new(error: ApiError, reason: RejectReason, dropped_reason: Option<&'static str>) -> Self {
        Self {
            error,
            dropped_reason,
            reason,
        }
    }

    pub fn bad_request(err: &RoutingViewError) -> Self {
        Self::new(
            ApiError::invalid_body(err.to_string()),
            RejectReason::BadRequest,
            None,
        )
    }

    pub fn too_large(err: BodyTooLarge) -> Self {
        Self::new(
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE, err.to_string()),
            RejectReason::BodyTooLarge,
            None,
        )
    }

    pub fn no_endpoints(message: impl Into<String>) -> Self {
        Self::new(
            ApiError::service_unavailable(message),
            RejectReason::NoEndpoints,
            Some("rejected-no-endpoints"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            ApiError::internal(message),
            RejectReason::Internal,
            Some("rejected-internal"),
        )
    }

    pub fn from_pick(err: &PickError) -> Self {
        match err {
            PickError::NoEndpoints(NoEndpoints::NoModel(model)) => Self::new(
                ApiError::model_not_found(model),
                RejectReason::UnknownModel,
                Some(err.dropped_reason()),
            ),
            PickError::NoEndpoints(_) => Self::no_endpoints(err.to_string()),
            PickError::Saturated { .. } => Self::new(
                ApiError::from_status(StatusCode::TOO_MANY_REQUESTS, err.to_string()),
                RejectReason::Saturated,
                Some(err.dropped_reason()),
            ),
        }
    }
}

/// A request that was routed.
#[derive(Debug)]
pub struct Routed {
    pub decision: Decision,
    /// The body to forward (model-rewritten when a rewrite applied).
    pub body: Vec<u8>,
    pub rewritten: bool,
    /// Follows the request to its end; settles in-flight and token accounting.
    pub tracker: RequestTracker,
}

/// The shared state every request is routed with.
pub struct Admission {
    pub(super) table: Arc<EndpointTable>,
    pub(super) scheduler: Arc<SchedulerHandle>,
    rewrites: Arc<ModelRewrites>,
    objectives: Arc<Objectives>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) decisions: Arc<DecisionLog>,
    pub(super) clock: Arc<dyn Clock>,
    max_body_bytes: usize,
    draws: AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// What [`Admission::new`] is built from.
pub struct AdmissionParts {
    pub table: Arc<EndpointTable>,
    pub scheduler: Arc<SchedulerHandle>,
    pub rewrites: Arc<ModelRewrites>,
    pub objectives: Arc<Objectives>,
    pub metrics: Arc<Metrics>,
    pub decisions: Arc<DecisionLog>,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
}

impl Admission {
    pub fn new(parts: AdmissionParts) -> Self {
        Self {
            table: parts.table,
            scheduler: parts.scheduler,
            rewrites: parts.rewrites,
            objectives: parts.objectives,
            metrics: parts.metrics,
            decisions: parts.decisions,
            clock: parts.clock,
            max_body_bytes: parts.max_body_bytes,
            draws: AtomicU64::new(0),
        }
    }

    pub fn table(&self) -> &Arc<EndpointTable> {
        &self.table
    }

    pub fn scheduler(&self) -> &Arc<SchedulerHandle> {
        &self.scheduler
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn decisions(&self) -> &Arc<DecisionLog> {
        &self.decisions
    }

    pub fn objectives(&self) -> &Arc<Objectives> {
        &self.objectives
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// A new body buffer, hashing with the scheduler that is current now.
    pub fn body(&self) -> RequestBody {
        RequestBody::new(
            self.scheduler.current(),
            self.rewrites.clone(),
            self.max_body_bytes,
        )
    }

    /// Counts and returns a 413 for a body that grew past the limit.
    pub fn reject_too_large(&self, err: BodyTooLarge) -> Rejection {
        let rejection = Rejection::too_large(err);
        self.metrics
            .rejected(None, rejection.reason, rejection.status());
        rejection
    }

    /// Parses the complete body, picks an endpoint and starts counting the request there.
    pub fn admit(
        self: &Arc<Self>,
        body: RequestBody,
        meta: &RequestMeta<'_>,
    ) -> Result<Routed, Rejection> {
        let admitted_at = Instant::now();
        let view = match parse_routing_view(body.bytes()) {
            Ok(view) => view,
            Err(err) => {
                let rejection = Rejection::bad_request(&err);
                self.metrics
                    .rejected(None, rejection.reason, rejection.status());
                return Err(rejection);
            }
        };
        let target = self.rewrites.target(&view.model).to_owned();
        let labels = self.metrics.model_labels(&view.model, &target);
        let scheduler = body.scheduler().clone();
        let finished = body.finish(&view, &target);
        let priority = self.objectives.priority(meta.objective);
        let input_tokens =
            u32::try_from(view.prompt.len().div_ceil(BYTES_PER_TOKEN).max(1)).unwrap_or(u32::MAX);
        let max_tokens = view
            .max_tokens
            .map(|tokens| u32::try_from(tokens).unwrap_or(u32::MAX));
        let request = SchedulingRequest {
            model: &target,
            lora: None,
            prefix: &finished.prefix,
            input_tokens,
            max_tokens,
            priority,
            session: meta.session,
            subset: meta.subset,
        };
        let snapshot = self.table.snapshot();
        let now = self.clock.now();
        let started = Instant::now();
        let picked = scheduler.pick(&request, &snapshot, now);
        let pick_time = started.elapsed();
        self.metrics.pick_latency(pick_time.as_secs_f64());
        let decision = match picked {
            Ok(decision) => decision,
            Err(err) => return Err(self.refuse(&err, &labels, &view.model, priority)),
        };
        // The prefix index learns where this prompt went after the answer is on its way
        // (`RequestTracker::learn`): for a long prompt that is tens of microseconds.
        let Some(guard) = snapshot.begin(&decision.primary(), request.estimated_tokens()) else {
            // The primary left the pool between snapshot and route: only possible with a
            // snapshot taken before a membership change, and the next request sees the new one.
            let rejection = Rejection::no_endpoints("the chosen endpoint left the pool");
            self.metrics
                .rejected(Some(&labels), rejection.reason, rejection.status());
            return Err(rejection);
        };
        let primary = decision.primary();
        self.metrics.routed(&labels, finished.original_len, primary);
        self.metrics.predicted_hit(decision.predicted_prefix_hit);
        let decision_id = self.decisions.record(
            &decision,
            DecisionContext {
                at: now,
                model: &view.model,
                target_model: &target,
                priority,
                prompt_blocks: finished.prefix.len(),
                pick_micros: pick_time.as_micros() as u64,
            },
        );
        tracing::debug!(
            decision = decision_id,
            model = %view.model,
            target_model = %target,
            priority,
            endpoint = %primary,
            "routed: {}",
            decision.explain()
        );
        let memo = RouteMemo {
            model: target,
            prefix: finished.prefix,
            session: meta.session.map(str::to_owned),
            input_tokens,
            max_tokens,
            priority,
        };
        self.metrics
            .routing_latency(admitted_at.elapsed().as_secs_f64());
        let route = StartedRoute {
            guard,
            memo,
            picked_by: (scheduler, decision.at),
            decision_id,
            predicted_hit: decision.predicted_prefix_hit,
        };
        let tracker = RequestTracker::start(self.clone(), labels, route, meta.received);
        Ok(Routed {
            decision,
            body: finished.bytes,
            rewritten: finished.rewritten,
            tracker,
        })
    }

    fn refuse(
        &self,
        err: &PickError,
        labels: &ModelLabels,
        model: &str,
        priority: i32,
    ) -> Rejection {
        let rejection = Rejection::from_pick(err);
        self.metrics
            .rejected(Some(labels), rejection.reason, rejection.status());
        tracing::debug!(model, priority, status = rejection.status(), error = %err, "request refused");
        rejection
    }

    /// A ready endpoint for a request without a body (GET /v1/models, health checks): the one
    /// with the fewest requests in flight from this router, ties broken at random. Honours the
    /// subset hint.
    pub fn pick_bodyless(&self, subset: Option<&[SocketAddr]>) -> Result<SocketAddr, Rejection> {
        let snapshot = self.table.snapshot();
        let draw = mix(self.draws.fetch_add(1, Ordering::Relaxed));
        let mut best: Option<(u32, u64, SocketAddr)> = None;
        for (position, endpoint) in snapshot.endpoints().iter().enumerate() {
            if !snapshot.is_ready(position) {
                continue;
            }
            let addr = endpoint.addr();
            if subset.is_some_and(|allowed| !allowed.contains(&addr)) {
                continue;
            }
            let key = (
                endpoint.live().inflight_requests(),
                mix(draw ^ position as u64),
                addr,
            );
            if best.is_none_or(|current| (key.0, key.1) < (current.0, current.1)) {
                best = Some(key);
            }
        }
        match best {
            Some((_, _, addr)) => Ok(addr),
            None => {
                let message = match subset {
                    Some([]) => "the subset hint is empty".to_owned(),
                    Some(_) => {
                        "no endpoint of the subset hint is a ready member of the pool".to_owned()
                    }
                    None => "no ready endpoint in the pool".to_owned(),
                };
                let rejection = Rejection::no_endpoints(message);
                self.metrics
                    .rejected(None, rejection.reason, rejection.status());
                Err(rejection)
            }
        }
    }
}

/// splitmix64: spreads a counter into a well-mixed tie-break key.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
