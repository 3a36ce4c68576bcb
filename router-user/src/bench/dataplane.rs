//! `switchyard bench dataplane`: what connect-time steering adds to a TCP connect.
//!
//! Three arms in one run, each iteration timed on its own (socket + blocking connect to a
//! loopback listener + close with SO_LINGER 0, so no TIME_WAIT piles up):
//! - `baseline`: the process outside the steered cgroup (no program in its path; the kernel's
//!   per-hook static key is on, as it is whenever any cgroup has a program);
//! - `direct`: inside the cgroup, dialling the backend itself (programs run, find no pool);
//! - `vip`: inside the cgroup, dialling the pool's VIP (looked up, rewritten, recorded, counted).
//!
//! `direct` and `vip` alternate every iteration (ABBA); the process moves between the cgroup and
//! its own cgroup once per round for `baseline` (a socket's cgroup is fixed when it is created,
//! and a move takes the whole process). A last pass with the kernel's BPF run-time statistics on
//! measures the programs' own time per run (stats cost time, so they are off for the timed arms).
//! Nothing is measured per packet: the programs run at connect, getpeername and on TCP state
//! changes only.
use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, probe::BannerServer, scratch::SteeringScratch,
};

#[derive(Debug, Args)]
pub struct DataplaneBenchArgs {
    /// Timed connects per arm.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(100..=10_000_000))]
    pub iterations: u32,
    /// Untimed connects per arm before measuring.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u32,
    /// Rounds the timed connects are split into (one cgroup move per round and direction).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rounds: u32,
    /// Connects in the pass with kernel BPF run-time statistics on (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub stats_iterations: u32,
    /// Virtual address to steer (needs no route; it is never dialled without the programs).
    #[arg(long, default_value = "10.96.250.1:80")]
    pub vip: SocketAddr,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Latency of one arm, in nanoseconds per connect.
#[derive(Debug, Serialize)]
pub struct ArmStats {
    pub arm: &'static str,
    pub connects: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub mean_ns: f64,
}

/// A program's own run time from the kernel's BPF statistics.
#[derive(Debug, Serialize)]
pub struct ProgramCost {
    /// `vip` (steered connect + getpeername) or `direct` (connect to a non-VIP address).
    pub pass: &'static str,
    pub program: &'static str,
    pub runs: u64,
    pub mean_ns: f64,
    /// Runs per steered connect in the statistics pass.
    pub runs_per_connect: f64,
}

#[derive(Debug, Serialize)]
pub struct DataplaneBenchReport {
    pub kernel: String,
    pub cpus: usize,
    pub iterations: u32,
    pub warmup: u32,
    pub rounds: u32,
    pub arms: Vec<ArmStats>,
    /// vip - baseline.
    pub added_p50_ns: i64,
    pub added_p99_ns: i64,
    pub added_mean_ns: f64,
    /// vip - direct: the cost of the translation itself beyond the hooks' fixed cost.
    pub added_vs_direct_p50_ns: i64,
    /// vip mean / baseline mean.
    pub ratio_mean: f64,
    pub programs: Vec<ProgramCost>,
}

pub async fn run(args: DataplaneBenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the dataplane benchmark needs root: it creates a cgroup, attaches BPF programs and moves itself between cgroups"
        );
    }
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || measure(&args))
        .await
        .context("benchmark thread panicked")??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn measure(args: &DataplaneBenchArgs) -> anyhow::Result<DataplaneBenchReport> {
    let name = format!("switchyard-bench-{}", std::process::id());
    let scratch = SteeringScratch::create(&name)?;
    let server = BannerServer::start("", SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut dataplane = Dataplane::load(&DataplaneConfig {
        cgroup: scratch.cgroup().to_path_buf(),
        pin_root: scratch.pin_root().to_path_buf(),
    })?;
    dataplane.set_pool(args.vip, &[BackendSpec::new(server.addr(), 1)])?;

    // Check the VIP arm really is steered before timing it.
    scratch.enter()?;
    let socket = open_connected(args.vip).context("connect to the VIP from the cgroup")?;
    if dataplane.socket_steering(&socket)?.is_none() {
        bail!("a connect to {} from the cgroup was not steered", args.vip);
    }
    drop(socket);

    let mut baseline = histogram()?;
    let mut direct = histogram()?;
    let mut vip = histogram()?;
    let progress = ProgressBar::new(u64::from(args.iterations) * 3 + u64::from(args.warmup) * 3);
    progress.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} connects")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message("warm-up");
    for _ in 0..args.warmup {
        timed_connect(server.addr())?;
        timed_connect(args.vip)?;
        progress.inc(2);
    }
    scratch.leave()?;
    for _ in 0..args.warmup {
        timed_connect(server.addr())?;
        progress.inc(1);
    }

    progress.set_message("measuring");
    let per_round = args.iterations.div_ceil(args.rounds);
    let mut done = 0;
    while done < args.iterations {
        let n = per_round.min(args.iterations - done);
        scratch.enter()?;
        for i in 0..n {
            // ABBA: neither arm always runs first.
            if i % 2 == 0 {
                record(&mut direct, timed_connect(server.addr())?);
                record(&mut vip, timed_connect(args.vip)?);
            } else {
                record(&mut vip, timed_connect(args.vip)?);
                record(&mut direct, timed_connect(server.addr())?);
            }
            progress.inc(2);
        }
        scratch.leave()?;
        for _ in 0..n {
            record(&mut baseline, timed_connect(server.addr())?);
            progress.inc(1);
        }
        done += n;
    }
    progress.finish_and_clear();

    let programs = if args.stats_iterations > 0 {
        scratch.enter()?;
        let costs = program_costs(&dataplane, "direct", server.addr(), args.stats_iterations)
            .and_then(|mut direct| {
                direct.extend(program_costs(
                    &dataplane,
                    "vip",
                    args.vip,
                    args.stats_iterations,
                )?);
                Ok(direct)
            });
        scratch.leave()?;
        costs?
    } else {
        Vec::new()
    };
    drop(dataplane);
    drop(server);
    drop(scratch);

    let arms = vec![
        arm("baseline", &baseline),
        arm("direct", &direct),
        arm("vip", &vip),
    ];
    let p50 = |h: &Histogram<u64>| h.value_at_quantile(0.5) as i64;
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as i64;
    Ok(DataplaneBenchReport {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        iterations: args.iterations,
        warmup: args.warmup,
        rounds: args.rounds,
        added_p50_ns: p50(&vip) - p50(&baseline),
        added_p99_ns: p99(&vip) - p99(&baseline),
        added_mean_ns: vip.mean() - baseline.mean(),
        added_vs_direct_p50_ns: p50(&vip) - p50(&direct),
        ratio_mean: vip.mean() / baseline.mean(),
        arms,
        programs,
    })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 ns .. 10 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 10_000_000_000, 3)?)
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(ns.max(1));
}

