//! The discrete-event loop: engines, samples and arrivals on one virtual clock.
//!
//! Three sources of events, handled in time order (engine steps first at equal times, then
//! samples, then arrivals): the engines' own step boundaries, the per-server sample ticks
//! (load and GPU, staggered across servers), and request arrivals (open-loop from the arrival
//! process, follow-up turns a think time after their parent finished). A request is routed at
//! its arrival by the scheduler under test and submitted to the chosen engine at that instant;
//! its in-flight guard is released when the engine reports it finished.
use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr, sync::Arc};

use super::{
    Policy, SimConfig, SimError, SimOutcome, exact::EngineStates, server_addr, server_index,
};
use crate::{
    bench::{
        metrics::Recorder,
        workload::{MODEL, Start, Workload},
    },
    clock::{Clock, ManualClock, Micros},
    cluster::{EndpointMeta, EndpointTable, Inflight, Snapshot, TokenUsage},
    scheduling::{ExactStateSource, PickError, Scheduler, SchedulingRequest},
    sim::{
        Engine, EngineConfig, EngineEvent, EventDetail, FinishReason, GpuIdentity, SimRequest,
        faults::GpuFaults,
    },
    telemetry::EngineKind,
};

/// Event kinds in the queue; the value orders events that share a timestamp.
const LOAD_SAMPLE: u8 = 0;
const GPU_SAMPLE: u8 = 1;
const ARRIVAL: u8 = 2;

/// Iterations at one timestamp after which the loop is declared stuck (a bug guard).
const MAX_ITERATIONS_AT_ONE_TIME: u32 = 1_000_000;

#[derive(Clone, Copy)]
enum Failure {
    /// 429: sheddable and the pool is saturated.
    Rejected,
    /// No endpoint, or the engine refused the request.
    Error,
}

struct Server {
    addr: SocketAddr,
    engine: Engine,
    /// `engine.next_event_at()`, kept current after every touch.
    next_at: Option<Micros>,
    /// Reports a thermally throttled GPU.
    throttled: bool,
    routed: u64,
    /// Requests without a first token yet, with prompt and cached tokens at submission (kept
    /// only for the oracle: its prefill backlog).
    prefilling: Vec<(u64, u32, u32)>,
}

#[derive(Default)]
struct RequestState {
    sent: Micros,
    last_token: Micros,
    guard: Option<Inflight>,
    /// Sent after the warm-up: its figures count.
    measured: bool,
    server: u32,
}

pub(super) struct Cluster<'w> {
    workload: &'w Workload,
    config: &'w SimConfig,
    servers: Vec<Server>,
    table: EndpointTable,
    snapshot: Arc<Snapshot>,
    scheduler: Scheduler,
    exact: Option<Arc<EngineStates>>,
    clock: ManualClock,
    queue: BinaryHeap<Reverse<(Micros, u8, u32)>>,
    states: Vec<RequestState>,
    /// Follow-up requests of each request (the next turn of its chat), with their think time.
    followers: Vec<Vec<(u32, Micros)>>,
    recorder: Recorder,
    /// Requests sent from this time on are measured (the earlier ones warm the caches).
    measure_from: Micros,
    outstanding: usize,
    events: Vec<EngineEvent>,
}

