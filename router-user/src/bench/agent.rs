//! `switchyard bench agent`: what the node agent costs and how fast it reacts.
//!
//! - **CPU**: the agent runs as its own process (this binary, `switchyard agent`) against N
//!   simulated vLLM servers in this process, scraping every `--interval`, programming one pool
//!   of all N (with the dataplane when run as root) and reporting to an in-process EPP service
//!   (20 reports a second). Its CPU time is read from `/proc/<pid>/stat` over `--duration`
//!   after a warm-up (steady state), and from `getrusage(RUSAGE_CHILDREN)` over its whole life
//!   (start-up and BPF load included).
//! - **Change-to-map latency** (root): a pool of simulated servers that run one sequence at a
//!   time; the bench queues requests on one of them (a load change the server reports at once)
//!   and polls the kernel's map until that backend's weight drops below half of the others',
//!   then drops the requests and polls until the weight is back. Each direction is timed from
//!   the moment the change is made at the server.
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::cpu::process_cpu;
use crate::cluster::reports::{NodeReportsService, PoolDirectory, ReportsOptions};
use crate::cluster::{EndpointMeta, EndpointTable};
use crate::dataplane::{BackendState, Dataplane, scratch::SteeringScratch};
use crate::sim::{Profile, RunningServer, ServerConfig, SimServer};

