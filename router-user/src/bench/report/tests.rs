use super::*;

pub(crate) fn sample_report() -> Report {
    let metrics = |ttft: f64| RunMetrics {
        requests: 100,
        completed: 100,
        duration_s: 10.0,
        throughput_rps: 10.0,
        output_tokens_per_s: 1_500.0,
        ttft_p50_ms: Some(ttft / 2.0),
        ttft_p90_ms: Some(ttft),
        ttft_p99_ms: Some(ttft * 2.0),
        ttft_mean_ms: Some(ttft / 1.5),
        itl_p50_ms: Some(12.5),
        itl_p90_ms: Some(20.0),
        e2e_p50_ms: Some(1_500.0),
        e2e_p90_ms: Some(2_500.0),
        e2e_p99_ms: Some(4_000.0),
        prefix_hit_rate: Some(0.625),
        ..RunMetrics::default()
    };
    let record = |policy: &str, rate: f64, ttft: f64| Record {
        workload: "shared-prefix".to_owned(),
        policy: policy.to_owned(),
        rate_rps: rate,
        metrics: metrics(ttft),
    };
    Report {
        schema: SCHEMA.to_owned(),
        meta: Meta {
            mode: "simulation".to_owned(),
            version: "0.1.0".to_owned(),
            command: "switchyard bench sim".to_owned(),
            seed: 1,
            policies: vec!["round-robin".to_owned(), "switchyard".to_owned()],
            cluster: ClusterInfo {
                servers: 8,
                engine: "h100".to_owned(),
                load_interval_ms: Some(50.0),
                gpu_interval_ms: Some(50.0),
                sheddable_share: 0.0,
                warmup_share: 0.1,
            },
            threads: 2,
            wall_time_s: 12.5,
        },
        workloads: vec![WorkloadInfo {
            name: "shared-prefix".to_owned(),
            parameters: serde_json::json!({"kind": "shared-prefix", "groups": 150}),
            requests: 100,
            total_tokens: 820_000,
            capacity_rps: Some(20.0),
            rates_rps: vec![6.0, 20.0],
        }],
        records: vec![
            record("round-robin", 6.0, 300.0),
            record("round-robin", 20.0, 2_000.0),
            record("switchyard", 6.0, 150.0),
            record("switchyard", 20.0, 400.0),
        ],
    }
}

#[test]
fn json_round_trips_with_stable_field_names() {
    let report = sample_report();
    let json = report.to_json().expect("encodes");
    let back: Report = serde_json::from_str(&json).expect("decodes");
    assert_eq!(back, report);
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    let record = &value["records"][0];
    for field in [
        "workload",
        "policy",
        "rate_rps",
        "requests",
        "completed",
        "rejected_429",
        "throughput_rps",
        "output_tokens_per_s",
        "ttft_p50_ms",
        "ttft_p90_ms",
        "ttft_p99_ms",
        "itl_p50_ms",
        "itl_p90_ms",
        "e2e_p50_ms",
        "e2e_p90_ms",
        "e2e_p99_ms",
        "prefix_hit_rate",
        "preemptions",
    ] {
        assert!(record.get(field).is_some(), "record field {field}");
    }
    assert_eq!(value["schema"], SCHEMA);
}

#[test]
fn markdown_has_the_pivot_and_every_row() {
    let report = sample_report();
    let text = markdown_report(&report, &|name| Some(format!("{name}.png")));
    assert!(text.contains("## shared-prefix"), "{text}");
    assert!(
        text.contains("![shared-prefix](shared-prefix.png)"),
        "{text}"
    );
    assert!(text.contains("| round-robin | 300 | 2000 |"), "{text}");
    assert!(text.contains("| switchyard | 150 | 400 |"), "{text}");
    assert!(text.contains("groups 150"), "{text}");
    assert!(text.contains("62.5 %"), "{text}");
    assert_eq!(text.matches("| switchyard | ").count(), 3, "pivot + 2 rows");
}

#[test]
fn files_are_written_with_their_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/report.json");
    sample_report().write_json(&path).expect("written");
    assert!(
        std::fs::read_to_string(&path)
            .expect("read")
            .contains(SCHEMA)
    );
}

#[test]
fn plots_are_drawn_as_png_and_svg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = sample_report();
    let files = plot_workload(&report, &report.workloads[0], dir.path()).expect("drawn");
    assert_eq!(files.png_name, "shared-prefix.png");
    let png = std::fs::read(&files.png).expect("png written");
    assert_eq!(&png[1..4], b"PNG");
    let svg = std::fs::read_to_string(&files.svg).expect("svg written");
    assert!(
        svg.contains("<svg") && svg.contains("switchyard"),
        "legend names the policies"
    );
    assert!(svg.contains("TTFT p90"));
}
