//! GPU telemetry: health assessment, the simulated backend over HTTP, `--telemetry` selection
//! and the NVML-absent path.
mod telemetry_support;
use telemetry_support as support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use support::{dead_addr, serve};
use switchyard::clock::{MICROS_PER_SEC, ManualClock, SystemClock};
use switchyard::telemetry::gpu_sim::{SIM_GPU_PATH, SimGpuPage};
use switchyard::telemetry::gpu_source::{
    TelemetryMode, TelemetryOptions, TelemetrySelectError, TelemetryState, select_telemetry,
};
use switchyard::telemetry::health::{
    GpuHealth, HealthPolicy, HealthReason, HealthTracker, assess, critical_xid,
};
use switchyard::telemetry::nvml::{NvmlOptions, NvmlStartError, NvmlTelemetry};
use switchyard::telemetry::{GpuProcess, GpuSample, ThrottleReasons};

const GIB: u64 = 1 << 30;

fn h100(sampled_at: u64) -> GpuSample {
    GpuSample {
        index: 0,
        uuid: "GPU-5c1b4b6e-2d51-8b7e-7c0a-3f1d2e4a6b8c".into(),
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_used_bytes: 72 * GIB,
        memory_total_bytes: 80 * GIB,
        gpu_utilization_pct: 87,
        memory_utilization_pct: 41,
        power_mw: Some(512_000),
        power_limit_mw: Some(700_000),
        temperature_c: Some(61),
        sm_clock_mhz: Some(1980),
        throttle_reasons: ThrottleReasons::default(),
        ecc_uncorrected: Some(0),
        last_xid: None,
        processes: vec![GpuProcess {
            pid: 4242,
            used_memory_bytes: Some(71 * GIB),
        }],
        sampled_at,
    }
}

#[test]
fn health_table() {
    let policy = HealthPolicy::default();
    const NOW: u64 = 100 * MICROS_PER_SEC;
    let now = NOW;
    let base = h100(now);
    type Case = (
        &'static str,
        Box<dyn Fn(&mut GpuSample, &mut GpuSample)>,
        GpuHealth,
    );
    let cases: Vec<Case> = vec![
        ("healthy", Box::new(|_, _| {}), GpuHealth::Healthy),
        (
            "fallen off the bus",
            Box::new(|s, _| s.last_xid = Some(79)),
            GpuHealth::Unhealthy(HealthReason::CriticalXid {
                code: 79,
                meaning: "GPU has fallen off the bus",
            }),
        ),
        (
            "double-bit ECC stays unhealthy on later readings",
            Box::new(|s, p| {
                s.last_xid = Some(48);
                p.last_xid = Some(48);
            }),
            GpuHealth::Unhealthy(HealthReason::CriticalXid {
                code: 48,
                meaning: "double-bit ECC error",
            }),
        ),
        (
            "application XID is degraded when new",
            Box::new(|s, _| s.last_xid = Some(13)),
            GpuHealth::Degraded(vec![HealthReason::Xid { code: 13 }]),
        ),
        (
            "application XID seen before is not new",
            Box::new(|s, p| {
                s.last_xid = Some(31);
                p.last_xid = Some(31);
            }),
            GpuHealth::Healthy,
        ),
        (
            "new uncorrected ECC errors",
            Box::new(|s, p| {
                p.ecc_uncorrected = Some(2);
                s.ecc_uncorrected = Some(3);
            }),
            GpuHealth::Degraded(vec![HealthReason::NewUncorrectedEcc { before: 2, now: 3 }]),
        ),
        (
            "ECC unsupported (consumer board)",
            Box::new(|s, p| {
                s.ecc_uncorrected = None;
                p.ecc_uncorrected = None;
            }),
            GpuHealth::Healthy,
        ),
        (
            "memory exhausted",
            Box::new(|s, _| s.memory_used_bytes = 79 * GIB),
            GpuHealth::Degraded(vec![HealthReason::MemoryExhausted {
                used_fraction: 79.0 / 80.0,
            }]),
        ),
        (
            "stale reading",
            Box::new(|s, p| {
                s.sampled_at = NOW - 6 * MICROS_PER_SEC;
                p.sampled_at = NOW - 7 * MICROS_PER_SEC;
            }),
            GpuHealth::Degraded(vec![HealthReason::StaleReading {
                age: 6 * MICROS_PER_SEC,
            }]),
        ),
        (
            "frozen reading",
            Box::new(|s, p| {
                p.sampled_at = NOW - 40 * MICROS_PER_SEC;
                p.gpu_utilization_pct = s.gpu_utilization_pct;
            }),
            GpuHealth::Degraded(vec![HealthReason::FrozenReading {
                unchanged_for: 40 * MICROS_PER_SEC,
            }]),
        ),
        (
            "thermal and hardware slowdown",
            Box::new(|s, _| {
                s.throttle_reasons = ThrottleReasons(
                    ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::HW_SLOWDOWN,
                )
            }),
            GpuHealth::Degraded(vec![
                HealthReason::ThermalSlowdown,
                HealthReason::HardwareSlowdown,
            ]),
        ),
        (
            "power brake",
            Box::new(|s, _| {
                s.throttle_reasons = ThrottleReasons(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN)
            }),
            GpuHealth::Degraded(vec![HealthReason::PowerBrake]),
        ),
        (
            "software power cap is normal at full load",
            Box::new(|s, _| s.throttle_reasons = ThrottleReasons(ThrottleReasons::SW_POWER_CAP)),
            GpuHealth::Healthy,
        ),
    ];
    for (name, change, expected) in cases {
        let mut sample = base.clone();
        let mut previous = h100(now - MICROS_PER_SEC);
        previous.gpu_utilization_pct = 80;
        change(&mut sample, &mut previous);
        assert_eq!(
            assess(&sample, Some(&previous), now, &policy),
            expected,
            "{name}"
        );
    }
    let strict = HealthPolicy {
        power_cap_degrades: true,
        ..HealthPolicy::default()
    };
    let mut capped = base.clone();
    capped.throttle_reasons = ThrottleReasons(ThrottleReasons::SW_POWER_CAP);
    assert_eq!(
        assess(&capped, None, now, &strict),
        GpuHealth::Degraded(vec![HealthReason::PowerCap])
    );
}

