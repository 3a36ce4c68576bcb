//! The simulated inference engine: a pure state machine on caller-provided virtual time.
//!
//! It follows vLLM v1's scheduler: continuous batching with one token budget per step
//! (`max_num_batched_tokens`) shared by running sequences first (decode or the next chunk of a
//! chunked prefill) and then waiting ones in FCFS order, up to `max_num_seqs`; a request whose
//! prefill completes in a step samples its first token at the end of that step. KV blocks come
//! from a [`BlockPool`] with automatic prefix caching; when a running sequence needs a block and
//! none is free, the newest running sequence is preempted and later recomputed. LoRA requests
//! wait while `max_loras` other adapters fill the batch. Step durations come from the profile's
//! [`StepModel`](super::profile::StepModel).
//!
//! Driving it: [`Engine::submit`] requests, then repeatedly call [`Engine::advance`] with a time
//! (usually [`Engine::next_event_at`]); it runs every step that ends by then and returns what
//! happened. The HTTP server drives it in (scaled) real time; the cluster benchmark drives many
//! engines on one virtual clock.
use std::collections::VecDeque;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, LogNormal};

use super::gpu::{GpuActivity, GpuIdentity};
use super::kv::{BlockPool, U64Map, block_hash, chain_root};
use super::lora::{LoraId, LoraSlots};
use super::profile::{Profile, StepWork};
use super::stats::{EngineCounters, LatencyHistograms};
use super::tokens::{mix64, output_key, output_token_keyed};
use crate::clock::{MICROS_PER_SEC, Micros};
use crate::telemetry::{EndpointLoad, EngineKind, GpuSample, LoraState};

/// Which per-token events [`Engine::advance`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventDetail {
    /// Every output token (streaming servers).
    #[default]
    Tokens,
    /// First token, finish and preemption only (simulations that only need latencies).
    Milestones,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Decides histogram buckets and metric names; the scheduling policy is vLLM's for both.
    pub engine_kind: EngineKind,
    /// GPU slots for LoRA adapters (`--max-loras`); 0 disables LoRA.
    pub max_loras: u32,
    /// Seeds output lengths and output text.
    pub seed: u64,
    pub events: EventDetail,
    /// Multiplies the profile's slowdown (`--slow-gpu`).
    pub slowdown: f64,
    /// Overrides the profile's `max_model_len` when set.
    pub max_model_len: Option<u32>,
    pub gpu: GpuIdentity,
    /// Virtual time the engine starts at.
    pub start: Micros,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            engine_kind: EngineKind::Vllm,
            max_loras: 0,
            seed: 0,
            events: EventDetail::Tokens,
            slowdown: 1.0,
            max_model_len: None,
            gpu: GpuIdentity::simulated(0, 0),
            start: 0,
        }
    }
}

/// One generation request as the engine sees it: token ids, not text.
#[derive(Clone, Debug)]
pub struct SimRequest {
    /// Unique among requests in the engine; also seeds the output text and length.
    pub id: u64,
    pub prompt: Arc<[u32]>,
    pub max_tokens: u32,
    /// Generate exactly `max_tokens` (vLLM's `ignore_eos`); otherwise stop at a seeded
    /// natural length drawn from the profile's `output_length` (finish reason `stop`).
    pub ignore_eos: bool,
    pub lora: Option<Arc<str>>,
    /// When the request reached the engine; must not be before [`Engine::now`].
    pub arrival: Micros,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("request id {0} is already in the engine")]
    DuplicateId(u64),
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error(
        "the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the maximum \
         context length of {max_model_len} tokens"
    )]
    ContextLength {
        prompt_tokens: u32,
        max_tokens: u32,
        max_model_len: u32,
    },
    #[error("the request needs {needed} KV blocks but the cache only has {available}")]
    KvCapacity { needed: u64, available: u32 },
    #[error("LoRA is disabled on this engine (max_loras = 0)")]
    LoraDisabled,
    #[error("too many distinct LoRA adapters")]
    TooManyAdapters,
    #[error("arrival {arrival} is before the engine's clock {now}")]
    ArrivalInPast { arrival: Micros, now: Micros },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The sequence reached its (seeded) end-of-sequence token.
    Stop,
    /// It produced `max_tokens`.
    Length,
    /// The caller aborted it.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache when the request was first scheduled.
    pub cached_tokens: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// The first output token exists (end of the step that finished the prefill).
    FirstToken {
        id: u64,
        at: Micros,
        cached_tokens: u32,
    },
    /// Output token number `generated` exists ([`EventDetail::Tokens`] only; the first token
    /// gets one too, right after its `FirstToken`).
    Token { id: u64, at: Micros, generated: u32 },
    Finished {
        id: u64,
        at: Micros,
        reason: FinishReason,
        usage: RequestUsage,
    },
    /// Lost its KV blocks; it will be recomputed and continue where it stopped.
    Preempted { id: u64, at: Micros },
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPhase {
    /// Submitted with a future arrival time.
    Arriving,
    Waiting,
    Running,
}

