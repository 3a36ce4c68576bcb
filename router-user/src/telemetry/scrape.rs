//! Polls the local model servers' metrics pages and keeps one [`EndpointLoad`] per endpoint.
//!
//! Each endpoint has its own task and interval (a slow server delays nobody else), its own
//! reused body buffer and normaliser state. Readers see a table of [`EndpointStatus`] and a
//! [`watch`] counter that moves on every update. Rules the consumers rely on:
//! - an endpoint never scraped successfully has no load (`load: None`): unknown, never idle;
//! - a failed scrape keeps the last load with its old `sampled_at` (its age grows) and records
//!   the error in [`ScrapeState`].
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use crate::clock::{Clock, Micros};
use crate::telemetry::engines::{
    LoadNormalizer, NormalizeError, default_metrics_path, server_filter_names,
};
use crate::telemetry::http::{HttpError, HttpGetter};
use crate::telemetry::load::{EndpointLoad, EngineKind};

/// Ask for the classic text format: prometheus_client would otherwise be free to pick OpenMetrics.
const ACCEPT_TEXT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// One model server to poll.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScrapeTarget {
    pub addr: SocketAddr,
    /// `None`: detected from the metric names on the page.
    pub engine: Option<EngineKind>,
    /// `None`: the engine's default (`/prometheus/metrics` for trtllm-serve, else `/metrics`).
    pub path: Option<String>,
}

impl ScrapeTarget {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            engine: None,
            path: None,
        }
    }

    pub fn with_engine(mut self, engine: EngineKind) -> Self {
        self.engine = Some(engine);
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn path(&self) -> &str {
        self.path
            .as_deref()
            .unwrap_or_else(|| default_metrics_path(self.engine))
    }

    pub fn uri(&self) -> Result<Uri, ScrapeConfigError> {
        format!("http://{}{}", self.addr, self.path())
            .parse()
            .map_err(|err| ScrapeConfigError::BadPath {
                target: self.to_string(),
                reason: format!("{err}"),
            })
    }
}

/// `ADDR[/PATH][@ENGINE]`, e.g. `10.0.3.7:8000@vllm` or `10.0.3.8:8000/prometheus/metrics`.
impl FromStr for ScrapeTarget {
    type Err = ScrapeConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ScrapeConfigError::BadTarget {
            target: text.to_owned(),
            reason,
        };
        let (rest, engine) = match text.rsplit_once('@') {
            Some((rest, engine)) => (rest, Some(engine.parse::<EngineKind>().map_err(bad)?)),
            None => (text, None),
        };
        let (addr, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], Some(rest[slash..].to_owned())),
            None => (rest, None),
        };
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|err| bad(format!("`{addr}` is not IP:PORT ({err})")))?;
        let target = Self { addr, engine, path };
        target.uri()?;
        Ok(target)
    }
}

impl fmt::Display for ScrapeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.addr, self.path())?;
        if let Some(engine) = self.engine {
            write!(f, "@{engine}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    pub targets: Vec<ScrapeTarget>,
    /// Time between two scrapes of one endpoint.
    pub interval: Duration,
    /// Budget of one scrape (connect, request, body); must not exceed `interval`.
    pub timeout: Duration,
    /// Largest body accepted; bigger pages fail the scrape instead of exhausting memory.
    pub max_body_bytes: usize,
    /// Ask prometheus_client servers (vLLM, trtllm-serve) for only the samples we read
    /// (`?name[]=…`); an endpoint whose filtered page lacks them falls back to full pages.
    pub server_side_filter: bool,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(40),
            max_body_bytes: 8 << 20,
            server_side_filter: true,
        }
    }
}

impl ScrapeConfig {
    pub fn validate(&self) -> Result<(), ScrapeConfigError> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(ScrapeConfigError::ZeroDuration);
        }
        if self.timeout > self.interval {
            return Err(ScrapeConfigError::TimeoutAboveInterval {
                timeout: self.timeout,
                interval: self.interval,
            });
        }
        for target in &self.targets {
            target.uri()?;
        }
        Ok(())
    }
}

/// The scrape cadence flags, for the agent and the EPP's agent-less mode to flatten.
#[derive(Clone, Debug, clap::Args)]
pub struct ScrapeArgs {
    /// Time between two scrapes of one model server.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
    /// Budget of one scrape; at most the interval.
    #[arg(long, default_value = "40ms", value_parser = humantime::parse_duration)]
    pub scrape_timeout: Duration,
    /// Always fetch whole metrics pages (no `?name[]=` filtering).
    #[arg(long)]
    pub no_server_side_filter: bool,
}

