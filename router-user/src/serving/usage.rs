//! Watches a response body go by, chunk by chunk, for what the router settles on: the OpenAI
//! `usage` block (token accounting, realised prefix-cache hits) and the timing of the stream
//! (time to first token, time per output token).
//!
//! Server-sent events are parsed incrementally across chunk boundaries: a `data:` line split over
//! two chunks is reassembled (bounded: a line longer than [`MAX_SSE_LINE`] cannot be a usage
//! event and is skipped). Any event may carry `usage` (vLLM sends it on the last chunk with
//! `stream_options.include_usage`, on every chunk with `continuous_usage_stats`); the last one
//! wins. A JSON (non-streamed) body keeps only its tail, where OpenAI servers put `usage`, so
//! observing costs no copy of the body.
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cluster::TokenUsage;

/// Longest SSE line buffered across chunks.
pub const MAX_SSE_LINE: usize = 256 * 1024;
/// Bytes of a JSON body's tail kept to find `usage`.
const JSON_TAIL: usize = 64 * 1024;

#[derive(Deserialize)]
struct UsageEvent {
    #[serde(default)]
    usage: Option<UsageBlock>,
}

/// The `usage` object of an OpenAI response or final stream chunk, read leniently (missing
/// fields are zero or absent); convert it with `TokenUsage::from`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct UsageBlock {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<UsageBlock> for TokenUsage {
    fn from(block: UsageBlock) -> Self {
        Self {
            prompt_tokens: block.prompt_tokens,
            completion_tokens: block.completion_tokens,
            cached_prompt_tokens: block
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `text/event-stream`.
    Sse,
    /// Anything else: read the tail as JSON at the end.
    Whole,
}

/// What the observer learned about one response.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    pub usage: Option<TokenUsage>,
    /// Response body bytes seen.
    pub bytes: u64,
    /// From the observer's start to the first content event (SSE) or first body byte.
    pub first_token: Option<Duration>,
    /// Mean time between output tokens after the first, from the stream's timing and the
    /// completion token count (SSE responses with usage only).
    pub per_output_token: Option<Duration>,
    /// SSE data events seen (excluding `[DONE]`).
    pub events: u64,
}

/// Incremental response observer.
#[derive(Debug)]
pub struct ResponseObserver {
    framing: Framing,
    started: Instant,
    line: Vec<u8>,
    /// The current line outgrew [`MAX_SSE_LINE`]: drop bytes until its end.
    skipping: bool,
    tail: Vec<u8>,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
    observed: Observed,
}

impl ResponseObserver {
    /// `content_type` of the response; timing starts at `started` (when the request was routed).
    pub fn new(content_type: Option<&str>, started: Instant) -> Self {
        let sse = content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        Self {
            framing: if sse { Framing::Sse } else { Framing::Whole },
            started,
            line: Vec::new(),
            skipping: false,
            tail: Vec::new(),
            first_event: None,
            last_event: None,
            observed: Observed::default(),
        }
    }

    pub fn is_sse(&self) -> bool {
        self.framing == Framing::Sse
    }

    /// Observes the next body bytes, received at `now`.
    pub fn observe(&mut self, chunk: &[u8], now: Instant) {
        if chunk.is_empty() {
            return;
        }
        self.observed.bytes += chunk.len() as u64;
        match self.framing {
            Framing::Sse => self.observe_sse(chunk, now),
            Framing::Whole => {
                if self.observed.first_token.is_none() {
                    self.observed.first_token = Some(now.saturating_duration_since(self.started));
                }
                self.tail.extend_from_slice(chunk);
                if self.tail.len() > 2 * JSON_TAIL {
                    self.tail.drain(..self.tail.len() - JSON_TAIL);
                }
            }
        }
    }

    fn observe_sse(&mut self, mut chunk: &[u8], now: Instant) {
        while let Some(newline) = memchr::memchr(b'\n', chunk) {
            let (piece, rest) = chunk.split_at(newline);
            chunk = &rest[1..];
            if self.skipping {
                self.skipping = false;
                self.line.clear();
                continue;
            }
            if self.line.is_empty() {
                self.sse_line(piece, now);
            } else {
                self.line.extend_from_slice(piece);
                let line = std::mem::take(&mut self.line);
                self.sse_line(&line, now);
                self.line = line;
                self.line.clear();
            }
        }
        if !chunk.is_empty() && !self.skipping {
            if self.line.len() + chunk.len() > MAX_SSE_LINE {
                self.skipping = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(chunk);
            }
        }
    }

