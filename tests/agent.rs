//! The node agent end to end: simulated model servers (`switchyard sim`, in-process), the real
//! eBPF dataplane (own cgroup and pin root per test, root only), the EPP-side report service
//! over loopback.
//!
//! Timings are asserted only with generous bounds (for correctness on a busy machine); the
//! measured figures are in docs/benchmarks.md (`switchyard bench agent`).
//!
//! Tests that need the dataplane print why and pass without root, bpffs or cgroup v2, except
//! with `CI=true`, where they fail.
mod agent_support;
mod dataplane_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_support::{EppServer, eventually};
use dataplane_support::{Fixture, can_run};
use switchyard::agent::backoff::BackoffPolicy;
use switchyard::agent::endpoints::{LocalEndpoint, PodDiscovery, PortRef};
use switchyard::agent::gpus::GpuOptions;
use switchyard::agent::link::LinkConfig;
use switchyard::agent::pools::StaticPool;
use switchyard::agent::run::{AgentConfig, Discovery, RunningAgent, start};
use switchyard::agent::score::{DrainKind, ScoreParams};
use switchyard::agent::verdict::VerdictParams;
use switchyard::agent::view::{NodeView, PoolSource};
use switchyard::clock::SystemClock;
use switchyard::cluster::reports::PoolDirectory;
use switchyard::cluster::{EndpointMeta, EndpointTable, Health};
use switchyard::dataplane::{BackendState, Dataplane};
use switchyard::k8s::{ContainerPort, NodePod, NodePods};
use switchyard::sim::{Profile, RunningServer, ServerConfig, SimServer};
use switchyard::telemetry::gpu_source::TelemetryMode;
use switchyard::telemetry::nvml::NvmlOptions;
use switchyard::telemetry::pods::ProcRoot;
use switchyard::telemetry::scrape::{ScrapeConfig, ScrapeTarget};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const LIMIT: Duration = Duration::from_secs(15);

fn vip() -> SocketAddr {
    "10.96.3.10:8000".parse().unwrap()
}

/// A simulated vLLM that runs one sequence at a time, so requests sent to it queue up.
async fn sim(seed: u64) -> RunningServer {
    let config = ServerConfig {
        seed,
        profile: Profile {
            max_num_seqs: 1,
            ..Profile::default()
        },
        ..ServerConfig::default()
    };
    SimServer::bind(config, "127.0.0.1:0")
        .await
        .expect("bind a simulated server")
        .spawn()
        .expect("serve")
}

async fn sims(n: u64) -> Vec<RunningServer> {
    let mut servers = Vec::new();
    for seed in 1..=n {
        servers.push(sim(seed).await);
    }
    servers
}

