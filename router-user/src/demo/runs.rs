//! One measured run of the demo: a fresh fleet (cold caches, no adapters loaded), a router in
//! front of it, the same requests at the same arrival times, and what each request got.
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::ProgressBar;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fleet::Fleet;
use super::stack::{AgentProcess, Epp};
use crate::bench::live::hop;
use crate::bench::live::loadgen::{self, ChatRequest, LoadSpec, RequestRecord, Target};
use crate::proxy::{ProxyConfig, ProxyServer};
use crate::serving::{EjectionPolicy, Serving, ServingArgs};

/// What a run measured.
pub struct RunResult {
    pub label: String,
    pub records: Vec<RequestRecord>,
    /// Server names by address, for the report.
    pub servers: Vec<(SocketAddr, &'static str)>,
}

/// A built-in scheduling profile in the proxy (`switchyard proxy --profile P`), which scrapes
/// the servers itself every 50 ms.
pub async fn through_proxy(
    profile: &str,
    requests: &[ChatRequest],
    load: &LoadSpec,
    speed: f64,
    seed: u64,
    progress: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let fleet = Fleet::start(speed, seed)
        .await
        .context("cannot start the simulated servers")?;
    let mut args = ServingArgs::fixed(&fleet.addrs(), profile, seed);
    args.scrape.scrape = true;
    let (_no_agents, covered) = watch::channel(HashSet::new());
    let serving = Serving::start(&args, EjectionPolicy::default(), covered)
        .await
        .with_context(|| format!("cannot start the scheduler with profile {profile}"))?;
    let config = ProxyConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        connect_timeout: Duration::from_secs(2),
        response_timeout: load.request_timeout,
        drain_period: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(10),
    };
    let proxy = ProxyServer::bind(config, Arc::new(serving)).await?;
    let target = Target::Base(proxy.local_addr());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy.serve(shutdown.clone()));
    // The first scrape round makes every server known (never "idle" before it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = loadgen::run(&target, requests, load, Some(progress)).await;
    shutdown.cancel();
    let _ = task.await;
    let servers = named(&fleet);
    fleet.stop().await;
    Ok(RunResult {
        label: format!("proxy, {profile}"),
        records: records?,
        servers,
    })
}

/// Switchyard's endpoint picker as a gateway uses it: a minimal gateway (the bench's ext-proc
/// hop, Envoy's message sequence) asks it for each request's destination and forwards there;
/// the picker takes the servers' load from a real node agent's reports, not its own scrapes.
pub async fn through_epp(
    requests: &[ChatRequest],
    load: &LoadSpec,
    args: (f64, u64, SocketAddr),
    progress: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let (speed, seed, vip) = args;
    let fleet = Fleet::start(speed, seed)
        .await
        .context("cannot start the simulated servers")?;
    let addrs = fleet.addrs();
    let epp = Epp::start(&addrs, "switchyard", vip, seed).await?;
    let mut agent = AgentProcess::spawn(&addrs, epp.reports_addr, None)?;
    agent.wait_covered(&epp, addrs.len()).await?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot bind the gateway hop")?;
    let gateway = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let hop = tokio::spawn(hop::serve(listener, epp.ext_proc, shutdown.clone()));
    let records = loadgen::run(&Target::Base(gateway), requests, load, Some(progress)).await;
    shutdown.cancel();
    let _ = hop.await;
    drop(agent);
    epp.stop().await;
    let servers = named(&fleet);
    fleet.stop().await;
    Ok(RunResult {
        label: "EPP via ext-proc, agent-fed, switchyard".to_owned(),
        records: records?,
        servers,
    })
}

pub fn named(fleet: &Fleet) -> Vec<(SocketAddr, &'static str)> {
    fleet
        .addrs()
        .into_iter()
        .zip(fleet.roles.iter().map(|r| r.name))
        .collect()
}
