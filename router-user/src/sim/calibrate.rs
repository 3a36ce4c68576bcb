//! How a profile compares with published vLLM / H100 figures (`switchyard sim --calibrate`).
//!
//! Every number is computed by running the engine on virtual time, so it is what routers and
//! benchmarks will see; the published side names its source.
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, LogNormal};

use super::engine::{Engine, EngineConfig, EngineEvent, EventDetail, SimRequest};
use super::profile::{Profile, StepWork};
use crate::clock::{MICROS_PER_SEC, Micros};

/// One line of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationRow {
    pub quantity: &'static str,
    pub simulated: f64,
    pub unit: &'static str,
    /// Published value or range, as text.
    pub published: &'static str,
    pub source: &'static str,
}

const REFERENCE: &str = "docs/sim.md (public H100 measurements of Llama-3-8B)";
const AIMULTIPLE: &str =
    "research.aimultiple.com/inference-engines (vLLM, Llama 3.1 8B, H100, 1,000 ShareGPT prompts)";

fn engine(profile: &Profile) -> Engine {
    Engine::new(
        profile.clone(),
        EngineConfig {
            events: EventDetail::Milestones,
            ..EngineConfig::default()
        },
    )
}

fn run_to_idle(engine: &mut Engine, events: &mut Vec<EngineEvent>) {
    while let Some(at) = engine.next_event_at() {
        engine.advance_into(at, events);
    }
}

/// Time to first token of one prompt on an idle server.
fn idle_ttft_ms(profile: &Profile, prompt_tokens: u32) -> f64 {
    let mut engine = engine(profile);
    let prompt: Arc<[u32]> = (0..prompt_tokens).collect();
    let submitted = engine.submit(SimRequest {
        id: 1,
        prompt,
        max_tokens: 1,
        ignore_eos: true,
        lora: None,
        arrival: 0,
    });
    if submitted.is_err() {
        return f64::NAN;
    }
    let mut events = Vec::new();
    run_to_idle(&mut engine, &mut events);
    events
        .iter()
        .find_map(|event| match event {
            EngineEvent::FirstToken { at, .. } => Some(*at as f64 / 1000.0),
            _ => None,
        })
        .unwrap_or(f64::NAN)
}

/// Request lengths of the offline throughput runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OfflineShape {
    /// Lognormal prompt and output lengths with means of about 220 and 200 tokens, filtered as
    /// vLLM's ShareGPT sampler filters them (both >= 4, prompt <= 1,024, sum <= 2,048).
    ShareGptLike,
    /// Every request the same size (no long tail of outputs).
    Fixed { prompt: u32, output: u32 },
}

/// Output tokens per second for `count` requests all queued at once (vLLM's offline
/// `benchmark_throughput` setting), on `profile`.
pub fn offline_output_throughput(
    profile: &Profile,
    shape: OfflineShape,
    count: u32,
    seed: u64,
) -> f64 {
    let mut engine = engine(profile);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (Ok(prompt_len), Ok(output_len)) = (LogNormal::new(4.8, 1.0), LogNormal::new(4.7, 1.0))
    else {
        return f64::NAN;
    };
    let mut output_tokens = 0u64;
    let mut id = 0u64;
    while id < u64::from(count) {
        let (prompt, output) = match shape {
            OfflineShape::Fixed { prompt, output } => (prompt, output),
            OfflineShape::ShareGptLike => {
                let prompt = prompt_len.sample(&mut rng) as u32;
                let output = output_len.sample(&mut rng) as u32;
                if prompt < 4 || output < 4 || prompt > 1024 || prompt + output > 2048 {
                    continue;
                }
                (prompt, output)
            }
        };
        let base = (id as u32).wrapping_mul(10_000);
        let submitted = engine.submit(SimRequest {
            id,
            prompt: (0..prompt).map(|i| base.wrapping_add(i)).collect(),
            max_tokens: output,
            ignore_eos: true,
            lora: None,
            arrival: 0,
        });
        if submitted.is_ok() {
            output_tokens += u64::from(output);
        }
        id += 1;
    }
    let mut events = Vec::new();
    run_to_idle(&mut engine, &mut events);
    let elapsed: Micros = engine.now().max(1);
    output_tokens as f64 / (elapsed as f64 / MICROS_PER_SEC as f64)
}

