//! `switchyard proxy` end to end on 127.0.0.1: byte-exact pass-through against a fixture
//! upstream, simulated model servers for usage and prefix affinity, retry on a dead endpoint,
//! the error shapes, passive ejection rules, and client disconnects.
mod extproc_support;
use extproc_support::{STEP, sim, totals, wait_until};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchyard::clock::{Clock, SystemClock};
use switchyard::cluster::Health;
use switchyard::proxy::{ProxyConfig, ProxyServer};
use switchyard::serving::{EjectionPolicy, Serving, ServingArgs};
use switchyard::telemetry::EndpointLoad;
use tokio_util::sync::CancellationToken;

const SSE_CHUNKS: &[&str] = &[
    "data: {\"id\":\"fixed\",\"choices\":[{\"index\":0,\"text\":\"Hel\"}]}\n\n",
    "data: {\"id\":\"fixed\",\"choices\":[{\"index\":0,\"text\":\"lo\"}]}\n\ndata: {\"id\":\"fi",
    "xed\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
    "data: [DONE]\n\n",
];
const JSON_ANSWER: &str = r#"{"id":"fixed","object":"text_completion","choices":[{"index":0,"text":"Hi \u00e9"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;

/// A deterministic model server: fixed answers, and it records the bodies it receives.
#[derive(Clone, Default)]
struct Fixture {
    received: Arc<Mutex<Vec<Bytes>>>,
}

async fn fixture_completions(
    axum::extract::State(fixture): axum::extract::State<Fixture>,
    body: Bytes,
) -> Response {
    fixture.received.lock().push(body.clone());
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match request["model"].as_str() {
        Some("fail500") => {
            return (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"boom"}"#).into_response();
        }
        Some("bad400") => return (StatusCode::BAD_REQUEST, r#"{"error":"bad"}"#).into_response(),
        _ => {}
    }
    if request["stream"] == true {
        let slow = request["model"] == "slow";
        let chunks = futures::stream::iter(SSE_CHUNKS.iter().enumerate()).then(
            move |(i, chunk)| async move {
                if slow && i > 0 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok::<_, std::io::Error>(Bytes::from_static(chunk.as_bytes()))
            },
        );
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(chunks))
            .unwrap();
    }
    ([(header::CONTENT_TYPE, "application/json")], JSON_ANSWER).into_response()
}

async fn start_fixture() -> (SocketAddr, Fixture) {
    let fixture = Fixture::default();
    let app = Router::new()
        .route("/v1/completions", post(fixture_completions))
        .route("/v1/chat/completions", post(fixture_completions))
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "m"}]})) }),
        )
        .with_state(fixture.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fixture)
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn args(endpoints: &[SocketAddr], profile: &str) -> ServingArgs {
    ServingArgs::fixed(endpoints, profile, 11)
}

struct Proxy {
    addr: SocketAddr,
    serving: Arc<Serving>,
    http: Client<HttpConnector, Full<Bytes>>,
    _shutdown: CancellationToken,
}

impl Proxy {
    async fn start(args: ServingArgs, ejection: EjectionPolicy) -> Self {
        let (_tx, covered) = tokio::sync::watch::channel(HashSet::new());
        let serving = Arc::new(Serving::start(&args, ejection, covered).await.unwrap());
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            drain_period: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(5),
        };
        let server = ProxyServer::bind(config, serving.clone()).await.unwrap();
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.serve(shutdown.clone()));
        Self {
            addr,
            serving,
            http: Client::builder(TokioExecutor::new()).build_http(),
            _shutdown: shutdown,
        }
    }

    async fn send(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        send(&self.http, self.addr, Method::POST, path, body, headers).await
    }

    fn inflight(&self) -> u32 {
        self.serving
            .table()
            .snapshot()
            .endpoints()
            .iter()
            .map(|e| e.live().inflight_requests())
            .sum()
    }

    async fn wait_idle(&self) {
        wait_until("in-flight back to 0", || self.inflight() == 0).await;
    }

    fn health(&self, addr: SocketAddr) -> Health {
        self.serving
            .table()
            .snapshot()
            .get(&addr)
            .unwrap()
            .health
            .clone()
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }
}

