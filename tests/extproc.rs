//! The endpoint picker's ext_proc protocol, replayed by a real gRPC client playing Envoy on
//! 127.0.0.1 (plaintext): message order, chunking, mutations, immediate responses, subset
//! hints, objectives, the response path and in-flight accounting.
mod extproc_support;
use extproc_support::*;

use std::net::SocketAddr;
use std::time::Duration;

use switchyard::clock::{Clock, SystemClock};
use switchyard::telemetry::EndpointLoad;

fn three() -> Vec<SocketAddr> {
    addrs(&[8001, 8002, 8003])
}

async fn epp(endpoints: &[SocketAddr]) -> Epp {
    Epp::start(static_args(endpoints, "gie-default"), plaintext_config()).await
}

fn assert_member(destination: &str, endpoints: &[SocketAddr]) {
    let addr: SocketAddr = destination.parse().expect("one ip:port");
    assert!(endpoints.contains(&addr), "{destination} is not a member");
}

#[tokio::test]
async fn body_in_one_chunk_is_routed_and_echoed() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("m", "Hello there");
    let routed = send_request(&mut stream, &post_headers(&[]), std::slice::from_ref(&body))
        .await
        .unwrap();
    assert_member(&routed.destination, &endpoints);
    assert_eq!(routed.body, body);
    assert_eq!(routed.chunks, 1);
    assert_eq!(epp.total_inflight(), 1, "routed and not finished");
    stream.close_send();
    assert!(stream.recv().await.is_none());
    epp.wait_idle().await;
}

#[tokio::test]
async fn body_split_at_odd_offsets_reassembles_byte_for_byte() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    // Multi-byte characters everywhere, so most cuts fall inside one.
    let body = chat_body("m", &"żółw ünïcödé 🐢 ".repeat(50));
    for sizes in [&[1usize][..], &[3, 7, 2], &[13, 5, 64]] {
        let chunks = split(&body, sizes);
        let mut stream = EnvoyStream::open(&mut client).await;
        let routed = send_request(&mut stream, &post_headers(&[]), &chunks)
            .await
            .unwrap();
        assert_eq!(routed.body, body, "sizes {sizes:?}");
        assert_member(&routed.destination, &endpoints);
    }
}

