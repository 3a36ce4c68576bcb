//! sglang-router 0.3.2 for the comparison: installed by the bench into a virtualenv under the
//! cache directory (`python3 -m venv`, `pip install sglang-router==0.3.2`) on first use, then
//! launched per run as `python -m sglang_router.launch_router`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use super::procs::ChildProcess;

const PACKAGE: &str = "sglang-router==0.3.2";

fn importable(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import sglang_router.launch_router"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run_step(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("{what}: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("no output");
    Err(format!("{what} failed ({}): {last}", output.status))
}

/// The virtualenv's python with sglang-router importable, installing it when `install`;
/// otherwise why it is not available.
pub async fn ensure(cache_dir: &Path, install: bool) -> Result<PathBuf, String> {
    let venv = cache_dir.join("venv");
    let python = venv.join("bin/python");
    let blocking = tokio::task::spawn_blocking(move || {
        if importable(&python) {
            return Ok(python);
        }
        if !install {
            return Err(format!(
                "{PACKAGE} is not installed in {} and --no-install was given",
                venv.display()
            ));
        }
        if !python.exists() {
            run_step(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv",
            )?;
        }
        tracing::info!(venv = %venv.display(), "installing {PACKAGE}");
        run_step(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                "--retries",
                "1",
                PACKAGE,
            ]),
            "pip install",
        )?;
        if importable(&python) {
            Ok(python)
        } else {
            Err(format!(
                "{PACKAGE} installed but `sglang_router` does not import"
            ))
        }
    });
    blocking
        .await
        .map_err(|err| format!("installer thread failed: {err}"))?
}

/// Starts the router over `workers` and waits until it forwards (`/v1/models` answers 200).
pub async fn launch(
    python: &Path,
    workers: &[SocketAddr],
    policy: &str,
    listen: SocketAddr,
    prometheus: SocketAddr,
    log: &Path,
) -> anyhow::Result<ChildProcess> {
    let mut command = Command::new(python);
    command
        .args(["-m", "sglang_router.launch_router", "--worker-urls"])
        .args(workers.iter().map(|addr| format!("http://{addr}")))
        .args(["--policy", policy, "--host", "127.0.0.1"])
        .args(["--port", &listen.port().to_string()])
        .args(["--prometheus-host", "127.0.0.1"])
        .args(["--prometheus-port", &prometheus.port().to_string()])
        .args(["--log-level", "warn"]);
    let mut process = ChildProcess::spawn(&format!("sglang-router ({policy})"), command, Some(log))
        .context("starting sglang-router")?;
    process
        .wait_http_ok(listen, "/v1/models", Duration::from_secs(60))
        .await?;
    // Workers register in the background; the first answer means one is; give the rest time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(process)
}
