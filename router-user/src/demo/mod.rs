//! `switchyard demo` (`cargo xtask demo`): the whole system on loopback, with simulated model
//! servers, in a few minutes, and it exits by itself.
//!
//! 1. Four simulated vLLM servers of one model ([`fleet`]): shared system prompts, one
//!    LoRA-heavy server, one slow GPU.
//! 2. The control plane ([`stack`]): the endpoint picker in this process and a real
//!    `switchyard agent` child that scrapes the servers, reads their GPUs and streams node
//!    reports to the EPP, which answers with cluster weights.
//! 3. As root, the eBPF dataplane ([`steered`]): the agent programs the pool's VIP in a
//!    temporary cgroup; this process joins it and sends the workload to the VIP.
//! 4. The same workload ([`workload`]) through the proxy with each scheduling policy, each on a
//!    fresh fleet ([`runs`]), and the tables of where requests went and the latency they got
//!    ([`report`]).
mod fleet;
mod report;
mod runs;
mod stack;
mod steered;
mod workload;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

use crate::bench::live::loadgen::LoadSpec;
use crate::dataplane::scratch::SteeringScratch;
use fleet::Fleet;
use report::{RunSummary, latency_table, routing_table, summarize};
use runs::RunResult;
use stack::{AgentProcess, Epp};
use workload::MixShape;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests per run.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: u32,
    /// Mean arrival rate, requests per second (Poisson, open loop).
    #[arg(long, default_value_t = 30.0)]
    pub rate: f64,
    /// Simulated time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Scheduling profiles compared through the proxy (built-ins: random, round-robin,
    /// least-request, gie-default, sglang-cache-aware, switchyard).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,least-request,gie-default,switchyard"
    )]
    pub policies: Vec<String>,
    /// Skip the eBPF dataplane step even as root.
    #[arg(long)]
    pub no_dataplane: bool,
    /// The pool's virtual address (the dataplane makes it reachable; no route needed).
    #[arg(long, default_value = "10.96.0.10:8000")]
    pub vip: SocketAddr,
    /// Seed of prompts and arrival times (same seed, same workload).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !args.rate.is_finite() || args.rate <= 0.0 {
        anyhow::bail!("--rate must be a positive number of requests per second");
    }
    let shape = MixShape::default();
    let count = args.requests as usize;
    let workload::Mix {
        requests,
        lora: is_lora,
    } = workload::requests(shape, count, args.seed);
    let load = LoadSpec {
        rate: args.rate,
        max_requests: count,
        max_duration: Duration::from_secs_f64(count as f64 / args.rate * 3.0 + 10.0),
        seed: args.seed,
        fresh_connections: false,
        request_timeout: Duration::from_secs(120),
    };

    println!("== Switchyard demo: everything on loopback, simulated model servers");
    print_fleet();
    println!(
        "workload: {count} streaming chat requests per run at {} req/s (Poisson), {} system prompts of ~{} tokens \
         ({}k tokens of prefixes against {}k of KV cache per server), {:.0} % for LoRA adapters, {} output tokens each\n",
        args.rate,
        shape.groups,
        shape.system_words,
        shape.groups * shape.system_words / 1000,
        fleet::KV_CAPACITY_TOKENS / 1000,
        is_lora.iter().filter(|l| **l).count() as f64 * 100.0 / count.max(1) as f64,
        shape.max_tokens,
    );

    let mut rows: Vec<(String, RunSummary)> = Vec::new();
    if let Some(result) = control_plane(&args, &requests, &load).await? {
        rows.push(report_row(result, &is_lora));
    }

    println!("== the same workload through Switchyard's endpoint picker, as a gateway uses it");
    let bar = progress(count, "EPP via ext-proc");
    let result =
        runs::through_epp(&requests, &load, (args.speed, args.seed, args.vip), &bar).await?;
    bar.finish_and_clear();
    rows.push(report_row(result, &is_lora));

    println!(
        "== the same workload through `switchyard proxy`, one policy at a time, each on fresh servers"
    );
    for policy in &args.policies {
        let bar = progress(count, policy);
        let result =
            runs::through_proxy(policy, &requests, &load, args.speed, args.seed, &bar).await?;
        bar.finish_and_clear();
        rows.push(report_row(result, &is_lora));
    }
    println!("\n== latency each router and policy gave (same requests, same arrival times)");
    println!("{}", latency_table(&rows));
    println!("== where requests went: successful requests per server (of which LoRA)");
    println!("{}", routing_table(&rows));
    for (label, summary) in &rows {
        for error in &summary.errors {
            println!("  {label}: error: {error}");
        }
    }
    print_reading(&rows);
    Ok(())
}

/// Summarises a run and prints its one-line result.
fn report_row(result: RunResult, is_lora: &[bool]) -> (String, RunSummary) {
    let summary = summarize(&result, is_lora);
    println!(
        "  {:<40} {} / {} ok, TTFT p90 {}",
        result.label,
        summary.ok,
        summary.sent,
        summary
            .ttft_p90
            .map_or("-".to_owned(), |ms| format!("{ms:.0} ms"))
    );
    (result.label, summary)
}

