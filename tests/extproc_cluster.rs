//! The endpoint picker fed by the cluster: the InferencePool's pods and objectives from a fake
//! Kubernetes API server, and simulated model servers scraped in agent-less mode (skipping the
//! endpoints node agents cover), with a request forwarded for real to the chosen server.
mod extproc_support;
mod k8s_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use extproc_support::*;
use http_body_util::{BodyExt, Full};
use k8s_support::{FakeApiServer, Resource, wait_until};
use serde_json::json;
use switchyard::cluster::Health;

const NS: &str = "llm";

fn pool_spec() -> serde_json::Value {
    json!({
        "selector": {"matchLabels": {"app": "vllm"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
    })
}

fn health_of(epp: &Epp, addr: &str) -> Option<Health> {
    let addr: SocketAddr = addr.parse().unwrap();
    epp.serving
        .table()
        .snapshot()
        .get(&addr)
        .map(|endpoint| endpoint.health.clone())
}

#[tokio::test]
async fn pool_pods_and_objectives_drive_routing() {
    let (client, api) = FakeApiServer::start();
    api.apply_pool("pool", NS, pool_spec());
    api.apply_pod("a", NS, Some("10.1.0.1"), true, json!({"app": "vllm"}));
    api.apply_pod("b", NS, Some("10.1.0.2"), false, json!({"app": "vllm"}));
    let mut args = static_args(&[], "gie-default");
    args.sources.pool_name = Some("pool".to_owned());
    args.sources.pool_namespace = NS.to_owned();
    let epp = Epp::start_with(args, plaintext_config(), Some(client)).await;
    wait_until("pods in the table", || {
        epp.serving.table().snapshot().len() == 2
    })
    .await;
    assert_eq!(health_of(&epp, "10.1.0.1:8000"), Some(Health::Ready));
    assert!(matches!(
        health_of(&epp, "10.1.0.2:8000"),
        Some(Health::Unhealthy(_))
    ));
    assert!(epp.serving.is_synced());

    // Only the ready pod is picked.
    let mut grpc = epp.client().await;
    for _ in 0..5 {
        let mut stream = EnvoyStream::open(&mut grpc).await;
        let routed = send_request(&mut stream, &post_headers(&[]), &[chat_body("m", "k8s")])
            .await
            .unwrap();
        assert_eq!(routed.destination, "10.1.0.1:8000");
    }

    // An InferenceObjective makes its requests sheddable; never-scraped pods have no capacity.
    api.apply_objective("batch", NS, "pool", Some(-3));
    let objectives = epp.serving.admission().objectives().clone();
    wait_until("objective priority", || {
        objectives.priority(Some("batch")) == -3
    })
    .await;
    let mut stream = EnvoyStream::open(&mut grpc).await;
    let headers = post_headers(&[("x-gateway-inference-objective", "batch")]);
    let rejected = send_request(&mut stream, &headers, &[chat_body("m", "batch")])
        .await
        .unwrap_err();
    assert_eq!(rejected.status.unwrap().code, 429);

    // A pod turning ready is picked; the pool's deletion empties the set (503), clearly.
    api.apply_pod("b", NS, Some("10.1.0.2"), true, json!({"app": "vllm"}));
    wait_until("pod b ready", || {
        health_of(&epp, "10.1.0.2:8000") == Some(Health::Ready)
    })
    .await;
    api.delete(Resource::InferencePools, NS, "pool");
    wait_until("pool emptied", || epp.serving.table().snapshot().is_empty()).await;
    let mut stream = EnvoyStream::open(&mut grpc).await;
    let rejected = send_request(&mut stream, &post_headers(&[]), &[chat_body("m", "gone")])
        .await
        .unwrap_err();
    assert_eq!(rejected.status.unwrap().code, 503);
}

fn scraping_args(endpoints: &[SocketAddr]) -> switchyard::serving::ServingArgs {
    let mut args = static_args(endpoints, "gie-default");
    args.scrape.scrape = true;
    // Slack for a busy machine; production runs 50 ms / 40 ms.
    args.scrape.cadence.scrape_interval = Duration::from_millis(100);
    args.scrape.cadence.scrape_timeout = Duration::from_millis(90);
    args
}

#[tokio::test]
async fn agentless_scraping_skips_agent_covered_endpoints() {
    let (a, b) = (sim().await, sim().await);
    let epp = Epp::start(scraping_args(&[a.addr, b.addr]), plaintext_config()).await;
    let loaded = |addr: SocketAddr| {
        epp.serving
            .table()
            .snapshot()
            .get(&addr)
            .and_then(|endpoint| endpoint.live().load())
            .is_some()
    };
    wait_until("both scraped", || loaded(a.addr) && loaded(b.addr)).await;
    let feed = epp.serving.scrape_feed().expect("scraping on");
    assert_eq!(feed.scraped().len(), 2);

    // A node agent now reports `a`: it is no longer scraped from here.
    epp.covered.send_replace(HashSet::from([a.addr]));
    wait_until("a left to its agent", || feed.scraped() == vec![b.addr]).await;
    let metrics = epp.serving.metrics_text();
    assert!(metrics.contains(&format!(
        "switchyard_endpoint_load_source{{endpoint=\"{}\",source=\"agent\"}} 1",
        a.addr
    )));
    assert!(metrics.contains(&format!(
        "switchyard_endpoint_load_source{{endpoint=\"{}\",source=\"scrape\"}} 1",
        b.addr
    )));
    epp.covered.send_replace(HashSet::new());
    wait_until("a scraped again", || feed.scraped().len() == 2).await;
}

/// Plays Envoy end to end: asks the picker, forwards to the chosen simulated server over HTTP,
/// streams its answer back through the ext_proc stream.
#[tokio::test]
async fn a_real_streamed_request_settles_usage() {
    let (a, b) = (sim().await, sim().await);
    let epp = Epp::start(scraping_args(&[a.addr, b.addr]), plaintext_config()).await;
    let mut grpc = epp.client().await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let prompt = "The same long shared system prompt. ".repeat(60);
    let mut destinations = Vec::new();
    for round in 0..3 {
        let body = serde_json::to_vec(&json!({
            "model": "m",
            "prompt": format!("{prompt} question {round}"),
            "max_tokens": 5,
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .unwrap();
        let mut stream = EnvoyStream::open(&mut grpc).await;
        let routed = send_request(&mut stream, &post_headers(&[]), &split(&body, &[700]))
            .await
            .unwrap();
        let request = http::Request::post(format!("http://{}/v1/completions", routed.destination))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(routed.body)))
            .unwrap();
        let response = http
            .request(request)
            .await
            .expect("the chosen server answers");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        stream
            .send(with_metadata(
                response_headers(response.status().as_u16(), &content_type, false),
                served_metadata(&routed.destination),
            ))
            .await;
        stream.recv().await.unwrap();
        let mut body = response.into_body();
        let mut echoed = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                stream.send(response_body(&data, false)).await;
                echoed.extend(streamed_chunk(&stream.recv().await.unwrap()).unwrap().0);
            }
        }
        stream.send(response_body(b"", true)).await;
        let (_, eos) = streamed_chunk(&stream.recv().await.unwrap()).unwrap();
        assert!(eos);
        assert!(String::from_utf8_lossy(&echoed).ends_with("data: [DONE]\n\n"));
        destinations.push(routed.destination);
        let record = &epp.serving.admission().decisions().recent(1)[0];
        assert!(record.realised.prompt_tokens.unwrap() > 100, "{record:?}");
        assert!(
            record.realised.cached_tokens.is_some(),
            "the simulator reports cached tokens"
        );
    }
    epp.wait_idle().await;
    // The shared prefix keeps the requests on one server, where its cache is.
    assert!(
        destinations.windows(2).all(|pair| pair[0] == pair[1]),
        "{destinations:?}"
    );
}
