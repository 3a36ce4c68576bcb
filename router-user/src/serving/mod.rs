//! What the endpoint picker (`switchyard epp`) and the standalone proxy (`switchyard proxy`)
//! share: where endpoints come from, how their load is learned without agents, how a request is
//! read, admitted and followed to its end, the scheduler configuration and its hot reload,
//! metrics and the decision log, and graceful shutdown.
//!
//! - [`Serving`]: the assembled state both front ends route with ([`Serving::start`]).
//! - [`sources`]: static list, endpoints file, or Kubernetes InferencePool → endpoint table.
//! - [`scrape_feed`]: agent-less scraping of the members no node agent covers.
//! - [`request_body`] + [`json_scan`]: bounded body buffer, incremental scan and prefix hashing.
//! - [`admission`]: body → decision or OpenAI-shaped refusal; [`tracker`]: the request until its
//!   response ends (in-flight, usage, timing); [`usage`]: incremental SSE / JSON usage reading.
//! - [`availability`]: source health plus passive ejection; [`policy`]: objectives, rewrites.
//! - [`metrics`], [`decisions`], [`http`]: Prometheus, the decision log, `/metrics` and
//!   `/debug/*`.
//! - [`config`]: scheduler config and reload; [`shutdown`]: signals.
pub mod admission;
pub mod availability;
pub mod config;
pub mod decisions;
pub mod http;
pub mod json_scan;
pub mod metrics;
pub mod policy;
pub mod request_body;
pub mod scrape_feed;
pub mod shutdown;
pub mod sources;
pub mod tracker;
pub mod usage;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use admission::{Admission, AdmissionParts, Rejection, RequestMeta, Routed};
pub use availability::{Availability, EjectionPolicy};
pub use config::SchedulerArgs;
pub use decisions::{DEFAULT_DECISIONS_KEPT, DecisionLog, DecisionRecord};
pub use metrics::Metrics;
pub use policy::{ModelRewrites, Objectives};
pub use request_body::RequestBody;
pub use scrape_feed::{ScrapeFeed, ScrapeFeedArgs};
pub use sources::{EndpointSource, EndpointSourceArgs};
pub use tracker::RequestTracker;

use crate::clock::{Clock, SystemClock};
use crate::cluster::EndpointTable;

/// Default limit of a request body (a long prompt is a few MiB; multimodal bodies more).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Request-policy flags.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Model rewrite `FROM=TO` (repeatable or comma-separated): requests for FROM are scheduled
    /// and forwarded as TO (the body's `model` is rewritten).
    #[arg(long = "model-rewrite", value_name = "FROM=TO")]
    pub model_rewrites: Vec<String>,
    /// InferenceObjective priorities `NAME=PRIORITY` (repeatable or comma-separated) for the
    /// `x-gateway-inference-objective` header; negative = sheddable. Kubernetes
    /// InferenceObjectives override these by name.
    #[arg(long, value_name = "NAME=PRIORITY")]
    pub objectives: Vec<String>,
    /// Request header carrying a session key for session affinity ("" to disable).
    #[arg(long, default_value = "x-session-id")]
    pub session_header: String,
    /// Largest request body accepted (413 above).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Routing decisions kept for `/debug/decisions`.
    #[arg(long, default_value_t = DEFAULT_DECISIONS_KEPT)]
    pub decisions_kept: usize,
}

impl Default for PolicyArgs {
    fn default() -> Self {
        Self {
            model_rewrites: Vec::new(),
            objectives: Vec::new(),
            session_header: "x-session-id".to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            decisions_kept: DEFAULT_DECISIONS_KEPT,
        }
    }
}

/// Every flag [`Serving`] is started from.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServingArgs {
    #[command(flatten)]
    pub sources: EndpointSourceArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    #[command(flatten)]
    pub scrape: ScrapeFeedArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

