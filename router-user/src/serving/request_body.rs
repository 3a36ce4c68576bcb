//! A request body as it arrives: bounded buffer, incremental scan, and prefix hashing that runs
//! while chunks stream in, so that the work left at the end of a long body is the JSON parse and
//! the pick, not a rescan of the prompt.
//!
//! What is hashed: the raw bytes of the top-level `messages` (or `prompt`) value onwards, in
//! blocks of the scheduler's `hashBlockSize`, up to `maxPrefixBlocksToMatch` blocks, chained and
//! seeded with the target model (after rewrite). Hashing starts as soon as both the model and the
//! prompt's start have been seen (the OpenAI Python client writes `messages` before `model`: then
//! the hasher catches up from the buffer when `model` arrives, at most the capped prefix). The
//! result is checked against the full parse at the end and redone from the buffer if they
//! disagree, so the hashes never depend on the chunking.
use std::sync::Arc;

use super::json_scan::JsonScan;
use super::policy::ModelRewrites;
use crate::openai::{ApiKind, RoutingView};
use crate::scheduling::{BlockHash, PrefixHasher, Scheduler};

/// The body grew past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("request body exceeds the {limit}-byte limit")]
pub struct BodyTooLarge {
    pub limit: usize,
}

struct Hashing {
    /// Model name the hashes are seeded with.
    seed: String,
    /// Body offset hashing started from.
    from: usize,
    /// Body offset fed so far.
    fed: usize,
    hasher: PrefixHasher,
}

/// An incoming request body.
pub struct RequestBody {
    bytes: Vec<u8>,
    max_bytes: usize,
    scan: JsonScan,
    scheduler: Arc<Scheduler>,
    rewrites: Arc<ModelRewrites>,
    hashing: Option<Hashing>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("len", &self.bytes.len())
            .field("max_bytes", &self.max_bytes)
            .field(
                "hashing",
                &self.hashing.as_ref().map(|h| h.hasher.hashes().len()),
            )
            .finish()
    }
}

/// A complete body, read and ready to route.
#[derive(Debug)]
pub struct FinishedBody {
    /// The bytes to forward: the original ones, or the model-rewritten ones.
    pub bytes: Vec<u8>,
    /// Whether `bytes` differ from what the client sent.
    pub rewritten: bool,
    /// Prompt block hashes for the scheduler.
    pub prefix: Vec<BlockHash>,
    /// Bytes the client sent.
    pub original_len: usize,
}

impl RequestBody {
    /// `scheduler` decides the hashing parameters (use the one that will pick).
    pub fn new(scheduler: Arc<Scheduler>, rewrites: Arc<ModelRewrites>, max_bytes: usize) -> Self {
        Self {
            bytes: Vec::new(),
            max_bytes,
            scan: JsonScan::new(),
            scheduler,
            rewrites,
            hashing: None,
        }
    }

    /// Appends a chunk. Over the limit, nothing is appended and the caller answers 413.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyTooLarge> {
        if self.bytes.len().saturating_add(chunk.len()) > self.max_bytes {
            return Err(BodyTooLarge {
                limit: self.max_bytes,
            });
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if self.bytes.is_empty() {
            // Most bodies arrive in one chunk: size the buffer once.
            self.bytes.reserve_exact(chunk.len());
        }
        self.bytes.extend_from_slice(chunk);
        self.scan.advance(&self.bytes);
        self.hash_ahead();
        Ok(())
    }

