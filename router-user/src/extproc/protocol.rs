//! Reading Envoy's ext_proc messages and building the endpoint picker's answers, by the rules in
//! the endpoint-picker protocol (GIE proposal 004) and what Envoy accepts:
//! - header mutations set `raw_value` only (never `value`; both set fails the request) and leave
//!   `append` unset, so a client-supplied value is overwritten;
//! - the destination goes in the `x-gateway-destination-endpoint` header AND in dynamic metadata
//!   `envoy.lb` / `x-gateway-destination-endpoint`, with the same value;
//! - in FULL_DUPLEX_STREAMED mode every body reply is a `streamed_response` of at most
//!   [`MAX_CHUNK`] bytes (an empty `CommonResponse` there is a "spurious message" to Envoy);
//! - immediate responses carry an OpenAI error JSON with `content-type: application/json` and,
//!   for capacity refusals, `x-llm-d-request-dropped-reason`.
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, ProtocolConfiguration, StreamedBodyResponse, TrailersResponse,
    body_mutation, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::serving::Rejection;
use crate::serving::policy::{
    DESTINATION_HEADER, DESTINATION_HEADER_PREFIX, DROPPED_REASON_HEADER,
};

/// Largest body chunk sent back to Envoy (the reference EPP's limit; Envoy recommends ≤ 64 KiB).
pub const MAX_CHUNK: usize = 62_000;
/// Dynamic-metadata namespace of the destination and of the served endpoint.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// Metadata namespace of the subset hint.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key of the subset hint (a list of `ip:port`).
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// Key of the endpoint that served, in the response messages' metadata.
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";

/// How Envoy sends one direction's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// FULL_DUPLEX_STREAMED (and GRPC): chunks flow both ways; answers are `streamed_response`.
    Duplex,
    /// BUFFERED / BUFFERED_PARTIAL: one body message after the headers were answered.
    Buffered,
    /// STREAMED: chunks after the headers were answered, one answer per chunk.
    Streamed,
    /// NONE: no body is sent.
    None,
}

impl BodyMode {
    fn from_proto(mode: i32) -> Self {
        match BodySendMode::try_from(mode) {
            Ok(BodySendMode::Buffered | BodySendMode::BufferedPartial) => Self::Buffered,
            Ok(BodySendMode::Streamed) => Self::Streamed,
            Ok(BodySendMode::None) => Self::None,
            // FULL_DUPLEX_STREAMED, GRPC, and values newer than this proto.
            _ => Self::Duplex,
        }
    }

    /// The modes Envoy announced, or FULL_DUPLEX_STREAMED both ways (GIE's configuration) when
    /// it announces none (Envoy before `protocol_config`).
    pub fn from_config(config: Option<&ProtocolConfiguration>) -> (Self, Self) {
        match config {
            Some(config) => (
                Self::from_proto(config.request_body_mode),
                Self::from_proto(config.response_body_mode),
            ),
            None => (Self::Duplex, Self::Duplex),
        }
    }
}

/// A header's value: `raw_value` when set, else `value`.
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a [u8]> {
    headers?
        .headers
        .iter()
        .find(|header| header.key.eq_ignore_ascii_case(name))
        .map(|header| {
            if header.raw_value.is_empty() {
                header.value.as_bytes()
            } else {
                header.raw_value.as_slice()
            }
        })
}

