//! The `switchyard.v1.NodeReports` gRPC service the EPP serves to node agents.
//!
//! Per stream: reports are merged into the endpoint table as they arrive; the first report
//! names the node and its interest (the pools it steers). Cluster weights are computed once for
//! every pool (not per stream), whenever a report changed something (at most every
//! `weights_min_interval`) and at least every `weights_max_interval`; each stream sends its
//! node the pools it asked for when they changed, and at least every `weights_max_interval`
//! (the agent treats silence as staleness).
use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Request, Response, Status, Streaming};

use super::directory::PoolDirectory;
use super::merge::{Merger, ReportError, StreamId};
use super::weights::{ClusterWeights, compute_weights};
use crate::agent::proto::pb::node_reports_server::{NodeReports, NodeReportsServer};
use crate::agent::proto::{
    ClusterView, Interest, MAX_MESSAGE_BYTES, NodeReport, PoolWeights, SCHEMA_VERSION, parse_addr,
};
use crate::agent::score::ScoreParams;
use crate::clock::{Clock, Micros, SystemClock};
use crate::cluster::EndpointTable;
use crate::scheduling::GpuHealthParams;

/// How often the covered set is recomputed (and how late a silent node leaves it, at most).
const COVERAGE_TICK: Duration = Duration::from_millis(100);

/// Settings of the node-report service.
#[derive(Clone)]
pub struct ReportsOptions {
    /// This EPP's name in views (pod name), for the agents' logs.
    pub epp_name: String,
    pub score: ScoreParams,
    pub gpu_health: GpuHealthParams,
    /// An endpoint stays covered while its node reported within this long.
    pub coverage_ttl: Duration,
    /// Weights are recomputed at most this often...
    pub weights_min_interval: Duration,
    /// ...and at least this often; each stream also sends a view at least this often.
    pub weights_max_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

impl Default for ReportsOptions {
    fn default() -> Self {
        Self {
            epp_name: String::new(),
            score: ScoreParams::default(),
            gpu_health: GpuHealthParams::default(),
            coverage_ttl: Duration::from_millis(500),
            weights_min_interval: Duration::from_millis(20),
            weights_max_interval: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for ReportsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportsOptions")
            .field("epp_name", &self.epp_name)
            .field("coverage_ttl", &self.coverage_ttl)
            .field("weights_min_interval", &self.weights_min_interval)
            .field("weights_max_interval", &self.weights_max_interval)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportsServiceError {
    #[error("the node-report service must be created inside a tokio runtime")]
    NoRuntime,
}

/// Counters of the service, for the EPP's `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ReportsStats {
    /// Reports by outcome: `applied`, `stale`, `superseded`, `invalid`.
    pub reports: Family<Vec<(String, String)>, Counter>,
    /// Entries of applied reports that were skipped (a field did not parse).
    pub rejected_entries: Counter,
    pub views_sent: Counter,
    /// Views not sent because the agent was not reading (the next one carries newer weights).
    pub views_skipped: Counter,
    pub streams_opened: Counter,
    pub streams_open: Gauge,
    pub covered_endpoints: Gauge,
}

impl ReportsStats {
    fn report(&self, outcome: &str) {
        self.reports
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    /// Registers every counter under `switchyard_epp_node_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_epp_node_reports",
            "Node reports received, by outcome (applied, stale, superseded, invalid)",
            self.reports.clone(),
        );
        registry.register(
            "switchyard_epp_node_report_rejected_entries",
            "Entries of node reports skipped because a field did not parse",
            self.rejected_entries.clone(),
        );
        registry.register(
            "switchyard_epp_node_views_sent",
            "Cluster views sent to node agents",
            self.views_sent.clone(),
        );
        registry.register(
            "switchyard_epp_node_views_skipped",
            "Cluster views not sent because the agent was not reading",
            self.views_skipped.clone(),
        );
        registry.register(
            "switchyard_epp_node_streams_opened",
            "Node report streams opened",
            self.streams_opened.clone(),
        );
        registry.register(
            "switchyard_epp_node_streams",
            "Node report streams open now",
            self.streams_open.clone(),
        );
        registry.register(
            "switchyard_epp_node_covered_endpoints",
            "Endpoints whose load fresh agent reports cover (the agent-less scraper skips them)",
            self.covered_endpoints.clone(),
        );
    }
}

/// What the background tasks and the streams share.
struct Core {
    merger: Merger,
    directory: PoolDirectory,
    options: ReportsOptions,
    stats: ReportsStats,
    weights: watch::Receiver<Arc<ClusterWeights>>,
    dirty: Notify,
    covered: watch::Sender<HashSet<SocketAddr>>,
    next_stream: AtomicU64,
}

struct Shared {
    core: Arc<Core>,
    /// Stops the background tasks when the last handle (service or server) is dropped.
    _stop: DropGuard,
}

/// The EPP side of node reports. Cheap to clone; every clone serves the same state.
///
/// ```ignore
/// let reports = NodeReportsService::new(table.clone(), PoolDirectory::single("llama", vip), options)?;
/// let covered = reports.covered();                // the agent-less scraper skips these
/// Server::builder().add_service(reports.server()).serve(addr).await?;
/// ```
#[derive(Clone)]
pub struct NodeReportsService {
    shared: Arc<Shared>,
}

impl NodeReportsService {
    /// Starts the weight and coverage tasks on the current tokio runtime.
    pub fn new(
        table: Arc<EndpointTable>,
        directory: PoolDirectory,
        options: ReportsOptions,
    ) -> Result<Self, ReportsServiceError> {
        Self::publishing_coverage(table, directory, options, watch::channel(HashSet::new()).0)
    }