#[tokio::test]
async fn zero_byte_end_of_stream_chunk() {
    let epp = epp(&three()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("m", "zero byte eos");
    let chunks = vec![body[..10].to_vec(), body[10..].to_vec(), Vec::new()];
    let routed = send_request(&mut stream, &post_headers(&[]), &chunks)
        .await
        .unwrap();
    assert_eq!(routed.body, body);
    assert!(routed.end_of_stream);
}

#[tokio::test]
async fn duplicate_end_of_stream_chunk_is_ignored() {
    let epp = epp(&three()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("m", &"x".repeat(1_000_000));
    let chunks = split(&body, &[65_536]);
    let routed = send_request(&mut stream, &post_headers(&[]), &chunks)
        .await
        .unwrap();
    assert_eq!(routed.body, body);
    // Envoy 1.35+ may repeat the final chunk: no answer for it.
    stream
        .send(request_body(chunks.last().unwrap(), true))
        .await;
    stream.expect_silence(Duration::from_millis(200)).await;
    stream
        .send(response_headers(200, "application/json", false))
        .await;
    let answer = stream.recv().await.unwrap();
    assert!(matches!(
        answer.response,
        Some(envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::ResponseHeaders(_))
    ));
}

#[tokio::test]
async fn trailers_end_the_body_instead_of_eos() {
    let epp = epp(&three()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("m", &"trailers ".repeat(20_000));
    stream
        .send(request_headers(&post_headers(&[]), false))
        .await;
    for chunk in split(&body, &[65_536]) {
        stream.send(request_body(&chunk, false)).await;
    }
    stream.send(request_trailers()).await;
    let routed = read_routing(&mut stream, false).await.unwrap();
    let mut echoed = Vec::new();
    loop {
        let answer = stream.recv().await.unwrap();
        if let Some((bytes, eos)) = streamed_chunk(&answer) {
            assert!(!eos, "eos is only set after Envoy sent it");
            echoed.extend_from_slice(&bytes);
            continue;
        }
        assert!(matches!(
            answer.response,
            Some(envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::RequestTrailers(_))
        ));
        break;
    }
    assert_eq!(echoed, body);
    assert!(!routed.destination.is_empty());
}

#[tokio::test]
async fn bodyless_get_is_routed_at_once() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), "/v1/models".to_owned()),
    ];
    stream.send(request_headers(&headers, true)).await;
    let answer = stream.recv().await.unwrap();
    assert_member(&destination_header(&answer).unwrap(), &endpoints);
    stream
        .send(response_headers(200, "application/json", false))
        .await;
    stream.recv().await.unwrap();
    stream.send(response_body(br#"{"data":[]}"#, true)).await;
    let (bytes, eos) = streamed_chunk(&stream.recv().await.unwrap()).unwrap();
    assert_eq!((bytes.as_slice(), eos), (&br#"{"data":[]}"#[..], true));
    assert_eq!(epp.total_inflight(), 0, "bodyless requests are not counted");
}

#[tokio::test]
async fn one_mib_prompt_is_rechunked_within_the_limit() {
    let epp = epp(&three()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("m", &"long prompt text ".repeat(65_536));
    assert!(body.len() > 1 << 20);
    let chunks = split(&body, &[65_536]);
    let routed = send_request(&mut stream, &post_headers(&[]), &chunks)
        .await
        .unwrap();
    assert_eq!(routed.body, body);
    assert_eq!(routed.chunks, body.len().div_ceil(MAX_CHUNK));
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let mut args = static_args(&three(), "gie-default");
    args.policy.max_body_bytes = 100_000;
    let epp = Epp::start(args, plaintext_config()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("m", &"y".repeat(200_000));
    let rejected = send_request(&mut stream, &post_headers(&[]), &split(&body, &[65_536]))
        .await
        .unwrap_err();
    assert_eq!(rejected.status.unwrap().code, 413);
    assert_eq!(
        immediate_header(&rejected, "content-type"),
        Some("application/json")
    );
    let error = json(&rejected.body);
    assert_eq!(error["error"]["code"], 413);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100000")
    );
}

#[tokio::test]
async fn garbage_json_and_missing_model_get_400() {
    let epp = epp(&three()).await;
    let mut client = epp.client().await;
    for (body, needle) in [
        (
            &b"{\"model\": \"m\", \"messages\": [ oops"[..],
            "not valid JSON",
        ),
        (
            &br#"{"messages":[{"role":"user","content":"hi"}]}"#[..],
            "no `model`",
        ),
        (&b"[1,2,3]"[..], "not a JSON object"),
    ] {
        let mut stream = EnvoyStream::open(&mut client).await;
        let rejected = send_request(&mut stream, &post_headers(&[]), &[body.to_vec()])
            .await
            .unwrap_err();
        assert_eq!(rejected.status.unwrap().code, 400);
        let error = json(&rejected.body);
        assert_eq!(error["error"]["type"], "Bad Request");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
        assert_eq!(
            immediate_header(&rejected, "x-llm-d-request-dropped-reason"),
            None
        );
    }
    assert_eq!(epp.total_inflight(), 0);
}

#[tokio::test]
async fn unknown_model_is_routed_or_404_when_endpoints_declare_models() {
    // Endpoints that declare nothing serve every model (the model server answers for itself).
    let epp_any = epp(&three()).await;
    let mut client = epp_any.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let routed = send_request(
        &mut stream,
        &post_headers(&[]),
        &[chat_body("who-knows", "hi")],
    )
    .await;
    assert!(routed.is_ok());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(
        &file,
        "- {addr: '10.0.0.1:8001', models: [llama]}\n- {addr: '10.0.0.1:8002', models: [llama, qwen]}\n",
    )
    .unwrap();
    let mut args = static_args(&[], "gie-default");
    args.sources.endpoints_file = Some(file);
    let epp = Epp::start(args, plaintext_config()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let rejected = send_request(
        &mut stream,
        &post_headers(&[]),
        &[chat_body("mistral", "hi")],
    )
    .await
    .unwrap_err();
    assert_eq!(rejected.status.unwrap().code, 404);
    assert_eq!(json(&rejected.body)["error"]["param"], "model");
    let mut stream = EnvoyStream::open(&mut client).await;
    let routed = send_request(&mut stream, &post_headers(&[]), &[chat_body("qwen", "hi")])
        .await
        .unwrap();
    assert_eq!(routed.destination, "10.0.0.1:8002");
}

#[tokio::test]
async fn subset_hint_limits_the_choice() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let send = |subset: Option<Vec<&'static str>>| {
        let mut client = client.clone();
        async move {
            let mut stream = EnvoyStream::open(&mut client).await;
            let mut headers = request_headers(&post_headers(&[]), false);
            if let Some(subset) = subset {
                headers = with_metadata(headers, subset_metadata(&subset));
            }
            stream.send(headers).await;
            stream
                .send(request_body(&chat_body("m", "subset"), true))
                .await;
            read_routing(&mut stream, true).await
        }
    };
    for _ in 0..5 {
        let one = send(Some(vec!["10.0.0.1:8002"])).await.unwrap();
        assert_eq!(one.destination, "10.0.0.1:8002");
        let several = send(Some(vec!["10.0.0.1:8001", "10.0.0.1:8003"]))
            .await
            .unwrap();
        assert!(["10.0.0.1:8001", "10.0.0.1:8003"].contains(&several.destination.as_str()));
    }
    for subset in [vec![], vec!["10.9.9.9:1"], vec!["not-an-address"]] {
        let rejected = send(Some(subset.clone())).await.unwrap_err();
        assert_eq!(rejected.status.unwrap().code, 503, "{subset:?}");
        assert_eq!(
            immediate_header(&rejected, "x-llm-d-request-dropped-reason"),
            Some("rejected-no-endpoints")
        );
        assert_eq!(json(&rejected.body)["error"]["code"], 503);
    }
    // Bodyless requests honour the hint too.
    let mut stream = EnvoyStream::open(&mut client).await;
    let get = vec![(":method".to_owned(), "GET".to_owned())];
    stream
        .send(with_metadata(
            request_headers(&get, true),
            subset_metadata(&["10.0.0.1:8003"]),
        ))
        .await;
    assert_eq!(
        destination_header(&stream.recv().await.unwrap()).unwrap(),
        "10.0.0.1:8003"
    );
}

#[tokio::test]
async fn client_destination_headers_are_overwritten_and_stripped() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let headers = post_headers(&[
        ("x-gateway-destination-endpoint", "6.6.6.6:666"),
        ("x-gateway-destination-endpoint-served", "6.6.6.6:666"),
        ("X-Gateway-Destination-Endpoint-Subset", "6.6.6.6:666"),
    ]);
    let routed = send_request(&mut stream, &headers, &[chat_body("m", "spoof")])
        .await
        .unwrap();
    assert_member(&routed.destination, &endpoints);
    assert_eq!(
        routed.removed,
        vec![
            "x-gateway-destination-endpoint-served".to_owned(),
            "x-gateway-destination-endpoint-subset".to_owned()
        ]
    );
}

fn saturate(epp: &Epp, endpoints: &[SocketAddr]) {
    for (seq, addr) in endpoints.iter().enumerate() {
        epp.serving.table().update_load(
            addr,
            EndpointLoad {
                waiting: 50,
                running: 100,
                kv_cache_usage: 0.95,
                sampled_at: SystemClock.now(),
                seq: seq as u64 + 1_000,
                ..EndpointLoad::default()
            },
        );
    }
}

#[tokio::test]
async fn sheddable_objective_gets_429_when_saturated() {
    let endpoints = three();
    let mut args = static_args(&endpoints, "gie-default");
    args.policy.objectives = vec!["batch=-1,chat=10".to_owned()];
    let epp = Epp::start(args, plaintext_config()).await;
    saturate(&epp, &endpoints);
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let shed = post_headers(&[("x-gateway-inference-objective", "batch")]);
    let rejected = send_request(&mut stream, &shed, &[chat_body("m", "batch job")])
        .await
        .unwrap_err();
    assert_eq!(rejected.status.unwrap().code, 429);
    assert_eq!(
        immediate_header(&rejected, "x-llm-d-request-dropped-reason"),
        Some("rejected-saturated")
    );
    assert_eq!(
        json(&rejected.body)["error"]["type"],
        "TooManyRequestsError"
    );
    // The same load does not shed a request that is not sheddable.
    for objective in ["chat", "unknown-objective"] {
        let mut stream = EnvoyStream::open(&mut client).await;
        let headers = post_headers(&[("x-gateway-inference-objective", objective)]);
        assert!(
            send_request(&mut stream, &headers, &[chat_body("m", "x")])
                .await
                .is_ok()
        );
    }
    let metrics = reqwest_text(epp.metrics, "/metrics").await;
    assert!(
        metrics.contains("switchyard_rejected_requests_total{reason=\"saturated\",code=\"429\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn empty_pool_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, "[]").unwrap();
    let mut args = static_args(&[], "gie-default");
    args.sources.endpoints_file = Some(file);
    let epp = Epp::start(args, plaintext_config()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let rejected = send_request(&mut stream, &post_headers(&[]), &[chat_body("m", "x")])
        .await
        .unwrap_err();
    assert_eq!(rejected.status.unwrap().code, 503);
}

#[tokio::test]
async fn model_rewrite_changes_the_forwarded_body_only_there() {
    let mut args = static_args(&three(), "gie-default");
    args.policy.model_rewrites = vec!["alias=served/model-7b".to_owned()];
    let epp = Epp::start(args, plaintext_config()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let body = chat_body("alias", &"rewrite me ".repeat(10_000));
    let routed = send_request(
        &mut stream,
        &post_headers(&[]),
        &split(&body, &[5_000, 65_536]),
    )
    .await
    .unwrap();
    let expected = String::from_utf8(body).unwrap().replacen(
        r#""model":"alias""#,
        r#""model":"served/model-7b""#,
        1,
    );
    assert_eq!(String::from_utf8(routed.body).unwrap(), expected);
    let decisions = epp.serving.admission().decisions().recent(1);
    assert_eq!(decisions[0].model, "alias");
    assert_eq!(decisions[0].target_model, "served/model-7b");
}

const SSE: &[&str] = &[
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"id\":\"c\",\"choices\":[],",
    "\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":2,\"total_tokens\":42,\"prompt_tokens_details\":{\"cached_tokens\":32}}}\n\n",
    "data: [DONE]\n\n",
];

#[tokio::test]
async fn streamed_response_with_usage_settles_inflight() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let routed = send_request(
        &mut stream,
        &post_headers(&[]),
        &[chat_body("m", "stream please")],
    )
    .await
    .unwrap();
    let chosen: SocketAddr = routed.destination.parse().unwrap();
    assert_eq!(epp.inflight(chosen), 1);
    let mut headers = response_headers(200, "text/event-stream", false);
    headers = with_metadata(headers, served_metadata(&routed.destination));
    stream.send(headers).await;
    stream.recv().await.unwrap();
    for (index, chunk) in SSE.iter().enumerate() {
        stream
            .send(response_body(chunk.as_bytes(), index + 1 == SSE.len()))
            .await;
        let (echo, eos) = streamed_chunk(&stream.recv().await.unwrap()).unwrap();
        assert_eq!(echo, chunk.as_bytes());
        assert_eq!(eos, index + 1 == SSE.len());
    }
    assert_eq!(
        epp.inflight(chosen),
        0,
        "settled at the end of the response"
    );
    let totals = totals(&epp.serving, chosen);
    assert_eq!(
        (
            totals.completed,
            totals.prompt_tokens,
            totals.cached_prompt_tokens
        ),
        (1, 40, 32)
    );
    let record = &epp.serving.admission().decisions().recent(1)[0];
    assert_eq!(record.realised.cached_tokens, Some(32));
    assert_eq!(record.realised.prefix_hit, Some(0.8));
    assert_eq!(record.realised.served, Some(chosen));
    stream.close_send();
    assert!(stream.recv().await.is_none());
}

#[tokio::test]
async fn served_elsewhere_moves_the_inflight_count() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    let routed = send_request(&mut stream, &post_headers(&[]), &[chat_body("m", "retry")])
        .await
        .unwrap();
    let chosen: SocketAddr = routed.destination.parse().unwrap();
    let other = *endpoints.iter().find(|addr| **addr != chosen).unwrap();
    stream
        .send(with_metadata(
            response_headers(200, "application/json", false),
            served_metadata(&other.to_string()),
        ))
        .await;
    stream.recv().await.unwrap();
    assert_eq!((epp.inflight(chosen), epp.inflight(other)), (0, 1));
    stream
        .send(response_body(
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            true,
        ))
        .await;
    stream.recv().await.unwrap();
    assert_eq!(epp.inflight(other), 0);
}

#[tokio::test]
async fn reset_mid_body_and_mid_response_release_state() {
    let epp = epp(&three()).await;
    let mut client = epp.client().await;
    // Mid request body: never routed, nothing counted.
    let mut stream = EnvoyStream::open(&mut client).await;
    stream
        .send(request_headers(&post_headers(&[]), false))
        .await;
    stream
        .send(request_body(b"{\"model\":\"m\",\"mess", false))
        .await;
    drop(stream);
    // Mid response body: routed, then the gateway goes away.
    let mut stream = EnvoyStream::open(&mut client).await;
    send_request(&mut stream, &post_headers(&[]), &[chat_body("m", "bye")])
        .await
        .unwrap();
    stream
        .send(response_headers(200, "text/event-stream", false))
        .await;
    stream.recv().await.unwrap();
    stream.send(response_body(SSE[0].as_bytes(), false)).await;
    stream.recv().await.unwrap();
    assert_eq!(epp.total_inflight(), 1);
    drop(stream);
    epp.wait_idle().await;
    let record = &epp.serving.admission().decisions().recent(1)[0];
    assert_eq!(
        record.realised.outcome,
        switchyard::serving::decisions::Outcome::Cancelled
    );
}

#[tokio::test]
async fn many_concurrent_streams() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let client = epp.client().await;
    let tasks: Vec<_> = (0..1_000)
        .map(|index| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut stream = EnvoyStream::open(&mut client).await;
                let body = chat_body("m", &format!("request {index} {}", "p".repeat(index % 700)));
                let routed = send_request(&mut stream, &post_headers(&[]), &split(&body, &[97]))
                    .await
                    .unwrap();
                assert_eq!(routed.body, body);
                stream
                    .send(response_headers(200, "application/json", false))
                    .await;
                stream.recv().await.unwrap();
                stream
                    .send(response_body(
                        br#"{"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
                        true,
                    ))
                    .await;
                stream.recv().await.unwrap();
                routed.destination
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for task in tasks {
        seen.insert(task.await.unwrap());
    }
    assert!(seen.len() > 1, "load spread over endpoints: {seen:?}");
    epp.wait_idle().await;
    let routed: u64 = epp
        .serving
        .table()
        .snapshot()
        .endpoints()
        .iter()
        .map(|endpoint| endpoint.live().totals().completed)
        .sum();
    assert_eq!(routed, 1_000);
}

#[tokio::test]
async fn buffered_mode_routes_on_the_body_message() {
    let endpoints = three();
    let mut args = static_args(&endpoints, "gie-default");
    args.policy.model_rewrites = vec!["a=b".to_owned()];
    let epp = Epp::start(args, plaintext_config()).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    stream.duplex = false;
    // BUFFERED = 2 both ways.
    stream
        .send(with_protocol(
            request_headers(&post_headers(&[]), false),
            2,
            2,
        ))
        .await;
    let answer = stream.recv().await.unwrap();
    assert_eq!(
        destination_header(&answer),
        None,
        "headers are answered before the body"
    );
    stream
        .send(request_body(&chat_body("a", "buffered"), true))
        .await;
    let answer = stream.recv().await.unwrap();
    let destination = destination_header(&answer).expect("the body answer routes");
    assert_member(&destination, &endpoints);
    use envoy_types::pb::envoy::service::ext_proc::v3::{
        body_mutation::Mutation, processing_response::Response,
    };
    let Some(Response::RequestBody(body)) = answer.response else {
        panic!("body answer")
    };
    let Some(Mutation::Body(rewritten)) = body.response.unwrap().body_mutation.unwrap().mutation
    else {
        panic!("rewritten body")
    };
    assert_eq!(json(&rewritten)["model"], "b");
}

#[tokio::test]
async fn metrics_and_decisions_endpoints() {
    let endpoints = three();
    let epp = epp(&endpoints).await;
    let mut client = epp.client().await;
    let mut stream = EnvoyStream::open(&mut client).await;
    send_request(
        &mut stream,
        &post_headers(&[]),
        &[chat_body("m", "explain me")],
    )
    .await
    .unwrap();
    let metrics = reqwest_text(epp.metrics, "/metrics").await;
    for needle in [
        "inference_objective_request_total{model_name=\"m\",target_model_name=\"m\"} 1",
        "inference_pool_ready_pods{name=\"static\"} 3",
        "inference_extension_scheduler_e2e_duration_seconds_count 1",
        "switchyard_endpoint_load_source{endpoint=\"10.0.0.1:8001\",source=\"none\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    let decisions = json(
        reqwest_text(epp.metrics, "/debug/decisions?limit=5")
            .await
            .as_bytes(),
    );
    let record = &decisions[0];
    assert_eq!(record["model"], "m");
    assert!(
        record["ranked"][0]["contributions"]
            .as_array()
            .unwrap()
            .len()
            >= 3
    );
    assert!(record["runner_up"].is_string());
    let endpoints_view = json(
        reqwest_text(epp.metrics, "/debug/endpoints")
            .await
            .as_bytes(),
    );
    assert_eq!(endpoints_view.as_array().unwrap().len(), 3);
}

/// GET over plain HTTP/1.1 on loopback.
async fn reqwest_text(addr: SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .expect("GET");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
