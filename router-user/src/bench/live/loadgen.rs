//! An open-loop load generator of streaming OpenAI chat completions, for live benchmarks and
//! demos against real servers.
//!
//! - [`SharedPrefixText`] builds the requests: `groups` long system prompts, each request one
//!   of them plus a question of its own (drawn with a seed), `stream: true` with usage.
//! - [`run`] sends them open-loop: request `i` starts at the `i`-th arrival of a Poisson process
//!   of the given rate (seeded) whatever happened to the others, until the request count or the
//!   duration is reached, then waits for the ones in flight (each bounded by a timeout).
//! - Each request gives a [`RequestRecord`]: status, time to the first SSE chunk with content,
//!   end-to-end latency, the server that answered (the simulator's `x-served-by` header), and the
//!   usage the server reported (prompt, cached and completion tokens).
//!
//! [`Target::RoundRobin`] is the client picking servers itself (no router); `Target::Base` sends
//! everything to one address (a router, a VIP). With `fresh_connections` every request opens its
//! own connection, which a per-connection balancer (the eBPF dataplane) needs to see each
//! request; otherwise connections are pooled and kept alive.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use crate::bench::workload::ArrivalProcess;
use crate::cluster::TokenUsage;
use crate::serving::usage::UsageBlock;
use crate::sim::SERVED_BY_HEADER;

/// Path every request is sent to.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// Words the prompts are made of (about one token each for the simulator's tokenizer).
const WORDS: [&str; 32] = [
    "the", "model", "serves", "requests", "from", "a", "cluster", "of", "GPUs", "while", "routers",
    "choose", "where", "each", "prompt", "goes", "so", "that", "cached", "prefixes", "are",
    "reused", "and", "queues", "stay", "short", "under", "load", "with", "fair", "latency",
    "budgets",
];

/// Longest error text kept in a record.
const MAX_ERROR_CHARS: usize = 200;

/// The shared-prefix chat workload: `groups` system prompts of about `system_words` tokens,
/// each request one of them (uniformly) plus a question of about `question_words` tokens, asking
/// for exactly `max_tokens` output tokens (`ignore_eos`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedPrefixText {
    pub model: String,
    pub groups: u32,
    pub system_words: u32,
    pub question_words: u32,
    pub max_tokens: u32,
}

/// One request of a workload: its body (JSON, ready to send) and its prefix group.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub group: u32,
    pub body: Bytes,
}

impl SharedPrefixText {
    /// `count` requests, the same for the same seed.
    pub fn requests(&self, count: usize, seed: u64) -> Vec<ChatRequest> {
        let groups = self.groups.max(1);
        let systems: Vec<String> = (0..groups)
            .map(|group| {
                // The group number leads, so prompts differ from their first block on.
                let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(group) << 32) ^ 0x5157);
                format!(
                    "System prompt {group}. You are assistant number {group}. {}",
                    words(&mut rng, self.system_words as usize)
                )
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        (0..count)
            .map(|i| {
                let group = rng.random_range(0..groups);
                let question = format!(
                    "Question {i}: {}?",
                    words(&mut rng, self.question_words as usize)
                );
                let body = serde_json::json!({
                    "model": self.model,
                    "messages": [
                        {"role": "system", "content": systems[group as usize]},
                        {"role": "user", "content": question},
                    ],
                    "max_tokens": self.max_tokens,
                    "ignore_eos": true,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                ChatRequest {
                    group,
                    body: Bytes::from(body.to_string()),
                }
            })
            .collect()
    }
}

fn words(rng: &mut StdRng, count: usize) -> String {
    let mut text = String::with_capacity(count * 7);
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text
}

/// Where requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every request to this address (a router, a gateway, a VIP).
    Base(SocketAddr),
    /// Request `i` to `servers[i % len]`: the client balances by itself, no router.
    RoundRobin(Vec<SocketAddr>),
}

impl Target {
    fn addr(&self, index: usize) -> Option<SocketAddr> {
        match self {
            Self::Base(addr) => Some(*addr),
            Self::RoundRobin(servers) if servers.is_empty() => None,
            Self::RoundRobin(servers) => Some(servers[index % servers.len()]),
        }
    }
}

/// How much load, for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Mean requests started per second (Poisson arrivals).
    pub rate: f64,
    /// Most requests sent.
    pub max_requests: usize,
    /// No request starts later than this after the first.
    pub max_duration: Duration,
    /// Seed of the arrival times.
    pub seed: u64,
    /// One connection per request (no keep-alive pool).
    pub fresh_connections: bool,
    /// A request still unfinished after this is recorded as an error.
    pub request_timeout: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            rate: 10.0,
            max_requests: 100,
            max_duration: Duration::from_secs(10),
            seed: 1,
            fresh_connections: false,
            request_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the rate must be a positive number of requests per second, got {0}")]
    Rate(f64),
    #[error("no requests to send")]
    NoRequests,
    #[error("no servers to send to")]
    NoServers,
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Position in the run (arrival order).
    pub index: usize,
    /// Prefix group of its prompt.
    pub group: u32,
    /// Address the client connected to.
    pub target: SocketAddr,
    /// Planned start, since the run's start.
    pub scheduled_at: Duration,
    /// How late it actually started (the generator's own lag; large values mean the client
    /// could not keep up).
    pub start_lag: Duration,
    /// HTTP status; `None` when no response headers came.
    pub status: Option<u16>,
    /// Start → first SSE event with non-empty content.
    pub ttft: Option<Duration>,
    /// Start → end of the response body (or the failure).
    pub e2e: Duration,
    /// The `x-served-by` header of the answer, when the path kept it.
    pub served_by: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// SSE events with content.
    pub content_chunks: u32,
    /// Whether `data: [DONE]` ended the stream.
    pub done: bool,
    /// Why it failed (transport error, error status with the body's start, timeout).
    pub error: Option<String>,
}

