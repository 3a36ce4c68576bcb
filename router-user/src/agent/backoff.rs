//! Reconnect delays: exponential, capped, with jitter so a fleet of agents that lost the same
//! EPP does not reconnect in lockstep.
use std::time::Duration;

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// "Equal jitter": the n-th delay is drawn uniformly from `[d/2, d]` with
/// `d = min(max, initial × 2ⁿ)`. Half the delay is guaranteed (no hot retry loop), half is
/// spread (no thundering herd).
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The un-jittered delay of the next retry.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// The delay before the next retry; each call doubles the ceiling up to the cap.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half);
        if spread.is_zero() {
            return ceiling;
        }
        half + spread.mul_f64(rng.random::<f64>())
    }

    /// Back to the initial delay (after a connection proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Retries since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn delays_double_within_jitter_bounds_up_to_the_cap() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut backoff = Backoff::new(policy);
        let mut rng = StdRng::seed_from_u64(7);
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for ceiling in ceilings {
            let ceiling = Duration::from_millis(ceiling);
            assert_eq!(backoff.ceiling(), ceiling);
            let delay = backoff.next_delay(&mut rng);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        assert_eq!(backoff.attempts(), 0);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..50)
            .map(|_| {
                let mut backoff = Backoff::new(BackoffPolicy::default());
                backoff.next_delay(&mut rng)
            })
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 40,
            "jittered delays should differ: {delays:?}"
        );
    }

    #[test]
    fn huge_attempt_counts_saturate_at_the_cap() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.ceiling(), BackoffPolicy::default().max);
    }
}
