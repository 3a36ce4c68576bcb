//! Scheduler configuration in GIE's `EndpointPickerConfig` format, validated with errors that
//! name the offending field by its path (`schedulingProfiles[0].plugins[2].weight`).
use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;

use super::{
    duration::GoDuration,
    plugins::{
        FilterKind, PLUGIN_TYPES, PickerKind, PluginKind, PrefixParams, ScorerKind, build_plugin,
    },
};
use crate::clock::{MICROS_PER_MS, Micros};

/// `apiVersion` values accepted (GIE's, and none = the same).
pub const API_VERSIONS: &[&str] = &["inference.networking.x-k8s.io/v1alpha1"];
pub const KIND: &str = "EndpointPickerConfig";

/// The YAML document, field for field as GIE's `apix/config/v1alpha1` types.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPickerConfig {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// Accepted for compatibility; no gate changes Switchyard's scheduler.
    #[serde(default)]
    pub feature_gates: Vec<String>,
    pub plugins: Vec<PluginSpec>,
    pub scheduling_profiles: Vec<SchedulingProfileSpec>,
    #[serde(default)]
    pub saturation_detector: Option<SaturationDetectorSpec>,
    /// GIE data-layer, flow-control and parser sections: accepted and ignored (Switchyard gets
    /// its data from agents and parses requests itself).
    #[serde(default)]
    pub data: Option<serde_yaml::Value>,
    #[serde(default)]
    pub flow_control: Option<serde_yaml::Value>,
    #[serde(default)]
    pub parser: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Defaults to the type.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub parameters: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulingProfileSpec {
    pub name: String,
    pub plugins: Vec<ProfilePluginSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfilePluginSpec {
    pub plugin_ref: String,
    /// Scorers only; 1 when absent.
    #[serde(default)]
    pub weight: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SaturationDetectorSpec {
    #[serde(default)]
    pub queue_depth_threshold: Option<i64>,
    #[serde(default)]
    pub kv_cache_util_threshold: Option<f64>,
    #[serde(default)]
    pub metrics_staleness_threshold: Option<GoDuration>,
}

/// Saturation thresholds (GIE defaults: queue 5, KV 0.8, staleness 200 ms). An endpoint has
/// capacity when its sample is fresh and it is under both thresholds; the pool is saturated when
/// no eligible endpoint has capacity. Stale and never-sampled endpoints have no capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SaturationConfig {
    pub queue_depth_threshold: u32,
    pub kv_cache_util_threshold: f64,
    pub metrics_staleness: Micros,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        Self {
            queue_depth_threshold: 5,
            kv_cache_util_threshold: 0.8,
            metrics_staleness: 200 * MICROS_PER_MS,
        }
    }
}

/// A configuration problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid scheduler config: {0}")]
    Yaml(String),
    #[error("invalid scheduler config: {path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "profile `{profile}` uses the oracle scorer `{plugin}`, which needs the exact engine \
         state only the simulation has: attach an exact-state source"
    )]
    OracleWithoutSource { profile: String, plugin: String },
    #[error("unknown built-in profile `{name}` (built-ins: {known})")]
    UnknownBuiltin { name: String, known: String },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NamedFilter {
    pub name: Arc<str>,
    pub kind: FilterKind,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WeightedScorer {
    pub name: Arc<str>,
    pub weight: f64,
    pub kind: ScorerKind,
}

/// A validated profile, ready to build a scheduler from.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledProfile {
    pub name: Arc<str>,
    pub(crate) filters: Vec<NamedFilter>,
    pub(crate) scorers: Vec<WeightedScorer>,
    pub(crate) picker: PickerKind,
    pub(crate) picks: usize,
    pub saturation: SaturationConfig,
    /// Parameters of the shared prefix index (from the prefix-cache scorer, else defaults).
    pub prefix: PrefixParams,
}

impl CompiledProfile {
    pub(crate) fn uses_oracle(&self) -> Option<&str> {
        self.scorers
            .iter()
            .find(|scorer| matches!(scorer.kind, ScorerKind::Oracle(_)))
            .map(|scorer| &*scorer.name)
    }
}

