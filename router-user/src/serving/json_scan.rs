//! An incremental lexer over a JSON request body that finds where the routing fields are,
//! without building anything: the byte ranges of the top-level `model` string values and the
//! offsets where the top-level `messages` and `prompt` values start.
//!
//! It runs on each body chunk as it arrives (an endpoint picker gets the body in ~64 KiB pieces
//! and must not rescan it at the end), so prefix hashing can start before the body is complete,
//! and a model rewrite can splice the new name into the original bytes instead of re-serialising
//! a possibly megabyte-long document. It does not validate: `openai::parse_routing_view` still
//! reads the complete body and decides what it means; callers compare the two and fall back to
//! the slow path when they disagree (e.g. a key written with escapes).
use std::ops::Range;

/// What the lexer expects next at the top level of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Top {
    Key,
    Colon,
    Value,
    /// Inside or after a value, until the next `,`.
    AfterValue,
}

/// Top-level keys the router cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Model,
    Messages,
    Prompt,
    Other,
}

/// What the string being lexed is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    TopKey,
    ModelValue,
    Other,
}

/// A `model` value found at the top level: the string's bytes including its quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelValue {
    pub range: Range<usize>,
    /// The string holds escape sequences (decode it with a JSON parser).
    pub escaped: bool,
}

/// Incremental scan state. Feed it the whole body buffer after each append
/// ([`advance`](Self::advance)); it resumes where it stopped.
#[derive(Clone, Debug)]
pub struct JsonScan {
    scanned: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    string_start: usize,
    string_escaped: bool,
    role: Role,
    top: Top,
    key: Key,
    /// The document is not an object, or closed early: stop tracking.
    off_track: bool,
    /// A top-level key used escapes: its meaning is unknown to this lexer.
    escaped_key: bool,
    models: Vec<ModelValue>,
    messages_at: Option<usize>,
    prompt_at: Option<usize>,
}

impl Default for JsonScan {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonScan {
    pub fn new() -> Self {
        Self {
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            string_start: 0,
            string_escaped: false,
            role: Role::Other,
            top: Top::Key,
            key: Key::Other,
            off_track: false,
            escaped_key: false,
            models: Vec::new(),
            messages_at: None,
            prompt_at: None,
        }
    }

    /// Scans `body[self.scanned..]`; `body` must start with the bytes already scanned.
    pub fn advance(&mut self, body: &[u8]) {
        let mut at = self.scanned.min(body.len());
        while at < body.len() && !self.off_track {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    at += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &body[at..]) {
                    None => at = body.len(),
                    Some(found) => {
                        let stop = at + found;
                        if body[stop] == b'\\' {
                            self.escaped = true;
                            self.string_escaped = true;
                        } else {
                            self.in_string = false;
                            self.end_string(body, stop);
                        }
                        at = stop + 1;
                    }
                }
                continue;
            }
            match body[at] {
                b'"' => self.begin_string(at),
                open @ (b'{' | b'[') => {
                    if self.depth == 0 {
                        // The document itself: only an object has routing fields.
                        if open != b'{' {
                            self.off_track = true;
                        }
                    } else if self.depth == 1 {
                        self.value_starts(at);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => match self.depth {
                    0 => self.off_track = true,
                    1 => {
                        self.depth = 0;
                        // Anything after the closing brace is not ours to read.
                        self.off_track = true;
                    }
                    _ => {
                        self.depth -= 1;
                        if self.depth == 1 {
                            self.top = Top::AfterValue;
                        }
                    }
                },
                b':' if self.depth == 1 && self.top == Top::Colon => self.top = Top::Value,
                b',' if self.depth == 1 => self.top = Top::Key,
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ if self.depth == 1 && self.top == Top::Value => self.value_starts(at),
                _ if self.depth == 0 => self.off_track = true,
                _ => {}
            }
            at += 1;
        }
        self.scanned = body.len();
    }

    /// Bytes scanned so far.
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// Every complete top-level `model` string value, in order.
    pub fn models(&self) -> &[ModelValue] {
        &self.models
    }

