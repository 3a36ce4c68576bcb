//! `switchyard demo`: the eBPF dataplane on this machine, end to end, in under a minute.
//!
//! As root: creates a temporary cgroup v2, attaches the programs (pins under a temporary bpffs
//! directory), starts three loopback "model server" backends, programs a weighted pool, and
//! dials the VIP from a child process inside the cgroup (`switchyard dataplane probe`). It
//! prints where connections went against the weights, the live connection counts while the
//! child holds connections open, changes the weights (one backend marked down) and shows the
//! effect on the next connects, then removes everything it created.
//!
//! Everything goes through the public dataplane API and CLI; nothing here is dataplane logic.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig,
    cgroup::TempCgroup,
    probe::{BannerServer, ProbeReport},
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Connects per phase.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connects: u32,
    /// Connections held open to show live counts.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub hold: u32,
    /// The pool's virtual address (needs no route: only the dataplane makes it reachable).
    #[arg(long, default_value = "10.96.0.10:8000")]
    pub vip: SocketAddr,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the dataplane demo needs root: it creates a cgroup v2, loads BPF programs and pins them under /sys/fs/bpf. \
             Run it as root (e.g. `sudo -E cargo xtask demo`); it also needs bpffs mounted (`mount -t bpf bpf /sys/fs/bpf`) \
             and a kernel with BTF (5.18 or later)"
        );
    }
    tokio::task::spawn_blocking(move || demo(&args))
        .await
        .context("demo thread panicked")?
}

/// What the demo created; removed on drop, whatever happened.
struct Scratch {
    cgroup: Option<TempCgroup>,
    pin_root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = Dataplane::detach_pinned(&self.pin_root) {
            eprintln!("demo cleanup: detach failed: {err}");
        }
        if let Some(cgroup) = self.cgroup.take()
            && let Err(err) = cgroup.remove()
        {
            eprintln!("demo cleanup: {err}");
        }
    }
}

fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let name = format!("switchyard-demo-{}", std::process::id());
    let scratch = Scratch {
        cgroup: Some(TempCgroup::create(&name)?),
        pin_root: PathBuf::from("/sys/fs/bpf").join(&name),
    };
    let cgroup = scratch
        .cgroup
        .as_ref()
        .map(|c| c.path().to_path_buf())
        .context("demo cgroup")?;

    let backends = [("model-a", 1), ("model-b", 2), ("model-c", 3)]
        .map(|(name, host)| BannerServer::start(name, SocketAddr::from(([127, 0, 0, host], 0))));
    let backends: Vec<BannerServer> = backends.into_iter().collect::<Result<_, _>>()?;

    let mut dataplane = Dataplane::load(&DataplaneConfig {
        cgroup: cgroup.clone(),
        pin_root: scratch.pin_root.clone(),
    })?;
    println!("== switchyard dataplane demo");
    println!("cgroup      {}", cgroup.display());
    println!("pins        {}", dataplane.pin_dir().display());
    println!("programs    {}", dataplane.attached_links().join(", "));
    println!("backends    {}", describe_backends(&backends));
    println!(
        "VIP         {} (no route: only the dataplane makes it reachable)\n",
        args.vip
    );

    let phase_one = [(5, false), (3, false), (1, false)];
    program(&mut dataplane, args.vip, &backends, &phase_one)?;
    distribution(&scratch.pin_root, &cgroup, args, &backends, &phase_one)?;
    live_counts(&dataplane, &scratch.pin_root, &cgroup, args, &backends)?;

    println!(
        "== new weights: model-a 1, model-b 1, model-c marked down (takes effect on the next connect)"
    );
    let phase_two = [(1, false), (1, false), (1, true)];
    program(&mut dataplane, args.vip, &backends, &phase_two)?;
    distribution(&scratch.pin_root, &cgroup, args, &backends, &phase_two)?;

    let stats = dataplane.stats()?;
    println!(
        "BPF counters: {} connects translated, {} refused, {} getpeername rewritten, {} opened / {} closed",
        stats.connects_translated,
        stats.connects_refused,
        stats.peers_rewritten,
        stats.conns_opened,
        stats.conns_closed
    );
    drop(dataplane);
    drop(backends);
    drop(scratch);
    println!("cleaned up: programs detached, pins and cgroup removed");
    Ok(())
}

