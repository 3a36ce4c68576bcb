//! The few fields a router needs from a request body, read in one pass without building a JSON
//! tree: model, stream flag, max tokens and the prompt text for prefix hashing.
//!
//! Unknown fields are skipped unparsed. Chat messages are rendered in order with the same chat
//! template the simulator uses ([`super::chat::ChatPromptBuilder`]). A completions prompt given
//! as token ids becomes the ids in decimal separated by spaces (a token prefix is then a text
//! prefix); a batch of prompts is joined with newlines.
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::chat::ChatPromptBuilder;

/// Which API the body is for, judged by its prompt field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    /// `prompt` (`/v1/completions`).
    Completions,
    /// `messages` (`/v1/chat/completions`).
    ChatCompletions,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingView {
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Prompt text for prefix hashing.
    pub prompt: String,
    pub kind: ApiKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingViewError {
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("request body is not a JSON object")]
    NotAnObject,
    #[error("request body has no `model`")]
    MissingModel,
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("request body has neither `prompt` nor `messages`")]
    MissingPrompt,
}

/// Reads the routing view of a completions or chat completions body.
pub fn parse_routing_view(body: &[u8]) -> Result<RoutingView, RoutingViewError> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        None => return Err(RoutingViewError::NotJson("the body is empty".to_owned())),
        Some(b'{') => {}
        Some(_) => {
            // Valid JSON of another shape, or not JSON at all?
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => RoutingViewError::NotAnObject,
                Err(err) => RoutingViewError::NotJson(err.to_string()),
            });
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let fields = deserializer
        .deserialize_map(FieldsVisitor)
        .and_then(|fields| deserializer.end().map(|()| fields))
        .map_err(|err| RoutingViewError::NotJson(err.to_string()))?;
    fields.into_view()
}

/// A field's value: what was expected, JSON null, or a value of another type.
enum Probe<T> {
    Null,
    Value(T),
    Wrong,
}

/// What a field accepts. Each hook returns `None` for "wrong type"; defaults reject.
trait Kind {
    type Out;
    const EXPECTED: &'static str;

    fn string(_value: &str) -> Option<Self::Out> {
        None
    }
    fn boolean(_value: bool) -> Option<Self::Out> {
        None
    }
    fn unsigned(_value: u64) -> Option<Self::Out> {
        None
    }
    fn float(_value: f64) -> Option<Self::Out> {
        None
    }
    fn seq<'de, A: SeqAccess<'de>>(seq: A) -> Result<Option<Self::Out>, A::Error> {
        drain_seq(seq)?;
        Ok(None)
    }
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self::Out>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// `Deserialize` adapter for a [`Kind`].
struct Field<K: Kind>(Probe<K::Out>, PhantomData<K>);

impl<'de, K: Kind> Deserialize<'de> for Field<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ProbeVisitor::<K>(PhantomData))
            .map(|probe| Field(probe, PhantomData))
    }
}

struct ProbeVisitor<K>(PhantomData<K>);

fn probe<T>(value: Option<T>) -> Probe<T> {
    value.map_or(Probe::Wrong, Probe::Value)
}