#[test]
fn critical_xid_list_is_documented() {
    for code in [48, 63, 64, 74, 79, 94, 95] {
        assert!(critical_xid(code).is_some(), "XID {code}");
    }
    for code in [13, 31, 43, 45] {
        assert!(critical_xid(code).is_none(), "XID {code}");
    }
}

#[test]
fn tracker_holds_events_and_sees_frozen_runs() {
    let mut tracker = HealthTracker::new(HealthPolicy::default());
    let second = MICROS_PER_SEC;
    let mut reading = h100(0);
    assert!(tracker.assess(&reading, 0).is_healthy());

    reading.sampled_at = second;
    reading.ecc_uncorrected = Some(1);
    reading.gpu_utilization_pct = 90;
    let expected_event = HealthReason::NewUncorrectedEcc { before: 0, now: 1 };
    assert_eq!(
        tracker.assess(&reading, second),
        GpuHealth::Degraded(vec![expected_event.clone()])
    );
    // The count no longer rises, but the event is held for a minute.
    reading.sampled_at = 30 * second;
    reading.gpu_utilization_pct = 91;
    assert_eq!(
        tracker.assess(&reading, 30 * second),
        GpuHealth::Degraded(vec![expected_event])
    );
    reading.sampled_at = 62 * second;
    reading.gpu_utilization_pct = 92;
    assert!(tracker.assess(&reading, 62 * second).is_healthy());

    // Identical values for 31 s, read every second: frozen against the start of the run.
    let mut last = GpuHealth::Healthy;
    for t in 63..=93 {
        reading.sampled_at = t * second;
        last = tracker.assess(&reading, t * second);
    }
    assert_eq!(
        last,
        GpuHealth::Degraded(vec![HealthReason::FrozenReading {
            unchanged_for: 31 * second
        }])
    );
    reading.last_xid = Some(95);
    reading.sampled_at = 94 * second;
    assert!(tracker.assess(&reading, 94 * second).is_unhealthy());
}