/// Exact state of one request, for tests and the benchmark's oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestState {
    pub phase: RequestPhase,
    pub generated: u32,
    pub computed_tokens: u32,
    pub cached_tokens: u32,
    pub preemptions: u32,
}

/// One request inside the engine. `repr(C)` with the fields every step touches first, so the
/// per-step loops read one or two cache lines per sequence.
#[derive(Debug, Default)]
#[repr(C)]
struct Seq {
    id: u64,
    /// Prompt + generated tokens.
    num_tokens: u32,
    /// Tokens whose KV is computed.
    num_computed: u32,
    /// Tokens scheduled in the in-flight step.
    scheduled: u32,
    generated: u32,
    /// Output tokens it will produce before stopping.
    target: u32,
    max_tokens: u32,
    /// Leading blocks already offered to the prefix cache.
    registered: u32,
    alive: bool,
    /// Has sampled since its last (re)compute started: its next step is a decode.
    prefilled: bool,
    lora: Option<LoraId>,
    phase: Option<RequestPhase>,
    last_token: Micros,
    blocks: Vec<u32>,
    /// Hashes of this sequence's full blocks that are known (prompt, plus output blocks
    /// hashed when it was preempted).
    hashes: Vec<u64>,
    prompt: Arc<[u32]>,
    root: u64,
    arrival: Micros,
    cached_tokens: u32,
    preemptions: u32,
    first_scheduled: Option<Micros>,
    first_token: Option<Micros>,
}