impl EndpointPickerConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|err| ConfigError::Yaml(err.to_string()))
    }

    /// Validates the whole document and compiles profile `profile` (default: the only profile,
    /// else the one named `default`).
    pub fn compile(&self, profile: Option<&str>) -> Result<CompiledProfile, ConfigError> {
        if let Some(version) = &self.api_version
            && !API_VERSIONS.contains(&version.as_str())
        {
            return Err(invalid(
                "apiVersion",
                format!(
                    "`{version}` is not supported (expected {})",
                    API_VERSIONS.join(" or ")
                ),
            ));
        }
        if let Some(kind) = &self.kind
            && kind != KIND
        {
            return Err(invalid("kind", format!("`{kind}` is not {KIND}")));
        }
        let plugins = self.build_plugins()?;
        let saturation = self.saturation()?;
        let mut compiled = Vec::with_capacity(self.scheduling_profiles.len());
        if self.scheduling_profiles.is_empty() {
            return Err(invalid(
                "schedulingProfiles",
                "at least one profile is required",
            ));
        }
        let mut seen = HashMap::new();
        for (index, spec) in self.scheduling_profiles.iter().enumerate() {
            let path = format!("schedulingProfiles[{index}]");
            if spec.name.trim().is_empty() {
                return Err(invalid(format!("{path}.name"), "must not be empty"));
            }
            if let Some(first) = seen.insert(spec.name.as_str(), index) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!(
                        "`{}` is already the name of schedulingProfiles[{first}]",
                        spec.name
                    ),
                ));
            }
            compiled.push(compile_profile(&path, spec, &plugins, saturation)?);
        }
        let chosen = match profile {
            Some(name) => compiled
                .into_iter()
                .find(|p| &*p.name == name)
                .ok_or_else(|| {
                    invalid(
                        "schedulingProfiles",
                        format!("no profile named `{name}` (have: {})", self.profile_names()),
                    )
                })?,
            None if compiled.len() == 1 => compiled.remove(0),
            None => compiled
                .into_iter()
                .find(|p| &*p.name == "default")
                .ok_or_else(|| {
                    invalid(
                        "schedulingProfiles",
                        format!(
                            "several profiles ({}) and none named `default`: say which to use",
                            self.profile_names()
                        ),
                    )
                })?,
        };
        Ok(chosen)
    }

    fn profile_names(&self) -> String {
        self.scheduling_profiles
            .iter()
            .map(|p| format!("`{}`", p.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn build_plugins(&self) -> Result<HashMap<&str, (usize, PluginKind)>, ConfigError> {
        let mut plugins = HashMap::new();
        for (index, spec) in self.plugins.iter().enumerate() {
            let path = format!("plugins[{index}]");
            let name = spec.name.as_deref().unwrap_or(&spec.plugin_type);
            if name.trim().is_empty() {
                return Err(invalid(format!("{path}.name"), "must not be empty"));
            }
            let kind = build_plugin(&spec.plugin_type, spec.parameters.as_ref())
                .map_err(|err| {
                    let field = err.field.map_or(String::new(), |f| format!(".{f}"));
                    invalid(
                        format!("{path}.parameters{field}"),
                        format!("({} `{}`) {}", spec.plugin_type, name, err.message),
                    )
                })?
                .ok_or_else(|| {
                    invalid(
                        format!("{path}.type"),
                        format!(
                            "unknown plugin type `{}` (known: {})",
                            spec.plugin_type,
                            PLUGIN_TYPES.join(", ")
                        ),
                    )
                })?;
            if let Some((first, _)) = plugins.insert(name, (index, kind)) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("`{name}` is already the name of plugins[{first}]"),
                ));
            }
        }
        Ok(plugins)
    }

    fn saturation(&self) -> Result<SaturationConfig, ConfigError> {
        let mut config = SaturationConfig::default();
        let Some(spec) = &self.saturation_detector else {
            return Ok(config);
        };
        if let Some(queue) = spec.queue_depth_threshold {
            config.queue_depth_threshold = u32::try_from(queue)
                .ok()
                .filter(|&q| q >= 1)
                .ok_or_else(|| {
                    invalid(
                        "saturationDetector.queueDepthThreshold",
                        format!("must be a whole number ≥ 1 (got {queue})"),
                    )
                })?;
        }
        if let Some(kv) = spec.kv_cache_util_threshold {
            if !(kv > 0.0 && kv <= 1.0) {
                return Err(invalid(
                    "saturationDetector.kvCacheUtilThreshold",
                    format!("must be in (0, 1] (got {kv})"),
                ));
            }
            config.kv_cache_util_threshold = kv;
        }
        if let Some(staleness) = spec.metrics_staleness_threshold {
            if staleness.0 == 0 {
                return Err(invalid(
                    "saturationDetector.metricsStalenessThreshold",
                    "must be greater than 0",
                ));
            }
            config.metrics_staleness = staleness.0;
        }
        Ok(config)
    }
}

