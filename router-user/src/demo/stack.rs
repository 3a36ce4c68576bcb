//! The demo's control plane on loopback: the endpoint picker (in this process, with the node
//! agents' report service on its ext-proc port) and a real `switchyard agent` child process that
//! scrapes the simulated servers, reads their simulated GPUs, streams node reports to the EPP
//! and, as root, programs the eBPF dataplane of a temporary cgroup with the pool's weights.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bench::live::procs::ChildProcess;
use crate::cluster::reports::{ClusterWeights, NodeReportsService, PoolDirectory, ReportsOptions};
use crate::dataplane::scratch::SteeringScratch;
use crate::extproc::{EppError, EppServer, EppServerConfig, NodeReportsConfig};
use crate::serving::{EjectionPolicy, Serving, ServingArgs};

/// The pool's name in the EPP and the agents' views.
pub const POOL_NAME: &str = "demo-pool";

/// The endpoint picker, serving on free loopback ports until dropped.
pub struct Epp {
    /// The ext-proc port (plaintext), where a gateway asks for destinations.
    pub ext_proc: SocketAddr,
    /// The node agents' report port.
    pub reports_addr: SocketAddr,
    pub reports: NodeReportsService,
    covered: watch::Receiver<HashSet<SocketAddr>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), EppError>>,
}

impl Epp {
    /// Starts the picker over `endpoints` with the built-in `profile`; agents learn the pool
    /// at `vip`. Endpoints no agent covers are scraped by the picker itself.
    pub async fn start(
        endpoints: &[SocketAddr],
        profile: &str,
        vip: SocketAddr,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let mut args = ServingArgs::fixed(endpoints, profile, seed);
        args.scrape.scrape = true;
        let (covered_tx, covered) = watch::channel(HashSet::new());
        let serving = Arc::new(
            Serving::start(&args, EjectionPolicy::default(), covered.clone())
                .await
                .context("cannot start the endpoint picker")?,
        );
        let config = EppServerConfig {
            node_reports: Some(NodeReportsConfig {
                port: 0,
                tls: None,
                directory: PoolDirectory::single(POOL_NAME, Some(vip)),
                options: ReportsOptions {
                    epp_name: "demo-epp".to_owned(),
                    ..ReportsOptions::default()
                },
            }),
            ..EppServerConfig::loopback()
        };
        let server = EppServer::bind(config, serving, covered_tx).await?;
        let reports = server
            .node_reports()
            .cloned()
            .context("the node-report service is configured")?;
        let ext_proc = server.grpc_addr();
        let grpc = server
            .node_reports_addr()
            .context("the node-report port is configured")?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Ok(Self {
            ext_proc,
            reports_addr: grpc,
            reports,
            covered,
            shutdown,
            task,
        })
    }

    /// How many endpoints take their load from agents' reports (not scraped by the EPP).
    pub fn covered_count(&self) -> usize {
        self.covered.borrow().len()
    }

    pub fn weights(&self) -> Arc<ClusterWeights> {
        self.reports.weights().borrow().clone()
    }

    /// Waits until agents cover `count` endpoints.
    async fn wait_covered(&self, count: usize, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut covered = self.covered.clone();
        tokio::time::timeout(limit, covered.wait_for(|set| set.len() >= count))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the agent's reports did not cover {count} endpoints within {limit:?} (covered: {})",
                    self.covered.borrow().len()
                )
            })?
            .context("the EPP stopped")?;
        Ok(started.elapsed())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.task.await {
            Ok(Err(err)) => tracing::warn!(error = %err, "the endpoint picker ended with an error"),
            Err(err) => tracing::warn!(error = %err, "the endpoint picker's task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// A `switchyard agent` child process, stopped when dropped.
pub struct AgentProcess {
    child: ChildProcess,
    log: PathBuf,
    /// The agent failed: its log stays for the user to read.
    keep_log: bool,
}

impl AgentProcess {
    pub fn spawn(
        endpoints: &[SocketAddr],
        epp: SocketAddr,
        steering: Option<&SteeringScratch>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("switchyard"));
        let list = endpoints
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new(exe);
        command
            .args(["--log", "warn", "agent", "--node-name", "demo-node"])
            .args(["--endpoints", &list, "--epp", &epp.to_string()])
            .args(["--telemetry", "sim", "--metrics-port", "0"])
            .args(["--metrics-address", "127.0.0.1"]);
        match steering {
            Some(steering) => {
                command
                    .arg("--cgroup")
                    .arg(steering.cgroup())
                    .arg("--pin-root")
                    .arg(steering.pin_root());
            }
            // No root: no dataplane; point the pins somewhere empty so nothing is adopted.
            None => {
                command
                    .arg("--pin-root")
                    .arg(std::env::temp_dir().join("switchyard-demo-no-pins"));
            }
        }
        let log =
            std::env::temp_dir().join(format!("switchyard-demo-agent-{}.log", std::process::id()));
        let child = ChildProcess::spawn("switchyard agent", command, Some(&log))?;
        Ok(Self {
            child,
            log,
            keep_log: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Fails if the agent already exited (the error names its log).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let running = self.child.check_running();
        self.keep_log |= running.is_err();
        running.with_context(|| format!("the agent's log: {}", self.log.display()))
    }

    /// Waits until `epp` has the agent's reports for `count` endpoints.
    pub async fn wait_covered(&mut self, epp: &Epp, count: usize) -> anyhow::Result<()> {
        if let Err(err) = epp.wait_covered(count, Duration::from_secs(20)).await {
            self.check_running()?;
            return Err(err);
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
