//! `switchyard bench live`: routers side by side on real processes over loopback.
//!
//! M simulated vLLM servers (`switchyard sim` child processes, time-scaled, with a small KV
//! cache so the prefix groups do not all fit on every server) serve one shared-prefix chat
//! workload, sent open-loop by [`loadgen`] at each rate through each router in turn:
//!
//! - `direct`: the client round-robins over the servers itself (the added-latency baseline);
//! - `proxy` / `proxy-rr`: `switchyard proxy` (child process) with the switchyard / round-robin
//!   profile;
//! - `epp`: `switchyard epp` (child process, plaintext) behind [`hop`], a minimal Envoy stand-in
//!   in this process on its own runtime (threads `sy-live-hop`);
//! - `dataplane` (root): the eBPF dataplane attached to a temporary cgroup, one pool VIP over
//!   the servers with equal weights programmed by the bench (no agent); the bench moves itself
//!   into that cgroup while the load generator runs, with one connection per request (the
//!   dataplane balances connections); its cost is in the client's `connect()`, so no router CPU
//!   is reported;
//! - `sglang-cache-aware` / `sglang-rr`: sglang-router 0.3.2, installed by the bench into a
//!   virtualenv under `--cache-dir` (reported as not available when that fails).
//!
//! Every router starts fresh for each run and the servers' prefix caches are reset before it,
//! so each run starts cold and sees the same requests at the same times. Router CPU is read from
//! `/proc/<pid>/stat` of its process (plus the hop's threads for `epp`), apart from the servers'
//! and the load generator's. Figures: per-request records summarised per router and rate
//! ([`RunSummary`]), printed as a table, optionally written as JSON.
pub mod hop;
pub mod loadgen;
pub mod procs;
mod sglang;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use comfy_table::Table;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::loadgen::{LoadSpec, RequestRecord, SharedPrefixText, Target};
use self::procs::{ChildProcess, SimCounters, free_port, http_request, sim_counters};
use crate::bench::cpu::threads_cpu;
use crate::dataplane::scratch::SteeringScratch;
use crate::dataplane::{BackendSpec, Dataplane, DataplaneConfig};

/// Thread-name prefix of the EPP hop's runtime (its CPU is charged to the `epp` router).
const HOP_THREADS: &str = "sy-live-hop";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// The routers the bench can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterKind {
    /// No router: the client round-robins over the servers.
    Direct,
    /// `switchyard proxy`, switchyard profile.
    Proxy,
    /// `switchyard proxy`, round-robin profile.
    ProxyRr,
    /// `switchyard epp` behind the bench's minimal ext-proc gateway.
    Epp,
    /// The eBPF dataplane (root): a pool VIP with equal weights, clients in its cgroup.
    Dataplane,
    /// sglang-router 0.3.2, `--policy cache_aware`.
    SglangCacheAware,
    /// sglang-router 0.3.2, `--policy round_robin`.
    SglangRr,
}

