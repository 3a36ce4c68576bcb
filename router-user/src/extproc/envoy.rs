//! Messages as Envoy sends them, for the benchmarks and tests that play Envoy's side of the
//! stream (header values in `raw_value`, as Envoy fills them), and readers of the picker's
//! answers (destination, streamed body chunks, immediate responses).
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ImmediateResponse, ProcessingRequest, ProcessingResponse,
    body_mutation, processing_request::Request, processing_response,
};

use crate::serving::policy::DESTINATION_HEADER;

/// A header map with each value in `raw_value`.
pub fn header_map<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(key, value)| HeaderValue {
                key: key.as_ref().to_owned(),
                value: String::new(),
                raw_value: value.as_ref().as_bytes().to_vec(),
            })
            .collect(),
    }
}

fn message(request: Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..ProcessingRequest::default()
    }
}

fn headers<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)], end_of_stream: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(header_map(pairs)),
        end_of_stream,
        ..HttpHeaders::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
    HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..HttpBody::default()
    }
}

pub fn request_headers<K: AsRef<str>, V: AsRef<str>>(
    pairs: &[(K, V)],
    end_of_stream: bool,
) -> ProcessingRequest {
    message(Request::RequestHeaders(headers(pairs, end_of_stream)))
}

pub fn request_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    message(Request::RequestBody(body(bytes, end_of_stream)))
}

pub fn request_trailers<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> ProcessingRequest {
    message(Request::RequestTrailers(HttpTrailers {
        trailers: Some(header_map(pairs)),
    }))
}

pub fn response_headers<K: AsRef<str>, V: AsRef<str>>(
    pairs: &[(K, V)],
    end_of_stream: bool,
) -> ProcessingRequest {
    message(Request::ResponseHeaders(headers(pairs, end_of_stream)))
}

pub fn response_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    message(Request::ResponseBody(body(bytes, end_of_stream)))
}

/// The destination (`x-gateway-destination-endpoint`) a routing answer sets, if any; `None` for
/// other answers and for a value that is not UTF-8.
pub fn destination_header(answer: &ProcessingResponse) -> Option<String> {
    use processing_response::Response;
    let common = match answer.response.as_ref()? {
        Response::RequestHeaders(headers) => headers.response.as_ref()?,
        Response::RequestBody(body) => body.response.as_ref()?,
        _ => return None,
    };
    common
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == DESTINATION_HEADER)
        .and_then(|header| String::from_utf8(header.raw_value.clone()).ok())
}

/// `(bytes, end_of_stream)` of a duplex body answer (request or response direction).
pub fn streamed_chunk(answer: &ProcessingResponse) -> Option<(Vec<u8>, bool)> {
    use processing_response::Response;
    let body = match answer.response.as_ref()? {
        Response::RequestBody(body) | Response::ResponseBody(body) => body,
        _ => return None,
    };
    match body
        .response
        .as_ref()?
        .body_mutation
        .as_ref()?
        .mutation
        .as_ref()?
    {
        body_mutation::Mutation::StreamedResponse(chunk) => {
            Some((chunk.body.clone(), chunk.end_of_stream))
        }
        _ => None,
    }
}

/// The immediate response (a refusal) an answer carries, if any.
pub fn immediate(answer: &ProcessingResponse) -> Option<&ImmediateResponse> {
    match answer.response.as_ref()? {
        processing_response::Response::ImmediateResponse(immediate) => Some(immediate),
        _ => None,
    }
}
