//! The scheduler: filters → weighted scorers → picker, over one endpoint-table snapshot.
use std::{
    cell::RefCell,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{
    builtin,
    config::{CompiledProfile, ConfigError, EndpointPickerConfig, WeightedScorer},
    decision::{Contribution, Decision, EXPLAINED, NoEndpoints, PickError, RankedEndpoint},
    exact::ExactStateSource,
    filters::{gpu_fault, has_capacity, saturation_filter},
    picker::{Ranked, TopK, mix64},
    plugins::{FilterKind, PickerKind, PrefixParams, ScorerKind},
    prefix_hash::{PrefixHasher, hash_token_blocks},
    prefix_index::{PrefixIndex, PrefixMatch},
    request::{BlockHash, SchedulingRequest},
    scoring::{self, Candidate, Stats},
    session::SessionTable,
};
use crate::{
    clock::{MICROS_PER_SEC, Micros},
    cluster::{Health, Inflight, PositionSet, Snapshot},
};

/// How a scheduler is built besides its config.
#[derive(Clone, Debug, Default)]
pub struct SchedulerOptions {
    /// Seed of the tie-break and random-picker draws: same seed + same calls = same decisions.
    pub seed: u64,
    /// Exact engine state for the oracle profile (the simulation attaches it).
    pub exact_state: Option<Arc<dyn ExactStateSource>>,
    /// Which scheduling profile of the config to run (default: the only one, or `default`).
    pub profile: Option<String>,
}

impl SchedulerOptions {
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }
}

