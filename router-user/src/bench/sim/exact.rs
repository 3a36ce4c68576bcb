//! The oracle's view: each simulated engine's exact state at the instant of a pick.
use std::net::SocketAddr;

use parking_lot::Mutex;

use super::server_index;
use crate::{
    scheduling::{ExactState, ExactStateSource, SchedulingRequest},
    sim::Engine,
};

/// Exact engine states for the request being routed. The simulation calls [`prepare`] with the
/// request's tokens right before `Scheduler::pick` (the scheduler only sees block hashes, while
/// the engines' caches are keyed by token blocks), and the scheduler reads them back per
/// endpoint.
///
/// [`prepare`]: Self::prepare
#[derive(Debug, Default)]
pub(crate) struct EngineStates {
    states: Mutex<Vec<ExactState>>,
}

impl EngineStates {
    /// `engines` pairs each engine with the prompt tokens it has yet to compute.
    pub fn prepare<'e>(
        &self,
        engines: impl Iterator<Item = (&'e Engine, u64)>,
        prompt: &[u32],
        lora: Option<&str>,
    ) {
        let mut states = self.states.lock();
        states.clear();
        states.extend(engines.map(|(engine, pending)| ExactState {
            waiting: engine.num_waiting() as u32,
            running: engine.num_running() as u32,
            kv_free_tokens: u64::from(engine.num_free_blocks()) * u64::from(engine.block_size()),
            cached_prefix_tokens: engine.cached_prefix_tokens(prompt, lora),
            pending_prefill_tokens: pending,
        }));
    }
}

impl ExactStateSource for EngineStates {
    fn exact(&self, endpoint: SocketAddr, _request: &SchedulingRequest<'_>) -> Option<ExactState> {
        let index = server_index(&endpoint)?;
        self.states.lock().get(index).copied()
    }
}
