//! The generators behind [`WorkloadSpec::generate`].
use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp, LogNormal, Zipf};

use super::{
    ArrivalProcess, ClusterShape, LengthParams, Lognormal, MultiLoraParams, MultiTurnParams,
    Request, SharedPrefixParams, Start, TraceParams, Workload, WorkloadError, WorkloadSpec,
    invalid, trace,
};
use crate::{
    clock::MICROS_PER_SEC,
    sim::tokens::{BEGIN_OF_TEXT, mix64, output_token},
};

/// Distinct token streams for distinct purposes (system prompts, questions, ...).
#[derive(Clone, Copy)]
#[repr(u64)]
enum Stream {
    System = 1,
    Question = 2,
    Prompt = 3,
    UserTurn = 4,
    TraceGroup = 5,
}

/// `len` pseudo-random token ids of stream `(seed, kind, index)`; equal keys give equal tokens.
fn tokens(seed: u64, kind: Stream, index: u64, len: u32) -> impl Iterator<Item = u32> {
    let key = mix64(seed ^ mix64((kind as u64) << 56 ^ index));
    (0..u64::from(len)).map(move |i| {
        (mix64(key ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % u64::from(BEGIN_OF_TEXT)) as u32
    })
}

fn rng(seed: u64, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(mix64(seed ^ purpose))
}

struct Sampler(LogNormal<f64>, Lognormal);

impl Sampler {
    fn new(field: &'static str, spec: Lognormal) -> Result<Self, WorkloadError> {
        if spec.min == 0 || spec.min > spec.max {
            return Err(invalid(
                field,
                format!(
                    "needs 1 <= min <= max (got min {}, max {})",
                    spec.min, spec.max
                ),
            ));
        }
        let dist = LogNormal::new(spec.mu, spec.sigma)
            .ok()
            .filter(|_| spec.mu.is_finite() && spec.sigma.is_finite())
            .ok_or_else(|| {
                invalid(
                    field,
                    format!(
                        "mu must be finite and sigma finite and >= 0 (got {}, {})",
                        spec.mu, spec.sigma
                    ),
                )
            })?;
        Ok(Self(dist, spec))
    }

    fn sample(&self, rng: &mut StdRng) -> u32 {
        let value: f64 = self.0.sample(rng);
        value
            .round()
            .clamp(f64::from(self.1.min), f64::from(self.1.max)) as u32
    }
}

fn positive(field: &'static str, value: u32) -> Result<u32, WorkloadError> {
    if value == 0 {
        Err(invalid(field, "must be at least 1"))
    } else {
        Ok(value)
    }
}

fn finite_positive(field: &'static str, value: f64) -> Result<f64, WorkloadError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("must be a finite number > 0 (got {value})"),
        ))
    }
}

fn workload(
    spec: &WorkloadSpec,
    seed: u64,
    requests: Vec<Request>,
    arrivals: ArrivalProcess,
    cluster: ClusterShape,
) -> Workload {
    let open = requests
        .iter()
        .filter(|r| matches!(r.start, Start::Open(_)))
        .count() as u32;
    Workload {
        name: spec.name(),
        spec: spec.clone(),
        requests,
        open,
        arrivals,
        cluster,
        output_seed: seed,
    }
}

