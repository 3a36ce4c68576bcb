//! `switchyard proxy`: the standalone OpenAI-compatible proxy.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::server::{ProxyConfig, ProxyServer};
use crate::serving::shutdown::termination_signal;
use crate::serving::{EjectionPolicy, Serving, ServingArgs};

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Address to serve the OpenAI API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A separate address for /metrics and /debug/* (also served on --listen).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub serving: ServingArgs,
    /// Budget to connect to a model server (a failure moves the request to the next endpoint).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Longest wait for a model server's response headers (covers queueing and prefill).
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,
    /// Consecutive 5xx answers that take an endpoint out of rotation (0: never). 4xx never do.
    #[arg(long, default_value_t = 5)]
    pub eject_after_5xx: u32,
    /// How long an endpoint stays out after a connect failure or a run of 5xx.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub eject_for: Duration,
    /// After SIGTERM: how long /health answers 503 before the listener closes.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,
    /// After the listener closed: longest wait for requests in flight.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ProxyArgs {
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            drain_period: self.drain_period,
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    pub fn ejection(&self) -> EjectionPolicy {
        EjectionPolicy {
            consecutive_5xx: self.eject_after_5xx,
            duration: self.eject_for,
        }
    }
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    // No node agents report to a standalone proxy: every member is scraped (when on).
    let (_covered_tx, covered_rx) = watch::channel(HashSet::new());
    let serving = Serving::start(&args.serving, args.ejection(), covered_rx)
        .await
        .context("cannot start the proxy")?;
    let server = ProxyServer::bind(args.config(), Arc::new(serving)).await?;
    tracing::info!(listen = %server.local_addr(), metrics = ?server.metrics_addr(), "proxy listening");
    server.serve(termination_signal()).await?;
    Ok(())
}