/// A header's value as UTF-8 text (trimmed), when present and valid.
pub fn header_str<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    header(headers, name)
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Names of client-supplied headers in the gateway's destination namespace, except the
/// destination itself (which the answer overwrites).
pub fn client_destination_headers(headers: Option<&HeaderMap>) -> Vec<String> {
    let mut names: Vec<String> = headers
        .map(|map| {
            map.headers
                .iter()
                .map(|header| header.key.to_ascii_lowercase())
                .filter(|key| {
                    key.starts_with(DESTINATION_HEADER_PREFIX) && key != DESTINATION_HEADER
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn metadata_value<'a>(
    metadata: Option<&'a Metadata>,
    namespace: &str,
    key: &str,
) -> Option<&'a Value> {
    metadata?.filter_metadata.get(namespace)?.fields.get(key)
}

/// The subset hint, when the gateway sent one: `Some(empty)` for an empty (or unreadable)
/// list, which allows no endpoint. Entries may be strings or a comma-separated string.
pub fn subset_hint(metadata: Option<&Metadata>) -> Option<Vec<SocketAddr>> {
    let value = metadata_value(metadata, SUBSET_NAMESPACE, SUBSET_KEY)?;
    let mut addrs = Vec::new();
    let mut push = |text: &str| {
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part.parse::<SocketAddr>() {
                Ok(addr) => addrs.push(addr),
                Err(_) => {
                    tracing::debug!(entry = part, "subset hint entry is not ip:port; skipped")
                }
            }
        }
    };
    match &value.kind {
        Some(Kind::ListValue(list)) => {
            for item in &list.values {
                if let Some(Kind::StringValue(text)) = &item.kind {
                    push(text);
                }
            }
        }
        Some(Kind::StringValue(text)) => push(text),
        _ => {}
    }
    Some(addrs)
}

/// The endpoint that served, from a response message's metadata (the first, when the gateway
/// lists several).
pub fn served_endpoint(metadata: Option<&Metadata>) -> Option<SocketAddr> {
    let text = match &metadata_value(metadata, LB_NAMESPACE, SERVED_KEY)?.kind {
        Some(Kind::StringValue(text)) => text.as_str(),
        _ => return None,
    };
    text.split(',').next()?.trim().parse().ok()
}

/// A header mutation entry setting `key` to `value` (raw_value only, append unset).
pub fn set_header(key: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.to_vec(),
        }),
        ..HeaderValueOption::default()
    }
}

fn destination_metadata(destination: &str) -> Struct {
    let inner = Struct {
        fields: [(
            DESTINATION_HEADER.to_owned(),
            Value {
                kind: Some(Kind::StringValue(destination.to_owned())),
            },
        )]
        .into_iter()
        .collect(),
    };
    Struct {
        fields: [(
            LB_NAMESPACE.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// The routing mutation: destination set, client destination headers removed, route cache
/// cleared (the route may match on the new header).
fn routing_common(
    destination: &str,
    remove: Vec<String>,
    extra: Option<HeaderValueOption>,
) -> CommonResponse {
    let mut set_headers = vec![set_header(DESTINATION_HEADER, destination.as_bytes())];
    set_headers.extend(extra);
    CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers,
            remove_headers: remove,
        }),
        clear_route_cache: true,
        ..CommonResponse::default()
    }
}

/// The request-headers answer that routes the request (header and metadata carry the same
/// `destination`).
pub fn route_headers(destination: &str, remove: Vec<String>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse {
                response: Some(routing_common(destination, remove, None)),
            },
        )),
        dynamic_metadata: Some(destination_metadata(destination)),
        ..ProcessingResponse::default()
    }
}

/// The request-body answer that routes a BUFFERED request: the same mutation and metadata as
/// [`route_headers`], plus the rewritten body when the model was rewritten.
pub fn route_buffered_body(
    destination: &str,
    remove: Vec<String>,
    rewritten: Option<Vec<u8>>,
) -> ProcessingResponse {
    let length = rewritten
        .as_ref()
        .map(|body| set_header("content-length", body.len().to_string().as_bytes()));
    let mut common = routing_common(destination, remove, length);
    common.body_mutation = rewritten.map(|body| BodyMutation {
        mutation: Some(body_mutation::Mutation::Body(body)),
    });
    ProcessingResponse {
        response: Some(processing_response::Response::RequestBody(BodyResponse {
            response: Some(common),
        })),
        dynamic_metadata: Some(destination_metadata(destination)),
        ..ProcessingResponse::default()
    }
}

