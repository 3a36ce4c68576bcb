//! `switchyard sim` over real HTTP on 127.0.0.1: API shapes, metrics, GPU view, errors, faults.
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::openai::{
    ChatCompletionResponse, CompletionChunk, CompletionResponse, Envelope, ModelList, Usage,
};
use switchyard::sim::{GpuReport, LoraModule, RunningServer, ServerConfig, SimServer};
use switchyard::telemetry::{EngineKind, ThrottleReasons};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
/// Every test finishes well within this; a hang fails instead of blocking CI.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn config() -> ServerConfig {
    ServerConfig {
        speed: 100.0,
        lora_modules: vec!["sql-lora=/adapters/sql".parse::<LoraModule>().unwrap()],
        max_loras: 1,
        max_model_len: Some(4096),
        ..ServerConfig::default()
    }
}

async fn start(config: ServerConfig) -> (RunningServer, Http) {
    let server = SimServer::bind(config, "127.0.0.1:0").await.expect("bind");
    let running = server.spawn().expect("spawn");
    let http = Http {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{}", running.addr),
    };
    (running, http)
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http {
    async fn send(&self, method: Method, path: &str, body: Bytes, content_type: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .unwrap();
        let response = self.client.request(request).await.expect("request");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            content_type,
            body,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        let body = Bytes::from(body.to_string());
        self.send(Method::POST, path, body, "application/json")
            .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, Bytes::new(), "application/json")
            .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, Bytes::new(), "application/json")
            .await
    }

    async fn raw_post(&self, path: &str, body: &str, content_type: &str) -> Reply {
        let body = Bytes::from(body.to_owned());
        self.send(Method::POST, path, body, content_type).await
    }

    /// Starts a streamed completion and returns the response with its body unread.
    async fn start_stream(&self, body: Value) -> http::Response<hyper::body::Incoming> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/v1/completions", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        response
    }

    async fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.content_type.starts_with("text/plain; version=0.0.4"),
            "{}",
            reply.content_type
        );
        Metrics::parse(&reply.text())
    }
}

/// `data:` payloads of an SSE body, in order.
fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "stream must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {event:?}"))
                .to_owned()
        })
        .collect()
}