async fn send(
    http: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = tokio::time::timeout(STEP, http.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(STEP, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn completion(model: &str, prompt: &str, stream: bool) -> Vec<u8> {
    // Field order and spacing as a client might write them; forwarded untouched.
    let options = if stream {
        ", \"stream_options\": {\"include_usage\": true}"
    } else {
        ""
    };
    format!(
        "{{ \"prompt\": {}, \"model\": \"{model}\", \"max_tokens\": 4, \"stream\": {stream}{options} }}",
        serde_json::to_string(prompt).unwrap()
    )
    .into_bytes()
}

#[tokio::test]
async fn pass_through_is_byte_identical_both_ways() {
    let (upstream, fixture) = start_fixture().await;
    let proxy = Proxy::start(
        args(&[upstream], "least-request"),
        EjectionPolicy::default(),
    )
    .await;
    for stream in [false, true] {
        let body = completion("m", "héllo wörld", stream);
        let direct = send(
            &proxy.http,
            upstream,
            Method::POST,
            "/v1/completions",
            &body,
            &[],
        )
        .await;
        let proxied = proxy.send("/v1/completions", &body, &[]).await;
        assert_eq!(proxied.status, direct.status);
        assert_eq!(proxied.body, direct.body, "stream={stream}");
        assert_eq!(
            proxied.header("content-type"),
            direct.header("content-type")
        );
        let received = fixture.received.lock().clone();
        assert_eq!(
            received[received.len() - 1],
            Bytes::from(body.clone()),
            "request bytes"
        );
    }
    proxy.wait_idle().await;
    let totals = totals(&proxy.serving, upstream);
    assert_eq!(
        (
            totals.completed,
            totals.prompt_tokens,
            totals.cached_prompt_tokens
        ),
        (2, 18, 4)
    );
}

#[tokio::test]
async fn streamed_and_plain_requests_settle_usage_with_simulated_servers() {
    let (a, b) = (sim().await, sim().await);
    let proxy = Proxy::start(
        args(&[a.addr, b.addr], "switchyard"),
        EjectionPolicy::default(),
    )
    .await;
    for stream in [true, false] {
        let reply = proxy
            .send(
                "/v1/completions",
                &completion("m", "Tell me a story", stream),
                &[],
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        if stream {
            assert!(String::from_utf8_lossy(&reply.body).ends_with("data: [DONE]\n\n"));
        } else {
            assert!(reply.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        }
        let record = &proxy.serving.admission().decisions().recent(1)[0];
        assert!(record.realised.prompt_tokens.unwrap() > 0, "{record:?}");
        assert_eq!(record.realised.status, Some(200));
    }
    let chat = serde_json::to_vec(&json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3
    }))
    .unwrap();
    let reply = proxy.send("/v1/chat/completions", &chat, &[]).await;
    assert_eq!(reply.json()["object"], "chat.completion");
    proxy.wait_idle().await;
}

#[tokio::test]
async fn a_dead_endpoint_is_retried_on_the_fallback_and_ejected() {
    let (live, _fixture) = start_fixture().await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(
        args(&[dead, live], "gie-default"),
        EjectionPolicy::default(),
    )
    .await;
    // Make the dead endpoint look best so it is the primary.
    let table = proxy.serving.table();
    let now = SystemClock.now();
    table.update_load(
        &dead,
        EndpointLoad {
            sampled_at: now,
            seq: 1,
            ..EndpointLoad::default()
        },
    );
    table.update_load(
        &live,
        EndpointLoad {
            waiting: 40,
            kv_cache_usage: 0.9,
            sampled_at: now,
            seq: 1,
            ..EndpointLoad::default()
        },
    );
    let reply = proxy
        .send("/v1/completions", &completion("m", "retry", false), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, JSON_ANSWER.as_bytes());
    let record = &proxy.serving.admission().decisions().recent(1)[0];
    assert_eq!(record.chosen, dead);
    assert_eq!(record.realised.served, Some(live));
    assert!(matches!(proxy.health(dead), Health::Unhealthy(_)));
    assert!(proxy.serving.metrics_text().contains(&format!(
        "switchyard_retries_total{{endpoint=\"{dead}\"}} 1"
    )));
    proxy.wait_idle().await;
    // Ejected: the next request goes straight to the live one.
    let reply = proxy
        .send("/v1/completions", &completion("m", "again", false), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        proxy.serving.admission().decisions().recent(1)[0].chosen,
        live
    );

    // Nothing reachable at all: 502 in OpenAI's shape.
    let proxy = Proxy::start(
        args(&[dead_addr().await], "random"),
        EjectionPolicy::default(),
    )
    .await;
    let reply = proxy
        .send("/v1/completions", &completion("m", "x", false), &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"]["code"], 502);
    proxy.wait_idle().await;
}

#[tokio::test]
async fn error_shapes_match_the_endpoint_picker() {
    let (upstream, _fixture) = start_fixture().await;
    let mut serving_args = args(&[upstream], "gie-default");
    serving_args.policy.objectives = vec!["batch=-1".to_owned()];
    serving_args.policy.max_body_bytes = 10_000;
    let proxy = Proxy::start(serving_args, EjectionPolicy::default()).await;

    let reply = proxy.send("/v1/completions", b"{not json", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "Bad Request");
    let reply = proxy
        .send("/v1/completions", br#"{"prompt":"no model"}"#, &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let reply = proxy
        .send(
            "/v1/completions",
            &completion("m", &"x".repeat(20_000), false),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["code"], 413);

    // Never scraped: no capacity, so a sheddable request is shed; others go through.
    let reply = proxy
        .send(
            "/v1/completions",
            &completion("m", "batch", false),
            &[("x-gateway-inference-objective", "batch")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        reply.header("x-llm-d-request-dropped-reason"),
        Some("rejected-saturated")
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let reply = proxy
        .send("/v1/completions", &completion("m", "chat", false), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, "[]").unwrap();
    let mut empty = args(&[], "gie-default");
    empty.sources.endpoints_file = Some(file);
    let proxy = Proxy::start(empty, EjectionPolicy::default()).await;
    let reply = proxy
        .send("/v1/completions", &completion("m", "x", false), &[])
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.header("x-llm-d-request-dropped-reason"),
        Some("rejected-no-endpoints")
    );
    assert_eq!(reply.json()["error"]["type"], "ServiceUnavailableError");
}

#[tokio::test]
async fn the_same_long_prefix_lands_on_the_same_server() {
    let servers = [sim().await, sim().await, sim().await];
    let endpoints: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let proxy = Proxy::start(args(&endpoints, "gie-default"), EjectionPolicy::default()).await;
    let system = "You are a careful assistant who answers in full sentences. ".repeat(40);
    let mut chosen = HashSet::new();
    for question in 0..5 {
        let body = serde_json::to_vec(&json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("question number {question}")},
            ],
            "max_tokens": 2,
        }))
        .unwrap();
        let reply = proxy.send("/v1/chat/completions", &body, &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let record = &proxy.serving.admission().decisions().recent(1)[0];
        if question > 0 {
            assert!(record.predicted_prefix_hit > 0.5, "{record:?}");
        }
        chosen.insert(record.chosen);
    }
    assert_eq!(chosen.len(), 1, "{chosen:?}");
}

#[tokio::test]
async fn upstream_errors_pass_through_and_only_5xx_runs_eject() {
    let (upstream, _fixture) = start_fixture().await;
    let ejection = EjectionPolicy {
        consecutive_5xx: 3,
        duration: Duration::from_secs(60),
    };
    let proxy = Proxy::start(args(&[upstream], "random"), ejection).await;
    for _ in 0..10 {
        let reply = proxy
            .send("/v1/completions", &completion("bad400", "x", false), &[])
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.body, r#"{"error":"bad"}"#.as_bytes());
    }
    assert_eq!(
        proxy.health(upstream),
        Health::Ready,
        "4xx is the client's fault"
    );
    for _ in 0..3 {
        let reply = proxy
            .send("/v1/completions", &completion("fail500", "x", false), &[])
            .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.body, r#"{"error":"boom"}"#.as_bytes());
    }
    assert!(matches!(proxy.health(upstream), Health::Unhealthy(_)));
    let metrics = proxy.serving.metrics_text();
    assert!(metrics.contains("inference_objective_request_error_total{model_name=\"fail500\",target_model_name=\"fail500\",error_code=\"500\"} 3"), "{metrics}");
}

#[tokio::test]
async fn models_health_and_metrics() {
    let (upstream, _fixture) = start_fixture().await;
    let proxy = Proxy::start(args(&[upstream], "switchyard"), EjectionPolicy::default()).await;
    let models = send(&proxy.http, proxy.addr, Method::GET, "/v1/models", b"", &[]).await;
    assert_eq!(models.json()["data"][0]["id"], "m");
    let health = send(&proxy.http, proxy.addr, Method::GET, "/health", b"", &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    proxy
        .send("/v1/completions", &completion("m", "count me", false), &[])
        .await;
    let metrics = send(&proxy.http, proxy.addr, Method::GET, "/metrics", b"", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            "inference_objective_request_total{model_name=\"m\",target_model_name=\"m\"} 1"
        ),
        "{text}"
    );
    let decisions = send(
        &proxy.http,
        proxy.addr,
        Method::GET,
        "/debug/decisions",
        b"",
        &[],
    )
    .await;
    assert_eq!(decisions.json()[0]["model"], "m");
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_releases_the_request() {
    let (upstream, _fixture) = start_fixture().await;
    let proxy = Proxy::start(args(&[upstream], "random"), EjectionPolicy::default()).await;
    let request = Request::post(format!("http://{}/v1/completions", proxy.addr))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(completion("slow", "x", true))))
        .unwrap();
    let response = proxy.http.request(request).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, SSE_CHUNKS[0].as_bytes());
    assert_eq!(proxy.inflight(), 1);
    drop(body);
    proxy.wait_idle().await;
    let record = &proxy.serving.admission().decisions().recent(1)[0];
    assert_eq!(
        record.realised.outcome,
        switchyard::serving::decisions::Outcome::Cancelled
    );
}