fn answer(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

fn body_answer(request: bool, body: BodyResponse) -> ProcessingResponse {
    use processing_response::Response;
    answer(if request {
        Response::RequestBody(body)
    } else {
        Response::ResponseBody(body)
    })
}

/// "Continue" for a headers message of either direction.
pub fn continue_headers(request: bool) -> ProcessingResponse {
    use processing_response::Response;
    let headers = HeadersResponse {
        response: Some(CommonResponse::default()),
    };
    answer(if request {
        Response::RequestHeaders(headers)
    } else {
        Response::ResponseHeaders(headers)
    })
}

/// "Continue" for a body message in a non-duplex mode.
pub fn continue_body(request: bool) -> ProcessingResponse {
    body_answer(
        request,
        BodyResponse {
            response: Some(CommonResponse::default()),
        },
    )
}

/// The answer to a trailers message of either direction.
pub fn trailers(request: bool) -> ProcessingResponse {
    use processing_response::Response;
    let trailers = TrailersResponse::default();
    answer(if request {
        Response::RequestTrailers(trailers)
    } else {
        Response::ResponseTrailers(trailers)
    })
}

fn streamed(request: bool, body: Vec<u8>, end_of_stream: bool) -> ProcessingResponse {
    body_answer(
        request,
        BodyResponse {
            response: Some(CommonResponse {
                body_mutation: Some(BodyMutation {
                    mutation: Some(body_mutation::Mutation::StreamedResponse(
                        StreamedBodyResponse {
                            body,
                            end_of_stream,
                            ..StreamedBodyResponse::default()
                        },
                    )),
                }),
                ..CommonResponse::default()
            }),
        },
    )
}

/// Duplex-mode body answers for `body`: chunks of at most [`MAX_CHUNK`] bytes, `end_of_stream`
/// on the last only (and only when asked). An empty body with `end_of_stream` is one empty
/// chunk; an empty body without it is nothing.
pub fn streamed_body(
    request: bool,
    body: Vec<u8>,
    end_of_stream: bool,
    out: &mut Vec<ProcessingResponse>,
) {
    if body.len() <= MAX_CHUNK {
        if !body.is_empty() || end_of_stream {
            out.push(streamed(request, body, end_of_stream));
        }
        return;
    }
    let count = body.len().div_ceil(MAX_CHUNK);
    for (index, chunk) in body.chunks(MAX_CHUNK).enumerate() {
        out.push(streamed(
            request,
            chunk.to_vec(),
            end_of_stream && index + 1 == count,
        ));
    }
}

/// Ends the request with the router's own answer.
pub fn immediate(rejection: &Rejection) -> ProcessingResponse {
    let mut set_headers = vec![set_header("content-type", b"application/json")];
    if let Some(reason) = rejection.dropped_reason {
        set_headers.push(set_header(DROPPED_REASON_HEADER, reason.as_bytes()));
    }
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(rejection.status()),
                }),
                headers: Some(HeaderMutation {
                    set_headers,
                    remove_headers: Vec::new(),
                }),
                body: rejection.body_json(),
                grpc_status: None,
                details: format!("switchyard_{}", rejection.reason.as_str().replace('-', "_")),
            },
        )),
        ..ProcessingResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::ListValue;

    fn metadata(namespace: &str, key: &str, value: Kind) -> Metadata {
        Metadata {
            filter_metadata: [(
                namespace.to_owned(),
                Struct {
                    fields: [(key.to_owned(), Value { kind: Some(value) })]
                        .into_iter()
                        .collect(),
                },
            )]
            .into_iter()
            .collect(),
            ..Metadata::default()
        }
    }

    #[test]
    fn subset_hint_forms() {
        assert_eq!(subset_hint(None), None);
        let list = Kind::ListValue(ListValue {
            values: vec![
                Value {
                    kind: Some(Kind::StringValue("10.0.0.1:80".into())),
                },
                Value {
                    kind: Some(Kind::StringValue("junk".into())),
                },
            ],
        });
        let hint = subset_hint(Some(&metadata(SUBSET_NAMESPACE, SUBSET_KEY, list)));
        assert_eq!(hint, Some(vec!["10.0.0.1:80".parse().unwrap()]));
        let text = Kind::StringValue("10.0.0.1:80, 10.0.0.2:80".into());
        assert_eq!(
            subset_hint(Some(&metadata(SUBSET_NAMESPACE, SUBSET_KEY, text))).map(|h| h.len()),
            Some(2)
        );
        let empty = Kind::ListValue(ListValue::default());
        assert_eq!(
            subset_hint(Some(&metadata(SUBSET_NAMESPACE, SUBSET_KEY, empty))),
            Some(vec![])
        );
        let served = Kind::StringValue("10.0.0.3:80".into());
        assert_eq!(
            served_endpoint(Some(&metadata(LB_NAMESPACE, SERVED_KEY, served))),
            Some("10.0.0.3:80".parse().unwrap())
        );
    }

    #[test]
    fn streamed_bodies_are_rechunked_with_eos_last() {
        let mut out = Vec::new();
        streamed_body(true, vec![7; 2 * MAX_CHUNK + 5], true, &mut out);
        assert_eq!(out.len(), 3);
        let mut out = Vec::new();
        streamed_body(true, Vec::new(), false, &mut out);
        assert!(out.is_empty());
        streamed_body(false, Vec::new(), true, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn headers_use_raw_value_only() {
        let option = set_header("x-a", b"v");
        let header = option.header.unwrap();
        assert!(header.value.is_empty());
        assert_eq!(header.raw_value, b"v");
    }
}