const VIP: &str = "10.96.251.1:8000";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[derive(Debug, Args)]
pub struct AgentBenchArgs {
    /// Endpoint counts of the CPU runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub endpoints: Vec<usize>,
    /// Length of each CPU measurement, after the warm-up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time the agent runs before its CPU is measured.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The agent's scrape interval.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Load changes timed, each up and back down (0: skip the latency phase).
    #[arg(long, default_value_t = 100)]
    pub changes: u32,
    /// Servers in the latency run's pool.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub latency_endpoints: u64,
    /// Do not report to an EPP during the CPU runs.
    #[arg(long)]
    pub no_epp: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// CPU of one run.
#[derive(Debug, Serialize)]
pub struct CpuFigure {
    pub endpoints: usize,
    pub steering: bool,
    pub reporting: bool,
    pub measured_s: f64,
    /// Steady state: CPU seconds per second, in % of one core.
    pub cpu_pct: f64,
    pub cpu_pct_per_endpoint: f64,
    /// Whole life (start-up included), from getrusage.
    pub lifetime_cpu_s: f64,
    pub lifetime_s: f64,
}

/// Change-to-map latency of one direction.
#[derive(Debug, Serialize)]
pub struct LatencyFigure {
    pub direction: &'static str,
    pub changes: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct AgentBenchReport {
    pub interval_ms: f64,
    pub cpu: Vec<CpuFigure>,
    pub latency: Vec<LatencyFigure>,
    /// Why steering (and the latency phase) was off, if it was.
    pub without_steering: Option<String>,
}

/// The agent process under test; killed if the bench stops early.
struct AgentProcess {
    child: Option<Child>,
    http: SocketAddr,
}

impl AgentProcess {
    fn spawn(
        endpoints: &[SocketAddr],
        interval: Duration,
        epp: Option<SocketAddr>,
        steering: Option<&SteeringScratch>,
    ) -> anyhow::Result<Self> {
        let http = free_port()?;
        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let mut command = Command::new(std::env::current_exe().context("locating this binary")?);
        command
            .args(["--log", "warn", "agent", "--node-name", "bench"])
            .args(["--endpoints", &list.join(",")])
            .args(["--telemetry", "off", "--metrics-address", "127.0.0.1"])
            .args(["--metrics-port", &http.port().to_string()])
            .args([
                "--scrape-interval",
                &humantime::format_duration(interval).to_string(),
            ])
            .args([
                "--scrape-timeout",
                &humantime::format_duration(interval.mul_f64(0.8)).to_string(),
            ])
            .args(["--pool", &format!("{VIP}={}", list.join(","))])
            .stdout(Stdio::null());
        if let Some(epp) = epp {
            command.args(["--epp", &epp.to_string()]);
        }
        match steering {
            Some(fixture) => {
                command.arg("--cgroup").arg(fixture.cgroup());
                command.arg("--pin-root").arg(fixture.pin_root());
            }
            None => {
                command.args(["--pin-root", "/nonexistent/switchyard-bench"]);
            }
        }
        let child = command.spawn().context("starting `switchyard agent`")?;
        Ok(Self {
            child: Some(child),
            http,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_get(self.http, "/readyz")
                .await
                .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not become ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits; returns the child's CPU over its life (getrusage).
    fn stop(mut self) -> anyhow::Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("the agent already stopped");
        };
        let before = children_cpu();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().context("waiting for the agent")?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        Ok(children_cpu().saturating_sub(before))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

/// CPU time of waited-for children (user + system).
fn children_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

async fn http_get(server: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(server).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {server}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

async fn start_sims(count: usize, one_at_a_time: bool) -> anyhow::Result<Vec<RunningServer>> {
    let mut servers = Vec::with_capacity(count);
    for seed in 0..count as u64 {
        let mut config = ServerConfig {
            seed: seed + 1,
            ..ServerConfig::default()
        };
        if one_at_a_time {
            config.profile = Profile {
                max_num_seqs: 1,
                ..Profile::default()
            };
        }
        servers.push(SimServer::bind(config, "127.0.0.1:0").await?.spawn()?);
    }
    Ok(servers)
}

/// An EPP report service on loopback for the agent to report to.
async fn start_epp(
    endpoints: &[SocketAddr],
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let table = Arc::new(EndpointTable::new());
    table.set_members(endpoints.iter().map(|a| EndpointMeta::new(*a)));
    let vip: SocketAddr = VIP.parse()?;
    let service = NodeReportsService::new(
        table,
        PoolDirectory::single("bench", Some(vip)),
        ReportsOptions::default(),
    )?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder().add_service(service.server());
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(err) = server.serve_with_incoming(incoming).await {
            tracing::warn!(error = %err, "bench EPP ended");
        }
    });
    Ok((addr, task))
}

async fn cpu_run(
    endpoints: usize,
    args: &AgentBenchArgs,
    steering: bool,
    progress: &ProgressBar,
) -> anyhow::Result<CpuFigure> {
    let servers = start_sims(endpoints, false).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let fixture = if steering {
        Some(SteeringScratch::create(&format!(
            "sy-bench-agent-{}-{endpoints}",
            std::process::id()
        ))?)
    } else {
        None
    };
    let epp = if args.no_epp {
        None
    } else {
        Some(start_epp(&addrs).await?)
    };
    let started = Instant::now();
    let agent = AgentProcess::spawn(
        &addrs,
        args.interval,
        epp.as_ref().map(|e| e.0),
        fixture.as_ref(),
    )?;
    agent.wait_ready().await?;
    progress.set_message(format!("{endpoints} endpoints: warm-up"));
    tokio::time::sleep(args.warmup).await;
    progress.set_message(format!("{endpoints} endpoints: measuring CPU"));
    let cpu0 = process_cpu(agent.pid())?;
    let t0 = Instant::now();
    tokio::time::sleep(args.duration).await;
    let cpu1 = process_cpu(agent.pid())?;
    let measured = t0.elapsed();
    let lifetime_cpu = agent.stop()?;
    let lifetime = started.elapsed();
    if let Some((_, task)) = epp {
        task.abort();
    }
    progress.inc(1);
    let cpu_pct = 100.0 * (cpu1 - cpu0).as_secs_f64() / measured.as_secs_f64();
    Ok(CpuFigure {
        endpoints,
        steering,
        reporting: !args.no_epp,
        measured_s: measured.as_secs_f64(),
        cpu_pct,
        cpu_pct_per_endpoint: cpu_pct / endpoints as f64,
        lifetime_cpu_s: lifetime_cpu.as_secs_f64(),
        lifetime_s: lifetime.as_secs_f64(),
    })
}

/// Long requests held open on `server`: with one sequence at a time, all but one wait.
async fn queue_on(server: SocketAddr, requests: usize) -> anyhow::Result<Vec<TcpStream>> {
    let body =
        format!(r#"{{"model":"{MODEL}","prompt":"hello","max_tokens":20000,"ignore_eos":true}}"#);
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut streams = Vec::with_capacity(requests);
    for _ in 0..requests {
        let mut stream = TcpStream::connect(server).await?;
        stream.write_all(request.as_bytes()).await?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Polls the pinned map until `done(weight of target, largest other weight)` holds; returns
/// when it did (None after the timeout).
fn poll_map(
    dataplane: &Dataplane,
    vip: SocketAddr,
    target: SocketAddr,
    done: impl Fn(u32, u32) -> bool,
    timeout: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(pools) = dataplane.pools()
            && let Some(pool) = pools.into_iter().find(|p| p.vip == vip)
        {
            let live = pool
                .backends
                .iter()
                .filter(|b| b.state == BackendState::Active);
            let mut mine = None;
            let mut others = 0;
            for backend in live {
                if backend.addr == target {
                    mine = Some(backend.weight);
                } else {
                    others = others.max(backend.weight);
                }
            }
            if let Some(mine) = mine
                && done(mine, others)
            {
                return Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_micros(250));
    }
    None
}

/// [`poll_map`] off the runtime's thread.
async fn map_follows(
    dataplane: &Arc<Dataplane>,
    vip: SocketAddr,
    target: SocketAddr,
    done: fn(u32, u32) -> bool,
    timeout: Duration,
) -> anyhow::Result<Option<Instant>> {
    let dataplane = dataplane.clone();
    Ok(
        tokio::task::spawn_blocking(move || poll_map(&dataplane, vip, target, done, timeout))
            .await?,
    )
}

async fn latency_run(
    args: &AgentBenchArgs,
    fixture: &SteeringScratch,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<LatencyFigure>> {
    let servers = start_sims(args.latency_endpoints as usize, true).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let agent = AgentProcess::spawn(&addrs, args.interval, None, Some(fixture))?;
    agent.wait_ready().await?;
    let vip: SocketAddr = VIP.parse()?;
    let dataplane = Arc::new(Dataplane::open_pinned(fixture.pin_root())?);
    let timeout = Duration::from_secs(5);
    let mut up = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut down = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    progress.set_message("change-to-map latency");
    for change in 0..args.changes {
        let target = addrs[change as usize % addrs.len()];
        // Start from a settled pool, at a random phase of the scrape cycle.
        let settled = map_follows(
            &dataplane,
            vip,
            target,
            |mine, others| others > 0 && mine * 100 >= others * 95,
            timeout,
        )
        .await?;
        if settled.is_none() {
            bail!("the pool did not settle before change {change}");
        }
        let phase = args.interval.mul_f64(f64::from(change % 17) / 17.0);
        tokio::time::sleep(phase).await;

        let held = queue_on(target, 5).await?;
        let changed_at = Instant::now();
        let seen = map_follows(
            &dataplane,
            vip,
            target,
            |mine, others| mine * 2 < others,
            timeout,
        )
        .await?;
        let seen = seen.with_context(|| {
            format!("change {change}: the map did not follow within {timeout:?}")
        })?;
        up.record(seen.duration_since(changed_at).as_micros() as u64)?;

        drop(held);
        let released_at = Instant::now();
        let back = map_follows(
            &dataplane,
            vip,
            target,
            |mine, others| mine * 100 >= others * 95,
            timeout,
        )
        .await?;
        let back = back.with_context(|| {
            format!("change {change}: the weight did not come back within {timeout:?}")
        })?;
        down.record(back.duration_since(released_at).as_micros() as u64)?;
        progress.inc(1);
    }
    agent.stop()?;
    let figure = |direction, histogram: &Histogram<u64>| LatencyFigure {
        direction,
        changes: histogram.len(),
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p90_ms: histogram.value_at_quantile(0.9) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: histogram.max() as f64 / 1000.0,
    };
    Ok(vec![
        figure("load up → weight down", &up),
        figure("load gone → weight back", &down),
    ])
}

pub async fn run(args: AgentBenchArgs) -> anyhow::Result<()> {
    if args.endpoints.iter().any(|n| *n == 0 || *n > 256) {
        bail!("--endpoints: each count must be from 1 to 256");
    }
    // SAFETY: geteuid has no preconditions.
    let steering = if unsafe { libc::geteuid() } == 0 {
        SteeringScratch::create(&format!("sy-bench-agent-{}", std::process::id()))
            .map_err(|err| err.to_string())
    } else {
        Err("not root".to_owned())
    };
    let without_steering = steering.as_ref().err().cloned();
    if let Some(reason) = &without_steering {
        eprintln!("running without steering ({reason}): CPU without map writes, no latency phase");
    }
    let latency_steps = if steering.is_ok() {
        u64::from(args.changes)
    } else {
        0
    };
    let progress = ProgressBar::new(args.endpoints.len() as u64 + latency_steps);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut cpu = Vec::new();
    for &endpoints in &args.endpoints {
        cpu.push(cpu_run(endpoints, &args, steering.is_ok(), &progress).await?);
    }
    let latency = match &steering {
        Ok(fixture) if args.changes > 0 => latency_run(&args, fixture, &progress).await?,
        _ => Vec::new(),
    };
    progress.finish_and_clear();
    let report = AgentBenchReport {
        interval_ms: args.interval.as_secs_f64() * 1000.0,
        cpu,
        latency,
        without_steering,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(report: &AgentBenchReport) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "endpoints",
        "steering",
        "reporting",
        "CPU (% of a core)",
        "per endpoint",
        "lifetime CPU",
    ]);
    for figure in &report.cpu {
        table.add_row([
            figure.endpoints.to_string(),
            figure.steering.to_string(),
            figure.reporting.to_string(),
            format!("{:.2} %", figure.cpu_pct),
            format!("{:.3} %", figure.cpu_pct_per_endpoint),
            format!(
                "{:.2} s in {:.1} s",
                figure.lifetime_cpu_s, figure.lifetime_s
            ),
        ]);
    }
    println!(
        "agent CPU at a {} ms scrape interval (steady state):\n{table}",
        report.interval_ms
    );
    if !report.latency.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(["change", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"]);
        for figure in &report.latency {
            table.add_row([
                figure.direction.to_owned(),
                figure.changes.to_string(),
                format!("{:.1}", figure.p50_ms),
                format!("{:.1}", figure.p90_ms),
                format!("{:.1}", figure.p99_ms),
                format!("{:.1}", figure.max_ms),
            ]);
        }
        println!("change at the server → kernel map:\n{table}");
    }
}
