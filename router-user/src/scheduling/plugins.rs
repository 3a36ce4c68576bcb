//! Plugin types and their parameters, as named in configs (GIE/llm-d names where one exists).
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    duration::GoDuration,
    prefix_hash::{DEFAULT_BLOCK_BYTES, DEFAULT_BLOCK_TOKENS, DEFAULT_MAX_BLOCKS},
    prefix_index::{DEFAULT_CAPACITY_PER_ENDPOINT, DEFAULT_MAX_ENDPOINTS_PER_BLOCK},
    session::{DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TTL},
};
use crate::clock::MICROS_PER_SEC;

/// Ranked endpoints a picker returns unless told otherwise (primary + 2 fallbacks).
pub const DEFAULT_PICKS: usize = 3;

/// A parameter problem: the offending field (if one) and what is wrong.
#[derive(Debug)]
pub(crate) struct ParamError {
    pub field: Option<&'static str>,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> ParamError {
    ParamError {
        field: Some(field),
        message: message.into(),
    }
}

fn check_fraction(field: &'static str, value: f64) -> Result<(), ParamError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(bad(field, format!("must be between 0 and 1 (got {value})")))
    }
}

fn check_non_negative(field: &'static str, value: f64) -> Result<(), ParamError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be a finite number ≥ 0 (got {value})"),
        ))
    }
}

fn check_at_least_one(field: &'static str, value: usize) -> Result<(), ParamError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(bad(field, "must be at least 1 (got 0)"))
    }
}

/// The prefix index and hashing shared by the prefix-cache and TTFT scorers.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixParams {
    /// Bytes of request body per block ([`PrefixHasher`](super::PrefixHasher)).
    pub hash_block_size: usize,
    /// Token ids per block ([`hash_token_blocks`](super::hash_token_blocks), the simulation).
    pub block_size_tokens: usize,
    pub max_prefix_blocks_to_match: usize,
    pub lru_capacity_per_server: usize,
    /// Most endpoints remembered per block (most recent kept); bounds lookup work.
    pub max_endpoints_per_block: usize,
}

impl Default for PrefixParams {
    fn default() -> Self {
        Self {
            hash_block_size: DEFAULT_BLOCK_BYTES,
            block_size_tokens: DEFAULT_BLOCK_TOKENS,
            max_prefix_blocks_to_match: DEFAULT_MAX_BLOCKS,
            lru_capacity_per_server: DEFAULT_CAPACITY_PER_ENDPOINT,
            max_endpoints_per_block: DEFAULT_MAX_ENDPOINTS_PER_BLOCK,
        }
    }
}

impl PrefixParams {
    fn validate(&self) -> Result<(), ParamError> {
        check_at_least_one("hashBlockSize", self.hash_block_size)?;
        check_at_least_one("blockSizeTokens", self.block_size_tokens)?;
        check_at_least_one("maxPrefixBlocksToMatch", self.max_prefix_blocks_to_match)?;
        check_at_least_one("lruCapacityPerServer", self.lru_capacity_per_server)?;
        check_at_least_one("maxEndpointsPerBlock", self.max_endpoints_per_block)
    }
}

/// Knobs of the latency cost model shared by `ttft-scorer` and `oracle-scorer`
/// (see docs/scheduling.md for the formula).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CostParams {
    /// Cost of one request waiting ahead, in units of this request's full prefill, before the
    /// discount for the share of it the endpoint's cache serves.
    pub queue_cost: f64,
    /// Least share of a queued request counted as uncached (its tail, its scheduling steps), so
    /// a fully cached queue is never free.
    pub queue_miss_floor: f64,
    /// Cost of one request in the running batch (it slows every step), same unit.
    pub running_cost: f64,
    /// KV-cache usage above which admission starts to wait for memory.
    pub kv_soft_limit: f64,
    /// Cost of a full KV cache (usage 1.0), same unit; linear from `kvSoftLimit`.
    pub kv_cost: f64,
    /// Extra fraction of time a throttled GPU takes (power cap, thermal).
    pub throttle_slowdown: f64,
    /// Added to every cost before taking ratios, so near-zero costs do not look very different.
    pub smoothing: f64,
    /// Prompt tokens per second an engine computes; the router's estimate of the prefill work it
    /// sent to an endpoint drains at this rate. 0 turns the backlog term off.
    pub prefill_tokens_per_second: f64,
    /// Weight of the prefill backlog (tokens still to compute there / this prompt's tokens).
    pub backlog_cost: f64,
}