/// Long requests held open against `server`: the first runs, the rest wait. Dropping the
/// streams disconnects them (the server aborts the requests).
async fn load(server: SocketAddr, requests: usize) -> Vec<TcpStream> {
    let body =
        format!(r#"{{"model":"{MODEL}","prompt":"hello","max_tokens":20000,"ignore_eos":true}}"#);
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut streams = Vec::new();
    for _ in 0..requests {
        let mut stream = TcpStream::connect(server)
            .await
            .expect("connect to the sim");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send a request");
        streams.push(stream);
    }
    streams
}

fn config(
    endpoints: &[SocketAddr],
    pools: Vec<StaticPool>,
    fixture: Option<&Fixture>,
) -> AgentConfig {
    AgentConfig {
        node: "test-node".into(),
        discovery: Discovery::Static(
            endpoints
                .iter()
                .map(|addr| LocalEndpoint {
                    target: ScrapeTarget::new(*addr),
                    pod: None,
                    gpu_indices: Vec::new(),
                })
                .collect(),
        ),
        pools,
        discover_pools: true,
        scrape: ScrapeConfig::default(),
        gpu: GpuOptions {
            mode: TelemetryMode::Off,
            sim_endpoints: Vec::new(),
            sim_timeout: Duration::from_millis(200),
            nvml: NvmlOptions::default(),
            proc_root: ProcRoot::default(),
        },
        gpu_interval: Duration::from_millis(100),
        connections_interval: Duration::from_millis(50),
        score: ScoreParams::default(),
        verdict: VerdictParams::default(),
        cgroup: fixture.map(|fx| fx.cgroup().to_path_buf()),
        pin_root: fixture.map_or_else(
            || PathBuf::from("/nonexistent/pins"),
            |fx| fx.pin_root.clone(),
        ),
        link: None,
        http: Some("127.0.0.1:0".parse().unwrap()),
        warmup: Duration::from_secs(1),
    }
}

fn pool_of(servers: &[RunningServer]) -> StaticPool {
    StaticPool {
        vip: vip(),
        backends: servers.iter().map(|s| s.addr).collect(),
    }
}

/// The weights and states the kernel's maps hold for the test VIP.
fn map_backends(fx: &Fixture) -> Vec<(SocketAddr, u32, BackendState)> {
    // Nothing pinned yet (an agent process still starting) reads as no pool.
    let Ok(dataplane) = Dataplane::open_pinned(&fx.pin_root) else {
        return Vec::new();
    };
    dataplane
        .pools()
        .expect("read the pools")
        .into_iter()
        .find(|pool| pool.vip == vip())
        .map(|pool| {
            pool.backends
                .into_iter()
                .filter(|b| b.state != BackendState::Retired)
                .map(|b| (b.addr, b.weight, b.state))
                .collect()
        })
        .unwrap_or_default()
}

fn weight(fx: &Fixture, addr: SocketAddr) -> Option<(u32, BackendState)> {
    map_backends(fx)
        .into_iter()
        .find(|(a, ..)| *a == addr)
        .map(|(_, w, s)| (w, s))
}

fn latest(agent: &RunningAgent) -> Arc<NodeView> {
    agent.views.borrow().clone()
}

async fn all_equal_and_up(fx: &Fixture, servers: &[RunningServer]) {
    eventually(
        "every backend is programmed up with the same weight",
        LIMIT,
        || {
            let backends = map_backends(fx);
            backends.len() == servers.len()
                && backends
                    .iter()
                    .all(|(_, w, s)| *s == BackendState::Active && *w == backends[0].1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_change_reaches_the_bpf_table_and_goes_back() {
    if !can_run("agent-load") {
        return;
    }
    let fx = Fixture::new("agent-load");
    let servers = sims(3).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let agent = start(
        config(&addrs, vec![pool_of(&servers)], Some(&fx)),
        Arc::new(SystemClock),
        CancellationToken::new(),
    )
    .await
    .expect("agent starts");
    assert!(agent.steering);
    all_equal_and_up(&fx, &servers).await;

    // Five requests on a one-sequence server: four wait.
    let started = Instant::now();
    let held = load(addrs[0], 5).await;
    let took = eventually("the loaded server's weight drops in the map", LIMIT, || {
        let (w0, w1) = (weight(&fx, addrs[0]), weight(&fx, addrs[1]));
        matches!((w0, w1), (Some((w0, _)), Some((w1, _))) if w0 * 2 < w1)
    })
    .await;
    eprintln!(
        "load change → BPF table: {:?} after sending",
        started.elapsed().min(took)
    );
    // The view is published at the end of the pass that wrote the map.
    eventually("the node view shows the queue", LIMIT, || {
        let view = latest(&agent);
        view.endpoints.iter().any(|e| {
            e.addr == addrs[0] && e.load.as_ref().is_some_and(|l| l.waiting >= 3) && e.score < 0.5
        })
    })
    .await;

    drop(held);
    all_equal_and_up(&fx, &servers).await;
    agent.stop().await.expect("agent stops");
    // Stopping the agent leaves the pool in the maps.
    assert_eq!(map_backends(&fx).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_servers_and_faulty_gpus_are_drained_and_a_dead_pool_refuses() {
    if !can_run("agent-drain") {
        return;
    }
    let fx = Fixture::new("agent-drain");
    let mut servers = sims(3).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let mut cfg = config(&addrs, vec![pool_of(&servers)], Some(&fx));
    cfg.gpu.mode = TelemetryMode::Sim;
    let agent = start(cfg, Arc::new(SystemClock), CancellationToken::new())
        .await
        .expect("agent starts");
    all_equal_and_up(&fx, &servers).await;

    // A GPU that fell off the bus drains its server.
    let fault = reqwest_like_post(addrs[1], "/admin/faults", r#"{"gpu": {"xid": 79}}"#).await;
    assert!(fault.starts_with("HTTP/1.1 200"), "{fault}");
    eventually("the faulty GPU's server is down in the map", LIMIT, || {
        matches!(weight(&fx, addrs[1]), Some((_, BackendState::Down)))
    })
    .await;
    // The view is published at the end of the pass that wrote the map.
    eventually("the view says why", LIMIT, || {
        latest(&agent).endpoints.iter().any(|e| {
            e.addr == addrs[1] && e.drain.as_ref().map(|d| d.kind) == Some(DrainKind::GpuFault)
        })
    })
    .await;

    // A killed server is drained too; the pool keeps its last live backend.
    let killed = servers.remove(0);
    killed.stop().await.expect("stop a server");
    let started = Instant::now();
    eventually("the killed server is down in the map", LIMIT, || {
        matches!(weight(&fx, addrs[0]), Some((_, BackendState::Down)))
    })
    .await;
    eprintln!(
        "killed server → drained in the map: {:?}",
        started.elapsed()
    );
    assert!(matches!(
        weight(&fx, addrs[2]),
        Some((_, BackendState::Active))
    ));

    // Kill the last healthy one: the GPU-faulty server is alive (not dead), so the pool keeps
    // it as the least bad rather than refusing everything.
    let last = servers.remove(1);
    last.stop().await.expect("stop a server");
    eventually("the least bad backend is kept", LIMIT, || {
        let view = latest(&agent);
        view.pools.first().is_some_and(|p| p.kept_least_bad)
            && matches!(weight(&fx, addrs[1]), Some((_, BackendState::Active)))
    })
    .await;

    // And once it is gone too, every backend is dead: the pool refuses connects.
    let faulty = servers.remove(0);
    faulty.stop().await.expect("stop a server");
    eventually("every backend is down: the pool refuses", LIMIT, || {
        let backends = map_backends(&fx);
        backends.len() == 3 && backends.iter().all(|(_, _, s)| *s == BackendState::Down)
    })
    .await;
    eventually("the view says the pool refuses", LIMIT, || {
        latest(&agent).pools[0].refusing
    })
    .await;
    agent.stop().await.expect("agent stops");
}

/// An agent process, killed if the test ends early (a panic must not leave it running).
struct AgentProcess(std::process::Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw HTTP/1.1 POST; returns the whole answer.
async fn reqwest_like_post(server: SocketAddr, path: &str, body: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_steering_and_the_new_agent_adopts() {
    if !can_run("agent-restart") {
        return;
    }
    let fx = Fixture::new("agent-restart");
    let servers = sims(2).await;
    let endpoints: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let pool = format!("{}={}", vip(), endpoints.join(","));
    // The first agent is the real binary, stopped with SIGTERM as Kubernetes does.
    let mut child = AgentProcess(
        Command::new(SWITCHYARD)
            .args([
                "--log",
                "warn",
                "agent",
                "--endpoints",
                &endpoints.join(","),
                "--pool",
                &pool,
            ])
            .args([
                "--telemetry",
                "off",
                "--metrics-port",
                "0",
                "--metrics-address",
                "127.0.0.1",
            ])
            .arg("--cgroup")
            .arg(fx.cgroup())
            .arg("--pin-root")
            .arg(&fx.pin_root)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent binary"),
    );
    all_equal_and_up(&fx, &servers).await;
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.0.wait().expect("the agent exits");
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");

    // Nothing runs now, and the pool still steers.
    let before = map_backends(&fx);
    assert_eq!(before.len(), 2);
    let probe = fx.cli_ok(&[
        "probe",
        "--vip",
        &vip().to_string(),
        "--count",
        "20",
        "--cgroup",
        &fx.cgroup().to_string_lossy(),
        "--timeout-ms",
        "1500",
        "--json",
    ]);
    let probe: serde_json::Value = serde_json::from_str(probe.lines().last().unwrap()).unwrap();
    assert_eq!(probe["connected"], 20, "{probe}");

    // A new agent adopts the pins without rewriting equal weights.
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let agent = start(
        config(&addrs, vec![pool_of(&servers)], Some(&fx)),
        Arc::new(SystemClock),
        CancellationToken::new(),
    )
    .await
    .expect("the new agent starts");
    assert!(agent.steering);
    eventually("the new agent is ready", LIMIT, || agent.probes.is_ready()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        map_backends(&fx),
        before,
        "same pool, same weights, same ids"
    );
    let held = load(addrs[0], 4).await;
    eventually("the new agent steers", LIMIT, || {
        matches!((weight(&fx, addrs[0]), weight(&fx, addrs[1])), (Some((w0, _)), Some((w1, _))) if w0 < w1)
    })
    .await;
    drop(held);
    agent.stop().await.expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_weights_land_in_the_maps_survive_the_epp_and_decay() {
    if !can_run("agent-epp") {
        return;
    }
    let fx = Fixture::new("agent-epp");
    let servers = sims(3).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let table = Arc::new(EndpointTable::new());
    table.set_members(addrs.iter().map(|a| EndpointMeta::new(*a)));
    let epp = EppServer::start(
        "127.0.0.1:0".parse().unwrap(),
        table.clone(),
        PoolDirectory::single("llama", Some(vip())),
        None,
    );
    let epp_addr = epp.addr;

    // No static pool: the agent learns the pool (VIP and backends) from the EPP.
    let mut cfg = config(&addrs, Vec::new(), Some(&fx));
    cfg.score.cluster_fresh_for = 500_000;
    cfg.score.cluster_half_life = 500_000;
    cfg.link = Some(LinkConfig {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        ..LinkConfig::new(epp_addr.to_string(), "test-node", 11)
    });
    let agent = start(cfg, Arc::new(SystemClock), CancellationToken::new())
        .await
        .expect("agent starts");
    all_equal_and_up(&fx, &servers).await;
    eventually("the pool comes from the EPP", LIMIT, || {
        latest(&agent)
            .pools
            .first()
            .is_some_and(|p| p.source == PoolSource::Epp)
    })
    .await;

    // Reports arrive at 20 a second or more.
    let before = epp.reports_applied();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rate = epp.reports_applied() - before;
    assert!(rate >= 19, "{rate} reports in a second");

    // The EPP marks server 0 down (another source: its pod is draining) while the node sees it
    // healthy: the cluster's word lands in the map.
    table.set_health(&addrs[0], Health::Draining);
    eventually("the cluster weight lands in the map", LIMIT, || {
        matches!(weight(&fx, addrs[0]), Some((_, BackendState::Down)))
    })
    .await;

    // The EPP goes away: the last weights stay, marked stale, then decay to local scores.
    epp.kill();
    eventually("the agent notices", LIMIT, || {
        agent.metrics.epp_connected.get() == 0
    })
    .await;
    // While the last view is fresh (0.5 s here) its weights stay in force: a pass that used
    // weights younger than that wrote the EPP's verdict (down), not the local score.
    let view = latest(&agent);
    let pool = &view.pools[0];
    if pool.cluster_age.is_some_and(|age| age < 400_000) {
        assert_eq!(pool.weights.trust, 1.0, "fresh weights are fully trusted");
        assert!(
            matches!(weight(&fx, addrs[0]), Some((_, BackendState::Down))),
            "the last weights are kept while fresh"
        );
    }
    eventually("trust decays and local scores take over", LIMIT, || {
        let view = latest(&agent);
        let pool = &view.pools[0];
        pool.cluster_age.is_some_and(|age| age > 500_000)
            && pool.weights.trust < 0.2
            && matches!(
                (weight(&fx, addrs[0]), weight(&fx, addrs[1])),
                (Some((w0, BackendState::Active)), Some((w1, _))) if w0 * 10 >= w1 * 8
            )
    })
    .await;
    assert!(agent.metrics.cluster_weights_age.get() > 0.5);
    assert!(
        map_backends(&fx)
            .iter()
            .all(|(_, _, s)| *s == BackendState::Active),
        "never empty"
    );

    // The EPP is back on the same port: the agent reconnects and fresh weights apply again.
    let epp = EppServer::start(
        epp_addr,
        table.clone(),
        PoolDirectory::single("llama", Some(vip())),
        None,
    );
    eventually("the agent reconnects", LIMIT, || {
        agent.metrics.epp_connected.get() == 1
    })
    .await;
    eventually("fresh cluster weights apply again", LIMIT, || {
        latest(&agent).pools[0].weights.trust == 1.0
            && matches!(weight(&fx, addrs[0]), Some((_, BackendState::Down)))
    })
    .await;
    drop(epp);
    agent.stop().await.expect("agent stops");
}

fn node_pod(name: &str, port: u16, ready: bool) -> NodePod {
    NodePod {
        name: name.into(),
        namespace: "default".into(),
        uid: format!("uid-{name}"),
        phase: Some("Running".into()),
        host_network: false,
        pod_ips: vec!["127.0.0.1".parse().unwrap()],
        container_ids: Vec::new(),
        labels: [("app".to_string(), "vllm".to_string())].into(),
        ports: vec![ContainerPort {
            container: "engine".into(),
            name: Some("http".into()),
            port,
            protocol: "TCP".into(),
        }],
        ready,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_pods_are_its_endpoints_and_unready_pods_are_drained() {
    let servers = sims(2).await;
    let (pods_tx, pods) = watch::channel(NodePods::default());
    let mut cfg = config(&[], Vec::new(), None);
    cfg.discovery = Discovery::Pods {
        pods,
        discovery: PodDiscovery {
            selector: "app=vllm".parse().unwrap(),
            ports: servers
                .iter()
                .map(|s| PortRef::Number(s.addr.port()))
                .collect(),
            engine: None,
        },
    };
    let agent = start(cfg, Arc::new(SystemClock), CancellationToken::new())
        .await
        .expect("agent starts");
    assert!(
        !agent.steering,
        "no cgroup and no pins: runs without steering"
    );
    assert!(
        !agent.probes.is_ready(),
        "not ready before the pod list syncs"
    );

    pods_tx.send_replace(NodePods {
        revision: 1,
        synced: true,
        pods: vec![node_pod("a", servers[0].addr.port(), true)],
    });
    eventually("the first pod's server is scraped", LIMIT, || {
        latest(&agent)
            .endpoints
            .iter()
            .any(|e| e.addr == servers[0].addr && e.load.is_some())
    })
    .await;
    eventually("ready once synced and scraped", LIMIT, || {
        agent.probes.is_ready()
    })
    .await;

    pods_tx.send_replace(NodePods {
        revision: 2,
        synced: true,
        pods: vec![
            node_pod("a", servers[0].addr.port(), true),
            node_pod("b", servers[1].addr.port(), false),
        ],
    });
    eventually(
        "the second pod joins, drained while not ready",
        LIMIT,
        || {
            latest(&agent).endpoints.iter().any(|e| {
                e.addr == servers[1].addr
                    && e.pod.as_deref() == Some("default/b")
                    && e.drain
                        .as_ref()
                        .is_some_and(|d| d.kind == DrainKind::NotReady)
            })
        },
    )
    .await;
    pods_tx.send_replace(NodePods {
        revision: 3,
        synced: true,
        pods: vec![node_pod("b", servers[1].addr.port(), true)],
    });
    eventually("the first pod leaves", LIMIT, || {
        let view = latest(&agent);
        view.endpoints.len() == 1
            && view.endpoints[0].addr == servers[1].addr
            && view.endpoints[0].drain.is_none()
    })
    .await;

    // The HTTP port serves the probes, the metrics and the state.
    let http = agent.http.expect("serving");
    let metrics = http_get(http, "/metrics").await;
    for needle in [
        "switchyard_agent_passes_total",
        "switchyard_agent_steering 0",
        "switchyard_agent_scrape_latency_seconds_count",
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }
    assert!(http_get(http, "/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(http, "/healthz").await.starts_with("HTTP/1.1 200"));
    let state = http_get(http, "/debug/state").await;
    assert!(state.contains("\"node\": \"test-node\""), "{state}");
    agent.stop().await.expect("agent stops");
}

async fn http_get(server: SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {server}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}
