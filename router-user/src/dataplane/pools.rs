//! Programming pools: backend ids, table swaps, retirement.
//!
//! Write order, chosen so a BPF program never sees an inconsistent pool:
//! 1. new backend ids get zeroed counters before any table names them; the userspace-only
//!    `BACKENDS` bookkeeping is updated (BPF reads backends from the table itself);
//! 2. when the eligible set changed, a fresh inner map (slots plus the backends they index) is
//!    filled and swapped into `SELECTION` in one update: BPF sees the whole old or the whole new
//!    pool, addresses and weights together;
//! 3. the `POOLS` entry is replaced (new generation, active slots, table hash);
//! 4. backends no longer listed are marked retired; their ids are reclaimed once their live
//!    count is zero and a grace period has passed (so a connect that raced the swap cannot
//!    count against a reused id).
//!
//! Validation happens before the first write: rejected input leaves the pool as it was.
use std::{collections::HashSet, net::SocketAddr};

use aya::maps::Array;
use router_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_RETIRED, Backend, ConnCount, MAX_BACKENDS, MAX_POOLS,
    PoolInfo, SELECTION_SLOTS,
};

use super::{
    BackendStatus, Cache, Dataplane, PoolStatus,
    addr::{family, ip_words, pool_key, port_be},
    error::DataplaneError,
    pins,
    spec::{BackendSpec, validate_pool},
    table::{build_table, slot_counts},
};

/// Whole `CLOCK_BOOTTIME` seconds a retired backend id stays reserved, even with no live
/// connection (so at least one second of real time).
const RETIRE_GRACE_S: u32 = 2;

impl Dataplane {
    /// Makes `vip` steer to `backends` by weight (creating the pool if needed). Backends keep
    /// their ids (and counters) across calls; backends left out are retired. Weight 0 or
    /// `down` keeps a backend listed but never chosen; a pool with no eligible backend refuses
    /// connects with ECONNREFUSED.
    ///
    /// Cheap when nothing changed (one map read, no write). Invalid input is rejected before
    /// anything is written.
    pub fn set_pool(
        &mut self,
        vip: SocketAddr,
        backends: &[BackendSpec],
    ) -> Result<PoolStatus, DataplaneError> {
        let pool = validate_pool(vip, backends).map_err(|reason| DataplaneError::InvalidPool {
            vip,
            reason: Box::new(reason),
        })?;
        let _lock = self.layout.lock()?;
        let mut cache = std::mem::take(&mut *self.cache.lock());
        let result = self.set_pool_locked(&mut cache, pool.vip, &pool.backends);
        if result.is_err() {
            // A failed write may have left the maps ahead of the cache: reload next time.
            cache.seq = None;
        }
        *self.cache.lock() = cache;
        result
    }

    /// Removes the pool: connects to `vip` are no longer steered. Its backends are retired
    /// (their counts stay readable while connections drain).
    pub fn remove_pool(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        let vip = super::addr::canonical(vip);
        let _lock = self.layout.lock()?;
        let mut cache = std::mem::take(&mut *self.cache.lock());
        let result = self.remove_pool_locked(&mut cache, vip);
        if result.is_err() {
            cache.seq = None;
        }
        *self.cache.lock() = cache;
        result
    }