    fn sse_line(&mut self, line: &[u8], now: Instant) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" || data.is_empty() {
            return;
        }
        self.observed.events += 1;
        if self.first_event.is_none() {
            self.first_event = Some(now);
            self.observed.first_token = Some(now.saturating_duration_since(self.started));
        }
        self.last_event = Some(now);
        // Only events that mention usage are parsed (a content chunk is skipped by a scan).
        if memchr::memmem::find(data, b"\"usage\"").is_some()
            && let Ok(UsageEvent { usage: Some(usage) }) = serde_json::from_slice(data)
        {
            self.observed.usage = Some(usage.into());
        }
    }

    /// Ends the observation (end of stream) and returns what was learned.
    pub fn finish(&mut self) -> Observed {
        match self.framing {
            Framing::Sse => {
                if !self.line.is_empty() && !self.skipping {
                    // A last event without its newline.
                    let line = std::mem::take(&mut self.line);
                    let now = self.last_event.unwrap_or(self.started);
                    self.sse_line(&line, now);
                }
                if let (Some(first), Some(last), Some(usage)) =
                    (self.first_event, self.last_event, self.observed.usage)
                    && usage.completion_tokens > 1
                {
                    let span = last.saturating_duration_since(first);
                    self.observed.per_output_token =
                        Some(span / (usage.completion_tokens - 1) as u32);
                }
            }
            Framing::Whole => {
                if let Some(usage) = usage_in_tail(&self.tail) {
                    self.observed.usage = Some(usage);
                }
                self.tail = Vec::new();
            }
        }
        self.observed
    }

    /// What was learned so far (without finishing).
    pub fn observed(&self) -> Observed {
        self.observed
    }
}

/// The last top-level-looking `"usage": {...}` in the tail of a JSON body.
fn usage_in_tail(tail: &[u8]) -> Option<TokenUsage> {
    // The whole body, when it is all here: the exact answer.
    if let Ok(UsageEvent { usage: Some(usage) }) = serde_json::from_slice(tail) {
        return Some(usage.into());
    }
    let finder = memchr::memmem::FinderRev::new(b"\"usage\"");
    let mut end = tail.len();
    while let Some(at) = finder.rfind(&tail[..end]) {
        end = at;
        // Inside a string the quote would be escaped.
        if at > 0 && tail[at - 1] == b'\\' {
            continue;
        }
        let rest = &tail[at + b"\"usage\"".len()..];
        let rest = trim_start(rest);
        let Some(value) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut values = serde_json::Deserializer::from_slice(trim_start(value))
            .into_iter::<Option<UsageBlock>>();
        if let Some(Ok(Some(usage))) = values.next() {
            return Some(usage.into());
        }
    }
    None
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take_while(|byte| byte.is_ascii_whitespace())
        .count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"1\",\"choices\":[{\"text\":\"Hel\"}]}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"text\":\"lo \\\"usage\\\"\"}]}\n\n",
        ": comment\n\n",
        "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,",
        "\"total_tokens\":15,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(body: &[u8], chunk: usize, content_type: &str) -> Observed {
        let start = Instant::now();
        let mut observer = ResponseObserver::new(Some(content_type), start);
        for (index, piece) in body.chunks(chunk).enumerate() {
            observer.observe(piece, start + Duration::from_millis(index as u64));
        }
        observer.finish()
    }

    #[test]
    fn sse_usage_survives_any_split() {
        let expected = TokenUsage {
            prompt_tokens: 12,
            completion_tokens: 3,
            cached_prompt_tokens: Some(8),
        };
        for chunk in [1, 2, 5, 17, 64, STREAM.len()] {
            let observed = run(STREAM.as_bytes(), chunk, "text/event-stream; charset=utf-8");
            assert_eq!(observed.usage, Some(expected), "chunk {chunk}");
            assert_eq!(observed.events, 3, "chunk {chunk}");
            assert_eq!(observed.bytes, STREAM.len() as u64);
        }
        let observed = run(STREAM.as_bytes(), 1, "text/event-stream");
        assert!(observed.per_output_token.is_some());
        assert!(observed.first_token.is_some());
    }

    #[test]
    fn crlf_lines_and_missing_final_newline() {
        let body = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\n";
        let observed = run(body.as_bytes(), 3, "text/event-stream");
        assert_eq!(observed.usage.map(|u| u.completion_tokens), Some(2));
        let body = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":4}}";
        let observed = run(body.as_bytes(), 7, "text/event-stream");
        assert_eq!(observed.usage.map(|u| u.completion_tokens), Some(4));
    }

    #[test]
    fn json_usage_in_whole_and_long_bodies() {
        let body = r#"{"id":"x","choices":[{"text":"a \"usage\": {\"prompt_tokens\": 99}"}],"usage":{"prompt_tokens":5,"completion_tokens":6,"prompt_tokens_details":null}}"#;
        let observed = run(body.as_bytes(), 10, "application/json");
        assert_eq!(
            observed.usage,
            Some(TokenUsage {
                prompt_tokens: 5,
                completion_tokens: 6,
                cached_prompt_tokens: None
            })
        );
        // A body longer than the tail window: only the tail is kept and searched.
        let text = "x".repeat(3 * JSON_TAIL);
        let long = format!(
            r#"{{"choices":[{{"text":"{text}"}}],"usage":{{"prompt_tokens":7,"completion_tokens":8}}}}"#
        );
        let observed = run(long.as_bytes(), 4096, "application/json");
        assert_eq!(observed.usage.map(|u| u.prompt_tokens), Some(7));
        assert_eq!(run(b"not json", 3, "text/plain").usage, None);
    }

    #[test]
    fn overlong_sse_lines_are_skipped_not_buffered() {
        let mut body = b"data: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_SSE_LINE + 10));
        body.extend_from_slice(
            b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n",
        );
        let observed = run(&body, 4096, "text/event-stream");
        assert_eq!(observed.usage.map(|u| u.prompt_tokens), Some(1));
    }
}