impl RouterKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Proxy => "proxy",
            Self::ProxyRr => "proxy-rr",
            Self::Epp => "epp",
            Self::Dataplane => "dataplane",
            Self::SglangCacheAware => "sglang-cache-aware",
            Self::SglangRr => "sglang-rr",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct LiveBenchArgs {
    /// Routers to compare, in order (direct first: the others are compared with it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,proxy,proxy-rr,epp,dataplane,sglang-cache-aware,sglang-rr"
    )]
    pub routers: Vec<RouterKind>,
    /// Request rates (requests/s, Poisson): light, moderate, and one past what round-robin
    /// routing sustains (throughput at saturation).
    #[arg(long, value_delimiter = ',', default_value = "30,150,800")]
    pub rates: Vec<f64>,
    /// Most requests of one run.
    #[arg(long, default_value_t = 600)]
    pub requests: usize,
    /// Longest time requests are started for in one run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Simulated servers.
    #[arg(long, default_value_t = 4)]
    pub servers: usize,
    /// Virtual time runs this many times faster than the wall clock on the servers.
    #[arg(long, default_value_t = 4.0)]
    pub speed: f64,
    /// KV cache of each server, tokens (small, so that prefix groups compete for it).
    #[arg(long, default_value_t = 24_000)]
    pub kv_tokens: u32,
    /// Prefix groups (system prompts).
    #[arg(long, default_value_t = 16)]
    pub groups: u32,
    /// Words (≈ tokens) of each system prompt.
    #[arg(long, default_value_t = 1_500)]
    pub system_words: u32,
    /// Words of each question.
    #[arg(long, default_value_t = 40)]
    pub question_words: u32,
    /// Output tokens of each request.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: u32,
    /// Seed of the workload and the arrivals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the sglang-router virtualenv, profiles and logs live.
    #[arg(long, default_value = "target/bench-live")]
    pub cache_dir: PathBuf,
    /// Pool VIP of the `dataplane` router (never dialled without the programs).
    #[arg(long, default_value = "10.96.252.1:8000")]
    pub vip: SocketAddr,
    /// Never install sglang-router (use it only if the virtualenv already has it).
    #[arg(long)]
    pub no_install: bool,
    /// Write the summaries (one record per router and rate) as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// The figures of one router at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub router: String,
    pub rate: f64,
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Completed requests per second, first start → last end.
    pub throughput_rps: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p90_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    /// TTFT percentiles minus `direct`'s at the same rate, and as a ratio.
    pub added_ttft_p50_ms: Option<f64>,
    pub added_ttft_p99_ms: Option<f64>,
    pub ttft_p50_ratio: Option<f64>,
    pub ttft_p99_ratio: Option<f64>,
    /// Prompt tokens the servers' prefix caches served / prompt tokens looked up, from their
    /// metrics over the run.
    pub prefix_hit_rate: Option<f64>,
    /// Requests each server finished during the run (its metrics).
    pub per_server_requests: Vec<u64>,
    /// Router CPU (its process; plus the hop's threads for `epp`) per 1,000 completed
    /// requests; `None` for `direct`.
    pub router_cpu_ms_per_1000: Option<f64>,
    /// Of which the hop (epp only).
    pub hop_cpu_ms_per_1000: Option<f64>,
    /// Largest start lag of the load generator, ms (large: the client could not keep up).
    pub max_start_lag_ms: f64,
}

/// A router that could not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub router: String,
    pub reason: String,
}

/// One run: its summary and every request's record.
#[derive(Clone, Debug)]
pub struct LiveRun {
    pub summary: RunSummary,
    pub records: Vec<RequestRecord>,
}

#[derive(Clone, Debug)]
pub struct LiveReport {
    pub runs: Vec<LiveRun>,
    pub skipped: Vec<Skipped>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    kernel: String,
    cpus: usize,
    servers: usize,
    speed: f64,
    workload: &'a SharedPrefixText,
    runs: Vec<&'a RunSummary>,
    skipped: &'a [Skipped],
}

