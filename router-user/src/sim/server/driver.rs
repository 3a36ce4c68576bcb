//! Runs the engine in real time and routes its events to the requests waiting on them.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AppState, Core};
use crate::clock::Clock;
use crate::openai::ApiError;
use crate::sim::engine::{EngineEvent, SimRequest, SubmitError};

/// Advances the engine to the current virtual time, delivers events, and sleeps until the
/// engine's next event or a wake-up (new request, abort, shutdown).
pub(crate) async fn drive(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut events = Vec::with_capacity(1024);
    loop {
        let next = {
            let mut core = state.core.lock();
            let now = state.clock.now();
            core.engine.advance_into(now, &mut events);
            for event in events.drain(..) {
                dispatch(&mut core.streams, event);
            }
            core.engine.next_event_at()
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep(state.clock.wall_until(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = state.wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

fn dispatch(streams: &mut HashMap<u64, mpsc::UnboundedSender<EngineEvent>>, event: EngineEvent) {
    match event {
        EngineEvent::Finished { id, .. } => {
            if let Some(stream) = streams.remove(&id) {
                let _ = stream.send(event);
            }
        }
        EngineEvent::FirstToken { id, .. }
        | EngineEvent::Token { id, .. }
        | EngineEvent::Preempted { id, .. } => {
            if let Some(stream) = streams.get(&id) {
                // A closed receiver means the request is being dropped; its guard aborts it.
                let _ = stream.send(event);
            }
        }
    }
}

/// One engine request of an HTTP request.
#[derive(Clone, Debug)]
pub(crate) struct EngineRequest {
    pub prompt: Arc<[u32]>,
    pub max_tokens: u32,
    pub ignore_eos: bool,
    pub lora: Option<Arc<str>>,
}

/// Aborts the engine requests of an HTTP request that goes away before they finish.
pub(crate) struct InFlight {
    state: Arc<AppState>,
    ids: Vec<u64>,
}

impl InFlight {
    /// Aborts one request now (stop string matched); later drops skip it.
    pub fn abort(&mut self, id: u64) {
        abort_ids(&self.state, &[id]);
        self.ids.retain(|&other| other != id);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        abort_ids(&self.state, &self.ids);
    }
}

fn abort_ids(state: &AppState, ids: &[u64]) {
    if ids.is_empty() {
        return;
    }
    let mut changed = false;
    {
        let mut core = state.core.lock();
        let Core { engine, streams } = &mut *core;
        for id in ids {
            // Finished requests already left `streams`; only live ones are aborted.
            if streams.remove(id).is_some() {
                changed |= engine.abort(*id).is_some();
            }
        }
    }
    if changed {
        state.wake.notify_one();
    }
}

fn submit_error(err: SubmitError) -> ApiError {
    match err {
        SubmitError::ContextLength {
            prompt_tokens,
            max_tokens,
            max_model_len,
        } => ApiError::context_length_exceeded(
            u64::from(max_model_len),
            u64::from(prompt_tokens),
            u64::from(max_tokens),
        ),
        SubmitError::KvCapacity { .. } | SubmitError::EmptyPrompt | SubmitError::ZeroMaxTokens => {
            ApiError::bad_request(err.to_string())
        }
        SubmitError::LoraDisabled
        | SubmitError::TooManyAdapters
        | SubmitError::DuplicateId(_)
        | SubmitError::ArrivalInPast { .. } => ApiError::internal(err.to_string()),
    }
}

/// Submits all engine requests of one HTTP request (all or none). Returns their ids in order,
/// the receiver of their events and the guard that aborts them if the caller goes away.
pub(crate) fn submit(
    state: &Arc<AppState>,
    requests: Vec<EngineRequest>,
) -> Result<(Vec<u64>, mpsc::UnboundedReceiver<EngineEvent>, InFlight), ApiError> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut ids = Vec::with_capacity(requests.len());
    let result = {
        let mut core = state.core.lock();
        let arrival = state.clock.now().max(core.engine.now());
        let mut result = Ok(());
        for request in requests {
            let id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let submitted = core.engine.submit(SimRequest {
                id,
                prompt: request.prompt,
                max_tokens: request.max_tokens,
                ignore_eos: request.ignore_eos,
                lora: request.lora,
                arrival,
            });
            match submitted {
                Ok(()) => {
                    core.streams.insert(id, sender.clone());
                    ids.push(id);
                }
                Err(err) => {
                    result = Err(submit_error(err));
                    break;
                }
            }
        }
        result
    };
    let guard = InFlight {
        state: state.clone(),
        ids: ids.clone(),
    };
    // On error the guard drops here and takes back what was submitted.
    result?;
    state.wake.notify_one();
    Ok((ids, receiver, guard))
}
