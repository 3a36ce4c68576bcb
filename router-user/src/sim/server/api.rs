//! `POST /v1/completions` and `POST /v1/chat/completions`: validation in vLLM's order (body,
//! model, context length, sampling parameters), submission, and the streamed or whole answer.
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::driver::{self, EngineRequest};
use super::generation::{ChoicePlan, Delta, Finish, Generation};
use crate::clock::{Clock, MICROS_PER_SEC};
use crate::openai::response::{Delta as ChunkDelta, Message, Text};
use crate::openai::response::{
    OBJECT_CHAT_CHUNK, OBJECT_CHAT_COMPLETION, OBJECT_TEXT_COMPLETION, SSE_DONE, sse_event,
};
use crate::openai::{
    ApiError, AssistantMessage, ChatCompletionRequest, ChatDelta, Choice, CompletionRequest,
    Envelope, Prompt, SamplingParams, Usage,
};
use crate::sim::tokens::{VOCAB_SIZE, encode_prompt, mix64};

/// vLLM's default `max_tokens` for completions.
const DEFAULT_COMPLETION_MAX_TOKENS: i64 = 16;
/// Upper bound on `n` and on choices per request (the simulator's own limit).
const MAX_N: i64 = 128;
const MAX_CHOICES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

struct Plan {
    api: Api,
    model: String,
    requests: Vec<EngineRequest>,
    choices: Vec<ChoicePlan>,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, &headers, &body, Api::Completions)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, &headers, &body, Api::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle(
    state: Arc<AppState>,
    headers: &HeaderMap,
    body: &[u8],
    api: Api,
) -> Result<Response, ApiError> {
    let drop_after = request_faults(&state).await?;
    check_content_type(headers)?;
    let plan = match api {
        Api::Completions => plan_completion(&state, body)?,
        Api::Chat => plan_chat(&state, body)?,
    };
    let (ids, events, guard) = driver::submit(&state, plan.requests)?;
    let meta = Meta::new(
        &state,
        &plan.model,
        plan.api,
        ids.first().copied().unwrap_or(0),
        plan.include_usage,
    );
    let generation = Generation::new(
        plan.choices,
        ids,
        &plan.stops,
        events,
        guard,
        state.seed,
        !plan.stream,
    );
    if plan.stream {
        return Ok(stream(generation, meta, drop_after));
    }
    if drop_after.is_some() {
        return Ok(dropped_connection());
    }
    Ok(whole(generation, meta).await)
}

/// Applies latency, errors and hangs; returns after how many tokens to cut the connection if
/// this request is one to drop.
async fn request_faults(state: &AppState) -> Result<Option<u32>, ApiError> {
    let (faults, error_roll, hang_roll, drop_roll) = {
        let mut fault_state = state.faults.lock();
        let rolls = (
            fault_state.rng.random::<f64>(),
            fault_state.rng.random::<f64>(),
            fault_state.rng.random::<f64>(),
        );
        (fault_state.faults.clone(), rolls.0, rolls.1, rolls.2)
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if hang_roll < faults.hang_rate {
        // Never answers; the client's timeout ends it (dropping this future).
        std::future::pending::<()>().await;
    }
    if error_roll < faults.error_rate {
        let status = http::StatusCode::from_u16(faults.error_status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        return Err(ApiError::from_status(
            status,
            "Simulated server error (fault injection).",
        ));
    }
    Ok((drop_roll < faults.drop_rate).then_some(faults.drop_after_tokens))
}

/// vLLM accepts only JSON bodies; a body sent without a content type is let through.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/json" {
        Ok(())
    } else {
        Err(ApiError::invalid_body(
            "Unsupported Media Type: Only 'application/json' is allowed",
        ))
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid_body(format!("Invalid request body: {err}")))
}

/// The served name the answer echoes, and the LoRA adapter it selects.
fn resolve_model(
    state: &AppState,
    requested: Option<&str>,
) -> Result<(String, Option<Arc<str>>), ApiError> {
    match requested {
        None => Ok((state.model.clone(), None)),
        Some(name) if name == state.model => Ok((name.to_owned(), None)),
        Some(name) if state.lora_modules.iter().any(|lora| lora.name == name) => {
            Ok((name.to_owned(), Some(Arc::from(name))))
        }
        Some(name) => Err(ApiError::model_not_found(name)),
    }
}

