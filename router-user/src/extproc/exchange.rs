//! One ext_proc stream (one HTTP request through Envoy) as a state machine: messages in,
//! answers out, in the order Envoy requires.
//!
//! FULL_DUPLEX_STREAMED (the GIE deployment): nothing is answered until the request body ends
//! (its `end_of_stream` chunk, or the trailers); then the request-headers answer with the
//! destination, then the body back in `streamed_response` chunks (≤ 62,000 bytes, identical
//! bytes unless the model was rewritten), then a trailers answer if the request had trailers.
//! Body chunks after the first end of stream (Envoy #46237's duplicate) are ignored. The response
//! side is answered as it comes: headers at once, every body chunk echoed with its own
//! `end_of_stream`, trailers answered; `usage` and timing are read on the way. BUFFERED mode
//! (announced in `protocol_config`) answers the headers at once and routes on the body message;
//! STREAMED and NONE cannot wait for the body, so they route on the headers.
//!
//! Dropping the exchange (stream EOF, cancel, error) releases the request's in-flight state.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, processing_request,
};
use tonic::Status;

use super::protocol::{
    self, BodyMode, client_destination_headers, header_str, served_endpoint, subset_hint,
};
use crate::serving::policy::OBJECTIVE_HEADERS;
use crate::serving::{Admission, RequestBody, RequestMeta, RequestTracker};

/// Per-server settings of the exchange.
#[derive(Clone, Debug, Default)]
pub struct ExchangeConfig {
    /// Send the ranked list `ip:port,ip:port` instead of the primary alone (for gateways that
    /// retry down the list; GIE's ORIGINAL_DST routing accepts only one address).
    pub destination_fallbacks: bool,
    /// Header carrying the session key, lower-case.
    pub session_header: Option<String>,
}

/// What the stream does after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// An immediate response was sent: end the stream.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request headers yet.
    Start,
    /// Collecting the request body.
    Body,
    /// Routed; the response may come.
    Routed,
    /// Answered with an immediate response.
    Closed,
}

#[derive(Debug)]
struct RequestInfo {
    objective: Option<String>,
    session: Option<String>,
    /// Client-supplied headers of the gateway's destination namespace, to remove.
    remove: Vec<String>,
    received: Instant,
}

/// The state of one stream.
pub struct Exchange {
    admission: Arc<Admission>,
    config: Arc<ExchangeConfig>,
    request_mode: BodyMode,
    response_mode: BodyMode,
    first_message: bool,
    phase: Phase,
    request: Option<RequestInfo>,
    subset: Option<Vec<SocketAddr>>,
    body: Option<RequestBody>,
    /// Request body messages Envoy sent (no body answer may precede the first).
    body_chunks: u32,
    tracker: Option<RequestTracker>,
    response_ended: bool,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("phase", &self.phase)
            .field("request_mode", &self.request_mode)
            .field("response_mode", &self.response_mode)
            .field("body_chunks", &self.body_chunks)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    pub fn new(admission: Arc<Admission>, config: Arc<ExchangeConfig>) -> Self {
        Self {
            admission,
            config,
            request_mode: BodyMode::Duplex,
            response_mode: BodyMode::Duplex,
            first_message: true,
            phase: Phase::Start,
            request: None,
            subset: None,
            body: None,
            body_chunks: 0,
            tracker: None,
            response_ended: false,
        }
    }