    fn set_pool_locked(
        &mut self,
        cache: &mut Cache,
        vip: SocketAddr,
        specs: &[BackendSpec],
    ) -> Result<PoolStatus, DataplaneError> {
        self.refresh(cache)?;
        let existing = cache.pools.get(&vip).copied();
        let pool_id = match existing {
            Some(info) => info.pool_id,
            None => free_pool_id(cache).ok_or(DataplaneError::PoolsFull { max: MAX_POOLS })?,
        };

        // Ids: a listed address keeps the id it has in this pool (retired ones come back).
        let current: Vec<(u32, Backend)> = cache
            .backends
            .iter()
            .filter(|(_, b)| b.pool_id == pool_id)
            .map(|(id, b)| (*id, *b))
            .collect();
        let mut reserved: HashSet<u32> = HashSet::new();
        let mut assigned: Vec<(u32, BackendSpec)> = Vec::with_capacity(specs.len());
        let mut fresh: Vec<u32> = Vec::new();
        for spec in specs {
            let words = ip_words(spec.addr.ip());
            let port = port_be(spec.addr.port());
            let known = current
                .iter()
                .find(|(_, b)| b.addr == words && b.port_be == port)
                .map(|(id, _)| *id);
            let id = match known {
                Some(id) => id,
                None => {
                    let id = self.free_backend_id(cache, &reserved)?;
                    fresh.push(id);
                    id
                }
            };
            reserved.insert(id);
            assigned.push((id, *spec));
        }
        let records: Vec<(u32, Backend)> = assigned
            .iter()
            .map(|(id, spec)| (*id, backend_record(spec, pool_id)))
            .collect();
        let removed: Vec<u32> = current
            .iter()
            .filter(|(id, b)| b.state != BACKEND_RETIRED && !reserved.contains(id))
            .map(|(id, _)| *id)
            .collect();

        let table_hash = eligible_hash(&assigned);
        let records_unchanged = records
            .iter()
            .all(|(id, record)| cache.backends.get(id) == Some(record));
        let table_current = existing.is_some_and(|info| info.table_hash == table_hash);
        let counts = slot_counts(
            &assigned
                .iter()
                .map(|(_, s)| if s.eligible() { s.weight } else { 0 })
                .collect::<Vec<_>>(),
            SELECTION_SLOTS,
        );
        let status = |generation: u32, changed: bool, table_swapped: bool| PoolStatus {
            vip,
            pool_id,
            generation,
            changed,
            table_swapped,
            backends: assigned
                .iter()
                .zip(&counts)
                .map(|((id, spec), slots)| BackendStatus {
                    addr: spec.addr,
                    id: *id,
                    weight: spec.weight,
                    down: spec.down,
                    slots: *slots,
                })
                .collect(),
        };
        if let Some(info) = existing
            && table_current
            && records_unchanged
            && removed.is_empty()
        {
            // Nothing to write; still let drained backends go (a check of the cache, with map
            // reads only for retired backends past their grace period).
            self.reclaim_retired(cache)?;
            return Ok(status(info.generation, false, false));
        }

        // 1. Backend records (fresh ids with zeroed counters first).
        for &id in &fresh {
            self.maps
                .conns
                .set(id, ConnCount::default(), 0)
                .map_err(DataplaneError::map(pins::CONNS.pin_name))?;
        }
        for (id, record) in &records {
            if cache.backends.get(id) != Some(record) {
                self.maps
                    .backends
                    .insert(id, record, 0)
                    .map_err(DataplaneError::map(pins::BACKENDS.pin_name))?;
                cache.backends.insert(*id, *record);
            }
        }

        // 2. The table swap.
        let table = if table_current {
            None
        } else {
            build_table(&assigned)
        };
        let table_swapped = table.is_some();
        if let Some(table) = table {
            let mut inner = Array::<_, router_common::SelectionTable>::create(1, 0)
                .map_err(DataplaneError::map(pins::SELECTION.pin_name))?;
            inner
                .set(0, table.as_ref(), 0)
                .map_err(DataplaneError::map(pins::SELECTION.pin_name))?;
            self.maps
                .selection
                .set(pool_id, &inner, 0)
                .map_err(DataplaneError::map(pins::SELECTION.pin_name))?;
        }

        // 3. The pool entry.
        let any_eligible = assigned.iter().any(|(_, s)| s.eligible());
        let generation = match existing {
            Some(info) if table_current => info.generation,
            Some(info) => info.generation.wrapping_add(1),
            None => 1,
        };
        let info = PoolInfo {
            pool_id,
            active_slots: if any_eligible {
                SELECTION_SLOTS as u32
            } else {
                0
            },
            generation,
            family: u32::from(family(vip)),
            _pad: [0; 2],
            table_hash,
        };
        self.maps
            .pools
            .insert(pool_key(vip), info, 0)
            .map_err(DataplaneError::map(pins::POOLS.pin_name))?;
        cache.pools.insert(vip, info);

        // 4. Retirement, then bookkeeping.
        self.retire(cache, &removed)?;
        self.bump_seq(cache)?;
        self.reclaim_retired(cache)?;
        tracing::debug!(%vip, pool_id, generation, table_swapped, "pool programmed");
        Ok(status(generation, true, table_swapped))
    }

    fn remove_pool_locked(
        &mut self,
        cache: &mut Cache,
        vip: SocketAddr,
    ) -> Result<(), DataplaneError> {
        self.refresh(cache)?;
        let info = cache
            .pools
            .get(&vip)
            .copied()
            .ok_or(DataplaneError::PoolNotFound(vip))?;
        self.maps
            .pools
            .remove(&pool_key(vip))
            .map_err(DataplaneError::map(pins::POOLS.pin_name))?;
        cache.pools.remove(&vip);
        // The pool's inner table stays in its outer slot until the slot is reused: nothing
        // reaches it without the POOLS entry.
        let members: Vec<u32> = cache
            .backends
            .iter()
            .filter(|(_, b)| b.pool_id == info.pool_id && b.state != BACKEND_RETIRED)
            .map(|(id, _)| *id)
            .collect();
        self.retire(cache, &members)?;
        self.bump_seq(cache)?;
        self.reclaim_retired(cache)?;
        tracing::debug!(%vip, pool_id = info.pool_id, "pool removed");
        Ok(())
    }