/// `switchyard bench live`.
pub async fn run(args: LiveBenchArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("cannot locate this binary")?;
    let report = run_bench(&args, &binary).await?;
    print_report(&args, &report);
    if let Some(path) = &args.json {
        let json = JsonReport {
            kernel: crate::bench::extproc::kernel_release(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            servers: args.servers,
            speed: args.speed,
            workload: &workload(&args),
            runs: report.runs.iter().map(|run| &run.summary).collect(),
            skipped: &report.skipped,
        };
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn workload(args: &LiveBenchArgs) -> SharedPrefixText {
    SharedPrefixText {
        model: MODEL.to_owned(),
        groups: args.groups,
        system_words: args.system_words,
        question_words: args.question_words,
        max_tokens: args.max_tokens,
    }
}

fn validate(args: &LiveBenchArgs) -> anyhow::Result<()> {
    if args.routers.is_empty() || args.rates.is_empty() {
        bail!("--routers and --rates need at least one value each");
    }
    if let Some(rate) = args.rates.iter().find(|r| !r.is_finite() || **r <= 0.0) {
        bail!("--rates must be positive numbers of requests per second, got {rate}");
    }
    if args.servers == 0 || args.requests == 0 || args.groups == 0 {
        bail!("--servers, --requests and --groups must be at least 1");
    }
    if !args.speed.is_finite() || args.speed <= 0.0 {
        bail!("--speed must be > 0");
    }
    Ok(())
}

/// Runs every router at every rate against one set of servers started by `binary`
/// (`switchyard`), which also runs the Switchyard routers.
pub async fn run_bench(args: &LiveBenchArgs, binary: &Path) -> anyhow::Result<LiveReport> {
    validate(args)?;
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("cannot create {}", args.cache_dir.display()))?;
    let cache_dir = std::path::absolute(&args.cache_dir)?;
    let mut skipped = Vec::new();
    let sglang_wanted = args
        .routers
        .iter()
        .any(|r| matches!(r, RouterKind::SglangCacheAware | RouterKind::SglangRr));
    let sglang_python = if sglang_wanted {
        match sglang::ensure(&cache_dir, !args.no_install).await {
            Ok(python) => Some(python),
            Err(reason) => {
                for router in [RouterKind::SglangCacheAware, RouterKind::SglangRr] {
                    if args.routers.contains(&router) {
                        skipped.push(Skipped {
                            router: router.name().to_owned(),
                            reason: format!("not available: {reason}"),
                        });
                    }
                }
                None
            }
        }
    } else {
        None
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && args.routers.contains(&RouterKind::Dataplane) {
        skipped.push(Skipped {
            router: RouterKind::Dataplane.name().to_owned(),
            reason: "skipped: needs root (creates a cgroup and attaches BPF programs)".to_owned(),
        });
    }
    let (sims, servers) = start_sims(args, binary, &cache_dir).await?;
    let requests = workload(args).requests(args.requests, args.seed);
    let routers: Vec<RouterKind> = args
        .routers
        .iter()
        .copied()
        .filter(|router| match router {
            RouterKind::SglangCacheAware | RouterKind::SglangRr => sglang_python.is_some(),
            RouterKind::Dataplane => root,
            _ => true,
        })
        .collect();
    let per_run = args
        .rates
        .iter()
        .map(|rate| loadgen::arrival_offsets(&spec(args, *rate)).len() as u64)
        .sum::<u64>();
    let progress = ProgressBar::new(per_run * routers.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} [{bar:40}] {pos}/{len} requests {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut runs = Vec::new();
    for &rate in &args.rates {
        for &router in &routers {
            progress.set_message(format!("{} at {rate}/s", router.name()));
            let context = RunContext {
                args,
                binary,
                cache_dir: &cache_dir,
                servers: &servers,
                sglang_python: sglang_python.as_deref(),
            };
            match run_one(&context, router, rate, &requests, &progress).await {
                Ok(run) => runs.push(run),
                Err(err) => {
                    tracing::warn!(router = router.name(), rate, "run failed: {err:#}");
                    skipped.push(Skipped {
                        router: format!("{} at {rate}/s", router.name()),
                        reason: format!("{err:#}"),
                    });
                }
            }
        }
    }
    progress.finish_and_clear();
    drop(sims);
    compare_with_direct(&mut runs);
    Ok(LiveReport { runs, skipped })
}

fn spec(args: &LiveBenchArgs, rate: f64) -> LoadSpec {
    LoadSpec {
        rate,
        max_requests: args.requests,
        max_duration: args.duration,
        seed: args.seed,
        fresh_connections: false,
        request_timeout: Duration::from_secs(60),
    }
}

async fn start_sims(
    args: &LiveBenchArgs,
    binary: &Path,
    cache_dir: &Path,
) -> anyhow::Result<(Vec<ChildProcess>, Vec<SocketAddr>)> {
    let profile = cache_dir.join("sim-profile.yaml");
    std::fs::write(
        &profile,
        format!("name: bench-live\nkv_capacity_tokens: {}\n", args.kv_tokens),
    )
    .with_context(|| format!("cannot write {}", profile.display()))?;
    let mut sims = Vec::with_capacity(args.servers);
    let mut servers = Vec::with_capacity(args.servers);
    for i in 0..args.servers {
        let addr = free_port()?;
        let mut command = Command::new(binary);
        command
            .args(["--log", "warn", "sim", "--listen", &addr.to_string()])
            .args(["--speed", &args.speed.to_string()])
            .args([
                "--seed",
                &(i + 1).to_string(),
                "--gpu-index",
                &i.to_string(),
            ])
            .arg("--profile")
            .arg(&profile);
        let log = cache_dir.join(format!("sim-{i}.log"));
        sims.push(ChildProcess::spawn(
            &format!("sim {addr}"),
            command,
            Some(&log),
        )?);
        servers.push(addr);
    }
    for (sim, addr) in sims.iter_mut().zip(&servers) {
        sim.wait_http_ok(*addr, "/health", Duration::from_secs(20))
            .await?;
    }
    Ok((sims, servers))
}

struct RunContext<'a> {
    args: &'a LiveBenchArgs,
    binary: &'a Path,
    cache_dir: &'a Path,
    servers: &'a [SocketAddr],
    sglang_python: Option<&'a Path>,
}

/// A router running for one run.
struct RouterUnderTest {
    target: Target,
    processes: Vec<ChildProcess>,
    hop: Option<HopRuntime>,
    steering: Option<Steering>,
}

impl RouterUnderTest {
    fn cpu(&self) -> anyhow::Result<(Duration, Duration)> {
        let mut total = Duration::ZERO;
        for process in &self.processes {
            total += process.cpu()?;
        }
        let hop = match &self.hop {
            Some(_) => threads_cpu(HOP_THREADS)?.0,
            None => Duration::ZERO,
        };
        Ok((total + hop, hop))
    }
}

/// The hop's own runtime (its threads carry [`HOP_THREADS`]).
struct HopRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
}

impl Drop for HopRuntime {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn start_router(
    context: &RunContext<'_>,
    router: RouterKind,
) -> anyhow::Result<RouterUnderTest> {
    let endpoints = context
        .servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let log = context.cache_dir.join(format!("{}.log", router.name()));
    match router {
        RouterKind::Direct => Ok(RouterUnderTest {
            target: Target::RoundRobin(context.servers.to_vec()),
            processes: Vec::new(),
            hop: None,
            steering: None,
        }),
        RouterKind::Proxy | RouterKind::ProxyRr => {
            let profile = if router == RouterKind::Proxy {
                "switchyard"
            } else {
                "round-robin"
            };
            let listen = free_port()?;
            let mut command = Command::new(context.binary);
            command
                .args(["--log", "warn", "proxy", "--listen", &listen.to_string()])
                .args(["--endpoints", &endpoints, "--profile", profile])
                .args(["--seed", &context.args.seed.to_string()]);
            let mut process = ChildProcess::spawn(router.name(), command, Some(&log))?;
            process
                .wait_http_ok(listen, "/health", Duration::from_secs(20))
                .await?;
            // The first scrapes (50 ms apart) fill the endpoints' loads.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(RouterUnderTest {
                target: Target::Base(listen),
                processes: vec![process],
                hop: None,
                steering: None,
            })
        }
        RouterKind::Epp => {
            let (grpc, health, metrics) = (free_port()?, free_port()?, free_port()?);
            let mut command = Command::new(context.binary);
            command
                .args(["--log", "warn", "epp", "--endpoints", &endpoints])
                .args(["--profile", "switchyard", "--secure-serving=false"])
                .args(["--seed", &context.args.seed.to_string()])
                .args(["--listen-host", "127.0.0.1"])
                .args(["--grpc-port", &grpc.port().to_string()])
                .args(["--grpc-health-port", &health.port().to_string()])
                .args(["--metrics-port", &metrics.port().to_string()]);
            let mut process = ChildProcess::spawn(router.name(), command, Some(&log))?;
            process
                .wait_http_ok(metrics, "/metrics", Duration::from_secs(20))
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let shutdown = CancellationToken::new();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(HOP_THREADS)
                .enable_all()
                .build()
                .context("cannot start the hop's runtime")?;
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let listen = listener.local_addr()?;
            let stop = shutdown.clone();
            runtime.spawn(async move {
                let serving = async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    hop::serve(listener, grpc, stop).await
                };
                if let Err(err) = serving.await {
                    tracing::error!("the ext-proc hop failed: {err:#}");
                }
            });
            Ok(RouterUnderTest {
                target: Target::Base(listen),
                processes: vec![process],
                hop: Some(HopRuntime {
                    runtime: Some(runtime),
                    shutdown,
                }),
                steering: None,
            })
        }
        RouterKind::Dataplane => {
            let steering = Steering::start(context.args.vip, context.servers)?;
            Ok(RouterUnderTest {
                target: Target::Base(context.args.vip),
                processes: Vec::new(),
                hop: None,
                steering: Some(steering),
            })
        }
        RouterKind::SglangCacheAware | RouterKind::SglangRr => {
            let python = context
                .sglang_python
                .context("sglang-router is not installed")?;
            let policy = if router == RouterKind::SglangCacheAware {
                "cache_aware"
            } else {
                "round_robin"
            };
            let (listen, prometheus) = (free_port()?, free_port()?);
            let process =
                sglang::launch(python, context.servers, policy, listen, prometheus, &log).await?;
            Ok(RouterUnderTest {
                target: Target::Base(listen),
                processes: vec![process],
                hop: None,
                steering: None,
            })
        }
    }
}