impl Default for CostParams {
    fn default() -> Self {
        Self {
            queue_cost: 1.0,
            queue_miss_floor: 0.1,
            running_cost: 0.001,
            kv_soft_limit: 0.8,
            kv_cost: 4.0,
            throttle_slowdown: 0.5,
            smoothing: 0.1,
            prefill_tokens_per_second: 30_000.0,
            backlog_cost: 1.0,
        }
    }
}

impl CostParams {
    fn validate(&self) -> Result<(), ParamError> {
        check_non_negative("queueCost", self.queue_cost)?;
        check_fraction("queueMissFloor", self.queue_miss_floor)?;
        check_non_negative("runningCost", self.running_cost)?;
        check_fraction("kvSoftLimit", self.kv_soft_limit)?;
        if self.kv_soft_limit >= 1.0 {
            return Err(bad("kvSoftLimit", "must be below 1"));
        }
        check_non_negative("kvCost", self.kv_cost)?;
        check_non_negative("throttleSlowdown", self.throttle_slowdown)?;
        check_non_negative("prefillTokensPerSecond", self.prefill_tokens_per_second)?;
        check_non_negative("backlogCost", self.backlog_cost)?;
        check_non_negative("smoothing", self.smoothing)?;
        if self.smoothing == 0.0 {
            return Err(bad("smoothing", "must be greater than 0"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GpuScorerParams {
    pub headroom_weight: f64,
    pub utilization_weight: f64,
    pub throttle_weight: f64,
    /// GPU readings older than this are ignored (scored neutral).
    pub staleness_threshold: GoDuration,
}

impl Default for GpuScorerParams {
    fn default() -> Self {
        Self {
            headroom_weight: 0.4,
            utilization_weight: 0.3,
            throttle_weight: 0.3,
            staleness_threshold: GoDuration(5 * MICROS_PER_SEC),
        }
    }
}

impl GpuScorerParams {
    fn validate(&self) -> Result<(), ParamError> {
        check_non_negative("headroomWeight", self.headroom_weight)?;
        check_non_negative("utilizationWeight", self.utilization_weight)?;
        check_non_negative("throttleWeight", self.throttle_weight)?;
        if self.headroom_weight + self.utilization_weight + self.throttle_weight == 0.0 {
            return Err(bad(
                "headroomWeight",
                "at least one of the weights must be > 0",
            ));
        }
        Ok(())
    }
}

/// XIDs after which a GPU needs a reset (NVIDIA's XID catalogue): DBE ECC (48), micro-controller
/// halt (61, 62), row-remap failure (64), NVLink (74), fell off the bus (79), uncontained ECC
/// (95), GSP timeouts/errors (119, 120), unrecovered ECC (140).
pub const DEFAULT_FATAL_XIDS: [u16; 10] = [48, 61, 62, 64, 74, 79, 95, 119, 120, 140];

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GpuHealthParams {
    pub fatal_xids: Vec<u16>,
    /// Endpoints whose GPUs report more volatile uncorrected ECC errors than this are removed.
    pub max_uncorrected_ecc: u8,
}

impl Default for GpuHealthParams {
    fn default() -> Self {
        Self {
            fatal_xids: DEFAULT_FATAL_XIDS.to_vec(),
            max_uncorrected_ecc: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SaturationFilterParams {
    /// Burst allowance above the saturation thresholds (0.2 = 20 %), as GIE's detector.
    pub headroom: f64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InflightMode {
    #[default]
    Requests,
    Tokens,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct InflightParams {
    pub mode: InflightMode,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionParams {
    pub max_sessions: usize,
    pub ttl: GoDuration,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_MAX_SESSIONS,
            ttl: GoDuration(DEFAULT_SESSION_TTL),
        }
    }
}

/// SGLang router's cache-aware policy, on block hashes instead of characters.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheAwareParams {
    /// Minimum matched fraction to follow the cache; below it, the smallest tree wins.
    pub cache_threshold: f64,
    /// Imbalanced when max − min load exceeds this ...
    pub balance_abs_threshold: u32,
    /// ... and max load exceeds min load times this.
    pub balance_rel_threshold: f64,
    /// Blocks remembered per endpoint (SGLang's 67,108,864 characters ÷ 256 bytes a block).
    pub max_tree_size: usize,
}

impl Default for CacheAwareParams {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            max_tree_size: 262_144,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PickerParams {
    pub max_num_of_endpoints: usize,
}

impl Default for PickerParams {
    fn default() -> Self {
        Self {
            max_num_of_endpoints: DEFAULT_PICKS,
        }
    }
}

/// Power-of-d choices for large fleets: score the endpoints the request has affinity with
/// (prefix holders, its session's endpoint) plus a seeded random sample of the others.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AffinitySampleParams {
    pub sample_size: usize,
}

impl Default for AffinitySampleParams {
    fn default() -> Self {
        Self { sample_size: 256 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FilterKind {
    GpuHealth(GpuHealthParams),
    Saturation(SaturationFilterParams),
    AffinitySample(AffinitySampleParams),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ScorerKind {
    Queue,
    KvCache,
    Prefix(PrefixParams),
    Lora,
    Session(SessionParams),
    Inflight(InflightParams),
    Gpu(GpuScorerParams),
    Connections,
    Ttft(CostParams),
    CacheAware(CacheAwareParams),
    Oracle(CostParams),
}

impl ScorerKind {
    /// Whether the value depends on the other candidates (min-max, ratios, pool balance), so it
    /// can only be computed after the statistics pass.
    pub(crate) fn needs_pool_stats(&self) -> bool {
        matches!(
            self,
            Self::Queue
                | Self::Inflight(_)
                | Self::Connections
                | Self::Ttft(_)
                | Self::CacheAware(_)
                | Self::Oracle(_)
        )
    }

    /// Kinds a profile may hold at most once (they keep per-profile state or costs).
    pub(crate) fn is_singleton(&self) -> bool {
        matches!(
            self,
            Self::Ttft(_) | Self::Oracle(_) | Self::CacheAware(_) | Self::Session(_)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PickerKind {
    MaxScore,
    Random,
    RoundRobin,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PluginKind {
    Filter(FilterKind),
    Scorer(ScorerKind),
    Picker(PickerKind, usize),
    ProfileHandler,
}

impl PluginKind {
    pub(crate) fn role(&self) -> &'static str {
        match self {
            Self::Filter(_) => "filter",
            Self::Scorer(_) => "scorer",
            Self::Picker(..) => "picker",
            Self::ProfileHandler => "profile handler",
        }
    }
}

/// Every plugin type a config may name (aliases included), for error messages.
pub const PLUGIN_TYPES: &[&str] = &[
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "kv-cache-scorer",
    "prefix-cache-scorer",
    "lora-affinity-scorer",
    "session-affinity-scorer",
    "inflight-scorer",
    "active-request-scorer",
    "gpu-scorer",
    "connection-scorer",
    "ttft-scorer",
    "cache-aware-scorer",
    "oracle-scorer",
    "gpu-health-filter",
    "saturation-filter",
    "affinity-sample-filter",
    "max-score-picker",
    "random-picker",
    "round-robin-picker",
    "single-profile-handler",
];

fn params<T: DeserializeOwned + Default>(
    parameters: Option<&serde_yaml::Value>,
) -> Result<T, ParamError> {
    match parameters {
        None | Some(serde_yaml::Value::Null) => Ok(T::default()),
        Some(value) => serde_yaml::from_value(value.clone()).map_err(|err| ParamError {
            field: None,
            message: err.to_string(),
        }),
    }
}

fn no_params(parameters: Option<&serde_yaml::Value>) -> Result<(), ParamError> {
    match parameters {
        None | Some(serde_yaml::Value::Null) => Ok(()),
        Some(serde_yaml::Value::Mapping(map)) if map.is_empty() => Ok(()),
        Some(_) => Err(ParamError {
            field: None,
            message: "this plugin takes no parameters".to_owned(),
        }),
    }
}

/// Builds a plugin from its type name and parameters; `Ok(None)` for an unknown type.
pub(crate) fn build_plugin(
    plugin_type: &str,
    parameters: Option<&serde_yaml::Value>,
) -> Result<Option<PluginKind>, ParamError> {
    use PluginKind::{Filter, Picker, ProfileHandler, Scorer};
    let kind = match plugin_type {
        "queue-scorer" => no_params(parameters).map(|()| Scorer(ScorerKind::Queue))?,
        "kv-cache-utilization-scorer" | "kv-cache-scorer" => {
            no_params(parameters).map(|()| Scorer(ScorerKind::KvCache))?
        }
        "prefix-cache-scorer" => {
            let p: PrefixParams = params(parameters)?;
            p.validate()?;
            Scorer(ScorerKind::Prefix(p))
        }
        "lora-affinity-scorer" => no_params(parameters).map(|()| Scorer(ScorerKind::Lora))?,
        "session-affinity-scorer" => {
            let p: SessionParams = params(parameters)?;
            check_at_least_one("maxSessions", p.max_sessions)?;
            Scorer(ScorerKind::Session(p))
        }
        "inflight-scorer" | "active-request-scorer" => {
            Scorer(ScorerKind::Inflight(params(parameters)?))
        }
        "gpu-scorer" => {
            let p: GpuScorerParams = params(parameters)?;
            p.validate()?;
            Scorer(ScorerKind::Gpu(p))
        }
        "connection-scorer" => no_params(parameters).map(|()| Scorer(ScorerKind::Connections))?,
        "ttft-scorer" => {
            let p: CostParams = params(parameters)?;
            p.validate()?;
            Scorer(ScorerKind::Ttft(p))
        }
        "oracle-scorer" => {
            let p: CostParams = params(parameters)?;
            p.validate()?;
            Scorer(ScorerKind::Oracle(p))
        }
        "cache-aware-scorer" => {
            let p: CacheAwareParams = params(parameters)?;
            check_fraction("cacheThreshold", p.cache_threshold)?;
            if !(p.balance_rel_threshold.is_finite() && p.balance_rel_threshold >= 1.0) {
                return Err(bad(
                    "balanceRelThreshold",
                    format!("must be ≥ 1 (got {})", p.balance_rel_threshold),
                ));
            }
            check_at_least_one("maxTreeSize", p.max_tree_size)?;
            Scorer(ScorerKind::CacheAware(p))
        }
        "gpu-health-filter" => Filter(FilterKind::GpuHealth(params(parameters)?)),
        "affinity-sample-filter" => {
            let p: AffinitySampleParams = params(parameters)?;
            check_at_least_one("sampleSize", p.sample_size)?;
            Filter(FilterKind::AffinitySample(p))
        }
        "saturation-filter" => {
            let p: SaturationFilterParams = params(parameters)?;
            check_non_negative("headroom", p.headroom)?;
            Filter(FilterKind::Saturation(p))
        }
        "max-score-picker" | "random-picker" | "round-robin-picker" => {
            let p: PickerParams = params(parameters)?;
            check_at_least_one("maxNumOfEndpoints", p.max_num_of_endpoints)?;
            let kind = match plugin_type {
                "max-score-picker" => PickerKind::MaxScore,
                "random-picker" => PickerKind::Random,
                _ => PickerKind::RoundRobin,
            };
            Picker(kind, p.max_num_of_endpoints)
        }
        "single-profile-handler" => no_params(parameters).map(|()| ProfileHandler)?,
        _ => return Ok(None),
    };
    Ok(Some(kind))
}