    fn retire(&mut self, cache: &mut Cache, ids: &[u32]) -> Result<(), DataplaneError> {
        let now = boottime_s();
        for id in ids {
            if let Some(backend) = cache.backends.get_mut(id) {
                backend.state = BACKEND_RETIRED;
                backend.retired_at_s = now.max(1);
                self.maps
                    .backends
                    .insert(id, *backend, 0)
                    .map_err(DataplaneError::map(pins::BACKENDS.pin_name))?;
            }
        }
        Ok(())
    }

    /// Deletes retired backends whose connections have drained and whose grace has passed.
    fn reclaim_retired(&mut self, cache: &mut Cache) -> Result<(), DataplaneError> {
        let now = boottime_s();
        let candidates: Vec<u32> = cache
            .backends
            .iter()
            .filter(|(_, b)| {
                b.state == BACKEND_RETIRED && now.saturating_sub(b.retired_at_s) >= RETIRE_GRACE_S
            })
            .map(|(id, _)| *id)
            .collect();
        let mut reclaimed = false;
        for id in candidates {
            if self.conns(id)?.live() != 0 {
                continue;
            }
            match self.maps.backends.remove(&id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(DataplaneError::map(pins::BACKENDS.pin_name)(source)),
            }
            cache.backends.remove(&id);
            reclaimed = true;
        }
        if reclaimed {
            self.bump_seq(cache)?;
        }
        Ok(())
    }

    /// Lowest id that is in no map entry, not reserved by this call, and has no live count.
    fn free_backend_id(
        &self,
        cache: &Cache,
        reserved: &HashSet<u32>,
    ) -> Result<u32, DataplaneError> {
        for id in 1..MAX_BACKENDS {
            if cache.backends.contains_key(&id) || reserved.contains(&id) {
                continue;
            }
            if self.conns(id)?.live() == 0 {
                return Ok(id);
            }
        }
        Err(DataplaneError::BackendIdsExhausted {
            max: MAX_BACKENDS - 1,
        })
    }

    /// Records a write in the meta map so other writers reload their caches.
    fn bump_seq(&mut self, cache: &mut Cache) -> Result<(), DataplaneError> {
        let mut meta = self.maps.read_meta(&self.layout)?;
        meta.write_seq = meta.write_seq.wrapping_add(1);
        self.maps.write_meta(&meta)?;
        cache.seq = Some(meta.write_seq);
        Ok(())
    }
}

fn backend_record(spec: &BackendSpec, pool_id: u32) -> Backend {
    Backend {
        addr: ip_words(spec.addr.ip()),
        port_be: port_be(spec.addr.port()),
        state: if spec.down {
            BACKEND_DOWN
        } else {
            BACKEND_ACTIVE
        },
        family: family(spec.addr),
        pool_id,
        weight: spec.weight,
        retired_at_s: 0,
    }
}

/// Pool ids are handed out after the highest in use (wrapping), not lowest-first, so a freshly
/// removed pool's slot is not immediately reused; an id whose retired backends still drain is
/// skipped too (they would otherwise show up under the new pool).
fn free_pool_id(cache: &Cache) -> Option<u32> {
    let used: HashSet<u32> = cache
        .pools
        .values()
        .map(|info| info.pool_id)
        .chain(cache.backends.values().map(|b| b.pool_id))
        .collect();
    let start = cache
        .pools
        .values()
        .map(|info| info.pool_id + 1)
        .max()
        .unwrap_or(0);
    (0..MAX_POOLS)
        .map(|offset| (start + offset) % MAX_POOLS)
        .find(|id| !used.contains(id))
}

/// Identifies the table a set of backends builds: the eligible (address, id, weight) triples
/// in address order (the order the table builder consumes).
fn eligible_hash(assigned: &[(u32, BackendSpec)]) -> u64 {
    let mut bytes = Vec::with_capacity(assigned.len() * 32);
    for (id, spec) in assigned.iter().filter(|(_, s)| s.eligible()) {
        bytes.extend_from_slice(spec.addr.to_string().as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&spec.weight.to_le_bytes());
    }
    // Never 0, so a zeroed PoolInfo (or an older writer) never matches.
    xxhash_rust::xxh3::xxh3_64(&bytes) | 1
}

/// `CLOCK_BOOTTIME` in whole seconds (monotonic across agent restarts, unlike a process clock).
fn boottime_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u32::try_from(ts.tv_sec).unwrap_or(u32::MAX)
}
