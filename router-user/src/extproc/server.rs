//! The endpoint picker's listeners and their lifecycle: ext-proc gRPC (9002, TLS by default,
//! also serving gRPC health so Envoy can health-check the ext-proc cluster), gRPC health for
//! Kubernetes probes (9003, plaintext), Prometheus and debug endpoints (9090).
//!
//! Health services: `liveness` (SERVING while the process runs), `readiness`,
//! `envoy.service.ext_proc.v3.ExternalProcessor` and `""` (SERVING once the endpoint source has
//! synced, NOT_SERVING from the start of a drain). Unknown names get NOT_FOUND (grpc.health.v1).
//!
//! Drain on SIGTERM: readiness goes NOT_SERVING while streams keep being served for
//! `drain_period` (Kubernetes and Envoy stop sending new streams), then the listener closes and
//! connections get GOAWAY; streams in flight run to completion (Envoy fails a request whose
//! stream breaks once its body has flowed) up to `shutdown_timeout`.
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::exchange::ExchangeConfig;
use super::service::ExtProcService;
use super::tls::{TlsError, TlsMaterial, TlsSource};
use crate::agent::tls::{TlsError as ReportsTlsError, TlsFiles};
use crate::cluster::reports::{
    NodeReportsService, PoolDirectory, ReportsOptions, ReportsServiceError,
};
use crate::serving::Serving;
use crate::serving::http::observability_router;

/// The ext-proc service name (health checks use it).
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// Health service names besides [`EXT_PROC_SERVICE`].
pub const LIVENESS: &str = "liveness";
pub const READINESS: &str = "readiness";
/// Largest message accepted from Envoy (a BUFFERED body arrives in one message).
const MAX_DECODING_MESSAGE: usize = 64 * 1024 * 1024;

/// Where and how the endpoint picker listens.
#[derive(Clone, Debug)]
pub struct EppServerConfig {
    pub listen_host: IpAddr,
    pub grpc_port: u16,
    pub health_port: u16,
    pub metrics_port: u16,
    /// `None`: plaintext (`--secure-serving=false`).
    pub tls: Option<TlsSource>,
    pub exchange: ExchangeConfig,
    /// Time between readiness going NOT_SERVING and the listener closing.
    pub drain_period: Duration,
    /// Longest wait for streams in flight once the listener closed.
    pub shutdown_timeout: Duration,
    /// Node agents' report streams (`switchyard.v1.NodeReports`) on their own port; `None`
    /// accepts none (every endpoint is then scraped by this process).
    pub node_reports: Option<NodeReportsConfig>,
}

/// The node agents' channel: its port, its optional mutual TLS, the pools the agents steer and
/// how their reports are merged. A port of its own because its TLS is the agents' (mutual, with
/// the cluster's CA), not the ext-proc port's (a server certificate Envoy may not verify).
#[derive(Clone, Debug)]
pub struct NodeReportsConfig {
    pub port: u16,
    /// `None`: plaintext.
    pub tls: Option<TlsFiles>,
    pub directory: PoolDirectory,
    pub options: ReportsOptions,
}

