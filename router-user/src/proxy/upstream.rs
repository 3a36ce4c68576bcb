//! Talking to model servers: a pooled keep-alive HTTP/1.1 client, request forwarding with retry
//! on connect failure, and the response body passed through frame by frame while the request
//! tracker watches it (usage, time to first token) without copying it.
//!
//! Retry rule: only a failed connect moves a request to the next fallback (nothing reached the
//! upstream); once a connection carried the request, a failure is answered 502 and never
//! retried (the engine may be generating already).
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::serving::RequestTracker;
use crate::serving::policy::DESTINATION_HEADER_PREFIX;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The pooled client to every model server.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    response_timeout: Duration,
}

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Nothing was sent: safe to try another endpoint.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The request may have reached the server: not retried.
    #[error("{addr} failed: {reason}")]
    Failed { addr: SocketAddr, reason: String },
    #[error("{addr} sent no response headers within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

impl Upstream {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self {
            client,
            response_timeout,
        }
    }

    /// Sends `method path` with `body` and the client's `headers` to `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, ForwardError> {
        let uri: Uri = format!("http://{addr}{path_and_query}")
            .parse()
            .map_err(|err| ForwardError::Failed {
                addr,
                reason: format!("bad upstream URI: {err}"),
            })?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Full::new(body))
            .map_err(|err| ForwardError::Failed {
                addr,
                reason: err.to_string(),
            })?;
        copy_request_headers(headers, request.headers_mut());
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => {
                let reason = crate::telemetry::http::error_chain(&err);
                if err.is_connect() {
                    Err(ForwardError::Connect { addr, reason })
                } else {
                    Err(ForwardError::Failed { addr, reason })
                }
            }
            Err(_) => Err(ForwardError::Timeout {
                addr,
                timeout: self.response_timeout,
            }),
        }
    }
}

fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn forwardable(name: &HeaderName, listed: &[HeaderName]) -> bool {
    !HOP_BY_HOP.contains(&name.as_str()) && !listed.contains(name)
}

/// The client's headers minus hop-by-hop ones, `host` (the client sets it from the URI),
/// `content-length` (recomputed from the body, which a rewrite may change) and the gateway's
/// destination headers (a client must not steer or spoof).
fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let listed = connection_listed(from);
    for (name, value) in from {
        if forwardable(name, &listed)
            && name != header::HOST
            && name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && !name.as_str().starts_with(DESTINATION_HEADER_PREFIX)
        {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The upstream's response headers minus hop-by-hop ones.
pub fn response_headers(from: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(from);
    let mut to = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if forwardable(name, &listed) && name != header::TRANSFER_ENCODING {
            to.append(name.clone(), value.clone());
        }
    }
    to
}

/// The content type of a response, for the tracker.
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value: &HeaderValue| value.to_str().ok())
}

/// The upstream body passed through to the client frame by frame; the tracker sees each data
/// frame by reference and settles at the end (or, if the client goes away first, on drop).
pub struct ObservedBody {
    inner: Incoming,
    tracker: Option<RequestTracker>,
}

impl ObservedBody {
    pub fn new(inner: Incoming, mut tracker: Option<RequestTracker>) -> Self {
        // An empty body is never polled: settle at once.
        if inner.is_end_stream()
            && let Some(tracker) = tracker.take()
        {
            tracker.finish();
        }
        Self { inner, tracker }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(tracker)) = (frame.data_ref(), this.tracker.as_mut()) {
                    tracker.response_data(data);
                }
                // hyper stops polling once the body says it ended: settle now, not on drop.
                if this.inner.is_end_stream()
                    && let Some(tracker) = this.tracker.take()
                {
                    tracker.finish();
                }
            }
            Poll::Ready(None) => {
                if let Some(tracker) = this.tracker.take() {
                    tracker.finish();
                }
            }
            // An upstream error mid-body: the tracker is dropped with the body (cancelled).
            Poll::Ready(Some(Err(_))) => {
                this.tracker = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_gateway_headers_are_not_forwarded() {
        let mut from = HeaderMap::new();
        from.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        from.insert("x-secret", HeaderValue::from_static("1"));
        from.insert("host", HeaderValue::from_static("proxy"));
        from.insert("content-length", HeaderValue::from_static("10"));
        from.insert(
            "x-gateway-destination-endpoint",
            HeaderValue::from_static("6.6.6.6:1"),
        );
        from.insert("authorization", HeaderValue::from_static("Bearer t"));
        from.insert(
            "x-gateway-inference-objective",
            HeaderValue::from_static("chat"),
        );
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec!["authorization", "x-gateway-inference-objective"]
        );
        let response = response_headers(&from);
        assert!(response.get("x-secret").is_none());
        assert!(response.get("content-length").is_some());
    }
}
