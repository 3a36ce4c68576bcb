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
    backlog::{PrefillBacklog, Slots},
    builtin,
    config::{CompiledProfile, ConfigError, EndpointPickerConfig, WeightedScorer},
    decision::{Contribution, Decision, EXPLAINED, NoEndpoints, PickError, RankedEndpoint},
    exact::{ExactState, ExactStateSource},
    filters::{gpu_fault, has_capacity, saturation_filter},
    picker::{Ranked, TopK, mix64},
    plugins::{
        CacheAwareParams, CostParams, FilterKind, InflightMode, PickerKind, PrefixParams,
        ScorerKind, SessionParams,
    },
    prefix_hash::{PrefixHasher, hash_token_blocks},
    prefix_index::{PrefixIndex, PrefixMatch},
    request::{BlockHash, SchedulingRequest},
    scoring::{self, Candidate, Needs, Stats},
    session::SessionTable,
};
use crate::{
    clock::{MICROS_PER_SEC, Micros},
    cluster::{Health, Inflight, ModelFilter, PositionSet, Snapshot},
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
    /// Exact states aligned with `candidates` (oracle profile only).
    exact: Vec<Option<ExactState>>,
    subset: PositionSet,
    /// The subset hint's positions, sorted.
    subset_positions: Vec<u32>,
    /// Positions already visited by a sampled pass.
    seen: PositionSet,
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
    /// Prefill work sent per endpoint (the `ttft-scorer`'s backlog term).
    backlog: Option<Arc<PrefillBacklog>>,
    exact: Option<Arc<dyn ExactStateSource>>,
    seed: u64,
    draws: AtomicU64,
    cursor: AtomicU64,
    gpu_staleness: Micros,
    needs: Needs,
    /// The profile's `ttft-scorer` and `oracle-scorer` parameters, when it has them.
    ttft: Option<CostParams>,
    oracle: Option<CostParams>,
    /// `affinity-sample-filter`: score at most this many endpoints besides the affine ones.
    sample_size: Option<usize>,
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
        // Learned state carries over a reload when the new profile uses it the same way.
        let tree = cache_aware_params(&profile).map(|params| {
            previous
                .filter(|old| cache_aware_params(&old.profile) == Some(params))
                .and_then(|old| old.tree.clone())
                .unwrap_or_else(|| {
                    Arc::new(PrefixIndex::new(
                        params.max_tree_size,
                        profile.prefix.max_endpoints_per_block,
                    ))
                })
        });
        let sessions = session_params(&profile).map(|params| {
            previous
                .filter(|old| session_params(&old.profile) == Some(params))
                .and_then(|old| old.sessions.clone())
                .unwrap_or_else(|| Arc::new(SessionTable::new(params.max_sessions, params.ttl.0)))
        });
        let gpu_staleness = kinds()
            .find_map(|kind| match kind {
                ScorerKind::Gpu(params) => Some(params.staleness_threshold.0),
                _ => None,
            })
            .unwrap_or(DEFAULT_GPU_STALENESS);
        let needs = Needs {
            inflight_tokens: kinds().any(|kind| {
                matches!(kind, ScorerKind::Inflight(params) if params.mode == InflightMode::Tokens)
            }),
            connections: kinds().any(|kind| matches!(kind, ScorerKind::Connections)),
        };
        let ttft = kinds().find_map(|kind| match kind {
            ScorerKind::Ttft(params) => Some(params.clone()),
            _ => None,
        });
        let backlog = ttft
            .as_ref()
            .filter(|params| params.prefill_tokens_per_second > 0.0)
            .map(|params| Arc::new(PrefillBacklog::new(params.prefill_tokens_per_second)));
        let sample_size = profile
            .filters
            .iter()
            .find_map(|filter| match &filter.kind {
                FilterKind::AffinitySample(params) => Some(params.sample_size),
                _ => None,
            });
        let oracle = kinds().find_map(|kind| match kind {
            ScorerKind::Oracle(params) => Some(params.clone()),
            _ => None,
        });
        Ok(Self {
            needs,
            ttft,
            oracle,
            sample_size,
            profile,
            prefix,
            tree,
            sessions,
            backlog,
            exact: options.exact_state,
            seed: options.seed,
            draws: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            gpu_staleness,
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
            Ok(mut scratch) => self.pick_with(request, snapshot, now, &mut scratch, false),
            // Re-entered from an exact-state source: use fresh buffers.
            Err(_) => self.pick_with(request, snapshot, now, &mut Scratch::default(), false),
        })
    }

    /// Records that `request` was routed to `addr` (the primary or a fallback it was retried
    /// on): teaches the prefix index, the cache-aware tree and the session table.
    pub fn on_routed(&self, request: &SchedulingRequest<'_>, addr: SocketAddr, now: Micros) {
        let known = self
            .prefix
            .as_ref()
            .map_or(0, |index| index.insert(addr, request.prefix));
        if let Some(backlog) = &self.backlog {
            let hit = scoring::prefix_fraction(known as u32, request.prefix.len());
            backlog.add(addr, f64::from(request.input_tokens) * (1.0 - hit), now);
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
        if let Some(backlog) = &self.backlog {
            backlog.retain(|addr| snapshot.position(addr).is_some());
        }
    }

    fn pick_with(
        &self,
        request: &SchedulingRequest<'_>,
        snapshot: &Snapshot,
        now: Micros,
        scratch: &mut Scratch,
        full_scan: bool,
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
        let Scratch {
            candidates,
            exact,
            subset_positions,
            seen,
            prefix_hits,
            tree_hits,
            ..
        } = scratch;
        candidates.clear();
        exact.clear();
        let mut visitor = Visitor {
            scheduler: self,
            request,
            snapshot,
            now,
            models: snapshot.model_filter(request.model),
            lora_needed: request.lora.is_some()
                && self.has_scorer(|kind| matches!(kind, ScorerKind::Lora)),
            gpu_filtering: self
                .profile
                .filters
                .iter()
                .any(|filter| matches!(filter.kind, FilterKind::GpuHealth(_))),
            prefix_hits,
            tree_hits,
            session_position: session_position.map(|p| p as u32),
            backlog_slots: self.backlog.as_ref().map(|backlog| backlog.load()),
            candidates,
            exact,
            stats: Stats::default(),
            served: 0,
            draining: 0,
            unhealthy: 0,
            filtered_by: None,
        };
        let len = snapshot.len();
        // Which endpoints to look at: the subset hint's, a sample (plus every endpoint the
        // request has affinity with), or all.
        let sample = self
            .sample_size
            .filter(|&size| !full_scan && !subset_active && request.lora.is_none() && size < len);
        let sampled = sample.is_some();
        if subset_active {
            for &position in subset_positions.iter() {
                visitor.visit(position);
            }
        } else if let Some(size) = sample {
            seen.reset(len);
            let affinity = visitor
                .prefix_hits
                .iter()
                .chain(visitor.tree_hits.iter())
                .map(|&(position, _)| position)
                .chain(visitor.session_position);
            let affinity: Vec<u32> = affinity.collect();
            for position in affinity {
                if !seen.contains(position as usize) {
                    seen.insert(position as usize);
                    visitor.visit(position);
                }
            }
            let draw = mix64(self.seed ^ mix64(self.draws.fetch_add(1, Ordering::Relaxed)));
            let (start, stride) = walk(draw, len);
            let mut admitted = 0;
            for step in 0..len {
                let position = (start + step * stride) % len;
                if seen.contains(position) {
                    continue;
                }
                if visitor.visit(position as u32) {
                    admitted += 1;
                    if admitted >= size {
                        break;
                    }
                }
            }
        } else {
            for position in 0..len as u32 {
                visitor.visit(position);
            }
        }
        let Visitor {
            mut stats,
            served,
            draining,
            unhealthy,
            filtered_by,
            candidates,
            exact,
            ..
        } = visitor;

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
        if self.apply_saturation_filters(candidates, exact) {
            stats = Stats::default();
            for candidate in candidates.iter() {
                stats.observe(candidate);
            }
        }
        if request.is_sheddable() && !candidates.iter().any(|c| has_capacity(c, &saturation, 0.0)) {
            if sampled {
                // Shed only after looking at everyone, not just the sample.
                return self.pick_with(request, snapshot, now, scratch, true);
            }
            let stale = candidates.iter().filter(|c| !c.fresh()).count();
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
        self.estimate_costs(request, candidates, exact, &mut stats);

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
                    // The tie-break key is only needed by a candidate that can still enter.
                    if top.admits(score) {
                        top.offer(Ranked {
                            slot: slot as u32,
                            score,
                            key: mix64(draw ^ u64::from(candidate.position)),
                        });
                    }
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
        let pool = Pool {
            candidates,
            exact,
            stats: &stats,
        };
        Ok(self.decision(request, snapshot, pool, ranked, now))
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
        scratch.subset_positions.clear();
        for addr in subset {
            if let Some(position) = snapshot.position(addr)
                && !scratch.subset.contains(position)
            {
                scratch.subset.insert(position);
                scratch.subset_positions.push(position as u32);
            }
        }
        scratch.subset_positions.sort_unstable();
        if scratch.subset_positions.is_empty() {
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

    /// GIE's utilisation filter, for each `saturation-filter` of the profile: keeps the
    /// endpoints with capacity, or everyone when none has any. Returns whether it removed any.
    fn apply_saturation_filters(
        &self,
        candidates: &mut Vec<Candidate>,
        exact: &mut Vec<Option<ExactState>>,
    ) -> bool {
        let saturation = self.profile.saturation;
        let mut removed = false;
        for filter in &self.profile.filters {
            let FilterKind::Saturation(params) = &filter.kind else {
                continue;
            };
            let keep = |c: &Candidate| saturation_filter(c, &saturation, params);
            let kept = candidates.iter().filter(|c| keep(c)).count();
            if kept == 0 || kept == candidates.len() {
                continue;
            }
            removed = true;
            if !exact.is_empty() {
                let mut states = exact.drain(..);
                let kept_states: Vec<Option<ExactState>> = candidates
                    .iter()
                    .filter_map(|c| {
                        let state = states.next().flatten();
                        keep(c).then_some(state)
                    })
                    .collect();
                drop(states);
                *exact = kept_states;
            }
            candidates.retain(|c| keep(c));
        }
        removed
    }

    fn estimate_costs(
        &self,
        request: &SchedulingRequest<'_>,
        candidates: &mut [Candidate],
        exact: &[Option<ExactState>],
        stats: &mut Stats,
    ) {
        if let Some(params) = &self.ttft {
            // Fresh endpoints were costed in the first pass; unknown ones need the statistics.
            let fresh_stats = *stats;
            for candidate in candidates.iter_mut().filter(|c| c.ttft_cost.is_nan()) {
                let hit = scoring::prefix_fraction(candidate.prefix_blocks, request.prefix.len());
                let cost = scoring::ttft_cost_unknown(
                    candidate,
                    &fresh_stats,
                    hit,
                    request.input_tokens,
                    params,
                );
                candidate.ttft_cost = cost as f32;
                stats.ttft_cost.add(f64::from(candidate.ttft_cost));
            }
        }
        if let Some(params) = &self.oracle {
            let mut unknown = false;
            for (candidate, state) in candidates.iter_mut().zip(exact) {
                match state {
                    Some(state) => {
                        let cost = scoring::oracle_cost(state, request, params) as f32;
                        candidate.oracle_cost = cost;
                        stats.oracle_cost.add(f64::from(cost));
                    }
                    None => {
                        candidate.oracle_cost = f32::NAN;
                        unknown = true;
                    }
                }
            }
            // An endpoint the source does not know costs more than the worst known one.
            if unknown {
                let worst = if stats.oracle_cost.is_empty() {
                    1.0
                } else {
                    stats.oracle_cost.max + 1.0
                };
                for candidate in candidates.iter_mut() {
                    if candidate.oracle_cost.is_nan() {
                        candidate.oracle_cost = worst as f32;
                        stats.oracle_cost.add(worst);
                    }
                }
            }
        }
    }

    /// Σ weight × value of the scorers that need pool statistics, added to the first pass's
    /// partial sum.
    #[inline]
    fn total_score(
        &self,
        candidate: &Candidate,
        stats: &Stats,
        request: &SchedulingRequest<'_>,
    ) -> f64 {
        let mut total = f64::from(candidate.partial);
        for scorer in self
            .profile
            .scorers
            .iter()
            .filter(|s| s.kind.needs_pool_stats())
        {
            total += scorer.weight * self.scorer_value(scorer, candidate, stats, request);
        }
        total
    }

    /// Σ weight × value of the scorers that need no pool statistics.
    #[inline]
    fn partial_score(&self, candidate: &Candidate, request: &SchedulingRequest<'_>) -> f32 {
        let mut partial = 0.0;
        for scorer in self
            .profile
            .scorers
            .iter()
            .filter(|s| !s.kind.needs_pool_stats())
        {
            partial += scorer.weight * self.scorer_value(scorer, candidate, &Stats::EMPTY, request);
        }
        partial as f32
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
                if candidate.has(Candidate::SESSION) {
                    1.0
                } else {
                    0.0
                }
            }
            ScorerKind::Inflight(params) => scoring::inflight(candidate, stats, params.mode),
            ScorerKind::Gpu(params) => scoring::gpu(candidate, params),
            ScorerKind::Connections => scoring::connections(candidate, stats),
            ScorerKind::Ttft(params) => scoring::relative_cost(
                f64::from(candidate.ttft_cost),
                &stats.ttft_cost,
                params.smoothing,
            ),
            ScorerKind::Oracle(params) => scoring::relative_cost(
                f64::from(candidate.oracle_cost),
                &stats.oracle_cost,
                params.smoothing,
            ),
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

    fn predicted_hit(
        &self,
        candidate: &Candidate,
        exact: Option<&ExactState>,
        request: &SchedulingRequest<'_>,
    ) -> f64 {
        if self.prefix.is_some() {
            scoring::prefix_fraction(candidate.prefix_blocks, request.prefix.len())
        } else if self.tree.is_some() {
            scoring::prefix_fraction(candidate.tree_blocks, request.prefix.len())
        } else if let Some(exact) = exact {
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
        pool: Pool<'_>,
        ranked: Vec<Ranked>,
        now: Micros,
    ) -> Decision {
        let Pool {
            candidates,
            exact,
            stats,
        } = pool;
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
                    prefix_hit: self.predicted_hit(
                        candidate,
                        exact.get(item.slot as usize).and_then(Option::as_ref),
                        request,
                    ),
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

/// The blocks held at `position` in position-sorted hits, or 0.
#[inline]
fn hit_at(hits: &[(u32, u32)], position: u32) -> u32 {
    if hits.is_empty() {
        return 0;
    }
    hits.binary_search_by_key(&position, |&(at, _)| at)
        .map_or(0, |found| hits[found].1)
}

/// A seeded walk over `0..len` that visits every position once: a random start and a random
/// stride coprime with `len`.
pub(crate) fn walk(draw: u64, len: usize) -> (usize, usize) {
    if len <= 1 {
        return (0, 1);
    }
    let start = (draw % len as u64) as usize;
    let mut stride = ((draw >> 32) % len as u64) as usize | 1;
    while gcd(stride, len) != 1 {
        stride += 1;
    }
    (start, stride % len)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn cache_aware_params(profile: &CompiledProfile) -> Option<&CacheAwareParams> {
    profile
        .scorers
        .iter()
        .find_map(|scorer| match &scorer.kind {
            ScorerKind::CacheAware(params) => Some(params),
            _ => None,
        })
}

fn session_params(profile: &CompiledProfile) -> Option<&SessionParams> {
    profile
        .scorers
        .iter()
        .find_map(|scorer| match &scorer.kind {
            ScorerKind::Session(params) => Some(params),
            _ => None,
        })
}

/// The scored candidates of one pick, for building its decision.
struct Pool<'a> {
    candidates: &'a [Candidate],
    exact: &'a [Option<ExactState>],
    stats: &'a Stats,
}

/// The first pass over endpoints: filters, reads the live cell, fills a candidate.
struct Visitor<'a, 'r> {
    scheduler: &'a Scheduler,
    request: &'a SchedulingRequest<'r>,
    snapshot: &'a Snapshot,
    now: Micros,
    models: ModelFilter<'a>,
    lora_needed: bool,
    gpu_filtering: bool,
    prefix_hits: &'a [(u32, u32)],
    tree_hits: &'a [(u32, u32)],
    session_position: Option<u32>,
    /// The prefill backlog's array, loaded once per pick.
    backlog_slots: Option<arc_swap::Guard<Arc<Slots>>>,
    candidates: &'a mut Vec<Candidate>,
    exact: &'a mut Vec<Option<ExactState>>,
    stats: Stats,
    served: u32,
    draining: u32,
    unhealthy: u32,
    filtered_by: Option<&'a Arc<str>>,
}

impl Visitor<'_, '_> {
    /// Considers one endpoint; returns whether it became a candidate.
    #[inline]
    fn visit(&mut self, position: u32) -> bool {
        let at = position as usize;
        let scheduler = self.scheduler;
        let request = self.request;
        if !self.models.allows(at) {
            return false;
        }
        self.served += 1;
        if !self.snapshot.is_ready(at) {
            match self.snapshot.endpoints()[at].health {
                Health::Draining => self.draining += 1,
                _ => self.unhealthy += 1,
            }
            return false;
        }
        let live = &*self.snapshot.lives()[at];
        // Health events are rare: decode the GPU word only when one is flagged.
        if self.gpu_filtering
            && live.hot().gpu_has_event()
            && let Some(gpu) = live.gpu()
        {
            for filter in &scheduler.profile.filters {
                if let FilterKind::GpuHealth(params) = &filter.kind
                    && gpu_fault(&gpu, params).is_some()
                {
                    self.filtered_by = Some(&filter.name);
                    return false;
                }
            }
        }
        let mut candidate = scoring::read_live(
            position,
            live,
            self.now,
            scheduler.profile.saturation.metrics_staleness,
            scheduler.gpu_staleness,
            scheduler.needs,
        );
        candidate.prefix_blocks = hit_at(self.prefix_hits, position);
        if let Some(tree) = &scheduler.tree {
            candidate.tree_blocks = hit_at(self.tree_hits, position);
            candidate.tree_size =
                u32::try_from(tree.blocks_of(&self.snapshot.endpoints()[at].addr()))
                    .unwrap_or(u32::MAX);
        }
        if self.session_position == Some(position) {
            candidate.flags |= Candidate::SESSION;
        }
        if self.lora_needed {
            let load = live.last_load();
            candidate.lora =
                scoring::lora(request, load.as_ref().and_then(|load| load.lora.as_ref()));
        }
        if let Some(source) = &scheduler.exact {
            self.exact
                .push(source.exact(self.snapshot.endpoints()[at].addr(), request));
        }
        candidate.partial = scheduler.partial_score(&candidate, request);
        if let (Some(backlog), Some(slots)) = (&scheduler.backlog, &self.backlog_slots) {
            let addr = self.snapshot.endpoints()[at].addr();
            candidate.backlog = backlog.get(slots, at, &addr, self.now) as f32;
        }
        if let Some(params) = &scheduler.ttft
            && let Some(cost) = scoring::ttft_cost_fresh(
                &candidate,
                scoring::prefix_fraction(candidate.prefix_blocks, request.prefix.len()),
                request.input_tokens,
                params,
            )
        {
            candidate.ttft_cost = cost as f32;
        }
        self.stats.observe(&candidate);
        self.candidates.push(candidate);
        true
    }
}
