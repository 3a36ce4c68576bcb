//! Paged KV cache with automatic prefix caching, as vLLM's v1 block pool does it.
//!
//! Blocks hold `block_size` tokens. A full block is identified by a hash chained over its
//! parent's hash and its token ids (and the LoRA adapter, so adapters never share cache).
//! Blocks with no reference sit in one free queue in LRU order; a cached block stays findable
//! by hash while it waits there, and allocation takes from the front, evicting its hash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::profile::MAX_BLOCK_SIZE;
use super::tokens::mix64;

const NIL: u32 = u32::MAX;
/// Hash of "no block": computed hashes are remapped away from it.
const NO_HASH: u64 = 0;

/// Hasher for keys that are already hashes or small integers: one mixing step, no SipHash.
/// (std's default SipHash costs more than the rest of a cache lookup; no extra crate needed
/// for six lines.)
#[derive(Clone, Copy, Default)]
pub(crate) struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = mix64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix64(n);
    }
}

pub(crate) type U64Map<V> = HashMap<u64, V, BuildHasherDefault<U64Hasher>>;

/// Hash chain seed of a sequence's first block: distinct per LoRA adapter.
pub(crate) fn chain_root(lora: Option<&str>) -> u64 {
    match lora {
        None => 0x5157_4954_4348_5944, // any fixed value
        Some(name) => xxh3_64_with_seed(name.as_bytes(), 0x4C4F_5241),
    }
}

/// Hash of one full block of `tokens` following a block whose hash is `parent`.
pub(crate) fn block_hash(parent: u64, tokens: impl Iterator<Item = u32>) -> u64 {
    let mut buf = [0u8; MAX_BLOCK_SIZE as usize * 4];
    let mut len = 0;
    for (slot, token) in buf.chunks_exact_mut(4).zip(tokens) {
        slot.copy_from_slice(&token.to_le_bytes());
        len += 4;
    }
    match xxh3_64_with_seed(&buf[..len], parent) {
        NO_HASH => 1,
        hash => hash,
    }
}

#[derive(Clone, Copy, Debug)]
struct Block {
    hash: u64,
    refs: u32,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub(crate) struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    free_len: u32,
    cached: U64Map<u32>,
}

impl BlockPool {
    pub fn new(num_blocks: u32) -> Self {
        let blocks = (0..num_blocks)
            .map(|id| Block {
                hash: NO_HASH,
                refs: 0,
                prev: if id == 0 { NIL } else { id - 1 },
                next: if id + 1 == num_blocks { NIL } else { id + 1 },
            })
            .collect();
        Self {
            blocks,
            head: if num_blocks == 0 { NIL } else { 0 },
            tail: num_blocks.checked_sub(1).unwrap_or(NIL),
            free_len: num_blocks,
            // At most one entry per block: never rehashes.
            cached: U64Map::with_capacity_and_hasher(num_blocks as usize, Default::default()),
        }
    }

    pub fn num_blocks(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// Blocks that can be allocated now: empty ones plus cached ones nobody references.
    pub fn num_free(&self) -> u32 {
        self.free_len
    }

    /// Blocks referenced by at least one sequence.
    pub fn num_used(&self) -> u32 {
        self.num_blocks() - self.free_len
    }

    /// Blocks whose contents are findable by hash (referenced or not).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn lookup(&self, hash: u64) -> Option<u32> {
        self.cached.get(&hash).copied()
    }

    pub fn refs(&self, id: u32) -> u32 {
        self.blocks[id as usize].refs
    }

