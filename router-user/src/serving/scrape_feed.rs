//! Agent-less mode: this process polls the model servers' metrics pages itself and feeds the
//! endpoint table, for every member that no node agent reports. Endpoints the agents cover (a
//! `watch` set maintained by the node-report service) are left alone, so a pod is never scraped
//! from the center once its node runs an agent.
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::EndpointScrape;
use crate::clock::{Clock, Micros};
use crate::cluster::{EndpointTable, LoadUpdate, Snapshot};
use crate::telemetry::EngineKind;
use crate::telemetry::scrape::{ScrapeArgs, ScrapeConfigError, ScrapeTarget, Scraper};

/// How often membership is checked for new or removed endpoints (one atomic load).
const MEMBERSHIP_POLL: Duration = Duration::from_millis(200);

/// Flags of the agent-less scraper.
#[derive(Clone, Debug, clap::Args)]
pub struct ScrapeFeedArgs {
    /// Scrape model servers that no node agent reports (`--scrape=false`: only agents and the
    /// router's own in-flight counts feed the scheduler).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub scrape: bool,
    /// Engine of the model servers (vllm, sglang, trtllm, triton); detected from the metric
    /// names when omitted.
    #[arg(long)]
    pub engine: Option<EngineKind>,
    /// Metrics path on the model servers (default: the engine's).
    #[arg(long)]
    pub metrics_path: Option<String>,
    #[command(flatten)]
    pub cadence: ScrapeArgs,
}

impl Default for ScrapeFeedArgs {
    fn default() -> Self {
        Self {
            scrape: true,
            engine: None,
            metrics_path: None,
            cadence: ScrapeArgs {
                scrape_interval: Duration::from_millis(50),
                scrape_timeout: Duration::from_millis(40),
                no_server_side_filter: false,
            },
        }
    }
}

#[derive(Debug, Default)]
struct FeedState {
    covered: HashSet<SocketAddr>,
    scraped: HashSet<SocketAddr>,
}

/// The running feed. Dropping it stops scraping.
pub struct ScrapeFeed {
    scraper: Arc<Scraper>,
    state: Arc<Mutex<FeedState>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ScrapeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeFeed").finish_non_exhaustive()
    }
}

impl Drop for ScrapeFeed {
    fn drop(&mut self) {
        self.task.abort();
        self.scraper.shutdown();
    }
}

