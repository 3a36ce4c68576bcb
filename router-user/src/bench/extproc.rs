//! `switchyard bench extproc`: what the endpoint picker adds to a request, on loopback.
//!
//! The picker runs in this process on its own tokio runtime (threads named `sy-epp-srv`, so its
//! CPU time can be told apart from the load generator's) behind a plaintext ext-proc port, with
//! static endpoints whose loads are refreshed every 50 ms as a scraper would. A client plays
//! Envoy, open-loop: request `i` starts at `start + i / rate` whatever happened to the others,
//! over a few HTTP/2 connections (Envoy multiplexes its side streams). Each request is one
//! stream: request headers, the body with end of stream, the headers answer (timed from the
//! body's end of stream: the picker's added latency), the body echo, response headers, a
//! response body with `usage`, their answers (the whole stream is timed too).
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingResponse, body_mutation, processing_response,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::clock::{Clock, SystemClock};
use crate::extproc::{EppServer, EppServerConfig, envoy};
use crate::serving::{EjectionPolicy, Serving, ServingArgs};
use crate::telemetry::EndpointLoad;

/// Thread-name prefix of the picker's runtime.
const SERVER_THREADS: &str = "sy-epp-srv";

#[derive(Debug, Args)]
pub struct ExtprocBenchArgs {
    /// Requests started per second (open loop).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Measured time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before (connections, caches and the prefix index warm up).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Endpoints in the pool.
    #[arg(long, default_value_t = 16)]
    pub endpoints: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Request body size (a chat request; prompts share 8 system prompts).
    #[arg(long, default_value_t = 4_096)]
    pub body_bytes: usize,
    /// Body chunk size (Envoy forwards ~64 KiB pieces).
    #[arg(long, default_value_t = 65_536)]
    pub chunk_bytes: usize,
    /// Scheduling profile.
    #[arg(long, default_value = "switchyard")]
    pub profile: String,
    /// Worker threads of the picker's runtime.
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Percentiles of one latency, microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub what: &'static str,
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    fn from(what: &'static str, histogram: &Histogram<u64>) -> Self {
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        Self {
            what,
            count: histogram.len(),
            p50_us: us(histogram.value_at_quantile(0.5)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            mean_us: histogram.mean() / 1_000.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ExtprocBenchReport {
    pub kernel: String,
    pub cpus: usize,
    pub profile: String,
    pub endpoints: usize,
    pub connections: usize,
    pub body_bytes: usize,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub measured_requests: u64,
    pub errors: u64,
    pub latencies: Vec<Latency>,
    /// CPU time of the picker's threads per 1,000 measured requests.
    pub server_cpu_ms_per_1000: f64,
    /// CPU time of the rest of the process (the Envoy-playing client) per 1,000 requests.
    pub client_cpu_ms_per_1000: f64,
    /// Picker CPU as a share of one core over the measured window.
    pub server_cores: f64,
    /// The picker's own work per request (parse, hashing left, pick, bookkeeping), mean µs,
    /// warm-up included: what is left once gRPC, HTTP/2 and the kernel are taken out.
    pub routing_mean_us: f64,
    /// Of which the pick, mean µs.
    pub pick_mean_us: f64,
}

struct Samples {
    eos_to_headers: Histogram<u64>,
    whole_stream: Histogram<u64>,
    errors: u64,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 60 s at 3 significant digits, in nanoseconds.
    Ok(Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?)
}

pub fn run(args: ExtprocBenchArgs) -> anyhow::Result<()> {
    if args.rate <= 0.0 || !args.rate.is_finite() {
        bail!("--rate must be a positive number of requests per second");
    }
    if args.endpoints == 0 || args.connections == 0 || args.server_threads == 0 {
        bail!("--endpoints, --connections and --server-threads must be at least 1");
    }
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .context("cannot start the picker's runtime")?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sy-bench-client")
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    let endpoints: Vec<SocketAddr> = (0..args.endpoints)
        .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8000)))
        .collect();
    let shutdown = CancellationToken::new();
    let (grpc, serving) =
        server_runtime.block_on(start_picker(&args, &endpoints, shutdown.clone()))?;
    let report = client_runtime.block_on(drive(&args, grpc, serving))?;
    shutdown.cancel();
    server_runtime.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn start_picker(
    args: &ExtprocBenchArgs,
    endpoints: &[SocketAddr],
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, Arc<Serving>)> {
    let serving_args = ServingArgs::fixed(endpoints, &args.profile, 1);
    let (covered_tx, covered_rx) = watch::channel(HashSet::new());
    let serving =
        Arc::new(Serving::start(&serving_args, EjectionPolicy::default(), covered_rx).await?);
    let config = EppServerConfig::loopback();
    let server = EppServer::bind(config, serving.clone(), covered_tx).await?;
    let grpc = server.grpc_addr();
    tokio::spawn(server.serve(shutdown.clone()));
    // Loads as a 50 ms scraper would deliver them: varied queues and KV use, always fresh.
    let table = serving.table().clone();
    let addrs = endpoints.to_vec();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            seq += 1;
            let now = SystemClock.now();
            for (i, addr) in addrs.iter().enumerate() {
                let mix = (i as u64).wrapping_mul(2_654_435_761).wrapping_add(seq) % 97;
                table.update_load(
                    addr,
                    EndpointLoad {
                        waiting: (mix % 5) as u32,
                        running: 8 + (mix % 24) as u32,
                        kv_cache_usage: 0.1 + (mix as f64) / 200.0,
                        prefix_cache_hit_rate: Some(0.5),
                        sampled_at: now,
                        seq,
                        ..EndpointLoad::default()
                    },
                );
            }
        }
    });
    Ok((grpc, serving))
}