    fn unlink(&mut self, id: u32) {
        let Block { prev, next, .. } = self.blocks[id as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let block = &mut self.blocks[id as usize];
        block.prev = NIL;
        block.next = NIL;
        self.free_len -= 1;
    }

    fn push_back(&mut self, id: u32) {
        let tail = self.tail;
        {
            let block = &mut self.blocks[id as usize];
            block.prev = tail;
            block.next = NIL;
        }
        if tail == NIL {
            self.head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.tail = id;
        self.free_len += 1;
    }

    /// Takes a reference on a cached block found by [`Self::lookup`].
    pub fn touch(&mut self, id: u32) {
        if self.blocks[id as usize].refs == 0 {
            self.unlink(id);
        }
        self.blocks[id as usize].refs += 1;
    }

    /// Takes the least recently freed block, evicting its cached contents.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        self.unlink(id);
        let block = &mut self.blocks[id as usize];
        let hash = std::mem::replace(&mut block.hash, NO_HASH);
        block.refs = 1;
        // Only a registered block has a hash, and the map points at it: evict the entry.
        if hash != NO_HASH {
            self.cached.remove(&hash);
        }
        Some(id)
    }

    /// Drops one reference; an unreferenced block joins the back of the free queue.
    pub fn release(&mut self, id: u32) {
        let block = &mut self.blocks[id as usize];
        debug_assert!(block.refs > 0, "release of a free block {id}");
        block.refs = block.refs.saturating_sub(1);
        if block.refs == 0 {
            self.push_back(id);
        }
    }

    /// Makes a full block findable by `hash`. If another block already holds the same contents
    /// this one stays anonymous (vLLM keeps the first copy) and `false` is returned.
    pub fn register(&mut self, id: u32, hash: u64) -> bool {
        if self.blocks[id as usize].hash != NO_HASH {
            return false;
        }
        match self.cached.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
                self.blocks[id as usize].hash = hash;
                true
            }
        }
    }

    /// Fraction of blocks referenced by running sequences (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        f64::from(self.num_used()) / self.blocks.len() as f64
    }

    /// Drops every cached hash (vLLM's `reset_prefix_cache`); referenced blocks keep their data
    /// but stop being shareable.
    pub fn reset_prefix_cache(&mut self) {
        for block in &mut self.blocks {
            block.hash = NO_HASH;
        }
        self.cached.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_lru_and_evicts_cached_hashes() {
        let mut pool = BlockPool::new(3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(pool.num_free(), 1);
        assert!(pool.register(a, 11));
        assert!(pool.register(b, 22));
        pool.release(b);
        pool.release(a);
        // Free queue: c (never used), b, a. Cached blocks stay findable until evicted.
        assert_eq!(pool.lookup(11), Some(a));
        assert_eq!(pool.num_free(), 3);
        let c = pool.allocate().unwrap();
        assert_ne!(c, a);
        assert_ne!(c, b);
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.lookup(22), None, "evicted on reuse");
        assert_eq!(pool.num_cached(), 1);
        assert_eq!(pool.lookup(11), Some(a));
        // A hit on a free cached block takes it out of the queue.
        pool.touch(a);
        assert_eq!(pool.refs(a), 1);
        assert_eq!(pool.num_free(), 0);
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn duplicate_contents_keep_the_first_block() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert!(pool.register(a, 5));
        assert!(!pool.register(b, 5));
        assert_eq!(pool.lookup(5), Some(a));
        pool.release(b);
        pool.release(a);
        // Evicting b (anonymous) must not drop a's entry.
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.lookup(5), Some(a));
        // Once a is evicted too, the same contents can live in another block.
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.lookup(5), None);
        pool.release(b);
        assert!(pool.register(b, 5));
        assert_eq!(pool.lookup(5), Some(b));
    }

    #[test]
    fn shared_blocks_free_only_when_the_last_reference_goes() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        pool.register(a, 9);
        pool.touch(a);
        assert_eq!(pool.refs(a), 2);
        pool.release(a);
        assert_eq!(pool.num_used(), 1);
        pool.release(a);
        assert_eq!(pool.num_used(), 0);
        assert!((pool.usage() - 0.0).abs() < f64::EPSILON);
    }

    #[test]
    fn the_map_never_outgrows_the_pool() {
        let mut pool = BlockPool::new(4);
        for round in 0..10_000u64 {
            let id = pool.allocate().unwrap();
            assert!(pool.register(id, round + 1));
            pool.release(id);
        }
        assert_eq!(
            pool.num_cached(),
            4,
            "only the four resident blocks are findable"
        );
        assert!(pool.lookup(10_000).is_some());
        assert!(pool.lookup(1).is_none());
    }

    #[test]
    fn block_hashes_chain_and_depend_on_the_adapter() {
        let tokens = [1u32, 2, 3, 4];
        let base = block_hash(chain_root(None), tokens.iter().copied());
        assert_eq!(base, block_hash(chain_root(None), tokens.iter().copied()));
        assert_ne!(
            base,
            block_hash(chain_root(Some("a")), tokens.iter().copied())
        );
        assert_ne!(block_hash(base, tokens.iter().copied()), base);
        assert_ne!(base, NO_HASH);
    }
}