impl<'w> Cluster<'w> {
    pub fn new(
        workload: &'w Workload,
        policy: &Policy,
        config: &'w SimConfig,
    ) -> Result<Self, SimError> {
        let exact = Arc::new(EngineStates::default());
        let scheduler = policy
            .scheduler(
                config.seed,
                Some(exact.clone() as Arc<dyn ExactStateSource>),
            )
            .map_err(|source| SimError::Policy {
                policy: policy.name().to_owned(),
                source,
            })?;
        let servers: Vec<Server> = (0..config.servers)
            .map(|index| {
                let slowdown = workload.cluster.slowdown(index);
                Server {
                    addr: server_addr(index),
                    engine: Engine::new(
                        config.profile.clone(),
                        EngineConfig {
                            engine_kind: EngineKind::Vllm,
                            max_loras: workload.cluster.max_loras,
                            seed: workload.output_seed,
                            events: EventDetail::Tokens,
                            slowdown: slowdown.unwrap_or(1.0),
                            max_model_len: None,
                            gpu: GpuIdentity::simulated(index as u32, config.seed),
                            start: 0,
                        },
                    ),
                    next_at: None,
                    throttled: slowdown.is_some(),
                    routed: 0,
                    prefilling: Vec::new(),
                }
            })
            .collect();
        let table = EndpointTable::new();
        table.set_members(servers.iter().map(|server| EndpointMeta::new(server.addr)));
        let snapshot = table.snapshot();
        let mut followers = vec![Vec::new(); workload.requests.len()];
        for request in &workload.requests {
            if let Start::After { parent, think } = request.start
                && let Some(list) = followers.get_mut(parent as usize)
            {
                list.push((request.id as u32, think));
            }
        }
        Ok(Self {
            workload,
            config,
            servers,
            table,
            snapshot,
            exact: policy.uses_oracle().then_some(exact),
            scheduler,
            clock: ManualClock::new(0),
            queue: BinaryHeap::new(),
            states: (0..workload.requests.len())
                .map(|_| RequestState::default())
                .collect(),
            followers,
            recorder: Recorder::new(),
            measure_from: 0,
            outstanding: workload.requests.len(),
            events: Vec::with_capacity(1024),
        })
    }

