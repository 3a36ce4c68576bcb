//! Hot reload: the running scheduler behind an atomic pointer, replaced only by a valid one.
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{
    config::{ConfigError, EndpointPickerConfig},
    scheduler::{Scheduler, SchedulerOptions},
};

/// Holds the live [`Scheduler`]. Request paths call [`current`](Self::current) (one atomic
/// load) and keep the `Arc` for the request; a reload validates and builds the new scheduler
/// first and swaps only on success, so a bad config never replaces a good one.
#[derive(Debug)]
pub struct SchedulerHandle {
    current: ArcSwap<Scheduler>,
}

impl SchedulerHandle {
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            current: ArcSwap::from_pointee(scheduler),
        }
    }

    pub fn current(&self) -> Arc<Scheduler> {
        self.current.load_full()
    }

    /// Validates `yaml`, builds a scheduler that keeps the learned state it can, and swaps it in.
    /// On error the running scheduler stays.
    pub fn reload_yaml(&self, yaml: &str, options: SchedulerOptions) -> Result<(), ConfigError> {
        let config = EndpointPickerConfig::from_yaml(yaml)?;
        self.reload(&config, options)
    }

    pub fn reload(
        &self,
        config: &EndpointPickerConfig,
        options: SchedulerOptions,
    ) -> Result<(), ConfigError> {
        let next = self.current.load().reconfigure(config, options)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Swaps in an already-built scheduler (e.g. a built-in profile).
    pub fn replace(&self, scheduler: Scheduler) {
        self.current.store(Arc::new(scheduler));
    }
}
