//! The demo's eBPF step (root): the agent programmed the pool's VIP into the dataplane of a
//! temporary cgroup with the cluster weights the EPP sent it; this process joins that cgroup
//! and sends the workload to the VIP, one connection per request, so every request is placed
//! by the kernel at connect() time with no proxy hop.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::ProgressBar;

use super::runs::RunResult;
use crate::bench::live::loadgen::{self, ChatRequest, LoadSpec, Target};
use crate::dataplane::scratch::SteeringScratch;
use crate::dataplane::{Dataplane, PoolView};

/// Waits until the agent has programmed `vip` with `backends` eligible backends.
pub async fn wait_for_pool(
    pin_root: &Path,
    vip: SocketAddr,
    backends: usize,
    limit: Duration,
) -> anyhow::Result<PoolView> {
    let started = Instant::now();
    loop {
        if let Ok(dataplane) = Dataplane::open_pinned(pin_root)
            && let Some(pool) = dataplane.pools()?.into_iter().find(|p| p.vip == vip)
            && pool.backends.len() >= backends
            && pool.active_slots > 0
        {
            return Ok(pool);
        }
        if started.elapsed() > limit {
            bail!("the agent did not program {vip} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends the workload to the VIP from inside the cgroup; returns the records and the
/// connections the dataplane counted per backend during the run.
pub async fn run_through_vip(
    scratch: &SteeringScratch,
    vip: SocketAddr,
    servers: Vec<(SocketAddr, &'static str)>,
    requests: &[ChatRequest],
    load: &LoadSpec,
    progress: &ProgressBar,
) -> anyhow::Result<(RunResult, HashMap<SocketAddr, u64>)> {
    let dataplane = Dataplane::open_pinned(scratch.pin_root())?;
    let before = dataplane.connection_counts()?;
    scratch.enter()?;
    let load = LoadSpec {
        fresh_connections: true,
        ..load.clone()
    };
    let records = loadgen::run(&Target::Base(vip), requests, &load, Some(progress)).await;
    // Back home before anything else, so the cgroup can be removed whatever happened.
    scratch.leave()?;
    let after = dataplane.connection_counts()?;
    let opened = servers
        .iter()
        .map(|(addr, _)| {
            let was = before.get(addr).map_or(0, |c| c.opened);
            let now = after.get(addr).map_or(0, |c| c.opened);
            (*addr, now.saturating_sub(was))
        })
        .collect();
    Ok((
        RunResult {
            label: "eBPF dataplane, agent weights".to_owned(),
            records: records?,
            servers,
        },
        opened,
    ))
}

/// The pool as the kernel holds it, with the connections each backend got.
pub fn pool_table(
    pool: &PoolView,
    names: &[(SocketAddr, &'static str)],
    opened: &HashMap<SocketAddr, u64>,
) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "backend",
        "weight in the map",
        "state",
        "connections opened",
    ]);
    for backend in &pool.backends {
        let name = names
            .iter()
            .find(|(a, _)| *a == backend.addr)
            .map_or("?", |(_, n)| *n);
        table.add_row([
            format!("{name} {}", backend.addr),
            backend.weight.to_string(),
            format!("{:?}", backend.state).to_lowercase(),
            opened.get(&backend.addr).copied().unwrap_or(0).to_string(),
        ]);
    }
    table
}