/// vLLM's offline (`LLM` class) defaults on an 80 GB GPU: more sequences and a bigger budget
/// than the API server's.
fn offline_defaults(profile: &Profile) -> Profile {
    Profile {
        max_num_seqs: 1024,
        max_num_batched_tokens: 16_384,
        ..profile.clone()
    }
}

pub fn report(profile: &Profile) -> Vec<CalibrationRow> {
    let step = &profile.step;
    let slowdown = profile.slowdown;
    let decode = |seqs: u32| {
        let work = StepWork {
            decode_seqs: seqs,
            kv_tokens_read: u64::from(seqs) * 1024,
            ..StepWork::default()
        };
        step.step_us(&work, slowdown, 0.0) / 1000.0
    };
    let chunk = profile.max_num_batched_tokens;
    let prefill = StepWork {
        prefill_tokens: chunk,
        kv_tokens_read: u64::from(chunk),
        ..StepWork::default()
    };
    let prefill_rate = f64::from(chunk) / (step.step_us(&prefill, slowdown, 0.0) / 1e6);
    vec![
        CalibrationRow {
            quantity: "decode step, batch 1, 1k context",
            simulated: decode(1),
            unit: "ms",
            published: "6-8",
            source: REFERENCE,
        },
        CalibrationRow {
            quantity: "decode step, batch 64, 1k context each",
            simulated: decode(64),
            unit: "ms",
            published: "9-12",
            source: REFERENCE,
        },
        CalibrationRow {
            quantity: "prefill throughput (full chunks)",
            simulated: prefill_rate,
            unit: "tok/s",
            published: "25,000-40,000",
            source: REFERENCE,
        },
        CalibrationRow {
            quantity: "TTFT, one 1,000-token prompt, idle",
            simulated: idle_ttft_ms(profile, 1000),
            unit: "ms",
            published: "32-47 (derived: 1,000 tokens at 25-40k tok/s + one step)",
            source: REFERENCE,
        },
        CalibrationRow {
            quantity: "KV cache capacity",
            simulated: (u64::from(profile.num_gpu_blocks()) * u64::from(profile.block_size)) as f64,
            unit: "tokens",
            published: "420,000-450,000",
            source: REFERENCE,
        },
        CalibrationRow {
            quantity: "offline output throughput, 1,000 ShareGPT-shaped requests",
            simulated: offline_output_throughput(
                &offline_defaults(profile),
                OfflineShape::ShareGptLike,
                1000,
                7,
            ),
            unit: "tok/s",
            published: "12,553 (real ShareGPT)",
            source: AIMULTIPLE,
        },
        CalibrationRow {
            quantity: "offline output throughput, 1,000 x (220 in, 200 out)",
            simulated: offline_output_throughput(
                &offline_defaults(profile),
                OfflineShape::Fixed {
                    prompt: 220,
                    output: 200,
                },
                1000,
                7,
            ),
            unit: "tok/s",
            published: "12,553 (real ShareGPT)",
            source: AIMULTIPLE,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_lands_near_published_figures() {
        let rows = report(&Profile::default());
        let value = |name: &str| {
            rows.iter()
                .find(|row| row.quantity.starts_with(name))
                .map(|row| row.simulated)
                .unwrap()
        };
        let ttft = value("TTFT");
        assert!((30.0..=60.0).contains(&ttft), "ttft {ttft} ms");
        // Within a factor of two of the published offline throughput (docs/sim.md explains the
        // gap: the synthetic output-length tail).
        for row in rows
            .iter()
            .filter(|row| row.quantity.starts_with("offline"))
        {
            let offline = row.simulated;
            assert!(
                (12_553.0 / 2.0..=12_553.0 * 2.0).contains(&offline),
                "{row:?}"
            );
        }
        // A slower GPU is proportionally slower.
        let slow = Profile {
            slowdown: 2.0,
            ..Profile::default()
        };
        let shape = OfflineShape::ShareGptLike;
        let slow_offline = offline_output_throughput(&slow, shape, 200, 7);
        let fast_offline = offline_output_throughput(&Profile::default(), shape, 200, 7);
        assert!(
            slow_offline < fast_offline * 0.6,
            "{slow_offline} vs {fast_offline}"
        );
    }
}