    /// Takes a whole body at once (the proxy), without copying it.
    pub fn push_owned(&mut self, bytes: Vec<u8>) -> Result<(), BodyTooLarge> {
        if self.bytes.is_empty() {
            if bytes.len() > self.max_bytes {
                return Err(BodyTooLarge {
                    limit: self.max_bytes,
                });
            }
            self.bytes = bytes;
            self.scan.advance(&self.bytes);
            self.hash_ahead();
            Ok(())
        } else {
            self.push(&bytes)
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    fn hash_ahead(&mut self) {
        if self.hashing.is_none() {
            let Some(from) = self.scan.prompt_start() else {
                return;
            };
            let Some(model) = self.scan.model(&self.bytes) else {
                return;
            };
            let seed = self.rewrites.target(&model).to_owned();
            self.hashing = Some(Hashing {
                hasher: self.scheduler.prefix_hasher(&seed),
                seed,
                from,
                fed: from,
            });
        }
        if let Some(hashing) = &mut self.hashing {
            if !hashing.hasher.is_full()
                && let Some(fresh) = self.bytes.get(hashing.fed..)
            {
                hashing.hasher.update(fresh);
            }
            hashing.fed = self.bytes.len();
        }
    }

    /// Completes the body once `view` (the full parse) is known: prefix hashes for `target`
    /// (the model after rewrite) and, when `target` differs from the requested model, the body
    /// with the new name spliced in.
    pub fn finish(self, view: &RoutingView, target: &str) -> FinishedBody {
        let original_len = self.bytes.len();
        let start = match view.kind {
            ApiKind::ChatCompletions => self.scan.messages_at(),
            ApiKind::Completions => self.scan.prompt_at(),
        };
        let prefix = match (start, self.hashing) {
            (Some(start), Some(hashing)) if hashing.from == start && hashing.seed == target => {
                hashing.hasher.finish()
            }
            (Some(start), _) => {
                let mut hasher = self.scheduler.prefix_hasher(target);
                hasher.update(&self.bytes[start.min(self.bytes.len())..]);
                hasher.finish()
            }
            // The lexer lost track (escaped keys): hash the parsed prompt text instead.
            (None, _) => {
                let mut hasher = self.scheduler.prefix_hasher(target);
                hasher.update(view.prompt.as_bytes());
                hasher.finish()
            }
        };
        if target == view.model {
            return FinishedBody {
                bytes: self.bytes,
                rewritten: false,
                prefix,
                original_len,
            };
        }
        let bytes = splice_model(&self.scan, &self.bytes, &view.model, target)
            .unwrap_or_else(|| reserialize_model(&self.bytes, target));
        FinishedBody {
            bytes,
            rewritten: true,
            prefix,
            original_len,
        }
    }
}

/// Replaces every top-level `model` value with `target`, keeping every other byte; `None` when
/// the lexer's view does not match the parse (then the caller re-serialises).
fn splice_model(scan: &JsonScan, body: &[u8], model: &str, target: &str) -> Option<Vec<u8>> {
    if !scan.reliable() || scan.models().is_empty() || scan.model(body).as_deref() != Some(model) {
        return None;
    }
    let quoted = serde_json::to_vec(target).ok()?;
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    let mut copied = 0;
    for value in scan.models() {
        out.extend_from_slice(body.get(copied..value.range.start)?);
        out.extend_from_slice(&quoted);
        copied = value.range.end;
    }
    out.extend_from_slice(body.get(copied..)?);
    Some(out)
}

/// The slow path: parse, set `model`, serialise (key order and spacing may change).
fn reserialize_model(body: &[u8], target: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            if let Some(object) = value.as_object_mut() {
                object.insert(
                    "model".to_owned(),
                    serde_json::Value::String(target.to_owned()),
                );
            }
            serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
        }
        // The routing view parsed it, so this cannot happen; keep the body rather than fail.
        Err(_) => body.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse_routing_view;

    fn body(rewrites: &[&str]) -> RequestBody {
        RequestBody::new(
            Arc::new(Scheduler::builtin("gie-default").unwrap()),
            Arc::new(ModelRewrites::parse(rewrites).unwrap()),
            1 << 20,
        )
    }

    fn finish(text: &str, chunk: usize, rewrites: &[&str]) -> FinishedBody {
        let mut request = body(rewrites);
        for piece in text.as_bytes().chunks(chunk) {
            request.push(piece).unwrap();
        }
        let view = parse_routing_view(text.as_bytes()).unwrap();
        let target = ModelRewrites::parse(rewrites)
            .unwrap()
            .target(&view.model)
            .to_owned();
        request.finish(&view, &target)
    }

    fn long_chat(model_first: bool) -> String {
        let content = "é lorem ipsum ".repeat(200);
        let messages = format!(r#""messages":[{{"role":"user","content":"{content}"}}]"#);
        if model_first {
            format!(r#"{{"model":"m",{messages},"max_tokens":3}}"#)
        } else {
            format!(r#"{{{messages},"model":"m","max_tokens":3}}"#)
        }
    }

    #[test]
    fn hashes_do_not_depend_on_chunking_or_field_order_of_later_fields() {
        for model_first in [true, false] {
            let text = long_chat(model_first);
            let whole = finish(&text, text.len(), &[]);
            assert!(whole.prefix.len() > 5, "{} blocks", whole.prefix.len());
            for chunk in [1, 7, 255, 1000] {
                assert_eq!(
                    finish(&text, chunk, &[]).prefix,
                    whole.prefix,
                    "chunk {chunk}"
                );
            }
            assert!(!whole.rewritten);
            assert_eq!(whole.bytes, text.as_bytes());
        }
        // The same messages give the same leading blocks whether or not `model` comes first.
        let a = finish(&long_chat(true), 100, &[]).prefix;
        let b = finish(&long_chat(false), 100, &[]).prefix;
        assert_eq!(a[..4], b[..4]);
    }

    #[test]
    fn rewrite_splices_the_name_and_reseeds_the_hashes() {
        let text = long_chat(true);
        let plain = finish(&text, 64, &[]);
        let rewritten = finish(&text, 64, &["m=target/\"quoted\""]);
        assert!(rewritten.rewritten);
        let expected = text.replacen(r#""model":"m""#, r#""model":"target/\"quoted\"""#, 1);
        assert_eq!(String::from_utf8(rewritten.bytes).unwrap(), expected);
        assert_ne!(
            plain.prefix[0], rewritten.prefix[0],
            "seeded by the target model"
        );
    }

    #[test]
    fn escaped_keys_fall_back_to_reserialising() {
        let text = r#"{"mod\u0065l":"m","prompt":"hello"}"#;
        let done = finish(text, 3, &["m=n"]);
        let value: serde_json::Value = serde_json::from_slice(&done.bytes).unwrap();
        assert_eq!(value["model"], "n");
        assert_eq!(value["prompt"], "hello");
    }

    #[test]
    fn limit_is_enforced_without_appending() {
        let mut request = RequestBody::new(
            Arc::new(Scheduler::builtin("random").unwrap()),
            Arc::new(ModelRewrites::default()),
            10,
        );
        request.push(b"12345").unwrap();
        assert_eq!(request.push(b"678901"), Err(BodyTooLarge { limit: 10 }));
        assert_eq!(request.len(), 5);
    }
}
