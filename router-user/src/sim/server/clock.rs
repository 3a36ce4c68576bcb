//! Virtual time for the HTTP server: wall time since start, scaled by `--speed`.
use std::time::{Duration, Instant};

use crate::clock::{Clock, Micros, SystemClock};

/// Starts at the wall-clock time of creation (Unix microseconds) and runs `speed` times faster
/// than the wall clock, so at `--speed 1` engine times are comparable with other processes'.
#[derive(Clone, Debug)]
pub struct SimClock {
    wall_start: Instant,
    virtual_start: Micros,
    speed: f64,
}

impl SimClock {
    /// `speed` must be finite and > 0 (the CLI checks it).
    pub fn new(speed: f64) -> Self {
        Self {
            wall_start: Instant::now(),
            virtual_start: SystemClock.now(),
            speed,
        }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Wall time until virtual time `at` (zero if it has passed).
    pub fn wall_until(&self, at: Micros) -> Duration {
        let now = self.now();
        if at <= now {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((at - now) as f64 / 1e6 / self.speed)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Micros {
        let elapsed = self.wall_start.elapsed().as_secs_f64() * 1e6 * self.speed;
        self.virtual_start + elapsed as Micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_faster_by_speed() {
        let clock = SimClock::new(1000.0);
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            clock.now() - start >= 2_000_000,
            "2 ms of wall time is 2 s of virtual time"
        );
        let later = clock.now() + 1_000_000;
        assert!(clock.wall_until(later) <= Duration::from_millis(1));
        assert_eq!(clock.wall_until(start), Duration::ZERO);
    }
}