impl Seq {
    /// Token at `position` of prompt + output; `output` is the request's [`output_key`].
    fn token_at(&self, position: u32, output: u64) -> u32 {
        let prompt_len = self.prompt.len() as u32;
        if position < prompt_len {
            self.prompt[position as usize]
        } else {
            output_token_keyed(output, position - prompt_len)
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Step {
    start: Micros,
    end: Micros,
}

/// Interval marks for [`Engine::load`]'s "since the last sample" figures.
#[derive(Clone, Copy, Debug, Default)]
struct LoadMarks {
    prefix_queries: u64,
    prefix_hits: u64,
    ttft_sum: f64,
    ttft_count: u64,
    itl_sum: f64,
    itl_count: u64,
}

pub struct Engine {
    profile: Profile,
    config: EngineConfig,
    max_model_len: u32,
    block_size: u32,
    pool: BlockPool,
    seqs: Vec<Seq>,
    free_slots: Vec<u32>,
    by_id: U64Map<u32>,
    /// Submitted with a future arrival, sorted by arrival.
    incoming: VecDeque<u32>,
    waiting: VecDeque<u32>,
    /// In scheduling order; preemption takes from the back.
    running: Vec<u32>,
    in_flight: Option<Step>,
    scheduled: Vec<(u32, u64)>,
    /// Scratch: blocks a prefix-cache lookup found.
    hits: Vec<u32>,
    clock: Micros,
    lora: LoraSlots,
    batch_loras: Vec<LoraId>,
    gpu: GpuActivity,
    counters: EngineCounters,
    hist: LatencyHistograms,
    last_prefill_hit_rate: f64,
    marks: LoadMarks,
    load_seq: u64,
    runtime_slowdown: f64,
    output_length: Option<LogNormal<f64>>,
    /// Set if scheduling ever finds queued work it cannot run (a bug guard: never expected).
    stalled: bool,
}

impl Engine {
    pub fn new(profile: Profile, config: EngineConfig) -> Self {
        let max_model_len = config.max_model_len.unwrap_or(profile.max_model_len).max(1);
        let output_length =
            LogNormal::new(profile.output_length.mu, profile.output_length.sigma).ok();
        Self {
            max_model_len,
            block_size: profile.block_size.max(1),
            pool: BlockPool::new(profile.num_gpu_blocks()),
            seqs: Vec::new(),
            free_slots: Vec::new(),
            by_id: U64Map::default(),
            incoming: VecDeque::new(),
            waiting: VecDeque::new(),
            running: Vec::with_capacity(profile.max_num_seqs as usize),
            in_flight: None,
            scheduled: Vec::with_capacity(profile.max_num_seqs as usize),
            hits: Vec::new(),
            clock: config.start,
            lora: LoraSlots::new(config.max_loras),
            batch_loras: Vec::new(),
            gpu: GpuActivity::new(&profile, config.start),
            counters: EngineCounters::default(),
            hist: LatencyHistograms::for_engine(config.engine_kind, max_model_len),
            last_prefill_hit_rate: 0.0,
            marks: LoadMarks::default(),
            load_seq: 0,
            runtime_slowdown: 1.0,
            output_length,
            stalled: false,
            profile,
            config,
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn max_model_len(&self) -> u32 {
        self.max_model_len
    }

    /// The time the engine has been advanced to.
    pub fn now(&self) -> Micros {
        self.clock
    }

    /// Extra slowdown applied on top of the profile and `--slow-gpu` (e.g. thermal throttling).
    pub fn set_runtime_slowdown(&mut self, factor: f64) {
        if factor.is_finite() && factor > 0.0 {
            self.runtime_slowdown = factor;
        }
    }

    fn slowdown(&self) -> f64 {
        self.profile.slowdown * self.config.slowdown * self.runtime_slowdown
    }

    fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(u64::from(self.block_size))
    }

    /// Output length this request will have, as the engine will decide it.
    fn target_output(&self, request: &SimRequest) -> u32 {
        if request.ignore_eos {
            return request.max_tokens;
        }
        let natural = match &self.output_length {
            Some(dist) => {
                let mut rng = SmallRng::seed_from_u64(mix64(self.config.seed ^ mix64(request.id)));
                dist.sample(&mut rng)
                    .round()
                    .clamp(1.0, f64::from(u32::MAX)) as u32
            }
            None => request.max_tokens,
        };
        natural.clamp(1, request.max_tokens)
    }

    pub fn submit(&mut self, request: SimRequest) -> Result<(), SubmitError> {
        if self.by_id.contains_key(&request.id) {
            return Err(SubmitError::DuplicateId(request.id));
        }
        if request.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens);
        }
        if request.arrival < self.clock {
            return Err(SubmitError::ArrivalInPast {
                arrival: request.arrival,
                now: self.clock,
            });
        }
        let prompt_tokens = u32::try_from(request.prompt.len()).unwrap_or(u32::MAX);
        let total = u64::from(prompt_tokens) + u64::from(request.max_tokens);
        if total > u64::from(self.max_model_len) {
            return Err(SubmitError::ContextLength {
                prompt_tokens,
                max_tokens: request.max_tokens,
                max_model_len: self.max_model_len,
            });
        }
        let needed = self.blocks_for(total);
        if needed > u64::from(self.pool.num_blocks()) {
            return Err(SubmitError::KvCapacity {
                needed,
                available: self.pool.num_blocks(),
            });
        }
        let lora = match &request.lora {
            None => None,
            Some(_) if self.config.max_loras == 0 => return Err(SubmitError::LoraDisabled),
            Some(name) => Some(self.lora.intern(name).ok_or(SubmitError::TooManyAdapters)?),
        };
        let target = self.target_output(&request);
        let root = chain_root(request.lora.as_deref());
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.seqs.push(Seq::default());
                (self.seqs.len() - 1) as u32
            }
        };
        let block_size = self.block_size as usize;
        let seq = &mut self.seqs[slot as usize];
        seq.blocks.clear();
        seq.blocks.reserve(needed as usize);
        seq.hashes.clear();
        let mut parent = root;
        for chunk in request.prompt.chunks_exact(block_size) {
            parent = block_hash(parent, chunk.iter().copied());
            seq.hashes.push(parent);
        }
        seq.alive = true;
        seq.id = request.id;
        seq.prompt = request.prompt;
        seq.max_tokens = request.max_tokens;
        seq.target = target;
        seq.lora = lora;
        seq.root = root;
        seq.arrival = request.arrival;
        seq.generated = 0;
        seq.num_tokens = prompt_tokens;
        seq.num_computed = 0;
        seq.scheduled = 0;
        seq.prefilled = false;
        seq.cached_tokens = 0;
        seq.first_scheduled = None;
        seq.first_token = None;
        seq.last_token = request.arrival;
        seq.registered = 0;
        seq.preemptions = 0;
        seq.phase = Some(RequestPhase::Arriving);
        let arrival = request.arrival;
        let position = self
            .incoming
            .partition_point(|&other| self.seqs[other as usize].arrival <= arrival);
        self.incoming.insert(position, slot);
        self.by_id.insert(request.id, slot);
        self.counters.requests_submitted += 1;
        self.stalled = false;
        Ok(())
    }

