//! Workloads for the cluster simulation: which requests arrive, when, and what the cluster they
//! arrive at looks like.
//!
//! A [`WorkloadSpec`] (kind + parameters) generates a [`Workload`]: every request's token ids,
//! output length, LoRA adapter and session, plus its *start*: either the n-th arrival of an
//! open-loop arrival process, or a think time after an earlier request finished (the next turn
//! of a chat). Content does not depend on the request rate; only arrival times do, and
//! [`Workload::arrival_times`] draws them for a rate from unit-rate draws scaled by the rate, so
//! every policy and every rate sees the same requests in the same order (common random numbers).
//! Everything is seeded: the same spec and seed give the same workload.
mod arrivals;
mod generate;
pub mod trace;

use std::{path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

pub use arrivals::ArrivalProcess;
pub use trace::{TraceError, TraceRow};

use crate::clock::Micros;

/// Base model every simulated request asks for.
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// The six built-in workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Groups of prompts sharing a long system prompt (GIE's prefix-cache benchmark shape).
    SharedPrefix,
    /// Independent requests with Azure-trace lognormal lengths, Poisson arrivals.
    Conversations,
    /// Chats whose every turn extends the previous prompt with its answer and a new user turn.
    MultiTurn,
    /// Requests for LoRA adapters drawn from a Zipf distribution; servers hold few adapters.
    MultiLora,
    /// Azure-shaped requests arriving in on/off bursts.
    Bursts,
    /// Azure-shaped requests on a cluster where one GPU is throttled and slower.
    Heterogeneous,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 6] = [
        Self::SharedPrefix,
        Self::Conversations,
        Self::MultiTurn,
        Self::MultiLora,
        Self::Bursts,
        Self::Heterogeneous,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SharedPrefix => "shared-prefix",
            Self::Conversations => "conversations",
            Self::MultiTurn => "multi-turn",
            Self::MultiLora => "multi-lora",
            Self::Bursts => "bursts",
            Self::Heterogeneous => "heterogeneous",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A length distribution: lognormal in tokens, clamped to `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lognormal {
    pub mu: f64,
    pub sigma: f64,
    pub min: u32,
    pub max: u32,
}

impl Lognormal {
    /// Azure LLM inference trace, conversation prompts (median ~760 tokens).
    pub const AZURE_INPUT: Lognormal = Lognormal {
        mu: 6.63,
        sigma: 0.99,
        min: 16,
        max: 16_000,
    };
    /// Azure LLM inference trace, conversation outputs (median ~150 tokens).
    pub const AZURE_OUTPUT: Lognormal = Lognormal {
        mu: 5.02,
        sigma: 0.86,
        min: 4,
        max: 2_000,
    };

    /// Median of the unclamped distribution, in tokens.
    pub fn median(&self) -> f64 {
        self.mu.exp()
    }
}

/// GIE's shared-prefix benchmark shape: `groups` system prompts, `prompts_per_group` questions
/// each; every request is one of those prompts (drawn uniformly) with a fixed output length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedPrefixParams {
    pub groups: u32,
    pub prompts_per_group: u32,
    pub system_tokens: u32,
    pub question_tokens: u32,
    pub output_tokens: u32,
}

impl Default for SharedPrefixParams {
    /// GIE's published configuration (150 groups × 5 prompts; 6,000 / 1,200 / 1,000 tokens).
    fn default() -> Self {
        Self {
            groups: 150,
            prompts_per_group: 5,
            system_tokens: 6_000,
            question_tokens: 1_200,
            output_tokens: 1_000,
        }
    }
}

/// Prompt and output lengths of independent requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LengthParams {
    pub input: Lognormal,
    pub output: Lognormal,
}

impl Default for LengthParams {
    fn default() -> Self {
        Self {
            input: Lognormal::AZURE_INPUT,
            output: Lognormal::AZURE_OUTPUT,
        }
    }
}

/// Multi-turn chats: `turns` per conversation, each prompt = the previous prompt + the previous
/// answer + a new user turn; the first opens with one of `system_prompts` shared system prompts.
/// The next turn is sent a think time (exponential, mean `think_time_s`) after the previous
/// answer finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiTurnParams {
    pub turns: u32,
    pub system_prompts: u32,
    pub system_tokens: u32,
    pub user: Lognormal,
    pub output: Lognormal,
    pub think_time_s: f64,
}

impl Default for MultiTurnParams {
    fn default() -> Self {
        Self {
            turns: 6,
            system_prompts: 16,
            system_tokens: 2_000,
            user: Lognormal {
                mu: 5.5,
                sigma: 0.8,
                min: 8,
                max: 4_000,
            },
            output: Lognormal {
                max: 1_024,
                ..Lognormal::AZURE_OUTPUT
            },
            think_time_s: 3.0,
        }
    }
}

/// Multi-LoRA: every request targets one of `adapters` adapters, drawn from a Zipf distribution
/// (rank 1 most popular); each server has `max_loras` adapter slots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiLoraParams {
    pub adapters: u32,
    pub zipf_exponent: f64,
    pub max_loras: u32,
    pub lengths: LengthParams,
}

impl Default for MultiLoraParams {
    fn default() -> Self {
        Self {
            adapters: 32,
            zipf_exponent: 1.0,
            max_loras: 4,
            lengths: LengthParams::default(),
        }
    }
}

/// On/off arrivals: requests arrive (Poisson) only during `on_s` seconds of every
/// `on_s + off_s`, so the peak rate is `(on_s + off_s) / on_s` times the mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BurstParams {
    pub on_s: f64,
    pub off_s: f64,
    pub lengths: LengthParams,
}

impl Default for BurstParams {
    fn default() -> Self {
        Self {
            on_s: 1.0,
            off_s: 4.0,
            lengths: LengthParams::default(),
        }
    }
}

/// A heterogeneous cluster: the first `slow_servers` servers run `slowdown` times slower and
/// report a thermal throttle in their GPU view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeterogeneousParams {
    pub slow_servers: u32,
    pub slowdown: f64,
    pub lengths: LengthParams,
}

impl Default for HeterogeneousParams {
    fn default() -> Self {
        Self {
            slow_servers: 1,
            slowdown: 2.0,
            lengths: LengthParams::default(),
        }
    }
}

/// A CSV trace replaces the generator (see [`trace`] for the format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceParams {
    pub path: PathBuf,
    /// Leading tokens requests of one prefix group share (capped below each prompt's length).
    pub prefix_tokens: u32,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorkloadSpec {
    SharedPrefix(SharedPrefixParams),
    Conversations(LengthParams),
    MultiTurn(MultiTurnParams),
    MultiLora(MultiLoraParams),
    Bursts(BurstParams),
    Heterogeneous(HeterogeneousParams),
    Trace(TraceParams),
}

impl WorkloadSpec {
    /// The built-in workload `kind` with its default parameters.
    pub fn default_for(kind: WorkloadKind) -> Self {
        match kind {
            WorkloadKind::SharedPrefix => Self::SharedPrefix(SharedPrefixParams::default()),
            WorkloadKind::Conversations => Self::Conversations(LengthParams::default()),
            WorkloadKind::MultiTurn => Self::MultiTurn(MultiTurnParams::default()),
            WorkloadKind::MultiLora => Self::MultiLora(MultiLoraParams::default()),
            WorkloadKind::Bursts => Self::Bursts(BurstParams::default()),
            WorkloadKind::Heterogeneous => Self::Heterogeneous(HeterogeneousParams::default()),
        }
    }

    /// The name records and reports use: the kind, or `trace:<file name>`.
    pub fn name(&self) -> String {
        match self {
            Self::SharedPrefix(_) => WorkloadKind::SharedPrefix.to_string(),
            Self::Conversations(_) => WorkloadKind::Conversations.to_string(),
            Self::MultiTurn(_) => WorkloadKind::MultiTurn.to_string(),
            Self::MultiLora(_) => WorkloadKind::MultiLora.to_string(),
            Self::Bursts(_) => WorkloadKind::Bursts.to_string(),
            Self::Heterogeneous(_) => WorkloadKind::Heterogeneous.to_string(),
            Self::Trace(params) => format!(
                "trace:{}",
                params.path.file_name().map_or_else(
                    || params.path.display().to_string(),
                    |name| { name.to_string_lossy().into_owned() }
                )
            ),
        }
    }

    /// Generates `requests` requests (a trace brings its own count) from `seed`.
    pub fn generate(&self, requests: usize, seed: u64) -> Result<Workload, WorkloadError> {
        generate::generate(self, requests, seed)
    }
}

/// When a request is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Open loop: the n-th arrival of the workload's [`ArrivalProcess`].
    Open(u32),
    /// Closed loop: `think` after request `parent` finished (the next turn of a chat).
    After { parent: u32, think: Micros },
}

/// One request of a workload.
#[derive(Clone, Debug)]
pub struct Request {
    /// Index in [`Workload::requests`]; also the engine's request id (it seeds the output).
    pub id: u64,
    pub prompt: Arc<[u32]>,
    /// Tokens the answer has (the engine runs with `ignore_eos`, as GIE's benchmark does).
    pub output_tokens: u32,
    pub lora: Option<Arc<str>>,
    /// Session key (conversation) for session affinity.
    pub session: Option<Arc<str>>,
    pub start: Start,
}

/// Cluster properties a workload needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterShape {
    /// LoRA adapter slots per server (0: LoRA off).
    pub max_loras: u32,
    /// Servers that run slower and report a throttled GPU: `(index, slowdown)`.
    pub slow: Vec<(u32, f64)>,
}

impl ClusterShape {
    /// The slowdown of server `index`, when it is one of the slow ones.
    pub fn slowdown(&self, index: usize) -> Option<f64> {
        self.slow
            .iter()
            .find(|(slow, _)| *slow as usize == index)
            .map(|&(_, slowdown)| slowdown)
    }
}

/// A generated workload: requests, their arrival process, and the cluster shape.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub spec: WorkloadSpec,
    pub requests: Vec<Request>,
    /// Requests that start open-loop (numbered `0..open`).
    pub open: u32,
    pub arrivals: ArrivalProcess,
    pub cluster: ClusterShape,
    /// Seed of the engines' output tokens: multi-turn prompts contain earlier answers, so the
    /// simulation must run its engines with this seed.
    pub output_seed: u64,
}

impl Workload {
    /// Arrival times of the open-loop starts for a mean request rate of `rate` requests per
    /// second (follow-up turns included in the rate), from `seed`.
    pub fn arrival_times(&self, rate: f64, seed: u64) -> Vec<Micros> {
        let share = if self.requests.is_empty() {
            1.0
        } else {
            f64::from(self.open) / self.requests.len() as f64
        };
        self.arrivals.times(self.open as usize, rate * share, seed)
    }

    /// The first `n` requests (generation is prefix-stable: a chat's turns follow its first,
    /// so a head never holds a turn without the turns before it).
    pub fn head(&self, n: usize) -> Workload {
        let requests: Vec<Request> = self.requests.iter().take(n).cloned().collect();
        let open = requests
            .iter()
            .filter(|r| matches!(r.start, Start::Open(_)))
            .count() as u32;
        Workload {
            name: self.name.clone(),
            spec: self.spec.clone(),
            requests,
            open,
            arrivals: self.arrivals.clone(),
            cluster: self.cluster.clone(),
            output_seed: self.output_seed,
        }
    }

    /// Prompt plus output tokens over all requests.
    pub fn total_tokens(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| r.prompt.len() as u64 + u64::from(r.output_tokens))
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("workload parameter `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> WorkloadError {
    WorkloadError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