/// A parsed Prometheus text page: samples by name, each with labels and value.
struct Metrics {
    samples: Vec<(String, HashMap<String, String>, f64)>,
    types: HashMap<String, String>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                other => other
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = HashMap::new();
                    // Label values in these pages contain no commas or escaped quotes.
                    for pair in inner.split("\",").filter(|pair| !pair.is_empty()) {
                        let (key, value) = pair.split_once("=\"").expect("label pair");
                        labels.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
                    }
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), HashMap::new()),
            };
            samples.push((name, labels, value));
        }
        Self { samples, types }
    }

    fn value(&self, name: &str) -> f64 {
        self.value_with(name, &[])
    }

    fn value_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .find(|(sample, have, _)| {
                sample == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn labels(&self, name: &str) -> &HashMap<String, String> {
        &self
            .samples
            .iter()
            .find(|(sample, _, _)| sample == name)
            .unwrap_or_else(|| panic!("no sample {name}"))
            .1
    }
}

fn usage<C>(answer: &Envelope<C>) -> &Usage {
    answer.usage.as_ref().expect("usage")
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test took too long");
}

#[tokio::test]
async fn streamed_completion_has_the_sse_shape_and_usage() {
    bounded(async {
        let (_server, http) = start(config()).await;
        let reply = http
            .post(
                "/v1/completions",
                json!({"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 6,
                       "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.content_type.starts_with("text/event-stream"), "{}", reply.content_type);
        let events = sse_events(&reply.text());
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<CompletionChunk> = events[..events.len() - 1]
            .iter()
            .map(|event| serde_json::from_str(event).expect("chunk"))
            .collect();
        let (usage_chunk, text_chunks) = chunks.split_last().unwrap();
        assert!(usage_chunk.choices.is_empty());
        let usage = usage_chunk.usage.clone().expect("usage in the last chunk");
        assert_eq!(usage.completion_tokens, 6);
        assert_eq!(usage.total_tokens, usage.prompt_tokens + 6);
        assert!(usage.prompt_tokens >= 5);
        assert!(text_chunks.iter().all(|chunk| chunk.object == "text_completion" && chunk.usage.is_none()));
        assert!(text_chunks.iter().all(|chunk| chunk.id == usage_chunk.id && chunk.model == MODEL));
        let text: String = text_chunks.iter().flat_map(|chunk| &chunk.choices).map(|c| c.body.text.as_str()).collect();
        assert_eq!(text.split(' ').count(), 6, "one word per token: {text:?}");
        let last = text_chunks.last().unwrap().choices.first().unwrap();
        assert_eq!(last.finish_reason.as_deref(), Some("length"));
        assert!(
            text_chunks[..text_chunks.len() - 1]
                .iter()
                .all(|chunk| chunk.choices[0].finish_reason.is_none())
        );

        // Without include_usage: no usage chunk.
        let plain = http
            .post("/v1/completions", json!({"prompt": "hi", "max_tokens": 2, "stream": true}))
            .await;
        let events = sse_events(&plain.text());
        assert!(events.iter().all(|event| !event.contains("\"usage\"")));
    })
    .await;
}

#[tokio::test]
async fn chat_completion_and_multi_turn_prefix_caching() {
    bounded(async {
        let (_server, http) = start(config()).await;
        let question = "Explain in detail how a router chooses a model server for each request";
        let first = http
            .post(
                "/v1/chat/completions",
                json!({"model": MODEL, "max_tokens": 40, "ignore_eos": true,
                       "messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": question}]}),
            )
            .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        let first: ChatCompletionResponse = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(first.object, "chat.completion");
        assert!(first.id.starts_with("chatcmpl-"));
        let choice = &first.choices[0];
        assert_eq!(choice.body.message.role, "assistant");
        assert_eq!(choice.finish_reason.as_deref(), Some("length"));
        let answer = choice.body.message.content.clone().unwrap();
        assert_eq!(usage(&first).completion_tokens, 40);
        assert_eq!(usage(&first).prompt_tokens_details.as_ref().unwrap().cached_tokens, 0);

        // The next turn repeats the conversation: its prompt starts with the first prompt and
        // the answer, so every full block of both is cached.
        let second = http
            .post(
                "/v1/chat/completions",
                json!({"model": MODEL, "max_tokens": 4,
                       "messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": question},
                                    {"role": "assistant", "content": answer},
                                    {"role": "user", "content": "And when the server is overloaded?"}]}),
            )
            .await;
        let second: ChatCompletionResponse = serde_json::from_slice(&second.body).unwrap();
        let computed_before = usage(&first).prompt_tokens + usage(&first).completion_tokens - 1;
        let cached = usage(&second).prompt_tokens_details.clone().unwrap().cached_tokens;
        assert_eq!(cached, computed_before / 16 * 16, "answer blocks reused");

        // The same question through the LoRA adapter shares nothing with the base model.
        let lora = http
            .post(
                "/v1/chat/completions",
                json!({"model": "sql-lora", "max_tokens": 2,
                       "messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": question}]}),
            )
            .await;
        let lora: ChatCompletionResponse = serde_json::from_slice(&lora.body).unwrap();
        assert_eq!(lora.model, "sql-lora");
        assert_eq!(usage(&lora).prompt_tokens_details.clone().unwrap().cached_tokens, 0);
    })
    .await;
}

