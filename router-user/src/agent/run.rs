//! The agent's loop: sense (scrapes, GPU rounds, connection counters, cluster views), decide
//! (verdicts, scores, blends) and act (program the dataplane, publish the node view that the
//! report link and the HTTP port read).
//!
//! The loop is event-driven: a new scrape, GPU round, cluster view or pod list triggers a
//! pass, and passes are at least [`MIN_PASS_SPACING`] apart so a burst of scrapes from many
//! endpoints costs one pass. A pass reads the connection counters when they are older than
//! `connections_interval` (50 ms). A slow ticker ([`IDLE_PASS_EVERY`]) runs a pass when nothing
//! happens, so ages grow (stale loads, decaying cluster trust, dead servers) without events;
//! with scrapes every 50 ms it rarely fires, and every wake-up it saves is CPU the agent does
//! not spend (docs/benchmarks.md, Node agent).
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::endpoints::{LocalEndpoint, PodDiscovery};
use super::gpus::{GpuOptions, GpuRound, GpuSource, GpuTracker};
use super::http::{self, Probes};
use super::link::{LinkConfig, LinkError, ReceivedView, spawn_link};
use super::metrics::{AgentMetrics, MapUpdate};
use super::pools::{PoolBook, PoolPlan, StaticPool};
use super::score::{
    BackendInputs, ClusterInput, LoadReading, PoolScores, ScoreParams, blend, score_pool,
};
use super::steering::{Programmed, Steering, SteeringError};
use super::verdict::{ScrapeFailure, VerdictParams, drain_for, throttled};
use super::view::{ConnectionView, EndpointView, GpuView, InterestView, NodeView, PoolView};
use crate::clock::{Clock, MICROS_PER_SEC, Micros};
use crate::dataplane::BackendSpec;
use crate::k8s::NodePods;
use crate::telemetry::gpu_source::TelemetrySelectError;
use crate::telemetry::scrape::{EndpointStatus, ScrapeConfig, ScrapeConfigError, Scraper};

/// Passes are at least this far apart (scrapes of many endpoints arrive together).
pub const MIN_PASS_SPACING: Duration = Duration::from_millis(5);

/// A pass runs at least this often even without events.
pub const IDLE_PASS_EVERY: Duration = Duration::from_millis(100);

/// Where the agent's model servers come from.
pub enum Discovery {
    /// `--endpoints`.
    Static(Vec<LocalEndpoint>),
    /// The node's pods (Kubernetes), filtered by the discovery rules.
    Pods {
        pods: watch::Receiver<NodePods>,
        discovery: PodDiscovery,
    },
}