/// The dataplane steering this process's connects to the VIP while the load generator runs.
struct Steering {
    // Dropped first: the programs detach before the cgroup goes.
    _dataplane: Dataplane,
    scratch: SteeringScratch,
}

impl Steering {
    fn start(vip: SocketAddr, servers: &[SocketAddr]) -> anyhow::Result<Self> {
        let scratch =
            SteeringScratch::create(&format!("switchyard-bench-live-{}", std::process::id()))?;
        let mut dataplane = Dataplane::load(&DataplaneConfig {
            cgroup: scratch.cgroup().to_path_buf(),
            pin_root: scratch.pin_root().to_path_buf(),
        })?;
        let backends: Vec<BackendSpec> = servers
            .iter()
            .map(|addr| BackendSpec::new(*addr, 1))
            .collect();
        dataplane.set_pool(vip, &backends)?;
        Ok(Self {
            _dataplane: dataplane,
            scratch,
        })
    }

    /// Moves this process into the steered cgroup (sockets opened from now on are steered).
    fn enter(&self) -> anyhow::Result<()> {
        Ok(self.scratch.enter()?)
    }

    fn leave(&self) -> anyhow::Result<()> {
        Ok(self.scratch.leave()?)
    }
}

async fn all_counters(servers: &[SocketAddr]) -> anyhow::Result<Vec<SimCounters>> {
    let mut counters = Vec::with_capacity(servers.len());
    for addr in servers {
        counters.push(sim_counters(*addr).await?);
    }
    Ok(counters)
}

