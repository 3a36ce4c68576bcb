//! Request bodies of `POST /v1/completions` and `POST /v1/chat/completions`.
//!
//! Field names, types and optionality follow vLLM's OpenAI server (`protocol.py`): unknown
//! fields are accepted and kept in `extra` (vLLM allows and ignores them), sampling parameters
//! stay unvalidated here (the server checks ranges and answers with its own messages).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chat::ChatPromptBuilder;

/// `stream_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `data: [DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// vLLM extension: `usage` on every chunk.
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `prompt` of a completions request: text, a batch of texts, token ids or batches of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl Prompt {
    /// Number of prompts in the batch.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(texts) => texts.len(),
            Self::TokenBatches(batches) => batches.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `stop`: one string or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn strings(&self) -> Vec<&str> {
        match self {
            Self::One(one) => vec![one.as_str()],
            Self::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// Generation parameters both endpoints take (flattened into each request body).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Completions default to 16; chat to the rest of the context window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// vLLM extension: keep generating past end-of-sequence until `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
}

impl SamplingParams {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false)
    }

    /// The stop strings, possibly none.
    pub fn stop_strings(&self) -> Vec<String> {
        self.stop
            .as_ref()
            .map(|stop| stop.strings().into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Optional in vLLM: a missing model means the served base model.
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    pub params: SamplingParams,
    /// Everything else the client sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One part of a message's content array (`{"type": "text", "text": ...}`, images, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// Appends the text of this content (text parts joined by newlines, as vLLM's "string"
    /// content format does; non-text parts carry no text).
    pub fn append_text(&self, out: &mut String) {
        match self {
            Self::Text(text) => out.push_str(text),
            Self::Parts(parts) => {
                let mut first = true;
                for text in parts.iter().filter_map(|part| part.text.as_deref()) {
                    if !first {
                        out.push('\n');
                    }
                    out.push_str(text);
                    first = false;
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    pub fn text(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: Some(MessageContent::Text(content.to_owned())),
            name: None,
            extra: Map::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// OpenAI's replacement of `max_tokens`; both are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub params: SamplingParams,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// `max_completion_tokens`, else `max_tokens` (vLLM's precedence).
    pub fn requested_max_tokens(&self) -> Option<i64> {
        self.max_completion_tokens.or(self.params.max_tokens)
    }

    /// The prompt text the chat template renders, ending with the assistant header.
    pub fn render_prompt(&self) -> String {
        let mut builder = ChatPromptBuilder::new();
        for message in &self.messages {
            let mut content = String::new();
            if let Some(body) = &message.content {
                body.append_text(&mut content);
            }
            builder.message(&message.role, &content);
        }
        builder.finish(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_prompts_of_every_shape_parse() {
        let text: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":"hi","max_tokens":5}"#).unwrap();
        assert_eq!(text.prompt, Prompt::Text("hi".into()));
        assert_eq!(text.params.max_tokens, Some(5));
        let texts: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":["a","b"]}"#).unwrap();
        assert_eq!(texts.prompt.len(), 2);
        let ids: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(ids.prompt, Prompt::Tokens(vec![1, 2, 3]));
        let batches: CompletionRequest = serde_json::from_str(r#"{"prompt":[[1],[2,3]]}"#).unwrap();
        assert_eq!(batches.prompt.len(), 2);
        assert_eq!(batches.model, None);
    }

    #[test]
    fn unknown_fields_are_kept() {
        let request: CompletionRequest = serde_json::from_str(
            r#"{"model":"m","prompt":"x","best_of":2,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(request.extra.get("best_of"), Some(&Value::from(2)));
        assert!(
            !request.extra.contains_key("stream"),
            "known fields are not extra"
        );
        assert!(request.params.is_stream() && request.params.include_usage());
        let back = serde_json::to_value(&request).unwrap();
        assert_eq!(back["best_of"], 2);
    }

    #[test]
    fn chat_content_parts_and_token_limits() {
        let request: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null,"tool_calls":[]}
            ],"max_tokens":7,"max_completion_tokens":9,"stop":"END"}"#,
        )
        .unwrap();
        assert_eq!(request.requested_max_tokens(), Some(9));
        assert_eq!(request.params.stop_strings(), vec!["END".to_owned()]);
        assert_eq!(request.params.max_tokens, Some(7));
        let prompt = request.render_prompt();
        assert!(
            prompt.contains("user<|end_header_id|>\n\na\nb<|eot_id|>"),
            "{prompt}"
        );
        assert!(prompt.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
        assert!(request.messages[2].extra.contains_key("tool_calls"));
    }
}
