//! An immutable view of the endpoint set, published whole and read without locks.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    sync::Arc,
};

use super::{
    endpoint::{EndpointMeta, Health},
    inflight::Inflight,
    live::LiveEndpoint,
};

/// A fast hasher for the address → position map (looked up per prefix match on the pick path,
/// where SipHash's DoS resistance buys nothing: keys are pod addresses, not client input).
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // splitmix64 finaliser: spreads the bits hashbrown takes its control byte from.
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

type AddrMap<V> = HashMap<SocketAddr, V, BuildHasherDefault<AddrHasher>>;

/// A fixed-size set of endpoint positions in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PositionSet {
    words: Vec<u64>,
}

impl PositionSet {
    pub fn with_len(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Clears the set and resizes it for `len` positions, reusing its memory.
    pub fn reset(&mut self, len: usize) {
        self.words.clear();
        self.words.resize(len.div_ceil(64), 0);
    }

    pub fn insert(&mut self, position: usize) {
        if let Some(word) = self.words.get_mut(position / 64) {
            *word |= 1 << (position % 64);
        }
    }

    #[inline]
    pub fn contains(&self, position: usize) -> bool {
        self.words
            .get(position / 64)
            .is_some_and(|word| word >> (position % 64) & 1 == 1)
    }

    pub fn count(&self) -> usize {
        self.words
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum()
    }
}

/// One endpoint as a snapshot sees it: metadata and health fixed, live cell shared with the
/// table (loads and in-flight counts are read from it at pick time).
#[derive(Clone, Debug)]
pub struct SnapshotEndpoint {
    pub meta: Arc<EndpointMeta>,
    pub health: Health,
    pub(crate) live: Arc<LiveEndpoint>,
}

impl SnapshotEndpoint {
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        self.meta.addr
    }

    #[inline]
    pub fn live(&self) -> &LiveEndpoint {
        &self.live
    }
}

/// The endpoint set at one membership version, ordered by address (so positions, and with them
/// every seeded decision, are the same for the same members whatever order they were added in).
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    endpoints: Box<[SnapshotEndpoint]>,
    /// Hot copies for the pick loop: the live cells contiguously, and who is `Ready`.
    lives: Box<[Arc<LiveEndpoint>]>,
    ready: PositionSet,
    by_addr: AddrMap<u32>,
    /// For each model some endpoint declares: the endpoints that declare it.
    declared_models: HashMap<String, PositionSet>,
    /// Endpoints that declare no model list and so are taken to serve every model of the pool.
    serve_any_model: PositionSet,
}

impl Snapshot {
    pub(crate) fn build(version: u64, endpoints: Vec<SnapshotEndpoint>) -> Self {
        let len = endpoints.len();
        let mut by_addr = AddrMap::with_capacity_and_hasher(len, Default::default());
        let mut declared_models: HashMap<String, PositionSet> = HashMap::new();
        let mut serve_any_model = PositionSet::with_len(len);
        let mut ready = PositionSet::with_len(len);
        for (position, endpoint) in endpoints.iter().enumerate() {
            by_addr.insert(endpoint.addr(), position as u32);
            if endpoint.health.is_ready() {
                ready.insert(position);
            }
            if endpoint.meta.models.is_empty() {
                serve_any_model.insert(position);
            }
            for model in &endpoint.meta.models {
                declared_models
                    .entry(model.clone())
                    .or_insert_with(|| PositionSet::with_len(len))
                    .insert(position);
            }
        }
        let lives = endpoints.iter().map(|e| e.live.clone()).collect();
        Self {
            version,
            lives,
            ready,
            endpoints: endpoints.into_boxed_slice(),
            by_addr,
            declared_models,
            serve_any_model,
        }
    }

    /// Membership version: changes whenever members, their metadata or health change.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[SnapshotEndpoint] {
        &self.endpoints
    }

    /// Live cells by position (a contiguous array the pick loop walks).
    #[inline]
    pub fn lives(&self) -> &[Arc<LiveEndpoint>] {
        &self.lives
    }

    /// Whether the endpoint at `position` is `Ready`.
    #[inline]
    pub fn is_ready(&self, position: usize) -> bool {
        self.ready.contains(position)
    }

    pub fn position(&self, addr: &SocketAddr) -> Option<usize> {
        self.by_addr.get(addr).map(|&position| position as usize)
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&SnapshotEndpoint> {
        self.position(addr)
            .and_then(|position| self.endpoints.get(position))
    }

    /// Whether the endpoint at `position` serves `model` (declares it, or declares no list).
    #[inline]
    pub fn serves_model(&self, position: usize, model: &str) -> bool {
        self.serve_any_model.contains(position)
            || self
                .declared_models
                .get(model)
                .is_some_and(|set| set.contains(position))
    }

    /// Resolves `model` once per request so the per-endpoint check is two bit tests.
    pub fn model_filter<'s>(&'s self, model: &str) -> ModelFilter<'s> {
        ModelFilter {
            any: &self.serve_any_model,
            declared: self.declared_models.get(model),
        }
    }

    /// Starts counting a request routed to `addr`; `None` if it is not a member of this snapshot.
    pub fn begin(&self, addr: &SocketAddr, estimated_tokens: u64) -> Option<Inflight> {
        self.get(addr).map(|endpoint| {
            Inflight::start(endpoint.addr(), endpoint.live.clone(), estimated_tokens)
        })
    }
}

/// The endpoints of a snapshot that serve one model.
#[derive(Clone, Copy, Debug)]
pub struct ModelFilter<'s> {
    any: &'s PositionSet,
    declared: Option<&'s PositionSet>,
}

impl ModelFilter<'_> {
    #[inline]
    pub fn allows(&self, position: usize) -> bool {
        self.any.contains(position) || self.declared.is_some_and(|set| set.contains(position))
    }
}
