//! Prefill work this router sent to each endpoint that the engine has probably not computed yet.
//!
//! Load samples say how many requests wait, not how much prompt is still to be computed: a
//! 10,000-token prompt admitted 20 ms ago shows as one running request while it holds the
//! engine's prefill budget for the next quarter second, and it is invisible as soon as it left
//! the queue. The router knows what it sent: each routed request adds its uncached prompt tokens
//! (the prefix index's estimate) to its endpoint's backlog, which drains at the engine's prefill
//! rate. The estimate is the router's own, like in-flight counts: fresh at every pick, blind to
//! other routers' traffic.
//!
//! Reads are on the pick path, once per candidate: one atomic word per endpoint in an array kept
//! in the snapshot's (address) order, published through an `ArcSwap`, so a read is an index, an
//! address compare and a load. Writers update a word with a compare-and-swap; a new endpoint
//! republishes the array (rare: membership changes), and an update racing with that republish
//! can be lost: the backlog is an estimate, and it drains within a second anyway.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::clock::{MICROS_PER_MS, Micros};

/// Pending tokens (saturating) in the low bits of a word; the update time in milliseconds,
/// modulo 2^40, in the high bits.
const TOKEN_BITS: u32 = 24;
const TOKEN_MAX: u64 = (1 << TOKEN_BITS) - 1;
const TIME_MASK: u64 = (1 << (64 - TOKEN_BITS)) - 1;

/// The endpoints with a backlog, sorted by address, and their words.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    addrs: Vec<SocketAddr>,
    words: Vec<AtomicU64>,
}

impl Slots {
    /// The word of `addr`; `position` is its snapshot position, right whenever the backlog
    /// knows the snapshot's members.
    #[inline]
    fn word(&self, position: usize, addr: &SocketAddr) -> Option<&AtomicU64> {
        let index = if self.addrs.get(position) == Some(addr) {
            position
        } else {
            self.addrs.binary_search(addr).ok()?
        };
        self.words.get(index)
    }
}

#[derive(Debug)]
pub(crate) struct PrefillBacklog {
    slots: ArcSwap<Slots>,
    /// Serialises republishing (new endpoints, forgetting old ones).
    publish: Mutex<()>,
    /// Tokens per millisecond the engine computes.
    drain_per_ms: f64,
}

fn now_ms(now: Micros) -> u64 {
    (now / MICROS_PER_MS) & TIME_MASK
}

impl PrefillBacklog {
    pub fn new(tokens_per_second: f64) -> Self {
        Self {
            slots: ArcSwap::from_pointee(Slots::default()),
            publish: Mutex::new(()),
            drain_per_ms: tokens_per_second / 1_000.0,
        }
    }

