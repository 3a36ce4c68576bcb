//! An in-process endpoint picker on 127.0.0.1 and a gRPC client that plays Envoy's side of the
//! ext_proc protocol, checking every answer against the rules Envoy enforces
//! (`/work/shared/notes/extproc.md`): headers answer first, duplex body answers are
//! `streamed_response` chunks of at most 62,000 bytes, header mutations use `raw_value` only,
//! the destination header equals the `envoy.lb` metadata value.
#![allow(dead_code, unused_imports)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    ImmediateResponse, ProcessingRequest, ProcessingResponse, ProtocolConfiguration, body_mutation,
    processing_request, processing_response,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
pub use switchyard::extproc::envoy::{
    destination_header, immediate, request_body, request_headers, response_body, streamed_chunk,
};
use switchyard::extproc::{EppServer, EppServerConfig, envoy};
use switchyard::serving::{EjectionPolicy, Serving, ServingArgs};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

pub const MAX_CHUNK: usize = 62_000;
pub const DESTINATION: &str = "x-gateway-destination-endpoint";
/// Every test finishes well within this; a hang fails instead of blocking CI.
pub const STEP: Duration = Duration::from_secs(20);

/// Serving flags for static endpoints, no scraping, a fixed seed.
pub fn static_args(endpoints: &[SocketAddr], profile: &str) -> ServingArgs {
    ServingArgs::fixed(endpoints, profile, 7)
}

/// The cumulative counters of `addr`.
pub fn totals(serving: &Serving, addr: SocketAddr) -> switchyard::cluster::EndpointTotals {
    serving
        .table()
        .snapshot()
        .get(&addr)
        .expect("a member")
        .live()
        .totals()
}

pub fn plaintext_config() -> EppServerConfig {
    EppServerConfig {
        drain_period: Duration::from_millis(200),
        ..EppServerConfig::loopback()
    }
}

/// A running endpoint picker.
pub struct Epp {
    pub serving: Arc<Serving>,
    pub grpc: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    /// The node agents' report port, when configured.
    pub node_reports: Option<SocketAddr>,
    pub certificate: Option<String>,
    pub covered: watch::Sender<HashSet<SocketAddr>>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), switchyard::extproc::EppError>>,
}

impl Epp {
    pub async fn start(args: ServingArgs, config: EppServerConfig) -> Self {
        Self::start_with(args, config, None).await
    }

    /// With a Kubernetes client (a fake API server) for `--pool-name`.
    pub async fn start_with(
        args: ServingArgs,
        config: EppServerConfig,
        client: Option<kube::Client>,
    ) -> Self {
        let (covered_tx, covered_rx) = watch::channel(HashSet::new());
        let serving = Arc::new(
            Serving::start_with_client(&args, EjectionPolicy::default(), covered_rx, client)
                .await
                .expect("serving starts"),
        );
        let mut config = config;
        config.exchange.session_header = serving.session_header().map(|h| h.to_string());
        let server = EppServer::bind(config, serving.clone(), covered_tx.clone())
            .await
            .expect("bind");
        let (grpc, health, metrics) = (
            server.grpc_addr(),
            server.health_addr(),
            server.metrics_addr(),
        );
        let certificate = server.certificate_pem().map(str::to_owned);
        let node_reports = server.node_reports_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Self {
            serving,
            grpc,
            health,
            metrics,
            node_reports,
            certificate,
            covered: covered_tx,
            shutdown,
            task,
        }
    }

    /// grpc.health.v1 status of `service` on `addr` (plaintext).
    pub async fn health_status(addr: SocketAddr, service: &str) -> Result<i32, tonic::Code> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|response| response.into_inner().status)
            .map_err(|status| status.code())
    }

    pub async fn client(&self) -> ExternalProcessorClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        ExternalProcessorClient::new(channel)
    }

    pub fn inflight(&self, addr: SocketAddr) -> u32 {
        self.serving
            .table()
            .snapshot()
            .get(&addr)
            .map_or(0, |endpoint| endpoint.live().inflight_requests())
    }

    pub fn total_inflight(&self) -> u32 {
        self.serving
            .table()
            .snapshot()
            .endpoints()
            .iter()
            .map(|endpoint| endpoint.live().inflight_requests())
            .sum()
    }

    /// Waits until no request is counted in flight (released asynchronously after a reset).
    pub async fn wait_idle(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.total_inflight() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "in-flight never returned to 0"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Polls `condition` until it holds; fails the test after [`STEP`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A simulated model server for model `m` on 127.0.0.1, 50× real time.
pub async fn sim() -> switchyard::sim::RunningServer {
    let config = switchyard::sim::ServerConfig {
        speed: 50.0,
        model: "m".to_owned(),
        ..switchyard::sim::ServerConfig::default()
    };
    switchyard::sim::SimServer::bind(config, "127.0.0.1:0")
        .await
        .expect("bind")
        .spawn()
        .expect("spawn")
}

pub fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|port| SocketAddr::from(([10, 0, 0, 1], *port)))
        .collect()
}

// ---- messages as Envoy sends them ----

