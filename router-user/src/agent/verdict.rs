//! From readings to a verdict: does an endpoint get new connections, and if not, why.
//! The drain rules are in docs/agent.md ("Drains"); scoring (`score.rs`) takes the verdict as
//! an input.
use crate::clock::{MICROS_PER_MS, Micros};
use crate::cluster::GpuSignals;
use crate::scheduling::{GpuHealthParams, gpu_fault};
use crate::telemetry::GpuSample;
use crate::telemetry::health::{GpuHealth, HealthPolicy, HealthReason};
use crate::telemetry::http::HttpError;
use crate::telemetry::scrape::{EndpointStatus, ScrapeError};

use super::score::{Drain, DrainKind};
use super::view::GpuView;

#[derive(Clone, Debug, PartialEq)]
pub struct VerdictParams {
    /// A model server whose scrapes fail at the transport level (refused, reset, timed out)
    /// for this long is unreachable: drained, and dead for the never-empty rule.
    pub unreachable_after: Micros,
    /// GPU health policy (stale after 5 s, memory exhausted above 98 %...).
    pub gpu: HealthPolicy,
    /// The scheduler's GPU health filter, so the agent and the EPP drain the same GPUs.
    pub gpu_filter: GpuHealthParams,
}

impl Default for VerdictParams {
    fn default() -> Self {
        Self {
            unreachable_after: 300 * MICROS_PER_MS,
            gpu: HealthPolicy::default(),
            gpu_filter: GpuHealthParams::default(),
        }
    }
}

/// What kind of failure a scrape error message describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrapeFailure {
    /// Nothing answered (refused, reset, timed out): the server may be down.
    Transport,
    /// The server answered with an HTTP error.
    Http,
    /// The page did not read (not UTF-8, not Prometheus text, wrong engine, missing metric).
    Parse,
}

impl ScrapeFailure {
    /// Classifies the message the scraper records (`ScrapeState::last_error`), which is the
    /// error's `Display`.
    pub fn of(message: &str) -> Self {
        let timeout = ScrapeError::Timeout(std::time::Duration::ZERO).to_string();
        let request = HttpError::Request(String::new()).to_string();
        let body = HttpError::Body(String::new()).to_string();
        let status = HttpError::Status(0).to_string();
        let prefix = |full: &str| {
            full.split([':', '0'])
                .next()
                .unwrap_or(full)
                .trim()
                .to_owned()
        };
        if [timeout, request, body]
            .iter()
            .any(|full| message.starts_with(&prefix(full)))
        {
            Self::Transport
        } else if message.starts_with(&prefix(&status)) {
            Self::Http
        } else {
            Self::Parse
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Transport => "timeout",
            Self::Http => "http",
            Self::Parse => "parse",
        }
    }
}