    /// When [`Self::advance`] next has something to do: the end of the running step, or the
    /// start of the next one. `None` when the engine is idle with nothing submitted.
    pub fn next_event_at(&self) -> Option<Micros> {
        if let Some(step) = self.in_flight {
            return Some(step.end);
        }
        if (!self.waiting.is_empty() || !self.running.is_empty()) && !self.stalled {
            return Some(self.clock);
        }
        self.incoming
            .front()
            .map(|&slot| self.seqs[slot as usize].arrival.max(self.clock))
    }

    /// Runs every step that ends at or before `now` and returns the events, oldest first.
    pub fn advance(&mut self, now: Micros) -> Vec<EngineEvent> {
        let mut events = Vec::new();
        self.advance_into(now, &mut events);
        events
    }

    /// [`Self::advance`] appending to a caller-owned buffer (no allocation once it has grown).
    pub fn advance_into(&mut self, now: Micros, events: &mut Vec<EngineEvent>) {
        loop {
            if let Some(step) = self.in_flight {
                if step.end > now {
                    break;
                }
                self.in_flight = None;
                self.complete_step(step, events);
                continue;
            }
            let start = if !self.waiting.is_empty() || !self.running.is_empty() {
                self.clock
            } else {
                match self.incoming.front() {
                    Some(&slot) => self.seqs[slot as usize].arrival.max(self.clock),
                    None => break,
                }
            };
            if start > now {
                break;
            }
            self.clock = start;
            self.admit_arrivals(start);
            // A step that only preempted schedules nothing; the retry runs without preempting.
            if !self.start_step(start, events) && !self.start_step(start, events) {
                debug_assert!(false, "queued work but nothing schedulable");
                self.stalled = true;
                break;
            }
        }
        self.clock = self.clock.max(now);
        // Requests that arrived while a step runs wait for the next scheduling decision.
        if self.in_flight.is_some() {
            self.admit_arrivals(self.clock);
        }
    }

    fn admit_arrivals(&mut self, until: Micros) {
        while let Some(&slot) = self.incoming.front() {
            if self.seqs[slot as usize].arrival > until {
                break;
            }
            self.incoming.pop_front();
            self.seqs[slot as usize].phase = Some(RequestPhase::Waiting);
            self.waiting.push_back(slot);
        }
    }

    /// Blocks `seq` must add to hold `tokens` tokens.
    fn missing_blocks(&self, slot: u32, tokens: u32) -> u32 {
        let seq = &self.seqs[slot as usize];
        let needed = self.blocks_for(u64::from(tokens)) as u32;
        needed.saturating_sub(seq.blocks.len() as u32)
    }

    fn grow(&mut self, slot: u32, blocks: u32) {
        for _ in 0..blocks {
            match self.pool.allocate() {
                Some(block) => self.seqs[slot as usize].blocks.push(block),
                None => {
                    debug_assert!(false, "allocation after a successful capacity check");
                    return;
                }
            }
        }
    }

