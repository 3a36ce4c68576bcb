//! The agent's end of the node-report stream: connect to the EPP, send a report every
//! `report_interval` (deltas, [`ReportEncoder`]), receive cluster views, reconnect with
//! jittered exponential backoff when anything goes wrong.
//!
//! The link never blocks the agent: it reads the latest [`NodeView`] from a watch channel and
//! publishes views on another. A report that cannot be queued (the EPP is not reading) is not
//! encoded at all, so no delta is lost. A stream on which no view arrives for `view_timeout`
//! is treated as dead (the EPP sends one at least every second).
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::backoff::{Backoff, BackoffPolicy};
use super::metrics::AgentMetrics;
use super::proto::pb::node_reports_client::NodeReportsClient;
use super::proto::{ClusterView, MAX_MESSAGE_BYTES, NodeReport};
use super::report::{DEFAULT_FULL_EVERY, ReportEncoder};
use super::tls::{TlsError, TlsFiles};
use super::view::NodeView;
use crate::clock::{Clock, MICROS_PER_SEC, Micros};

/// Where and how to reach the EPP.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// `host:port` of the EPP's gRPC port (9002).
    pub epp: String,
    pub tls: Option<TlsFiles>,
    /// Name the EPP's certificate must carry (default: the host part of `epp`).
    pub tls_server_name: Option<String>,
    /// Time between two reports (50 ms: 20 a second).
    pub report_interval: Duration,
    pub connect_timeout: Duration,
    /// A stream without a view for this long is dead.
    pub view_timeout: Duration,
    pub backoff: BackoffPolicy,
    /// Reports between two full ones.
    pub full_every: u64,
    pub node: String,
    /// Identifies this agent process to the EPP (random at start).
    pub instance: u64,
}

impl LinkConfig {
    pub fn new(epp: impl Into<String>, node: impl Into<String>, instance: u64) -> Self {
        Self {
            epp: epp.into(),
            tls: None,
            tls_server_name: None,
            report_interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            view_timeout: Duration::from_secs(3),
            backoff: BackoffPolicy::default(),
            full_every: DEFAULT_FULL_EVERY,
            node: node.into(),
            instance,
        }
    }

    /// The endpoint to dial, with TLS when configured. Fails on a bad address or TLS files.
    pub fn endpoint(&self) -> Result<Endpoint, LinkError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let authority = self
            .epp
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
            .map_err(|err| LinkError::Address {
                epp: self.epp.clone(),
                reason: err.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            let host = match &self.tls_server_name {
                Some(name) => name.clone(),
                None => host_of(authority),
            };
            endpoint = endpoint.tls_config(tls.client_config(&host)?)?;
        }
        Ok(endpoint)
    }
}

