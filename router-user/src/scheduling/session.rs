//! Session affinity: which endpoint a session's previous request went to.
//!
//! Bounded (an LRU of sessions per shard) and aged (entries older than the TTL are ignored), so
//! a flood of one-off session keys cannot grow it and an idle session's endpoint is not pinned
//! forever. Keys are hashed; collisions only cost a wrong preference, never a wrong answer.
use std::{net::SocketAddr, num::NonZeroUsize};

use lru::LruCache;
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use super::prefix_index::PassThrough;
use crate::clock::Micros;

pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
pub const DEFAULT_SESSION_TTL: Micros = 10 * 60 * crate::clock::MICROS_PER_SEC;
const SHARDS: usize = 16;

/// Session-key hash → (endpoint, last routed at).
type Shard = Mutex<LruCache<u64, (SocketAddr, Micros), PassThrough>>;

#[derive(Debug)]
pub struct SessionTable {
    shards: Box<[Shard]>,
    ttl: Micros,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TTL)
    }
}

impl SessionTable {
    /// `max_sessions` is spread over the shards (at least one per shard).
    pub fn new(max_sessions: usize, ttl: Micros) -> Self {
        let per_shard =
            NonZeroUsize::new(max_sessions.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::with_hasher(per_shard, PassThrough::default())))
                .collect(),
            ttl,
        }
    }

    fn shard(&self, key: u64) -> &Shard {
        &self.shards[(key >> 60) as usize % SHARDS]
    }

    /// The endpoint the session last went to, if it did within the TTL.
    pub fn get(&self, session: &str, now: Micros) -> Option<SocketAddr> {
        let key = xxh3_64(session.as_bytes());
        let shard = self.shard(key).lock();
        let &(addr, at) = shard.peek(&key)?;
        (now.saturating_sub(at) <= self.ttl).then_some(addr)
    }

    pub fn record(&self, session: &str, addr: SocketAddr, now: Micros) {
        let key = xxh3_64(session.as_bytes());
        self.shard(key).lock().put(key, (addr, now));
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_ttl_and_stays_bounded() {
        let a = SocketAddr::from(([10, 0, 0, 1], 80));
        let table = SessionTable::new(32, 100);
        table.record("alice", a, 10);
        assert_eq!(table.get("alice", 110), Some(a));
        assert_eq!(table.get("alice", 111), None, "expired");
        assert_eq!(table.get("bob", 10), None);
        for i in 0..10_000 {
            table.record(&format!("user-{i}"), a, 10);
        }
        assert!(table.len() <= 32 + SHARDS, "bounded: {}", table.len());
    }
}
