//! Response bodies and streaming chunks, as vLLM serialises them.
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const OBJECT_TEXT_COMPLETION: &str = "text_completion";
pub const OBJECT_CHAT_COMPLETION: &str = "chat.completion";
pub const OBJECT_CHAT_CHUNK: &str = "chat.completion.chunk";
/// The line that ends every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// `finish_reason` values.
pub mod finish {
    pub const STOP: &str = "stop";
    pub const LENGTH: &str = "length";
    pub const ABORT: &str = "abort";
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
    pub completion_tokens: u32,
    /// Cached prompt tokens (vLLM sends it with `--enable-prompt-tokens-details`).
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: Option<u32>) -> Self {
        Self {
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            completion_tokens,
            prompt_tokens_details: cached_tokens
                .map(|cached_tokens| PromptTokensDetails { cached_tokens }),
        }
    }
}

/// `stop_reason`: the stop string or token id that ended the choice, or null (vLLM extension).
pub type StopReason = Option<Value>;

/// One choice of an answer or chunk; `B` is what the endpoint puts in it (text, message,
/// delta).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice<B> {
    pub index: u32,
    #[serde(flatten)]
    pub body: B,
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// `null` until the choice ends (streams), then `stop`, `length` or `abort`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: StopReason,
}

impl<B> Choice<B> {
    pub fn new(index: u32, body: B) -> Self {
        Self {
            index,
            body,
            logprobs: None,
            finish_reason: None,
            stop_reason: None,
        }
    }
}

/// Body of a completions choice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    pub text: String,
}

/// Body of a chat answer's choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub message: AssistantMessage,
}

/// Body of a chat chunk's choice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub delta: ChatDelta,
}

pub type CompletionChoice = Choice<Text>;
pub type ChatChoice = Choice<Message>;
pub type ChatChunkChoice = Choice<Delta>;

/// The envelope shared by answers and stream chunks of both endpoints: `id`, `object`,
/// `created`, `model`, `choices`, and `usage` (whole answers always have it; stream chunks only
/// the last one, with `include_usage`, and no choices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<C> {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `POST /v1/completions` answer (`object: "text_completion"`).
pub type CompletionResponse = Envelope<CompletionChoice>;
/// One `data:` event of a streamed completion (`object: "text_completion"`).
pub type CompletionChunk = Envelope<CompletionChoice>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<Value>,
}

/// `POST /v1/chat/completions` answer (`object: "chat.completion"`).
pub type ChatCompletionResponse = Envelope<ChatChoice>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One `data:` event of a streamed chat completion (`object: "chat.completion.chunk"`).
pub type ChatCompletionChunk = Envelope<ChatChunkChoice>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPermission {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: String,
    pub group: Option<String>,
    pub is_blocking: bool,
}

impl ModelPermission {
    pub fn open(id: String, created: u64) -> Self {
        Self {
            id,
            object: "model_permission".to_owned(),
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*".to_owned(),
            group: None,
            is_blocking: false,
        }
    }
}

/// One entry of `GET /v1/models`; LoRA adapters name the base model in `parent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub max_model_len: Option<u32>,
    #[serde(default)]
    pub permission: Vec<ModelPermission>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// One server-sent event line pair: `data: <json>\n\n`.
pub fn sse_event(payload: &impl Serialize) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(payload)?;
    Ok(format!("data: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_chunks_serialise_like_vllm() {
        let usage = Usage::new(10, 5, Some(4));
        let json = serde_json::to_value(&usage).unwrap();
        assert_eq!(json["total_tokens"], 15);
        assert_eq!(json["prompt_tokens_details"]["cached_tokens"], 4);
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: OBJECT_CHAT_CHUNK.into(),
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice::new(
                0,
                Delta {
                    delta: ChatDelta {
                        role: None,
                        content: Some(" x".into()),
                    },
                },
            )],
            usage: None,
        };
        let line = sse_event(&chunk).unwrap();
        assert!(line.starts_with("data: {") && line.ends_with("}\n\n"));
        assert!(!line.contains("usage") && !line.contains("\"role\""));
        assert!(line.contains("\"finish_reason\":null"));
        let parsed: ChatCompletionChunk = serde_json::from_str(&line[6..line.len() - 2]).unwrap();
        assert_eq!(parsed, chunk);
    }
}