impl ScrapeFeed {
    /// Starts scraping the table's members not in `covered`; must run inside a tokio runtime.
    pub fn spawn(
        args: &ScrapeFeedArgs,
        table: Arc<EndpointTable>,
        covered: watch::Receiver<HashSet<SocketAddr>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ScrapeConfigError> {
        let scraper = Arc::new(Scraper::spawn(args.cadence.config(Vec::new()), clock)?);
        let state = Arc::new(Mutex::new(FeedState::default()));
        let target = TargetTemplate {
            engine: args.engine,
            path: args.metrics_path.clone(),
        };
        let task = tokio::spawn(run(table, covered, scraper.clone(), state.clone(), target));
        Ok(Self {
            scraper,
            state,
            task,
        })
    }

    /// How each member's load is sourced, for metrics.
    pub fn states(&self, snapshot: &Snapshot) -> Vec<EndpointScrape> {
        let state = self.state.lock();
        snapshot
            .endpoints()
            .iter()
            .map(|endpoint| {
                let addr = endpoint.addr();
                if state.covered.contains(&addr) {
                    EndpointScrape {
                        addr,
                        source: "agent",
                        consecutive_failures: 0,
                    }
                } else if state.scraped.contains(&addr) {
                    EndpointScrape {
                        addr,
                        source: "scrape",
                        consecutive_failures: self
                            .scraper
                            .status(addr)
                            .map_or(0, |status| status.scrape.consecutive_failures),
                    }
                } else {
                    EndpointScrape {
                        addr,
                        source: "none",
                        consecutive_failures: 0,
                    }
                }
            })
            .collect()
    }

    /// Endpoints being scraped now.
    pub fn scraped(&self) -> Vec<SocketAddr> {
        let mut out: Vec<_> = self.state.lock().scraped.iter().copied().collect();
        out.sort();
        out
    }
}

/// Metrics states when scraping is off: agent-covered or none.
pub fn unscraped_states(snapshot: &Snapshot, covered: &HashSet<SocketAddr>) -> Vec<EndpointScrape> {
    snapshot
        .endpoints()
        .iter()
        .map(|endpoint| EndpointScrape {
            addr: endpoint.addr(),
            source: if covered.contains(&endpoint.addr()) {
                "agent"
            } else {
                "none"
            },
            consecutive_failures: 0,
        })
        .collect()
}

#[derive(Clone, Debug)]
struct TargetTemplate {
    engine: Option<EngineKind>,
    path: Option<String>,
}

impl TargetTemplate {
    fn target(&self, addr: SocketAddr) -> ScrapeTarget {
        ScrapeTarget {
            addr,
            engine: self.engine,
            path: self.path.clone(),
        }
    }
}

async fn run(
    table: Arc<EndpointTable>,
    mut covered: watch::Receiver<HashSet<SocketAddr>>,
    scraper: Arc<Scraper>,
    state: Arc<Mutex<FeedState>>,
    template: TargetTemplate,
) {
    let mut updates = scraper.subscribe();
    let mut membership = tokio::time::interval(MEMBERSHIP_POLL);
    membership.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_version = None;
    let mut covered_open = true;
    // What was last pushed per endpoint: (seq, sampled_at).
    let mut pushed: HashMap<SocketAddr, (u64, Micros)> = HashMap::new();
    loop {
        let mut retarget = false;
        tokio::select! {
            _ = membership.tick() => {
                let version = table.snapshot().version();
                if seen_version != Some(version) {
                    seen_version = Some(version);
                    retarget = true;
                }
            }
            changed = covered.changed(), if covered_open => {
                if changed.is_err() {
                    // The report service went away: nobody covers anything any more.
                    covered_open = false;
                }
                retarget = true;
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                push_loads(&table, &scraper, &state, &mut pushed);
            }
        }
        if retarget {
            let now_covered = if covered_open {
                covered.borrow_and_update().clone()
            } else {
                HashSet::new()
            };
            let snapshot = table.snapshot();
            let targets: Vec<ScrapeTarget> = snapshot
                .endpoints()
                .iter()
                .map(|endpoint| endpoint.addr())
                .filter(|addr| !now_covered.contains(addr))
                .map(|addr| template.target(addr))
                .collect();
            let scraped: HashSet<SocketAddr> = targets.iter().map(|target| target.addr).collect();
            pushed.retain(|addr, _| scraped.contains(addr));
            if let Err(err) = scraper.set_targets(targets) {
                // Targets are addresses plus a validated path: only a bad --metrics-path fails.
                tracing::error!(error = %err, "cannot scrape the endpoints");
            }
            let mut state = state.lock();
            if state.scraped != scraped {
                tracing::debug!(
                    scraped = scraped.len(),
                    covered = now_covered.len(),
                    "agent-less scrape targets changed"
                );
            }
            state.scraped = scraped;
            state.covered = now_covered;
        }
    }
}

fn push_loads(
    table: &EndpointTable,
    scraper: &Scraper,
    state: &Mutex<FeedState>,
    pushed: &mut HashMap<SocketAddr, (u64, Micros)>,
) {
    let mut fresh = Vec::new();
    {
        let state = state.lock();
        scraper.for_each(|status| {
            let addr = status.target.addr;
            let Some(load) = &status.load else {
                return;
            };
            if !state.scraped.contains(&addr) {
                return;
            }
            let key = (load.seq, load.sampled_at);
            if pushed.get(&addr) != Some(&key) {
                pushed.insert(addr, key);
                fresh.push((addr, load.clone()));
            }
        });
    }
    for (addr, load) in fresh {
        if table.update_load(&addr, load) == LoadUpdate::UnknownEndpoint {
            pushed.remove(&addr);
        }
    }
}
