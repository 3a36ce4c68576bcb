//! The keep-alive HTTP GET both pollers use (model-server `/metrics`, simulated `/sim/gpu`):
//! one pooled hyper client, bodies read into a buffer the caller reuses, a size cap so a runaway
//! page cannot exhaust memory (llm-d's EPP was OOM-killed by exactly that).
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a GET failed before any content could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Body(String),
}

/// A pooled HTTP/1.1 client for small, frequent GETs to pods on this node.
#[derive(Clone, Debug)]
pub struct HttpGetter {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpGetter {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self { client }
    }

    /// GETs `uri` and appends the body to `buf` (cleared first). The caller bounds the time.
    pub async fn get_into(
        &self,
        uri: &Uri,
        accept: &'static str,
        buf: &mut Vec<u8>,
        max_bytes: usize,
    ) -> Result<(), HttpError> {
        buf.clear();
        let request = Request::get(uri.clone())
            .header(ACCEPT, accept)
            .body(Empty::new())
            .map_err(|err| HttpError::Request(err.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| HttpError::Request(error_chain(&err)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpError::Status(status.as_u16()));
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        if announced.is_some_and(|length| length > max_bytes) {
            return Err(HttpError::TooLarge { limit: max_bytes });
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| HttpError::Body(error_chain(&err)))?;
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > max_bytes {
                    return Err(HttpError::TooLarge { limit: max_bytes });
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(())
    }
}

/// An error with its sources: hyper's top-level messages ("client error (Connect)") say little.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}
