//! The scheduler configuration: a GIE `EndpointPickerConfig` file (`--config`) or a built-in
//! profile (`--profile`), and the hot reload of the file: checked every second, validated, and
//! swapped in only when valid (the running scheduler stays, with a logged error, otherwise).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::metrics::Metrics;
use crate::scheduling::{ConfigError, Scheduler, SchedulerHandle, SchedulerOptions};

/// How often the config file is checked.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);
/// The profile used when neither `--config` nor `--profile` is given.
pub const DEFAULT_PROFILE: &str = "switchyard";

/// Scheduler flags shared by `switchyard epp` and `switchyard proxy`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SchedulerArgs {
    /// Scheduler configuration (GIE EndpointPickerConfig YAML); reloaded when it changes.
    #[arg(long, conflicts_with = "profile")]
    pub config: Option<PathBuf>,
    /// A built-in profile instead of --config: random, round-robin, least-request,
    /// gie-default, sglang-cache-aware, switchyard (default).
    #[arg(long)]
    pub profile: Option<String>,
    /// Which scheduling profile of the config file runs (default: the only one, or `default`).
    #[arg(long, requires = "config")]
    pub scheduling_profile: Option<String>,
    /// Seed of the scheduler's tie-breaks (default: random per process, so replicas do not
    /// break ties the same way).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerConfigError {
    #[error("cannot read scheduler config {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("scheduler config {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error(transparent)]
    Builtin(#[from] ConfigError),
}

impl SchedulerArgs {
    pub fn options(&self, seed: u64) -> SchedulerOptions {
        SchedulerOptions {
            seed,
            exact_state: None,
            profile: self.scheduling_profile.clone(),
        }
    }

    /// Builds the scheduler.
    pub fn build(&self) -> Result<BuiltScheduler, SchedulerConfigError> {
        let seed = self.seed.unwrap_or_else(rand::random);
        let options = self.options(seed);
        let (scheduler, config_text) = match &self.config {
            Some(path) => {
                let text = read(path)?;
                let scheduler = Scheduler::from_yaml(&text, options).map_err(|source| {
                    SchedulerConfigError::Invalid {
                        path: path.clone(),
                        source,
                    }
                })?;
                (scheduler, Some(text))
            }
            None => (
                Scheduler::builtin_with(
                    self.profile.as_deref().unwrap_or(DEFAULT_PROFILE),
                    options,
                )?,
                None,
            ),
        };
        Ok(BuiltScheduler {
            handle: SchedulerHandle::new(scheduler),
            seed,
            config_text,
        })
    }
}

/// A scheduler built from the flags.
#[derive(Debug)]
pub struct BuiltScheduler {
    pub handle: SchedulerHandle,
    /// The tie-break seed used.
    pub seed: u64,
    /// The config file's content it was built from (the reload compares against it).
    pub config_text: Option<String>,
}

fn read(path: &Path) -> Result<String, SchedulerConfigError> {
    std::fs::read_to_string(path).map_err(|err| SchedulerConfigError::Read {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

/// Watches `path` and reloads `handle` when its content differs from `loaded` (what the
/// running scheduler was built from). Content is compared, not modification times: Kubernetes
/// swaps ConfigMap files through a symlink whose target's mtime says little.
pub fn spawn_reload(
    path: PathBuf,
    loaded: Option<String>,
    handle: Arc<SchedulerHandle>,
    options: SchedulerOptions,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = loaded;
        let mut ticker = tokio::time::interval(RELOAD_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(err) => {
                    // A ConfigMap update replaces the file in steps; a miss is retried.
                    tracing::debug!(path = %path.display(), error = %err, "config file unreadable");
                    continue;
                }
            };
            if last.as_deref() == Some(text.as_str()) {
                continue;
            }
            match handle.reload_yaml(&text, options.clone()) {
                Ok(()) => {
                    metrics.config_reload(true);
                    tracing::info!(path = %path.display(), profile = %handle.current().name(),
                        "scheduler config reloaded");
                }
                Err(err) => {
                    metrics.config_reload(false);
                    tracing::error!(path = %path.display(), error = %err,
                        "invalid scheduler config; keeping the running one");
                }
            }
            last = Some(text);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
";

    #[test]
    fn builds_from_file_profile_or_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, VALID).unwrap();
        let args = SchedulerArgs {
            config: Some(path.clone()),
            seed: Some(3),
            ..SchedulerArgs::default()
        };
        let built = args.build().unwrap();
        assert_eq!((built.handle.current().name(), built.seed), ("default", 3));
        assert_eq!(built.config_text.as_deref(), Some(VALID));
        let built = SchedulerArgs::default().build().unwrap();
        assert_eq!(built.handle.current().name(), DEFAULT_PROFILE);
        std::fs::write(&path, "plugins: [").unwrap();
        let err = args.build().unwrap_err().to_string();
        assert!(err.contains("config.yaml"), "{err}");
        let missing = SchedulerArgs {
            profile: Some("nope".into()),
            ..SchedulerArgs::default()
        };
        assert!(missing.build().unwrap_err().to_string().contains("nope"));
    }
}
