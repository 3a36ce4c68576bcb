//! `switchyard bench pick`: `Scheduler::pick` latency at several fleet sizes.
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::scheduling::{PickLatency, run_pick_bench};

#[derive(Debug, Args)]
pub struct PickBenchArgs {
    /// Built-in profiles to time (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "switchyard,gie-default")]
    pub profiles: Vec<String>,
    /// Fleet sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,256,2048")]
    pub endpoints: Vec<usize>,
    /// Timed picks per profile and fleet size (after 10 % warm-up picks).
    #[arg(long, default_value_t = 100_000)]
    pub picks: u64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn micros(ns: f64) -> String {
    format!("{:.2} µs", ns / 1_000.0)
}

/// Renders results as a table.
pub fn table(results: &[PickLatency]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "profile",
        "endpoints",
        "picks",
        "mean",
        "p50",
        "p99",
        "p99.9",
        "max",
    ]);
    for r in results {
        table.add_row(vec![
            r.profile.clone(),
            r.endpoints.to_string(),
            r.picks.to_string(),
            micros(r.mean_ns),
            micros(r.p50_ns as f64),
            micros(r.p99_ns as f64),
            micros(r.p999_ns as f64),
            micros(r.max_ns as f64),
        ]);
    }
    table
}

pub async fn run(args: PickBenchArgs) -> anyhow::Result<()> {
    if args.picks == 0 {
        anyhow::bail!("--picks must be at least 1");
    }
    let mut results = Vec::new();
    for profile in &args.profiles {
        for &endpoints in &args.endpoints {
            if endpoints == 0 {
                anyhow::bail!("--endpoints must be at least 1");
            }
            let latency = tokio::task::block_in_place(|| {
                run_pick_bench(profile.trim(), endpoints, args.picks)
            })?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "profile": latency.profile,
                        "endpoints": latency.endpoints,
                        "picks": latency.picks,
                        "mean_ns": latency.mean_ns,
                        "p50_ns": latency.p50_ns,
                        "p99_ns": latency.p99_ns,
                        "p999_ns": latency.p999_ns,
                        "max_ns": latency.max_ns,
                    })
                );
            }
            results.push(latency);
        }
    }
    if !args.json {
        println!("{}", table(&results));
    }
    Ok(())
}