impl<'de, K: Kind> Visitor<'de> for ProbeVisitor<K> {
    type Value = Probe<K::Out>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(K::EXPECTED)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Probe::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Probe::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(probe(K::boolean(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(probe(K::unsigned(value)))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(probe(u64::try_from(value).ok().and_then(K::unsigned)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(probe(K::float(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(probe(K::string(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(probe(K::seq(seq)?))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(probe(K::map(map)?))
    }
}

struct StrKind;
impl Kind for StrKind {
    type Out = String;
    const EXPECTED: &'static str = "a string";
    fn string(value: &str) -> Option<String> {
        Some(value.to_owned())
    }
}

struct BoolKind;
impl Kind for BoolKind {
    type Out = bool;
    const EXPECTED: &'static str = "a boolean";
    fn boolean(value: bool) -> Option<bool> {
        Some(value)
    }
}

struct CountKind;
impl Kind for CountKind {
    type Out = u64;
    const EXPECTED: &'static str = "a non-negative integer";
    fn unsigned(value: u64) -> Option<u64> {
        Some(value)
    }
    fn float(value: f64) -> Option<u64> {
        // Pydantic's lax mode takes 16.0 as 16.
        (value >= 0.0 && value.fract() == 0.0 && value <= u64::MAX as f64).then_some(value as u64)
    }
}

/// One element of a `prompt` array.
enum PromptItem {
    Text(String),
    Token(u64),
    Tokens(String),
}

struct PromptItemKind;
impl Kind for PromptItemKind {
    type Out = PromptItem;
    const EXPECTED: &'static str = "a string, a token id or a list of token ids";
    fn string(value: &str) -> Option<PromptItem> {
        Some(PromptItem::Text(value.to_owned()))
    }
    fn unsigned(value: u64) -> Option<PromptItem> {
        Some(PromptItem::Token(value))
    }
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<PromptItem>, A::Error> {
        let mut text = String::new();
        while let Some(Field(item, _)) = seq.next_element::<Field<CountKind>>()? {
            match item {
                Probe::Value(token) => push_token(&mut text, token),
                Probe::Null | Probe::Wrong => {
                    drain_seq(seq)?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(PromptItem::Tokens(text)))
    }
}

fn push_token(text: &mut String, token: u64) {
    use std::fmt::Write as _;
    if !text.is_empty() {
        text.push(' ');
    }
    let _ = write!(text, "{token}");
}

struct PromptKind;
impl Kind for PromptKind {
    type Out = String;
    const EXPECTED: &'static str = "a string, a list of strings, or token ids";
    fn string(value: &str) -> Option<String> {
        Some(value.to_owned())
    }
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<String>, A::Error> {
        let mut text = String::new();
        let mut tokens = false;
        let mut index = 0usize;
        while let Some(Field(item, _)) = seq.next_element::<Field<PromptItemKind>>()? {
            let consistent = match item {
                Probe::Value(PromptItem::Token(token)) if index == 0 || tokens => {
                    tokens = true;
                    push_token(&mut text, token);
                    true
                }
                Probe::Value(PromptItem::Text(part) | PromptItem::Tokens(part)) if !tokens => {
                    if index > 0 {
                        text.push('\n');
                    }
                    text.push_str(&part);
                    true
                }
                _ => false,
            };
            if !consistent {
                drain_seq(seq)?;
                return Ok(None);
            }
            index += 1;
        }
        Ok(Some(text))
    }
}

/// Text of a text content part; other parts (images, audio) carry none.
struct PartKind;
impl Kind for PartKind {
    type Out = Option<String>;
    const EXPECTED: &'static str = "a content part object";
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Option<String>>, A::Error> {
        let mut text = None;
        let mut wrong = false;
        while let Some(key) = map.next_key::<Key>()? {
            if key == Key::Text {
                match map.next_value::<Field<StrKind>>()?.0 {
                    Probe::Value(value) => text = Some(value),
                    Probe::Null => {}
                    Probe::Wrong => wrong = true,
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((!wrong).then_some(text))
    }
}

struct ContentKind;
impl Kind for ContentKind {
    type Out = String;
    const EXPECTED: &'static str = "a string or a list of content parts";
    fn string(value: &str) -> Option<String> {
        Some(value.to_owned())
    }
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<String>, A::Error> {
        let mut text = String::new();
        let mut first = true;
        while let Some(Field(part, _)) = seq.next_element::<Field<PartKind>>()? {
            match part {
                Probe::Value(Some(part_text)) => {
                    if !first {
                        text.push('\n');
                    }
                    text.push_str(&part_text);
                    first = false;
                }
                Probe::Value(None) => {}
                Probe::Null | Probe::Wrong => {
                    drain_seq(seq)?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(text))
    }
}

struct MessageKind;
impl Kind for MessageKind {
    type Out = (String, String);
    const EXPECTED: &'static str = "a message object";
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<(String, String)>, A::Error> {
        let mut role = None;
        let mut content = String::new();
        let mut wrong = false;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Role => match map.next_value::<Field<StrKind>>()?.0 {
                    Probe::Value(value) => role = Some(value),
                    Probe::Null | Probe::Wrong => wrong = true,
                },
                Key::Content => match map.next_value::<Field<ContentKind>>()?.0 {
                    Probe::Value(value) => content = value,
                    Probe::Null => content.clear(),
                    Probe::Wrong => wrong = true,
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if wrong {
            None
        } else {
            role.map(|role| (role, content))
        })
    }
}

struct MessagesKind;
impl Kind for MessagesKind {
    type Out = String;
    const EXPECTED: &'static str = "a list of messages";
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<String>, A::Error> {
        let mut builder = ChatPromptBuilder::new();
        while let Some(Field(message, _)) = seq.next_element::<Field<MessageKind>>()? {
            match message {
                Probe::Value((role, content)) => builder.message(&role, &content),
                Probe::Null | Probe::Wrong => {
                    drain_seq(seq)?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(builder.finish(true)))
    }
}

/// Object keys the routing view reads; everything else is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    Prompt,
    Messages,
    Role,
    Content,
    Text,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "max_tokens" => Key::MaxTokens,
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "prompt" => Key::Prompt,
                    "messages" => Key::Messages,
                    "role" => Key::Role,
                    "content" => Key::Content,
                    "text" => Key::Text,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

#[derive(Default)]
struct Fields {
    model: Option<Probe<String>>,
    stream: Option<Probe<bool>>,
    max_tokens: Option<Probe<u64>>,
    max_completion_tokens: Option<Probe<u64>>,
    prompt: Option<Probe<String>>,
    messages: Option<Probe<String>>,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Model => fields.model = Some(map.next_value::<Field<StrKind>>()?.0),
                Key::Stream => fields.stream = Some(map.next_value::<Field<BoolKind>>()?.0),
                Key::MaxTokens => fields.max_tokens = Some(map.next_value::<Field<CountKind>>()?.0),
                Key::MaxCompletionTokens => {
                    fields.max_completion_tokens = Some(map.next_value::<Field<CountKind>>()?.0);
                }
                Key::Prompt => fields.prompt = Some(map.next_value::<Field<PromptKind>>()?.0),
                Key::Messages => fields.messages = Some(map.next_value::<Field<MessagesKind>>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

fn optional<T>(
    value: Option<Probe<T>>,
    field: &'static str,
    expected: &'static str,
) -> Result<Option<T>, RoutingViewError> {
    match value {
        None | Some(Probe::Null) => Ok(None),
        Some(Probe::Value(value)) => Ok(Some(value)),
        Some(Probe::Wrong) => Err(RoutingViewError::WrongType { field, expected }),
    }
}

impl Fields {
    fn into_view(self) -> Result<RoutingView, RoutingViewError> {
        let model = optional(self.model, "model", StrKind::EXPECTED)?
            .ok_or(RoutingViewError::MissingModel)?;
        let stream = optional(self.stream, "stream", BoolKind::EXPECTED)?.unwrap_or(false);
        let max_tokens = optional(self.max_tokens, "max_tokens", CountKind::EXPECTED)?;
        let max_completion_tokens = optional(
            self.max_completion_tokens,
            "max_completion_tokens",
            CountKind::EXPECTED,
        )?;
        let messages = optional(
            self.messages,
            "messages",
            "a list of messages, each with a string `role` and string or text-part `content`",
        )?;
        let (prompt, kind) = match messages {
            Some(rendered) => (rendered, ApiKind::ChatCompletions),
            None => {
                let prompt = optional(self.prompt, "prompt", PromptKind::EXPECTED)?
                    .ok_or(RoutingViewError::MissingPrompt)?;
                (prompt, ApiKind::Completions)
            }
        };
        Ok(RoutingView {
            model,
            stream,
            max_tokens: max_completion_tokens.or(max_tokens),
            prompt,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::ChatCompletionRequest;

    fn view(body: &str) -> Result<RoutingView, RoutingViewError> {
        parse_routing_view(body.as_bytes())
    }

    #[test]
    fn completions_bodies() {
        let parsed = view(
            r#"{"model":"m","prompt":"Hello","stream":true,"max_tokens":12,"extra":{"a":[1,{"b":2}]}}"#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            RoutingView {
                model: "m".into(),
                stream: true,
                max_tokens: Some(12),
                prompt: "Hello".into(),
                kind: ApiKind::Completions,
            }
        );
        assert_eq!(
            view(r#"{"model":"m","prompt":["a","b"]}"#).unwrap().prompt,
            "a\nb"
        );
        assert_eq!(
            view(r#"{"model":"m","prompt":[1,22,333]}"#).unwrap().prompt,
            "1 22 333"
        );
        assert_eq!(
            view(r#"{"model":"m","prompt":[[1,2],[3]]}"#)
                .unwrap()
                .prompt,
            "1 2\n3"
        );
        let nulls = view(r#"{"model":"m","prompt":"x","stream":null,"max_tokens":null}"#).unwrap();
        assert!(!nulls.stream && nulls.max_tokens.is_none());
        assert_eq!(
            view(r#"{"model":"m","prompt":"x","max_tokens":16.0}"#)
                .unwrap()
                .max_tokens,
            Some(16)
        );
    }

    #[test]
    fn chat_bodies_render_like_the_full_request() {
        let body = r#"{"model":"m","max_tokens":5,"max_completion_tokens":7,"messages":[
            {"role":"system","content":"sys \"quoted\" \u00e9"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}],"name":"x"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"1"}]}
        ]}"#;
        let parsed = view(body).unwrap();
        assert_eq!(parsed.kind, ApiKind::ChatCompletions);
        assert_eq!(parsed.max_tokens, Some(7));
        let full: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.prompt, full.render_prompt());
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(view(""), Err(RoutingViewError::NotJson(_))));
        assert!(matches!(
            view("{\"model\":"),
            Err(RoutingViewError::NotJson(_))
        ));
        assert!(matches!(view("nope"), Err(RoutingViewError::NotJson(_))));
        assert!(matches!(
            view(r#"{"model":"m","prompt":"x"} trailing"#),
            Err(RoutingViewError::NotJson(_))
        ));
        assert_eq!(view("[1,2]"), Err(RoutingViewError::NotAnObject));
        assert_eq!(
            view(r#"{"prompt":"x"}"#),
            Err(RoutingViewError::MissingModel)
        );
        assert_eq!(
            view(r#"{"model":null,"prompt":"x"}"#),
            Err(RoutingViewError::MissingModel)
        );
        assert_eq!(
            view(r#"{"model":"m"}"#),
            Err(RoutingViewError::MissingPrompt)
        );
        let wrong = |body: &str, field: &str| match view(body) {
            Err(RoutingViewError::WrongType { field: got, .. }) => assert_eq!(got, field, "{body}"),
            other => panic!("{body}: {other:?}"),
        };
        wrong(r#"{"model":5,"prompt":"x"}"#, "model");
        wrong(r#"{"model":"m","prompt":"x","stream":"yes"}"#, "stream");
        wrong(
            r#"{"model":"m","prompt":"x","max_tokens":-1}"#,
            "max_tokens",
        );
        wrong(
            r#"{"model":"m","prompt":"x","max_completion_tokens":1.5}"#,
            "max_completion_tokens",
        );
        wrong(r#"{"model":"m","prompt":{"a":1}}"#, "prompt");
        wrong(r#"{"model":"m","prompt":[1,"a"]}"#, "prompt");
        wrong(r#"{"model":"m","messages":"hi"}"#, "messages");
        wrong(
            r#"{"model":"m","messages":[{"content":"no role"}]}"#,
            "messages",
        );
        wrong(
            r#"{"model":"m","messages":[{"role":"user","content":5},{"role":"user"}]}"#,
            "messages",
        );
        let message = RoutingViewError::WrongType {
            field: "stream",
            expected: "a boolean",
        }
        .to_string();
        assert_eq!(message, "field `stream` must be a boolean");
    }
}
