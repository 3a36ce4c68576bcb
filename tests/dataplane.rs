//! The eBPF dataplane against the real kernel, with real connections (root only).
//!
//! Each test creates its own cgroup v2 and pin root, starts loopback TCP backends that announce
//! who they are, and dials through `switchyard dataplane probe --cgroup ...`: a child process
//! that joins the test's cgroup before opening sockets. The test process itself never changes
//! cgroup, so tests run in parallel with each other and with the rest of the suite.
//!
//! Virtual addresses: 10.96.x.x and fd00:5::x have no route here, so an untranslated connect
//! does not reach a test backend (the banner check catches it); 127.100.x.x is used where an
//! untranslated connect must fail fast (ECONNREFUSED on loopback).
//!
//! Without root, bpffs or cgroup v2 the tests print why and pass, except with `CI=true`, where
//! they fail.
use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

mod dataplane_support;

use dataplane_support::{Fixture, can_run};
use serde_json::Value;
use switchyard::dataplane::{
    BackendSpec, BackendState, Dataplane, DataplaneConfig, DataplaneError, Origin,
    cgroup::TempCgroup, probe::BannerServer,
};

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");

// ---------------------------------------------------------------------------------------------
// Fixtures (the shared ones are in dataplane_support)

fn spec(backend: &BannerServer, weight: u32) -> BackendSpec {
    BackendSpec::new(backend.addr(), weight)
}

/// The test's fixture and four IPv4 backends, or `None` (after saying why) when the tests
/// cannot run here.
fn setup(test: &str) -> Option<(Fixture, Vec<BannerServer>)> {
    if !can_run(test) {
        return None;
    }
    Some((Fixture::new(test), v4_backends()))
}