#[tokio::test]
async fn stop_strings_end_the_choice_before_the_match() {
    bounded(async {
        let (_server, http) = start(config()).await;
        // Output words come from a 64-word list: in 200 tokens one of these four words
        // appears (for this seed, deterministically).
        let stops = [" the", " of", " and", " to"];
        let cut = http
            .post(
                "/v1/completions",
                json!({"prompt": "stop test", "max_tokens": 200, "ignore_eos": true, "stop": stops}),
            )
            .await;
        let cut: CompletionResponse = serde_json::from_slice(&cut.body).unwrap();
        let choice = &cut.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        let stop_reason = choice.stop_reason.as_ref().and_then(Value::as_str).unwrap();
        assert!(stops.contains(&stop_reason), "{stop_reason}");
        assert!(stops.iter().all(|stop| !choice.body.text.contains(stop)), "{:?}", choice.body.text);
        assert!(usage(&cut).completion_tokens < 200);
        assert_eq!(
            choice.body.text.split(' ').count() as u32,
            usage(&cut).completion_tokens - 1,
            "text is every token before the stop word"
        );
        // Streaming cuts at the same place.
        let streamed = http
            .post(
                "/v1/completions",
                json!({"prompt": "stop test", "max_tokens": 200, "ignore_eos": true, "stop": stops, "stream": true}),
            )
            .await;
        let events = sse_events(&streamed.text());
        let last: CompletionChunk = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("stop"));
    })
    .await;
}