/// Request bodies of about `body_bytes`: one of 8 system prompts (three quarters of the body,
/// so requests share prefixes as chat traffic does) and a distinct question.
fn bodies(body_bytes: usize) -> Vec<Vec<u8>> {
    let text = |seed: &str, len: usize| seed.chars().cycle().take(len).collect::<String>();
    let prompt_bytes = body_bytes.saturating_sub(160);
    (0..64)
        .map(|i| {
            let system = text(
                &format!("System prompt {} for a helpful assistant. ", i % 8),
                prompt_bytes * 3 / 4,
            );
            let question = format!(
                "Question {i}: {}",
                text("why is the sky blue? ", prompt_bytes / 4)
            );
            let body = serde_json::json!({
                "model": "bench-model",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 64,
                "stream": true,
            });
            serde_json::to_vec(&body).unwrap_or_default()
        })
        .collect()
}

const USAGE: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":64,\"prompt_tokens_details\":{\"cached_tokens\":500}}}\n\ndata: [DONE]\n\n";

async fn next_answer(
    answers: &mut tonic::Streaming<ProcessingResponse>,
) -> anyhow::Result<ProcessingResponse> {
    answers
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the picker ended the stream"))
}

/// One request through one stream; returns (eos → headers answer, whole stream) in ns.
async fn one_request(
    mut client: ExternalProcessorClient<Channel>,
    request_body: &[u8],
    chunk_bytes: usize,
) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(16);
    let mut answers = client.process(ReceiverStream::new(rx)).await?.into_inner();
    let send = |message| {
        let tx = tx.clone();
        async move {
            tx.send(message)
                .await
                .map_err(|_| anyhow::anyhow!("stream closed"))
        }
    };
    send(envoy::request_headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("content-type", "application/json"),
        ],
        false,
    ))
    .await?;
    let chunks: Vec<&[u8]> = request_body.chunks(chunk_bytes.max(1)).collect();
    let mut eos_sent = started;
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        if last {
            eos_sent = Instant::now();
        }
        send(envoy::request_body(chunk, last)).await?;
    }
    let first = next_answer(&mut answers).await?;
    let routed = eos_sent.elapsed();
    match first.response {
        Some(processing_response::Response::RequestHeaders(_)) => {}
        other => bail!("expected the headers answer, got {other:?}"),
    }
    loop {
        let answer = next_answer(&mut answers).await?;
        if let Some(processing_response::Response::RequestBody(reply)) = &answer.response
            && let Some(body_mutation::Mutation::StreamedResponse(chunk)) = reply
                .response
                .as_ref()
                .and_then(|common| common.body_mutation.as_ref())
                .and_then(|mutation| mutation.mutation.as_ref())
            && chunk.end_of_stream
        {
            break;
        }
    }
    send(envoy::response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    ))
    .await?;
    next_answer(&mut answers).await?;
    send(envoy::response_body(USAGE, true)).await?;
    next_answer(&mut answers).await?;
    drop(tx);
    let whole = started.elapsed();
    Ok((routed.as_nanos() as u64, whole.as_nanos() as u64))
}

