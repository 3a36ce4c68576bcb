//! Sweeps: each workload's rate grid (given, or calibrated from its estimated capacity), then
//! every policy at every rate, as independent runs on worker threads.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use indicatif::ProgressBar;
use parking_lot::Mutex;

use super::{Policy, SimConfig, SimError, simulate};
use crate::{
    bench::{
        report::{Record, WorkloadInfo},
        workload::{MODEL, Workload, WorkloadSpec},
    },
    clock::{MICROS_PER_SEC, Micros},
    scheduling::hash_token_blocks,
    sim::tokens::output_token,
};

/// The policy whose throughput defines a workload's capacity: the cost model on exact state is
/// the best-informed router, so its saturation point bounds the others'.
pub const CALIBRATION_POLICY: &str = "oracle";

/// Default rate grid: fractions of the estimated capacity, from light load to past saturation.
pub const DEFAULT_LOAD_FRACTIONS: [f64; 6] = [0.3, 0.5, 0.7, 0.85, 1.0, 1.2];

/// Which rates to run.
#[derive(Clone, Debug, PartialEq)]
pub enum RateGrid {
    /// The same rates (requests per second) for every workload.
    Fixed(Vec<f64>),
    /// Fractions of each workload's estimated capacity ([`estimate_capacity`]).
    Calibrated { fractions: Vec<f64> },
}

/// How long one run is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunLength {
    /// Arrivals for this long (virtual time), `rate × duration` requests as benchmark stages
    /// of a fixed duration do, but at least `min_requests` (so light loads still measure
    /// enough requests). A trace runs all its rows.
    Duration {
        duration: Micros,
        min_requests: usize,
    },
    /// This many requests whatever the rate (a trace: at most this many rows).
    Requests(usize),
}

impl RunLength {
    /// Requests of a run at `rate`.
    pub fn requests_at(self, rate: f64) -> usize {
        match self {
            Self::Duration {
                duration,
                min_requests,
            } => ((rate * duration as f64 / MICROS_PER_SEC as f64).ceil() as usize)
                .max(min_requests)
                .max(1),
            Self::Requests(count) => count.max(1),
        }
    }

    fn generate(self, spec: &WorkloadSpec, rate: f64, seed: u64) -> Result<Workload, SimError> {
        let count = match (self, spec) {
            (Self::Duration { .. }, WorkloadSpec::Trace(_)) => 0,
            _ => self.requests_at(rate),
        };
        spec.generate(count, seed)
            .map_err(|err| SimError::Workload {
                workload: spec.name(),
                reason: err.to_string(),
            })
    }
}

/// A sweep to run.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub workloads: Vec<WorkloadSpec>,
    pub policies: Vec<Policy>,
    pub rates: RateGrid,
    pub length: RunLength,
    pub config: SimConfig,
    /// Worker threads (runs are independent; results do not depend on the count).
    pub threads: usize,
}

/// What a sweep produced, in workload, policy, rate order.
#[derive(Clone, Debug)]
pub struct SweepOutput {
    pub workloads: Vec<WorkloadInfo>,
    pub records: Vec<Record>,
}