impl ScrapeArgs {
    pub fn config(&self, targets: Vec<ScrapeTarget>) -> ScrapeConfig {
        ScrapeConfig {
            targets,
            interval: self.scrape_interval,
            timeout: self.scrape_timeout,
            server_side_filter: !self.no_server_side_filter,
            ..ScrapeConfig::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeConfigError {
    #[error("the scraper must be started inside a tokio runtime")]
    NoRuntime,
    #[error("scrape interval and timeout must be above zero")]
    ZeroDuration,
    #[error(
        "scrape timeout {timeout:?} exceeds the interval {interval:?}: scrapes of one endpoint would overlap"
    )]
    TimeoutAboveInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("bad scrape target `{target}`: {reason}")]
    BadTarget { target: String, reason: String },
    #[error("bad metrics path in `{target}`: {reason}")]
    BadPath { target: String, reason: String },
}

/// Why one scrape failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("body is not UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
    #[error(transparent)]
    Config(#[from] ScrapeConfigError),
}

/// How scraping one endpoint is going.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrapeState {
    /// When the last successful scrape finished.
    pub last_ok: Option<Micros>,
    /// The last failure and when it happened (kept after recovery, for diagnosis).
    pub last_error: Option<(Micros, String)>,
    pub consecutive_failures: u32,
    /// Duration of the last scrape, successful or not.
    pub latency: Option<Micros>,
    pub successes: u64,
    pub failures: u64,
}

impl ScrapeState {
    pub fn is_failing(&self) -> bool {
        self.consecutive_failures > 0
    }
}

/// What is known about one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStatus {
    pub target: ScrapeTarget,
    /// The engine the page is read as (configured or detected), once known.
    pub engine: Option<EngineKind>,
    /// The last good reading; `None` until the first successful scrape.
    pub load: Option<EndpointLoad>,
    pub scrape: ScrapeState,
}

impl EndpointStatus {
    fn new(target: ScrapeTarget) -> Self {
        Self {
            engine: target.engine,
            target,
            load: None,
            scrape: ScrapeState::default(),
        }
    }
}

struct Shared {
    table: RwLock<HashMap<SocketAddr, EndpointStatus>>,
    updates: watch::Sender<u64>,
    tasks: Mutex<HashMap<SocketAddr, (ScrapeTarget, AbortHandle)>>,
    getter: HttpGetter,
    clock: Arc<dyn Clock>,
    interval: Duration,
    fetch: FetchPolicy,
    /// The runtime the tasks run on, so `set_targets` works from any thread.
    runtime: tokio::runtime::Handle,
}

/// The running poller. Dropping it stops every scrape task.
pub struct Scraper {
    shared: Arc<Shared>,
}