impl ServingArgs {
    /// Static endpoints, a built-in profile, a fixed seed, no scraping: for benchmarks and
    /// tests that inject loads themselves.
    pub fn fixed(endpoints: &[SocketAddr], profile: &str, seed: u64) -> Self {
        let mut args = Self::default();
        args.sources.endpoints = endpoints.to_vec();
        args.scheduler.profile = Some(profile.to_owned());
        args.scheduler.seed = Some(seed);
        args.scrape.scrape = false;
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    Source(#[from] sources::SourceError),
    #[error(transparent)]
    Scheduler(#[from] config::SchedulerConfigError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("cannot start the metrics scraper: {0}")]
    Scrape(#[from] crate::telemetry::scrape::ScrapeConfigError),
    #[error("invalid --session-header `{0}`")]
    SessionHeader(String),
}

/// The routing state of one process, assembled from [`ServingArgs`].
pub struct Serving {
    admission: Arc<Admission>,
    availability: Arc<Availability>,
    synced: watch::Receiver<bool>,
    covered: watch::Receiver<HashSet<SocketAddr>>,
    scrape: Option<ScrapeFeed>,
    session_header: Option<::http::HeaderName>,
    _source: sources::SourceHandle,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl Serving {
    /// Builds the scheduler, starts the endpoint source, the agent-less scraper (for members not
    /// in `covered`) and the config reload. Must run inside a tokio runtime.
    pub async fn start(
        args: &ServingArgs,
        ejection: EjectionPolicy,
        covered: watch::Receiver<HashSet<SocketAddr>>,
    ) -> Result<Self, ServingError> {
        Self::start_with_client(args, ejection, covered, None).await
    }

    /// [`start`](Self::start) with a given Kubernetes client for `--pool-name` (tests use a
    /// fake API server).
    pub async fn start_with_client(
        args: &ServingArgs,
        ejection: EjectionPolicy,
        covered: watch::Receiver<HashSet<SocketAddr>>,
        client: Option<kube::Client>,
    ) -> Result<Self, ServingError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let source = args.sources.source()?;
        let pool = args.sources.pool_label();
        let built = args.scheduler.build()?;
        let seed = built.seed;
        let scheduler = Arc::new(built.handle);
        let table = Arc::new(EndpointTable::new());
        let metrics = Arc::new(Metrics::new(&pool));
        let objectives = Arc::new(Objectives::parse(&args.policy.objectives)?);
        let rewrites = Arc::new(ModelRewrites::parse(&args.policy.model_rewrites)?);
        let session_header = match args.policy.session_header.trim() {
            "" => None,
            name => Some(
                ::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ServingError::SessionHeader(name.to_owned()))?,
            ),
        };
        let availability = Arc::new(Availability::new(
            table.clone(),
            scheduler.clone(),
            ejection,
        ));
        let admission = Arc::new(Admission::new(AdmissionParts {
            table: table.clone(),
            scheduler: scheduler.clone(),
            rewrites,
            objectives: objectives.clone(),
            metrics: metrics.clone(),
            decisions: Arc::new(DecisionLog::new(args.policy.decisions_kept)),
            clock: clock.clone(),
            max_body_bytes: args.policy.max_body_bytes,
        }));
        tracing::info!(profile = %scheduler.current().name(), seed, pool = %pool, "scheduler ready");
        let source =
            sources::start_source(source, &pool, availability.clone(), objectives, client).await?;
        let scrape = if args.scrape.scrape {
            Some(ScrapeFeed::spawn(
                &args.scrape,
                table,
                covered.clone(),
                clock,
            )?)
        } else {
            None
        };
        let mut background = Vec::new();
        if let Some(path) = &args.scheduler.config {
            background.push(config::spawn_reload(
                path.clone(),
                built.config_text,
                scheduler,
                args.scheduler.options(seed),
                metrics,
            ));
        }
        let expiring = availability.clone();
        background.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                expiring.expire(Instant::now());
            }
        }));
        Ok(Self {
            admission,
            availability,
            synced: source.synced.clone(),
            covered,
            scrape,
            session_header,
            _source: source,
            background,
        })
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn availability(&self) -> &Arc<Availability> {
        &self.availability
    }

    pub fn table(&self) -> &Arc<EndpointTable> {
        self.admission.table()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.admission.metrics()
    }

    /// `true` once the endpoint source delivered its first complete set.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The session-affinity header, when enabled.
    pub fn session_header(&self) -> Option<&::http::HeaderName> {
        self.session_header.as_ref()
    }

    pub fn scrape_feed(&self) -> Option<&ScrapeFeed> {
        self.scrape.as_ref()
    }

    /// The metrics text, with the pool and endpoint gauges recomputed now.
    pub fn metrics_text(&self) -> String {
        let snapshot = self.table().snapshot();
        let states = match &self.scrape {
            Some(feed) => feed.states(&snapshot),
            None => scrape_feed::unscraped_states(&snapshot, &self.covered.borrow()),
        };
        let now = SystemClock.now();
        self.metrics().refresh(&snapshot, now, &states);
        self.metrics().encode()
    }
}
