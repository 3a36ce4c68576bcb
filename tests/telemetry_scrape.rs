//! The metrics scraper against real HTTP servers on 127.0.0.1 serving the engine fixtures.
mod telemetry_support;
use telemetry_support as support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery};
use axum::http::StatusCode;
use axum::routing::get;
use parking_lot::Mutex;
use support::{dead_addr, fixture, serve};
use switchyard::clock::SystemClock;
use switchyard::telemetry::scrape::{
    EndpointStatus, ScrapeConfig, ScrapeTarget, Scraper, scrape_once,
};
use switchyard::telemetry::{EngineKind, engines::default_metrics_path};

fn fixture_router(path: &'static str, file: &str) -> Router {
    let body = fixture(file);
    Router::new().route(path, get(move || std::future::ready(body.clone())))
}

/// Production cadence is 50 ms / 40 ms; tests leave more slack so a busy CI machine does not
/// turn a good endpoint into a timeout.
fn config(targets: Vec<ScrapeTarget>) -> ScrapeConfig {
    ScrapeConfig {
        targets,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(90),
        ..ScrapeConfig::default()
    }
}

/// Waits (at most 5 s) until `done` holds for the scraper's statuses.
async fn wait_for(scraper: &Scraper, mut done: impl FnMut(&[EndpointStatus]) -> bool) {
    let mut updates = scraper.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if done(&scraper.statuses()) {
            return;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero()
            || tokio::time::timeout(remaining, updates.changed())
                .await
                .is_err()
        {
            panic!("condition not reached in 5 s: {:#?}", scraper.statuses());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_slow_dead_and_malformed_endpoints_side_by_side() {
    let vllm = serve(fixture_router("/metrics", "metrics/vllm.txt")).await;
    let sglang = serve(fixture_router("/metrics", "metrics/sglang.txt")).await;
    let trtllm = serve(fixture_router(
        default_metrics_path(Some(EngineKind::Trtllm)),
        "metrics/trtllm.txt",
    ))
    .await;
    let triton = serve(fixture_router("/metrics", "metrics/triton.txt")).await;
    let malformed = serve(fixture_router(
        "/metrics",
        "metrics/malformed/bad_value.txt",
    ))
    .await;
    let slow_body = fixture("metrics/vllm.txt");
    let slow = serve(Router::new().route(
        "/metrics",
        get(move || {
            let body = slow_body.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                body
            }
        }),
    ))
    .await;
    let dead = dead_addr();

    let scraper = Scraper::spawn(
        config(vec![
            ScrapeTarget::new(vllm),
            ScrapeTarget::new(sglang).with_engine(EngineKind::Sglang),
            ScrapeTarget::new(trtllm).with_engine(EngineKind::Trtllm),
            ScrapeTarget::new(triton),
            ScrapeTarget::new(malformed),
            ScrapeTarget::new(slow),
            ScrapeTarget::new(dead),
        ]),
        Arc::new(SystemClock),
    )
    .unwrap();

    let failing = [malformed, slow, dead];
    wait_for(&scraper, |all| {
        all.iter().all(|s| {
            if failing.contains(&s.target.addr) {
                s.scrape.failures >= 2
            } else {
                s.load.as_ref().is_some_and(|load| load.seq >= 2)
            }
        })
    })
    .await;

    let by_addr = |addr: SocketAddr| scraper.status(addr).unwrap();
    for (addr, engine, waiting, running) in [
        (vllm, EngineKind::Vllm, 3, 12),
        (sglang, EngineKind::Sglang, 6, 40),
        (trtllm, EngineKind::Trtllm, 9, 64),
        (triton, EngineKind::Triton, 6, 30),
    ] {
        let status = by_addr(addr);
        let load = status
            .load
            .as_ref()
            .unwrap_or_else(|| panic!("{status:#?}"));
        assert_eq!(status.engine, Some(engine));
        assert_eq!(
            (load.engine, load.waiting, load.running),
            (engine, waiting, running)
        );
        assert!(status.scrape.last_ok.is_some() && status.scrape.latency.is_some());
    }

    // Never scraped successfully: unknown, not idle.
    for addr in failing {
        let status = by_addr(addr);
        assert_eq!(status.load, None, "{status:#?}");
        assert_eq!(status.scrape.last_ok, None);
        assert!(status.scrape.consecutive_failures >= 2, "{status:#?}");
    }
    let error = |addr| by_addr(addr).scrape.last_error.unwrap().1;
    let malformed_error = error(malformed);
    assert!(
        malformed_error.contains("line 3") && malformed_error.contains("twelve"),
        "{malformed_error}"
    );
    assert!(error(slow).contains("timed out"), "{}", error(slow));
    assert!(error(dead).contains("request failed"), "{}", error(dead));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_keeps_its_last_reading_with_its_old_timestamp() {
    let page = Arc::new(Mutex::new(Some(fixture("metrics/vllm.txt"))));
    let served = Arc::clone(&page);
    let addr = serve(Router::new().route(
        "/metrics",
        get(move || {
            let body = served.lock().clone();
            async move { body.ok_or(StatusCode::SERVICE_UNAVAILABLE) }
        }),
    ))
    .await;
    let scraper =
        Scraper::spawn(config(vec![ScrapeTarget::new(addr)]), Arc::new(SystemClock)).unwrap();
    wait_for(&scraper, |all| all[0].load.is_some()).await;

    *page.lock() = None;
    wait_for(&scraper, |all| all[0].scrape.consecutive_failures >= 3).await;
    let failing = scraper.status(addr).unwrap();
    let kept = failing.load.clone().expect("last reading kept");
    assert_eq!(kept.waiting, 3);
    assert!(kept.sampled_at <= failing.scrape.last_ok.unwrap());
    assert!(
        failing
            .scrape
            .last_error
            .as_ref()
            .unwrap()
            .1
            .contains("503")
    );
    assert!(failing.scrape.last_error.as_ref().unwrap().0 > kept.sampled_at);

    *page.lock() = Some(fixture("metrics/vllm.txt").replace(
        "vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0",
        "vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 8.0",
    ));
    wait_for(&scraper, |all| {
        all[0].scrape.consecutive_failures == 0 && all[0].load.as_ref().unwrap().waiting == 8
    })
    .await;
    let recovered = scraper.load(addr).unwrap();
    assert!(recovered.sampled_at > kept.sampled_at);
    assert!(recovered.seq > kept.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_change_at_run_time() {
    let first = serve(fixture_router("/metrics", "metrics/vllm.txt")).await;
    let second = serve(fixture_router("/metrics", "metrics/sglang.txt")).await;
    let scraper = Scraper::spawn(
        config(vec![ScrapeTarget::new(first)]),
        Arc::new(SystemClock),
    )
    .unwrap();
    wait_for(&scraper, |all| all.len() == 1 && all[0].load.is_some()).await;

    // From a thread outside the runtime, as a Kubernetes watcher callback might.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                scraper.set_targets(vec![ScrapeTarget::new(first), ScrapeTarget::new(second)])
            })
            .join()
            .unwrap()
    })
    .unwrap();
    wait_for(&scraper, |all| {
        all.len() == 2 && all.iter().all(|s| s.load.is_some())
    })
    .await;
    let first_seq = scraper.load(first).unwrap().seq;
    assert!(first_seq >= 1);

    scraper
        .set_targets(vec![ScrapeTarget::new(second)])
        .unwrap();
    assert!(scraper.status(first).is_none());
    assert_eq!(scraper.statuses().len(), 1);

    // Same address, new engine setting: its state starts over.
    scraper
        .set_targets(vec![
            ScrapeTarget::new(second).with_engine(EngineKind::Vllm),
        ])
        .unwrap();
    wait_for(&scraper, |all| all[0].scrape.failures >= 1).await;
    let status = scraper.status(second).unwrap();
    assert_eq!(status.load, None);
    assert!(
        status
            .scrape
            .last_error
            .unwrap()
            .1
            .contains("vllm:num_requests_waiting")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_kept_alive_between_scrapes() {
    let body = fixture("metrics/triton.txt");
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    let addr = serve(Router::new().route(
        "/metrics",
        get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            seen.lock().push(peer);
            std::future::ready(body.clone())
        }),
    ))
    .await;
    let scraper =
        Scraper::spawn(config(vec![ScrapeTarget::new(addr)]), Arc::new(SystemClock)).unwrap();
    wait_for(&scraper, |all| all[0].scrape.successes >= 5).await;
    let peers = peers.lock().clone();
    assert!(peers.len() >= 5);
    // One connection carries the scrapes (a timeout on a busy machine may open a second).
    let mut distinct = peers.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() <= 2,
        "{} connections for {} scrapes",
        distinct.len(),
        peers.len()
    );
}