impl Scraper {
    /// Starts one task per target on the current tokio runtime (later targets join it too).
    pub fn spawn(config: ScrapeConfig, clock: Arc<dyn Clock>) -> Result<Self, ScrapeConfigError> {
        config.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ScrapeConfigError::NoRuntime)?;
        let (updates, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            table: RwLock::new(HashMap::new()),
            updates,
            tasks: Mutex::new(HashMap::new()),
            getter: HttpGetter::new(config.timeout),
            clock,
            interval: config.interval,
            fetch: FetchPolicy {
                timeout: config.timeout,
                max_body_bytes: config.max_body_bytes,
                server_filter: config.server_side_filter,
            },
            runtime,
        });
        let scraper = Self { shared };
        scraper.set_targets(config.targets)?;
        Ok(scraper)
    }

    /// Replaces the endpoint set: new targets start, removed ones stop and leave the table,
    /// targets whose engine or path changed start over; unchanged ones keep their state.
    pub fn set_targets(&self, targets: Vec<ScrapeTarget>) -> Result<(), ScrapeConfigError> {
        for target in &targets {
            target.uri()?;
        }
        let wanted: HashMap<SocketAddr, ScrapeTarget> =
            targets.into_iter().map(|t| (t.addr, t)).collect();
        let mut tasks = self.shared.tasks.lock();
        let mut table = self.shared.table.write();
        tasks.retain(|addr, (target, handle)| {
            let keep = wanted.get(addr) == Some(target);
            if !keep {
                handle.abort();
                table.remove(addr);
            }
            keep
        });
        for (addr, target) in wanted {
            if tasks.contains_key(&addr) {
                continue;
            }
            table.insert(addr, EndpointStatus::new(target.clone()));
            let handle = self
                .shared
                .runtime
                .spawn(scrape_loop(Arc::clone(&self.shared), target.clone()));
            tasks.insert(addr, (target, handle.abort_handle()));
        }
        drop(table);
        drop(tasks);
        self.shared.updates.send_modify(|version| *version += 1);
        Ok(())
    }

    /// A counter that moves whenever any endpoint's status changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.updates.subscribe()
    }

    pub fn status(&self, addr: SocketAddr) -> Option<EndpointStatus> {
        self.shared.table.read().get(&addr).cloned()
    }

    /// Every endpoint, sorted by address.
    pub fn statuses(&self) -> Vec<EndpointStatus> {
        let mut all: Vec<_> = self.shared.table.read().values().cloned().collect();
        all.sort_by_key(|status| status.target.addr);
        all
    }

    /// The last good reading of `addr`, if it was ever scraped successfully.
    pub fn load(&self, addr: SocketAddr) -> Option<EndpointLoad> {
        self.shared.table.read().get(&addr)?.load.clone()
    }

    /// Calls `visit` on each endpoint under the read lock (no copies).
    pub fn for_each(&self, mut visit: impl FnMut(&EndpointStatus)) {
        for status in self.shared.table.read().values() {
            visit(status);
        }
    }

    pub fn shutdown(&self) {
        for (_, (_, handle)) in self.shared.tasks.lock().drain() {
            handle.abort();
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How one scrape may fetch.
#[derive(Clone, Copy, Debug)]
struct FetchPolicy {
    timeout: Duration,
    max_body_bytes: usize,
    server_filter: bool,
}

/// Whether the server honours `?name[]=` (prometheus_client's restricted registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerFilter {
    Untried,
    Works,
    /// The filtered page lacked what we need (e.g. multiprocess mode): full pages from now on.
    Unsupported,
}

/// What one endpoint's task carries from scrape to scrape.
struct TargetWorker {
    target: ScrapeTarget,
    uri: Uri,
    /// The filtered URI and the engine it was built for.
    filtered: Option<(EngineKind, Uri)>,
    server_filter: ServerFilter,
    normalizer: LoadNormalizer,
    body: Vec<u8>,
    load: EndpointLoad,
}

impl TargetWorker {
    fn new(target: &ScrapeTarget) -> Result<Self, ScrapeConfigError> {
        Ok(Self {
            target: target.clone(),
            uri: target.uri()?,
            filtered: None,
            server_filter: ServerFilter::Untried,
            normalizer: LoadNormalizer::new(target.engine),
            body: Vec::with_capacity(64 << 10),
            load: EndpointLoad::default(),
        })
    }

    async fn scrape(
        &mut self,
        getter: &HttpGetter,
        clock: &dyn Clock,
        policy: FetchPolicy,
    ) -> Result<(), ScrapeError> {
        let deadline = tokio::time::Instant::now() + policy.timeout;
        if policy.server_filter
            && self.server_filter != ServerFilter::Unsupported
            && let Some(uri) = self.filtered_uri()
        {
            let result = match self.fetch(getter, &uri, deadline, policy).await {
                Ok(()) => self.read_body(clock),
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => {
                    self.server_filter = ServerFilter::Works;
                    return Ok(());
                }
                // An empty restricted registry, or a server that refuses the query.
                Err(ScrapeError::Normalize(
                    NormalizeError::MissingMetric { .. } | NormalizeError::UnknownEngine,
                ))
                | Err(ScrapeError::Http(HttpError::Status(400..=499))) => {
                    tracing::info!(
                        target = %self.target,
                        "server ignores or empties `?name[]=` filtering; scraping full pages"
                    );
                    self.server_filter = ServerFilter::Unsupported;
                }
                Err(err) => return Err(err),
            }
        }
        let uri = self.uri.clone();
        self.fetch(getter, &uri, deadline, policy).await?;
        self.read_body(clock)
    }

    /// The filtered URI for the engine the pages are read as, when it has one.
    fn filtered_uri(&mut self) -> Option<Uri> {
        let engine = self.normalizer.engine()?;
        if let Some((built_for, uri)) = &self.filtered
            && *built_for == engine
        {
            return Some(uri.clone());
        }
        let names = server_filter_names(engine)?;
        let separator = if self.target.path().contains('?') {
            '&'
        } else {
            '?'
        };
        let mut text = format!(
            "http://{}{}{separator}",
            self.target.addr,
            self.target.path()
        );
        for (index, name) in names.enumerate() {
            if index > 0 {
                text.push('&');
            }
            // `name[]` percent-encoded; metric names need no escaping.
            text.push_str("name%5B%5D=");
            text.push_str(&name);
        }
        let uri: Uri = text.parse().ok()?;
        self.filtered = Some((engine, uri.clone()));
        Some(uri)
    }

    async fn fetch(
        &mut self,
        getter: &HttpGetter,
        uri: &Uri,
        deadline: tokio::time::Instant,
        policy: FetchPolicy,
    ) -> Result<(), ScrapeError> {
        tokio::time::timeout_at(
            deadline,
            getter.get_into(uri, ACCEPT_TEXT, &mut self.body, policy.max_body_bytes),
        )
        .await
        .map_err(|_| ScrapeError::Timeout(policy.timeout))?
        .map_err(ScrapeError::from)
    }

    fn read_body(&mut self, clock: &dyn Clock) -> Result<(), ScrapeError> {
        let text = std::str::from_utf8(&self.body)
            .map_err(|err| ScrapeError::NotUtf8(err.valid_up_to()))?;
        self.normalizer
            .normalize_into(text, clock.now(), &mut self.load)?;
        Ok(())
    }
}

async fn scrape_loop(shared: Arc<Shared>, target: ScrapeTarget) {
    let mut worker = match TargetWorker::new(&target) {
        Ok(worker) => worker,
        Err(err) => {
            // Validated in set_targets; kept as a logged no-op rather than a panic.
            tracing::error!(target = %target, error = %err, "cannot scrape target");
            return;
        }
    };
    let mut ticker = tokio::time::interval(shared.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = shared.clock.now();
        let result = worker
            .scrape(&shared.getter, shared.clock.as_ref(), shared.fetch)
            .await;
        let finished = shared.clock.now();
        publish(
            &shared,
            &target,
            &worker,
            result,
            finished.saturating_sub(started),
            finished,
        );
    }
}

fn publish(
    shared: &Shared,
    target: &ScrapeTarget,
    worker: &TargetWorker,
    result: Result<(), ScrapeError>,
    latency: Micros,
    now: Micros,
) {
    {
        let mut table = shared.table.write();
        // The target may have been removed or changed (its old task aborted) meanwhile.
        let Some(status) = table
            .get_mut(&target.addr)
            .filter(|status| status.target == *target)
        else {
            return;
        };
        let state = &mut status.scrape;
        state.latency = Some(latency);
        match result {
            Ok(()) => {
                if state.consecutive_failures > 0 {
                    tracing::info!(
                        target = %target,
                        failures = state.consecutive_failures,
                        "metrics scrape recovered"
                    );
                }
                state.last_ok = Some(now);
                state.consecutive_failures = 0;
                state.successes += 1;
                status.engine = worker.normalizer.engine();
                // Scalars only, except the LoRA name lists when the engine has LoRA enabled.
                status.load = Some(worker.load.clone());
            }
            Err(err) => {
                if state.consecutive_failures == 0 {
                    tracing::warn!(target = %target, error = %err, "metrics scrape failed");
                }
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.failures += 1;
                state.last_error = Some((now, err.to_string()));
            }
        }
    }
    shared.updates.send_modify(|version| *version += 1);
}

/// Scrapes one endpoint once (for `switchyard agent snapshot` and diagnostics). Rates and
/// latency means need two scrapes, so they are only present when the engine publishes a gauge.
pub async fn scrape_once(
    target: &ScrapeTarget,
    timeout: Duration,
    clock: &dyn Clock,
) -> Result<EndpointLoad, ScrapeError> {
    let mut worker = TargetWorker::new(target)?;
    let getter = HttpGetter::new(timeout);
    // One page: the full one (a filtered page saves nothing when it is read only once).
    let policy = FetchPolicy {
        timeout,
        max_body_bytes: ScrapeConfig::default().max_body_bytes,
        server_filter: false,
    };
    worker.scrape(&getter, clock, policy).await?;
    Ok(worker.load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_optional_path_and_engine() {
        let plain: ScrapeTarget = "10.0.0.5:8000".parse().unwrap();
        assert_eq!(plain.path(), "/metrics");
        assert_eq!(plain.engine, None);
        let trt: ScrapeTarget = "10.0.0.6:8000@trtllm".parse().unwrap();
        assert_eq!(trt.path(), "/prometheus/metrics");
        let custom: ScrapeTarget = "[::1]:9000/custom/metrics@sglang".parse().unwrap();
        assert_eq!(custom.path(), "/custom/metrics");
        assert_eq!(custom.engine, Some(EngineKind::Sglang));
        assert_eq!(custom.to_string(), "[::1]:9000/custom/metrics@sglang");
        let err = "pod-a:8000".parse::<ScrapeTarget>().unwrap_err();
        assert!(err.to_string().contains("not IP:PORT"), "{err}");
        let err = "10.0.0.5:8000@tgi".parse::<ScrapeTarget>().unwrap_err();
        assert!(err.to_string().contains("unknown engine"), "{err}");
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error() {
        let err = Scraper::spawn(ScrapeConfig::default(), Arc::new(crate::clock::SystemClock))
            .err()
            .unwrap();
        assert_eq!(err, ScrapeConfigError::NoRuntime);
    }

    #[test]
    fn config_rejects_overlapping_scrapes() {
        let config = ScrapeConfig {
            timeout: Duration::from_millis(80),
            ..ScrapeConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ScrapeConfigError::TimeoutAboveInterval { .. })
        ));
        assert!(ScrapeConfig::default().validate().is_ok());
    }
}
