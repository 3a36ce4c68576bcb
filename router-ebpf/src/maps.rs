//! The maps, shared by every program in the object. Userspace pins all of them under
//! `<pin root>/v<LAYOUT_VERSION>/` and checks their type and sizes before adopting a pin.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, ArrayOfMaps, HashMap, PerCpuArray, SkStorage},
    macros::btf_map,
};
use router_common::{
    ConnCount, MAX_BACKENDS, MAX_POOLS, PoolInfo, PoolKey, STAT_COUNT, SelectionTable, SockLb,
};

/// VIP -> pool. No preallocation: an update then swaps in a fresh element and frees the old
/// one after an RCU grace period, so a program never reads a half-written value.
#[btf_map]
pub static POOLS: HashMap<
    PoolKey,
    PoolInfo,
    { MAX_POOLS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Pool id -> that pool's selection table (a one-element array holding the slots and the
/// backends they index). Userspace fills a fresh inner map and swaps the outer slot, so a pool
/// changes atomically as a whole.
#[btf_map]
pub static SELECTION: ArrayOfMaps<Array<SelectionTable, 1>, { MAX_POOLS as usize }> =
    ArrayOfMaps::new();

/// Per-socket steering state, freed with the socket (never evicts live entries, unlike an LRU).
#[btf_map]
pub static SOCK_LB: SkStorage<SockLb> = SkStorage::new();

/// Backend id -> monotonic opened/closed counters, updated with atomic adds.
#[btf_map]
pub static CONNS: Array<ConnCount, { MAX_BACKENDS as usize }> = Array::new();

/// Per-CPU event counters (`router_common::STAT_*`), summed by userspace.
#[btf_map]
pub static STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

/// Adds one to a per-CPU statistic (no atomics needed: the slot belongs to this CPU).
#[inline(always)]
pub fn bump(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, whose value
        // stays valid for the whole program run and is only touched by this CPU.
        unsafe { *slot += 1 };
    }
}