fn compile_profile(
    path: &str,
    spec: &SchedulingProfileSpec,
    plugins: &HashMap<&str, (usize, PluginKind)>,
    saturation: SaturationConfig,
) -> Result<CompiledProfile, ConfigError> {
    let mut filters = Vec::new();
    let mut scorers = Vec::new();
    let mut picker: Option<(PickerKind, usize, String)> = None;
    let mut prefix: Option<PrefixParams> = None;
    if spec.plugins.is_empty() {
        return Err(invalid(
            format!("{path}.plugins"),
            "a profile needs at least one plugin",
        ));
    }
    for (index, entry) in spec.plugins.iter().enumerate() {
        let entry_path = format!("{path}.plugins[{index}]");
        let name = entry.plugin_ref.as_str();
        let Some((_, kind)) = plugins.get(name) else {
            let mut defined: Vec<&str> = plugins.keys().copied().collect();
            defined.sort_unstable();
            return Err(invalid(
                format!("{entry_path}.pluginRef"),
                format!(
                    "`{name}` does not name a plugin (defined: {})",
                    if defined.is_empty() {
                        "none".to_owned()
                    } else {
                        defined.join(", ")
                    }
                ),
            ));
        };
        if let (Some(weight), false) = (entry.weight, matches!(kind, PluginKind::Scorer(_))) {
            return Err(invalid(
                format!("{entry_path}.weight"),
                format!(
                    "`{name}` is a {}; only scorers take a weight (got {weight})",
                    kind.role()
                ),
            ));
        }
        let name: Arc<str> = Arc::from(name);
        match kind {
            PluginKind::Filter(filter) => filters.push(NamedFilter {
                name,
                kind: filter.clone(),
            }),
            PluginKind::Scorer(scorer) => {
                let weight = entry.weight.unwrap_or(1.0);
                if !(weight.is_finite() && weight > 0.0) {
                    return Err(invalid(
                        format!("{entry_path}.weight"),
                        format!("must be a finite number > 0 (got {weight})"),
                    ));
                }
                if scorers.iter().any(|s: &WeightedScorer| s.name == name) {
                    return Err(invalid(
                        format!("{entry_path}.pluginRef"),
                        format!("`{name}` is already in this profile"),
                    ));
                }
                if scorer.is_singleton()
                    && let Some(other) = scorers.iter().find(|s: &&WeightedScorer| {
                        std::mem::discriminant(&s.kind) == std::mem::discriminant(scorer)
                    })
                {
                    return Err(invalid(
                        format!("{entry_path}.pluginRef"),
                        format!(
                            "`{name}` is of the same type as `{}`; a profile holds one",
                            other.name
                        ),
                    ));
                }
                if let ScorerKind::Prefix(params) = scorer {
                    if prefix.as_ref().is_some_and(|seen| seen != params) {
                        return Err(invalid(
                            format!("{entry_path}.pluginRef"),
                            "two prefix-cache scorers with different parameters share one index",
                        ));
                    }
                    prefix = Some(params.clone());
                }
                scorers.push(WeightedScorer {
                    name,
                    weight,
                    kind: scorer.clone(),
                });
            }
            PluginKind::Picker(kind, picks) => {
                if let Some((_, _, first)) = &picker {
                    return Err(invalid(
                        format!("{entry_path}.pluginRef"),
                        format!("a profile has one picker; `{first}` is already this profile's"),
                    ));
                }
                picker = Some((*kind, *picks, name.to_string()));
            }
            PluginKind::ProfileHandler => {}
        }
    }
    // GIE's default when a profile names no picker.
    let (picker, picks, _) = picker.unwrap_or((
        PickerKind::MaxScore,
        super::plugins::DEFAULT_PICKS,
        String::new(),
    ));
    Ok(CompiledProfile {
        name: Arc::from(spec.name.as_str()),
        filters,
        scorers,
        picker,
        picks,
        saturation,
        prefix: prefix.unwrap_or_default(),
    })
}