    /// The current array; a pick loads it once.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Slots>> {
        self.slots.load()
    }

    /// Tokens a word says are pending at `now`.
    #[inline]
    fn pending(&self, word: u64, now: u64) -> f64 {
        let tokens = (word & TOKEN_MAX) as f64;
        let elapsed = now.wrapping_sub(word >> TOKEN_BITS) & TIME_MASK;
        (tokens - self.drain_per_ms * elapsed as f64).max(0.0)
    }

    /// Tokens pending at `addr` (snapshot position `position`) at `now`.
    #[inline]
    pub fn get(&self, slots: &Slots, position: usize, addr: &SocketAddr, now: Micros) -> f64 {
        slots.word(position, addr).map_or(0.0, |word| {
            self.pending(word.load(Ordering::Relaxed), now_ms(now))
        })
    }

    /// Adds `tokens` routed to `addr` at `now`.
    pub fn add(&self, addr: SocketAddr, tokens: f64, now: Micros) {
        let slots = self.slots.load();
        let Ok(index) = slots.addrs.binary_search(&addr) else {
            drop(slots);
            self.insert(addr);
            return self.add(addr, tokens, now);
        };
        let now = now_ms(now);
        let word = &slots.words[index];
        let mut current = word.load(Ordering::Relaxed);
        loop {
            let pending = (self.pending(current, now) + tokens.max(0.0)).round() as u64;
            let next = (now << TOKEN_BITS) | pending.min(TOKEN_MAX);
            match word.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Republishes the array with `addr` added (values of the others kept).
    fn insert(&self, addr: SocketAddr) {
        let _publishing = self.publish.lock();
        let old = self.slots.load();
        if old.addrs.binary_search(&addr).is_ok() {
            return;
        }
        let mut entries: Vec<(SocketAddr, u64)> = old
            .addrs
            .iter()
            .zip(&old.words)
            .map(|(addr, word)| (*addr, word.load(Ordering::Relaxed)))
            .collect();
        entries.push((addr, 0));
        self.republish(entries);
    }

    fn republish(&self, mut entries: Vec<(SocketAddr, u64)>) {
        entries.sort_unstable_by_key(|(addr, _)| *addr);
        self.slots.store(Arc::new(Slots {
            addrs: entries.iter().map(|(addr, _)| *addr).collect(),
            words: entries
                .iter()
                .map(|(_, word)| AtomicU64::new(*word))
                .collect(),
        }));
    }

    /// Forgets endpoints `keep` rejects.
    pub fn retain(&self, mut keep: impl FnMut(&SocketAddr) -> bool) {
        let _publishing = self.publish.lock();
        let old = self.slots.load();
        if old.addrs.iter().all(&mut keep) {
            return;
        }
        let entries = old
            .addrs
            .iter()
            .zip(&old.words)
            .filter(|(addr, _)| keep(addr))
            .map(|(addr, word)| (*addr, word.load(Ordering::Relaxed)))
            .collect();
        self.republish(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MICROS_PER_SEC;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8000))
    }

    #[test]
    fn backlog_drains_at_the_prefill_rate() {
        let backlog = PrefillBacklog::new(10_000.0);
        let (a, b) = (addr(1), addr(2));
        let get = |addr: &SocketAddr, position: usize, now: Micros| {
            backlog.get(&backlog.load(), position, addr, now)
        };
        backlog.add(a, 5_000.0, 0);
        assert_eq!(get(&a, 0, 0), 5_000.0);
        assert_eq!(get(&a, 0, 200_000), 3_000.0);
        backlog.add(a, 1_000.0, 200_000);
        assert_eq!(get(&a, 0, 300_000), 3_000.0);
        assert_eq!(get(&a, 0, 10 * MICROS_PER_SEC), 0.0);
        assert_eq!(get(&b, 1, 0), 0.0, "never routed to");
        backlog.add(b, 700.0, 0);
        // A wrong position hint falls back to the address.
        assert_eq!(get(&b, 0, 0), 700.0);
        assert_eq!(get(&b, 5, 0), 700.0);
        assert_eq!(get(&a, 1, 300_000), 3_000.0);
        backlog.retain(|addr| *addr == b);
        assert_eq!(get(&a, 0, 300_000), 0.0);
        assert_eq!(get(&b, 0, 0), 700.0);
    }

    #[test]
    fn huge_backlogs_saturate_and_wall_clock_times_fit() {
        let backlog = PrefillBacklog::new(1_000.0);
        let now = 1_790_000_000 * MICROS_PER_SEC;
        backlog.add(addr(1), 1e12, now);
        assert_eq!(
            backlog.get(&backlog.load(), 0, &addr(1), now),
            TOKEN_MAX as f64
        );
        let later = backlog.get(&backlog.load(), 0, &addr(1), now + MICROS_PER_SEC);
        assert_eq!(later, TOKEN_MAX as f64 - 1_000.0);
    }

    #[test]
    fn concurrent_adds_are_not_lost() {
        let backlog = Arc::new(PrefillBacklog::new(0.0));
        // Both endpoints known: the adds race on their words, not on a republish.
        backlog.add(addr(1), 0.0, 0);
        backlog.add(addr(2), 0.0, 0);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let backlog = backlog.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        backlog.add(addr(1 + (t % 2) as u8), 1.0, 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let slots = backlog.load();
        assert_eq!(backlog.get(&slots, 0, &addr(1), 0), 2_000.0);
        assert_eq!(backlog.get(&slots, 1, &addr(2), 0), 2_000.0);
    }
}