    /// Handles one message from Envoy, appending the answers to `out`. An `Err` ends the stream
    /// with that gRPC status (protocol violations only: Envoy never causes them).
    pub fn on_message(
        &mut self,
        message: ProcessingRequest,
        out: &mut Vec<ProcessingResponse>,
    ) -> Result<Step, Status> {
        if self.phase == Phase::Closed {
            return Ok(Step::Close);
        }
        if self.first_message {
            self.first_message = false;
            (self.request_mode, self.response_mode) =
                BodyMode::from_config(message.protocol_config.as_ref());
        }
        let metadata = message.metadata_context.as_ref();
        if matches!(self.phase, Phase::Start | Phase::Body)
            && self.subset.is_none()
            && let Some(hint) = subset_hint(metadata)
        {
            self.subset = Some(hint);
        }
        if let (Some(served), Some(tracker)) = (served_endpoint(metadata), &mut self.tracker) {
            tracker.served(served);
        }
        use processing_request::Request;
        match message.request {
            None => Ok(Step::Continue),
            Some(Request::RequestHeaders(headers)) => self.request_headers(headers, out),
            Some(Request::RequestBody(body)) => self.request_body(body, out),
            Some(Request::RequestTrailers(_)) => self.request_trailers(out),
            Some(Request::ResponseHeaders(headers)) => Ok(self.response_headers(headers, out)),
            Some(Request::ResponseBody(body)) => Ok(self.response_body(body, out)),
            Some(Request::ResponseTrailers(_)) => {
                self.settle();
                out.push(protocol::trailers(false));
                Ok(Step::Continue)
            }
        }
    }

    fn request_headers(
        &mut self,
        headers: HttpHeaders,
        out: &mut Vec<ProcessingResponse>,
    ) -> Result<Step, Status> {
        if self.phase != Phase::Start {
            return Err(Status::failed_precondition(
                "request headers received twice on one stream",
            ));
        }
        let map = headers.headers.as_ref();
        let objective = OBJECTIVE_HEADERS
            .iter()
            .find_map(|name| header_str(map, name))
            .map(str::to_owned);
        let session = self
            .config
            .session_header
            .as_deref()
            .and_then(|name| header_str(map, name))
            .map(str::to_owned);
        self.request = Some(RequestInfo {
            objective,
            session,
            remove: client_destination_headers(map),
            received: Instant::now(),
        });
        let bodyless = headers.end_of_stream
            || matches!(self.request_mode, BodyMode::None | BodyMode::Streamed);
        if bodyless {
            return Ok(self.route_without_body(out));
        }
        self.body = Some(self.admission.body());
        self.phase = Phase::Body;
        if self.request_mode == BodyMode::Buffered {
            // Envoy sends a buffered body only once the headers are answered.
            out.push(protocol::continue_headers(true));
        }
        Ok(Step::Continue)
    }

    /// GET /v1/models and the like, and modes that cannot wait for the body: a light pick.
    fn route_without_body(&mut self, out: &mut Vec<ProcessingResponse>) -> Step {
        match self.admission.pick_bodyless(self.subset.as_deref()) {
            Ok(addr) => {
                let remove = self
                    .request
                    .as_mut()
                    .map(|info| std::mem::take(&mut info.remove))
                    .unwrap_or_default();
                out.push(protocol::route_headers(&addr.to_string(), remove));
                self.phase = Phase::Routed;
                Step::Continue
            }
            Err(rejection) => self.close(&rejection, out),
        }
    }

    fn request_body(
        &mut self,
        body: HttpBody,
        out: &mut Vec<ProcessingResponse>,
    ) -> Result<Step, Status> {
        match self.phase {
            Phase::Start => Err(Status::failed_precondition(
                "request body before the request headers",
            )),
            Phase::Routed => {
                if self.request_mode == BodyMode::Streamed {
                    out.push(protocol::continue_body(true));
                } else {
                    // A chunk after the end of stream (Envoy's duplicate final chunk): ignored.
                    tracing::debug!(
                        bytes = body.body.len(),
                        "request body chunk after end of stream ignored"
                    );
                }
                Ok(Step::Continue)
            }
            Phase::Closed => Ok(Step::Close),
            Phase::Body => {
                self.body_chunks += 1;
                let Some(buffer) = self.body.as_mut() else {
                    return Err(Status::internal("request body state lost"));
                };
                if let Err(err) = buffer.push(&body.body) {
                    let rejection = self.admission.reject_too_large(err);
                    return Ok(self.close(&rejection, out));
                }
                // A buffered body comes in one message, complete even when trailers follow.
                if body.end_of_stream || self.request_mode == BodyMode::Buffered {
                    return Ok(self.route(!body.end_of_stream, out));
                }
                Ok(Step::Continue)
            }
        }
    }