pub(super) fn generate(
    spec: &WorkloadSpec,
    count: usize,
    seed: u64,
) -> Result<Workload, WorkloadError> {
    if count == 0 && !matches!(spec, WorkloadSpec::Trace(_)) {
        return Err(invalid("requests", "must be at least 1"));
    }
    let poisson = ArrivalProcess::Poisson;
    Ok(match spec {
        WorkloadSpec::SharedPrefix(params) => workload(
            spec,
            seed,
            shared_prefix(params, count, seed)?,
            poisson,
            ClusterShape::default(),
        ),
        WorkloadSpec::Conversations(lengths) => workload(
            spec,
            seed,
            independent(lengths, count, seed, None)?,
            poisson,
            ClusterShape::default(),
        ),
        WorkloadSpec::MultiTurn(params) => workload(
            spec,
            seed,
            multi_turn(params, count, seed)?,
            poisson,
            ClusterShape::default(),
        ),
        WorkloadSpec::MultiLora(params) => {
            positive("multi_lora.max_loras", params.max_loras)?;
            workload(
                spec,
                seed,
                multi_lora(params, count, seed)?,
                poisson,
                ClusterShape {
                    max_loras: params.max_loras,
                    slow: Vec::new(),
                },
            )
        }
        WorkloadSpec::Bursts(params) => {
            let on_s = finite_positive("bursts.on_s", params.on_s)?;
            if !params.off_s.is_finite() || params.off_s < 0.0 {
                return Err(invalid(
                    "bursts.off_s",
                    format!("must be a finite number >= 0 (got {})", params.off_s),
                ));
            }
            workload(
                spec,
                seed,
                independent(&params.lengths, count, seed, None)?,
                ArrivalProcess::OnOff {
                    on_s,
                    off_s: params.off_s,
                },
                ClusterShape::default(),
            )
        }
        WorkloadSpec::Heterogeneous(params) => {
            let slowdown = finite_positive("heterogeneous.slowdown", params.slowdown)?;
            workload(
                spec,
                seed,
                independent(&params.lengths, count, seed, None)?,
                poisson,
                ClusterShape {
                    max_loras: 0,
                    slow: (0..params.slow_servers).map(|i| (i, slowdown)).collect(),
                },
            )
        }
        WorkloadSpec::Trace(params) => {
            let (requests, offsets) = from_trace(params, count, seed)?;
            workload(
                spec,
                seed,
                requests,
                ArrivalProcess::Trace {
                    offsets_s: offsets.into(),
                },
                ClusterShape::default(),
            )
        }
    })
}

fn shared_prefix(
    params: &SharedPrefixParams,
    count: usize,
    seed: u64,
) -> Result<Vec<Request>, WorkloadError> {
    let groups = positive("shared_prefix.groups", params.groups)?;
    let per_group = positive("shared_prefix.prompts_per_group", params.prompts_per_group)?;
    positive(
        "shared_prefix.system_tokens + question_tokens",
        params.system_tokens.saturating_add(params.question_tokens),
    )?;
    let output = positive("shared_prefix.output_tokens", params.output_tokens)?;
    let mut prompts: Vec<Option<Arc<[u32]>>> = vec![None; (groups * per_group) as usize];
    let mut rng = rng(seed, 0x005a_4ed0);
    let mut requests = Vec::with_capacity(count);
    for id in 0..count {
        let group = rng.random_range(0..groups);
        let question = rng.random_range(0..per_group);
        let slot = (group * per_group + question) as usize;
        let prompt = prompts[slot]
            .get_or_insert_with(|| {
                tokens(seed, Stream::System, u64::from(group), params.system_tokens)
                    .chain(tokens(
                        seed,
                        Stream::Question,
                        slot as u64,
                        params.question_tokens,
                    ))
                    .collect()
            })
            .clone();
        requests.push(Request {
            id: id as u64,
            prompt,
            output_tokens: output,
            lora: None,
            session: None,
            start: Start::Open(id as u32),
        });
    }
    Ok(requests)
}

/// Draws a request's LoRA adapter.
type AdapterDraw<'a> = dyn FnMut(&mut StdRng) -> Arc<str> + 'a;

/// Independent requests with lognormal lengths and unique prompts.
fn independent(
    lengths: &LengthParams,
    count: usize,
    seed: u64,
    mut lora: Option<&mut AdapterDraw<'_>>,
) -> Result<Vec<Request>, WorkloadError> {
    let input = Sampler::new("input", lengths.input)?;
    let output = Sampler::new("output", lengths.output)?;
    let mut rng = rng(seed, 0x1e_4917);
    Ok((0..count)
        .map(|id| {
            let input_tokens = input.sample(&mut rng);
            let output_tokens = output.sample(&mut rng);
            let adapter = lora.as_mut().map(|draw| draw(&mut rng));
            Request {
                id: id as u64,
                prompt: tokens(seed, Stream::Prompt, id as u64, input_tokens).collect(),
                output_tokens,
                lora: adapter,
                session: None,
                start: Start::Open(id as u32),
            }
        })
        .collect())
}

