//! A minimal gateway in front of the endpoint picker: what Envoy does with GIE's ext-proc
//! configuration, reduced to one route. Per request it opens an ext-proc stream (plaintext
//! HTTP/2), sends the request headers and the body with end of stream, takes the destination
//! from the headers answer (or answers the picker's immediate response), forwards the body the
//! picker echoed to that endpoint, then passes the response through the picker as Envoy does in
//! FULL_DUPLEX_STREAMED mode: response headers, each body chunk, end of stream; the client gets
//! the chunks the picker echoes.
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use super::loadgen::CHAT_PATH;
use crate::extproc::envoy;
use crate::openai::ApiError;

/// Largest request body the hop reads.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
struct Hop {
    picker: ExternalProcessorClient<Channel>,
    upstream: Client<HttpConnector, Full<Bytes>>,
}

/// Connects to the picker at `grpc` and serves on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    grpc: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect_lazy();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let hop = Hop {
        picker: ExternalProcessorClient::new(channel),
        upstream: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector),
    };
    let app = Router::new()
        .route(CHAT_PATH, post(forward))
        .with_state(hop);
    let listener = listener.tap_io(|stream| {
        // Streamed chunks are small writes (see the proxy).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

fn bad_gateway(message: impl std::fmt::Display) -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "BadGatewayError",
        format!("hop: {message}"),
        None,
    )
    .into_response()
}

async fn next(answers: &mut Streaming<ProcessingResponse>) -> Result<ProcessingResponse, String> {
    match answers.message().await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err("the picker ended the stream".to_owned()),
        Err(status) => Err(format!("the picker failed: {status}")),
    }
}

async fn forward(State(hop): State<Hop>, headers: HeaderMap, body: Body) -> Response {
    match exchange(hop, headers, body).await {
        Ok(response) => response,
        Err(message) => bad_gateway(message),
    }
}

async fn exchange(hop: Hop, headers: HeaderMap, body: Body) -> Result<Response, String> {
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|err| format!("cannot read the request body: {err}"))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let (tx, rx) = mpsc::channel(64);
    let mut picker = hop.picker.clone();
    let mut answers = picker
        .process(ReceiverStream::new(rx))
        .await
        .map_err(|status| format!("cannot open an ext-proc stream: {status}"))?
        .into_inner();
    let send = |message| {
        let tx = tx.clone();
        async move {
            tx.send(message)
                .await
                .map_err(|_| "the ext-proc stream closed".to_owned())
        }
    };
    send(envoy::request_headers(
        &[
            (":method", "POST"),
            (":path", CHAT_PATH),
            (":scheme", "http"),
            ("content-type", content_type.as_str()),
        ],
        false,
    ))
    .await?;
    send(envoy::request_body(&body, true)).await?;
    let routing = next(&mut answers).await?;
    if let Some(immediate) = envoy::immediate(&routing) {
        let status = immediate
            .status
            .as_ref()
            .and_then(|status| StatusCode::from_u16(status.code as u16).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Ok((
            status,
            [(header::CONTENT_TYPE, "application/json")],
            immediate.body.clone(),
        )
            .into_response());
    }
    let destination = envoy::destination_header(&routing)
        .ok_or_else(|| format!("no destination in the picker's answer: {routing:?}"))?;
    let addr: SocketAddr = destination
        .parse()
        .map_err(|_| format!("the picker chose `{destination}`, not ip:port"))?;
    // The body as the picker passed it on (it may rewrite the model).
    let mut forwarded = Vec::with_capacity(body.len());
    loop {
        let answer = next(&mut answers).await?;
        let Some((chunk, end)) = envoy::streamed_chunk(&answer) else {
            return Err(format!("expected a request body answer, got {answer:?}"));
        };
        forwarded.extend_from_slice(&chunk);
        if end {
            break;
        }
    }
    let request = http::Request::post(format!("http://{addr}{CHAT_PATH}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(forwarded)))
        .map_err(|err| format!("cannot build the upstream request: {err}"))?;
    let response = hop
        .upstream
        .request(request)
        .await
        .map_err(|err| format!("{addr} failed: {err}"))?;
    let (parts, mut upstream_body) = response.into_parts();
    let status = parts.status.as_u16().to_string();
    let response_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    send(envoy::response_headers(
        &[
            (":status", status.as_str()),
            ("content-type", &response_type),
        ],
        false,
    ))
    .await?;
    next(&mut answers).await?;
    // Upstream chunks go to the picker; the client gets what the picker echoes.
    tokio::spawn(async move {
        while let Some(frame) = upstream_body.frame().await {
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if tx.send(envoy::response_body(&data, false)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(envoy::response_body(&[], true)).await;
    });
    let (client_tx, client_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let answer = match next(&mut answers).await {
                Ok(answer) => answer,
                Err(message) => {
                    let _ = client_tx.send(Err(std::io::Error::other(message))).await;
                    return;
                }
            };
            let Some((chunk, end)) = envoy::streamed_chunk(&answer) else {
                continue;
            };
            if !chunk.is_empty() && client_tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if end {
                return;
            }
        }
    });
    let mut out = Response::new(Body::from_stream(ReceiverStream::new(client_rx)));
    *out.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            out.headers_mut().append(name, value.clone());
        }
    }
    Ok(out)
}