#[tokio::test]
async fn scrape_once_reads_one_page() {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&hits);
    let body = fixture("metrics/vllm_v0_legacy.txt");
    let addr = serve(Router::new().route(
        "/metrics",
        get(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(body.clone())
        }),
    ))
    .await;
    let load = scrape_once(
        &ScrapeTarget::new(addr),
        Duration::from_secs(2),
        &SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(
        (load.engine, load.waiting, load.running),
        (EngineKind::Vllm, 5, 7)
    );
    assert_eq!(load.seq, 1);
    assert_eq!(hits.load(Ordering::Relaxed), 1);
    let err = scrape_once(
        &ScrapeTarget::new(dead_addr()),
        Duration::from_secs(2),
        &SystemClock,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("request failed"), "{err}");
}

/// The fallback to full pages happens within a scrape, so only a slow machine's timeouts may
/// show up as failures.
fn assert_no_failure_but_timeouts(status: &EndpointStatus) {
    if let Some((_, message)) = &status.scrape.last_error {
        assert!(message.contains("timed out"), "{status:#?}");
    }
}

/// What a metrics server does with `?name[]=`.
#[derive(Clone, Copy)]
enum NameFilter {
    /// prometheus_client's exporter: only the named samples.
    Honour,
    /// prometheus_client in multiprocess mode: the restricted registry is empty.
    Empty,
    /// A server that rejects unknown query parameters.
    Refuse,
}

