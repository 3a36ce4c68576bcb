//! `switchyard demo` end to end, small: every step runs (the eBPF step as root) and the tables
//! account for every request.
use std::process::Command;

#[test]
fn the_demo_runs_every_step_and_accounts_for_every_request() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: the demo's eBPF step needs root");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--log", "warn", "demo", "--requests", "40", "--rate", "20"])
        .args(["--speed", "4", "--policies", "round-robin,switchyard"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("takes the load of 4 of 4 endpoints from its reports"),
        "the agent's reports reached the EPP:\n{stdout}"
    );
    for row in [
        "EPP via ext-proc, agent-fed, switchyard",
        "proxy, round-robin",
        "proxy, switchyard",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(row) && l.contains(" / "))
            .unwrap_or_else(|| panic!("no row for {row}:\n{stdout}"));
        assert!(line.contains("40 / 40"), "every request succeeded: {line}");
    }
    if root {
        assert!(
            stdout.contains("eBPF dataplane, agent weights")
                && stdout.contains("connections opened"),
            "the dataplane step ran:\n{stdout}"
        );
    } else {
        assert!(stdout.contains("needs root"), "{stdout}");
    }
}
