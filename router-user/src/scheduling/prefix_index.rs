//! Approximate prefix-cache index: which endpoints were recently sent which prompt blocks.
//!
//! Organised by block hash → endpoints, not per endpoint, so a lookup costs what the request's
//! prefix matches, not what the fleet size is. Bounded two ways:
//! - per endpoint, an LRU of at most `capacity_per_endpoint` block hashes (GIE's
//!   `lruCapacityPerServer`, 31,250 by default ≈ 2M tokens at 64 tokens a block), evicting the
//!   least recently routed blocks as the engine's own LRU would;
//! - per block, at most `max_endpoints_per_block` holders (most recent kept). A block held by
//!   more endpoints than that is on so many of them that it no longer tells them apart; an
//!   endpoint displaced from such a shallow block is still found through its deeper blocks.
//!
//! Concurrency: 64 shards of block → holders maps behind reader-writer locks (short critical
//! sections, reads never wait on other reads) plus one LRU lock per endpoint taken only by
//! writers. Writers are [`PrefixIndex::insert`] after a route; readers are picks.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use super::request::BlockHash;

pub const DEFAULT_CAPACITY_PER_ENDPOINT: usize = 31_250;
pub const DEFAULT_MAX_ENDPOINTS_PER_BLOCK: usize = 32;
/// Distinct match depths a lookup resolves; endpoints matching less than the 16th deepest
/// level are not reported (their match is the shallowest anyway).
pub const MAX_MATCH_LEVELS: usize = 16;
const SHARDS: usize = 64;

/// Block hashes are already uniformly mixed: hashing them again is wasted time.
#[derive(Default)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

pub(crate) type PassThrough = BuildHasherDefault<PassThroughHasher>;

/// Dense id of an endpoint inside the index (cheaper to store per block than an address).
type EndpointId = u32;

#[derive(Clone, Copy, Debug)]
struct Holder {
    id: EndpointId,
    /// Insert stamp: the most recent route of this block to this endpoint.
    stamp: u64,
}

/// Holders of one block, sorted by id (so lookups intersect sets by merging).
#[derive(Debug, Default)]
struct Holders(Vec<Holder>);

impl Holders {
    fn touch(&mut self, id: EndpointId, stamp: u64, cap: usize) -> Option<EndpointId> {
        match self.0.binary_search_by_key(&id, |holder| holder.id) {
            Ok(at) => {
                self.0[at].stamp = stamp;
                None
            }
            Err(at) => {
                self.0.insert(at, Holder { id, stamp });
                if self.0.len() <= cap {
                    return None;
                }
                let (oldest, _) = self
                    .0
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, holder)| holder.stamp)?;
                Some(self.0.remove(oldest).id)
            }
        }
    }

    fn contains(&self, id: EndpointId) -> bool {
        self.0.binary_search_by_key(&id, |holder| holder.id).is_ok()
    }

    fn remove(&mut self, id: EndpointId) {
        if let Ok(at) = self.0.binary_search_by_key(&id, |holder| holder.id) {
            self.0.remove(at);
        }
    }
}

#[derive(Debug)]
struct EndpointBlocks {
    addr: SocketAddr,
    lru: Mutex<LruCache<BlockHash, (), PassThrough>>,
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Registry {
    ids: HashMap<SocketAddr, EndpointId>,
    slots: Vec<Option<Arc<EndpointBlocks>>>,
    free: Vec<EndpointId>,
}

/// One endpoint's match: how many leading blocks of the request it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    pub addr: SocketAddr,
    pub blocks: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct PrefixIndex {
    shards: Box<[RwLock<HashMap<BlockHash, Holders, PassThrough>>]>,
    registry: RwLock<Registry>,
    capacity_per_endpoint: NonZeroUsize,
    max_endpoints_per_block: usize,
    stamp: AtomicU64,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new(
            DEFAULT_CAPACITY_PER_ENDPOINT,
            DEFAULT_MAX_ENDPOINTS_PER_BLOCK,
        )
    }
}

