//! The node-report stream over loopback: the agent's link against the EPP-side service (no
//! dataplane, no model servers: the agent's view is fed by the test).
mod agent_support;
mod extproc_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_support::{EppServer, eventually};
use switchyard::agent::backoff::BackoffPolicy;
use switchyard::agent::link::{LinkConfig, ReceivedView, spawn_link};
use switchyard::agent::metrics::AgentMetrics;
use switchyard::agent::tls::DevPki;
use switchyard::agent::view::{EndpointView, InterestView, NodeView};
use switchyard::clock::{Clock, SystemClock};
use switchyard::cluster::reports::{PoolDirectory, ReportsOptions};
use switchyard::cluster::{EndpointMeta, EndpointTable};
use switchyard::extproc::NodeReportsConfig;
use switchyard::serving::ServingArgs;
use switchyard::telemetry::EndpointLoad;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

fn vip() -> SocketAddr {
    "10.96.0.10:8000".parse().unwrap()
}

fn endpoint(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 1, 0, i], 8000))
}

fn table() -> Arc<EndpointTable> {
    let table = Arc::new(EndpointTable::new());
    table.set_members((1..=3).map(|i| EndpointMeta::new(endpoint(i))));
    table
}

/// The node view a scraping agent would publish: endpoint 1 has a queue, the others are idle.
fn node_view(seq: u64) -> NodeView {
    let now = SystemClock.now();
    NodeView {
        node: "node-a".into(),
        at: now,
        telemetry: "absent",
        endpoints: (1..=3)
            .map(|i| EndpointView {
                addr: endpoint(i),
                pod: None,
                engine: None,
                load: Some(EndpointLoad {
                    waiting: if i == 1 { 6 } else { 0 },
                    running: 2,
                    kv_cache_usage: 0.3,
                    sampled_at: now,
                    seq,
                    ..EndpointLoad::default()
                }),
                scrape_error: None,
                gpus: Vec::new(),
                drain: None,
                score: 1.0,
            })
            .collect(),
        interest: InterestView {
            pool_vips: vec![vip()],
            discover_pools: false,
        },
        ..NodeView::default()
    }
}

/// Publishes a fresh view every 50 ms, as the agent's loop does after each scrape.
fn feed(shutdown: CancellationToken) -> watch::Receiver<Arc<NodeView>> {
    let (tx, rx) = watch::channel(Arc::new(node_view(1)));
    tokio::spawn(async move {
        let mut seq = 1;
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    seq += 1;
                    tx.send_replace(Arc::new(node_view(seq)));
                }
            }
        }
    });
    rx
}

fn link_config(epp: SocketAddr) -> LinkConfig {
    LinkConfig {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..LinkConfig::new(epp.to_string(), "node-a", 7)
    }
}

fn weight_of(view: &ReceivedView, i: u8) -> Option<(u32, bool)> {
    view.view
        .pools
        .iter()
        .find(|p| p.vip == vip().to_string())?
        .backends
        .iter()
        .find(|b| b.address == endpoint(i).to_string())
        .map(|b| (b.weight, b.down))
}