impl RequestRecord {
    /// A 200 whose stream ended with `[DONE]` after some content.
    pub fn ok(&self) -> bool {
        self.status == Some(200) && self.done && self.error.is_none() && self.ttft.is_some()
    }
}

/// Sends `requests` (cycled if there are fewer than `spec.max_requests`) to `target` and
/// returns one record per request sent, in arrival order. `progress`, when given, advances by
/// one per finished request.
pub async fn run(
    target: &Target,
    requests: &[ChatRequest],
    spec: &LoadSpec,
    progress: Option<&ProgressBar>,
) -> Result<Vec<RequestRecord>, LoadError> {
    if !spec.rate.is_finite() || spec.rate <= 0.0 {
        return Err(LoadError::Rate(spec.rate));
    }
    if requests.is_empty() || spec.max_requests == 0 {
        return Err(LoadError::NoRequests);
    }
    if target.addr(0).is_none() {
        return Err(LoadError::NoServers);
    }
    let client = http_client(spec.fresh_connections);
    let arrivals = arrival_offsets(spec);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(arrivals.len());
    for (index, at) in arrivals.into_iter().enumerate() {
        tokio::time::sleep_until(start + at).await;
        let Some(addr) = target.addr(index) else {
            return Err(LoadError::NoServers);
        };
        let request = requests[index % requests.len()].clone();
        let client = client.clone();
        let timeout = spec.request_timeout;
        let lag = start.elapsed().saturating_sub(at);
        let progress = progress.cloned();
        tasks.push(tokio::spawn(async move {
            let record = one_request(&client, addr, index, at, lag, request, timeout).await;
            if let Some(progress) = progress {
                progress.inc(1);
            }
            record
        }));
    }
    let mut records = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(record) => records.push(record),
            // A request task that panicked or was cancelled leaves no record; say so loudly.
            Err(err) => tracing::error!(%err, "a load generator task failed"),
        }
    }
    Ok(records)
}