/// Per-thread buffers reused across picks, so a pick allocates nothing proportional to the
/// fleet once warm.
#[derive(Default)]
struct Scratch {
    candidates: Vec<Candidate>,
    subset: PositionSet,
    matches: Vec<PrefixMatch>,
    prefix_hits: Vec<(u32, u32)>,
    tree_hits: Vec<(u32, u32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

const DEFAULT_GPU_STALENESS: Micros = 5 * MICROS_PER_SEC;

/// A built scheduling profile plus the state its scorers keep (prefix index, sessions).
///
/// `pick` takes `&self` and is safe to call from many threads at once: it reads the snapshot
/// without locks, reads the prefix index under short shared locks, and draws randomness from an
/// atomic counter. `on_routed` updates the index and session table (sharded locks).
#[derive(Debug)]
pub struct Scheduler {
    profile: CompiledProfile,
    prefix: Option<Arc<PrefixIndex>>,
    tree: Option<Arc<PrefixIndex>>,
    sessions: Option<Arc<SessionTable>>,
    exact: Option<Arc<dyn ExactStateSource>>,
    seed: u64,
    draws: AtomicU64,
    cursor: AtomicU64,
    gpu_staleness: Micros,
}

impl Scheduler {
    /// Builds a scheduler from a validated config document.
    pub fn from_config(
        config: &EndpointPickerConfig,
        options: SchedulerOptions,
    ) -> Result<Self, ConfigError> {
        let profile = config.compile(options.profile.as_deref())?;
        Self::from_profile(profile, options, None)
    }

    /// Parses, validates and builds from YAML.
    pub fn from_yaml(text: &str, options: SchedulerOptions) -> Result<Self, ConfigError> {
        Self::from_config(&EndpointPickerConfig::from_yaml(text)?, options)
    }

    /// One of the [built-in profiles](builtin::BUILTIN_PROFILES), seed 0, no exact state.
    pub fn builtin(name: &str) -> Result<Self, ConfigError> {
        Self::builtin_with(name, SchedulerOptions::default())
    }

    pub fn builtin_with(name: &str, options: SchedulerOptions) -> Result<Self, ConfigError> {
        let yaml = builtin::builtin_yaml(name).ok_or_else(|| ConfigError::UnknownBuiltin {
            name: name.to_owned(),
            known: builtin::BUILTIN_PROFILES.join(", "),
        })?;
        Self::from_yaml(yaml, options)
    }

    /// Builds a new scheduler for `config` that keeps this one's learned state (prefix index,
    /// cache-aware tree, sessions) where the new profile uses the same kind with the same
    /// parameters: a hot reload does not forget where prefixes are cached.
    pub fn reconfigure(
        &self,
        config: &EndpointPickerConfig,
        options: SchedulerOptions,
    ) -> Result<Self, ConfigError> {
        let profile = config.compile(options.profile.as_deref())?;
        Self::from_profile(profile, options, Some(self))
    }

    fn from_profile(
        profile: CompiledProfile,
        options: SchedulerOptions,
        previous: Option<&Scheduler>,
    ) -> Result<Self, ConfigError> {
        if let Some(plugin) = profile.uses_oracle()
            && options.exact_state.is_none()
        {
            return Err(ConfigError::OracleWithoutSource {
                profile: profile.name.to_string(),
                plugin: plugin.to_owned(),
            });
        }
        let kinds = || profile.scorers.iter().map(|scorer| &scorer.kind);
        let same_prefix = previous.is_some_and(|old| old.profile.prefix == profile.prefix);
        let prefix = kinds()
            .any(|kind| matches!(kind, ScorerKind::Prefix(_) | ScorerKind::Ttft(_)))
            .then(|| match previous.and_then(|old| old.prefix.clone()) {
                Some(index) if same_prefix => index,
                _ => Arc::new(PrefixIndex::new(
                    profile.prefix.lru_capacity_per_server,
                    profile.prefix.max_endpoints_per_block,
                )),
            });
        let tree = kinds().find_map(|kind| match kind {
            ScorerKind::CacheAware(params) => Some(
                previous
                    .filter(|old| old.cache_aware_params() == Some(params))
                    .and_then(|old| old.tree.clone())
                    .unwrap_or_else(|| {
                        Arc::new(PrefixIndex::new(
                            params.max_tree_size,
                            profile.prefix.max_endpoints_per_block,
                        ))
                    }),
            ),
            _ => None,
        });
        let sessions = kinds().find_map(|kind| match kind {
            ScorerKind::Session(params) => Some(
                previous
                    .filter(|old| old.session_params() == Some(params))
                    .and_then(|old| old.sessions.clone())
                    .unwrap_or_else(|| {
                        Arc::new(SessionTable::new(params.max_sessions, params.ttl.0))
                    }),
            ),
            _ => None,
        });
        let gpu_staleness = kinds()
            .find_map(|kind| match kind {
                ScorerKind::Gpu(params) => Some(params.staleness_threshold.0),
                _ => None,
            })
            .unwrap_or(DEFAULT_GPU_STALENESS);
        Ok(Self {
            profile,
            prefix,
            tree,
            sessions,
            exact: options.exact_state,
            seed: options.seed,
            draws: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            gpu_staleness,
        })
    }

    fn cache_aware_params(&self) -> Option<&super::plugins::CacheAwareParams> {
        self.profile
            .scorers
            .iter()
            .find_map(|scorer| match &scorer.kind {
                ScorerKind::CacheAware(params) => Some(params),
                _ => None,
            })
    }

    fn session_params(&self) -> Option<&super::plugins::SessionParams> {
        self.profile
            .scorers
            .iter()
            .find_map(|scorer| match &scorer.kind {
                ScorerKind::Session(params) => Some(params),
                _ => None,
            })
    }

    pub fn profile(&self) -> &CompiledProfile {
        &self.profile
    }

    pub fn name(&self) -> &str {
        &self.profile.name
    }

    /// Prefix hashing parameters callers must use for [`SchedulingRequest::prefix`].
    pub fn prefix_params(&self) -> &PrefixParams {
        &self.profile.prefix
    }

    /// An incremental hasher for request bodies, configured like this scheduler's index.
    pub fn prefix_hasher(&self, model: &str) -> PrefixHasher {
        PrefixHasher::with_blocks(
            model,
            self.profile.prefix.hash_block_size,
            self.profile.prefix.max_prefix_blocks_to_match,
        )
    }

    /// Block hashes of a tokenised prompt (the simulation), configured like the index.
    pub fn hash_tokens(&self, model: &str, tokens: &[u32]) -> Vec<BlockHash> {
        let mut hashes = hash_token_blocks(model, tokens, self.profile.prefix.block_size_tokens);
        hashes.truncate(self.profile.prefix.max_prefix_blocks_to_match);
        hashes
    }

    /// The shared approximate prefix index, when a scorer uses one.
    pub fn prefix_index(&self) -> Option<&PrefixIndex> {
        self.prefix.as_deref()
    }

    /// Chooses endpoints for `request` among `snapshot`'s members at time `now`.
    pub fn pick(
        &self,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
        now: Micros,
    ) -> Result<Decision, PickError> {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.pick_with(request, snapshot, now, &mut scratch),
            // Re-entered from an exact-state source: use fresh buffers.
            Err(_) => self.pick_with(request, snapshot, now, &mut Scratch::default()),
        })
    }