    /// Picks the batch, allocates its KV blocks and starts the step. Returns false when there
    /// was nothing to run.
    fn start_step(&mut self, now: Micros, events: &mut Vec<EngineEvent>) -> bool {
        let mut budget = self.profile.max_num_batched_tokens;
        let mut work = StepWork::default();
        let mut preempted = false;
        self.scheduled.clear();
        self.batch_loras.clear();

        // Running sequences first, in order; out of blocks, preempt from the back.
        let mut index = 0;
        while index < self.running.len() && budget > 0 {
            let slot = self.running[index];
            let (remaining, computed) = {
                let seq = &self.seqs[slot as usize];
                (seq.num_tokens - seq.num_computed, seq.num_computed)
            };
            let tokens = remaining.min(budget);
            let mut self_preempted = false;
            loop {
                let missing = self.missing_blocks(slot, computed + tokens);
                if missing <= self.pool.num_free() {
                    self.grow(slot, missing);
                    break;
                }
                let Some(victim) = self.running.pop() else {
                    break;
                };
                self.preempt(victim, now, events);
                preempted = true;
                if victim == slot {
                    self_preempted = true;
                    break;
                }
            }
            if self_preempted {
                break;
            }
            self.schedule(slot, tokens, &mut work);
            budget -= tokens;
            index += 1;
        }

        // Then waiting ones, unless this step had to preempt.
        let mut admitted = false;
        let mut step_hits = 0u64;
        let mut step_new = 0u64;
        let mut position = 0;
        while !preempted
            && budget > 0
            && self.running.len() < self.profile.max_num_seqs as usize
            && position < self.waiting.len()
        {
            let slot = self.waiting[position];
            if let Some(adapter) = self.seqs[slot as usize].lora
                && !self.batch_loras.contains(&adapter)
                && self.batch_loras.len() >= self.lora.max_loras()
            {
                // vLLM skips it and keeps it at the head of the queue.
                position += 1;
                continue;
            }
            self.lookup(slot);
            let cached_blocks = self.hits.len() as u32;
            let seq = &self.seqs[slot as usize];
            let cached_tokens = cached_blocks * self.block_size;
            let tokens = (seq.num_tokens - cached_tokens).min(budget);
            let needed = self.blocks_for(u64::from(cached_tokens + tokens)) as u32 - cached_blocks;
            // Hits on unreferenced blocks take them out of the free queue.
            let evictable_hits = self
                .hits
                .iter()
                .filter(|&&block| self.pool.refs(block) == 0)
                .count() as u32;
            if needed + evictable_hits > self.pool.num_free() {
                break;
            }
            let _ = self.waiting.remove(position);
            let num_tokens = seq.num_tokens;
            self.counters.prefix_queries += u64::from(num_tokens);
            self.counters.prefix_hits += u64::from(cached_tokens);
            step_hits += u64::from(cached_tokens);
            step_new += u64::from(num_tokens - cached_tokens);
            admitted = true;
            for &block in &self.hits {
                self.pool.touch(block);
                self.seqs[slot as usize].blocks.push(block);
            }
            self.grow(slot, needed);
            let seq = &mut self.seqs[slot as usize];
            seq.num_computed = cached_tokens;
            seq.registered = cached_blocks;
            seq.phase = Some(RequestPhase::Running);
            if seq.first_scheduled.is_none() {
                seq.first_scheduled = Some(now);
                seq.cached_tokens = cached_tokens;
                let queued = now.saturating_sub(seq.arrival);
                self.hist
                    .queue
                    .observe(queued as f64 / MICROS_PER_SEC as f64);
            }
            if let Some(adapter) = seq.lora {
                self.lora.add_running(adapter);
            }
            self.running.push(slot);
            self.schedule(slot, tokens, &mut work);
            budget -= tokens;
        }
        if admitted && step_hits + step_new > 0 {
            self.last_prefill_hit_rate = step_hits as f64 / (step_hits + step_new) as f64;
        }

        if self.scheduled.is_empty() {
            return false;
        }
        let step_no = self.counters.steps;
        for index in 0..self.batch_loras.len() {
            let adapter = self.batch_loras[index];
            if self.lora.use_in_step(adapter, step_no, &self.batch_loras) {
                work.lora_loads += 1;
                self.counters.lora_loads += 1;
            }
        }
        work.lora_adapters = self.batch_loras.len() as u32;
        let duration = self
            .profile
            .step
            .step_us(&work, self.slowdown(), self.profile.lora_load_us)
            .round()
            .max(1.0) as Micros;
        let step = Step {
            start: now,
            end: now + duration,
        };
        self.gpu.step_started(step.start, step.end);
        self.in_flight = Some(step);
        true
    }

    fn schedule(&mut self, slot: u32, tokens: u32, work: &mut StepWork) {
        let seq = &mut self.seqs[slot as usize];
        seq.scheduled = tokens;
        if seq.prefilled {
            work.decode_seqs += 1;
        } else {
            work.prefill_tokens += tokens;
        }
        work.kv_tokens_read += u64::from(seq.num_computed + tokens);
        if let Some(adapter) = seq.lora
            && !self.batch_loras.contains(&adapter)
        {
            self.batch_loras.push(adapter);
        }
        self.scheduled.push((slot, seq.id));
    }

    /// Collects into `self.hits` the blocks holding the leading full blocks of `slot`'s tokens;
    /// at least one token is always left to compute (the last one's logits are needed).
    fn lookup(&mut self, slot: u32) {
        self.hits.clear();
        let seq = &self.seqs[slot as usize];
        let limit = ((seq.num_tokens - 1) / self.block_size) as usize;
        for &hash in seq.hashes.iter().take(limit) {
            match self.pool.lookup(hash) {
                Some(block) => self.hits.push(block),
                None => break,
            }
        }
    }

