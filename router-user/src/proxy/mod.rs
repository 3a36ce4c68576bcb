//! The standalone OpenAI-compatible proxy (`switchyard proxy`): the same scheduler as the
//! endpoint picker, in-process, in front of the model servers. `POST /v1/completions` and
//! `/v1/chat/completions` are scheduled and forwarded (streams passed through frame by frame),
//! `GET /v1/models` goes to a ready endpoint, `/health`, `/metrics` and `/debug/*` report.
//! Behaviour and flags: `docs/proxy.md`.
//!
//! - [`server`]: routes, admission, retries, drain; [`upstream`]: the pooled client and the
//!   observed response body; [`cli`]: `switchyard proxy`.
pub mod cli;
pub mod server;
pub mod upstream;

pub use server::{ProxyConfig, ProxyError, ProxyServer};