pub fn post_headers(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs = vec![
        (":method".to_owned(), "POST".to_owned()),
        (":path".to_owned(), "/v1/chat/completions".to_owned()),
        (":authority".to_owned(), "gateway".to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    pairs
}

pub fn with_metadata(mut message: ProcessingRequest, metadata: Metadata) -> ProcessingRequest {
    message.metadata_context = Some(metadata);
    message
}

pub fn with_protocol(
    mut message: ProcessingRequest,
    request_mode: i32,
    response_mode: i32,
) -> ProcessingRequest {
    message.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: request_mode,
        response_body_mode: response_mode,
        send_body_without_waiting_for_header_response: false,
    });
    message
}

pub fn subset_metadata(entries: &[&str]) -> Metadata {
    let list = ListValue {
        values: entries
            .iter()
            .map(|entry| Value {
                kind: Some(Kind::StringValue((*entry).to_owned())),
            })
            .collect(),
    };
    metadata(
        "envoy.lb.subset_hint",
        "x-gateway-destination-endpoint-subset",
        Kind::ListValue(list),
    )
}

pub fn served_metadata(addr: &str) -> Metadata {
    metadata(
        "envoy.lb",
        "x-gateway-destination-endpoint-served",
        Kind::StringValue(addr.to_owned()),
    )
}

fn metadata(namespace: &str, key: &str, kind: Kind) -> Metadata {
    Metadata {
        filter_metadata: [(
            namespace.to_owned(),
            Struct {
                fields: [(key.to_owned(), Value { kind: Some(kind) })]
                    .into_iter()
                    .collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Metadata::default()
    }
}

pub fn request_trailers() -> ProcessingRequest {
    envoy::request_trailers(&[("x-checksum", "1")])
}

pub fn response_headers(status: u16, content_type: &str, end_of_stream: bool) -> ProcessingRequest {
    envoy::response_headers(
        &[
            (":status", status.to_string().as_str()),
            ("content-type", content_type),
        ],
        end_of_stream,
    )
}

/// Splits `body` into chunks at the given cut sizes (cycled), as Envoy would deliver it.
pub fn split(body: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut index = 0;
    while at < body.len() {
        let size = sizes[index % sizes.len()].max(1);
        let end = (at + size).min(body.len());
        out.push(body[at..end].to_vec());
        at = end;
        index += 1;
    }
    out
}

pub fn chat_body(model: &str, content: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
    }))
    .unwrap()
}

// ---- one stream, with Envoy's checks ----

/// One ext_proc stream from Envoy's side.
pub struct EnvoyStream {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    rx: Streaming<ProcessingResponse>,
    /// Request body chunks sent so far (no body answer may come before the first).
    pub body_sent: usize,
    pub request_headers_answered: bool,
    pub response_headers_answered: bool,
    pub duplex: bool,
}

impl EnvoyStream {
    pub async fn open(client: &mut ExternalProcessorClient<Channel>) -> Self {
        let (tx, requests) = mpsc::channel(64);
        let rx = client
            .process(ReceiverStream::new(requests))
            .await
            .expect("stream opens")
            .into_inner();
        Self {
            tx: Some(tx),
            rx,
            body_sent: 0,
            request_headers_answered: false,
            response_headers_answered: false,
            duplex: true,
        }
    }

    pub async fn send(&mut self, message: ProcessingRequest) {
        if matches!(
            message.request,
            Some(processing_request::Request::RequestBody(_))
        ) {
            self.body_sent += 1;
        }
        self.tx
            .as_ref()
            .expect("stream still open")
            .send(message)
            .await
            .expect("send");
    }

    /// Closes Envoy's sending side (end of the request/response exchange).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next answer, checked against Envoy's rules; `None` when the EPP ended the stream.
    pub async fn recv(&mut self) -> Option<ProcessingResponse> {
        let answer = tokio::time::timeout(STEP, self.rx.message())
            .await
            .expect("answer within the step limit")
            .expect("no gRPC error");
        if let Some(answer) = &answer {
            self.check(answer);
        }
        answer
    }

    /// Asserts no answer arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(answer) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected answer: {answer:?}");
        }
    }

    fn check(&mut self, answer: &ProcessingResponse) {
        use processing_response::Response;
        match answer.response.as_ref().expect("answer has a response") {
            Response::RequestHeaders(headers) => {
                assert!(
                    !self.request_headers_answered,
                    "request headers answered twice"
                );
                self.request_headers_answered = true;
                if let Some(common) = &headers.response {
                    check_mutation(common.header_mutation.as_ref());
                }
                check_destination_agrees(answer);
            }
            Response::RequestBody(body) => {
                let common = body
                    .response
                    .as_ref()
                    .expect("body answer has a CommonResponse");
                if self.duplex {
                    assert!(
                        self.body_sent > 0,
                        "body answer before Envoy sent any body chunk"
                    );
                    check_streamed(common, self.request_headers_answered, "request");
                }
                check_mutation(common.header_mutation.as_ref());
                check_destination_agrees(answer);
            }
            Response::ResponseHeaders(_) => {
                self.response_headers_answered = true;
            }
            Response::ResponseBody(body) => {
                let common = body
                    .response
                    .as_ref()
                    .expect("body answer has a CommonResponse");
                if self.duplex {
                    check_streamed(common, self.response_headers_answered, "response");
                }
            }
            Response::ImmediateResponse(immediate) => {
                check_mutation(immediate.headers.as_ref());
            }
            Response::RequestTrailers(_) | Response::ResponseTrailers(_) => {}
            Response::StreamedImmediateResponse(_) => {
                panic!("streamed immediate responses are not used")
            }
        }
    }
}