    /// Records that `request` was routed to `addr` (the primary or a fallback it was retried
    /// on): teaches the prefix index, the cache-aware tree and the session table.
    pub fn on_routed(&self, request: &SchedulingRequest<'_>, addr: SocketAddr, now: Micros) {
        if let Some(index) = &self.prefix {
            index.insert(addr, request.prefix);
        }
        if let Some(tree) = &self.tree {
            tree.insert(addr, request.prefix);
        }
        if let (Some(sessions), Some(session)) = (&self.sessions, request.session) {
            sessions.record(session, addr, now);
        }
    }

    /// `on_routed` for the decision's primary, then an in-flight guard for it: the usual way to
    /// act on a decision. `None` if the primary left the pool in between.
    pub fn route(
        &self,
        decision: &Decision,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
    ) -> Option<Inflight> {
        let addr = decision.primary();
        let guard = snapshot.begin(&addr, request.estimated_tokens())?;
        self.on_routed(request, addr, decision.at);
        Some(guard)
    }

    /// Forgets learned state of endpoints that are no longer members. Call after membership
    /// changes (cheap when nothing left).
    pub fn sync_members(&self, snapshot: &Snapshot) {
        for index in [&self.prefix, &self.tree].into_iter().flatten() {
            index.retain(|addr| snapshot.position(addr).is_some());
        }
    }

    fn pick_with(
        &self,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
        now: Micros,
        scratch: &mut Scratch,
    ) -> Result<Decision, PickError> {
        if snapshot.is_empty() {
            return Err(PickError::NoEndpoints(NoEndpoints::EmptyPool));
        }
        let subset_active = self.resolve_subset(request, snapshot, scratch)?;
        self.lookup_prefixes(request, snapshot, scratch);
        let session_position = match (&self.sessions, request.session) {
            (Some(sessions), Some(key)) => sessions
                .get(key, now)
                .and_then(|addr| snapshot.position(&addr)),
            _ => None,
        };
        let saturation = self.profile.saturation;
        let models = snapshot.model_filter(request.model);
        let lora_needed =
            request.lora.is_some() && self.has_scorer(|kind| matches!(kind, ScorerKind::Lora));

        let Scratch {
            candidates,
            subset,
            prefix_hits,
            tree_hits,
            ..
        } = scratch;
        candidates.clear();
        let (mut served, mut draining, mut unhealthy) = (0u32, 0u32, 0u32);
        let mut filtered_by: Option<&Arc<str>> = None;
        let (mut prefix_cursor, mut tree_cursor) = (0usize, 0usize);
        'endpoints: for (position, endpoint) in snapshot.endpoints().iter().enumerate() {
            if subset_active && !subset.contains(position) {
                continue;
            }
            if !models.allows(position) {
                continue;
            }
            served += 1;
            match endpoint.health {
                Health::Ready => {}
                Health::Draining => {
                    draining += 1;
                    continue;
                }
                Health::Unhealthy(_) => {
                    unhealthy += 1;
                    continue;
                }
            }
            let live = endpoint.live();
            for filter in &self.profile.filters {
                if let FilterKind::GpuHealth(params) = &filter.kind
                    && let Some(gpu) = live.gpu()
                    && gpu_fault(&gpu, params).is_some()
                {
                    filtered_by = Some(&filter.name);
                    continue 'endpoints;
                }
            }
            let position = position as u32;
            let mut candidate = scoring::read_live(
                position,
                live,
                now,
                saturation.metrics_staleness,
                self.gpu_staleness,
            );
            candidate.prefix_blocks = take_hit(prefix_hits, &mut prefix_cursor, position);
            if let Some(tree) = &self.tree {
                candidate.tree_blocks = take_hit(tree_hits, &mut tree_cursor, position);
                candidate.tree_size =
                    u32::try_from(tree.blocks_of(&endpoint.addr())).unwrap_or(u32::MAX);
            }
            candidate.session = session_position == Some(position as usize);
            candidate.lora = if lora_needed {
                let load = live.last_load();
                scoring::lora(request, load.as_ref().and_then(|load| load.lora.as_ref()))
            } else {
                1.0
            };
            if let Some(source) = &self.exact {
                candidate.exact = source.exact(endpoint.addr(), request);
            }
            candidates.push(candidate);
        }