    fn request_trailers(&mut self, out: &mut Vec<ProcessingResponse>) -> Result<Step, Status> {
        match self.phase {
            Phase::Start => Err(Status::failed_precondition(
                "request trailers before the request headers",
            )),
            Phase::Body => {
                if self.route(true, out) == Step::Close {
                    return Ok(Step::Close);
                }
                out.push(protocol::trailers(true));
                Ok(Step::Continue)
            }
            Phase::Routed => {
                out.push(protocol::trailers(true));
                Ok(Step::Continue)
            }
            Phase::Closed => Ok(Step::Close),
        }
    }

    /// The request body is complete: pick, answer the headers, send the body back.
    fn route(&mut self, trailers_follow: bool, out: &mut Vec<ProcessingResponse>) -> Step {
        let (Some(body), Some(info)) = (self.body.take(), self.request.as_mut()) else {
            let rejection = crate::serving::Rejection::internal("request state lost");
            return self.close(&rejection, out);
        };
        let meta = RequestMeta {
            objective: info.objective.as_deref(),
            session: info.session.as_deref(),
            subset: self.subset.as_deref(),
            received: info.received,
        };
        let remove = std::mem::take(&mut info.remove);
        match self.admission.admit(body, &meta) {
            Ok(routed) => {
                let destination = if self.config.destination_fallbacks {
                    routed.decision.endpoint_list()
                } else {
                    routed.decision.primary().to_string()
                };
                if self.request_mode == BodyMode::Buffered {
                    let rewritten = routed.rewritten.then_some(routed.body);
                    out.push(protocol::route_buffered_body(
                        &destination,
                        remove,
                        rewritten,
                    ));
                } else {
                    out.push(protocol::route_headers(&destination, remove));
                    if self.body_chunks > 0 {
                        protocol::streamed_body(true, routed.body, !trailers_follow, out);
                    }
                }
                self.tracker = Some(routed.tracker);
                self.phase = Phase::Routed;
                Step::Continue
            }
            Err(rejection) => self.close(&rejection, out),
        }
    }

    fn close(
        &mut self,
        rejection: &crate::serving::Rejection,
        out: &mut Vec<ProcessingResponse>,
    ) -> Step {
        out.push(protocol::immediate(rejection));
        self.phase = Phase::Closed;
        self.body = None;
        Step::Close
    }

    fn response_headers(
        &mut self,
        headers: HttpHeaders,
        out: &mut Vec<ProcessingResponse>,
    ) -> Step {
        let map = headers.headers.as_ref();
        if let Some(tracker) = &mut self.tracker {
            let status = header_str(map, ":status")
                .and_then(|status| status.parse::<u16>().ok())
                .unwrap_or(200);
            tracker.response_started(status, header_str(map, "content-type"));
        }
        out.push(protocol::continue_headers(false));
        if headers.end_of_stream {
            self.settle();
        }
        Step::Continue
    }

    fn response_body(&mut self, body: HttpBody, out: &mut Vec<ProcessingResponse>) -> Step {
        if self.response_mode != BodyMode::Duplex {
            if let Some(tracker) = &mut self.tracker {
                tracker.response_data(&body.body);
            }
            out.push(protocol::continue_body(false));
            if body.end_of_stream {
                self.settle();
            }
            return Step::Continue;
        }
        if self.response_ended {
            tracing::debug!(
                bytes = body.body.len(),
                "response body chunk after end of stream ignored"
            );
            return Step::Continue;
        }
        if let Some(tracker) = &mut self.tracker {
            tracker.response_data(&body.body);
        }
        let end = body.end_of_stream;
        protocol::streamed_body(false, body.body, end, out);
        if end {
            self.settle();
        }
        Step::Continue
    }

    /// Work deferred until the answers are sent: the prefix index learns the route.
    pub fn after_send(&mut self) {
        if let Some(tracker) = &mut self.tracker {
            tracker.learn();
        }
    }

    /// The response ended: settle in-flight and token accounting.
    fn settle(&mut self) {
        self.response_ended = true;
        if let Some(tracker) = self.tracker.take() {
            tracker.finish();
        }
    }
}