/// A duplex body answer: after its direction's headers answer, a `streamed_response` of at
/// most [`MAX_CHUNK`] bytes.
fn check_streamed(
    common: &envoy_types::pb::envoy::service::ext_proc::v3::CommonResponse,
    headers_answered: bool,
    direction: &str,
) {
    assert!(
        headers_answered,
        "{direction} body answered before its headers"
    );
    match common
        .body_mutation
        .as_ref()
        .and_then(|m| m.mutation.as_ref())
    {
        Some(body_mutation::Mutation::StreamedResponse(chunk)) => {
            assert!(
                chunk.body.len() <= MAX_CHUNK,
                "chunk of {} bytes",
                chunk.body.len()
            );
        }
        other => panic!("duplex {direction} body answer is not streamed_response: {other:?}"),
    }
}

fn check_mutation(
    mutation: Option<&envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation>,
) {
    let Some(mutation) = mutation else { return };
    for option in &mutation.set_headers {
        let header = option.header.as_ref().expect("header set");
        assert!(
            header.value.is_empty(),
            "header {} uses `value`",
            header.key
        );
        assert!(
            !header.raw_value.is_empty(),
            "header {} has no raw_value",
            header.key
        );
        assert_eq!(option.append_action, 0);
        assert!(
            header
                .key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
        );
    }
}

/// The destination header and the `envoy.lb` metadata carry the same value (or neither).
fn check_destination_agrees(answer: &ProcessingResponse) {
    let header = destination_header(answer);
    let metadata = answer
        .dynamic_metadata
        .as_ref()
        .and_then(|meta| meta.fields.get("envoy.lb"))
        .and_then(|value| match &value.kind {
            Some(Kind::StructValue(inner)) => inner.fields.get(DESTINATION),
            _ => None,
        })
        .and_then(|value| match &value.kind {
            Some(Kind::StringValue(text)) => Some(text.clone()),
            _ => None,
        });
    assert_eq!(header, metadata, "header and metadata disagree");
}

pub fn removed_headers(answer: &ProcessingResponse) -> Vec<String> {
    match answer.response.as_ref() {
        Some(processing_response::Response::RequestHeaders(headers)) => headers
            .response
            .as_ref()
            .and_then(|common| common.header_mutation.as_ref())
            .map(|mutation| mutation.remove_headers.clone())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

pub fn immediate_header<'a>(immediate: &'a ImmediateResponse, name: &str) -> Option<&'a str> {
    immediate
        .headers
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == name)
        .map(|header| std::str::from_utf8(&header.raw_value).unwrap())
}

/// The result of sending a request through the stream in duplex mode.
#[derive(Debug)]
pub struct RoutedRequest {
    pub destination: String,
    pub removed: Vec<String>,
    pub body: Vec<u8>,
    pub chunks: usize,
    pub end_of_stream: bool,
}

/// Sends the request headers and the body in `chunks` (the last with eos), then reads the
/// headers answer and the echoed body up to its end of stream.
pub async fn send_request(
    stream: &mut EnvoyStream,
    headers: &[(String, String)],
    chunks: &[Vec<u8>],
) -> Result<RoutedRequest, ImmediateResponse> {
    stream.send(request_headers(headers, false)).await;
    for (index, chunk) in chunks.iter().enumerate() {
        stream
            .send(request_body(chunk, index + 1 == chunks.len()))
            .await;
    }
    read_routing(stream, true).await
}

/// Reads the headers answer and the body echo (up to eos when `until_eos`).
pub async fn read_routing(
    stream: &mut EnvoyStream,
    until_eos: bool,
) -> Result<RoutedRequest, ImmediateResponse> {
    let first = stream.recv().await.expect("an answer");
    if let Some(immediate) = immediate(&first) {
        assert!(
            stream.recv().await.is_none(),
            "the stream ends after an immediate response"
        );
        return Err(immediate.clone());
    }
    let destination = destination_header(&first).expect("the first answer routes the request");
    let removed = removed_headers(&first);
    let mut routed = RoutedRequest {
        destination,
        removed,
        body: Vec::new(),
        chunks: 0,
        end_of_stream: false,
    };
    if until_eos {
        while !routed.end_of_stream {
            let answer = stream.recv().await.expect("body answers");
            let (bytes, eos) = streamed_chunk(&answer).expect("a streamed body answer");
            routed.body.extend_from_slice(&bytes);
            routed.chunks += 1;
            routed.end_of_stream = eos;
        }
    }
    Ok(routed)
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(bytes)))
}
