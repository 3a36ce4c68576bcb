//! Turns the engine events of one HTTP request into text deltas per choice.
use tokio::sync::mpsc;

use super::driver::InFlight;
use super::stop::StopMatcher;
use crate::openai::Usage;
use crate::openai::response::finish;
use crate::sim::engine::EngineEvent;
use crate::sim::tokens::output_text;

/// Why a choice ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finish {
    pub reason: &'static str,
    /// The stop string that ended it, if any.
    pub stop_reason: Option<String>,
}

/// New text of one choice since the last delta, and its end if it ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    pub index: u32,
    pub text: String,
    pub finish: Option<Finish>,
}

/// One choice of the response: an engine request.
#[derive(Clone, Debug)]
pub(crate) struct ChoicePlan {
    pub index: u32,
    /// Which prompt of a batch it answers (usage counts each prompt once).
    pub prompt_group: usize,
    pub prompt_tokens: u32,
}

struct ChoiceState {
    plan: ChoicePlan,
    id: u64,
    consumed: u32,
    completion_tokens: u32,
    cached_tokens: u32,
    stop: StopMatcher,
    finish: Option<Finish>,
    text: String,
}

pub(crate) struct Generation {
    choices: Vec<ChoiceState>,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    guard: InFlight,
    seed: u64,
    unfinished: usize,
    keep_text: bool,
}

impl Generation {
    /// `ids[i]` is the engine request of `plans[i]`. With `keep_text` the full text of each
    /// choice is kept for a non-streaming answer.
    pub fn new(
        plans: Vec<ChoicePlan>,
        ids: Vec<u64>,
        stops: &[String],
        events: mpsc::UnboundedReceiver<EngineEvent>,
        guard: InFlight,
        seed: u64,
        keep_text: bool,
    ) -> Self {
        let choices: Vec<ChoiceState> = plans
            .into_iter()
            .zip(ids)
            .map(|(plan, id)| ChoiceState {
                plan,
                id,
                consumed: 0,
                completion_tokens: 0,
                cached_tokens: 0,
                stop: StopMatcher::new(stops.iter().cloned()),
                finish: None,
                text: String::new(),
            })
            .collect();
        Self {
            unfinished: choices.len(),
            choices,
            events,
            guard,
            seed,
            keep_text,
        }
    }

    /// Waits for the next events and applies every one already queued (a client slower than
    /// the engine gets merged deltas, as from vLLM). `None` once every choice has ended.
    pub async fn next(&mut self) -> Option<Vec<Delta>> {
        if self.unfinished == 0 {
            return None;
        }
        let mut deltas = Vec::new();
        match self.events.recv().await {
            Some(event) => self.apply(event, &mut deltas),
            None => self.abort_rest(&mut deltas),
        }
        while let Ok(event) = self.events.try_recv() {
            self.apply(event, &mut deltas);
        }
        Some(deltas)
    }

    /// Output tokens delivered so far over all choices.
    pub fn tokens_delivered(&self) -> u32 {
        self.choices.iter().map(|choice| choice.consumed).sum()
    }

    fn delta_for(deltas: &mut Vec<Delta>, index: u32) -> &mut Delta {
        let at = match deltas.iter().position(|delta| delta.index == index) {
            Some(at) => at,
            None => {
                deltas.push(Delta {
                    index,
                    ..Delta::default()
                });
                deltas.len() - 1
            }
        };
        &mut deltas[at]
    }

    fn apply(&mut self, event: EngineEvent, deltas: &mut Vec<Delta>) {
        let id = match event {
            EngineEvent::FirstToken { id, .. }
            | EngineEvent::Token { id, .. }
            | EngineEvent::Finished { id, .. }
            | EngineEvent::Preempted { id, .. } => id,
        };
        let Some(at) = self.choices.iter().position(|choice| choice.id == id) else {
            return;
        };
        if self.choices[at].finish.is_some() {
            return;
        }
        let seed = self.seed;
        let keep_text = self.keep_text;
        match event {
            EngineEvent::FirstToken { cached_tokens, .. } => {
                self.choices[at].cached_tokens = cached_tokens;
            }
            EngineEvent::Token { generated, .. } => {
                let choice = &mut self.choices[at];
                let delta = Self::delta_for(deltas, choice.plan.index);
                while choice.consumed < generated {
                    let piece = output_text(seed, id, choice.consumed);
                    choice.consumed += 1;
                    let (ready, matched) = choice.stop.push(piece);
                    delta.text.push_str(&ready);
                    if keep_text {
                        choice.text.push_str(&ready);
                    }
                    if let Some(stop) = matched {
                        choice.completion_tokens = choice.consumed;
                        choice.finish = Some(Finish {
                            reason: finish::STOP,
                            stop_reason: Some(stop),
                        });
                        delta.finish = choice.finish.clone();
                        self.unfinished -= 1;
                        self.guard.abort(id);
                        break;
                    }
                }
            }
            EngineEvent::Finished { reason, usage, .. } => {
                let choice = &mut self.choices[at];
                let rest = choice.stop.flush();
                if keep_text {
                    choice.text.push_str(&rest);
                }
                choice.completion_tokens = usage.completion_tokens;
                choice.cached_tokens = usage.cached_tokens;
                choice.finish = Some(Finish {
                    reason: reason.as_str(),
                    stop_reason: None,
                });
                let delta = Self::delta_for(deltas, choice.plan.index);
                delta.text.push_str(&rest);
                delta.finish = choice.finish.clone();
                self.unfinished -= 1;
            }
            EngineEvent::Preempted { .. } => {}
        }
    }

    /// The engine went away (server shutting down): end what is left as aborted.
    fn abort_rest(&mut self, deltas: &mut Vec<Delta>) {
        for choice in &mut self.choices {
            if choice.finish.is_none() {
                choice.finish = Some(Finish {
                    reason: finish::ABORT,
                    stop_reason: None,
                });
                choice.completion_tokens = choice.consumed;
                let delta = Self::delta_for(deltas, choice.plan.index);
                delta.finish = choice.finish.clone();
            }
        }
        self.unfinished = 0;
    }

    /// Usage over all choices: each prompt of a batch counted once, cached tokens from its
    /// first choice.
    pub fn usage(&self) -> Usage {
        let mut prompt_tokens = 0;
        let mut cached_tokens = 0;
        let mut seen_groups: Vec<usize> = Vec::new();
        let mut completion_tokens = 0;
        for choice in &self.choices {
            completion_tokens += choice.completion_tokens;
            if !seen_groups.contains(&choice.plan.prompt_group) {
                seen_groups.push(choice.plan.prompt_group);
                prompt_tokens += choice.plan.prompt_tokens;
                cached_tokens += choice.cached_tokens;
            }
        }
        Usage::new(prompt_tokens, completion_tokens, Some(cached_tokens))
    }

    /// Final (index, text, finish) of every choice, in index order.
    pub fn results(&self) -> Vec<(u32, &str, Option<&Finish>)> {
        let mut results: Vec<(u32, &str, Option<&Finish>)> = self
            .choices
            .iter()
            .map(|choice| {
                (
                    choice.plan.index,
                    choice.text.as_str(),
                    choice.finish.as_ref(),
                )
            })
            .collect();
        results.sort_by_key(|(index, _, _)| *index);
        results
    }
}