fn check_stream_options(params: &SamplingParams) -> Result<(), ApiError> {
    if params.stream_options.is_some() && !params.is_stream() {
        return Err(ApiError::invalid_body(
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    Ok(())
}

fn check_context(
    max_model_len: u32,
    prompt_tokens: usize,
    max_tokens: i64,
) -> Result<(), ApiError> {
    let out = max_tokens.max(0) as u64;
    let prompt = prompt_tokens as u64;
    let limit = u64::from(max_model_len);
    if prompt >= limit || prompt + out > limit {
        return Err(ApiError::context_length_exceeded(limit, prompt, out));
    }
    Ok(())
}

/// vLLM's `SamplingParams` checks, with its messages. Returns (max_tokens, n).
fn check_sampling(sampling: &SamplingParams, max_tokens: i64) -> Result<(u32, u32), ApiError> {
    let n = sampling.n.unwrap_or(1);
    if n < 1 {
        return Err(ApiError::invalid_parameter(
            "n",
            &format!("n must be at least 1, got {n}."),
            n,
        ));
    }
    if n > MAX_N {
        return Err(ApiError::invalid_parameter(
            "n",
            &format!("n must be at most {MAX_N}, got {n}."),
            n,
        ));
    }
    for (name, value) in [
        ("presence_penalty", sampling.presence_penalty),
        ("frequency_penalty", sampling.frequency_penalty),
    ] {
        if let Some(value) = value
            && !(-2.0..=2.0).contains(&value)
        {
            return Err(ApiError::invalid_parameter(
                name,
                &format!("{name} must be in [-2, 2], got {value:?}."),
                format!("{value:?}"),
            ));
        }
    }
    if let Some(temperature) = sampling.temperature {
        if !temperature.is_finite() {
            return Err(ApiError::invalid_parameter(
                "temperature",
                &format!("temperature must be a finite number, got {temperature}."),
                temperature,
            ));
        }
        if temperature < 0.0 {
            return Err(ApiError::invalid_parameter(
                "temperature",
                &format!("temperature must be non-negative, got {temperature:?}."),
                format!("{temperature:?}"),
            ));
        }
    }
    if let Some(top_p) = sampling.top_p
        && !(top_p > 0.0 && top_p <= 1.0)
    {
        return Err(ApiError::invalid_parameter(
            "top_p",
            &format!("top_p must be in (0, 1], got {top_p:?}."),
            format!("{top_p:?}"),
        ));
    }
    if max_tokens < 1 {
        return Err(ApiError::invalid_parameter(
            "max_tokens",
            &format!("max_tokens must be at least 1, got {max_tokens}."),
            max_tokens,
        ));
    }
    Ok((u32::try_from(max_tokens).unwrap_or(u32::MAX), n as u32))
}

fn prompt_ids(ids: &[u32]) -> Result<Arc<[u32]>, ApiError> {
    if let Some(&bad) = ids.iter().find(|&&id| id >= VOCAB_SIZE) {
        return Err(ApiError::invalid_parameter(
            "prompt",
            &format!("Token id {bad} is out of vocabulary"),
            bad,
        ));
    }
    Ok(Arc::from(ids))
}

fn choices_for(
    prompts: &[Arc<[u32]>],
    n: u32,
    max_tokens: u32,
    ignore_eos: bool,
    lora: &Option<Arc<str>>,
) -> (Vec<EngineRequest>, Vec<ChoicePlan>) {
    let mut requests = Vec::with_capacity(prompts.len() * n as usize);
    let mut choices = Vec::with_capacity(prompts.len() * n as usize);
    for (group, prompt) in prompts.iter().enumerate() {
        for copy in 0..n {
            choices.push(ChoicePlan {
                index: group as u32 * n + copy,
                prompt_group: group,
                prompt_tokens: prompt.len() as u32,
            });
            requests.push(EngineRequest {
                prompt: prompt.clone(),
                max_tokens,
                ignore_eos,
                lora: lora.clone(),
            });
        }
    }
    (requests, choices)
}

/// The checks and choices both endpoints share, once the prompts are known.
fn plan(
    api: Api,
    (model, lora): (String, Option<Arc<str>>),
    prompts: &[Arc<[u32]>],
    max_tokens: i64,
    params: &SamplingParams,
) -> Result<Plan, ApiError> {
    let (max_tokens, n) = check_sampling(params, max_tokens)?;
    if prompts.len() * n as usize > MAX_CHOICES {
        return Err(ApiError::bad_request(format!(
            "At most {MAX_CHOICES} choices per request (prompts x n)."
        )));
    }
    let (requests, choices) = choices_for(
        prompts,
        n,
        max_tokens,
        params.ignore_eos.unwrap_or(false),
        &lora,
    );
    Ok(Plan {
        api,
        model,
        requests,
        choices,
        stops: params.stop_strings(),
        stream: params.is_stream(),
        include_usage: params.include_usage(),
    })
}

fn plan_completion(state: &AppState, body: &[u8]) -> Result<Plan, ApiError> {
    let request: CompletionRequest = parse_body(body)?;
    check_stream_options(&request.params)?;
    let model = resolve_model(state, request.model.as_deref())?;
    let prompts: Vec<Arc<[u32]>> = match &request.prompt {
        Prompt::Text(text) => vec![Arc::from(encode_prompt(text))],
        Prompt::Texts(texts) => texts
            .iter()
            .map(|text| Arc::from(encode_prompt(text)))
            .collect(),
        Prompt::Tokens(ids) => vec![prompt_ids(ids)?],
        Prompt::TokenBatches(batches) => batches
            .iter()
            .map(|ids| prompt_ids(ids))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() || prompts.iter().any(|prompt| prompt.is_empty()) {
        return Err(ApiError::invalid_parameter(
            "prompt",
            "Prompt cannot be empty.",
            "[]",
        ));
    }
    let max_tokens = request
        .params
        .max_tokens
        .unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS);
    for prompt in &prompts {
        check_context(state.max_model_len, prompt.len(), max_tokens)?;
    }
    plan(
        Api::Completions,
        model,
        &prompts,
        max_tokens,
        &request.params,
    )
}

fn plan_chat(state: &AppState, body: &[u8]) -> Result<Plan, ApiError> {
    let request: ChatCompletionRequest = parse_body(body)?;
    check_stream_options(&request.params)?;
    let model = resolve_model(state, request.model.as_deref())?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid_parameter(
            "messages",
            "messages cannot be empty.",
            "[]",
        ));
    }
    let prompt: Arc<[u32]> = Arc::from(encode_prompt(&request.render_prompt()));
    // Without a limit, vLLM lets a chat answer run to the end of the context window.
    let room = i64::from(state.max_model_len) - prompt.len() as i64;
    let max_tokens = request.requested_max_tokens().unwrap_or(room.max(0));
    check_context(state.max_model_len, prompt.len(), max_tokens)?;
    plan(Api::Chat, model, &[prompt], max_tokens, &request.params)
}

/// Fields every chunk and answer repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    api: Api,
    include_usage: bool,
}