    /// Offers the computed full blocks of `slot` up to `full_blocks` to the prefix cache.
    fn register_blocks(&mut self, slot: u32, full_blocks: u32) {
        let seq = &mut self.seqs[slot as usize];
        let limit = full_blocks
            .min(seq.hashes.len() as u32)
            .min(seq.blocks.len() as u32);
        for index in seq.registered..limit {
            self.pool
                .register(seq.blocks[index as usize], seq.hashes[index as usize]);
        }
        seq.registered = seq.registered.max(limit);
    }

    /// Hashes the computed full blocks that hold output tokens, registers every computed full
    /// block, and returns all blocks to the pool (tail first, so it is evicted first).
    fn release_blocks(&mut self, slot: u32) {
        let seed = self.config.seed;
        let block_size = self.block_size;
        let full = self.seqs[slot as usize].num_computed / block_size;
        {
            let seq = &mut self.seqs[slot as usize];
            let output = output_key(seed, seq.id);
            while (seq.hashes.len() as u32) < full {
                let index = seq.hashes.len() as u32;
                let parent = seq.hashes.last().copied().unwrap_or(seq.root);
                let first = index * block_size;
                let hash = block_hash(
                    parent,
                    (first..first + block_size).map(|position| seq.token_at(position, output)),
                );
                seq.hashes.push(hash);
            }
        }
        self.register_blocks(slot, full);
        let seq = &mut self.seqs[slot as usize];
        for &block in seq.blocks.iter().rev() {
            self.pool.release(block);
        }
        seq.blocks.clear();
        seq.registered = 0;
    }

    fn preempt(&mut self, slot: u32, now: Micros, events: &mut Vec<EngineEvent>) {
        self.release_blocks(slot);
        let seq = &mut self.seqs[slot as usize];
        seq.num_computed = 0;
        seq.scheduled = 0;
        seq.prefilled = false;
        seq.preemptions += 1;
        seq.phase = Some(RequestPhase::Waiting);
        let id = seq.id;
        if let Some(adapter) = seq.lora {
            self.lora.remove_running(adapter);
        }
        self.waiting.push_front(slot);
        self.counters.preemptions += 1;
        events.push(EngineEvent::Preempted { id, at: now });
    }

    fn complete_step(&mut self, step: Step, events: &mut Vec<EngineEvent>) {
        self.clock = self.clock.max(step.end);
        self.gpu.step_finished();
        self.counters.steps += 1;
        self.counters.busy_us += step.end - step.start;
        let end = step.end;
        let step_secs = (end - step.start) as f64 / MICROS_PER_SEC as f64;
        let token_events = self.config.events == EventDetail::Tokens;
        let mut decodes = 0u64;
        let mut finished_any = false;
        let scheduled = std::mem::take(&mut self.scheduled);
        for &(slot, id) in &scheduled {
            let seq = &mut self.seqs[slot as usize];
            if !seq.alive || seq.id != id || seq.phase != Some(RequestPhase::Running) {
                continue; // aborted while the step ran
            }
            seq.num_computed += seq.scheduled;
            if !seq.prefilled {
                self.counters.prefill_tokens_computed += u64::from(seq.scheduled);
            }
            seq.scheduled = 0;
            if (seq.registered as usize) < seq.hashes.len() {
                let full = seq.num_computed / self.block_size;
                self.register_blocks(slot, full);
            }
            let seq = &mut self.seqs[slot as usize];
            if seq.num_computed < seq.num_tokens {
                continue; // mid chunked prefill
            }
            seq.generated += 1;
            seq.num_tokens += 1;
            self.counters.generation_tokens += 1;
            if seq.prefilled {
                decodes += 1;
            } else {
                seq.prefilled = true;
                match seq.first_token {
                    None => {
                        seq.first_token = Some(end);
                        let ttft = end.saturating_sub(seq.arrival);
                        self.hist.ttft.observe(ttft as f64 / MICROS_PER_SEC as f64);
                        self.counters.prompt_tokens += seq.prompt.len() as u64;
                        events.push(EngineEvent::FirstToken {
                            id,
                            at: end,
                            cached_tokens: seq.cached_tokens,
                        });
                    }
                    // Resumed after preemption: the gap includes the recompute.
                    Some(_) => {
                        let gap = end.saturating_sub(seq.last_token);
                        self.hist.itl.observe(gap as f64 / MICROS_PER_SEC as f64);
                    }
                }
            }
            seq.last_token = end;
            if token_events {
                events.push(EngineEvent::Token {
                    id,
                    at: end,
                    generated: seq.generated,
                });
            }
            if seq.generated >= seq.target {
                let reason = if seq.generated >= seq.max_tokens {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                };
                self.finish(slot, end, reason, events);
                finished_any = true;
            }
        }
        self.scheduled = scheduled;
        self.scheduled.clear();
        self.hist.itl.observe_n(step_secs, decodes);
        if finished_any {
            let seqs = &self.seqs;
            self.running.retain(|&slot| {
                let seq = &seqs[slot as usize];
                seq.alive && seq.phase == Some(RequestPhase::Running)
            });
        }
    }