        if candidates.is_empty() {
            let reason = if served == 0 {
                NoEndpoints::NoModel(request.model.to_owned())
            } else if draining + unhealthy == served {
                NoEndpoints::NoneReady {
                    draining,
                    unhealthy,
                }
            } else {
                NoEndpoints::Filtered(filtered_by.cloned().unwrap_or_else(|| Arc::from("filter")))
            };
            return Err(PickError::NoEndpoints(reason));
        }
        for filter in &self.profile.filters {
            if let FilterKind::Saturation(params) = &filter.kind
                && candidates
                    .iter()
                    .any(|c| saturation_filter(c, &saturation, params))
            {
                candidates.retain(|c| saturation_filter(c, &saturation, params));
            }
        }
        if request.is_sheddable() && !candidates.iter().any(|c| has_capacity(c, &saturation, 0.0)) {
            let stale = candidates.iter().filter(|c| c.load.is_none()).count();
            return Err(PickError::Saturated {
                reason: format!(
                    "none of {} endpoints has capacity (queue < {}, KV < {:.0}%, metrics newer \
                     than {} ms; {stale} without fresh metrics)",
                    candidates.len(),
                    saturation.queue_depth_threshold,
                    saturation.kv_cache_util_threshold * 100.0,
                    saturation.metrics_staleness / 1_000,
                ),
            });
        }

        let mut stats = Stats::default();
        for candidate in candidates.iter() {
            stats.observe(candidate);
        }
        self.estimate_costs(request, candidates, &mut stats);

