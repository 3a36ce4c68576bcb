//! `switchyard dataplane ...`: attach, program pools, show, probe, detach.
use std::{
    io::{self, BufRead as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use super::{
    BackendSpec, BackendState, Dataplane, DataplaneConfig, DataplaneStats, PoolStatus, PoolView,
    cgroup,
    probe::{self, ProbeConfig, ProbeReport},
};

#[derive(Debug, Args)]
pub struct DataplaneArgs {
    /// bpffs directory holding the pinned maps and links (layout in `<pin-root>/v1/`).
    #[arg(long, global = true, env = "SWITCHYARD_PIN_ROOT", default_value = super::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    #[command(subcommand)]
    pub command: DataplaneCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Load the programs and attach them to a cgroup v2 (or adopt an existing attachment).
    Attach {
        /// cgroup v2 directory whose sockets are steered (absolute, or relative to the cgroup v2
        /// mount).
        #[arg(long)]
        cgroup: PathBuf,
    },
    /// Create or replace a pool: a virtual address steered to weighted backends.
    SetPool(SetPoolArgs),
    /// Remove a pool: connects to its virtual address are no longer steered.
    RemovePool {
        #[arg(long)]
        vip: SocketAddr,
    },
    /// Show pools, their live tables and connection counts.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Dial a virtual address a bounded number of times and report where connections went.
    Probe(ProbeArgs),
    /// Detach the programs and remove every pin.
    Detach,
}

#[derive(Debug, Args)]
pub struct SetPoolArgs {
    /// Virtual address, e.g. 10.96.0.10:8000 or [fd00:5::10]:8000.
    #[arg(long)]
    pub vip: SocketAddr,
    /// Backend as `ip:port=weight` (weight 0..65535, default 1); repeat for each backend.
    #[arg(long = "backend", value_name = "ADDR[=WEIGHT]", required = true)]
    pub backends: Vec<BackendSpec>,
    /// Mark a listed backend down (never chosen); repeatable.
    #[arg(long = "down", value_name = "ADDR")]
    pub down: Vec<SocketAddr>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Address to dial (an IPv4-mapped IPv6 address dials from an AF_INET6 socket).
    #[arg(long)]
    pub vip: SocketAddr,
    /// Number of connects (sequential).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Join this cgroup v2 first (so the connects are steered); the whole probe process moves.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Read the first line each server sends and tally by it.
    #[arg(long)]
    pub banner: bool,
    /// Keep every connection open, print a `holding` JSON line, and close them all when stdin
    /// reaches end of file.
    #[arg(long)]
    pub hold: bool,
    /// Connect timeout per attempt, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DataplaneArgs) -> anyhow::Result<()> {
    let pin_root = args.pin_root;
    // Map operations are short blocking syscalls; keep them off the async workers.
    tokio::task::spawn_blocking(move || run_blocking(pin_root, args.command))
        .await
        .context("dataplane command panicked")?
}

fn run_blocking(pin_root: PathBuf, command: DataplaneCommand) -> anyhow::Result<()> {
    match command {
        DataplaneCommand::Attach { cgroup } => {
            let dataplane = Dataplane::load(&DataplaneConfig { cgroup, pin_root })?;
            emit(&format!(
                "{} (pins in {}, links: {})",
                match dataplane.origin() {
                    super::Origin::Attached => "attached",
                    super::Origin::Adopted => "already attached: adopted the pins",
                    super::Origin::Replaced => "replaced the attached programs with this build's",
                },
                dataplane.pin_dir().display(),
                dataplane.attached_links().join(", ")
            ))
        }
        DataplaneCommand::SetPool(args) => set_pool(&pin_root, args),
        DataplaneCommand::RemovePool { vip } => {
            let mut dataplane = Dataplane::open_pinned(&pin_root)?;
            dataplane.remove_pool(vip)?;
            emit(&format!("removed pool {vip}"))
        }
        DataplaneCommand::Show { json } => show(&pin_root, json),
        DataplaneCommand::Probe(args) => run_probe(&pin_root, &args),
        DataplaneCommand::Detach => {
            let removed = Dataplane::detach_pinned(&pin_root)?;
            if removed == 0 {
                emit(&format!(
                    "nothing was attached under {}",
                    pin_root.display()
                ))
            } else {
                emit(&format!(
                    "detached ({removed} pins removed from {})",
                    pin_root.display()
                ))
            }
        }
    }
}

fn set_pool(pin_root: &PathBuf, args: SetPoolArgs) -> anyhow::Result<()> {
    let mut backends = args.backends;
    for down in &args.down {
        let down = super::addr::canonical(*down);
        let Some(backend) = backends
            .iter_mut()
            .find(|b| super::addr::canonical(b.addr) == down)
        else {
            bail!("--down {down}: not one of the --backend addresses");
        };
        backend.down = true;
    }
    let mut dataplane = Dataplane::open_pinned(pin_root)?;
    let status = dataplane.set_pool(args.vip, &backends)?;
    if args.json {
        emit(&serde_json::to_string_pretty(&status)?)
    } else {
        emit(&format_status(&status))
    }
}

fn format_status(status: &PoolStatus) -> String {
    let mut out = String::new();
    let verb = if !status.changed {
        "unchanged"
    } else if status.table_swapped {
        "table swapped"
    } else {
        "updated"
    };
    out += &format!(
        "pool {} (id {}, generation {}): {verb}\n",
        status.vip, status.pool_id, status.generation
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["backend", "id", "weight", "state", "slots", "share"]);
    let total: usize = status.backends.iter().map(|b| b.slots).sum();
    for backend in &status.backends {
        table.add_row([
            backend.addr.to_string(),
            backend.id.to_string(),
            backend.weight.to_string(),
            if backend.down { "down" } else { "up" }.to_owned(),
            backend.slots.to_string(),
            percent(backend.slots, total),
        ]);
    }
    out += &format!("{table}");
    if total == 0 {
        out += &format!(
            "\nno eligible backend: connects to {} are refused (ECONNREFUSED)",
            status.vip
        );
    }
    out
}

/// `show --json` output.
#[derive(Serialize)]
struct ShowReport {
    pin_dir: PathBuf,
    cgroup_id: u64,
    links: Vec<&'static str>,
    stats: DataplaneStats,
    pools: Vec<ShowPool>,
}

#[derive(Serialize)]
struct ShowPool {
    #[serde(flatten)]
    pool: PoolView,
    /// Slots per backend address in the live kernel table.
    table: std::collections::BTreeMap<SocketAddr, usize>,
}

fn show(pin_root: &PathBuf, json: bool) -> anyhow::Result<()> {
    let dataplane = Dataplane::open_pinned(pin_root)?;
    let mut pools = Vec::new();
    for pool in dataplane.pools()? {
        let table = dataplane.table_shares(pool.vip)?;
        pools.push(ShowPool { pool, table });
    }
    let report = ShowReport {
        pin_dir: dataplane.pin_dir().to_path_buf(),
        cgroup_id: dataplane.cgroup_id()?,
        links: dataplane.attached_links(),
        stats: dataplane.stats()?,
        pools,
    };
    if json {
        return emit(&serde_json::to_string_pretty(&report)?);
    }
    let mut out = format!(
        "dataplane {} (cgroup id {}), links: {}\n",
        report.pin_dir.display(),
        report.cgroup_id,
        if report.links.is_empty() {
            "none (not steering!)".to_owned()
        } else {
            report.links.join(", ")
        }
    );
    let s = &report.stats;
    out += &format!(
        "connects translated {}, refused {}, table misses {}; getpeername rewritten {}; \
         connections opened {}, closed {}; storage failures {}\n",
        s.connects_translated,
        s.connects_refused,
        s.table_misses,
        s.peers_rewritten,
        s.conns_opened,
        s.conns_closed,
        s.storage_failures
    );
    if report.pools.is_empty() {
        out += "no pools\n";
    }
    for ShowPool {
        pool,
        table: shares,
    } in &report.pools
    {
        out += &format!(
            "\npool {} (id {}, generation {}){}\n",
            pool.vip,
            pool.pool_id,
            pool.generation,
            if pool.active_slots == 0 {
                ": no eligible backend, connects refused"
            } else {
                ""
            }
        );
        let total: usize = shares.values().sum();
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header([
            "backend",
            "id",
            "state",
            "weight",
            "table share",
            "live",
            "opened",
            "closed",
        ]);
        for backend in &pool.backends {
            let slots = shares.get(&backend.addr).copied().unwrap_or(0);
            table.add_row([
                backend.addr.to_string(),
                backend.id.to_string(),
                match backend.state {
                    BackendState::Active => "up",
                    BackendState::Down => "down",
                    BackendState::Retired => "retired (draining)",
                }
                .to_owned(),
                backend.weight.to_string(),
                percent(slots, total),
                backend.conns.live.to_string(),
                backend.conns.opened.to_string(),
                backend.conns.closed.to_string(),
            ]);
        }
        out += &format!("{table}\n");
    }
    emit(out.trim_end())
}

fn run_probe(pin_root: &PathBuf, args: &ProbeArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.cgroup {
        // Before any socket exists: sockets belong to the cgroup they were created in.
        let path = cgroup::resolve(path)?;
        cgroup::join(&path, 0)?;
    }
    // The socket storage says where each connection was steered; optional (probing works
    // without a readable pin root, e.g. against a plain address).
    let dataplane = match Dataplane::open_pinned(pin_root) {
        Ok(dataplane) => Some(dataplane),
        Err(err) => {
            tracing::debug!(error = %err, "probing without the dataplane's socket storage");
            None
        }
    };
    let config = ProbeConfig {
        target: args.vip,
        count: args.count,
        connect_timeout: Duration::from_millis(args.timeout_ms),
        read_banner: args.banner,
    };
    let report = if args.hold {
        probe::run_held(&config, dataplane.as_ref(), |held| {
            let line = serde_json::json!({ "event": "holding", "report": held });
            let mut out = io::stdout().lock();
            // The caller waits for this line; a closed stdout just ends the hold early.
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            drop(out);
            let mut sink = String::new();
            let mut stdin = io::stdin().lock();
            while stdin.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        })
    } else {
        probe::run(&config, dataplane.as_ref())
    };
    if args.json {
        emit(&serde_json::to_string(&report)?)
    } else {
        emit(&format_probe(&report))
    }
}

fn format_probe(report: &ProbeReport) -> String {
    let mut out = format!(
        "{} connects to {}: {} connected",
        report.attempts, report.target, report.connected
    );
    let sections = [
        ("getpeername", &report.peers),
        ("server banner", &report.banners),
        ("steered to", &report.steered_to),
        ("error", &report.errors),
    ];
    for (label, tally) in sections {
        if tally.is_empty() {
            continue;
        }
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header([label, "connections", "share"]);
        for (key, count) in tally {
            table.add_row([
                key.clone(),
                count.to_string(),
                percent(*count as usize, report.attempts as usize),
            ]);
        }
        out += &format!("\n{table}");
    }
    out
}

/// Writes a line of command output; a closed stdout (`| head`) ends quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

fn percent(part: usize, total: usize) -> String {
    if total == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", part as f64 * 100.0 / total as f64)
}
