//! Dataplane fixtures shared by the integration tests that need the real kernel (root): the
//! environment check (skip with a message, fail with `CI=true`), a per-test cgroup v2 and pin
//! root, the `switchyard dataplane` CLI and its `probe`.
#![allow(dead_code)]
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use switchyard::dataplane::{Dataplane, DataplaneConfig, cgroup::TempCgroup, probe::BannerServer};

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");

/// Why this machine cannot run the tests, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split(' ').nth(2) == Some("bpf")) {
        return Some("bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)".into());
    }
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("cgroup2"))
    {
        return Some("no cgroup v2 hierarchy is mounted".into());
    }
    None
}

/// Returns false (after saying why) when the tests cannot run here; panics instead in CI.
pub fn can_run(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: cannot run the dataplane tests in CI: {reason}")
        }
        Some(reason) => {
            eprintln!("{test}: skipped: {reason}");
            false
        }
    }
}

/// A cgroup and a pin root for one test, detached and removed on drop.
pub struct Fixture {
    pub name: String,
    cgroup: Option<TempCgroup>,
    pub pin_root: PathBuf,
}

impl Fixture {
    pub fn new(test: &str) -> Self {
        let name = format!("sy-test-{}-{test}", std::process::id());
        let cgroup = TempCgroup::create(&name).expect("create the test cgroup");
        let pin_root = PathBuf::from("/sys/fs/bpf").join(&name);
        // A previous run killed mid-way may have left pins with this name.
        let _ = Dataplane::detach_pinned(&pin_root);
        Self {
            name,
            cgroup: Some(cgroup),
            pin_root,
        }
    }

    pub fn cgroup(&self) -> &Path {
        self.cgroup.as_ref().expect("cgroup exists").path()
    }

    pub fn config(&self) -> DataplaneConfig {
        DataplaneConfig {
            cgroup: self.cgroup().to_path_buf(),
            pin_root: self.pin_root.clone(),
        }
    }

    /// Attaches in-process.
    pub fn load(&self) -> Dataplane {
        Dataplane::load(&self.config()).unwrap_or_else(|err| panic!("load failed: {err}"))
    }

    /// Runs `switchyard dataplane --pin-root <ours> <args...>` to completion.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(SWITCHYARD)
            .args(["--log", "warn", "dataplane", "--pin-root"])
            .arg(&self.pin_root)
            .args(args)
            .output()
            .expect("run switchyard")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "switchyard dataplane {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Probes `vip` `count` times from a child process inside the cgroup.
    pub fn probe(&self, vip: SocketAddr, count: u32) -> Probe {
        let cgroup = self.cgroup().to_string_lossy().into_owned();
        let out = self.cli_ok(&[
            "probe",
            "--vip",
            &vip.to_string(),
            "--count",
            &count.to_string(),
            "--cgroup",
            &cgroup,
            "--banner",
            "--timeout-ms",
            "1500",
            "--json",
        ]);
        let probe = Probe::parse(out.lines().last().expect("probe output"));
        assert_eq!(probe.attempts, u64::from(count));
        probe
    }
}

impl Fixture {
    /// Probes `vip` `count` times and checks every connect reached `backend`.
    pub fn expect_all_reach(&self, vip: SocketAddr, count: u32, backend: &BannerServer) {
        let probe = self.probe(vip, count);
        assert_eq!(
            probe.banner(backend.name()),
            u64::from(count),
            "every connect to {vip} should reach {}: {probe:?}",
            backend.name()
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(err) = Dataplane::detach_pinned(&self.pin_root) {
            eprintln!("{}: detach failed: {err}", self.name);
        }
        if let Some(cgroup) = self.cgroup.take()
            && let Err(err) = cgroup.remove()
        {
            eprintln!("{}: cgroup removal failed: {err}", self.name);
        }
    }
}

/// Parsed `probe --json` output.
#[derive(Debug)]
pub struct Probe {
    pub attempts: u64,
    pub connected: u64,
    pub errors: BTreeMap<String, u64>,
    pub peers: BTreeMap<String, u64>,
    pub banners: BTreeMap<String, u64>,
    pub steered_to: BTreeMap<String, u64>,
    pub counted: u64,
}

impl Probe {
    pub fn parse(line: &str) -> Self {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let tally = |key: &str| -> BTreeMap<String, u64> {
            value[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            attempts: value["attempts"].as_u64().unwrap_or(0),
            connected: value["connected"].as_u64().unwrap_or(0),
            errors: tally("errors"),
            peers: tally("peers"),
            banners: tally("banners"),
            steered_to: tally("steered_to"),
            counted: value["counted"].as_u64().unwrap_or(0),
        }
    }

    pub fn banner(&self, name: &str) -> u64 {
        self.banners.get(name).copied().unwrap_or(0)
    }
}