/// Four backends on distinct loopback addresses.
fn v4_backends() -> Vec<BannerServer> {
    (1..=4)
        .map(|i| {
            BannerServer::start(&format!("b{i}"), addr(&format!("127.0.0.{i}:0")))
                .expect("start a test backend")
        })
        .collect()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

/// Polls `check` for up to two seconds (sockets finish closing asynchronously to the probe's
/// exit only by microseconds, but CI machines stall).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// 10,000 connects follow the weights. Pearson's chi-square over the eligible backends, with
/// expected counts from the live kernel table's slot shares, must stay under the critical value
/// for p = 0.001 (df = 2: 13.816), so a correct dataplane fails this test once in 1000 runs.
#[test]
fn distribution_over_10000_connects_matches_the_weights() {
    let Some((fx, backends)) = setup("dist") else {
        return;
    };
    let mut dp = fx.load();
    let vip = addr("10.96.7.10:80");
    let mut down = spec(&backends[3], 5);
    down.down = true;
    let status = dp
        .set_pool(
            vip,
            &[
                spec(&backends[0], 3),
                spec(&backends[1], 1),
                spec(&backends[2], 0),
                down,
            ],
        )
        .expect("set_pool");
    assert!(status.changed && status.table_swapped);

    let shares = dp.table_shares(vip).expect("table shares");
    assert_eq!(
        shares.len(),
        2,
        "only up backends with weight > 0 hold slots: {shares:?}"
    );
    // Add the weight-2 backend back in as eligible for a three-way split.
    dp.set_pool(
        vip,
        &[
            spec(&backends[0], 3),
            spec(&backends[1], 1),
            spec(&backends[2], 0),
            spec(&backends[3], 2),
        ],
    )
    .expect("set_pool");
    let shares = dp.table_shares(vip).expect("table shares");
    assert!(
        !shares.contains_key(&backends[2].addr()),
        "weight 0 holds no slot"
    );
    let total_slots: usize = shares.values().sum();

    let n = 10_000;
    let probe = fx.probe(vip, n);
    assert_eq!(probe.connected, u64::from(n), "errors: {:?}", probe.errors);
    assert_eq!(
        probe.banner(backends[2].name()),
        0,
        "weight 0 must never be picked"
    );
    let mut chi2 = 0.0;
    for b in [&backends[0], &backends[1], &backends[3]] {
        let expected = f64::from(n) * shares[&b.addr()] as f64 / total_slots as f64;
        let observed = probe.banner(b.name()) as f64;
        chi2 += (observed - expected).powi(2) / expected;
    }
    assert!(
        chi2 < 13.816,
        "chi-square {chi2:.2} >= 13.816 (df 2, p 0.001): {:?} vs shares {shares:?}",
        probe.banners
    );
    // What the application saw and what the dataplane recorded agree with the servers.
    assert_eq!(probe.peers.get(&vip.to_string()), Some(&u64::from(n)));
    for b in &backends {
        assert_eq!(
            probe
                .steered_to
                .get(&b.addr().to_string())
                .copied()
                .unwrap_or(0),
            probe.banner(b.name()),
            "socket storage disagrees with the server for {}",
            b.name()
        );
    }
}

#[test]
fn weight_zero_and_down_backends_are_never_chosen() {
    let Some((fx, backends)) = setup("never") else {
        return;
    };
    let mut dp = fx.load();
    let vip = addr("10.96.7.11:80");
    let mut down = spec(&backends[1], 1000);
    down.down = true;
    dp.set_pool(vip, &[spec(&backends[0], 1), down, spec(&backends[2], 0)])
        .expect("set_pool");
    let probe = fx.probe(vip, 2000);
    assert_eq!(
        probe.banner(backends[0].name()),
        2000,
        "{:?}",
        probe.banners
    );
}

#[test]
fn updates_take_effect_on_the_next_connect_and_noop_updates_write_nothing() {
    let Some((fx, backends)) = setup("update") else {
        return;
    };
    let mut dp = fx.load();
    let vip = addr("10.96.7.12:80");

    let first = dp
        .set_pool(vip, &[spec(&backends[0], 1)])
        .expect("set_pool");
    fx.expect_all_reach(vip, 50, &backends[0]);

    let second = dp
        .set_pool(vip, &[spec(&backends[0], 1), spec(&backends[1], 1)])
        .expect("set_pool");
    assert_eq!(second.generation, first.generation + 1);
    // Same backends again: nothing written, generation kept.
    let same = dp
        .set_pool(vip, &[spec(&backends[1], 1), spec(&backends[0], 1)])
        .expect("set_pool");
    assert!(!same.changed && !same.table_swapped, "{same:?}");
    assert_eq!(same.generation, second.generation);
    // Ids are stable across updates for the same address.
    assert_eq!(same.backends, second.backends);

    // Switch everything to b2 (b1 marked down): the very next connects go to b2.
    let mut b1_down = spec(&backends[0], 1);
    b1_down.down = true;
    dp.set_pool(vip, &[b1_down, spec(&backends[1], 1)])
        .expect("set_pool");
    let probe = fx.probe(vip, 50);
    assert_eq!(probe.banner(backends[1].name()), 50, "{:?}", probe.banners);

    // Remove b1 entirely: it is retired (listed while draining), b2 keeps its id.
    let status = dp
        .set_pool(vip, &[spec(&backends[1], 1)])
        .expect("set_pool");
    assert_eq!(status.backends[0].id, second.backends[1].id);
    let pool = dp
        .pools()
        .expect("pools")
        .into_iter()
        .find(|p| p.vip == vip)
        .expect("pool");
    let b1 = pool
        .backends
        .iter()
        .find(|b| b.addr == backends[0].addr())
        .expect("b1 listed");
    assert_eq!(b1.state, BackendState::Retired);

    dp.remove_pool(vip).expect("remove_pool");
    assert!(dp.pools().expect("pools").iter().all(|p| p.vip != vip));
    assert!(matches!(
        dp.remove_pool(vip),
        Err(DataplaneError::PoolNotFound(_))
    ));
}

#[test]
fn getpeername_shows_the_vip_and_live_counts_rise_and_fall() {
    let Some((fx, backends)) = setup("counts") else {
        return;
    };
    let mut dp = fx.load();
    let vip = addr("10.96.7.13:80");
    dp.set_pool(vip, &[spec(&backends[0], 1), spec(&backends[1], 1)])
        .expect("set_pool");
    let before = dp.stats().expect("stats");

    let held = 40;
    let cgroup = fx.cgroup().to_string_lossy().into_owned();
    let mut child = Command::new(SWITCHYARD)
        .args(["--log", "warn", "dataplane", "--pin-root"])
        .arg(&fx.pin_root)
        .args([
            "probe",
            "--vip",
            &vip.to_string(),
            "--count",
            &held.to_string(),
        ])
        .args(["--cgroup", &cgroup, "--hold", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let holding: Value = serde_json::from_str(&lines.next().expect("holding line").expect("read"))
        .expect("holding json");
    let report = &holding["report"];
    assert_eq!(report["connected"], held, "{holding}");
    assert_eq!(
        report["peers"][vip.to_string()],
        held,
        "getpeername must show the VIP"
    );
    assert_eq!(report["counted"], held, "every steered socket is counted");

    let counts = dp.connection_counts().expect("counts");
    let live: u64 = backends
        .iter()
        .map(|b| counts.get(&b.addr()).map_or(0, |c| c.live()))
        .sum();
    assert_eq!(live, held as u64, "{counts:?}");
    for b in &backends[..2] {
        let steered = report["steered_to"][b.addr().to_string()]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(
            counts[&b.addr()].live(),
            steered,
            "live count of {}",
            b.addr()
        );
    }

    drop(child.stdin.take()); // end of stdin: the probe closes every connection
    let status = child.wait().expect("probe exit");
    assert!(status.success());
    eventually("every connection is counted closed", || {
        let counts = dp.connection_counts().expect("counts");
        backends
            .iter()
            .all(|b| counts.get(&b.addr()).is_none_or(|c| c.live() == 0))
    });
    let counts = dp.connection_counts().expect("counts");
    let opened: u64 = counts.values().map(|c| c.opened).sum();
    assert_eq!(opened, held as u64);
    let after = dp.stats().expect("stats");
    assert_eq!(after.peers_rewritten - before.peers_rewritten, held as u64);
    assert_eq!(after.conns_opened - before.conns_opened, held as u64);
    assert_eq!(after.conns_closed - before.conns_closed, held as u64);
}

/// A backend that refuses (nobody listens): each failed handshake is opened and closed, so the
/// live count never drifts.
#[test]
fn failed_handshakes_are_counted_open_and_closed() {
    if !can_run("refhs") {
        return;
    }
    let fx = Fixture::new("refhs");
    let dead = {
        let server = BannerServer::start("gone", addr("127.0.0.5:0")).expect("server");
        server.addr()
    }; // dropped: the port no longer listens
    let mut dp = fx.load();
    let vip = addr("10.96.7.20:80");
    dp.set_pool(vip, &[BackendSpec::new(dead, 1)])
        .expect("set_pool");
    let probe = fx.probe(vip, 25);
    assert_eq!(probe.errors.get("ECONNREFUSED"), Some(&25), "{probe:?}");
    eventually("failed handshakes are closed", || {
        let counts = dp.connection_counts().expect("counts");
        counts
            .get(&dead)
            .is_some_and(|c| c.opened == 25 && c.closed == 25)
    });
}

/// A removed backend is listed as retired while it drains; after the grace period with no live
/// connection its id is reclaimed and handed to the next new backend with fresh counters.
#[test]
fn retired_backends_drain_and_their_ids_are_reused_with_fresh_counters() {
    let Some((fx, backends)) = setup("reclaim") else {
        return;
    };
    let mut dp = fx.load();
    let vip = addr("10.96.7.21:80");
    let first = dp
        .set_pool(vip, &[spec(&backends[0], 1), spec(&backends[1], 1)])
        .expect("set_pool");
    assert_eq!(fx.probe(vip, 40).connected, 40);
    let retired_id = first.backends[1].id;
    dp.set_pool(vip, &[spec(&backends[0], 1)])
        .expect("set_pool");
    let listed = |dp: &Dataplane| {
        dp.pools().expect("pools")[0]
            .backends
            .iter()
            .map(|b| (b.id, b.state))
            .collect::<Vec<_>>()
    };
    assert!(listed(&dp).contains(&(retired_id, BackendState::Retired)));
    thread::sleep(Duration::from_millis(2100)); // the grace period (2 s)
    // A no-op update still reclaims the drained backend.
    let status = dp
        .set_pool(vip, &[spec(&backends[0], 1)])
        .expect("set_pool");
    assert!(!status.changed);
    assert!(
        listed(&dp).iter().all(|(id, _)| *id != retired_id),
        "{:?}",
        listed(&dp)
    );
    // The next new backend gets the freed id, with counters starting at zero.
    let status = dp
        .set_pool(vip, &[spec(&backends[0], 1), spec(&backends[2], 1)])
        .expect("set_pool");
    let reused = status
        .backends
        .iter()
        .find(|b| b.addr == backends[2].addr())
        .expect("b3");
    assert_eq!(reused.id, retired_id);
    let counts = dp.connection_counts().expect("counts");
    assert_eq!(counts[&backends[2].addr()].opened, 0);
}

#[test]
fn a_pool_without_eligible_backends_refuses_with_econnrefused() {
    let Some((fx, backends)) = setup("refuse") else {
        return;
    };
    let mut dp = fx.load();
    // 10.96/16 is not ours: if the dataplane let this through, the connect would not be refused.
    let vip = addr("10.96.7.14:80");
    let mut down = spec(&backends[0], 1);
    down.down = true;
    dp.set_pool(vip, &[down, spec(&backends[1], 0)])
        .expect("set_pool");
    let before = dp.stats().expect("stats");
    let probe = fx.probe(vip, 20);
    assert_eq!(probe.errors.get("ECONNREFUSED"), Some(&20), "{probe:?}");
    assert_eq!(
        dp.stats().expect("stats").connects_refused - before.connects_refused,
        20
    );
    // Bringing a backend up serves the next connect.
    dp.set_pool(vip, &[spec(&backends[0], 1), spec(&backends[1], 0)])
        .expect("set_pool");
    fx.expect_all_reach(vip, 10, &backends[0]);
}

/// The first agent is a separate process that exits; steering continues with no userspace
/// process, and a new one adopts the pins and keeps programming them.
#[test]
fn steering_survives_the_agent_exiting_and_a_new_one_adopts_the_pins() {
    let Some((fx, backends)) = setup("adopt") else {
        return;
    };
    let vip = addr("10.96.7.15:80");
    let cgroup = fx.cgroup().to_string_lossy().into_owned();
    let out = fx.cli_ok(&["attach", "--cgroup", &cgroup]);
    assert!(out.starts_with("attached"), "{out}");
    let b1 = format!("{}=3", backends[0].addr());
    let b2 = format!("{}=1", backends[1].addr());
    fx.cli_ok(&[
        "set-pool",
        "--vip",
        &vip.to_string(),
        "--backend",
        &b1,
        "--backend",
        &b2,
    ]);

    // No switchyard process holds anything now.
    let probe = fx.probe(vip, 400);
    assert_eq!(probe.connected, 400, "{probe:?}");
    assert_eq!(
        probe.banner(backends[0].name()) + probe.banner(backends[1].name()),
        400
    );

    // A second `attach` adopts; so does a new agent in this process.
    let out = fx.cli_ok(&["attach", "--cgroup", &cgroup]);
    assert!(out.starts_with("already attached"), "{out}");
    let mut dp = fx.load();
    assert_eq!(dp.origin(), Origin::Adopted);
    let pool = dp
        .pools()
        .expect("pools")
        .into_iter()
        .find(|p| p.vip == vip)
        .expect("pool kept");
    assert_eq!(pool.generation, 1);
    let opened: u64 = pool.backends.iter().map(|b| b.conns.opened).sum();
    assert_eq!(opened, 400, "counts survive the agent");

    // The adopter's cache starts empty and must not disturb the ids the first agent chose.
    let status = dp
        .set_pool(vip, &[spec(&backends[0], 3), spec(&backends[1], 1)])
        .expect("set_pool");
    assert!(
        !status.changed,
        "same pool through a new agent is a no-op: {status:?}"
    );
    dp.set_pool(vip, &[spec(&backends[2], 1)])
        .expect("set_pool");
    fx.expect_all_reach(vip, 30, &backends[2]);
}

/// Pins of another build (simulated by clearing the recorded object hash) are replaced
/// make-before-break: the maps and pools stay, the old programs are detached and freed.
#[test]
fn load_replaces_the_programs_of_another_build_without_a_gap() {
    let Some((fx, backends)) = setup("replace") else {
        return;
    };
    let vip = addr("10.96.7.16:80");
    let mut dp = fx.load();
    dp.set_pool(vip, &[spec(&backends[0], 1)])
        .expect("set_pool");
    let link_path = fx.pin_root.join("v1/links/connect4");
    let old_prog = {
        let link = aya::programs::links::PinnedLink::from_pin(&link_path).expect("link pin");
        aya::programs::links::FdLink::from(link)
            .info()
            .expect("link info")
            .program_id()
    };
    drop(dp);

    let meta_path = fx.pin_root.join("v1/maps/meta");
    let meta_map = aya::maps::MapData::from_pin(&meta_path).expect("meta pin");
    let mut meta: aya::maps::Array<_, router_common::DataplaneMeta> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(meta_map).expect("map"))
            .expect("meta array");
    let mut record = meta.get(&0, 0).expect("meta");
    record.object_hash = 0;
    meta.set(0, record, 0).expect("write meta");

    let dp = fx.load();
    assert_eq!(dp.origin(), Origin::Replaced);
    assert_eq!(dp.attached_links().len(), 5);
    assert!(!fx.pin_root.join("v1/links/connect4_staged").exists());
    let pool = dp
        .pools()
        .expect("pools")
        .into_iter()
        .find(|p| p.vip == vip)
        .expect("pool kept");
    assert_eq!(pool.backends.len(), 1);
    fx.expect_all_reach(vip, 20, &backends[0]);
    eventually("the old program is freed", || {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .all(|p| p.id() != old_prog)
    });
    // Loading again now adopts: the recorded build is this one.
    assert_eq!(fx.load().origin(), Origin::Adopted);
}

#[test]
fn bad_set_pool_input_is_rejected_clearly_and_keeps_the_previous_table() {
    let Some((fx, backends)) = setup("badin") else {
        return;
    };
    let vip = addr("10.96.7.17:80");
    let mut dp = fx.load();
    let good = dp
        .set_pool(vip, &[spec(&backends[0], 2), spec(&backends[1], 1)])
        .expect("set_pool");
    let shares_before = dp.table_shares(vip).expect("shares");
    let vip_text = vip.to_string();
    let b1 = format!("{}=1", backends[0].addr());

    let many: Vec<String> = (0..257)
        .map(|i| format!("--backend=127.0.1.{}:{}=1", i % 250 + 1, 1000 + i))
        .collect();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--vip".into(), vip_text.clone()], "--backend"),
        (
            vec![
                "--vip".into(),
                vip_text.clone(),
                "--backend".into(),
                "127.0.0.1=3".into(),
            ],
            "bad backend address `127.0.0.1`",
        ),
        (
            vec![
                "--vip".into(),
                vip_text.clone(),
                "--backend".into(),
                "127.0.0.1:9001=70000".into(),
            ],
            "0 to 65535",
        ),
        (
            vec![
                "--vip".into(),
                vip_text.clone(),
                "--backend".into(),
                "127.0.0.1:9001=99999999999".into(),
            ],
            "0 to 65535",
        ),
        (
            [vec!["--vip".into(), vip_text.clone()], many].concat(),
            "257 backends given, a pool holds at most 256",
        ),
        (
            vec![
                "--vip".into(),
                vip_text.clone(),
                "--backend".into(),
                "[::1]:9001=1".into(),
            ],
            "cannot be steered across families",
        ),
        (
            vec![
                "--vip".into(),
                vip_text.clone(),
                "--backend".into(),
                b1.clone(),
                "--backend".into(),
                b1.clone(),
            ],
            "listed twice",
        ),
        (
            vec![
                "--vip".into(),
                vip_text.clone(),
                "--backend".into(),
                b1,
                "--down".into(),
                "127.0.0.9:1".into(),
            ],
            "not one of the --backend addresses",
        ),
        (
            vec![
                "--vip".into(),
                "10.96.7.17".into(),
                "--backend".into(),
                "127.0.0.1:1=1".into(),
            ],
            "--vip",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["set-pool"];
        full.extend(args.iter().map(String::as_str));
        let out = fx.cli(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in: {stderr}"
        );
    }
    // The library refuses an empty list as well.
    assert!(matches!(
        dp.set_pool(vip, &[]),
        Err(DataplaneError::InvalidPool { .. })
    ));

    let pool = dp
        .pools()
        .expect("pools")
        .into_iter()
        .find(|p| p.vip == vip)
        .expect("pool");
    assert_eq!(pool.generation, good.generation);
    assert_eq!(dp.table_shares(vip).expect("shares"), shares_before);
    let probe = fx.probe(vip, 30);
    assert_eq!(
        probe.banner(backends[0].name()) + probe.banner(backends[1].name()),
        30
    );
}

#[test]
fn ipv6_vip_and_ipv4_mapped_vip_from_an_inet6_socket() {
    if !can_run("ipv6") {
        return;
    }
    let fx = Fixture::new("ipv6");
    let v6 = ["v6a", "v6b"]
        .map(|name| BannerServer::start(name, addr("[::1]:0")).expect("start a test backend"));
    let v4 = v4_backends();
    let mut dp = fx.load();

    let vip6 = addr("[fd00:5::17]:80");
    dp.set_pool(vip6, &[spec(&v6[0], 1), spec(&v6[1], 1)])
        .expect("set_pool v6");
    let probe = fx.probe(vip6, 200);
    assert_eq!(probe.banner("v6a") + probe.banner("v6b"), 200, "{probe:?}");
    assert_eq!(probe.peers.get(&vip6.to_string()), Some(&200));

    // An IPv4 pool dialled as ::ffff:a.b.c.d from an AF_INET6 socket (connect6 path).
    let vip4 = addr("10.96.7.18:80");
    dp.set_pool(vip4, &[spec(&v4[0], 1)]).expect("set_pool v4");
    let mapped = addr("[::ffff:10.96.7.18]:80");
    let probe = fx.probe(mapped, 50);
    assert_eq!(probe.banner(v4[0].name()), 50, "{probe:?}");
    assert_eq!(
        probe.peers.get(&mapped.to_string()),
        Some(&50),
        "getpeername6 shows the VIP"
    );
    assert_eq!(probe.counted, 50);
}

#[test]
fn detach_stops_steering_and_removes_every_pin() {
    let Some((fx, backends)) = setup("detach") else {
        return;
    };
    // A loopback VIP nobody listens on: untranslated connects are refused at once.
    let vip = addr("127.100.7.19:8000");
    let mut dp = fx.load();
    dp.set_pool(vip, &[spec(&backends[0], 1)])
        .expect("set_pool");
    fx.expect_all_reach(vip, 10, &backends[0]);
    let removed = dp.detach().expect("detach");
    assert_eq!(removed, 12, "5 links + 7 maps");
    assert!(!fx.pin_root.exists());
    let probe = fx.probe(vip, 5);
    assert_eq!(probe.errors.get("ECONNREFUSED"), Some(&5), "{probe:?}");
    assert!(matches!(
        Dataplane::open_pinned(&fx.pin_root),
        Err(DataplaneError::NotAttached { .. })
    ));
    let out = fx.cli_ok(&["detach"]);
    assert!(out.contains("nothing was attached"), "{out}");
}

#[test]
fn load_explains_what_is_wrong_with_the_environment_or_the_pins() {
    if !can_run("loaderr") {
        return;
    }
    let fx = Fixture::new("loaderr");
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = Dataplane::load(&DataplaneConfig {
        cgroup: fx.cgroup().to_path_buf(),
        pin_root: tmp.path().join("pins"),
    })
    .expect_err("pin root on tmpfs");
    assert!(
        matches!(err, DataplaneError::PinRootNotBpffs { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("mount -t bpf bpf"), "{err}");

    let err = Dataplane::load(&DataplaneConfig {
        cgroup: tmp.path().to_path_buf(),
        pin_root: fx.pin_root.clone(),
    })
    .expect_err("not a cgroup");
    assert!(matches!(err, DataplaneError::NotCgroup2 { .. }), "{err}");

    // Attached to our cgroup; asking for another cgroup on the same pins is refused.
    let _dp = fx.load();
    let other = TempCgroup::create(&format!("{}-other", fx.name)).expect("second cgroup");
    let err = Dataplane::load(&DataplaneConfig {
        cgroup: other.path().to_path_buf(),
        pin_root: fx.pin_root.clone(),
    })
    .expect_err("other cgroup");
    assert!(matches!(err, DataplaneError::OtherCgroup { .. }), "{err}");

    // A pin of the wrong shape (left by another layout) is never adopted.
    let conns = fx.pin_root.join("v1/maps/conns");
    std::fs::remove_file(&conns).expect("unpin conns");
    let wrong = aya::maps::Array::<_, u64>::create(4, 0).expect("create a map");
    wrong.pin(&conns).expect("pin the wrong map");
    let err = Dataplane::load(&fx.config()).expect_err("stale pin");
    assert!(matches!(err, DataplaneError::StalePin { .. }), "{err}");
    assert!(err.to_string().contains("conns"), "{err}");
}