/// The drain of one endpoint, if any, most severe reason first.
///
/// - `Unreachable`: scrapes failed at the transport level at least twice in a row, for
///   `unreachable_after` since the last success (or since the agent first saw the endpoint).
/// - `NotReady`: its pod is not ready (Kubernetes).
/// - `GpuFault`: a GPU it uses needs a reset (critical XID by NVIDIA's catalog or the
///   scheduler's fatal list, uncorrected ECC errors).
/// - `GpuMemoryExhausted`: a GPU it uses has more than 98 % of its memory used.
/// - `StaleGpuTelemetry`: GPU telemetry is on but a GPU it uses has not been read for 5 s.
pub fn drain_for(
    status: Option<&EndpointStatus>,
    first_seen: Micros,
    pod_ready: Option<bool>,
    gpus: &[&GpuView],
    now: Micros,
    params: &VerdictParams,
) -> Option<Drain> {
    if let Some(status) = status {
        let scrape = &status.scrape;
        if scrape.consecutive_failures >= 2
            && let Some((_, message)) = &scrape.last_error
            && ScrapeFailure::of(message) == ScrapeFailure::Transport
        {
            let since = scrape.last_ok.unwrap_or(first_seen);
            let failing_for = now.saturating_sub(since);
            if failing_for >= params.unreachable_after {
                let last_good = match scrape.last_ok {
                    Some(at) => format!(
                        " (last good scrape {} ms ago)",
                        now.saturating_sub(at) / MICROS_PER_MS
                    ),
                    None => String::new(),
                };
                return Some(Drain::new(
                    DrainKind::Unreachable,
                    format!("model server unreachable{last_good}: {message}"),
                ));
            }
        }
    }
    if pod_ready == Some(false) {
        return Some(Drain::new(DrainKind::NotReady, "pod is not ready"));
    }
    let samples: Vec<GpuSample> = gpus.iter().map(|g| g.sample.clone()).collect();
    if let Some(signals) = GpuSignals::from_samples(&samples)
        && let Some(reason) = gpu_fault(&signals, &params.gpu_filter)
    {
        return Some(Drain::new(DrainKind::GpuFault, reason));
    }
    for gpu in gpus {
        if let GpuHealth::Unhealthy(reason) = &gpu.health {
            return Some(Drain::new(
                DrainKind::GpuFault,
                format!("GPU {}: {reason}", gpu.sample.uuid),
            ));
        }
    }
    for gpu in gpus {
        if let GpuHealth::Degraded(reasons) = &gpu.health
            && let Some(reason) = reasons
                .iter()
                .find(|r| matches!(r, HealthReason::MemoryExhausted { .. }))
        {
            return Some(Drain::new(
                DrainKind::GpuMemoryExhausted,
                format!("GPU {}: {reason}", gpu.sample.uuid),
            ));
        }
    }
    for gpu in gpus {
        let age = now.saturating_sub(gpu.sample.sampled_at);
        if age > params.gpu.max_age {
            return Some(Drain::new(
                DrainKind::StaleGpuTelemetry,
                format!(
                    "GPU {}: {}",
                    gpu.sample.uuid,
                    HealthReason::StaleReading { age }
                ),
            ));
        }
    }
    None
}

