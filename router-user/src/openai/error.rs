//! Error responses in the shape vLLM's OpenAI server sends:
//! `{"error": {"message": ..., "type": ..., "param": ..., "code": <http status>}}`.
//!
//! Types and messages mirror vLLM: request-body validation failures are 400 `"Bad Request"`
//! (FastAPI's validation handler), rejected parameters are 400 `"BadRequestError"` with the
//! parameter in `param`, an unknown model is 404 `"NotFoundError"` with `param: "model"`.
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    /// The HTTP status code, as vLLM sends it.
    pub code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// An error answer: status plus body. Implements axum's `IntoResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.error.kind,
            self.body.error.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &str,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: ErrorInfo {
                    message: message.into(),
                    kind: kind.to_owned(),
                    param: param.map(str::to_owned),
                    code: status.as_u16(),
                },
            },
        }
    }

    /// 400 for a body that does not parse or has fields of the wrong type.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", message, None)
    }

    /// 400 for a request the server refuses (vLLM `BadRequestError`).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestError", message, None)
    }

    /// 400 for one parameter out of range; the message ends with vLLM's
    /// `(parameter=..., value=...)` suffix.
    pub fn invalid_parameter(param: &str, message: &str, value: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            format!("{message} (parameter={param}, value={value})"),
            Some(param),
        )
    }

    /// 404 for a model (or LoRA adapter) the server does not serve.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("The model `{model}` does not exist."),
            Some("model"),
        )
    }

    /// 400 when prompt plus requested output exceed the context window (vLLM's message).
    pub fn context_length_exceeded(
        max_model_len: u64,
        prompt_tokens: u64,
        max_tokens: u64,
    ) -> Self {
        Self::invalid_parameter(
            "input_tokens",
            &format!(
                "This model's maximum context length is {max_model_len} tokens. However, you \
                 requested {max_tokens} output tokens and your prompt contains {prompt_tokens} \
                 input tokens, for a total of {} tokens. Please reduce the length of the input \
                 prompt or the number of requested output tokens.",
                prompt_tokens + max_tokens
            ),
            prompt_tokens,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            message,
            None,
        )
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            message,
            None,
        )
    }

    /// Any status with a type derived from its reason phrase (`"Bad Gateway"` -> `BadGatewayError`).
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind: String = status
            .canonical_reason()
            .unwrap_or("Unknown")
            .split_whitespace()
            .collect::<String>()
            + "Error";
        Self::new(status, &kind, message, None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_vllm() {
        let err = ApiError::model_not_found("nope");
        let json = serde_json::to_value(&err.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "The model `nope` does not exist.",
                "type": "NotFoundError", "param": "model", "code": 404}})
        );
        let ctx = ApiError::context_length_exceeded(100, 90, 20);
        assert_eq!(ctx.status, StatusCode::BAD_REQUEST);
        assert_eq!(ctx.body.error.param.as_deref(), Some("input_tokens"));
        assert!(ctx.body.error.message.contains("for a total of 110 tokens"));
        assert!(
            ctx.body
                .error
                .message
                .ends_with("(parameter=input_tokens, value=90)")
        );
        assert_eq!(ApiError::invalid_body("x").body.error.kind, "Bad Request");
        assert_eq!(
            ApiError::from_status(StatusCode::BAD_GATEWAY, "x")
                .body
                .error
                .kind,
            "BadGatewayError"
        );
    }

    #[test]
    fn into_response_keeps_the_status() {
        let response = ApiError::internal("boom").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
