//! Filters (drop endpoints) and the saturation checks.
use super::{
    config::SaturationConfig,
    plugins::{GpuHealthParams, SaturationFilterParams},
    scoring::Candidate,
};
use crate::cluster::GpuSignals;

/// Why the GPU health filter removes an endpoint, if it does. Health events are used whatever
/// their age: a GPU that hit a fatal XID stays out until its agent reports it clean (reset).
pub fn gpu_fault(signals: &GpuSignals, params: &GpuHealthParams) -> Option<String> {
    if let Some(xid) = signals.last_xid
        && params.fatal_xids.contains(&xid)
    {
        return Some(format!("GPU XID {xid}"));
    }
    if signals.ecc_uncorrected > params.max_uncorrected_ecc {
        return Some(format!(
            "{} uncorrected ECC errors on a GPU",
            signals.ecc_uncorrected
        ));
    }
    None
}

/// Whether an endpoint is under the saturation thresholds raised by `headroom`, on a fresh
/// sample (with what this router sent since the sample counted as queued). Unknown is not.
#[inline]
pub(crate) fn has_capacity(
    candidate: &Candidate,
    config: &SaturationConfig,
    headroom: f64,
) -> bool {
    candidate.fresh()
        && f64::from(candidate.queue) < f64::from(config.queue_depth_threshold) * (1.0 + headroom)
        && f64::from(candidate.kv) < config.kv_cache_util_threshold * (1.0 + headroom)
}

/// GIE's utilisation filter: keep endpoints with capacity; the caller keeps everyone when none
/// has any (a filter must not turn overload into an outage).
#[inline]
pub(crate) fn saturation_filter(
    candidate: &Candidate,
    config: &SaturationConfig,
    params: &SaturationFilterParams,
) -> bool {
    has_capacity(candidate, config, params.headroom)
}
