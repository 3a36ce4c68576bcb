//! Messages as Envoy sends them, for the benchmark and tests that play Envoy's side of the
//! stream (header values in `raw_value`, as Envoy fills them).
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, processing_request::Request,
};

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
