//! The router's own accounting of requests it sent and that have not finished.
//!
//! An [`Inflight`] guard is taken when a request is routed and counts it against the endpoint
//! until it is dropped: completion, error and client cancel all release it the same way, so a
//! request path cannot leak a count by forgetting an exit. These counts are fresh at every pick
//! (unlike scraped loads), which is what keeps decisions between two samples from herding.
use std::{net::SocketAddr, sync::Arc};

use super::live::{LiveEndpoint, TokenUsage};

/// One routed request, counted against its endpoint until dropped.
#[derive(Debug)]
#[must_use = "the request stops being counted as soon as the guard is dropped"]
pub struct Inflight {
    addr: SocketAddr,
    live: Arc<LiveEndpoint>,
    tokens: u64,
    usage: Option<TokenUsage>,
}

impl Inflight {
    pub(crate) fn start(addr: SocketAddr, live: Arc<LiveEndpoint>, estimated_tokens: u64) -> Self {
        live.begin(estimated_tokens);
        Self {
            addr,
            live,
            tokens: estimated_tokens,
            usage: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tokens currently counted for this request.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Replaces the token estimate, e.g. once the prompt was tokenised or a streamed `usage`
    /// block told the real prompt size.
    pub fn set_tokens(&mut self, tokens: u64) {
        self.live.adjust_tokens(self.tokens, tokens);
        self.tokens = tokens;
    }

    /// Ends the request and settles its token accounting from the response's `usage` block.
    pub fn complete(mut self, usage: &TokenUsage) {
        self.usage = Some(*usage);
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.live.end(self.tokens, self.usage.as_ref());
    }
}
