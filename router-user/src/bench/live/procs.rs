//! The processes a live run starts (simulated servers, routers) and what the bench reads from
//! them: readiness, CPU time, the simulators' counters.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::bench::cpu::process_cpu;
use crate::telemetry::prom;

/// A child process, killed (and reaped) when dropped.
pub struct ChildProcess {
    name: String,
    child: Child,
}

impl ChildProcess {
    /// Starts `command` with its output discarded (stderr kept in `log` when given).
    pub fn spawn(name: &str, mut command: Command, log: Option<&Path>) -> anyhow::Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::null());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                command.stderr(file);
            }
            None => {
                command.stderr(Stdio::null());
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        process_cpu(self.pid())
            .with_context(|| format!("cannot read the CPU time of {}", self.name))
    }

    /// Fails when the process already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!("{} exited early with {status}", self.name),
            Ok(None) => Ok(()),
            Err(err) => bail!("cannot check {}: {err}", self.name),
        }
    }

    /// Waits until `GET path` on `addr` answers 200, or fails after `budget`.
    pub async fn wait_http_ok(
        &mut self,
        addr: SocketAddr,
        path: &str,
        budget: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + budget;
        loop {
            self.check_running()?;
            if let Ok((200, _)) = http_request(addr, "GET", path).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer 200 on http://{addr}{path} within {budget:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // SIGTERM first so servers shut down cleanly; SIGKILL if they linger.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// One HTTP/1.1 request without a body; `(status, body)`.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The counters of one vLLM simulator the report needs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimCounters {
    pub prefix_queries: f64,
    pub prefix_hits: f64,
    /// Finished requests of any reason.
    pub requests: f64,
}

impl SimCounters {
    pub fn since(&self, earlier: &SimCounters) -> SimCounters {
        SimCounters {
            prefix_queries: self.prefix_queries - earlier.prefix_queries,
            prefix_hits: self.prefix_hits - earlier.prefix_hits,
            requests: self.requests - earlier.requests,
        }
    }
}

/// Reads a simulator's `/metrics` (vLLM names).
pub async fn sim_counters(addr: SocketAddr) -> anyhow::Result<SimCounters> {
    let (status, text) = http_request(addr, "GET", "/metrics")
        .await
        .with_context(|| format!("cannot scrape {addr}"))?;
    if status != 200 {
        bail!("{addr}/metrics answered {status}");
    }
    parse_sim_counters(&text).with_context(|| format!("bad metrics page from {addr}"))
}

fn parse_sim_counters(text: &str) -> anyhow::Result<SimCounters> {
    let mut counters = SimCounters::default();
    prom::parse_all(text, |sample| match sample.name {
        "vllm:prefix_cache_queries_total" => counters.prefix_queries += sample.value,
        "vllm:prefix_cache_hits_total" => counters.prefix_hits += sample.value,
        "vllm:request_success_total" => counters.requests += sample.value,
        _ => {}
    })?;
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_counters_sum_label_sets() {
        let text = "\
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 100.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 40.0
# TYPE vllm:request_success counter
vllm:request_success_total{engine=\"0\",finished_reason=\"stop\",model_name=\"m\"} 3.0
vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"m\"} 4.0
";
        let counters = parse_sim_counters(text).unwrap();
        assert_eq!(
            counters,
            SimCounters {
                prefix_queries: 100.0,
                prefix_hits: 40.0,
                requests: 7.0
            }
        );
        assert_eq!(counters.since(&counters), SimCounters::default());
    }
}