/// Arrival offsets: Poisson at `spec.rate`, at most `max_requests`, none after `max_duration`.
pub fn arrival_offsets(spec: &LoadSpec) -> Vec<Duration> {
    ArrivalProcess::Poisson
        .times(spec.max_requests, spec.rate, spec.seed)
        .into_iter()
        .map(Duration::from_micros)
        .take_while(|at| *at <= spec.max_duration)
        .collect()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(fresh_connections: bool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(if fresh_connections { 0 } else { 256 })
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

async fn one_request(
    client: &HttpClient,
    addr: SocketAddr,
    index: usize,
    scheduled_at: Duration,
    start_lag: Duration,
    request: ChatRequest,
    timeout: Duration,
) -> RequestRecord {
    let started = Instant::now();
    let mut record = RequestRecord {
        index,
        group: request.group,
        target: addr,
        scheduled_at,
        start_lag,
        status: None,
        ttft: None,
        e2e: Duration::ZERO,
        served_by: None,
        prompt_tokens: None,
        cached_tokens: None,
        completion_tokens: None,
        content_chunks: 0,
        done: false,
        error: None,
    };
    let outcome = tokio::time::timeout(
        timeout,
        exchange(client, addr, request.body, started, &mut record),
    )
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => record.error = Some(truncate(&error)),
        Err(_) => record.error = Some(format!("no complete answer within {timeout:?}")),
    }
    record.e2e = started.elapsed();
    record
}

async fn exchange(
    client: &HttpClient,
    addr: SocketAddr,
    body: Bytes,
    started: Instant,
    record: &mut RequestRecord,
) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{CHAT_PATH}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(body))
        .map_err(|err| format!("cannot build the request: {err}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|err| format!("request failed: {err:?}"))?;
    record.status = Some(response.status().as_u16());
    record.served_by = response
        .headers()
        .get(SERVED_BY_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut stream = SseReader::default();
    let mut error_text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("response body failed: {err}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !ok {
            error_text.extend_from_slice(&data);
            continue;
        }
        for event in stream.push(&data) {
            match event {
                SseEvent::Content => {
                    record.content_chunks += 1;
                    if record.ttft.is_none() {
                        record.ttft = Some(started.elapsed());
                    }
                }
                SseEvent::Usage(usage) => {
                    record.prompt_tokens = Some(usage.prompt_tokens);
                    record.completion_tokens = Some(usage.completion_tokens);
                    record.cached_tokens = usage.cached_prompt_tokens;
                }
                SseEvent::Done => record.done = true,
                SseEvent::Other => {}
            }
        }
    }
    if !ok {
        return Err(format!(
            "status {}: {}",
            record.status.unwrap_or(0),
            String::from_utf8_lossy(&error_text)
        ));
    }
    if !record.done {
        return Err("the stream ended without [DONE]".to_owned());
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<UsageBlock>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    /// Completions chunks carry `text` instead of a delta.
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

/// What one `data:` line said.
#[derive(Debug, PartialEq)]
enum SseEvent {
    /// A chunk with non-empty content (or text).
    Content,
    Usage(TokenUsage),
    Done,
    /// Anything else (the role-only opening chunk, comments, unparsable data).
    Other,
}

/// Splits a server-sent event stream into `data:` lines, across chunk boundaries.
#[derive(Debug, Default)]
struct SseReader {
    partial: Vec<u8>,
}

impl SseReader {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.partial.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(end) = memchr::memchr(b'\n', &self.partial[consumed..]) {
            let line = &self.partial[consumed..consumed + end];
            consumed += end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                events.push(classify(data.trim_ascii()));
            }
        }
        self.partial.drain(..consumed);
        events
    }
}

fn classify(data: &[u8]) -> SseEvent {
    if data == b"[DONE]" {
        return SseEvent::Done;
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
        return SseEvent::Other;
    };
    let content = chunk.choices.iter().any(|choice| {
        let delta = choice
            .delta
            .as_ref()
            .and_then(|delta| delta.content.as_deref());
        delta
            .or(choice.text.as_deref())
            .is_some_and(|s| !s.is_empty())
    });
    match (content, chunk.usage) {
        (true, _) => SseEvent::Content,
        (false, Some(usage)) => SseEvent::Usage(usage.into()),
        (false, None) => SseEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> SharedPrefixText {
        SharedPrefixText {
            model: "m".to_owned(),
            groups: 4,
            system_words: 50,
            question_words: 5,
            max_tokens: 8,
        }
    }

    #[test]
    fn requests_share_their_group_prompt_and_are_seeded() {
        let requests = workload().requests(40, 7);
        assert_eq!(requests.len(), 40);
        assert_eq!(
            workload()
                .requests(40, 7)
                .iter()
                .map(|r| r.body.clone())
                .collect::<Vec<_>>(),
            requests.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
        );
        let system = |request: &ChatRequest| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(body["stream"], true);
            assert_eq!(body["max_tokens"], 8);
            body["messages"][0]["content"].as_str().unwrap().to_owned()
        };
        let mut groups_seen = std::collections::HashSet::new();
        for a in &requests {
            groups_seen.insert(a.group);
            for b in &requests {
                assert_eq!(a.group == b.group, system(a) == system(b));
            }
        }
        assert_eq!(groups_seen.len(), 4, "40 draws cover 4 groups");
        assert!(system(&requests[0]).split(' ').count() >= 50);
    }

    #[test]
    fn arrivals_are_bounded_by_count_and_duration() {
        let spec = LoadSpec {
            rate: 100.0,
            max_requests: 50,
            max_duration: Duration::from_secs(100),
            ..LoadSpec::default()
        };
        let arrivals = arrival_offsets(&spec);
        assert_eq!(arrivals.len(), 50);
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
        let short = LoadSpec {
            max_duration: Duration::from_millis(100),
            ..spec.clone()
        };
        let cut = arrival_offsets(&short);
        assert!(cut.len() < 50 && cut.iter().all(|at| *at <= short.max_duration));
        // Same seed, same arrivals; the mean gap is about 1 / rate.
        assert_eq!(arrival_offsets(&spec), arrivals);
        let long = LoadSpec {
            max_requests: 5_000,
            max_duration: Duration::from_secs(1_000),
            ..spec
        };
        let mean_gap = arrival_offsets(&long).last().unwrap().as_secs_f64() / 5_000.0;
        assert!((mean_gap - 0.01).abs() < 0.001, "mean gap {mean_gap}");
    }

    #[test]
    fn round_robin_cycles_servers() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let target = Target::RoundRobin(vec![a, b]);
        assert_eq!(
            (0..4).map(|i| target.addr(i)).collect::<Vec<_>>(),
            vec![Some(a), Some(b), Some(a), Some(b)]
        );
        assert_eq!(Target::RoundRobin(Vec::new()).addr(0), None);
        assert_eq!(Target::Base(a).addr(9), Some(a));
    }

    #[test]
    fn sse_lines_are_read_across_chunk_boundaries() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\r\n\r\n",
            ": a comment\n\n",
            "data: {\"choices\":[{\"index\":0,\"text\":\" there\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,",
            "\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
            "data: not json\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        let expected = vec![
            SseEvent::Other,
            SseEvent::Content,
            SseEvent::Content,
            SseEvent::Usage(TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 2,
                cached_prompt_tokens: Some(4),
            }),
            SseEvent::Other,
            SseEvent::Done,
        ];
        for split in [1, 3, 17, stream.len()] {
            let mut reader = SseReader::default();
            let events: Vec<SseEvent> = stream
                .chunks(split)
                .flat_map(|chunk| reader.push(chunk))
                .collect();
            assert_eq!(events, expected, "chunks of {split} bytes");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let requests = workload().requests(2, 1);
        let target = Target::Base("127.0.0.1:9".parse().unwrap());
        let spec = LoadSpec {
            rate: 0.0,
            ..LoadSpec::default()
        };
        let result = runtime.block_on(run(&target, &requests, &spec, None));
        assert!(matches!(result, Err(LoadError::Rate(_))));
        let result = runtime.block_on(run(&target, &[], &LoadSpec::default(), None));
        assert!(matches!(result, Err(LoadError::NoRequests)));
        let result = runtime.block_on(run(
            &Target::RoundRobin(Vec::new()),
            &requests,
            &LoadSpec::default(),
            None,
        ));
        assert!(matches!(result, Err(LoadError::NoServers)));
    }

    #[test]
    fn a_closed_port_gives_error_records() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Bind then drop: nothing listens there any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let spec = LoadSpec {
            rate: 1_000.0,
            max_requests: 3,
            ..LoadSpec::default()
        };
        let records = runtime
            .block_on(run(
                &Target::Base(addr),
                &workload().requests(3, 1),
                &spec,
                None,
            ))
            .unwrap();
        assert_eq!(records.len(), 3);
        assert!(
            records
                .iter()
                .all(|r| !r.ok() && r.status.is_none() && r.error.is_some())
        );
    }
}