#[tokio::test]
async fn models_list_the_base_model_and_adapters() {
    bounded(async {
        let (_server, http) = start(config()).await;
        let reply = http.get("/v1/models").await;
        assert_eq!(reply.status, StatusCode::OK);
        let models: ModelList = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(models.object, "list");
        let ids: Vec<&str> = models.data.iter().map(|card| card.id.as_str()).collect();
        assert_eq!(ids, vec![MODEL, "sql-lora"]);
        assert_eq!(models.data[0].max_model_len, Some(4096));
        assert_eq!(models.data[1].parent.as_deref(), Some(MODEL));
        assert_eq!(models.data[1].root.as_deref(), Some("/adapters/sql"));
        assert_eq!(http.get("/health").await.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn vllm_metrics_parse_with_real_names_and_agree_with_traffic() {
    bounded(async {
        let (_server, http) = start(config()).await;
        let mut completion_tokens = 0.0;
        for i in 0..3 {
            let reply = http
                .post(
                    "/v1/completions",
                    json!({"prompt": format!("{} request", "shared prefix for the metrics test ".repeat(20)),
                           "max_tokens": 5 + i, "ignore_eos": true}),
                )
                .await;
            let reply: CompletionResponse = serde_json::from_slice(&reply.body).unwrap();
            completion_tokens += f64::from(usage(&reply).completion_tokens);
        }
        let metrics = http.metrics().await;
        for (name, kind) in [
            ("vllm:num_requests_running", "gauge"),
            ("vllm:num_requests_waiting", "gauge"),
            ("vllm:kv_cache_usage_perc", "gauge"),
            ("vllm:gpu_cache_usage_perc", "gauge"),
            ("vllm:prefix_cache_queries_total", "counter"),
            ("vllm:prefix_cache_hits_total", "counter"),
            ("vllm:prompt_tokens_total", "counter"),
            ("vllm:generation_tokens_total", "counter"),
            ("vllm:request_success_total", "counter"),
            ("vllm:time_to_first_token_seconds", "histogram"),
            ("vllm:inter_token_latency_seconds", "histogram"),
            ("vllm:e2e_request_latency_seconds", "histogram"),
            ("vllm:cache_config_info", "gauge"),
            ("vllm:lora_requests_info", "gauge"),
        ] {
            assert_eq!(metrics.types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        let labels = metrics.labels("vllm:num_requests_running");
        assert_eq!(labels.get("model_name").map(String::as_str), Some(MODEL));
        assert_eq!(labels.get("engine").map(String::as_str), Some("0"));
        assert_eq!(metrics.value("vllm:num_requests_running"), 0.0);
        assert_eq!(metrics.value("vllm:generation_tokens_total"), completion_tokens);
        assert_eq!(metrics.value_with("vllm:request_success_total", &[("finished_reason", "length")]), 3.0);
        assert_eq!(metrics.value("vllm:time_to_first_token_seconds_count"), 3.0);
        assert_eq!(metrics.value_with("vllm:time_to_first_token_seconds_bucket", &[("le", "+Inf")]), 3.0);
        assert!(metrics.value("vllm:prefix_cache_hits_total") > 0.0, "shared prefix hit");
        let cache = metrics.labels("vllm:cache_config_info");
        assert_eq!(cache.get("block_size").map(String::as_str), Some("16"));
        assert_eq!(cache.get("num_gpu_blocks").map(String::as_str), Some("26875"));
        let lora = metrics.labels("vllm:lora_requests_info");
        assert_eq!(lora.get("max_lora").map(String::as_str), Some("1"));
        assert!(lora.contains_key("running_lora_adapters") && lora.contains_key("waiting_lora_adapters"));
    })
    .await;
}

#[tokio::test]
async fn sglang_engine_serves_sglang_metrics() {
    bounded(async {
        let (_server, http) = start(ServerConfig {
            engine_kind: EngineKind::Sglang,
            ..config()
        })
        .await;
        let reply = http
            .post(
                "/v1/completions",
                json!({"prompt": "hello", "max_tokens": 3}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let metrics = http.metrics().await;
        for name in [
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            "sglang:token_usage",
            "sglang:cache_hit_rate",
            "sglang:time_to_first_token_seconds",
            "sglang:prompt_tokens_total",
        ] {
            assert!(metrics.types.contains_key(name), "{name}");
        }
        let labels = metrics.labels("sglang:num_running_reqs");
        assert_eq!(
            labels.get("engine_type").map(String::as_str),
            Some("unified")
        );
        assert_eq!(
            metrics.value("sglang:time_to_first_token_seconds_count"),
            1.0
        );
        assert!(metrics.types.keys().all(|name| !name.starts_with("vllm:")));
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_vllm_error_shapes() {
    bounded(async {
        let (_server, http) = start(config()).await;
        let expect = |reply: &Reply, status: StatusCode, kind: &str, param: Option<&str>| {
            assert_eq!(reply.status, status, "{}", reply.text());
            let error = &reply.json()["error"];
            assert_eq!(error["type"], kind, "{error}");
            assert_eq!(error["code"], status.as_u16());
            assert_eq!(error["param"].as_str(), param, "{error}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        };
        let invalid = http
            .raw_post("/v1/completions", "{\"prompt\": ", "application/json")
            .await;
        expect(&invalid, StatusCode::BAD_REQUEST, "Bad Request", None);
        let wrong_type = http
            .raw_post(
                "/v1/chat/completions",
                "{\"messages\": 5}",
                "application/json",
            )
            .await;
        expect(&wrong_type, StatusCode::BAD_REQUEST, "Bad Request", None);
        let form = http
            .raw_post(
                "/v1/completions",
                "prompt=x",
                "application/x-www-form-urlencoded",
            )
            .await;
        expect(&form, StatusCode::BAD_REQUEST, "Bad Request", None);
        let unknown = http
            .post("/v1/completions", json!({"model": "gpt-17", "prompt": "x"}))
            .await;
        expect(
            &unknown,
            StatusCode::NOT_FOUND,
            "NotFoundError",
            Some("model"),
        );
        assert_eq!(
            unknown.json()["error"]["message"],
            "The model `gpt-17` does not exist."
        );
        let long_prompt = "word ".repeat(5000);
        let too_long = http
            .post(
                "/v1/completions",
                json!({"prompt": long_prompt, "max_tokens": 10}),
            )
            .await;
        expect(
            &too_long,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            Some("input_tokens"),
        );
        assert!(
            too_long
                .text()
                .contains("maximum context length is 4096 tokens")
        );
        let too_many = http
            .post(
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}),
            )
            .await;
        expect(
            &too_many,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            Some("input_tokens"),
        );
        let negative = http
            .post("/v1/completions", json!({"prompt": "x", "max_tokens": -1}))
            .await;
        expect(
            &negative,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            Some("max_tokens"),
        );
        let cold = http
            .post(
                "/v1/completions",
                json!({"prompt": "x", "temperature": -0.1}),
            )
            .await;
        expect(
            &cold,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            Some("temperature"),
        );
        let top_p = http
            .post(
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}),
            )
            .await;
        expect(
            &top_p,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            Some("top_p"),
        );
        let n = http
            .post("/v1/completions", json!({"prompt": "x", "n": 0}))
            .await;
        expect(&n, StatusCode::BAD_REQUEST, "BadRequestError", Some("n"));
        let options = http
            .post(
                "/v1/completions",
                json!({"prompt": "x", "stream_options": {"include_usage": true}}),
            )
            .await;
        expect(&options, StatusCode::BAD_REQUEST, "Bad Request", None);
        let vocab = http
            .post("/v1/completions", json!({"prompt": [1, 2, 999999]}))
            .await;
        expect(
            &vocab,
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            Some("prompt"),
        );
        let missing = http.get("/v2/nothing").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json(), json!({"detail": "Not Found"}));
        // Errors never reached the engine.
        let metrics = http.metrics().await;
        assert_eq!(
            metrics.value_with(
                "vllm:request_success_total",
                &[("finished_reason", "length")]
            ),
            0.0
        );
    })
    .await;
}

#[tokio::test]
async fn gpu_view_reports_identity_and_follows_load() {
    bounded(async {
        let (_server, http) = start(ServerConfig {
            gpu_index: 3,
            gpu_uuid: Some("GPU-test-uuid".to_owned()),
            ..config()
        })
        .await;
        let idle: GpuReport = serde_json::from_slice(&http.get("/sim/gpu").await.body).unwrap();
        assert_eq!(idle.gpus.len(), 1);
        let gpu = &idle.gpus[0];
        assert_eq!((gpu.index, gpu.uuid.as_str()), (3, "GPU-test-uuid"));
        assert_eq!(gpu.processes[0].pid, std::process::id());
        assert_eq!(gpu.memory_total_bytes, 80 * 1024 * 1024 * 1024);
        // Keep the engine busy with long requests while sampling.
        let busy_http = Http {
            client: http.client.clone(),
            base: http.base.clone(),
        };
        let load = tokio::spawn(async move {
            let requests = (0..16).map(|i| {
                busy_http.post(
                    "/v1/completions",
                    json!({"prompt": format!("request {i} {}", "long prompt ".repeat(200)),
                           "max_tokens": 3000, "ignore_eos": true}),
                )
            });
            futures::future::join_all(requests).await
        });
        // Sample while the batch runs (a few virtual seconds in; it needs tens).
        let mut busy = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let report: GpuReport =
                serde_json::from_slice(&http.get("/sim/gpu").await.body).unwrap();
            if report.gpus[0].gpu_utilization_pct > 50 {
                busy = report.gpus.into_iter().next();
                break;
            }
        }
        let busy = busy.expect("utilisation never rose under load");
        assert!(busy.memory_used_bytes > gpu.memory_used_bytes, "{busy:?}");
        assert!(busy.power_mw > gpu.power_mw);
        assert_eq!(busy.throttle_reasons.0 & ThrottleReasons::GPU_IDLE, 0);
        load.abort();
    })
    .await;
}

#[tokio::test]
async fn client_disconnect_aborts_the_request() {
    bounded(async {
        // Slow enough that the request cannot finish on its own during the test.
        let (_server, http) = start(ServerConfig {
            speed: 10.0,
            ..config()
        })
        .await;
        let response = http
            .start_stream(
                json!({"prompt": "long", "max_tokens": 3000, "ignore_eos": true, "stream": true}),
            )
            .await;
        let mut body = response.into_body();
        let first = body.frame().await.expect("a chunk").expect("no error");
        assert!(first.data_ref().is_some());
        drop(body);
        for _ in 0..200 {
            let metrics = http.metrics().await;
            if metrics.value_with(
                "vllm:request_success_total",
                &[("finished_reason", "abort")],
            ) == 1.0
            {
                assert_eq!(metrics.value("vllm:num_requests_running"), 0.0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the request kept running after the client left");
    })
    .await;
}

#[tokio::test]
async fn faults_inject_and_reset() {
    bounded(async {
        let (_server, http) = start(config()).await;
        let completion = || http.post("/v1/completions", json!({"prompt": "x", "max_tokens": 2}));

        // 5xx for every request, in the error shape.
        let set = http
            .post(
                "/admin/faults",
                json!({"error_rate": 1.0, "error_status": 503}),
            )
            .await;
        assert_eq!(set.status, StatusCode::OK);
        assert_eq!(set.json()["error_rate"], 1.0);
        let failed = completion().await;
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failed.json()["error"]["code"], 503);
        // Bad fault sets are refused and change nothing.
        assert_eq!(
            http.post("/admin/faults", json!({"error_rate": 3}))
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            http.post("/admin/faults", json!({"no_such": 1}))
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http.get("/admin/faults").await.json()["error_status"], 503);
        http.delete("/admin/faults").await;
        assert_eq!(completion().await.status, StatusCode::OK);

        // Frozen metrics stay stale while traffic flows; errors and 404s are served as asked.
        http.post("/admin/faults", json!({"metrics": "frozen"}))
            .await;
        let before = http.get("/metrics").await.text();
        assert_eq!(completion().await.status, StatusCode::OK);
        assert_eq!(http.get("/metrics").await.text(), before);
        http.post("/admin/faults", json!({"metrics": "error"}))
            .await;
        assert_eq!(
            http.get("/metrics").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        http.post(
            "/admin/faults",
            json!({"metrics": "missing", "health": "fail"}),
        )
        .await;
        assert_eq!(http.get("/metrics").await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            http.get("/health").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );

        // GPU: XID 79 and thermal throttling, then gone entirely.
        http.post(
            "/admin/faults",
            json!({"gpu": {"xid": 79, "thermal_throttle": true, "memory_full": true}}),
        )
        .await;
        let sick: GpuReport = serde_json::from_slice(&http.get("/sim/gpu").await.body).unwrap();
        let sick = &sick.gpus[0];
        assert_eq!(sick.last_xid, Some(79));
        assert!(sick.throttle_reasons.is_slowed_down());
        assert_eq!(sick.memory_used_bytes, sick.memory_total_bytes);
        http.post("/admin/faults", json!({"gpu": {"missing": true}}))
            .await;
        assert_eq!(
            http.get("/sim/gpu").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );

        // Streams cut mid-way.
        http.delete("/admin/faults").await;
        http.post(
            "/admin/faults",
            json!({"drop_rate": 1.0, "drop_after_tokens": 3}),
        )
        .await;
        let response = http
            .start_stream(
                json!({"prompt": "x", "max_tokens": 50, "ignore_eos": true, "stream": true}),
            )
            .await;
        let cut = response.into_body().collect().await;
        assert!(cut.is_err(), "the stream must end in a connection error");

        // Hangs: the request never answers within the client's patience.
        http.delete("/admin/faults").await;
        http.post("/admin/faults", json!({"hang_rate": 1.0})).await;
        let hung = tokio::time::timeout(Duration::from_millis(300), completion()).await;
        assert!(hung.is_err(), "request should hang");

        // Reset restores everything.
        let reset = http.delete("/admin/faults").await;
        assert_eq!(reset.json()["hang_rate"], 0.0);
        assert_eq!(completion().await.status, StatusCode::OK);
        assert_eq!(http.get("/health").await.status, StatusCode::OK);
        let healthy: GpuReport = serde_json::from_slice(&http.get("/sim/gpu").await.body).unwrap();
        assert_eq!(healthy.gpus[0].last_xid, None);
        assert!(!healthy.gpus[0].throttle_reasons.is_slowed_down());
        assert_eq!(http.get("/metrics").await.status, StatusCode::OK);
    })
    .await;
}
