//! `switchyard epp`: the Envoy ext-proc endpoint picker.
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::exchange::ExchangeConfig;
use super::server::{EppServer, EppServerConfig, NodeReportsConfig};
use super::tls::TlsSource;
use crate::agent::tls::TlsArgs;
use crate::cluster::reports::{PoolDirectory, ReportsOptions};
use crate::serving::shutdown::termination_signal;
use crate::serving::{EjectionPolicy, Serving, ServingArgs};

#[derive(Debug, clap::Args)]
pub struct EppArgs {
    #[command(flatten)]
    pub serving: ServingArgs,
    /// Port of the ext-proc gRPC service (also serves gRPC health).
    #[arg(long, default_value_t = 9002)]
    pub grpc_port: u16,
    /// Port of the gRPC health service for probes (plaintext).
    #[arg(long, default_value_t = 9003)]
    pub grpc_health_port: u16,
    /// Port of /metrics and /debug/*.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_host: IpAddr,
    /// TLS on the ext-proc port (`--secure-serving=false` for plaintext).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub secure_serving: bool,
    /// Directory with `tls.crt` and `tls.key`; a self-signed certificate is generated when
    /// omitted.
    #[arg(long)]
    pub cert_path: Option<PathBuf>,
    /// Send the ranked endpoints `ip:port,ip:port,...` (header and metadata) instead of the
    /// primary alone, for gateways that retry down the list (not GIE's ORIGINAL_DST routing).
    #[arg(long)]
    pub destination_fallbacks: bool,
    /// After SIGTERM: how long streams keep being accepted while readiness is NOT_SERVING.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,
    /// After the drain period: longest wait for streams in flight.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Accept node agents' report streams (`--node-reports=false` to refuse them; every
    /// endpoint is then scraped by this process).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub node_reports: bool,
    /// Port of the node agents' report stream (`switchyard.v1.NodeReports`, gRPC).
    #[arg(long, default_value_t = 9004)]
    pub node_reports_port: u16,
    /// Mutual TLS on the node-report port: this EPP's certificate chain (PEM), with
    /// --node-reports-tls-key and --node-reports-tls-ca (the CA agents' certificates are signed
    /// by). Plaintext without them.
    #[arg(long)]
    pub node_reports_tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub node_reports_tls_key: Option<PathBuf>,
    #[arg(long)]
    pub node_reports_tls_ca: Option<PathBuf>,
    /// The pool's virtual address that node agents steer connects to (their eBPF dataplane);
    /// agents learn it from this EPP. Without it agents steer only pools they configure.
    #[arg(long)]
    pub pool_vip: Option<SocketAddr>,
    /// An endpoint counts as agent-covered (not scraped here) while its node reported within
    /// this long.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub agent_coverage_ttl: Duration,
}

impl EppArgs {
    pub fn server_config(&self) -> anyhow::Result<EppServerConfig> {
        Ok(EppServerConfig {
            listen_host: self.listen_host,
            grpc_port: self.grpc_port,
            health_port: self.grpc_health_port,
            metrics_port: self.metrics_port,
            tls: self.secure_serving.then(|| match &self.cert_path {
                Some(dir) => TlsSource::Dir(dir.clone()),
                None => TlsSource::SelfSigned,
            }),
            exchange: ExchangeConfig {
                destination_fallbacks: self.destination_fallbacks,
                session_header: None,
            },
            drain_period: self.drain_period,
            shutdown_timeout: self.shutdown_timeout,
            node_reports: if self.node_reports {
                Some(self.node_reports_config()?)
            } else {
                None
            },
        })
    }

    /// One pool of every endpoint this EPP serves, named after the InferencePool.
    fn node_reports_config(&self) -> anyhow::Result<NodeReportsConfig> {
        let name = self
            .serving
            .sources
            .pool_name
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let tls = TlsArgs {
            tls_cert: self.node_reports_tls_cert.clone(),
            tls_key: self.node_reports_tls_key.clone(),
            tls_ca: self.node_reports_tls_ca.clone(),
        }
        .files()
        .map_err(|err| anyhow::anyhow!("{err}").context("--node-reports-tls-*"))?;
        Ok(NodeReportsConfig {
            port: self.node_reports_port,
            tls,
            directory: PoolDirectory::single(name, self.pool_vip),
            options: ReportsOptions {
                epp_name: std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .unwrap_or_else(|_| "switchyard-epp".to_owned()),
                coverage_ttl: self.agent_coverage_ttl,
                ..ReportsOptions::default()
            },
        })
    }
}

pub async fn run(args: EppArgs) -> anyhow::Result<()> {
    // Endpoints reported by node agents: the node-report service publishes into it, and the
    // agent-less scraper skips them.
    let (covered_tx, covered_rx) = watch::channel(HashSet::new());
    let serving = Serving::start(&args.serving, EjectionPolicy::default(), covered_rx)
        .await
        .context("cannot start the endpoint picker")?;
    let mut config = args.server_config()?;
    config.exchange.session_header = serving.session_header().map(|name| name.to_string());
    let server = EppServer::bind(config, Arc::new(serving), covered_tx).await?;
    tracing::info!(
        grpc = %server.grpc_addr(),
        health = %server.health_addr(),
        metrics = %server.metrics_addr(),
        node_reports = ?server.node_reports_addr(),
        tls = args.secure_serving,
        "endpoint picker listening"
    );
    server.serve(termination_signal()).await?;
    Ok(())
}
