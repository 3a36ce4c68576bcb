//! The demo's request mix: chat requests on shared system prompts (more prompts than one
//! server's KV cache holds), a fifth of them for LoRA adapters (Zipf: a few adapters are hot).
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, Zipf};

use super::fleet::{ADAPTERS, MODEL};
use crate::bench::live::loadgen::{ChatRequest, SharedPrefixText};

/// Share of requests that name a LoRA adapter.
const LORA_SHARE: f64 = 0.2;

/// The shape of the demo's prompts.
#[derive(Clone, Copy, Debug)]
pub struct MixShape {
    /// Distinct system prompts of base-model requests.
    pub groups: u32,
    /// Tokens (words) per system prompt.
    pub system_words: u32,
    pub question_words: u32,
    pub max_tokens: u32,
}

impl Default for MixShape {
    fn default() -> Self {
        // 48 prompts of 2,000 tokens: 96k tokens of prefixes against 64k of KV per server.
        Self {
            groups: 48,
            system_words: 2_000,
            question_words: 60,
            max_tokens: 48,
        }
    }
}

/// The requests of a run and, for each, whether it names a LoRA adapter.
pub struct Mix {
    pub requests: Vec<ChatRequest>,
    pub lora: Vec<bool>,
}

/// `count` requests, the same for the same seed; each policy gets this very list.
pub fn requests(shape: MixShape, count: usize, seed: u64) -> Mix {
    let text = |model: &str, groups: u32| SharedPrefixText {
        model: model.to_owned(),
        groups,
        system_words: shape.system_words,
        question_words: shape.question_words,
        max_tokens: shape.max_tokens,
    };
    let base = text(MODEL, shape.groups).requests(count, seed);
    let adapters: Vec<Vec<ChatRequest>> = ADAPTERS
        .iter()
        .enumerate()
        .map(|(i, name)| text(name, 4).requests(count, seed.wrapping_add(1 + i as u64)))
        .collect();
    let zipf = Zipf::new(ADAPTERS.len() as f64, 1.2).expect("constant Zipf parameters are valid");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x10_7a);
    let mut mix = Mix {
        requests: Vec::with_capacity(count),
        lora: Vec::with_capacity(count),
    };
    for i in 0..count {
        let lora = rng.random_bool(LORA_SHARE);
        mix.requests.push(if lora {
            let adapter = (zipf.sample(&mut rng) as usize).clamp(1, ADAPTERS.len()) - 1;
            adapters[adapter][i].clone()
        } else {
            base[i].clone()
        });
        mix.lora.push(lora);
    }
    mix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_deterministic_and_has_both_kinds() {
        let shape = MixShape {
            system_words: 20,
            ..MixShape::default()
        };
        let a = requests(shape, 200, 7);
        let b = requests(shape, 200, 7);
        assert_eq!(a.requests.len(), 200);
        assert!(
            a.requests
                .iter()
                .zip(&b.requests)
                .all(|(x, y)| x.body == y.body)
        );
        let lora = a
            .requests
            .iter()
            .filter(|r| {
                let body = String::from_utf8_lossy(&r.body);
                ADAPTERS.iter().any(|name| body.contains(name))
            })
            .count();
        assert!((20..=70).contains(&lora), "about a fifth are LoRA: {lora}");
        assert_eq!(lora, a.lora.iter().filter(|l| **l).count());
    }
}