/// Runs the plan; `progress` counts runs (its length is set once the rates are known).
pub fn run_sweep(plan: &SweepPlan, progress: &ProgressBar) -> Result<SweepOutput, SimError> {
    plan.config.validate()?;
    if plan.policies.is_empty() || plan.workloads.is_empty() {
        return Err(SimError::Invalid(
            "a sweep needs at least one workload and one policy".to_owned(),
        ));
    }
    progress.set_message("estimating capacity");
    let seed = plan.config.seed;
    // Per workload: its rates, then the workload generated for the highest of them (each run
    // takes the head it needs: generation is prefix-stable).
    let prepared = parallel_map(&plan.workloads, plan.threads, |spec| {
        let (capacity, rates) = match &plan.rates {
            RateGrid::Fixed(rates) => (None, clean_rates(rates.iter().copied())?),
            RateGrid::Calibrated { fractions } => {
                let capacity = estimate_capacity(spec, plan.length, &plan.config)?;
                let rates = clean_rates(fractions.iter().map(|f| round_rate(f * capacity)))?;
                (Some(round_rate(capacity)), rates)
            }
        };
        let top = rates.last().copied().unwrap_or(1.0);
        let workload = Arc::new(plan.length.generate(spec, top, seed)?);
        Ok::<_, SimError>((capacity, rates, workload))
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut jobs = Vec::new();
    for (w, (_, rates, _)) in prepared.iter().enumerate() {
        for p in 0..plan.policies.len() {
            for &rate in rates {
                jobs.push((w, p, rate));
            }
        }
    }
    progress.set_length(jobs.len() as u64);
    progress.set_position(0);
    progress.set_message("running");
    let results = parallel_map(&jobs, plan.threads, |&(w, p, rate)| {
        let full = &prepared[w].2;
        let workload = full.head(plan.length.requests_at(rate).min(full.requests.len()));
        let policy = &plan.policies[p];
        let arrivals = workload.arrival_times(rate, seed);
        let outcome = simulate(&workload, policy, &arrivals, &plan.config);
        progress.inc(1);
        outcome.map(|outcome| Record {
            workload: workload.name.clone(),
            policy: policy.name().to_owned(),
            rate_rps: rate,
            metrics: outcome.metrics,
        })
    });
    let records = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let workloads = prepared
        .into_iter()
        .map(|(capacity, rates, workload)| WorkloadInfo {
            name: workload.name.clone(),
            parameters: serde_json::to_value(&workload.spec).unwrap_or_default(),
            requests: plan
                .length
                .requests_at(rates.last().copied().unwrap_or(1.0))
                .min(workload.requests.len()),
            total_tokens: workload.total_tokens(),
            capacity_rps: capacity,
            rates_rps: rates,
        })
        .collect();
    Ok(SweepOutput { workloads, records })
}

/// The cluster's capacity for a workload (requests per second). The step model gives a first
/// estimate ([`model_capacity`]); the calibration policy then runs at twice that rate, and the
/// requests per second it serves while backlogged is the capacity: output tokens per second in
/// the second half of the arrival window, divided by the mean output length (token throughput
/// is smooth where completions come in waves). If it kept up after all (the estimate was low),
/// the rate doubles, at most three times.
pub fn estimate_capacity(
    spec: &WorkloadSpec,
    length: RunLength,
    config: &SimConfig,
) -> Result<f64, SimError> {
    let policy = Policy::builtin(CALIBRATION_POLICY)?;
    let run = |rate: f64| -> Result<f64, SimError> {
        let workload = length.generate(spec, rate, config.seed)?;
        let mean_output = workload
            .requests
            .iter()
            .map(|r| f64::from(r.output_tokens))
            .sum::<f64>()
            / workload.requests.len().max(1) as f64;
        let arrivals = workload.arrival_times(rate, config.seed);
        let last = arrivals.iter().copied().max().unwrap_or(0);
        let outcome = simulate(&workload, &policy, &arrivals, config)?;
        Ok(outcome.recorder.output_rate(last / 2, last) / mean_output.max(1.0))
    };
    let guess = length.generate(spec, 100.0, config.seed)?;
    let mut rate = 2.0 * model_capacity(&guess, config);
    let mut capacity = f64::NAN;
    for _ in 0..4 {
        if !(rate.is_finite() && rate > 0.0) {
            break;
        }
        capacity = run(rate)?;
        if capacity < 0.9 * rate {
            break;
        }
        rate *= 2.0;
    }
    if capacity.is_finite() && capacity > 0.0 {
        Ok(capacity)
    } else {
        Err(SimError::Invalid(format!(
            "cannot estimate the capacity of workload `{}` (too few requests to measure a \
             steady rate; pass --rates)",
            spec.name()
        )))
    }
}

/// Capacity from the engine's step model: per server
/// `1 / (P·(1 − h)·prefill + O·(base/B + decode + kv_read·(P + O/2)))`, with the mean prompt
/// `P`, the mean output `O`, the share `h` of prompt tokens an unbounded cache could serve
/// ([`reusable_share`]) and the batch `B = min(max_num_seqs, KV tokens / (P + O))`; divided by
/// each server's slowdown and summed. Queueing, LoRA and bounded caches make the real figure
/// lower, which the calibration run measures.
pub fn model_capacity(workload: &Workload, config: &SimConfig) -> f64 {
    let count = workload.requests.len().max(1) as f64;
    let prompt = workload
        .requests
        .iter()
        .map(|r| r.prompt.len() as f64)
        .sum::<f64>()
        / count;
    let output = workload
        .requests
        .iter()
        .map(|r| f64::from(r.output_tokens))
        .sum::<f64>()
        / count;
    let profile = &config.profile;
    let step = &profile.step;
    let batch = (profile.kv_capacity_tokens as f64 / (prompt + output).max(1.0))
        .clamp(1.0, f64::from(profile.max_num_seqs));
    let per_token = step.base_us / batch
        + step.decode_us_per_seq
        + step.kv_read_us_per_token * (prompt + output / 2.0);
    let uncached = prompt * (1.0 - reusable_share(workload, profile.block_size));
    let service_us = (uncached * step.prefill_us_per_token + output * per_token) * profile.slowdown;
    (0..config.servers)
        .map(|index| {
            let slowdown = workload.cluster.slowdown(index).unwrap_or(1.0);
            MICROS_PER_SEC as f64 / (service_us * slowdown).max(1.0)
        })
        .sum()
}

/// Share of all prompt tokens that an unbounded cache shared by every server would serve, in
/// whole blocks of `block_size` tokens: each prompt's leading blocks already seen in an earlier
/// request's prompt or answer.
pub fn reusable_share(workload: &Workload, block_size: u32) -> f64 {
    let block = block_size.max(1) as usize;
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let (mut reused, mut total) = (0u64, 0u64);
    let mut tokens: Vec<u32> = Vec::new();
    for request in &workload.requests {
        let hashes = hash_token_blocks(MODEL, &request.prompt, block);
        let hit = hashes.iter().take_while(|hash| seen.contains(hash)).count();
        reused += (hit * block) as u64;
        total += request.prompt.len() as u64;
        tokens.clear();
        tokens.extend_from_slice(&request.prompt);
        tokens.extend(
            (0..request.output_tokens)
                .map(|position| output_token(workload.output_seed, request.id, position)),
        );
        seen.extend(hash_token_blocks(MODEL, &tokens, block));
    }
    if total == 0 {
        0.0
    } else {
        reused as f64 / total as f64
    }
}

/// Two significant digits: rates a reader can quote.
pub fn round_rate(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return value;
    }
    let exponent = value.log10().floor() as i32 - 1;
    let scale = 10f64.powi(exponent.abs());
    if exponent < 0 {
        (value * scale).round() / scale
    } else {
        (value / scale).round() * scale
    }
}

/// Sorted, deduplicated, all positive and finite.
fn clean_rates(rates: impl Iterator<Item = f64>) -> Result<Vec<f64>, SimError> {
    let mut rates: Vec<f64> = rates.collect();
    if let Some(bad) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        return Err(SimError::Invalid(format!(
            "rates must be finite and > 0 requests per second, got {bad}"
        )));
    }
    if rates.is_empty() {
        return Err(SimError::Invalid("no rates to run".to_owned()));
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    Ok(rates)
}

/// `f` over `items` on up to `threads` scoped threads; results in item order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let result = f(item);
                    slots.lock()[index] = Some(result);
                }
            });
        }
    });
    // Scoped threads re-raise a worker's panic, so every slot is filled here.
    slots.into_inner().into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_round_to_two_significant_digits() {
        assert_eq!(round_rate(19.34), 19.0);
        assert_eq!(round_rate(5.83), 5.8);
        assert_eq!(round_rate(0.734), 0.73);
        assert_eq!(round_rate(143.0), 140.0);
        assert_eq!(round_rate(9.96), 10.0);
    }

    #[test]
    fn rate_lists_are_checked_sorted_and_deduplicated() {
        assert_eq!(
            clean_rates([3.0, 1.0, 3.0].into_iter()).unwrap(),
            vec![1.0, 3.0]
        );
        assert!(clean_rates([1.0, 0.0].into_iter()).is_err());
        assert!(clean_rates([f64::NAN].into_iter()).is_err());
        assert!(clean_rates(std::iter::empty()).is_err());
    }

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<u32> = (0..50).collect();
        assert_eq!(
            parallel_map(&items, 3, |x| x * 2),
            (0..50).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&[] as &[u32], 2, |x| *x).is_empty());
    }
}
