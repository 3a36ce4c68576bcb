//! What the scheduler needs to know about one request.
use std::net::SocketAddr;

/// A chained hash of one prompt block: it depends on the block and on every block before it, so
/// equal hashes mean equal prefixes up to and including that block.
pub type BlockHash = u64;

/// Output tokens assumed when a request sets no `max_tokens`, for in-flight token accounting.
pub const DEFAULT_OUTPUT_TOKENS: u32 = 256;

/// One request as the scheduler sees it. Borrowed: building it allocates nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulingRequest<'a> {
    /// Base model the request asks for (after any model rewrite).
    pub model: &'a str,
    /// LoRA adapter the request targets, when the (rewritten) model name is an adapter.
    pub lora: Option<&'a str>,
    /// Chained block hashes of the prompt, from [`PrefixHasher`](super::PrefixHasher).
    pub prefix: &'a [BlockHash],
    /// Estimated prompt tokens.
    pub input_tokens: u32,
    pub max_tokens: Option<u32>,
    /// Negative = sheddable (dropped with 429 when the pool is saturated), as in GIE's
    /// InferenceObjective.
    pub priority: i32,
    /// Session key (e.g. a session header or user id) for session affinity.
    pub session: Option<&'a str>,
    /// Only these endpoints may be picked (Envoy's subset hint); `None` = any endpoint.
    pub subset: Option<&'a [SocketAddr]>,
}

impl<'a> SchedulingRequest<'a> {
    pub fn new(model: &'a str) -> Self {
        Self {
            model,
            ..Self::default()
        }
    }

    pub fn is_sheddable(&self) -> bool {
        self.priority < 0
    }

    /// Tokens to count in flight for this request: prompt plus expected output.
    pub fn estimated_tokens(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS))
    }

    /// The model name LoRA state is keyed by: the adapter when there is one.
    pub fn target_model(&self) -> &'a str {
        self.lora.unwrap_or(self.model)
    }
}