    /// The last complete top-level `model` value, decoded (JSON takes the last duplicate key).
    pub fn model<'b>(&self, body: &'b [u8]) -> Option<std::borrow::Cow<'b, str>> {
        let value = self.models.last()?;
        let raw = body.get(value.range.clone())?;
        if value.escaped {
            serde_json::from_slice::<String>(raw)
                .ok()
                .map(std::borrow::Cow::Owned)
        } else {
            std::str::from_utf8(raw.get(1..raw.len().saturating_sub(1))?)
                .ok()
                .map(std::borrow::Cow::Borrowed)
        }
    }

    /// Offset of the first byte of the top-level `messages` value, once seen.
    pub fn messages_at(&self) -> Option<usize> {
        self.messages_at
    }

    /// Offset of the first byte of the top-level `prompt` value, once seen.
    pub fn prompt_at(&self) -> Option<usize> {
        self.prompt_at
    }

    /// Where the prompt starts, as far as the body has been seen: `messages` if present (it
    /// wins, as in `parse_routing_view`), else `prompt`.
    pub fn prompt_start(&self) -> Option<usize> {
        self.messages_at.or(self.prompt_at)
    }

    /// The lexer's view can be trusted for splicing: every top-level key was plain (an
    /// escaped key could be `model` in disguise).
    pub fn reliable(&self) -> bool {
        !self.escaped_key
    }

    fn begin_string(&mut self, at: usize) {
        self.in_string = true;
        self.string_start = at;
        self.string_escaped = false;
        self.role = Role::Other;
        if self.depth == 1 {
            match self.top {
                Top::Key => self.role = Role::TopKey,
                Top::Value => {
                    if self.key == Key::Model {
                        self.role = Role::ModelValue;
                    }
                    self.value_starts(at);
                }
                _ => {}
            }
        } else if self.depth == 0 {
            self.off_track = true;
        }
    }

    fn end_string(&mut self, body: &[u8], close: usize) {
        match self.role {
            Role::TopKey => {
                let name = &body[self.string_start + 1..close];
                self.key = if self.string_escaped {
                    self.escaped_key = true;
                    Key::Other
                } else {
                    match name {
                        b"model" => Key::Model,
                        b"messages" => Key::Messages,
                        b"prompt" => Key::Prompt,
                        _ => Key::Other,
                    }
                };
                self.top = Top::Colon;
            }
            Role::ModelValue => self.models.push(ModelValue {
                range: self.string_start..close + 1,
                escaped: self.string_escaped,
            }),
            Role::Other => {}
        }
        self.role = Role::Other;
    }

    fn value_starts(&mut self, at: usize) {
        if self.top != Top::Value {
            return;
        }
        match self.key {
            Key::Messages if self.messages_at.is_none() => self.messages_at = Some(at),
            Key::Prompt if self.prompt_at.is_none() => self.prompt_at = Some(at),
            _ => {}
        }
        self.top = Top::AfterValue;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], piece: usize) -> JsonScan {
        let mut scan = JsonScan::new();
        let mut end = 0;
        while end < body.len() {
            end = (end + piece).min(body.len());
            scan.advance(&body[..end]);
        }
        scan
    }

    #[test]
    fn finds_model_and_prompt_in_any_chunking() {
        let body =
            br#" { "max_tokens": 5, "model" : "m\"x", "extra": {"model": "inner", "prompt": [1]},
            "messages": [{"role": "user", "content": "h\u00e9 \"model\""}], "stream": true }"#;
        let whole = scan_in_pieces(body, body.len());
        for piece in [1, 2, 3, 7, 13] {
            let scan = scan_in_pieces(body, piece);
            assert_eq!(scan.models(), whole.models(), "piece {piece}");
            assert_eq!(scan.messages_at(), whole.messages_at(), "piece {piece}");
        }
        assert_eq!(
            whole.models().len(),
            1,
            "nested `model` keys are not the request's"
        );
        assert_eq!(whole.model(body).as_deref(), Some("m\"x"));
        let at = whole.messages_at().unwrap();
        assert_eq!(body[at], b'[');
        assert_eq!(
            whole.prompt_at(),
            None,
            "the nested prompt is not top-level"
        );
        assert!(whole.reliable());
    }

    #[test]
    fn model_after_the_prompt_and_duplicates() {
        let body = br#"{"prompt":"hello","model":"a","model":"b"}"#;
        let scan = scan_in_pieces(body, 4);
        assert_eq!(scan.models().len(), 2);
        assert_eq!(scan.model(body).as_deref(), Some("b"));
        assert_eq!(&body[scan.prompt_at().unwrap()..][..7], b"\"hello\"");
    }

    #[test]
    fn non_objects_and_escaped_keys_are_flagged() {
        let mut scan = JsonScan::new();
        scan.advance(br#"["model","x"]"#);
        assert!(scan.models().is_empty());
        let mut scan = JsonScan::new();
        scan.advance(br#"{"mod\u0065l":"x","prompt":"p"}"#);
        assert!(!scan.reliable());
        let mut scan = JsonScan::new();
        scan.advance(br#"{"model":"x"} {"model":"y"}"#);
        assert_eq!(scan.models().len(), 1);
    }

    #[test]
    fn incomplete_model_string_is_not_reported() {
        let body = br#"{"model":"long-na"#;
        let mut scan = JsonScan::new();
        scan.advance(body);
        assert!(scan.models().is_empty());
        let mut full = body.to_vec();
        full.extend_from_slice(br#"me","prompt":"p"}"#);
        scan.advance(&full);
        assert_eq!(scan.model(&full).as_deref(), Some("long-name"));
    }
}