    fn usage_of(&self, slot: u32) -> RequestUsage {
        let seq = &self.seqs[slot as usize];
        RequestUsage {
            prompt_tokens: seq.prompt.len() as u32,
            completion_tokens: seq.generated,
            cached_tokens: seq.cached_tokens,
        }
    }

    /// Removes a request that ended (or was aborted): frees its blocks and its slot.
    fn finish(
        &mut self,
        slot: u32,
        at: Micros,
        reason: FinishReason,
        events: &mut Vec<EngineEvent>,
    ) {
        let usage = self.usage_of(slot);
        self.release_blocks(slot);
        let seq = &mut self.seqs[slot as usize];
        if seq.phase == Some(RequestPhase::Running)
            && let Some(adapter) = seq.lora
        {
            self.lora.remove_running(adapter);
        }
        seq.alive = false;
        seq.phase = None;
        let id = seq.id;
        let arrival = seq.arrival;
        self.by_id.remove(&id);
        self.free_slots.push(slot);
        match reason {
            FinishReason::Stop => self.counters.finished_stop += 1,
            FinishReason::Length => self.counters.finished_length += 1,
            FinishReason::Abort => self.counters.finished_abort += 1,
        }
        if reason != FinishReason::Abort {
            let e2e = at.saturating_sub(arrival) as f64 / MICROS_PER_SEC as f64;
            self.hist.e2e.observe(e2e);
            self.hist
                .request_prompt_tokens
                .observe(f64::from(usage.prompt_tokens));
            self.hist
                .request_generation_tokens
                .observe(f64::from(usage.completion_tokens));
        }
        events.push(EngineEvent::Finished {
            id,
            at,
            reason,
            usage,
        });
    }

    /// Drops a request wherever it is (client gone, stop string matched). Returns its usage so
    /// far, or `None` for an unknown id. Its computed blocks stay in the prefix cache.
    pub fn abort(&mut self, id: u64) -> Option<RequestUsage> {
        let slot = *self.by_id.get(&id)?;
        match self.seqs[slot as usize].phase {
            Some(RequestPhase::Arriving) => self.incoming.retain(|&other| other != slot),
            Some(RequestPhase::Waiting) => self.waiting.retain(|&other| other != slot),
            Some(RequestPhase::Running) => self.running.retain(|&other| other != slot),
            None => {}
        }
        self.stalled = false;
        let mut events = Vec::with_capacity(1);
        let at = self.clock;
        self.finish(slot, at, FinishReason::Abort, &mut events);
        match events.first() {
            Some(EngineEvent::Finished { usage, .. }) => Some(*usage),
            _ => None,
        }
    }

    /// Forgets every cached prefix (vLLM's `POST /reset_prefix_cache`).
    pub fn reset_prefix_cache(&mut self) {
        self.pool.reset_prefix_cache();
        let block_size = self.block_size;
        for seq in &mut self.seqs {
            // Blocks computed so far lost their hashes; later ones are offered as usual.
            seq.registered = seq.registered.max(seq.num_computed / block_size);
        }
    }

    // ----- what routers and tests observe -----