fn multi_lora(
    params: &MultiLoraParams,
    count: usize,
    seed: u64,
) -> Result<Vec<Request>, WorkloadError> {
    let adapters = positive("multi_lora.adapters", params.adapters)?;
    let exponent = params.zipf_exponent;
    let zipf = Zipf::new(f64::from(adapters), exponent)
        .ok()
        .filter(|_| exponent.is_finite())
        .ok_or_else(|| {
            invalid(
                "multi_lora.zipf_exponent",
                format!("must be a finite number >= 0 (got {exponent})"),
            )
        })?;
    let names: Vec<Arc<str>> = (1..=adapters)
        .map(|rank| Arc::from(format!("adapter-{rank:03}")))
        .collect();
    let mut draw = |rng: &mut StdRng| -> Arc<str> {
        let rank: f64 = zipf.sample(rng);
        let index = (rank as usize).clamp(1, names.len()) - 1;
        names[index].clone()
    };
    independent(&params.lengths, count, seed, Some(&mut draw))
}

fn multi_turn(
    params: &MultiTurnParams,
    count: usize,
    seed: u64,
) -> Result<Vec<Request>, WorkloadError> {
    let turns = positive("multi_turn.turns", params.turns)?;
    let systems = positive("multi_turn.system_prompts", params.system_prompts)?;
    let user = Sampler::new("multi_turn.user", params.user)?;
    let output = Sampler::new("multi_turn.output", params.output)?;
    let think = Exp::new(1.0 / finite_positive("multi_turn.think_time_s", params.think_time_s)?)
        .map_err(|err| invalid("multi_turn.think_time_s", err.to_string()))?;
    let system_prompts: Vec<Vec<u32>> = (0..systems)
        .map(|index| tokens(seed, Stream::System, u64::from(index), params.system_tokens).collect())
        .collect();
    let mut rng = rng(seed, 0xc4a7);
    let mut requests: Vec<Request> = Vec::with_capacity(count);
    let mut conversation = 0u32;
    while requests.len() < count {
        let system = &system_prompts[rng.random_range(0..system_prompts.len())];
        let session: Arc<str> = Arc::from(format!("conversation-{conversation}"));
        let mut prompt = system.clone();
        let turn_key = |turn: u32| (u64::from(conversation) << 16) | u64::from(turn);
        prompt.extend(tokens(
            seed,
            Stream::UserTurn,
            turn_key(0),
            user.sample(&mut rng),
        ));
        for turn in 0..turns {
            if requests.len() >= count {
                break;
            }
            let id = requests.len() as u64;
            let output_tokens = output.sample(&mut rng);
            let start = if turn == 0 {
                Start::Open(conversation)
            } else {
                let gap: f64 = think.sample(&mut rng);
                Start::After {
                    parent: (id - 1) as u32,
                    think: (gap * MICROS_PER_SEC as f64).round() as u64,
                }
            };
            requests.push(Request {
                id,
                prompt: Arc::from(prompt.as_slice()),
                output_tokens,
                lora: None,
                session: Some(session.clone()),
                start,
            });
            // The next turn: this prompt, the answer the engine will write, a new user turn.
            prompt.extend((0..output_tokens).map(|position| output_token(seed, id, position)));
            prompt.extend(tokens(
                seed,
                Stream::UserTurn,
                turn_key(turn + 1),
                user.sample(&mut rng),
            ));
        }
        conversation += 1;
    }
    Ok(requests)
}

fn from_trace(
    params: &TraceParams,
    limit: usize,
    seed: u64,
) -> Result<(Vec<Request>, Vec<f64>), WorkloadError> {
    let mut rows = trace::load(&params.path)?;
    if limit > 0 {
        rows.truncate(limit);
    }
    let first = rows.first().map_or(0.0, |row| row.arrival_s);
    let mut offsets = Vec::with_capacity(rows.len());
    let requests = rows
        .iter()
        .enumerate()
        .map(|(id, row)| {
            offsets.push(row.arrival_s - first);
            let shared = match row.prefix_group {
                Some(_) => params.prefix_tokens.min(row.input_tokens.saturating_sub(1)),
                None => 0,
            };
            let group = row.prefix_group.unwrap_or(0);
            let prompt: Arc<[u32]> = tokens(seed, Stream::TraceGroup, group, shared)
                .chain(tokens(
                    seed,
                    Stream::Prompt,
                    id as u64,
                    row.input_tokens - shared,
                ))
                .collect();
            Request {
                id: id as u64,
                prompt,
                output_tokens: row.output_tokens,
                lora: None,
                session: None,
                start: Start::Open(id as u32),
            }
        })
        .collect();
    Ok((requests, offsets))
}
