//! The demo's tables: how each run routed the requests and the latency it gave.
use std::collections::BTreeMap;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::runs::RunResult;
use crate::bench::live::percentile_ms;

/// Figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub sent: usize,
    pub ok: usize,
    /// Milliseconds.
    pub ttft_p50: Option<f64>,
    pub ttft_p90: Option<f64>,
    pub ttft_p99: Option<f64>,
    pub e2e_p50: Option<f64>,
    /// Prompt tokens the servers found in their prefix caches, of all prompt tokens.
    pub cached_share: Option<f64>,
    /// Successful requests per server name.
    pub per_server: BTreeMap<&'static str, usize>,
    /// Of the LoRA requests that succeeded, how many each server served.
    pub lora_per_server: BTreeMap<&'static str, usize>,
    /// The first few distinct errors.
    pub errors: Vec<String>,
}

/// Summarises a run; `is_lora[i % len]` says whether request `i` named an adapter.
pub fn summarize(run: &RunResult, is_lora: &[bool]) -> RunSummary {
    let ok: Vec<_> = run.records.iter().filter(|r| r.ok()).collect();
    let ttfts: Vec<Duration> = ok.iter().filter_map(|r| r.ttft).collect();
    let e2es: Vec<Duration> = ok.iter().map(|r| r.e2e).collect();
    let (prompt, cached) = ok.iter().fold((0u64, 0u64), |(p, c), r| {
        (
            p + r.prompt_tokens.unwrap_or(0),
            c + r.cached_tokens.unwrap_or(0),
        )
    });
    let name = |served_by: Option<&String>| {
        served_by.and_then(|addr| {
            run.servers
                .iter()
                .find(|(a, _)| a.to_string() == *addr)
                .map(|(_, n)| *n)
        })
    };
    let mut per_server = BTreeMap::new();
    let mut lora_per_server = BTreeMap::new();
    for (_, server) in &run.servers {
        per_server.insert(*server, 0);
        lora_per_server.insert(*server, 0);
    }
    for record in &ok {
        if let Some(server) = name(record.served_by.as_ref()) {
            *per_server.entry(server).or_default() += 1;
            let lora = !is_lora.is_empty() && is_lora[record.index % is_lora.len()];
            if lora {
                *lora_per_server.entry(server).or_default() += 1;
            }
        }
    }
    let mut errors: Vec<String> = Vec::new();
    for record in run.records.iter().filter(|r| !r.ok()) {
        let text = record
            .error
            .clone()
            .unwrap_or_else(|| format!("status {:?}", record.status));
        if errors.len() < 3 && !errors.contains(&text) {
            errors.push(text);
        }
    }
    RunSummary {
        sent: run.records.len(),
        ok: ok.len(),
        ttft_p50: percentile_ms(&ttfts, 0.50),
        ttft_p90: percentile_ms(&ttfts, 0.90),
        ttft_p99: percentile_ms(&ttfts, 0.99),
        e2e_p50: percentile_ms(&e2es, 0.50),
        cached_share: (prompt > 0).then(|| cached as f64 / prompt as f64),
        per_server,
        lora_per_server,
        errors,
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}"))
}

/// The latency table: one row per run.
pub fn latency_table(rows: &[(String, RunSummary)]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "router, policy",
        "ok / sent",
        "TTFT p50 ms",
        "TTFT p90 ms",
        "TTFT p99 ms",
        "E2E p50 ms",
        "prompt tokens cached",
    ]);
    for (label, s) in rows {
        table.add_row([
            label.clone(),
            format!("{} / {}", s.ok, s.sent),
            ms(s.ttft_p50),
            ms(s.ttft_p90),
            ms(s.ttft_p99),
            ms(s.e2e_p50),
            s.cached_share
                .map_or_else(|| "-".to_owned(), |c| format!("{:.0} %", c * 100.0)),
        ]);
    }
    table
}

/// The routing table: requests (and LoRA requests) per server, one row per run.
pub fn routing_table(rows: &[(String, RunSummary)]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let servers: Vec<&'static str> = rows
        .first()
        .map(|(_, s)| s.per_server.keys().copied().collect())
        .unwrap_or_default();
    let mut header = vec!["router, policy".to_owned()];
    header.extend(servers.iter().map(|s| format!("{s}: all (LoRA)")));
    table.set_header(header);
    for (label, s) in rows {
        let mut row = vec![label.clone()];
        for server in &servers {
            row.push(format!(
                "{} ({})",
                s.per_server.get(server).copied().unwrap_or(0),
                s.lora_per_server.get(server).copied().unwrap_or(0)
            ));
        }
        table.add_row(row);
    }
    table
}