fn arm(name: &'static str, histogram: &Histogram<u64>) -> ArmStats {
    ArmStats {
        arm: name,
        connects: histogram.len(),
        p50_ns: histogram.value_at_quantile(0.5),
        p90_ns: histogram.value_at_quantile(0.9),
        p99_ns: histogram.value_at_quantile(0.99),
        mean_ns: histogram.mean(),
    }
}

fn open_connected(target: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.connect(&SockAddr::from(target))?;
    Ok(socket)
}

/// One socket + connect + close (reset), timed.
fn timed_connect(target: SocketAddr) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let socket = open_connected(target).with_context(|| format!("connect to {target}"))?;
    drop(socket);
    Ok(start.elapsed())
}

/// Runs `iterations` connects to `target` (plus one getpeername each) with the kernel's BPF
/// run-time statistics on, and reads each program's run count and time.
fn program_costs(
    dataplane: &Dataplane,
    pass: &'static str,
    target: SocketAddr,
    iterations: u32,
) -> anyhow::Result<Vec<ProgramCost>> {
    let programs = dataplane.attached_programs()?;
    let snapshot = || -> anyhow::Result<Vec<(u64, Duration)>> {
        let loaded: Vec<_> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .collect();
        programs
            .iter()
            .map(|(name, id)| {
                loaded
                    .iter()
                    .find(|info| info.id() == *id)
                    .map(|info| (info.run_count(), info.run_time()))
                    .with_context(|| format!("program {name} (id {id}) is not loaded"))
            })
            .collect()
    };
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enable kernel BPF run-time statistics")?;
    let before = snapshot()?;
    for _ in 0..iterations {
        let socket = open_connected(target)?;
        socket.peer_addr()?;
    }
    let after = snapshot()?;
    drop(stats_fd);
    Ok(programs
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), ((runs0, time0), (runs1, time1)))| {
            let runs = runs1.saturating_sub(*runs0);
            let time = time1.saturating_sub(*time0);
            ProgramCost {
                pass,
                program: name,
                runs,
                mean_ns: if runs == 0 {
                    0.0
                } else {
                    time.as_nanos() as f64 / runs as f64
                },
                runs_per_connect: runs as f64 / f64::from(iterations),
            }
        })
        .collect())
}

fn print_report(report: &DataplaneBenchReport) {
    println!(
        "connect + close over loopback, {} timed connects per arm ({} warm-up, {} rounds), Linux {}, {} CPUs",
        report.iterations, report.warmup, report.rounds, report.kernel, report.cpus
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["arm", "connects", "p50 ns", "p90 ns", "p99 ns", "mean ns"]);
    for arm in &report.arms {
        table.add_row([
            arm.arm.to_owned(),
            arm.connects.to_string(),
            arm.p50_ns.to_string(),
            arm.p90_ns.to_string(),
            arm.p99_ns.to_string(),
            format!("{:.0}", arm.mean_ns),
        ]);
    }
    println!("{table}");
    println!(
        "added per connect (vip - baseline): p50 {} ns, p99 {} ns, mean {:.0} ns; vip - direct p50 {} ns; vip/baseline mean ratio {:.3}",
        report.added_p50_ns,
        report.added_p99_ns,
        report.added_mean_ns,
        report.added_vs_direct_p50_ns,
        report.ratio_mean
    );
    if !report.programs.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(["pass", "program", "runs", "runs/connect", "mean ns/run"]);
        for program in report.programs.iter().filter(|p| p.runs > 0) {
            table.add_row([
                program.pass.to_owned(),
                program.program.to_owned(),
                program.runs.to_string(),
                format!("{:.2}", program.runs_per_connect),
                format!("{:.0}", program.mean_ns),
            ]);
        }
        println!(
            "BPF programs' own run time (kernel bpf stats; connect + getpeername per iteration):\n{table}"
        );
    }
}