/// Whether a GPU of the endpoint is slowed down (power cap, thermal, hardware), on a reading
/// fresh enough to trust.
pub fn throttled(gpus: &[&GpuView], now: Micros, params: &VerdictParams) -> bool {
    gpus.iter().any(|gpu| {
        now.saturating_sub(gpu.sample.sampled_at) <= params.gpu.max_age
            && gpu.sample.throttle_reasons.is_slowed_down()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::health::HealthTracker;
    use crate::telemetry::scrape::{ScrapeState, ScrapeTarget};

    const NOW: Micros = 10_000_000;

    fn status(failures: u32, last_ok: Option<Micros>, error: &str) -> EndpointStatus {
        EndpointStatus {
            target: ScrapeTarget::new("10.0.0.1:8000".parse().unwrap()),
            engine: None,
            load: None,
            scrape: ScrapeState {
                last_ok,
                last_error: (failures > 0).then(|| (NOW, error.to_owned())),
                consecutive_failures: failures,
                ..ScrapeState::default()
            },
        }
    }

    fn gpu(sample: GpuSample) -> GpuView {
        let health = HealthTracker::new(HealthPolicy::default()).assess(&sample, NOW);
        GpuView {
            sample,
            seq: 1,
            health,
        }
    }

    fn healthy_sample() -> GpuSample {
        GpuSample {
            uuid: "GPU-a".into(),
            memory_used_bytes: 50,
            memory_total_bytes: 100,
            sampled_at: NOW,
            ..GpuSample::default()
        }
    }

    #[test]
    fn scrape_errors_are_classified_from_their_messages() {
        let refused =
            ScrapeError::Http(HttpError::Request("Connection refused".into())).to_string();
        assert_eq!(ScrapeFailure::of(&refused), ScrapeFailure::Transport);
        let timeout = ScrapeError::Timeout(std::time::Duration::from_millis(40)).to_string();
        assert_eq!(ScrapeFailure::of(&timeout), ScrapeFailure::Transport);
        let status = ScrapeError::Http(HttpError::Status(503)).to_string();
        assert_eq!(ScrapeFailure::of(&status), ScrapeFailure::Http);
        assert_eq!(
            ScrapeFailure::of("line 3: invalid sample value"),
            ScrapeFailure::Parse
        );
    }

    #[test]
    fn an_unreachable_server_drains_after_the_grace_period_only() {
        let params = VerdictParams::default();
        let refused =
            ScrapeError::Http(HttpError::Request("Connection refused".into())).to_string();
        let recent = status(3, Some(NOW - 100 * MICROS_PER_MS), &refused);
        assert_eq!(drain_for(Some(&recent), 0, None, &[], NOW, &params), None);
        let long = status(8, Some(NOW - 400 * MICROS_PER_MS), &refused);
        let drain = drain_for(Some(&long), 0, None, &[], NOW, &params).expect("drained");
        assert_eq!(drain.kind, DrainKind::Unreachable);
        assert!(
            drain.reason.contains("last good scrape 400 ms ago"),
            "{}",
            drain.reason
        );
        // Never scraped: counted from when the agent first saw it.
        let never = status(5, None, &refused);
        assert!(
            drain_for(
                Some(&never),
                NOW - 50 * MICROS_PER_MS,
                None,
                &[],
                NOW,
                &params
            )
            .is_none()
        );
        assert!(drain_for(Some(&never), 0, None, &[], NOW, &params).is_some());
        // A server that answers with errors is not unreachable.
        let broken = status(8, Some(0), "HTTP status 500");
        assert_eq!(drain_for(Some(&broken), 0, None, &[], NOW, &params), None);
    }

    #[test]
    fn gpu_conditions_drain_in_order_of_severity() {
        let params = VerdictParams::default();
        let fine = gpu(healthy_sample());
        assert_eq!(drain_for(None, 0, Some(true), &[&fine], NOW, &params), None);
        assert_eq!(
            drain_for(None, 0, Some(false), &[&fine], NOW, &params).map(|d| d.kind),
            Some(DrainKind::NotReady)
        );
        let xid = gpu(GpuSample {
            last_xid: Some(79),
            ..healthy_sample()
        });
        let full = gpu(GpuSample {
            memory_used_bytes: 99,
            ..healthy_sample()
        });
        let mut old = healthy_sample();
        old.sampled_at = NOW - 6_000_000;
        let stale = GpuView {
            sample: old,
            seq: 1,
            health: GpuHealth::Healthy,
        };
        let kind = |gpus: &[&GpuView]| drain_for(None, 0, None, gpus, NOW, &params).map(|d| d.kind);
        assert_eq!(kind(&[&fine, &xid]), Some(DrainKind::GpuFault));
        assert_eq!(kind(&[&full, &stale]), Some(DrainKind::GpuMemoryExhausted));
        assert_eq!(kind(&[&stale]), Some(DrainKind::StaleGpuTelemetry));
        let ecc = gpu(GpuSample {
            ecc_uncorrected: Some(2),
            ..healthy_sample()
        });
        assert_eq!(kind(&[&ecc]), Some(DrainKind::GpuFault));
    }

    #[test]
    fn throttling_counts_only_on_fresh_readings() {
        let params = VerdictParams::default();
        let mut sample = healthy_sample();
        sample.throttle_reasons = crate::telemetry::ThrottleReasons(
            crate::telemetry::ThrottleReasons::HW_THERMAL_SLOWDOWN,
        );
        let hot = gpu(sample.clone());
        assert!(throttled(&[&hot], NOW, &params));
        sample.sampled_at = 0;
        let old = gpu(sample);
        assert!(!throttled(&[&old], NOW, &params));
    }
}