fn print_fleet() {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["server", "model", "what makes it different"]);
    for role in fleet::roles() {
        table.add_row([role.name, fleet::MODEL, role.trait_shown]);
    }
    println!("{table}");
}

fn progress(count: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template("  {msg:<40} [{bar:30}] {pos}/{len} requests ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Steps 2 and 3: agent, EPP and (as root) the dataplane. Returns the dataplane run.
async fn control_plane(
    args: &DemoArgs,
    requests: &[crate::bench::live::loadgen::ChatRequest],
    load: &LoadSpec,
) -> anyhow::Result<Option<RunResult>> {
    println!("== the node agent and the endpoint picker");
    let fleet = Fleet::start(args.speed, args.seed)
        .await
        .context("cannot start the simulated servers")?;
    let addrs = fleet.addrs();
    let epp = Epp::start(&addrs, "switchyard", args.vip, args.seed).await?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let scratch = if root && !args.no_dataplane {
        Some(SteeringScratch::create(&format!(
            "switchyard-demo-{}",
            std::process::id()
        ))?)
    } else {
        None
    };
    let mut agent = AgentProcess::spawn(&addrs, epp.reports_addr, scratch.as_ref())?;
    agent.wait_covered(&epp, addrs.len()).await?;
    println!(
        "agent (pid {}) scrapes the 4 servers every 50 ms, reads their simulated GPUs and streams node reports to the EPP at {};",
        agent.pid(),
        epp.reports_addr
    );
    println!(
        "the EPP has {} node connected and takes the load of {} of {} endpoints from its reports (it scrapes none itself).",
        epp.reports.connected_nodes(),
        epp.covered_count(),
        addrs.len()
    );
    let names = runs::named(&fleet);
    // One more report round, so the weights reflect the GPUs as well as the queues.
    tokio::time::sleep(Duration::from_millis(300)).await;
    print_weights(&epp, &names, args.vip);

    let mut result = None;
    match &scratch {
        Some(scratch) => {
            println!(
                "== the eBPF dataplane: connects to {} steered at connect() time",
                args.vip
            );
            let pool = steered::wait_for_pool(
                scratch.pin_root(),
                args.vip,
                addrs.len(),
                Duration::from_secs(10),
            )
            .await?;
            println!(
                "the agent programmed {} (generation {}) into the cgroup {}; this process joins it and sends the workload to the VIP, one connection per request",
                pool.vip,
                pool.generation,
                scratch.cgroup().display()
            );
            let bar = progress(requests.len(), "eBPF dataplane");
            let (run, opened) =
                steered::run_through_vip(scratch, args.vip, names.clone(), requests, load, &bar)
                    .await?;
            bar.finish_and_clear();
            let pool = steered::wait_for_pool(scratch.pin_root(), args.vip, 1, Duration::ZERO)
                .await
                .unwrap_or(pool);
            println!("{}", steered::pool_table(&pool, &names, &opened));
            result = Some(run);
        }
        None if args.no_dataplane => println!("(eBPF dataplane step skipped: --no-dataplane)\n"),
        None => println!(
            "(eBPF dataplane step skipped: it needs root to load BPF programs; run `sudo -E cargo xtask demo`)\n"
        ),
    }
    drop(agent);
    epp.stop().await;
    fleet.stop().await;
    drop(scratch);
    Ok(result)
}

fn print_weights(epp: &Epp, names: &[(SocketAddr, &'static str)], vip: SocketAddr) {
    let weights = epp.weights();
    let Some(pool) = weights.pools.iter().find(|p| p.name == stack::POOL_NAME) else {
        println!("(no cluster weights yet)");
        return;
    };
    println!(
        "cluster weights the EPP sends to agents for {} (VIP {vip}):",
        pool.name
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["backend", "weight", "down", "why"]);
    for backend in &pool.backends {
        let name = names
            .iter()
            .find(|(a, _)| a.to_string() == backend.address)
            .map_or("?", |(_, n)| *n);
        table.add_row([
            format!("{name} {}", backend.address),
            backend.weight.to_string(),
            backend.down.to_string(),
            backend.reason.clone(),
        ]);
    }
    println!("{table}\n");
}

/// Switchyard's profile against the other policies behind the same proxy, from the measured
/// rows (the EPP and dataplane rows differ in path as well as policy).
fn print_reading(rows: &[(String, RunSummary)]) {
    const OURS: &str = "proxy, switchyard";
    let Some(ours) = rows
        .iter()
        .find(|(label, _)| label == OURS)
        .and_then(|(_, s)| s.ttft_p90)
    else {
        return;
    };
    for (label, summary) in rows {
        if label == OURS || !label.starts_with("proxy, ") {
            continue;
        }
        if let Some(theirs) = summary.ttft_p90 {
            println!(
                "  behind the proxy, switchyard's p90 TTFT is {:.2}x {label}'s",
                ours / theirs.max(1e-9)
            );
        }
    }
    println!(
        "  (the eBPF dataplane balances connections by the agents' weights at connect() time: no \
         proxy hop, but no per-request prefix or LoRA affinity)"
    );
}