async fn run_one(
    context: &RunContext<'_>,
    router: RouterKind,
    rate: f64,
    requests: &[loadgen::ChatRequest],
    progress: &ProgressBar,
) -> anyhow::Result<LiveRun> {
    // Every run starts with cold caches.
    for addr in context.servers {
        let (status, body) = http_request(*addr, "POST", "/reset_prefix_cache").await?;
        if status != 200 {
            bail!("{addr} refused to reset its prefix cache ({status}): {body}");
        }
    }
    let router_under_test = start_router(context, router).await?;
    let counters_before = all_counters(context.servers).await?;
    let (cpu_before, hop_before) = router_under_test.cpu()?;
    let mut spec = spec(context.args, rate);
    spec.fresh_connections = router_under_test.steering.is_some();
    let started = Instant::now();
    if let Some(steering) = &router_under_test.steering {
        steering.enter()?;
    }
    let records = loadgen::run(&router_under_test.target, requests, &spec, Some(progress)).await;
    if let Some(steering) = &router_under_test.steering {
        steering.leave()?;
    }
    let records = records?;
    let wall = started.elapsed();
    let (cpu_after, hop_after) = router_under_test.cpu()?;
    // Servers count a request when its stream ends; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counters_after = all_counters(context.servers).await?;
    drop(router_under_test);
    let deltas: Vec<SimCounters> = counters_after
        .iter()
        .zip(&counters_before)
        .map(|(after, before)| after.since(before))
        .collect();
    let measured_cpu = !matches!(router, RouterKind::Direct | RouterKind::Dataplane);
    let cpu = measured_cpu.then(|| cpu_after.saturating_sub(cpu_before));
    let hop_cpu = (router == RouterKind::Epp).then(|| hop_after.saturating_sub(hop_before));
    let summary = summarize(router, rate, &records, &deltas, cpu, hop_cpu, wall);
    Ok(LiveRun { summary, records })
}