/// Serves `page` at /metrics, treating `?name[]=` as `filter` says, and records the raw query
/// of every request.
async fn metrics_server(
    page: String,
    filter: NameFilter,
) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&queries);
    let addr = serve(Router::new().route(
        "/metrics",
        get(move |RawQuery(query): RawQuery| {
            seen.lock().push(query.clone());
            let answer = match (support::restrict_to_names(&page, query.as_deref()), filter) {
                (None, _) => Ok(page.clone()),
                (Some(restricted), NameFilter::Honour) => Ok(restricted),
                (Some(_), NameFilter::Empty) => Ok(String::new()),
                (Some(_), NameFilter::Refuse) => {
                    Err((StatusCode::BAD_REQUEST, "unknown parameter"))
                }
            };
            std::future::ready(answer)
        }),
    ))
    .await;
    (addr, queries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_client_servers_are_asked_for_only_what_we_read() {
    let page = fixture("metrics/vllm.txt");
    let (addr, queries) = metrics_server(page.clone(), NameFilter::Honour).await;
    let scraper =
        Scraper::spawn(config(vec![ScrapeTarget::new(addr)]), Arc::new(SystemClock)).unwrap();
    wait_for(&scraper, |all| {
        all[0].load.as_ref().is_some_and(|l| l.seq >= 4)
    })
    .await;
    let load = scraper.load(addr).unwrap();
    assert_eq!(
        (load.waiting, load.running, load.kv_cache_usage),
        (3, 12, 0.4375)
    );
    assert_eq!(
        (load.block_size, load.num_gpu_blocks),
        (Some(16), Some(27306))
    );
    assert_eq!(load.lora.unwrap().running, vec!["sql-lora", "chat-lora"]);
    let queries = queries.lock().clone();
    // The first page is read whole to detect the engine; the rest are filtered.
    assert_eq!(queries[0], None);
    let filtered = queries[1].as_deref().expect("filtered after detection");
    assert!(
        filtered.contains("name%5B%5D=vllm:num_requests_waiting"),
        "{filtered}"
    );
    assert!(
        filtered.contains("name%5B%5D=vllm:time_to_first_token_seconds_sum"),
        "{filtered}"
    );
    let restricted = support::restrict_to_names(&page, Some(filtered)).unwrap();
    assert!(
        restricted.len() * 10 < page.len(),
        "{} of {} bytes",
        restricted.len(),
        page.len()
    );
    assert!(queries[1..].iter().all(|q| q.as_deref() == Some(filtered)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_filtered_page_falls_back_to_full_pages_without_a_failure() {
    let (addr, queries) = metrics_server(fixture("metrics/trtllm.txt"), NameFilter::Empty).await;
    let target = ScrapeTarget::new(addr)
        .with_engine(EngineKind::Trtllm)
        .with_path("/metrics");
    let scraper = Scraper::spawn(config(vec![target]), Arc::new(SystemClock)).unwrap();
    wait_for(&scraper, |all| {
        all[0].load.as_ref().is_some_and(|l| l.seq >= 3)
    })
    .await;
    let status = scraper.status(addr).unwrap();
    assert_no_failure_but_timeouts(&status);
    assert_eq!(status.load.unwrap().waiting, 9);
    let queries = queries.lock().clone();
    assert!(
        queries[0].is_some(),
        "configured engine: filtered from the start"
    );
    assert!(queries[1..].iter().all(Option::is_none), "{queries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_without_filter_support_are_never_asked() {
    let (sglang, sglang_queries) =
        metrics_server(fixture("metrics/sglang.txt"), NameFilter::Empty).await;
    let (triton, triton_queries) =
        metrics_server(fixture("metrics/triton.txt"), NameFilter::Honour).await;
    let scraper = Scraper::spawn(
        config(vec![ScrapeTarget::new(sglang), ScrapeTarget::new(triton)]),
        Arc::new(SystemClock),
    )
    .unwrap();
    wait_for(&scraper, |all| {
        all.iter()
            .all(|s| s.load.as_ref().is_some_and(|l| l.seq >= 3))
    })
    .await;
    assert!(sglang_queries.lock().iter().all(Option::is_none));
    assert!(triton_queries.lock().iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_the_filter_query_gets_full_pages() {
    let (addr, queries) = metrics_server(fixture("metrics/vllm.txt"), NameFilter::Refuse).await;
    let target = ScrapeTarget::new(addr).with_engine(EngineKind::Vllm);
    let scraper = Scraper::spawn(config(vec![target]), Arc::new(SystemClock)).unwrap();
    wait_for(&scraper, |all| {
        all[0].load.as_ref().is_some_and(|l| l.seq >= 3)
    })
    .await;
    assert_no_failure_but_timeouts(&scraper.status(addr).unwrap());
    let queries = queries.lock().clone();
    assert!(queries[0].is_some());
    assert!(queries[1..].iter().all(Option::is_none), "{queries:?}");
}