impl Meta {
    fn new(state: &AppState, model: &str, api: Api, first_id: u64, include_usage: bool) -> Self {
        let prefix = match api {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
        };
        let high = mix64(state.seed ^ first_id);
        Self {
            id: format!("{prefix}-{high:016x}{:016x}", mix64(high)),
            created: crate::clock::SystemClock.now() / MICROS_PER_SEC,
            model: model.to_owned(),
            api,
            include_usage,
        }
    }

    fn envelope<C>(&self, object: &str, choices: Vec<C>, usage: Option<Usage>) -> Envelope<C> {
        Envelope {
            id: self.id.clone(),
            object: object.to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn chunk(&self, delta: &Delta) -> Result<String, serde_json::Error> {
        let finish = delta.finish.as_ref();
        match self.api {
            Api::Completions => {
                let body = Text {
                    text: delta.text.clone(),
                };
                let choices = vec![choice(delta.index, body, finish)];
                sse_event(&self.envelope(OBJECT_TEXT_COMPLETION, choices, None))
            }
            Api::Chat => {
                let body = ChunkDelta {
                    delta: ChatDelta {
                        role: None,
                        content: Some(delta.text.clone()),
                    },
                };
                let choices = vec![choice(delta.index, body, finish)];
                sse_event(&self.envelope(OBJECT_CHAT_CHUNK, choices, None))
            }
        }
    }

    fn role_chunk(&self, index: u32) -> Result<String, serde_json::Error> {
        let body = ChunkDelta {
            delta: ChatDelta {
                role: Some("assistant".to_owned()),
                content: Some(String::new()),
            },
        };
        sse_event(&self.envelope(OBJECT_CHAT_CHUNK, vec![choice(index, body, None)], None))
    }

    fn usage_chunk(&self, usage: Usage) -> Result<String, serde_json::Error> {
        let object = match self.api {
            Api::Completions => OBJECT_TEXT_COMPLETION,
            Api::Chat => OBJECT_CHAT_CHUNK,
        };
        // No choices: the body type does not matter for an empty list.
        sse_event(&self.envelope::<Choice<Text>>(object, Vec::new(), Some(usage)))
    }
}

/// A choice with its end, if it ended.
fn choice<B>(index: u32, body: B, finish: Option<&Finish>) -> Choice<B> {
    Choice {
        finish_reason: finish.map(|finish| finish.reason.to_owned()),
        stop_reason: finish
            .and_then(|finish| finish.stop_reason.clone())
            .map(serde_json::Value::String),
        ..Choice::new(index, body)
    }
}

type Chunk = Result<Bytes, std::io::Error>;

async fn send(sender: &mpsc::Sender<Chunk>, text: Result<String, serde_json::Error>) -> bool {
    let chunk = text.map(Bytes::from).map_err(std::io::Error::other);
    sender.send(chunk).await.is_ok()
}

/// Server-sent events: chunks as tokens arrive, an optional usage chunk, then `[DONE]`.
fn stream(mut generation: Generation, meta: Meta, drop_after: Option<u32>) -> Response {
    let (sender, receiver) = mpsc::channel::<Chunk>(64);
    tokio::spawn(async move {
        let mut started = false;
        loop {
            let deltas = tokio::select! {
                deltas = generation.next() => deltas,
                // Client gone: dropping `generation` aborts its engine requests.
                () = sender.closed() => return,
            };
            let Some(deltas) = deltas else { break };
            if !started && meta.api == Api::Chat {
                let mut indexes: Vec<u32> = generation
                    .results()
                    .iter()
                    .map(|(index, _, _)| *index)
                    .collect();
                indexes.dedup();
                for index in indexes {
                    if !send(&sender, meta.role_chunk(index)).await {
                        return;
                    }
                }
            }
            started = true;
            for delta in deltas
                .iter()
                .filter(|delta| !delta.text.is_empty() || delta.finish.is_some())
            {
                if !send(&sender, meta.chunk(delta)).await {
                    return;
                }
            }
            if drop_after.is_some_and(|limit| generation.tokens_delivered() >= limit) {
                let cut = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection dropped (fault injection)",
                );
                let _ = sender.send(Err(cut)).await;
                return;
            }
        }
        if meta.include_usage && !send(&sender, meta.usage_chunk(generation.usage())).await {
            return;
        }
        let _ = sender
            .send(Ok(Bytes::from_static(SSE_DONE.as_bytes())))
            .await;
    });
    let mut response = Body::from_stream(ReceiverStream::new(receiver)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Headers, then the connection is cut before any body byte.
fn dropped_connection() -> Response {
    let cut = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection dropped (fault injection)",
        ))
    });
    Body::from_stream(cut).into_response()
}