/// The host part of `host:port` (without brackets for IPv6).
fn host_of(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("--epp `{epp}`: {reason}")]
    Address { epp: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS set-up: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A cluster view and when it arrived (agent clock).
#[derive(Clone, Debug)]
pub struct ReceivedView {
    pub view: ClusterView,
    pub received_at: Micros,
}

/// The running link.
pub struct Link {
    pub views: watch::Receiver<Option<Arc<ReceivedView>>>,
    pub task: JoinHandle<()>,
}

/// Starts the link on the current runtime. Fails only on configuration errors (address, TLS
/// files); connection problems are retried for as long as the link runs.
pub fn spawn_link(
    config: LinkConfig,
    nodes: watch::Receiver<Arc<NodeView>>,
    metrics: Arc<AgentMetrics>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<Link, LinkError> {
    let endpoint = config.endpoint()?;
    let (tx, views) = watch::channel(None);
    let task = tokio::spawn(run_link(
        config, endpoint, nodes, tx, metrics, clock, shutdown,
    ));
    Ok(Link { views, task })
}

enum SessionEnd {
    Shutdown,
    /// The stream ended; `healthy`: it delivered at least one view.
    Ended {
        reason: String,
        healthy: bool,
    },
}

async fn run_link(
    config: LinkConfig,
    endpoint: Endpoint,
    nodes: watch::Receiver<Arc<NodeView>>,
    views: watch::Sender<Option<Arc<ReceivedView>>>,
    metrics: Arc<AgentMetrics>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut encoder = ReportEncoder::new(config.node.clone(), config.instance, config.full_every);
    let mut backoff = Backoff::new(config.backoff);
    let mut rng = StdRng::from_os_rng();
    let mut failing = false;
    loop {
        let session = Session {
            config: &config,
            nodes: nodes.clone(),
            views: &views,
            metrics: &metrics,
            clock: clock.as_ref(),
            shutdown: &shutdown,
        };
        match session.run(&endpoint, &mut encoder).await {
            SessionEnd::Shutdown => break,
            SessionEnd::Ended { reason, healthy } => {
                metrics.epp_connected.set(0);
                if healthy {
                    backoff.reset();
                }
                let delay = backoff.next_delay(&mut rng);
                if !failing || healthy {
                    tracing::warn!(epp = %config.epp, error = %reason, retry_in = ?delay,
                        "EPP unreachable; steering on the last cluster weights blended with local scores");
                } else {
                    tracing::debug!(epp = %config.epp, error = %reason, retry_in = ?delay, "EPP still unreachable");
                }
                failing = true;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    metrics.epp_connected.set(0);
}

struct Session<'a> {
    config: &'a LinkConfig,
    nodes: watch::Receiver<Arc<NodeView>>,
    views: &'a watch::Sender<Option<Arc<ReceivedView>>>,
    metrics: &'a AgentMetrics,
    clock: &'a dyn Clock,
    shutdown: &'a CancellationToken,
}

impl Session<'_> {
    async fn run(mut self, endpoint: &Endpoint, encoder: &mut ReportEncoder) -> SessionEnd {
        let ended = |reason: String| SessionEnd::Ended {
            reason,
            healthy: false,
        };
        let channel: Channel = tokio::select! {
            () = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            connected = endpoint.connect() => match connected {
                Ok(channel) => channel,
                Err(err) => {
                    self.metrics.epp_connect("error");
                    return ended(format!("connect: {}", error_chain(&err)));
                }
            },
        };
        let mut client = NodeReportsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        encoder.reset();
        let (tx, rx) = mpsc::channel::<NodeReport>(8);
        // The first report goes out with the call, so the EPP knows the node at once.
        self.send_report(&tx, encoder);
        let call = client.report(ReceiverStream::new(rx));
        let response = tokio::select! {
            () = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            response = tokio::time::timeout(self.config.connect_timeout, call) => response,
        };
        let mut inbound = match response {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                self.metrics.epp_connect("error");
                return ended(format!("report stream refused: {status}"));
            }
            Err(_) => {
                self.metrics.epp_connect("error");
                return ended(format!(
                    "no answer to the report stream within {:?}",
                    self.config.connect_timeout
                ));
            }
        };
        self.metrics.epp_connect("ok");
        self.metrics.epp_connected.set(1);
        tracing::info!(epp = %self.config.epp, node = %self.config.node, "report stream to the EPP open");

        let mut ticker = tokio::time::interval(self.config.report_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut view_deadline = tokio::time::Instant::now() + self.config.view_timeout;
        let mut healthy = false;
        let mut last_ack = 0;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = ticker.tick() => {
                    if tx.is_closed() {
                        return SessionEnd::Ended { reason: "the EPP closed the report stream".into(), healthy };
                    }
                    self.send_report(&tx, encoder);
                }
                message = inbound.message() => match message {
                    Ok(Some(view)) => {
                        healthy = true;
                        view_deadline = tokio::time::Instant::now() + self.config.view_timeout;
                        let now = self.clock.now();
                        self.metrics.views_received.inc();
                        if view.ack_seq > last_ack && view.ack_sent_at_us > 0 {
                            last_ack = view.ack_seq;
                            self.metrics
                                .report_round_trip
                                .observe(now.saturating_sub(view.ack_sent_at_us) as f64 / MICROS_PER_SEC as f64);
                        }
                        self.views.send_replace(Some(Arc::new(ReceivedView { view, received_at: now })));
                    }
                    Ok(None) => return SessionEnd::Ended { reason: "the EPP ended the report stream".into(), healthy },
                    Err(status) => return SessionEnd::Ended { reason: format!("report stream failed: {status}"), healthy },
                },
                () = tokio::time::sleep_until(view_deadline) => {
                    return SessionEnd::Ended {
                        reason: format!("no cluster view for {:?}", self.config.view_timeout),
                        healthy,
                    };
                }
            }
        }
    }

    /// Encodes and queues one report, unless the stream is full (then nothing is encoded, so
    /// the next report still carries every change).
    fn send_report(&mut self, tx: &mpsc::Sender<NodeReport>, encoder: &mut ReportEncoder) {
        let Ok(permit) = tx.try_reserve() else {
            self.metrics.reports_skipped.inc();
            return;
        };
        let view = self.nodes.borrow_and_update().clone();
        let now = self.clock.now();
        let report = encoder.encode(&view, now);
        for endpoint in &report.endpoints {
            if endpoint.load_seq != 0 {
                self.metrics.report_sample_age.observe(
                    now.saturating_sub(endpoint.load_sampled_at_us) as f64 / MICROS_PER_SEC as f64,
                );
            }
        }
        permit.send(report);
        self.metrics.reports_sent.inc();
    }
}

/// An error with its sources, on one line (tonic's transport errors hide the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses_and_server_names() {
        assert_eq!(host_of("epp.default.svc:9002"), "epp.default.svc");
        assert_eq!(host_of("[::1]:9002"), "::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        let config = LinkConfig::new("127.0.0.1:9002", "n1", 1);
        assert!(config.endpoint().is_ok());
        let config = LinkConfig::new("http://epp:9002", "n1", 1);
        assert_eq!(
            config.endpoint().unwrap().uri().to_string(),
            "http://epp:9002/"
        );
        let bad = LinkConfig::new("bad address with spaces", "n1", 1);
        let err = bad.endpoint().unwrap_err().to_string();
        assert!(err.contains("--epp `bad address with spaces`"), "{err}");
    }
}