impl EppServerConfig {
    /// Plaintext on 127.0.0.1, free ports, no drain period: for benchmarks and tests.
    pub fn loopback() -> Self {
        Self {
            listen_host: [127, 0, 0, 1].into(),
            grpc_port: 0,
            health_port: 0,
            metrics_port: 0,
            tls: None,
            exchange: ExchangeConfig::default(),
            drain_period: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
            node_reports: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EppError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server failed: {0}")]
    Metrics(std::io::Error),
    #[error("cannot start the node-report service: {0}")]
    NodeReports(#[from] ReportsServiceError),
    #[error("node-report TLS: {0}")]
    ReportsTls(#[from] ReportsTlsError),
}

/// Every gRPC service served on the ext-proc port (9002): ext-proc and gRPC health.
pub fn grpc_routes(
    ext_proc: ExtProcService,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
) -> Routes {
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(
            ExternalProcessorServer::new(ext_proc).max_decoding_message_size(MAX_DECODING_MESSAGE),
        )
        .add_service(health);
    routes.routes()
}

/// The node agents' port, bound, with its service and TLS (loaded once, at bind).
struct NodeReportsPort {
    service: NodeReportsService,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The bound listeners, ready to serve.
pub struct EppServer {
    config: EppServerConfig,
    serving: Arc<Serving>,
    node_reports: Option<NodeReportsPort>,
    grpc: TcpListener,
    health: TcpListener,
    metrics: TcpListener,
    tls: Option<TlsMaterial>,
}

impl std::fmt::Debug for EppServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EppServer")
            .field("grpc", &self.grpc.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

async fn bind(what: &'static str, host: IpAddr, port: u16) -> Result<TcpListener, EppError> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| EppError::Bind { what, addr, source })
}

impl EppServer {
    /// Binds the three ports (0 picks free ones) and loads or generates the certificate.
    pub async fn bind(
        config: EppServerConfig,
        serving: Arc<Serving>,
        covered: watch::Sender<HashSet<SocketAddr>>,
    ) -> Result<Self, EppError> {
        let tls = config.tls.as_ref().map(TlsMaterial::load).transpose()?;
        let grpc = bind("ext-proc gRPC", config.listen_host, config.grpc_port).await?;
        let health = bind("gRPC health", config.listen_host, config.health_port).await?;
        let metrics = bind("metrics", config.listen_host, config.metrics_port).await?;
        let node_reports = match &config.node_reports {
            Some(reports) => {
                // Loaded here, so unreadable certificates fail the start.
                let tls = reports
                    .tls
                    .as_ref()
                    .map(TlsFiles::server_config)
                    .transpose()?;
                let listener = bind("node reports", config.listen_host, reports.port).await?;
                let service = NodeReportsService::publishing_coverage(
                    serving.table().clone(),
                    reports.directory.clone(),
                    reports.options.clone(),
                    covered.clone(),
                )?;
                serving
                    .metrics()
                    .register_more(|registry| service.stats().register(registry));
                Some(NodeReportsPort {
                    service,
                    listener,
                    tls,
                })
            }
            None => None,
        };
        Ok(Self {
            config,
            serving,
            node_reports,
            grpc,
            health,
            metrics,
            tls,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        local(&self.grpc)
    }

    pub fn health_addr(&self) -> SocketAddr {
        local(&self.health)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        local(&self.metrics)
    }

    /// The node agents' report service (connected nodes, coverage, cluster weights), when
    /// configured.
    pub fn node_reports(&self) -> Option<&NodeReportsService> {
        self.node_reports.as_ref().map(|port| &port.service)
    }

    /// Where node agents connect, when node reports are on.
    pub fn node_reports_addr(&self) -> Option<SocketAddr> {
        self.node_reports.as_ref().map(|port| local(&port.listener))
    }

    /// The serving certificate (PEM), when TLS is on.
    pub fn certificate_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.cert_pem.as_str())
    }

    /// Serves until `shutdown` is cancelled, then drains (see the module docs).
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), EppError> {
        let reporter = HealthReporter::new();
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        set_ready(&reporter, false).await;
        let draining = CancellationToken::new();
        let mut readiness = tokio::spawn(follow_readiness(
            self.serving.synced(),
            reporter.clone(),
            draining.clone(),
        ));

        let ext_proc = ExtProcService::new(self.serving.admission().clone(), self.config.exchange);
        let stop_accepting = CancellationToken::new();
        let mut grpc_server = Server::builder().tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            grpc_server = grpc_server.tls_config(tls.server_config())?;
        }
        let grpc_incoming = TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let grpc_stop = stop_accepting.clone();
        let mut grpc_task = tokio::spawn(
            grpc_server
                .add_routes(grpc_routes(ext_proc, health.clone()))
                .serve_with_incoming_shutdown(
                    grpc_incoming,
                    async move { grpc_stop.cancelled().await },
                ),
        );

        let finished = CancellationToken::new();
        let health_stop = finished.clone();
        let health_task = tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(TcpIncoming::from(self.health), async move {
                    health_stop.cancelled().await
                }),
        );
        let reports_task = match self.node_reports {
            Some(NodeReportsPort {
                service,
                listener,
                tls,
            }) => {
                let mut server = Server::builder().tcp_nodelay(true);
                if let Some(tls) = tls {
                    server = server.tls_config(tls)?;
                }
                let stop = finished.clone();
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                Some(tokio::spawn(
                    server
                        .add_service(service.server())
                        .serve_with_incoming_shutdown(
                            incoming,
                            async move { stop.cancelled().await },
                        ),
                ))
            }
            None => None,
        };
        let metrics_stop = finished.clone();
        let metrics_task = tokio::spawn(async move {
            axum::serve(self.metrics, observability_router(self.serving.clone()))
                .with_graceful_shutdown(async move { metrics_stop.cancelled().await })
                .await
        });
        tracing::info!(tls = self.tls.is_some(), "endpoint picker serving");

        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            result = &mut grpc_task => Some(result),
        };
        let result = match early {
            Some(result) => flatten(result),
            None => {
                draining.cancel();
                // Stop the follower first, so it cannot set SERVING after this.
                readiness.abort();
                let _ = (&mut readiness).await;
                set_ready(&reporter, false).await;
                tracing::info!(
                    drain_seconds = self.config.drain_period.as_secs_f64(),
                    "draining: readiness NOT_SERVING, still serving streams"
                );
                tokio::time::sleep(self.config.drain_period).await;
                stop_accepting.cancel();
                tracing::info!("listener closed; waiting for streams in flight");
                match tokio::time::timeout(self.config.shutdown_timeout, &mut grpc_task).await {
                    Ok(result) => flatten(result),
                    Err(_) => {
                        tracing::warn!(
                            seconds = self.config.shutdown_timeout.as_secs_f64(),
                            "streams still open after the shutdown timeout; stopping"
                        );
                        grpc_task.abort();
                        Ok(())
                    }
                }
            }
        };
        readiness.abort();
        finished.cancel();
        let _ = health_task.await;
        if let Some(task) = reports_task
            && let Ok(Err(err)) = task.await
        {
            tracing::warn!(error = %err, "node-report server ended with an error");
        }
        if let Ok(Err(err)) = metrics_task.await {
            tracing::warn!(error = %err, "metrics server ended with an error");
        }
        tracing::info!("endpoint picker stopped");
        result
    }
}

fn local(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn flatten(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), EppError> {
    match result {
        Ok(inner) => inner.map_err(EppError::from),
        // The task was aborted or panicked: nothing left to serve.
        Err(_) => Ok(()),
    }
}

async fn set_ready(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in [READINESS, EXT_PROC_SERVICE, ""] {
        reporter.set_service_status(name, status).await;
    }
}

/// Readiness follows the endpoint source's first sync, until the drain starts.
async fn follow_readiness(
    mut synced: watch::Receiver<bool>,
    reporter: HealthReporter,
    draining: CancellationToken,
) {
    loop {
        let ready = *synced.borrow_and_update();
        if draining.is_cancelled() {
            return;
        }
        set_ready(&reporter, ready).await;
        tokio::select! {
            _ = draining.cancelled() => return,
            changed = synced.changed() => if changed.is_err() { return },
        }
    }
}
