//! `switchyard bench live` with tiny settings: direct, the proxy and the EPP behind its hop over
//! two simulated servers (child processes of the built binary). Checks that every request has a
//! complete, sane record; timings are measured by the bench, never asserted here. No
//! sglang-router (no downloads), no root.
use std::collections::HashSet;
use std::net::SocketAddr;

use clap::Parser;
use switchyard::bench::live::{LiveBenchArgs, run_bench};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    live: LiveBenchArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_proxy_and_epp_give_complete_records() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let args = Cli::parse_from([
        "live",
        "--routers",
        "direct,proxy,epp",
        "--rates",
        "20",
        "--requests",
        "12",
        "--duration",
        "2s",
        "--servers",
        "2",
        "--speed",
        "10",
        "--groups",
        "3",
        "--system-words",
        "200",
        "--question-words",
        "10",
        "--max-tokens",
        "6",
        "--no-install",
        "--cache-dir",
        cache_dir,
    ])
    .live;
    let report = run_bench(&args, env!("CARGO_BIN_EXE_switchyard").as_ref())
        .await
        .unwrap();
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    let routers: Vec<&str> = report
        .runs
        .iter()
        .map(|run| run.summary.router.as_str())
        .collect();
    assert_eq!(routers, ["direct", "proxy", "epp"]);
    for run in &report.runs {
        let summary = &run.summary;
        let name = &summary.router;
        assert_eq!(run.records.len(), summary.sent, "{name}");
        assert!(summary.sent > 0 && summary.sent <= 12, "{name}");
        assert_eq!(
            summary.ok, summary.sent,
            "{name}: {:?}",
            summary.first_error
        );
        let mut served = HashSet::new();
        for (i, record) in run.records.iter().enumerate() {
            assert_eq!(record.index, i, "{name}: records in arrival order");
            assert!(record.ok(), "{name}: {record:?}");
            let ttft = record.ttft.unwrap();
            assert!(ttft <= record.e2e, "{name}: {record:?}");
            assert_eq!(record.completion_tokens, Some(6), "{name}: {record:?}");
            assert!(record.prompt_tokens.unwrap() > 200, "{name}: {record:?}");
            assert!(
                record.cached_tokens.unwrap() <= record.prompt_tokens.unwrap(),
                "{name}"
            );
            assert!(record.content_chunks >= 1, "{name}");
            let server: SocketAddr = record
                .served_by
                .as_deref()
                .expect("x-served-by passes through")
                .parse()
                .unwrap();
            if name == "direct" {
                assert_eq!(server, record.target, "direct goes where it connects");
            }
            served.insert(server);
        }
        assert!(served.len() <= 2);
        assert_eq!(
            summary.per_server_requests.iter().sum::<u64>(),
            summary.ok as u64,
            "{name}: the servers' counters agree with the client"
        );
        let hit = summary.prefix_hit_rate.unwrap();
        assert!((0.0..=1.0).contains(&hit), "{name}: {hit}");
        for value in [summary.ttft_p50_ms, summary.ttft_p99_ms, summary.e2e_p50_ms] {
            assert!(value.unwrap() > 0.0, "{name}");
        }
        assert!(summary.ttft_p50_ms <= summary.ttft_p99_ms, "{name}");
        assert!(
            summary.added_ttft_p50_ms.is_some(),
            "{name}: compared with direct"
        );
        match name.as_str() {
            "direct" => assert!(summary.router_cpu_ms_per_1000.is_none()),
            "epp" => {
                assert!(summary.router_cpu_ms_per_1000.unwrap() >= 0.0);
                assert!(summary.hop_cpu_ms_per_1000.is_some());
            }
            _ => assert!(summary.router_cpu_ms_per_1000.is_some()),
        }
    }
    let table = switchyard::bench::live::markdown_table(&report);
    assert!(table.contains("| epp"), "{table}");
}