/// Everything the agent needs to run (the CLI builds it from flags, file and environment).
pub struct AgentConfig {
    pub node: String,
    pub discovery: Discovery,
    pub pools: Vec<StaticPool>,
    /// Program the pools the EPP knows a VIP for.
    pub discover_pools: bool,
    /// Scrape cadence (its targets are the discovered endpoints).
    pub scrape: ScrapeConfig,
    pub gpu: GpuOptions,
    pub gpu_interval: Duration,
    pub connections_interval: Duration,
    pub score: ScoreParams,
    pub verdict: VerdictParams,
    pub cgroup: Option<PathBuf>,
    pub pin_root: PathBuf,
    /// The EPP to report to, if any.
    pub link: Option<LinkConfig>,
    /// Where `/metrics`, `/healthz`, `/readyz` are served (port 0: any).
    pub http: Option<SocketAddr>,
    /// Pools are not written until every endpoint was scraped once, or this long after start
    /// (a restarted agent must not replace good weights with "all unknown").
    pub warmup: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Scrape(#[from] ScrapeConfigError),
    #[error(transparent)]
    Telemetry(#[from] TelemetrySelectError),
    #[error(transparent)]
    Steering(#[from] SteeringError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the agent loop failed: {0}")]
    Task(String),
}

/// A running agent.
pub struct RunningAgent {
    /// The node view after every pass.
    pub views: watch::Receiver<Arc<NodeView>>,
    pub metrics: Arc<AgentMetrics>,
    pub probes: Arc<Probes>,
    /// The bound HTTP address, when serving.
    pub http: Option<SocketAddr>,
    /// Whether the dataplane is programmed (false: running without steering).
    pub steering: bool,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    link: Option<JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops the agent and waits for it: the loop, the link and the HTTP port end; the pinned
    /// dataplane keeps steering with the last weights (nothing is detached).
    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the agent stops (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), AgentError> {
        self.task
            .await
            .map_err(|err| AgentError::Task(err.to_string()))?;
        if let Some(link) = self.link {
            link.await
                .map_err(|err| AgentError::Task(err.to_string()))?;
        }
        Ok(())
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the agent on the current runtime; it runs until `shutdown` is cancelled.
pub async fn start(
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<RunningAgent, AgentError> {
    let metrics = Arc::new(AgentMetrics::new());
    let probes = Arc::new(Probes::default());
    let steering = Steering::open(config.cgroup.as_deref(), &config.pin_root)?;
    metrics.steering.set(i64::from(steering.active()));

    let endpoints = match &config.discovery {
        Discovery::Static(endpoints) => endpoints.clone(),
        Discovery::Pods { pods, discovery } => discovery.endpoints(&pods.borrow()),
    };
    let addrs: Vec<SocketAddr> = endpoints.iter().map(LocalEndpoint::addr).collect();
    let gpu_source = GpuSource::select(&config.gpu, &addrs, clock.clone())?;
    metrics.set_telemetry_state(gpu_source.state().label());
    let telemetry = gpu_source.state().label();
    let mut scrape = config.scrape.clone();
    scrape.targets = endpoints.iter().map(|e| e.target.clone()).collect();
    let scraper = Scraper::spawn(scrape, clock.clone())?;

    let (endpoints_tx, endpoints_rx) = watch::channel(endpoints.clone());
    let (gpu_tx, gpu_rounds) = watch::channel(Arc::new(GpuRound::default()));
    let gpu_present = gpu_source.state().is_present();
    if gpu_present {
        tokio::spawn(gpu_loop(
            gpu_source,
            endpoints_rx,
            gpu_tx,
            config.gpu_interval,
            shutdown.clone(),
        ));
    }

    let book = PoolBook::new(config.pools.clone(), config.discover_pools);
    let initial = NodeView {
        node: config.node.clone(),
        at: clock.now(),
        telemetry,
        interest: InterestView {
            pool_vips: book.static_vips(),
            discover_pools: book.discovers(),
        },
        ..NodeView::default()
    };
    let (node_tx, views) = watch::channel(Arc::new(initial));

    let (link, link_views) = match config.link.clone() {
        Some(link_config) => {
            let link = spawn_link(
                link_config,
                views.clone(),
                metrics.clone(),
                clock.clone(),
                shutdown.clone(),
            )?;
            (Some(link.task), Some(link.views))
        }
        None => (None, None),
    };
    let http = match config.http {
        Some(addr) => Some(
            http::serve(
                addr,
                metrics.clone(),
                probes.clone(),
                views.clone(),
                clock.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(|source| AgentError::Http { addr, source })?,
        ),
        None => None,
    };
    if let Some(addr) = http {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /debug/state");
    }

    let steering_active = steering.active();
    let mut agent = Loop {
        started: clock.now(),
        steering,
        scraper,
        gpus: GpuTracker::new(config.verdict.gpu.clone()),
        gpu_rounds,
        telemetry,
        endpoints,
        endpoints_tx,
        first_seen: HashMap::new(),
        scrape_counts: HashMap::new(),
        connections: BTreeMap::new(),
        connection_seq: 0,
        connections_read: None,
        pools: book,
        views: link_views,
        node_tx,
        pool_states: HashMap::new(),
        warmed_up: false,
        shown_scores: HashMap::new(),
        shown_weights: HashMap::new(),
        metrics: metrics.clone(),
        probes: probes.clone(),
        clock,
        config,
    };
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { agent.run(shutdown).await }
    });
    Ok(RunningAgent {
        views,
        metrics,
        probes,
        http,
        steering: steering_active,
        shutdown,
        task,
        link,
    })
}

async fn gpu_loop(
    source: GpuSource,
    endpoints: watch::Receiver<Vec<LocalEndpoint>>,
    tx: watch::Sender<Arc<GpuRound>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = endpoints.borrow().clone();
        let round = tokio::select! {
            () = shutdown.cancelled() => return,
            round = source.sample(&current) => round,
        };
        for error in &round.errors {
            tracing::debug!(error = %error, "GPU reading failed");
        }
        tx.send_replace(Arc::new(round));
    }
}

/// What the loop remembers about a pool between passes (to log changes once).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PoolState {
    kept_least_bad: bool,
    refusing: bool,
    cluster_aging: bool,
}

struct Loop {
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<AgentMetrics>,
    probes: Arc<Probes>,
    started: Micros,
    steering: Steering,
    scraper: Scraper,
    gpus: GpuTracker,
    /// GPU rounds (a sender exists only with telemetry).
    gpu_rounds: watch::Receiver<Arc<GpuRound>>,
    /// `nvml`, `sim` or `absent`.
    telemetry: &'static str,
    endpoints: Vec<LocalEndpoint>,
    endpoints_tx: watch::Sender<Vec<LocalEndpoint>>,
    first_seen: HashMap<SocketAddr, Micros>,
    /// Successes and failures seen per endpoint (to count scrape metrics once each).
    scrape_counts: HashMap<SocketAddr, (u64, u64)>,
    connections: BTreeMap<SocketAddr, ConnectionView>,
    connection_seq: u64,
    connections_read: Option<Instant>,
    pools: PoolBook,
    views: Option<watch::Receiver<Option<Arc<ReceivedView>>>>,
    node_tx: watch::Sender<Arc<NodeView>>,
    pool_states: HashMap<SocketAddr, PoolState>,
    warmed_up: bool,
    /// What the per-endpoint and per-backend gauges show (updated on change only).
    shown_scores: HashMap<SocketAddr, (f64, bool)>,
    shown_weights: HashMap<(SocketAddr, SocketAddr), u32>,
}

impl Loop {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut scrapes = self.scraper.subscribe();
        let mut pods = match &self.config.discovery {
            Discovery::Pods { pods, .. } => Some(pods.clone()),
            Discovery::Static(_) => None,
        };
        let mut views = self.views.clone();
        // Without GPU telemetry nothing sends rounds: leave that branch out.
        let mut gpu_rounds = (self.telemetry != "absent").then(|| self.gpu_rounds.clone());
        let mut idle = tokio::time::interval(IDLE_PASS_EVERY);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pass = Instant::now() - MIN_PASS_SPACING;
        let mut pending = false;
        loop {
            let spacing = tokio::time::Instant::from_std(last_pass + MIN_PASS_SPACING);
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = scrapes.changed() => {
                    if changed.is_err() { break; }
                    pending = true;
                }
                round = next_round(&mut gpu_rounds) => {
                    match round {
                        Some(round) => {
                            self.gpus.apply(&round, self.clock.now());
                            pending = true;
                        }
                        None => gpu_rounds = None,
                    }
                }
                changed = changed_view(&mut views) => {
                    if changed { pending = true; } else { views = None; }
                }
                changed = changed_pods(&mut pods) => {
                    if changed { self.refresh_endpoints(); pending = true; } else { pods = None; }
                }
                _ = idle.tick() => {
                    pending |= last_pass.elapsed() >= IDLE_PASS_EVERY / 2;
                }
                () = tokio::time::sleep_until(spacing), if pending => {}
            }
            if pending && last_pass.elapsed() >= MIN_PASS_SPACING {
                pending = false;
                last_pass = Instant::now();
                self.pass();
            }
        }
        tracing::info!("agent stopping; the pinned dataplane keeps steering with the last weights");
    }

    /// The node's pods changed: new endpoint set for the scraper and the GPU reader.
    fn refresh_endpoints(&mut self) {
        let Discovery::Pods { pods, discovery } = &self.config.discovery else {
            return;
        };
        let endpoints = discovery.endpoints(&pods.borrow());
        if endpoints == self.endpoints {
            return;
        }
        let targets = endpoints.iter().map(|e| e.target.clone()).collect();
        if let Err(err) = self.scraper.set_targets(targets) {
            tracing::warn!(error = %err, "cannot scrape the node's new endpoint set");
            return;
        }
        tracing::info!(
            endpoints = endpoints.len(),
            "model servers on this node changed"
        );
        let addrs: Vec<SocketAddr> = endpoints.iter().map(LocalEndpoint::addr).collect();
        self.gpus.retain_endpoints(&addrs);
        for gone in self.endpoints.iter().filter(|e| !addrs.contains(&e.addr())) {
            self.metrics.forget_endpoint(&gone.addr().to_string());
            self.shown_scores.remove(&gone.addr());
        }
        self.first_seen.retain(|addr, _| addrs.contains(addr));
        self.scrape_counts.retain(|addr, _| addrs.contains(addr));
        self.endpoints = endpoints;
        self.endpoints_tx.send_replace(self.endpoints.clone());
    }

    /// Reads the connection counters if they are older than `connections_interval`.
    fn read_connections(&mut self) {
        if !self.steering.active()
            || self
                .connections_read
                .is_some_and(|at| at.elapsed() < self.config.connections_interval)
        {
            return;
        }
        self.connections_read = Some(Instant::now());
        match self.steering.connection_counts() {
            Ok(counts) => {
                let now = self.clock.now();
                self.connection_seq += 1;
                self.connections = counts
                    .into_iter()
                    .map(|(addr, count)| {
                        (
                            addr,
                            ConnectionView {
                                addr,
                                opened: count.opened,
                                closed: count.closed,
                                seq: self.connection_seq,
                                counted_at: now,
                            },
                        )
                    })
                    .collect();
            }
            Err(err) => tracing::warn!(error = %err, "cannot read connection counters"),
        }
    }

    fn pass(&mut self) {
        let started = Instant::now();
        self.read_connections();
        let now = self.clock.now();
        if let Some(views) = &self.views
            && let Some(view) = views.borrow().clone()
        {
            for vip in self.pools.apply_view(&view) {
                tracing::info!(%vip, "the EPP no longer lists this pool; removing it");
                self.shown_weights.retain(|(pool, backend), _| {
                    let keep = *pool != vip;
                    if !keep {
                        self.metrics
                            .forget_backend(&vip.to_string(), &backend.to_string());
                    }
                    keep
                });
                if let Err(err) = self.steering.remove(vip) {
                    tracing::warn!(%vip, error = %err, "cannot remove the pool");
                }
                self.pool_states.remove(&vip);
            }
        }

        let mut statuses: HashMap<SocketAddr, EndpointStatus> =
            HashMap::with_capacity(self.endpoints.len());
        self.scraper.for_each(|status| {
            statuses.insert(status.target.addr, status.clone());
        });
        self.record_scrapes(&statuses);

        // Verdicts and inputs of the local endpoints.
        let mut local: BTreeMap<SocketAddr, (BackendInputs, EndpointView)> = BTreeMap::new();
        for endpoint in &self.endpoints {
            let addr = endpoint.addr();
            let first_seen = *self.first_seen.entry(addr).or_insert(now);
            let status = statuses.get(&addr);
            let uuids = self.gpus.owned_by(&addr).to_vec();
            let gpus: Vec<&GpuView> = uuids
                .iter()
                .filter_map(|uuid| self.gpus.get(uuid))
                .collect();
            let drain = drain_for(
                status,
                first_seen,
                endpoint.pod.as_ref().map(|p| p.ready),
                &gpus,
                now,
                &self.config.verdict,
            );
            let load = status.and_then(|s| s.load.clone());
            let inputs = BackendInputs {
                addr,
                load: load.as_ref().map(LoadReading::of),
                throttled: throttled(&gpus, now, &self.config.verdict),
                live_connections: self.connections.get(&addr).map(ConnectionView::live),
                drain: drain.clone(),
            };
            let view = EndpointView {
                addr,
                pod: endpoint.pod.as_ref().map(|p| p.name.clone()),
                engine: status.and_then(|s| s.engine),
                load,
                scrape_error: status
                    .filter(|s| s.scrape.is_failing())
                    .and_then(|s| s.scrape.last_error.as_ref().map(|(_, m)| m.clone())),
                gpus: uuids,
                drain,
                score: 0.0,
            };
            local.insert(addr, (inputs, view));
        }
        // The node's own ranking of its endpoints (reported, shown in snapshots).
        let node_inputs: Vec<BackendInputs> = local.values().map(|(i, _)| i.clone()).collect();
        let node_scores = score_pool(&node_inputs, now, &self.config.score);
        for score in &node_scores.backends {
            if let Some((_, view)) = local.get_mut(&score.addr) {
                view.score = score.score;
                let shown = (score.score, view.drain.is_some());
                let last = self.shown_scores.insert(score.addr, shown);
                if last.is_none_or(|(s, d)| (s - shown.0).abs() >= 0.001 || d != shown.1) {
                    self.metrics
                        .endpoint(&score.addr.to_string(), shown.0, shown.1);
                }
            }
        }

        if !self.warmed_up {
            let all_scraped = self.endpoints.iter().all(|e| {
                statuses
                    .get(&e.addr())
                    .is_some_and(|s| s.scrape.successes + s.scrape.failures > 0)
            });
            let waited =
                now.saturating_sub(self.started) >= self.config.warmup.as_micros() as Micros;
            self.warmed_up = all_scraped || waited;
        }
        let pools = self.program_pools(&local, now);

        let view = NodeView {
            node: self.config.node.clone(),
            at: now,
            telemetry: self.telemetry,
            endpoints: local.into_values().map(|(_, view)| view).collect(),
            connections: self.connections.values().copied().collect(),
            gpus: self.gpus.views(),
            pools,
            interest: InterestView {
                pool_vips: self.pools.static_vips(),
                discover_pools: self.pools.discovers(),
            },
        };
        self.node_tx.send_replace(Arc::new(view));
        self.update_probes(now);
        self.metrics.passes.inc();
        self.metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
    }

    fn record_scrapes(&mut self, statuses: &HashMap<SocketAddr, EndpointStatus>) {
        for (addr, status) in statuses {
            let counts = self.scrape_counts.entry(*addr).or_default();
            let scrape = &status.scrape;
            if scrape.successes + scrape.failures > counts.0 + counts.1
                && let Some(latency) = scrape.latency
            {
                self.metrics
                    .scrape_latency
                    .observe(latency as f64 / MICROS_PER_SEC as f64);
            }
            if scrape.failures > counts.1
                && let Some((_, message)) = &scrape.last_error
            {
                let kind = ScrapeFailure::of(message).label();
                self.metrics.scrape_error(&addr.to_string(), kind);
            }
            *counts = (scrape.successes, scrape.failures);
        }
    }

    /// Scores, blends and programs every pool; returns what was programmed.
    fn program_pools(
        &mut self,
        local: &BTreeMap<SocketAddr, (BackendInputs, EndpointView)>,
        now: Micros,
    ) -> Vec<PoolView> {
        let plans: Vec<(PoolPlan<'_>, PoolScores)> = self
            .pools
            .plans()
            .into_iter()
            .map(|plan| {
                let inputs: Vec<BackendInputs> = plan
                    .backends
                    .iter()
                    .map(|addr| match local.get(addr) {
                        Some((inputs, _)) => inputs.clone(),
                        None => BackendInputs {
                            live_connections: self.connections.get(addr).map(ConnectionView::live),
                            ..BackendInputs::new(*addr)
                        },
                    })
                    .collect();
                let scores = score_pool(&inputs, now, &self.config.score);
                (plan, scores)
            })
            .collect();
        let mut views = Vec::with_capacity(plans.len());
        let mut writes: Vec<(SocketAddr, Vec<BackendSpec>)> = Vec::new();
        let mut log: Vec<(SocketAddr, PoolState, f64, Option<Micros>)> = Vec::new();
        for (plan, scores) in &plans {
            let cluster_age = plan.cluster.map(|c| now.saturating_sub(c.received_at));
            let weights = blend(
                scores,
                plan.cluster.zip(cluster_age).map(|(c, age)| ClusterInput {
                    backends: &c.backends,
                    age,
                }),
                &self.config.score,
            );
            let specs: Vec<BackendSpec> = weights
                .backends
                .iter()
                .map(|b| BackendSpec {
                    addr: b.addr,
                    weight: b.weight,
                    down: b.down,
                })
                .collect();
            writes.push((plan.vip, specs));
            let state = PoolState {
                kept_least_bad: scores.kept_least_bad,
                refusing: scores.all_dead,
                cluster_aging: weights.trust < 1.0 && plan.cluster.is_some(),
            };
            log.push((plan.vip, state, weights.trust, cluster_age));
            views.push(PoolView {
                vip: plan.vip,
                name: plan.name.map(str::to_owned),
                source: plan.source,
                weights,
                cluster_age,
                kept_least_bad: scores.kept_least_bad,
                refusing: scores.all_dead,
            });
        }
        drop(plans);
        for (vip, state, trust, age) in log {
            self.log_pool_state(vip, state, trust, age);
        }
        let (trust, age) = views
            .iter()
            .filter_map(|v| v.cluster_age.map(|age| (v.weights.trust, age)))
            .fold(
                (None, None),
                |(t, a): (Option<f64>, Option<Micros>), (trust, age)| {
                    (
                        Some(t.map_or(trust, |t| t.min(trust))),
                        Some(a.map_or(age, |a| a.max(age))),
                    )
                },
            );
        self.metrics.cluster_trust.set(trust.unwrap_or(0.0));
        self.metrics
            .cluster_weights_age
            .set(age.map_or(-1.0, |a| a as f64 / MICROS_PER_SEC as f64));
        if self.warmed_up {
            for (vip, specs) in writes {
                for spec in &specs {
                    let weight = if spec.down { 0 } else { spec.weight };
                    if self.shown_weights.insert((vip, spec.addr), weight) != Some(weight) {
                        self.metrics.backend_weight(
                            &vip.to_string(),
                            &spec.addr.to_string(),
                            weight,
                        );
                    }
                }
                match self.steering.program(vip, &specs) {
                    Ok(Programmed::Unchanged) => self.metrics.map_update(MapUpdate::Unchanged),
                    Ok(Programmed::Written {
                        changed,
                        table_swapped,
                    }) => {
                        self.metrics.map_update(if changed {
                            MapUpdate::Written
                        } else {
                            MapUpdate::Unchanged
                        });
                        if table_swapped {
                            self.metrics.table_swaps.inc();
                        }
                    }
                    Ok(Programmed::NoSteering) => {}
                    Err(err) => {
                        self.metrics.map_update(MapUpdate::Error);
                        tracing::warn!(%vip, error = %err, "cannot program the pool");
                    }
                }
            }
        }
        views
    }

    fn log_pool_state(
        &mut self,
        vip: SocketAddr,
        state: PoolState,
        trust: f64,
        age: Option<Micros>,
    ) {
        let before = self.pool_states.insert(vip, state).unwrap_or_default();
        if state.kept_least_bad && !before.kept_least_bad {
            tracing::warn!(%vip, "every backend of the pool is drained; keeping the least bad ones rather than refusing all connects");
        }
        if state.refusing && !before.refusing {
            tracing::warn!(%vip, "every backend of the pool is dead; connects to it are refused");
        }
        if !state.kept_least_bad && !state.refusing && (before.kept_least_bad || before.refusing) {
            tracing::info!(%vip, "the pool has healthy backends again");
        }
        if state.cluster_aging && !before.cluster_aging {
            tracing::warn!(%vip, age_ms = age.unwrap_or(0) / 1_000, trust,
                "cluster weights are stale; blending them with local scores as they age");
        }
        if !state.cluster_aging && before.cluster_aging {
            tracing::info!(%vip, "fresh cluster weights again");
        }
    }

    fn update_probes(&self, now: Micros) {
        self.probes.passed(now);
        let synced = match &self.config.discovery {
            Discovery::Pods { pods, .. } => pods.borrow().synced,
            Discovery::Static(_) => true,
        };
        if !synced {
            self.probes
                .set_ready(false, "waiting for the node's pod list");
        } else if !self.warmed_up {
            self.probes
                .set_ready(false, "waiting for the first scrape of every endpoint");
        } else {
            self.probes.set_ready(true, "");
        }
    }
}

async fn next_round(rounds: &mut Option<watch::Receiver<Arc<GpuRound>>>) -> Option<Arc<GpuRound>> {
    match rounds {
        Some(rounds) => match rounds.changed().await {
            Ok(()) => Some(rounds.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

async fn changed_view(views: &mut Option<watch::Receiver<Option<Arc<ReceivedView>>>>) -> bool {
    match views {
        Some(views) => views.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn changed_pods(pods: &mut Option<watch::Receiver<NodePods>>) -> bool {
    match pods {
        Some(pods) => pods.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