impl PrefixIndex {
    /// Both bounds are raised to at least 1.
    pub fn new(capacity_per_endpoint: usize, max_endpoints_per_block: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            registry: RwLock::default(),
            capacity_per_endpoint: NonZeroUsize::new(capacity_per_endpoint)
                .unwrap_or(NonZeroUsize::MIN),
            max_endpoints_per_block: max_endpoints_per_block.max(1),
            stamp: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: BlockHash) -> &RwLock<HashMap<BlockHash, Holders, PassThrough>> {
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    fn endpoint(&self, addr: SocketAddr) -> (EndpointId, Arc<EndpointBlocks>) {
        if let Some(found) = self.lookup_endpoint(&addr) {
            return found;
        }
        let mut registry = self.registry.write();
        if let Some(&id) = registry.ids.get(&addr)
            && let Some(Some(slot)) = registry.slots.get(id as usize)
        {
            return (id, slot.clone());
        }
        let blocks = Arc::new(EndpointBlocks {
            addr,
            lru: Mutex::new(LruCache::with_hasher(
                self.capacity_per_endpoint,
                PassThrough::default(),
            )),
            len: AtomicUsize::new(0),
        });
        let id = match registry.free.pop() {
            Some(id) => {
                registry.slots[id as usize] = Some(blocks.clone());
                id
            }
            None => {
                registry.slots.push(Some(blocks.clone()));
                (registry.slots.len() - 1) as EndpointId
            }
        };
        registry.ids.insert(addr, id);
        (id, blocks)
    }

    fn lookup_endpoint(&self, addr: &SocketAddr) -> Option<(EndpointId, Arc<EndpointBlocks>)> {
        let registry = self.registry.read();
        let id = *registry.ids.get(addr)?;
        let slot = registry.slots.get(id as usize)?.clone()?;
        Some((id, slot))
    }

    /// Records that `blocks` (a request's prefix) were routed to `addr`; returns how many
    /// leading blocks the endpoint was already known to hold (the predicted prefix hit).
    pub fn insert(&self, addr: SocketAddr, blocks: &[BlockHash]) -> usize {
        if blocks.is_empty() {
            return 0;
        }
        let (id, endpoint) = self.endpoint(addr);
        let stamp = self.stamp.fetch_add(1, Ordering::Relaxed);
        let mut evicted = Vec::new();
        // Blocks the endpoint already had: usually most of them (a group's system prompt).
        let mut known = vec![false; blocks.len()];
        {
            let mut lru = endpoint.lru.lock();
            for (&hash, known) in blocks.iter().zip(known.iter_mut()) {
                if lru.get(&hash).is_some() {
                    *known = true;
                } else if let Some((old, ())) = lru.push(hash, ())
                    && old != hash
                {
                    evicted.push(old);
                }
            }
            endpoint.len.store(lru.len(), Ordering::Relaxed);
        }
        let leading = known.iter().take_while(|&&known| known).count();
        for (&hash, known) in blocks.iter().zip(known) {
            // A holder's stamp only matters once its block has a full holder set: a known block
            // below the cap needs no write.
            if known
                && self.shard(hash).read().get(&hash).is_some_and(|holders| {
                    holders.0.len() < self.max_endpoints_per_block && holders.contains(id)
                })
            {
                continue;
            }
            let displaced = self.shard(hash).write().entry(hash).or_default().touch(
                id,
                stamp,
                self.max_endpoints_per_block,
            );
            if let Some(displaced) = displaced {
                self.drop_block_of(displaced, hash);
            }
        }
        for hash in evicted {
            self.remove_holder(hash, id);
        }
        leading
    }

    /// A holder displaced from a block's capped set forgets the block in its LRU too.
    fn drop_block_of(&self, id: EndpointId, hash: BlockHash) {
        let slot = self
            .registry
            .read()
            .slots
            .get(id as usize)
            .cloned()
            .flatten();
        if let Some(endpoint) = slot {
            let mut lru = endpoint.lru.lock();
            lru.pop(&hash);
            endpoint.len.store(lru.len(), Ordering::Relaxed);
        }
    }

    fn remove_holder(&self, hash: BlockHash, id: EndpointId) {
        let mut shard = self.shard(hash).write();
        if let Some(holders) = shard.get_mut(&hash) {
            holders.remove(id);
            if holders.0.is_empty() {
                shard.remove(&hash);
            }
        }
    }

    /// Appends to `out` the endpoints holding blocks of `blocks`, each with its match depth:
    /// 1 + the index of the deepest block it holds.
    ///
    /// Block hashes are chained, so an endpoint holding block `j` was sent the whole prefix up
    /// to `j`; the deepest block held is the match length even when the index forgot a shallower
    /// block (its LRU, or the per-block holder cap on a block every endpoint shares). The search
    /// works level by level from the deep end: a binary search finds the deepest block with a
    /// holder not yet counted, its holders get that depth, and the search continues above it.
    /// Cost: about `levels × log2(blocks)` lookups (two levels, ~16 lookups, for a typical
    /// shared-prefix request) instead of one per block; at most [`MAX_MATCH_LEVELS`] levels.
    pub fn matches(&self, blocks: &[BlockHash], out: &mut Vec<PrefixMatch>) {
        let mut counted: Vec<EndpointId> = Vec::new();
        let mut fresh: Vec<EndpointId> = Vec::new();
        let mut found: Vec<(EndpointId, u32)> = Vec::new();
        let mut end = blocks.len();
        for _ in 0..MAX_MATCH_LEVELS {
            let Some(depth) = self.deepest_uncounted(&blocks[..end], &counted) else {
                break;
            };
            fresh.clear();
            self.uncounted_holders(blocks[depth], &counted, &mut fresh);
            for &id in &fresh {
                found.push((id, depth as u32 + 1));
                if let Err(at) = counted.binary_search(&id) {
                    counted.insert(at, id);
                }
            }
            end = depth;
        }
        if found.is_empty() {
            return;
        }
        let registry = self.registry.read();
        out.extend(found.into_iter().filter_map(|(id, blocks)| {
            let endpoint = registry.slots.get(id as usize)?.as_ref()?;
            Some(PrefixMatch {
                addr: endpoint.addr,
                blocks,
            })
        }));
    }

    /// Index of the deepest block of `blocks` with a holder not in `counted` (sorted), assuming
    /// holders shrink with depth (chained hashes); `None` if even the first has none.
    fn deepest_uncounted(&self, blocks: &[BlockHash], counted: &[EndpointId]) -> Option<usize> {
        let has = |index: usize| self.has_uncounted_holder(blocks[index], counted);
        let last = blocks.len().checked_sub(1)?;
        if has(last) {
            return Some(last);
        }
        // Invariant: has(lo) unknown-or-true region starts at 0, has(hi) is false.
        let (mut lo, mut hi) = (0usize, last);
        if !has(0) {
            return None;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if has(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    fn has_uncounted_holder(&self, hash: BlockHash, counted: &[EndpointId]) -> bool {
        let shard = self.shard(hash).read();
        shard.get(&hash).is_some_and(|holders| {
            holders
                .0
                .iter()
                .any(|holder| counted.binary_search(&holder.id).is_err())
        })
    }

    fn uncounted_holders(
        &self,
        hash: BlockHash,
        counted: &[EndpointId],
        out: &mut Vec<EndpointId>,
    ) {
        let shard = self.shard(hash).read();
        if let Some(holders) = shard.get(&hash) {
            out.extend(
                holders
                    .0
                    .iter()
                    .map(|holder| holder.id)
                    .filter(|id| counted.binary_search(id).is_err()),
            );
        }
    }

    /// Blocks recorded for `addr` (its approximate cache size, in blocks).
    pub fn blocks_of(&self, addr: &SocketAddr) -> usize {
        self.lookup_endpoint(addr)
            .map_or(0, |(_, endpoint)| endpoint.len.load(Ordering::Relaxed))
    }

    /// Forgets everything recorded for `addr` (the endpoint left the pool).
    pub fn forget(&self, addr: &SocketAddr) {
        let removed = {
            let mut registry = self.registry.write();
            let Some(id) = registry.ids.remove(addr) else {
                return;
            };
            let slot = registry.slots.get_mut(id as usize).and_then(Option::take);
            registry.free.push(id);
            slot.map(|slot| (id, slot))
        };
        if let Some((id, endpoint)) = removed {
            let hashes: Vec<BlockHash> = {
                let mut lru = endpoint.lru.lock();
                let hashes = lru.iter().map(|(hash, ())| *hash).collect();
                lru.clear();
                endpoint.len.store(0, Ordering::Relaxed);
                hashes
            };
            for hash in hashes {
                self.remove_holder(hash, id);
            }
        }
    }

    /// Forgets every endpoint for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(&SocketAddr) -> bool) {
        let gone: Vec<SocketAddr> = self
            .registry
            .read()
            .ids
            .keys()
            .filter(|addr| !keep(addr))
            .copied()
            .collect();
        for addr in gone {
            self.forget(&addr);
        }
    }

    /// Endpoints with recorded blocks.
    pub fn endpoints(&self) -> usize {
        self.registry.read().ids.len()
    }

    /// Distinct block hashes held by any endpoint.
    pub fn distinct_blocks(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8000))
    }

    fn lookup(index: &PrefixIndex, blocks: &[BlockHash]) -> Vec<(u8, u32)> {
        let mut out = Vec::new();
        index.matches(blocks, &mut out);
        let mut found: Vec<(u8, u32)> = out
            .iter()
            .map(|m| match m.addr {
                SocketAddr::V4(v4) => (v4.ip().octets()[3], m.blocks),
                SocketAddr::V6(_) => (0, m.blocks),
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn matches_count_leading_blocks_per_endpoint() {
        let index = PrefixIndex::new(100, 8);
        index.insert(addr(1), &[1, 2, 3, 4]);
        index.insert(addr(2), &[1, 2, 9]);
        index.insert(addr(3), &[7]);
        assert_eq!(lookup(&index, &[1, 2, 3, 5]), vec![(1, 3), (2, 2)]);
        assert_eq!(lookup(&index, &[1, 2, 3, 4, 5]), vec![(1, 4), (2, 2)]);
        assert_eq!(lookup(&index, &[1, 2, 3, 4]), vec![(1, 4), (2, 2)]);
        assert_eq!(lookup(&index, &[99, 98]), vec![]);
        assert_eq!(lookup(&index, &[7, 8]), vec![(3, 1)]);
        assert_eq!(lookup(&index, &[]), vec![]);
    }

    #[test]
    fn lru_bounds_each_endpoint_and_evicts_oldest_blocks() {
        let index = PrefixIndex::new(3, 8);
        index.insert(addr(1), &[1, 2]);
        index.insert(addr(1), &[10, 11]);
        assert_eq!(index.blocks_of(&addr(1)), 3);
        // Block 1 was the least recently used and is gone; 2 survives (and still says the
        // endpoint was sent the prefix up to it).
        assert_eq!(lookup(&index, &[1]), vec![]);
        assert_eq!(lookup(&index, &[1, 2]), vec![(1, 2)]);
        assert_eq!(index.distinct_blocks(), 3);
        // Touching 2 again makes 10 the oldest.
        index.insert(addr(1), &[2, 12]);
        assert_eq!(lookup(&index, &[10]), vec![]);
        assert_eq!(index.blocks_of(&addr(1)), 3);
        assert_eq!(index.distinct_blocks(), 3);
    }

    #[test]
    fn holders_per_block_are_capped_keeping_the_most_recent() {
        let index = PrefixIndex::new(100, 2);
        index.insert(addr(1), &[5]);
        index.insert(addr(2), &[5]);
        index.insert(addr(3), &[5]);
        assert_eq!(lookup(&index, &[5]), vec![(2, 1), (3, 1)]);
        assert_eq!(
            index.blocks_of(&addr(1)),
            0,
            "displaced holder forgets the block"
        );
        index.insert(addr(2), &[5]);
        index.insert(addr(1), &[5]);
        assert_eq!(lookup(&index, &[5]), vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn endpoints_displaced_from_a_popular_first_block_still_match_deeper() {
        let index = PrefixIndex::new(1_000, 2);
        // Endpoint 9 got a group prompt; then many others got the shared preamble (block 1).
        index.insert(addr(9), &[1, 20, 21, 22]);
        for other in 1..=5 {
            index.insert(addr(other), &[1, 30]);
        }
        assert_eq!(
            lookup(&index, &[1, 20, 21, 22, 23]),
            vec![(4, 1), (5, 1), (9, 4)]
        );
    }

    #[test]
    fn deep_and_shallow_levels_are_resolved_with_few_lookups() {
        let index = PrefixIndex::new(10_000, 64);
        let long: Vec<BlockHash> = (1..=200).collect();
        index.insert(addr(1), &long);
        index.insert(addr(2), &long[..150]);
        index.insert(addr(3), &long[..10]);
        index.insert(addr(4), &long[..10]);
        assert_eq!(
            lookup(&index, &long),
            vec![(1, 200), (2, 150), (3, 10), (4, 10)]
        );
    }

    #[test]
    fn forget_and_retain_drop_all_state_of_an_endpoint() {
        let index = PrefixIndex::new(100, 8);
        index.insert(addr(1), &[1, 2]);
        index.insert(addr(2), &[1, 3]);
        index.forget(&addr(1));
        assert_eq!(lookup(&index, &[1, 2]), vec![(2, 1)]);
        assert_eq!(index.blocks_of(&addr(1)), 0);
        assert_eq!(index.distinct_blocks(), 2);
        // The freed id is reused without mixing state.
        index.insert(addr(4), &[9]);
        assert_eq!(lookup(&index, &[1]), vec![(2, 1)]);
        assert_eq!(lookup(&index, &[9]), vec![(4, 1)]);
        index.retain(|addr| addr.port() != 8000);
        assert_eq!(index.endpoints(), 0);
        assert_eq!(index.distinct_blocks(), 0);
    }
}
