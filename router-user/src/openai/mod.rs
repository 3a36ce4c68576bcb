//! OpenAI-compatible API types shared by the simulator, the proxy and the endpoint picker.
//!
//! - [`request`]: completions / chat completions bodies (unknown fields kept, as vLLM allows).
//! - [`response`]: responses, streaming chunks, usage, `/v1/models`.
//! - [`error`]: vLLM-shaped error bodies with axum's `IntoResponse`.
//! - [`chat`]: the chat template that turns messages into prompt text.
//! - [`routing`]: a one-pass reader of the fields a router needs (model, stream, max tokens,
//!   prompt text) with a precise error type.
pub mod chat;
pub mod error;
pub mod request;
pub mod response;
pub mod routing;

pub use chat::ChatPromptBuilder;
pub use error::{ApiError, ErrorBody, ErrorInfo};
pub use request::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, ContentPart, MessageContent, Prompt,
    SamplingParams, Stop, StreamOptions,
};
pub use response::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse,
    ChatDelta, Choice, CompletionChoice, CompletionChunk, CompletionResponse, Delta, Envelope,
    Message, ModelCard, ModelList, ModelPermission, PromptTokensDetails, Text, Usage,
};
pub use routing::{ApiKind, RoutingView, RoutingViewError, parse_routing_view};
