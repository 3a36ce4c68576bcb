//! The routing policies a simulation compares: scheduler profiles, built in or from a file.
use std::{path::Path, sync::Arc};

use crate::scheduling::{
    BUILTIN_PROFILES, ConfigError, EndpointPickerConfig, ExactStateSource, Scheduler,
    SchedulerOptions, builtin_yaml,
};

/// One policy: a scheduler profile. Nothing in the simulator special-cases any of them.
#[derive(Clone, Debug)]
pub struct Policy {
    name: String,
    config: Arc<EndpointPickerConfig>,
    uses_oracle: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read scheduler config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scheduler config {path}: {source}")]
    Config { path: String, source: ConfigError },
    #[error(transparent)]
    Builtin(#[from] ConfigError),
}

impl Policy {
    /// A built-in profile (`random`, `round-robin`, ..., `oracle`).
    pub fn builtin(name: &str) -> Result<Self, PolicyError> {
        let yaml = builtin_yaml(name).ok_or_else(|| ConfigError::UnknownBuiltin {
            name: name.to_owned(),
            known: BUILTIN_PROFILES.join(", "),
        })?;
        let config = EndpointPickerConfig::from_yaml(yaml)?;
        Self::new(name.to_owned(), config).map_err(PolicyError::Builtin)
    }

    /// Every built-in profile, in [`BUILTIN_PROFILES`] order.
    pub fn all_builtin() -> Vec<Self> {
        BUILTIN_PROFILES
            .iter()
            .filter_map(|name| Self::builtin(name).ok())
            .collect()
    }

    /// A custom profile from a GIE-format config file (YAML or JSON); it is named after the
    /// scheduling profile it runs.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        let wrap = |source| PolicyError::Config {
            path: shown.clone(),
            source,
        };
        let config = EndpointPickerConfig::from_yaml(&text).map_err(wrap)?;
        let compiled = config.compile(None).map_err(wrap)?;
        let name = compiled.name.to_string();
        Self::new(name, config).map_err(wrap)
    }

    fn new(name: String, config: EndpointPickerConfig) -> Result<Self, ConfigError> {
        let compiled = config.compile(None)?;
        Ok(Self {
            name,
            uses_oracle: compiled.uses_oracle().is_some(),
            config: Arc::new(config),
        })
    }

    /// Renames the policy (e.g. a config file whose profile name clashes with a built-in).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the profile reads the simulation's exact engine state.
    pub fn uses_oracle(&self) -> bool {
        self.uses_oracle
    }

    /// A fresh scheduler for one run; the exact-state source is attached only where the
    /// profile uses it (it costs a cache lookup per server and pick).
    pub fn scheduler(
        &self,
        seed: u64,
        exact: Option<Arc<dyn ExactStateSource>>,
    ) -> Result<Scheduler, ConfigError> {
        Scheduler::from_config(
            &self.config,
            SchedulerOptions {
                seed,
                exact_state: if self.uses_oracle { exact } else { None },
                profile: None,
            },
        )
    }
}
