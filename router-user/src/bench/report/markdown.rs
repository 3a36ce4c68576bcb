//! The markdown report: per workload, a p90-TTFT pivot (policies × rates) and every figure.
use std::fmt::Write as _;

use super::{Record, Report, WorkloadInfo};

/// Milliseconds with precision that suits their size; `—` when not measured.
pub(crate) fn ms(value: Option<f64>) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// A rate as swept (up to 3 significant digits, no trailing zeros).
pub(crate) fn rate(value: f64) -> String {
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{:.1} %", v * 100.0))
}

/// `key value` pairs of a JSON object, nested keys joined with dots.
fn flatten(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(inner, &name, out);
            }
        }
        serde_json::Value::String(text) => out.push(format!("{prefix} `{text}`")),
        other => out.push(format!("{prefix} {other}")),
    }
}

fn policies_of(report: &Report) -> Vec<String> {
    let mut names: Vec<String> = report.meta.policies.clone();
    for record in &report.records {
        if !names.contains(&record.policy) {
            names.push(record.policy.clone());
        }
    }
    names
}

fn find<'a>(report: &'a Report, workload: &str, policy: &str, at: f64) -> Option<&'a Record> {
    report
        .records
        .iter()
        .find(|r| r.workload == workload && r.policy == policy && r.rate_rps == at)
}

/// p90 TTFT in ms, one row per policy, one column per swept rate.
pub fn ttft_p90_table(report: &Report, workload: &WorkloadInfo) -> String {
    let mut out = String::from("| policy |");
    for &at in &workload.rates_rps {
        let _ = write!(out, " {} req/s |", rate(at));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(workload.rates_rps.len()));
    out.push('\n');
    for policy in policies_of(report) {
        let cells: Vec<String> = workload
            .rates_rps
            .iter()
            .map(|&at| {
                find(report, &workload.name, &policy, at)
                    .map_or_else(|| "".to_owned(), |r| ms(r.metrics.ttft_p90_ms))
            })
            .collect();
        if cells.iter().all(String::is_empty) {
            continue;
        }
        let _ = writeln!(out, "| {policy} | {} |", cells.join(" | "));
    }
    out
}

fn full_table(report: &Report, workload: &WorkloadInfo) -> String {
    let mut out = String::from(
        "| policy | rate | req/s | out tok/s | TTFT p50 | TTFT p90 | TTFT p99 | ITL p50 | ITL p90 \
         | E2E p50 | E2E p90 | prefix hit | preempt | 429 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for policy in policies_of(report) {
        for &at in &workload.rates_rps {
            let Some(record) = find(report, &workload.name, &policy, at) else {
                continue;
            };
            let m = &record.metrics;
            let _ = writeln!(
                out,
                "| {policy} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rate(at),
                m.throughput_rps,
                m.output_tokens_per_s,
                ms(m.ttft_p50_ms),
                ms(m.ttft_p90_ms),
                ms(m.ttft_p99_ms),
                ms(m.itl_p50_ms),
                ms(m.itl_p90_ms),
                ms(m.e2e_p50_ms),
                ms(m.e2e_p90_ms),
                percent(m.prefix_hit_rate),
                m.preemptions,
                m.rejected_429,
            );
        }
    }
    out
}

/// The whole report as markdown; `images` names each workload's plot file (relative to the
/// report) when plots were drawn.
pub fn markdown_report(report: &Report, images: &dyn Fn(&str) -> Option<String>) -> String {
    let meta = &report.meta;
    let cluster = &meta.cluster;
    let interval =
        |value: Option<f64>| value.map_or_else(|| "n/a".to_owned(), |v| format!("{v} ms"));
    let mut out = String::from("# Routing policies compared\n\n");
    let _ = writeln!(out, "Command: `{}`\n", meta.command);
    let _ = writeln!(
        out,
        "Mode: {} · seed {} · {} servers ({}) · load samples every {}, GPU samples every {} · \
         sheddable share {} · first {:.0} % of arrivals not measured (warm-up) · switchyard {} · \
         {} threads, wall time {:.1} s\n",
        meta.mode,
        meta.seed,
        cluster.servers,
        cluster.engine,
        interval(cluster.load_interval_ms),
        interval(cluster.gpu_interval_ms),
        cluster.sheddable_share,
        cluster.warmup_share * 100.0,
        meta.version,
        meta.threads,
        meta.wall_time_s,
    );
    out.push_str(
        "Latencies in ms. TTFT: arrival → first token; ITL: gap between consecutive tokens; \
         E2E: arrival → last token; prefix hit: prompt tokens served from the engines' caches \
         (`docs/bench.md` defines every figure).\n",
    );
    for workload in &report.workloads {
        let _ = writeln!(out, "\n## {}\n", workload.name);
        let mut parameters = Vec::new();
        flatten(&workload.parameters, "", &mut parameters);
        let _ = writeln!(
            out,
            "{} requests ({:.1} M tokens). Parameters: {}.",
            workload.requests,
            workload.total_tokens as f64 / 1e6,
            parameters.join(", ")
        );
        if let Some(capacity) = workload.capacity_rps {
            let _ = writeln!(
                out,
                "Estimated capacity {} req/s; rates swept: {} req/s.",
                rate(capacity),
                workload
                    .rates_rps
                    .iter()
                    .map(|&r| rate(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(image) = images(&workload.name) {
            let _ = writeln!(out, "\n![{}]({image})", workload.name);
        }
        let _ = writeln!(
            out,
            "\n### p90 TTFT (ms)\n\n{}",
            ttft_p90_table(report, workload)
        );
        let _ = writeln!(out, "### All figures\n\n{}", full_table(report, workload));
    }
    out
}
