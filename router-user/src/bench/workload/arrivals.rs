//! Open-loop arrival processes, scaled to a rate.
use std::sync::Arc;

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp1};

use crate::clock::{MICROS_PER_SEC, Micros};

/// How open-loop requests arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrivalProcess {
    /// Exponential gaps.
    Poisson,
    /// Poisson during `on_s` seconds out of every `on_s + off_s`, nothing in between.
    OnOff { on_s: f64, off_s: f64 },
    /// A trace's arrival offsets in seconds (sorted, the first at 0), replayed compressed or
    /// stretched so that the mean rate is the one asked for.
    Trace { offsets_s: Arc<[f64]> },
}

impl ArrivalProcess {
    /// `count` arrival times for a mean rate of `rate` per second. The same seed gives the same
    /// unit-rate draws at every rate, so runs at different rates see the same sequence. An
    /// infinite rate puts every arrival at time 0 (an offline batch).
    pub fn times(&self, count: usize, rate: f64, seed: u64) -> Vec<Micros> {
        if !rate.is_finite() {
            return vec![0; count];
        }
        let rate = rate.max(f64::MIN_POSITIVE);
        let to_micros = |seconds: f64| (seconds * MICROS_PER_SEC as f64).round() as Micros;
        match self {
            Self::Poisson => unit_poisson(count, seed)
                .map(|t| to_micros(t / rate))
                .collect(),
            Self::OnOff { on_s, off_s } => {
                let cycle = on_s + off_s;
                // Time is counted only while "on": the on-phase rate keeps the mean at `rate`.
                let on_rate = rate * cycle / on_s;
                unit_poisson(count, seed)
                    .map(|t| {
                        let on_time = t / on_rate;
                        let cycles = (on_time / on_s).floor();
                        to_micros(cycles * cycle + (on_time - cycles * on_s))
                    })
                    .collect()
            }
            Self::Trace { offsets_s } => {
                let span = offsets_s.last().copied().unwrap_or(0.0);
                let native = if span > 0.0 && offsets_s.len() > 1 {
                    (offsets_s.len() - 1) as f64 / span
                } else {
                    f64::INFINITY
                };
                let scale = if native.is_finite() {
                    native / rate
                } else {
                    0.0
                };
                offsets_s
                    .iter()
                    .take(count)
                    .map(|&offset| to_micros(offset * scale))
                    .collect()
            }
        }
    }
}

/// Cumulative sums of `count` unit-rate exponential gaps.
fn unit_poisson(count: usize, seed: u64) -> impl Iterator<Item = f64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa771_7a15);
    let mut t = 0.0;
    (0..count).map(move |_| {
        let gap: f64 = Exp1.sample(&mut rng);
        t += gap;
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_mean_rate_and_scaling() {
        let slow = ArrivalProcess::Poisson.times(10_000, 10.0, 3);
        let fast = ArrivalProcess::Poisson.times(10_000, 20.0, 3);
        let span = *slow.last().unwrap() as f64 / 1e6;
        assert!((span - 1_000.0).abs() < 50.0, "{span}");
        // Common random numbers: doubling the rate halves every arrival time.
        for (a, b) in slow.iter().zip(&fast).take(100) {
            assert!((*a as i64 - 2 * *b as i64).abs() <= 2);
        }
        assert!(slow.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            ArrivalProcess::Poisson.times(3, f64::INFINITY, 1),
            vec![0; 3]
        );
    }

    #[test]
    fn on_off_arrives_only_while_on_at_the_mean_rate() {
        let process = ArrivalProcess::OnOff {
            on_s: 1.0,
            off_s: 4.0,
        };
        let times = process.times(5_000, 10.0, 9);
        for &t in &times {
            let phase = (t as f64 / 1e6) % 5.0;
            assert!(phase <= 1.0 + 1e-6, "arrival at phase {phase}");
        }
        let span = *times.last().unwrap() as f64 / 1e6;
        assert!((span - 500.0).abs() < 30.0, "{span}");
    }

    #[test]
    fn traces_are_rescaled_to_the_rate() {
        let process = ArrivalProcess::Trace {
            offsets_s: Arc::from(vec![0.0, 1.0, 2.0, 4.0]),
        };
        // Native rate 3 requests / 4 s = 0.75/s; at 1.5/s everything is twice as early.
        assert_eq!(
            process.times(4, 1.5, 0),
            vec![0, 500_000, 1_000_000, 2_000_000]
        );
        assert_eq!(process.times(2, 0.75, 0), vec![0, 1_000_000]);
    }
}