async fn drive(
    args: &ExtprocBenchArgs,
    grpc: SocketAddr,
    serving: Arc<Serving>,
) -> anyhow::Result<ExtprocBenchReport> {
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = Channel::from_shared(format!("http://{grpc}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("cannot connect to the picker")?;
        clients.push(ExternalProcessorClient::new(channel));
    }
    let bodies = Arc::new(bodies(args.body_bytes));
    let samples = Arc::new(Mutex::new(Samples {
        eos_to_headers: histogram()?,
        whole_stream: histogram()?,
        errors: 0,
    }));
    let total = args.warmup + args.duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let count = (total.as_secs_f64() * args.rate) as u64;
    let warmup_count = (args.warmup.as_secs_f64() * args.rate) as u64;
    let progress = ProgressBar::new(count);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} [{bar:40}] {pos}/{len} requests")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = tokio::time::Instant::now();
    let mut cpu_at_measure_start = None;
    let mut measure_started = Instant::now();
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        if i == warmup_count {
            cpu_at_measure_start = Some(process_cpu()?);
            measure_started = Instant::now();
        }
        let client = clients[(i as usize) % clients.len()].clone();
        let bodies = bodies.clone();
        let samples = samples.clone();
        let chunk_bytes = args.chunk_bytes;
        let measured = i >= warmup_count;
        tasks.push(tokio::spawn(async move {
            let result =
                one_request(client, &bodies[(i as usize) % bodies.len()], chunk_bytes).await;
            if !measured {
                return;
            }
            let mut samples = samples.lock();
            match result {
                Ok((routed, whole)) => {
                    // Values beyond the bounds are clamped into them.
                    samples.eos_to_headers.saturating_record(routed);
                    samples.whole_stream.saturating_record(whole);
                }
                Err(_) => samples.errors += 1,
            }
        }));
        progress.inc(1);
    }
    for task in tasks {
        let _ = task.await;
    }
    let measured_for = measure_started.elapsed();
    let cpu_end = process_cpu()?;
    progress.finish_and_clear();
    let cpu_start = cpu_at_measure_start.unwrap_or_default();
    let samples = Arc::into_inner(samples)
        .context("request tasks still hold the samples")?
        .into_inner();
    let (eos, whole) = (samples.eos_to_headers, samples.whole_stream);
    let measured = eos.len() + samples.errors;
    let per_1000 = |cpu: Duration| cpu.as_secs_f64() * 1_000.0 / (measured.max(1) as f64) * 1_000.0;
    let server_cpu = cpu_end.server.saturating_sub(cpu_start.server);
    let client_cpu = cpu_end.other.saturating_sub(cpu_start.other);
    let (pick_mean, routing_mean) = serving.metrics().mean_pick_and_routing();
    drop(serving);
    Ok(ExtprocBenchReport {
        kernel: kernel_release(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        profile: args.profile.clone(),
        endpoints: args.endpoints,
        connections: args.connections,
        body_bytes: bodies.first().map_or(0, Vec::len),
        target_rate: args.rate,
        achieved_rate: measured as f64 / measured_for.as_secs_f64(),
        measured_requests: measured,
        errors: samples.errors,
        latencies: vec![
            Latency::from("body eos → headers answer", &eos),
            Latency::from("whole stream", &whole),
        ],
        server_cpu_ms_per_1000: per_1000(server_cpu),
        client_cpu_ms_per_1000: per_1000(client_cpu),
        server_cores: server_cpu.as_secs_f64() / measured_for.as_secs_f64(),
        routing_mean_us: routing_mean * 1e6,
        pick_mean_us: pick_mean * 1e6,
    })
}

#[derive(Clone, Copy, Debug, Default)]
struct ProcessCpu {
    server: Duration,
    other: Duration,
}

/// CPU time of this process's threads: the picker's and the rest.
fn process_cpu() -> anyhow::Result<ProcessCpu> {
    let (server, other) =
        super::cpu::threads_cpu(SERVER_THREADS).context("cannot read /proc/self/task")?;
    Ok(ProcessCpu { server, other })
}

pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn print_report(report: &ExtprocBenchReport) {
    println!(
        "ext-proc picker on loopback: {} CPUs, Linux {}, profile {}, {} endpoints, {} connections, {}-byte bodies",
        report.cpus,
        report.kernel,
        report.profile,
        report.endpoints,
        report.connections,
        report.body_bytes
    );
    println!(
        "{} measured requests at {:.0}/s (target {:.0}/s), {} errors",
        report.measured_requests, report.achieved_rate, report.target_rate, report.errors
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "latency",
        "count",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "mean µs",
    ]);
    for latency in &report.latencies {
        table.add_row([
            latency.what.to_owned(),
            latency.count.to_string(),
            format!("{:.0}", latency.p50_us),
            format!("{:.0}", latency.p99_us),
            format!("{:.0}", latency.p999_us),
            format!("{:.0}", latency.max_us),
            format!("{:.0}", latency.mean_us),
        ]);
    }
    println!("{table}");
    println!(
        "picker CPU: {:.1} ms per 1,000 requests ({:.2} cores); client CPU: {:.1} ms per 1,000",
        report.server_cpu_ms_per_1000, report.server_cores, report.client_cpu_ms_per_1000
    );
    println!(
        "picker's own work per request: {:.1} µs mean (pick {:.1} µs); the rest is gRPC, HTTP/2 and the kernel",
        report.routing_mean_us, report.pick_mean_us
    );
}