fn latest(views: &watch::Receiver<Option<Arc<ReceivedView>>>) -> Option<Arc<ReceivedView>> {
    views.borrow().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_arrive_at_20_per_second_and_weights_come_back() {
    let table = table();
    let epp = EppServer::start(
        "127.0.0.1:0".parse().unwrap(),
        table.clone(),
        PoolDirectory::single("llama", Some(vip())),
        None,
    );
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(AgentMetrics::new());
    let link = spawn_link(
        link_config(epp.addr),
        feed(shutdown.clone()),
        metrics.clone(),
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .expect("link");

    // Weights come back: the queued endpoint weighs less than the idle ones.
    eventually("weights for the pool arrive", LIMIT, || {
        latest(&link.views).is_some_and(|v| {
            matches!((weight_of(&v, 1), weight_of(&v, 2)), (Some((w1, false)), Some((w2, false))) if w1 < w2)
        })
    })
    .await;
    let view = latest(&link.views).unwrap();
    assert_eq!(view.view.epp, "test-epp");
    assert!(view.view.complete);
    assert_eq!(weight_of(&view, 2), weight_of(&view, 3));

    // The EPP's table has the loads, and the endpoints are covered.
    let load = table
        .snapshot()
        .get(&endpoint(1))
        .and_then(|e| e.live().load());
    assert_eq!(load.map(|l| l.waiting), Some(6));
    let mut covered = epp.covered();
    eventually("all three endpoints are covered", LIMIT, || {
        covered.borrow_and_update().len() == 3
    })
    .await;

    // At least 20 reports a second.
    let before = epp.reports_applied();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = (epp.reports_applied() - before) as f64 / 2.0;
    assert!(rate >= 19.0, "{rate} reports/s");
    assert!(metrics.reports_sent.get() >= 40);
    assert!(metrics.views_received.get() >= 1);
    let text = metrics.encode();
    assert!(
        text.contains("switchyard_agent_report_round_trip_seconds_count")
            && !text.contains("switchyard_agent_report_round_trip_seconds_count 0\n"),
        "round trips are measured:\n{text}"
    );

    shutdown.cancel();
    link.task.await.expect("link ends on shutdown");
    // The node disconnected: its endpoints go stale (no longer covered), loads are kept.
    eventually("coverage ends with the stream", LIMIT, || {
        covered.borrow_and_update().is_empty()
    })
    .await;
    assert_eq!(
        table
            .snapshot()
            .get(&endpoint(1))
            .and_then(|e| e.live().load())
            .map(|l| l.waiting),
        Some(6)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_view_survives_the_epp_and_the_link_reconnects() {
    let table = table();
    let epp = EppServer::start(
        "127.0.0.1:0".parse().unwrap(),
        table.clone(),
        PoolDirectory::single("llama", Some(vip())),
        None,
    );
    let addr = epp.addr;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(AgentMetrics::new());
    let link = spawn_link(
        link_config(addr),
        feed(shutdown.clone()),
        metrics.clone(),
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .expect("link");
    eventually("a first view", LIMIT, || latest(&link.views).is_some()).await;
    eventually("connected", LIMIT, || metrics.epp_connected.get() == 1).await;

    epp.kill();
    eventually("the link notices the EPP is gone", LIMIT, || {
        metrics.epp_connected.get() == 0
    })
    .await;
    let kept = latest(&link.views).expect("the last view is kept");
    assert!(weight_of(&kept, 1).is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors = metrics
        .epp_connects
        .get_or_create(&vec![("result".to_owned(), "error".to_owned())])
        .get();
    assert!(
        errors >= 1,
        "reconnects are attempted while the EPP is away"
    );
    assert_eq!(
        latest(&link.views).unwrap().received_at,
        kept.received_at,
        "nothing new arrived"
    );

    // The EPP comes back on the same port: the link reconnects and views flow again.
    let epp = EppServer::start(
        addr,
        table,
        PoolDirectory::single("llama", Some(vip())),
        None,
    );
    eventually("a view from the restarted EPP", LIMIT, || {
        latest(&link.views).is_some_and(|v| v.received_at > kept.received_at)
    })
    .await;
    let oks = metrics
        .epp_connects
        .get_or_create(&vec![("result".to_owned(), "ok".to_owned())])
        .get();
    assert_eq!(oks, 2);
    eventually("the restarted EPP applies reports", LIMIT, || {
        epp.reports_applied() > 0
    })
    .await;
    shutdown.cancel();
    link.task.await.expect("link ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_our_agent_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
    let epp = EppServer::start(
        "127.0.0.1:0".parse().unwrap(),
        table(),
        PoolDirectory::single("llama", Some(vip())),
        Some(pki.server.clone()),
    );
    let shutdown = CancellationToken::new();

    let run = |config: LinkConfig| {
        let metrics = Arc::new(AgentMetrics::new());
        let link = spawn_link(
            config,
            feed(shutdown.clone()),
            metrics.clone(),
            Arc::new(SystemClock),
            shutdown.clone(),
        )
        .expect("link");
        (link, metrics)
    };
    let (good, _) = run(LinkConfig {
        tls: Some(pki.client.clone()),
        ..link_config(epp.addr)
    });
    eventually("a view over mTLS", LIMIT, || latest(&good.views).is_some()).await;

    // Plain text to a TLS server, and a client certificate from another CA, get nowhere.
    let other_dir = tempfile::tempdir().unwrap();
    let other = DevPki::generate(other_dir.path(), &["localhost"]).unwrap();
    let (plain, plain_metrics) = run(link_config(epp.addr));
    let (stranger, stranger_metrics) = run(LinkConfig {
        tls: Some(switchyard::agent::tls::TlsFiles {
            ca: pki.ca.clone(),
            ..other.client.clone()
        }),
        ..link_config(epp.addr)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (link, metrics) in [(&plain, &plain_metrics), (&stranger, &stranger_metrics)] {
        assert!(latest(&link.views).is_none());
        assert_eq!(metrics.views_received.get(), 0);
        assert_eq!(metrics.epp_connected.get(), 0);
    }
    shutdown.cancel();
}

/// `switchyard epp` serves node reports on their own port: the agent's endpoints become
/// covered (the agent-less scraper leaves them alone), their loads reach the picker's table and
/// the agent gets cluster weights back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_picker_takes_agent_reports_on_its_node_report_port() {
    let endpoints: Vec<SocketAddr> = (1..=3).map(endpoint).collect();
    let config = switchyard::extproc::EppServerConfig {
        node_reports: Some(NodeReportsConfig {
            port: 0,
            tls: None,
            directory: PoolDirectory::single("llama", Some(vip())),
            options: ReportsOptions {
                epp_name: "epp-under-test".into(),
                ..ReportsOptions::default()
            },
        }),
        ..extproc_support::plaintext_config()
    };
    let epp =
        extproc_support::Epp::start(ServingArgs::fixed(&endpoints, "switchyard", 7), config).await;
    let mut covered = epp.covered.subscribe();
    let shutdown = CancellationToken::new();
    let link = spawn_link(
        link_config(epp.node_reports.expect("the node-report port")),
        feed(shutdown.clone()),
        Arc::new(AgentMetrics::new()),
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .expect("link");

    eventually("the agent's endpoints are covered", LIMIT, || {
        covered.borrow_and_update().len() == 3
    })
    .await;
    eventually("weights come back from the endpoint picker", LIMIT, || {
        latest(&link.views).is_some_and(|v| {
            v.view.epp == "epp-under-test"
                && matches!((weight_of(&v, 1), weight_of(&v, 2)), (Some((w1, false)), Some((w2, false))) if w1 < w2)
        })
    })
    .await;
    let waiting = epp
        .serving
        .table()
        .snapshot()
        .get(&endpoint(1))
        .and_then(|e| e.live().load())
        .map(|l| l.waiting);
    assert_eq!(
        waiting,
        Some(6),
        "the reported queue reached the picker's table"
    );
    let page = epp.serving.metrics_text();
    assert!(
        page.contains("switchyard_epp_node_reports_total{outcome=\"applied\"}"),
        "the node-report counters are on the EPP's /metrics page:\n{page}"
    );

    shutdown.cancel();
    link.task.await.expect("link ends on shutdown");
    eventually("coverage ends with the stream", LIMIT, || {
        covered.borrow_and_update().is_empty()
    })
    .await;
    epp.shutdown.cancel();
}