/// The `quantile` of `values` in milliseconds (hdrhistogram, 3 significant digits); `None`
/// when empty.
pub fn percentile_ms(values: &[Duration], quantile: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok()?;
    for value in values {
        histogram.saturating_record(value.as_micros() as u64);
    }
    Some(histogram.value_at_quantile(quantile) as f64 / 1_000.0)
}

fn summarize(
    router: RouterKind,
    rate: f64,
    records: &[RequestRecord],
    servers: &[SimCounters],
    cpu: Option<Duration>,
    hop_cpu: Option<Duration>,
    wall: Duration,
) -> RunSummary {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let ttfts: Vec<Duration> = ok.iter().filter_map(|r| r.ttft).collect();
    let e2es: Vec<Duration> = ok.iter().map(|r| r.e2e).collect();
    let span = records
        .iter()
        .map(|r| r.scheduled_at + r.start_lag + r.e2e)
        .max()
        .unwrap_or(wall);
    let queries: f64 = servers.iter().map(|s| s.prefix_queries).sum();
    let hits: f64 = servers.iter().map(|s| s.prefix_hits).sum();
    let per_1000 = |cpu: Duration| cpu.as_secs_f64() * 1e3 / ok.len().max(1) as f64 * 1e3;
    RunSummary {
        router: router.name().to_owned(),
        rate,
        sent: records.len(),
        ok: ok.len(),
        errors: records.len() - ok.len(),
        first_error: records.iter().find_map(|r| r.error.clone()),
        throughput_rps: ok.len() as f64 / span.as_secs_f64().max(1e-9),
        ttft_p50_ms: percentile_ms(&ttfts, 0.5),
        ttft_p90_ms: percentile_ms(&ttfts, 0.9),
        ttft_p99_ms: percentile_ms(&ttfts, 0.99),
        e2e_p50_ms: percentile_ms(&e2es, 0.5),
        e2e_p99_ms: percentile_ms(&e2es, 0.99),
        added_ttft_p50_ms: None,
        added_ttft_p99_ms: None,
        ttft_p50_ratio: None,
        ttft_p99_ratio: None,
        prefix_hit_rate: (queries > 0.0).then(|| hits / queries),
        per_server_requests: servers.iter().map(|s| s.requests.max(0.0) as u64).collect(),
        router_cpu_ms_per_1000: cpu.map(per_1000),
        hop_cpu_ms_per_1000: hop_cpu.map(per_1000),
        max_start_lag_ms: records
            .iter()
            .map(|r| r.start_lag.as_secs_f64() * 1e3)
            .fold(0.0, f64::max),
    }
}

