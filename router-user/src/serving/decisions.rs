//! The last N routing decisions, for operators who need to know why a request went where it
//! went: chosen and runner-up endpoint with every scorer's contribution, the predicted prefix hit,
//! and, once the response's `usage` arrives, the realised one (the engine's cached-token count).
//! Served as JSON on `/debug/decisions` of the metrics port.
use std::collections::VecDeque;
use std::net::SocketAddr;

use parking_lot::Mutex;
use serde::Serialize;

use crate::clock::Micros;
use crate::cluster::TokenUsage;
use crate::scheduling::{Decision, RankedEndpoint};

/// Decisions kept by default.
pub const DEFAULT_DECISIONS_KEPT: usize = 1024;

/// What happened to the request after the pick.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Routed; no response seen yet.
    #[default]
    Routed,
    /// The response ended normally.
    Completed,
    /// The client or the gateway went away before the response ended.
    Cancelled,
}

/// The realised side of a decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Realised {
    /// Endpoint that actually served (differs from the chosen one after a gateway retry).
    pub served: Option<SocketAddr>,
    pub status: Option<u16>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`, when the engine reports it.
    pub cached_tokens: Option<u64>,
    /// `cached_tokens / prompt_tokens`: compare with `predicted_prefix_hit`.
    pub prefix_hit: Option<f64>,
    pub outcome: Outcome,
}

/// One routing decision, explained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub id: u64,
    /// Wall-clock microseconds since the Unix epoch.
    pub at: Micros,
    pub model: String,
    pub target_model: String,
    pub priority: i32,
    pub profile: String,
    pub chosen: SocketAddr,
    pub runner_up: Option<SocketAddr>,
    /// The top of the ranking with each scorer's weighted part (chosen first).
    pub ranked: Vec<RankedEndpoint>,
    pub predicted_prefix_hit: f64,
    /// Prompt blocks hashed for the prefix index.
    pub prompt_blocks: usize,
    /// Endpoints that passed the filters, and the pool size.
    pub candidates: u32,
    pub members: u32,
    /// Time the pick took, microseconds.
    pub pick_micros: u64,
    pub realised: Realised,
}

impl DecisionRecord {
    pub fn new(id: u64, decision: &Decision, context: DecisionContext<'_>) -> Self {
        Self {
            id,
            at: context.at,
            model: context.model.to_owned(),
            target_model: context.target_model.to_owned(),
            priority: context.priority,
            profile: decision.profile.to_string(),
            chosen: decision.primary(),
            runner_up: decision.fallbacks().next(),
            ranked: decision.ranked.iter().take(2).cloned().collect(),
            predicted_prefix_hit: decision.predicted_prefix_hit,
            prompt_blocks: context.prompt_blocks,
            candidates: decision.candidates,
            members: decision.members,
            pick_micros: context.pick_micros,
            realised: Realised::default(),
        }
    }
}

/// The request-side facts a record needs besides the decision.
#[derive(Clone, Copy, Debug)]
pub struct DecisionContext<'a> {
    pub at: Micros,
    pub model: &'a str,
    pub target_model: &'a str,
    pub priority: i32,
    pub prompt_blocks: usize,
    pub pick_micros: u64,
}

#[derive(Debug, Default)]
struct Ring {
    /// Id of `records[0]`.
    first_id: u64,
    records: VecDeque<DecisionRecord>,
}

/// A bounded ring of recent decisions; ids are consecutive, so an update finds its record by
/// arithmetic (or learns it was already evicted).
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    ring: Mutex<Ring>,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(Ring {
                first_id: 1,
                records: VecDeque::with_capacity(capacity.min(4096)),
            }),
        }
    }

    /// Stores a decision; returns its id (0 when the log keeps nothing).
    pub fn record(&self, decision: &Decision, context: DecisionContext<'_>) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let mut ring = self.ring.lock();
        let id = ring.first_id + ring.records.len() as u64;
        let record = DecisionRecord::new(id, decision, context);
        if ring.records.len() == self.capacity {
            ring.records.pop_front();
            ring.first_id += 1;
        }
        ring.records.push_back(record);
        id
    }

    /// Updates the realised side of decision `id`, if it is still kept.
    pub fn update(&self, id: u64, change: impl FnOnce(&mut Realised)) {
        if id == 0 {
            return;
        }
        let mut ring = self.ring.lock();
        let Some(offset) = id.checked_sub(ring.first_id) else {
            return;
        };
        if let Some(record) = ring.records.get_mut(offset as usize) {
            change(&mut record.realised);
        }
    }

    /// Records the end of a request: served endpoint, status, usage, outcome.
    pub fn settle(
        &self,
        id: u64,
        served: SocketAddr,
        status: Option<u16>,
        usage: Option<&TokenUsage>,
        outcome: Outcome,
    ) {
        self.update(id, |realised| {
            realised.served = Some(served);
            realised.status = status;
            realised.outcome = outcome;
            if let Some(usage) = usage {
                realised.prompt_tokens = Some(usage.prompt_tokens);
                realised.completion_tokens = Some(usage.completion_tokens);
                realised.cached_tokens = usage.cached_prompt_tokens;
                realised.prefix_hit = usage
                    .cached_prompt_tokens
                    .filter(|_| usage.prompt_tokens > 0)
                    .map(|cached| (cached as f64 / usage.prompt_tokens as f64).min(1.0));
            }
        });
    }

    /// The newest `limit` records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<DecisionRecord> {
        let ring = self.ring.lock();
        ring.records.iter().rev().take(limit).cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<DecisionRecord> {
        let ring = self.ring.lock();
        let offset = id.checked_sub(ring.first_id)?;
        ring.records.get(offset as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn decision(addr: &str) -> Decision {
        Decision {
            profile: Arc::from("p"),
            ranked: vec![RankedEndpoint {
                addr: addr.parse().unwrap(),
                score: 1.0,
                prefix_hit: 0.5,
                contributions: Vec::new(),
            }],
            predicted_prefix_hit: 0.5,
            candidates: 1,
            members: 1,
            snapshot_version: 1,
            at: 0,
        }
    }

    fn context() -> DecisionContext<'static> {
        DecisionContext {
            at: 1,
            model: "m",
            target_model: "m",
            priority: 0,
            prompt_blocks: 4,
            pick_micros: 3,
        }
    }

    #[test]
    fn ring_keeps_the_newest_and_updates_by_id() {
        let log = DecisionLog::new(2);
        let first = log.record(&decision("10.0.0.1:1"), context());
        let second = log.record(&decision("10.0.0.2:1"), context());
        let third = log.record(&decision("10.0.0.3:1"), context());
        assert_eq!((first, second, third), (1, 2, 3));
        assert!(log.get(first).is_none());
        let usage = TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 2,
            cached_prompt_tokens: Some(4),
        };
        log.settle(
            third,
            "10.0.0.9:1".parse().unwrap(),
            Some(200),
            Some(&usage),
            Outcome::Completed,
        );
        log.settle(
            first,
            "10.0.0.9:1".parse().unwrap(),
            None,
            None,
            Outcome::Cancelled,
        );
        let recent = log.recent(10);
        assert_eq!(recent.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(recent[0].realised.prefix_hit, Some(0.4));
        assert_eq!(recent[0].realised.outcome, Outcome::Completed);
        assert_eq!(
            DecisionLog::new(0).record(&decision("10.0.0.1:1"), context()),
            0
        );
    }
}
