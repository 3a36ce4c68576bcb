//! Time as the router sees it: microseconds on a clock the caller chooses.
//!
//! Live components use [`SystemClock`] (wall-clock microseconds since the Unix epoch, comparable
//! across the agents and the EPP); the cluster simulation drives the same scheduler on a
//! [`ManualClock`] that it advances itself. Code that ages samples or measures latency takes a
//! `&dyn Clock` (or a `Micros` "now") instead of calling `Instant::now()`.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// Microseconds on some [`Clock`].
pub type Micros = u64;

pub const MICROS_PER_MS: Micros = 1_000;
pub const MICROS_PER_SEC: Micros = 1_000_000;

pub trait Clock: Send + Sync {
    fn now(&self) -> Micros;
}

/// Wall-clock microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as Micros)
    }
}

/// A clock that only moves when told to (virtual time). Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start: Micros) -> Self {
        Self(Arc::new(AtomicU64::new(start)))
    }

    pub fn set(&self, now: Micros) {
        self.0.store(now, Ordering::Release);
    }

    pub fn advance(&self, by: Micros) {
        self.0.fetch_add(by, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        let shared = clock.clone();
        assert_eq!(clock.now(), 5);
        shared.advance(10);
        assert_eq!(clock.now(), 15);
        clock.set(3);
        assert_eq!(shared.now(), 3);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > 1_577_836_800 * MICROS_PER_SEC);
    }
}