fn describe_backends(backends: &[BannerServer]) -> String {
    backends
        .iter()
        .map(|b| format!("{} {}", b.name(), b.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn program(
    dataplane: &mut Dataplane,
    vip: SocketAddr,
    backends: &[BannerServer],
    weights: &[(u32, bool)],
) -> anyhow::Result<()> {
    let specs: Vec<BackendSpec> = backends
        .iter()
        .zip(weights)
        .map(|(b, &(weight, down))| BackendSpec {
            addr: b.addr(),
            weight,
            down,
        })
        .collect();
    let status = dataplane.set_pool(vip, &specs)?;
    println!(
        "pool {} programmed: generation {}, table {}",
        status.vip,
        status.generation,
        if status.table_swapped {
            "swapped atomically"
        } else {
            "unchanged"
        }
    );
    Ok(())
}

/// Dials the VIP from a child in the cgroup and compares where connections went with the
/// weights.
fn distribution(
    pin_root: &Path,
    cgroup: &Path,
    args: &DemoArgs,
    backends: &[BannerServer],
    weights: &[(u32, bool)],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let output = probe_command(pin_root, cgroup, args.vip, args.connects)
        .arg("--banner")
        .output()
        .context("run the probe")?;
    if !output.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report = parse_report(&String::from_utf8_lossy(&output.stdout))?;
    let eligible: u32 = weights
        .iter()
        .filter(|(_, down)| !down)
        .map(|(w, _)| w)
        .sum();
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["backend", "weight", "expected", "connections", "observed"]);
    for (backend, &(weight, down)) in backends.iter().zip(weights) {
        let got = report.banners.get(backend.name()).copied().unwrap_or(0);
        let expected = if down || eligible == 0 {
            0.0
        } else {
            f64::from(weight) / f64::from(eligible)
        };
        table.add_row([
            format!("{} {}", backend.name(), backend.addr()),
            if down {
                format!("{weight} (down)")
            } else {
                weight.to_string()
            },
            format!("{:.1}%", expected * 100.0),
            got.to_string(),
            format!(
                "{:.1}%",
                f64::from(got) * 100.0 / f64::from(report.attempts.max(1))
            ),
        ]);
    }
    println!(
        "{} connects to {} from a process in the cgroup ({:.1?}); getpeername showed {}:",
        report.attempts,
        args.vip,
        started.elapsed(),
        summarize(&report.peers)
    );
    println!("{table}");
    if !report.errors.is_empty() {
        println!("errors: {}", summarize(&report.errors));
    }
    println!();
    Ok(())
}

/// Holds connections open from a child and shows the live counts the BPF side keeps.
fn live_counts(
    dataplane: &Dataplane,
    pin_root: &Path,
    cgroup: &Path,
    args: &DemoArgs,
    backends: &[BannerServer],
) -> anyhow::Result<()> {
    let mut child = probe_command(pin_root, cgroup, args.vip, args.hold)
        .arg("--hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the holding probe")?;
    let stdout = child.stdout.take().context("probe stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("read the probe's holding line")?;
    println!(
        "== a child holds {} connections open; live counts read from the CONNS map:",
        args.hold
    );
    print_counts(dataplane, backends)?;
    drop(child.stdin.take()); // end of stdin: the child closes its connections
    let status = child.wait().context("wait for the probe")?;
    if !status.success() {
        bail!("the holding probe failed ({status})");
    }
    // Closing is synchronous with the child's exit, but give a slow machine a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && total_live(dataplane, backends)? > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("after the child closed them:");
    print_counts(dataplane, backends)?;
    println!();
    Ok(())
}

fn total_live(dataplane: &Dataplane, backends: &[BannerServer]) -> anyhow::Result<u64> {
    let counts = dataplane.connection_counts()?;
    Ok(backends
        .iter()
        .filter_map(|b| counts.get(&b.addr()))
        .map(|c| c.live())
        .sum())
}

fn print_counts(dataplane: &Dataplane, backends: &[BannerServer]) -> anyhow::Result<()> {
    let counts = dataplane.connection_counts()?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["backend", "live", "opened", "closed"]);
    for backend in backends {
        let count = counts.get(&backend.addr()).copied().unwrap_or_default();
        table.add_row([
            format!("{} {}", backend.name(), backend.addr()),
            count.live().to_string(),
            count.opened.to_string(),
            count.closed.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// `switchyard dataplane probe` in the cgroup, JSON output.
fn probe_command(pin_root: &Path, cgroup: &Path, vip: SocketAddr, count: u32) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("switchyard"));
    let mut command = Command::new(exe);
    command
        .args(["--log", "warn", "dataplane", "--pin-root"])
        .arg(pin_root)
        .args([
            "probe",
            "--json",
            "--vip",
            &vip.to_string(),
            "--count",
            &count.to_string(),
        ])
        .arg("--cgroup")
        .arg(cgroup);
    command
}

fn parse_report(stdout: &str) -> anyhow::Result<ProbeReport> {
    let line = stdout.lines().last().context("the probe printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("unexpected probe output: {line}"))
}

fn summarize(tally: &BTreeMap<String, u32>) -> String {
    tally
        .iter()
        .map(|(key, count)| format!("{key} x{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}