    /// As [`NodeReportsService::new`], publishing the covered set into `covered` (the channel
    /// the agent-less scraper already watches).
    pub fn publishing_coverage(
        table: Arc<EndpointTable>,
        directory: PoolDirectory,
        options: ReportsOptions,
        covered: watch::Sender<HashSet<SocketAddr>>,
    ) -> Result<Self, ReportsServiceError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ReportsServiceError::NoRuntime)?;
        let now = options.clock.now();
        let initial = compute_weights(
            &table.snapshot(),
            &directory.pools(),
            directory.synced(),
            now,
            &options.score,
            &options.gpu_health,
        );
        let (weights_tx, weights) = watch::channel(Arc::new(initial));
        let core = Arc::new(Core {
            merger: Merger::new(table),
            directory,
            options,
            stats: ReportsStats::default(),
            weights,
            dirty: Notify::new(),
            covered,
            next_stream: AtomicU64::new(1),
        });
        let stop = CancellationToken::new();
        runtime.spawn(weights_loop(core.clone(), weights_tx, stop.clone()));
        runtime.spawn(coverage_loop(core.clone(), stop.clone()));
        Ok(Self {
            shared: Arc::new(Shared {
                core,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The tonic service to add to a server.
    pub fn server(&self) -> NodeReportsServer<Self> {
        NodeReportsServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Endpoints whose load fresh agent reports cover; changes as nodes come and go.
    pub fn covered(&self) -> watch::Receiver<HashSet<SocketAddr>> {
        self.shared.core.covered.subscribe()
    }

    /// The latest cluster weights of every pool.
    pub fn weights(&self) -> watch::Receiver<Arc<ClusterWeights>> {
        self.shared.core.weights.clone()
    }

    pub fn stats(&self) -> &ReportsStats {
        &self.shared.core.stats
    }

    /// Nodes with an open report stream.
    pub fn connected_nodes(&self) -> usize {
        self.shared.core.merger.connected_nodes()
    }
}

type ViewStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ClusterView, Status>> + Send>>;

#[tonic::async_trait]
impl NodeReports for NodeReportsService {
    type ReportStream = ViewStream;

    async fn report(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let core = self.shared.core.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // Keeps the background tasks alive while the stream runs.
            let _shared = shared;
            run_stream(core, inbound, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One agent's stream: apply its reports, send it its pools' weights.
async fn run_stream(
    core: Arc<Core>,
    mut inbound: Streaming<NodeReport>,
    tx: mpsc::Sender<Result<ClusterView, Status>>,
) {
    let stream: StreamId = core.next_stream.fetch_add(1, Ordering::Relaxed);
    core.stats.streams_opened.inc();
    core.stats.streams_open.inc();
    let mut weights = core.weights.clone();
    let mut sender = ViewSender::default();
    let max_interval = core.options.weights_max_interval;
    let mut deadline = tokio::time::Instant::now() + max_interval;
    let mut node = String::new();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let report = match message {
                    Ok(Some(report)) => report,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %node, error = %status, "node report stream failed");
                        break;
                    }
                };
                let now = core.options.clock.now();
                match core.merger.apply(stream, &report, now) {
                    Ok(applied) => {
                        core.stats.report("applied");
                        if node.is_empty() {
                            node.clone_from(&report.node);
                            tracing::info!(node = %node, instance = report.instance, "node agent connected");
                        }
                        if !applied.rejected.is_empty() {
                            core.stats.rejected_entries.inc_by(applied.rejected.len() as u64);
                            tracing::debug!(node = %node, errors = ?applied.rejected, "skipped report entries");
                        }
                        let first = sender.interest.is_none();
                        if let Some(interest) = applied.interest {
                            sender.set_interest(&interest);
                        }
                        sender.ack = (report.seq, report.sent_at_us);
                        if applied.changed {
                            core.dirty.notify_one();
                        }
                        if first {
                            // Answer at once: the agent should not wait a second for weights.
                            let view = weights.borrow_and_update().clone();
                            if sender.send(&core, &tx, &view, true) {
                                deadline = tokio::time::Instant::now() + max_interval;
                            }
                        }
                    }
                    Err(err @ ReportError::Invalid(_)) => {
                        core.stats.report("invalid");
                        tracing::warn!(node = %report.node, error = %err, "ending a node report stream");
                        let _ = tx.send(Err(Status::invalid_argument(err.to_string()))).await;
                        break;
                    }
                    Err(err @ ReportError::Stale { .. }) => {
                        core.stats.report("stale");
                        tracing::debug!(error = %err);
                    }
                    Err(err @ ReportError::Superseded { .. }) => {
                        core.stats.report("superseded");
                        tracing::debug!(error = %err);
                        let _ = tx.send(Err(Status::aborted(err.to_string()))).await;
                        break;
                    }
                }
            }
            changed = weights.changed() => {
                if changed.is_err() {
                    break;
                }
                let view = weights.borrow_and_update().clone();
                if sender.send(&core, &tx, &view, false) {
                    deadline = tokio::time::Instant::now() + max_interval;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let view = weights.borrow().clone();
                sender.send(&core, &tx, &view, true);
                deadline = tokio::time::Instant::now() + max_interval;
            }
            () = tx.closed() => break,
        }
    }
    core.merger.close_stream(stream, core.options.clock.now());
    core.stats.streams_open.dec();
    publish_coverage(&core);
}

/// What one stream sent last, to send only changes (plus the periodic refresh).
#[derive(Default)]
struct ViewSender {
    interest: Option<(Vec<SocketAddr>, bool)>,
    last: Option<(Vec<PoolWeights>, bool)>,
    seq: u64,
    ack: (u64, Micros),
}

impl ViewSender {
    fn set_interest(&mut self, interest: &Interest) {
        let vips = interest
            .pool_vips
            .iter()
            .filter_map(|vip| parse_addr("interest.pool_vips", vip).ok())
            .collect();
        self.interest = Some((vips, interest.discover_pools));
        self.last = None;
    }

    /// Sends the node's pools from `weights` if they changed (or always with `force`); returns
    /// whether a view went out.
    fn send(
        &mut self,
        core: &Core,
        tx: &mpsc::Sender<Result<ClusterView, Status>>,
        weights: &ClusterWeights,
        force: bool,
    ) -> bool {
        let Some((vips, discover)) = &self.interest else {
            return false;
        };
        let pools: Vec<PoolWeights> = weights.for_interest(vips, *discover).cloned().collect();
        let state = (pools, weights.complete);
        if !force && self.last.as_ref() == Some(&state) {
            return false;
        }
        self.seq += 1;
        let view = ClusterView {
            schema_version: SCHEMA_VERSION,
            seq: self.seq,
            computed_at_us: weights.computed_at,
            ack_seq: self.ack.0,
            ack_sent_at_us: self.ack.1,
            pools: state.0.clone(),
            complete: state.1,
            epp: core.options.epp_name.clone(),
        };
        match tx.try_send(Ok(view)) {
            Ok(()) => {
                core.stats.views_sent.inc();
                self.last = Some(state);
                true
            }
            Err(_) => {
                core.stats.views_skipped.inc();
                false
            }
        }
    }
}

async fn weights_loop(
    core: Arc<Core>,
    tx: watch::Sender<Arc<ClusterWeights>>,
    stop: CancellationToken,
) {
    let min = core.options.weights_min_interval;
    let max = core.options.weights_max_interval;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = core.dirty.notified() => {}
            () = tokio::time::sleep(max) => {}
        }
        let now = core.options.clock.now();
        let weights = compute_weights(
            &core.merger.table().snapshot(),
            &core.directory.pools(),
            core.directory.synced(),
            now,
            &core.options.score,
            &core.options.gpu_health,
        );
        tx.send_if_modified(|current| {
            if current.pools == weights.pools && current.complete == weights.complete {
                return false;
            }
            *current = Arc::new(weights);
            true
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(min) => {}
        }
    }
}

async fn coverage_loop(core: Arc<Core>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(COVERAGE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => publish_coverage(&core),
        }
    }
}

fn publish_coverage(core: &Core) {
    let ttl = core.options.coverage_ttl.as_micros() as Micros;
    let covered = core.merger.covered(core.options.clock.now(), ttl);
    core.stats.covered_endpoints.set(covered.len() as i64);
    core.covered.send_if_modified(|current| {
        if *current == covered {
            return false;
        }
        *current = covered;
        true
    });
}