fn json_response(body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = Body::from(bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => {
            ApiError::internal(format!("cannot encode the response: {err}")).into_response()
        }
    }
}

/// Waits for every choice and answers with one JSON body.
async fn whole(mut generation: Generation, meta: Meta) -> Response {
    while generation.next().await.is_some() {}
    let usage = Some(generation.usage());
    let results = generation.results();
    match meta.api {
        Api::Completions => {
            let choices = results
                .into_iter()
                .map(|(index, text, finish)| {
                    let body = Text {
                        text: text.to_owned(),
                    };
                    choice(index, body, finish)
                })
                .collect();
            json_response(&meta.envelope(OBJECT_TEXT_COMPLETION, choices, usage))
        }
        Api::Chat => {
            let choices = results
                .into_iter()
                .map(|(index, text, finish)| {
                    let body = Message {
                        message: AssistantMessage {
                            role: "assistant".to_owned(),
                            content: Some(text.to_owned()),
                            tool_calls: Vec::new(),
                        },
                    };
                    choice(index, body, finish)
                })
                .collect();
            json_response(&meta.envelope(OBJECT_CHAT_COMPLETION, choices, usage))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_checks_use_vllm_messages() {
        let plain = SamplingParams::default();
        assert_eq!(check_sampling(&plain, 5).unwrap(), (5, 1));
        let err = check_sampling(&plain, -1).unwrap_err();
        assert_eq!(err.body.error.param.as_deref(), Some("max_tokens"));
        assert!(
            err.body
                .error
                .message
                .starts_with("max_tokens must be at least 1, got -1.")
        );
        let cold = SamplingParams {
            temperature: Some(-0.5),
            ..SamplingParams::default()
        };
        let err = check_sampling(&cold, 5).unwrap_err();
        assert!(
            err.body
                .error
                .message
                .starts_with("temperature must be non-negative, got -0.5.")
        );
        let top_p = SamplingParams {
            top_p: Some(0.0),
            ..SamplingParams::default()
        };
        let err = check_sampling(&top_p, 5).unwrap_err();
        assert_eq!(err.body.error.param.as_deref(), Some("top_p"));
        let no_choices = SamplingParams {
            n: Some(0),
            ..SamplingParams::default()
        };
        assert!(check_sampling(&no_choices, 5).is_err());
        let penalty = SamplingParams {
            presence_penalty: Some(3.0),
            ..SamplingParams::default()
        };
        assert!(check_sampling(&penalty, 5).is_err());
    }

    #[test]
    fn context_and_content_type_checks() {
        assert!(check_context(100, 50, 50).is_ok());
        assert!(check_context(100, 50, 51).is_err());
        assert!(check_context(100, 100, 0).is_err());
        assert!(
            check_context(100, 10, -5).is_ok(),
            "negative max_tokens is the sampling check's"
        );
        let mut headers = HeaderMap::new();
        assert!(check_content_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_content_type(&headers).is_ok());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            check_content_type(&headers).unwrap_err().status,
            http::StatusCode::BAD_REQUEST
        );
    }
}