#[tokio::test]
async fn simulated_gpus_over_http() {
    let page = SimGpuPage {
        gpus: vec![h100(5), {
            let mut other = h100(5);
            other.index = 1;
            other.uuid = "GPU-7a2b".into();
            other
        }],
    };
    let body = serde_json::to_string(&page).unwrap();
    let good =
        serve(Router::new().route(SIM_GPU_PATH, get(move || std::future::ready(body.clone()))))
            .await;
    let broken = serve(Router::new().route(SIM_GPU_PATH, get(|| async { "{\"gpus\": 3}" }))).await;
    let dead = dead_addr();
    let selection = select_telemetry(
        TelemetryMode::Sim,
        &TelemetryOptions {
            nvml: NvmlOptions::default(),
            sim_endpoints: vec![good, broken, dead],
            sim_timeout: Duration::from_secs(2),
            clock: Arc::new(SystemClock),
        },
    )
    .unwrap();
    assert_eq!(selection.state, TelemetryState::Sim);
    let readings = selection.backend.unwrap().sample().await;
    assert_eq!(readings.samples, page.gpus);
    assert_eq!(readings.errors.len(), 2, "{:?}", readings.errors);
    let messages: Vec<String> = readings.errors.iter().map(ToString::to_string).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&broken.to_string()) && m.contains("bad /sim/gpu body")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&dead.to_string()) && m.contains("request failed")),
        "{messages:?}"
    );
}

fn options_without_nvml(sim: Vec<std::net::SocketAddr>) -> TelemetryOptions {
    TelemetryOptions {
        nvml: NvmlOptions {
            library_paths: vec!["/nonexistent/libnvidia-ml.so.1".into()],
        },
        sim_endpoints: sim,
        sim_timeout: Duration::from_millis(200),
        clock: Arc::new(ManualClock::new(0)),
    }
}

#[tokio::test]
async fn telemetry_mode_semantics_without_nvml() {
    let auto = select_telemetry(TelemetryMode::Auto, &options_without_nvml(vec![])).unwrap();
    assert!(auto.backend.is_none());
    match &auto.state {
        TelemetryState::Absent(reason) => assert!(reason.contains("libnvidia-ml"), "{reason}"),
        other => panic!("expected absent, got {other}"),
    }
    assert_eq!(auto.state.label(), "absent");

    let sim = dead_addr();
    let auto_sim = select_telemetry(TelemetryMode::Auto, &options_without_nvml(vec![sim])).unwrap();
    assert_eq!(auto_sim.state, TelemetryState::Sim);

    let off = select_telemetry(TelemetryMode::Off, &options_without_nvml(vec![sim])).unwrap();
    assert!(off.backend.is_none() && !off.state.is_present());

    match select_telemetry(TelemetryMode::Nvml, &options_without_nvml(vec![sim])) {
        Err(TelemetrySelectError::Nvml(err)) => assert!(err.is_absent(), "{err}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(selection) => panic!("NVML selected from a missing library: {}", selection.state),
    }
    assert!(matches!(
        select_telemetry(TelemetryMode::Sim, &options_without_nvml(vec![])),
        Err(TelemetrySelectError::NoSimEndpoints)
    ));
}

/// With the default library names: on a machine without the NVIDIA driver this is the absent
/// path; on a GPU node it reads every GPU.
#[tokio::test]
async fn nvml_with_default_library_names() {
    match NvmlTelemetry::start(NvmlOptions::default(), Arc::new(SystemClock)) {
        Err(err) => {
            assert!(err.is_absent(), "NVML present but broken: {err}");
            if let NvmlStartError::LibraryNotFound { tried, .. } = &err {
                assert!(tried.contains("libnvidia-ml.so.1"), "{tried}");
            }
            eprintln!("no NVML here ({err}); the absent path was exercised");
        }
        Ok(nvml) => {
            use switchyard::telemetry::gpu_source::GpuTelemetry;
            let readings = nvml.sample().await;
            eprintln!("NVML {}: {readings:#?}", nvml.driver_version());
            assert_eq!(
                readings.samples.len()
                    + readings.errors.iter().filter(|e| e.field.is_none()).count(),
                nvml.device_count() as usize
            );
            for sample in &readings.samples {
                assert!(sample.memory_total_bytes > 0 && !sample.uuid.is_empty());
            }
        }
    }
}