/// Fills the added-latency fields from `direct`'s run at the same rate.
fn compare_with_direct(runs: &mut [LiveRun]) {
    let baselines: Vec<(f64, Option<f64>, Option<f64>)> = runs
        .iter()
        .filter(|run| run.summary.router == RouterKind::Direct.name())
        .map(|run| {
            (
                run.summary.rate,
                run.summary.ttft_p50_ms,
                run.summary.ttft_p99_ms,
            )
        })
        .collect();
    for run in runs.iter_mut() {
        let Some((_, p50, p99)) = baselines
            .iter()
            .find(|(rate, ..)| *rate == run.summary.rate)
        else {
            continue;
        };
        let summary = &mut run.summary;
        let diff = |value: Option<f64>, base: Option<f64>| Some(value? - base?);
        let ratio = |value: Option<f64>, base: Option<f64>| {
            let base = base?;
            (base > 0.0).then_some(value? / base)
        };
        summary.added_ttft_p50_ms = diff(summary.ttft_p50_ms, *p50);
        summary.added_ttft_p99_ms = diff(summary.ttft_p99_ms, *p99);
        summary.ttft_p50_ratio = ratio(summary.ttft_p50_ms, *p50);
        summary.ttft_p99_ratio = ratio(summary.ttft_p99_ms, *p99);
    }
}

fn print_report(args: &LiveBenchArgs, report: &LiveReport) {
    println!(
        "live loopback: {} servers (speed ×{}, KV {} tokens), {} groups × {} words + {}-word questions, {} output tokens",
        args.servers,
        args.speed,
        args.kv_tokens,
        args.groups,
        args.system_words,
        args.question_words,
        args.max_tokens
    );
    println!("{}", markdown_table(report));
    for skipped in &report.skipped {
        println!("{}: {}", skipped.router, skipped.reason);
    }
}

/// The summaries as a markdown table (what `docs/benchmarks.md` quotes).
pub fn markdown_table(report: &LiveReport) -> String {
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "router",
        "rate/s",
        "ok/sent",
        "done/s",
        "TTFT p50 ms",
        "p90",
        "p99",
        "added p50 ms (×)",
        "added p99 ms (×)",
        "e2e p50 ms",
        "prefix hit",
        "router CPU ms/1k req",
    ]);
    let ms = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
    let added = |diff: Option<f64>, ratio: Option<f64>| match (diff, ratio) {
        (Some(diff), Some(ratio)) => format!("{diff:+.2} ({ratio:.2}×)"),
        _ => "–".to_owned(),
    };
    for run in &report.runs {
        let s = &run.summary;
        let cpu = match (s.router_cpu_ms_per_1000, s.hop_cpu_ms_per_1000) {
            (Some(cpu), Some(hop)) => format!("{cpu:.0} (hop {hop:.0})"),
            (Some(cpu), None) => format!("{cpu:.0}"),
            _ => "–".to_owned(),
        };
        table.add_row([
            s.router.clone(),
            format!("{}", s.rate),
            format!("{}/{}", s.ok, s.sent),
            format!("{:.1}", s.throughput_rps),
            ms(s.ttft_p50_ms),
            ms(s.ttft_p90_ms),
            ms(s.ttft_p99_ms),
            added(s.added_ttft_p50_ms, s.ttft_p50_ratio),
            added(s.added_ttft_p99_ms, s.ttft_p99_ratio),
            ms(s.e2e_p50_ms),
            s.prefix_hit_rate
                .map_or_else(|| "–".to_owned(), |h| format!("{:.0} %", h * 100.0)),
            cpu,
        ]);
    }
    table.to_string()
}