    /// Requests queued (arrived, not running).
    pub fn num_waiting(&self) -> usize {
        let arrived = self
            .incoming
            .partition_point(|&slot| self.seqs[slot as usize].arrival <= self.clock);
        self.waiting.len() + arrived
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_gpu_blocks(&self) -> u32 {
        self.pool.num_blocks()
    }

    /// Blocks free or holding only unreferenced cached data.
    pub fn num_free_blocks(&self) -> u32 {
        self.pool.num_free()
    }

    pub fn num_used_blocks(&self) -> u32 {
        self.pool.num_used()
    }

    /// Blocks findable by hash right now.
    pub fn num_cached_blocks(&self) -> usize {
        self.pool.num_cached()
    }

    pub fn kv_cache_usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Leading tokens of `prompt` (for `lora`) that the prefix cache holds right now, in whole
    /// blocks. (Scheduling additionally always recomputes the prompt's last token.)
    pub fn cached_prefix_tokens(&self, prompt: &[u32], lora: Option<&str>) -> u32 {
        let mut parent = chain_root(lora);
        let mut blocks = 0;
        for chunk in prompt.chunks_exact(self.block_size as usize) {
            parent = block_hash(parent, chunk.iter().copied());
            if self.pool.lookup(parent).is_none() {
                break;
            }
            blocks += 1;
        }
        blocks * self.block_size
    }

    pub fn request_state(&self, id: u64) -> Option<RequestState> {
        let seq = &self.seqs[*self.by_id.get(&id)? as usize];
        Some(RequestState {
            phase: seq.phase?,
            generated: seq.generated,
            computed_tokens: seq.num_computed,
            cached_tokens: seq.cached_tokens,
            preemptions: seq.preemptions,
        })
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    pub fn histograms(&self) -> &LatencyHistograms {
        &self.hist
    }

    /// Cache hit share of the last step that admitted new requests (SGLang's `cache_hit_rate`).
    pub fn last_prefill_hit_rate(&self) -> f64 {
        self.last_prefill_hit_rate
    }

    /// Whether a step is running at [`Self::now`].
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// LoRA adapters with running requests and with waiting ones (vLLM `lora_requests_info`).
    pub fn lora_state(&self) -> Option<LoraState> {
        if self.config.max_loras == 0 {
            return None;
        }
        let mut waiting: Vec<String> = Vec::new();
        let queued = self.waiting.iter().chain(
            self.incoming
                .iter()
                .take_while(|&&slot| self.seqs[slot as usize].arrival <= self.clock),
        );
        for &slot in queued {
            if let Some(adapter) = self.seqs[slot as usize].lora {
                let name = self.lora.name(adapter);
                if !waiting.iter().any(|known| known.as_str() == &**name) {
                    waiting.push(name.to_string());
                }
            }
        }
        Some(LoraState {
            running: self.lora.running_names(),
            waiting,
            max_loras: self.config.max_loras,
        })
    }

    /// Whether an adapter currently occupies a GPU slot.
    pub fn lora_resident(&self, name: &str) -> bool {
        self.lora
            .id(name)
            .is_some_and(|id| self.lora.is_resident(id))
    }

    /// A normalised load sample; rates and means cover the time since the previous call.
    pub fn load(&mut self, now: Micros) -> EndpointLoad {
        let hist = &self.hist;
        let marks = LoadMarks {
            prefix_queries: self.counters.prefix_queries,
            prefix_hits: self.counters.prefix_hits,
            ttft_sum: hist.ttft.sum(),
            ttft_count: hist.ttft.count(),
            itl_sum: hist.itl.sum(),
            itl_count: hist.itl.count(),
        };
        let previous = std::mem::replace(&mut self.marks, marks);
        let ratio = |num: f64, den: u64| (den > 0).then(|| num / den as f64);
        self.load_seq += 1;
        EndpointLoad {
            engine: self.config.engine_kind,
            waiting: self.num_waiting() as u32,
            running: self.running.len() as u32,
            kv_cache_usage: self.pool.usage(),
            prefix_cache_hit_rate: ratio(
                (marks.prefix_hits - previous.prefix_hits) as f64,
                marks.prefix_queries - previous.prefix_queries,
            ),
            lora: self.lora_state(),
            block_size: Some(self.block_size),
            num_gpu_blocks: Some(u64::from(self.pool.num_blocks())),
            ttft_mean_s: ratio(
                marks.ttft_sum - previous.ttft_sum,
                marks.ttft_count - previous.ttft_count,
            ),
            itl_mean_s: ratio(
                marks.itl_sum - previous.itl_sum,
                marks.itl_count - previous.itl_count,
            ),
            sampled_at: now,
            seq: self.load_seq,
        }
    }

    /// What NVML would report for this engine's GPU at `now`.
    pub fn gpu(&self, now: Micros) -> GpuSample {
        self.gpu
            .sample(now, &self.profile, &self.config.gpu, self.pool.num_used())
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