    pub fn run(mut self, arrivals: &[Micros]) -> Result<SimOutcome, SimError> {
        let servers = self.servers.len() as u64;
        // A router that has been running: every server sampled at 0, then staggered ticks.
        for index in 0..self.servers.len() {
            self.sample_load(index, 0);
            self.sample_gpu(index, 0);
            let phase = |interval: Micros| (interval * (index as u64 + 1) / servers).max(1);
            self.queue.push(Reverse((
                phase(self.config.load_interval),
                LOAD_SAMPLE,
                index as u32,
            )));
            self.queue.push(Reverse((
                phase(self.config.gpu_interval),
                GPU_SAMPLE,
                index as u32,
            )));
        }
        let mut sorted = arrivals.to_vec();
        sorted.sort_unstable();
        let warmup = (self.config.warmup * sorted.len() as f64).floor() as usize;
        self.measure_from = sorted.get(warmup).copied().unwrap_or(0);
        let workload = self.workload;
        for request in &workload.requests {
            if let Start::Open(slot) = request.start {
                let at = arrivals.get(slot as usize).copied().unwrap_or(0);
                self.queue.push(Reverse((at, ARRIVAL, request.id as u32)));
            }
        }
        let mut last = 0;
        let mut same_time = 0u32;
        while self.outstanding > 0 {
            let engine_next = self.servers.iter().filter_map(|s| s.next_at).min();
            let queue_next = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let now = match (engine_next, queue_next) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => {
                    return Err(SimError::Stalled {
                        at: last,
                        outstanding: self.outstanding,
                    });
                }
            };
            same_time = if now == last { same_time + 1 } else { 0 };
            if same_time > MAX_ITERATIONS_AT_ONE_TIME {
                return Err(SimError::Stalled {
                    at: now,
                    outstanding: self.outstanding,
                });
            }
            last = now;
            self.clock.set(now);
            if engine_next == Some(now) {
                for index in 0..self.servers.len() {
                    if self.servers[index].next_at.is_some_and(|at| at <= now) {
                        self.advance(index, now);
                    }
                }
                continue;
            }
            let Some(Reverse((_, kind, subject))) = self.queue.pop() else {
                continue;
            };
            match kind {
                LOAD_SAMPLE => {
                    self.sample_load(subject as usize, now);
                    self.queue.push(Reverse((
                        now + self.config.load_interval,
                        LOAD_SAMPLE,
                        subject,
                    )));
                }
                GPU_SAMPLE => {
                    self.sample_gpu(subject as usize, now);
                    self.queue.push(Reverse((
                        now + self.config.gpu_interval,
                        GPU_SAMPLE,
                        subject,
                    )));
                }
                _ => self.arrive(subject, now),
            }
        }
        let preemptions = self
            .servers
            .iter()
            .map(|server| server.engine.counters().preemptions)
            .sum();
        Ok(SimOutcome {
            metrics: self.recorder.summary(preemptions),
            routed: self.servers.iter().map(|server| server.routed).collect(),
            end: self.clock.now(),
            recorder: self.recorder,
        })
    }

    /// Brings one engine to `now` and handles what it reports.
    fn advance(&mut self, index: usize, now: Micros) {
        let mut events = std::mem::take(&mut self.events);
        let server = &mut self.servers[index];
        server.engine.advance_into(now, &mut events);
        server.next_at = server.engine.next_event_at();
        for event in events.drain(..) {
            self.on_event(event);
        }
        self.events = events;
    }

    fn on_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::FirstToken { id, at, .. } => {
                let state = &mut self.states[id as usize];
                state.last_token = at;
                if self.exact.is_some() {
                    let prefilling = &mut self.servers[state.server as usize].prefilling;
                    prefilling.retain(|&(other, _, _)| other != id);
                }
                if state.measured {
                    self.recorder.first_token(state.sent, at);
                }
                // The token timeline counts every request: it measures the cluster's output.
                self.recorder.output_token(at);
            }
            EngineEvent::Token { id, at, generated } => {
                if generated > 1 {
                    let state = &mut self.states[id as usize];
                    if state.measured {
                        self.recorder.token_gap(at.saturating_sub(state.last_token));
                    }
                    self.recorder.output_token(at);
                    state.last_token = at;
                }
            }
            EngineEvent::Finished {
                id,
                at,
                reason,
                usage,
            } => {
                let state = &mut self.states[id as usize];
                let (sent, measured) = (state.sent, state.measured);
                if let Some(guard) = state.guard.take() {
                    guard.complete(&TokenUsage {
                        prompt_tokens: u64::from(usage.prompt_tokens),
                        completion_tokens: u64::from(usage.completion_tokens),
                        cached_prompt_tokens: Some(u64::from(usage.cached_tokens)),
                    });
                }
                if reason == FinishReason::Abort {
                    self.fail(id as u32, Failure::Error);
                    return;
                }
                if measured {
                    self.recorder.completed(
                        sent,
                        at,
                        u64::from(usage.prompt_tokens),
                        u64::from(usage.cached_tokens),
                        u64::from(usage.completion_tokens),
                    );
                }
                self.outstanding -= 1;
                let followers = std::mem::take(&mut self.followers[id as usize]);
                for &(follower, think) in &followers {
                    self.queue.push(Reverse((at + think, ARRIVAL, follower)));
                }
            }
            EngineEvent::Preempted { .. } => {}
        }
    }

    /// A request ended without completing: it and every later turn of its chat are done.
    fn fail(&mut self, id: u32, failure: Failure) {
        let measured = self.states[id as usize].measured;
        if measured {
            match failure {
                Failure::Rejected => self.recorder.rejected(),
                Failure::Error => self.recorder.failed(),
            }
        }
        self.outstanding -= 1;
        let mut pending = std::mem::take(&mut self.followers[id as usize]);
        while let Some((follower, _)) = pending.pop() {
            if measured {
                self.recorder.abandoned();
            }
            self.outstanding -= 1;
            pending.append(&mut self.followers[follower as usize]);
        }
    }

    fn sample_load(&mut self, index: usize, now: Micros) {
        self.advance(index, now);
        let server = &mut self.servers[index];
        let load = server.engine.load(now);
        self.table.update_load(&server.addr, load);
    }

    fn sample_gpu(&mut self, index: usize, now: Micros) {
        self.advance(index, now);
        let server = &self.servers[index];
        let mut sample = server.engine.gpu(now);
        if server.throttled {
            GpuFaults {
                thermal_throttle: true,
                ..GpuFaults::default()
            }
            .distort(&mut sample);
        }
        self.table.update_gpu(&server.addr, &[sample]);
    }

    fn arrive(&mut self, id: u32, now: Micros) {
        let workload = self.workload;
        let request = &workload.requests[id as usize];
        let measured = now >= self.measure_from;
        if measured {
            self.recorder.sent(now);
        }
        let state = &mut self.states[id as usize];
        state.sent = now;
        state.measured = measured;
        let blocks = self.scheduler.hash_tokens(MODEL, &request.prompt);
        let sheddable = self.is_sheddable(request.id);
        let routing = SchedulingRequest {
            model: MODEL,
            lora: request.lora.as_deref(),
            prefix: &blocks,
            input_tokens: request.prompt.len() as u32,
            max_tokens: Some(request.output_tokens),
            priority: if sheddable { -1 } else { 0 },
            session: request.session.as_deref(),
            subset: None,
        };
        if let Some(exact) = self.exact.clone() {
            for index in 0..self.servers.len() {
                self.advance(index, now);
            }
            exact.prepare(
                self.servers
                    .iter()
                    .map(|server| (&server.engine, pending_prefill(server))),
                &request.prompt,
                request.lora.as_deref(),
            );
        }
        let decision = match self
            .scheduler
            .pick(&routing, &self.snapshot, self.clock.now())
        {
            Ok(decision) => decision,
            Err(PickError::Saturated { .. }) => {
                self.fail(id, Failure::Rejected);
                return;
            }
            Err(PickError::NoEndpoints(_)) => {
                self.fail(id, Failure::Error);
                return;
            }
        };
        let guard = self.scheduler.route(&decision, &routing, &self.snapshot);
        let Some(index) = server_index(&decision.primary()).filter(|&i| i < self.servers.len())
        else {
            self.fail(id, Failure::Error);
            return;
        };
        self.advance(index, now);
        let server = &mut self.servers[index];
        let submitted = server.engine.submit(SimRequest {
            id: request.id,
            prompt: request.prompt.clone(),
            max_tokens: request.output_tokens,
            ignore_eos: true,
            lora: request.lora.clone(),
            arrival: now,
        });
        match submitted {
            Ok(()) => {
                server.routed += 1;
                server.next_at = server.engine.next_event_at();
                if self.exact.is_some() {
                    let cached = server
                        .engine
                        .cached_prefix_tokens(&request.prompt, request.lora.as_deref());
                    server
                        .prefilling
                        .push((request.id, request.prompt.len() as u32, cached));
                }
                let state = &mut self.states[id as usize];
                state.guard = guard;
                state.server = index as u32;
            }
            Err(_) => {
                // The engine refused it (context length, KV size): a 400 from a real server.
                self.fail(id, Failure::Error);
            }
        }
    }

    /// A seeded share of requests is sheddable, independent of the policy and the rate.
    fn is_sheddable(&self, id: u64) -> bool {
        let share = self.config.sheddable_share;
        if share <= 0.0 {
            return false;
        }
        let draw = crate::sim::tokens::mix64(self.config.seed ^ 0x5ed0_ab1e ^ id);
        (draw as f64 / u64::MAX as f64) < share
    }
}

/// Prompt tokens `server` has yet to compute for its requests without a first token.
fn pending_prefill(server: &Server) -> u64 {
    server
        .prefilling
        .iter()
        .map(|&(id, prompt, cached)| {
            let computed = server
                .engine
                .request_state(id)
                .map_or(0, |state| state.computed_tokens);
            u64::from(prompt.saturating_sub(computed.max(cached)))
        })
        .sum()
}
