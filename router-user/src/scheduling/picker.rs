//! Ranking: keep the best `k` candidates by (score, seeded random tie-break key).
//!
//! Ties are broken by a per-request random key drawn from a counter-based generator
//! (splitmix64 of seed + draw number), so the scheduler needs no lock for its randomness and a
//! run with the same seed and the same call order makes the same choices.

/// splitmix64: a counter-based 64-bit mixer (Steele, Lea & Flood). Written out because the
/// scheduler needs a stateless draw per request for lock-free determinism, which `rand`'s
/// stateful generators do not give.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ranked {
    pub slot: u32,
    pub score: f64,
    pub key: u64,
}

impl Ranked {
    #[inline]
    fn beats(&self, other: &Ranked) -> bool {
        self.score > other.score || (self.score == other.score && self.key > other.key)
    }
}

/// The best `k` seen so far, best first. `k` is small (a handful), so insertion is linear.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    items: Vec<Ranked>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k: k.max(1),
            items: Vec::with_capacity(k.max(1) + 1),
        }
    }

    /// Whether an item with `score` could enter (it might tie with the worst held).
    #[inline]
    pub fn admits(&self, score: f64) -> bool {
        self.items.len() < self.k || self.items.last().is_some_and(|worst| score >= worst.score)
    }

    #[inline]
    pub fn offer(&mut self, item: Ranked) {
        if self.items.len() == self.k {
            match self.items.last() {
                Some(worst) if item.beats(worst) => {}
                _ => return,
            }
        }
        let at = self
            .items
            .iter()
            .position(|held| item.beats(held))
            .unwrap_or(self.items.len());
        self.items.insert(at, item);
        self.items.truncate(self.k);
    }

    pub fn into_vec(self) -> Vec<Ranked> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(slot: u32, score: f64, key: u64) -> Ranked {
        Ranked { slot, score, key }
    }

    #[test]
    fn keeps_best_k_in_order_with_key_tie_break() {
        let mut top = TopK::new(3);
        for item in [
            ranked(0, 0.5, 1),
            ranked(1, 0.9, 1),
            ranked(2, 0.5, 9),
            ranked(3, 0.1, 100),
            ranked(4, 0.9, 0),
        ] {
            top.offer(item);
        }
        let slots: Vec<u32> = top.into_vec().iter().map(|r| r.slot).collect();
        assert_eq!(slots, vec![1, 4, 2]);
    }

    #[test]
    fn mix_spreads_consecutive_counters() {
        let a = mix64(1);
        let b = mix64(2);
        assert_ne!(a, b);
        assert!((a ^ b).count_ones() > 16);
    }
}