        let draw = mix64(self.seed ^ mix64(self.draws.fetch_add(1, Ordering::Relaxed)));
        let ranked = match self.profile.picker {
            PickerKind::MaxScore | PickerKind::Random => {
                let random = self.profile.picker == PickerKind::Random;
                let mut top = TopK::new(self.profile.picks);
                for (slot, candidate) in candidates.iter().enumerate() {
                    let score = if random {
                        0.0
                    } else {
                        self.total_score(candidate, &stats, request)
                    };
                    top.offer(Ranked {
                        slot: slot as u32,
                        score,
                        key: mix64(draw ^ u64::from(candidate.position)),
                    });
                }
                top.into_vec()
            }
            PickerKind::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) as usize;
                let len = candidates.len();
                (0..self.profile.picks.min(len))
                    .map(|offset| Ranked {
                        slot: ((start + offset) % len) as u32,
                        score: 0.0,
                        key: 0,
                    })
                    .collect()
            }
        };
        Ok(self.decision(request, snapshot, candidates, &stats, ranked, now))
    }

    fn has_scorer(&self, test: impl Fn(&ScorerKind) -> bool) -> bool {
        self.profile.scorers.iter().any(|scorer| test(&scorer.kind))
    }

    fn resolve_subset(
        &self,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
        scratch: &mut Scratch,
    ) -> Result<bool, PickError> {
        let Some(subset) = request.subset else {
            return Ok(false);
        };
        if subset.is_empty() {
            return Err(PickError::NoEndpoints(NoEndpoints::EmptySubset));
        }
        scratch.subset.reset(snapshot.len());
        let mut members = 0;
        for addr in subset {
            if let Some(position) = snapshot.position(addr) {
                scratch.subset.insert(position);
                members += 1;
            }
        }
        if members == 0 {
            return Err(PickError::NoEndpoints(NoEndpoints::SubsetNotMembers(
                subset.len(),
            )));
        }
        Ok(true)
    }

    /// Sparse, fleet-size-independent lookups: block hash → endpoints, mapped to positions.
    fn lookup_prefixes(
        &self,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
        scratch: &mut Scratch,
    ) {
        for (index, hits) in [
            (&self.prefix, &mut scratch.prefix_hits),
            (&self.tree, &mut scratch.tree_hits),
        ] {
            hits.clear();
            let Some(index) = index else { continue };
            scratch.matches.clear();
            index.matches(request.prefix, &mut scratch.matches);
            hits.extend(scratch.matches.iter().filter_map(|found| {
                snapshot
                    .position(&found.addr)
                    .map(|position| (position as u32, found.blocks))
            }));
            hits.sort_unstable();
        }
    }

    fn estimate_costs(
        &self,
        request: &SchedulingRequest<'_>,
        candidates: &mut [Candidate],
        stats: &mut Stats,
    ) {
        for scorer in &self.profile.scorers {
            match &scorer.kind {
                ScorerKind::Ttft(params) => {
                    for candidate in candidates.iter_mut() {
                        let hit =
                            scoring::prefix_fraction(candidate.prefix_blocks, request.prefix.len());
                        candidate.ttft_cost = scoring::ttft_cost(candidate, stats, hit, params);
                        stats.ttft_cost.add(candidate.ttft_cost);
                    }
                }
                ScorerKind::Oracle(params) => {
                    let mut unknown = false;
                    for candidate in candidates.iter_mut() {
                        match scoring::oracle_cost(candidate, request, params) {
                            Some(cost) => {
                                candidate.oracle_cost = cost;
                                stats.oracle_cost.add(cost);
                            }
                            None => {
                                candidate.oracle_cost = f64::NAN;
                                unknown = true;
                            }
                        }
                    }
                    if unknown {
                        let worst = if stats.oracle_cost.is_empty() {
                            1.0
                        } else {
                            stats.oracle_cost.max + 1.0
                        };
                        for candidate in candidates.iter_mut() {
                            if candidate.oracle_cost.is_nan() {
                                candidate.oracle_cost = worst;
                                stats.oracle_cost.add(worst);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    #[inline]
    fn total_score(
        &self,
        candidate: &Candidate,
        stats: &Stats,
        request: &SchedulingRequest<'_>,
    ) -> f64 {
        self.profile
            .scorers
            .iter()
            .map(|scorer| scorer.weight * self.scorer_value(scorer, candidate, stats, request))
            .sum()
    }

    #[inline]
    fn scorer_value(
        &self,
        scorer: &WeightedScorer,
        candidate: &Candidate,
        stats: &Stats,
        request: &SchedulingRequest<'_>,
    ) -> f64 {
        let value = match &scorer.kind {
            ScorerKind::Queue => scoring::queue(candidate, stats),
            ScorerKind::KvCache => scoring::kv_cache(candidate),
            ScorerKind::Prefix(_) => {
                scoring::prefix_fraction(candidate.prefix_blocks, request.prefix.len())
            }
            ScorerKind::Lora => f64::from(candidate.lora),
            ScorerKind::Session(_) => {
                if candidate.session {
                    1.0
                } else {
                    0.0
                }
            }
            ScorerKind::Inflight(params) => scoring::inflight(candidate, stats, params.mode),
            ScorerKind::Gpu(params) => scoring::gpu(candidate, params),
            ScorerKind::Connections => scoring::connections(candidate, stats),
            ScorerKind::Ttft(params) => {
                scoring::relative_cost(candidate.ttft_cost, &stats.ttft_cost, params.smoothing)
            }
            ScorerKind::Oracle(params) => {
                scoring::relative_cost(candidate.oracle_cost, &stats.oracle_cost, params.smoothing)
            }
            ScorerKind::CacheAware(params) => {
                scoring::cache_aware(candidate, stats, request.prefix.len(), params)
            }
        };
        // Every scorer is clamped to [0, 1]; a NaN (never expected) counts as the worst.
        if value.is_nan() {
            0.0
        } else {
            value.clamp(0.0, 1.0)
        }
    }

    fn predicted_hit(&self, candidate: &Candidate, request: &SchedulingRequest<'_>) -> f64 {
        if self.prefix.is_some() {
            scoring::prefix_fraction(candidate.prefix_blocks, request.prefix.len())
        } else if self.tree.is_some() {
            scoring::prefix_fraction(candidate.tree_blocks, request.prefix.len())
        } else if let Some(exact) = candidate.exact {
            let prompt = f64::from(request.input_tokens.max(1));
            (f64::from(exact.cached_prefix_tokens) / prompt).min(1.0)
        } else {
            0.0
        }
    }

    fn decision(
        &self,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
        candidates: &[Candidate],
        stats: &Stats,
        ranked: Vec<Ranked>,
        now: Micros,
    ) -> Decision {
        let endpoints = snapshot.endpoints();
        let ranked: Vec<RankedEndpoint> = ranked
            .iter()
            .enumerate()
            .filter_map(|(rank, item)| {
                let candidate = candidates.get(item.slot as usize)?;
                let endpoint = endpoints.get(candidate.position as usize)?;
                let contributions = if rank < EXPLAINED {
                    self.profile
                        .scorers
                        .iter()
                        .map(|scorer| Contribution {
                            plugin: scorer.name.clone(),
                            weight: scorer.weight,
                            score: self.scorer_value(scorer, candidate, stats, request),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Some(RankedEndpoint {
                    addr: endpoint.addr(),
                    score: item.score,
                    prefix_hit: self.predicted_hit(candidate, request),
                    contributions,
                })
            })
            .collect();
        Decision {
            profile: self.profile.name.clone(),
            predicted_prefix_hit: ranked.first().map_or(0.0, |primary| primary.prefix_hit),
            ranked,
            candidates: candidates.len() as u32,
            members: snapshot.len() as u32,
            snapshot_version: snapshot.version(),
            at: now,
        }
    }
}

/// Advances a merge cursor over position-sorted hits; the blocks held at `position`, or 0.
#[inline]
fn take_hit(hits: &[(u32, u32)], cursor: &mut usize, position: u32) -> u32 {
    while *cursor < hits.len() && hits[*cursor].0 < position {
        *cursor += 1;
    }
    match hits.get(*cursor) {
        Some(&(at, blocks)) if at == position => blocks,
        _ => 0,
    }
}
