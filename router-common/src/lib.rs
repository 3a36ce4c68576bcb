//! Map layouts shared by the BPF programs (`router-ebpf`) and userspace (`router-user`).
//!
//! Every struct is `#[repr(C)]`, padded explicitly and checked by a compile-time size assert,
//! so both sides agree byte for byte. Addresses are stored as raw network-order words exactly as
//! the kernel puts them in `bpf_sock_addr.user_ip6`; IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`) so one key type serves `connect4` and `connect6`. BPF never converts an
//! address, it only compares and copies words.
//!
//! Any change to a struct, a map's type, size or flags is a new layout: bump
//! [`LAYOUT_VERSION`], so pins of the old layout (under `<pin root>/v<N>/`) are never adopted by
//! code that reads them differently.
#![no_std]

/// Version of the pinned map layout; part of the pin path (`<pin root>/v1/...`).
pub const LAYOUT_VERSION: u32 = 1;
/// Written into [`DataplaneMeta::magic`] so a foreign map at our pin path is recognised.
pub const META_MAGIC: u64 = u64::from_be_bytes(*b"swyard\0\x01");

/// Pools (virtual addresses) the dataplane can hold.
pub const MAX_POOLS: u32 = 1024;
/// Backend ids are `1..MAX_BACKENDS`; id 0 means "no backend" in a selection slot.
pub const MAX_BACKENDS: u32 = 16384;
/// Backends one pool may list (a slot holds a one-byte index into the pool's backend list).
pub const MAX_BACKENDS_PER_POOL: usize = 256;
/// Slots in one pool's selection table: a prime (as Maglev and Cilium use), 64 slots per
/// backend at the per-pool maximum; userspace apportions them within one slot of the weights.
pub const SELECTION_SLOTS: usize = 16381;
/// Largest weight a backend may carry; weights are relative within one pool.
pub const MAX_WEIGHT: u32 = 65535;
/// IP protocol number of TCP, the only protocol pools steer.
pub const IPPROTO_TCP: u8 = 6;

/// Family tags stored in [`Backend::family`] and [`PoolInfo::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:0:0/96`) as the kernel stores it.
pub const V4_MAPPED_WORD2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// [`Backend::state`] values.
pub const BACKEND_ACTIVE: u8 = 0;
/// Marked down: kept in the map (its connection counts stay readable) but never selected.
pub const BACKEND_DOWN: u8 = 1;
/// Removed from its pool; the id is not reused until its live connection count reaches zero.
pub const BACKEND_RETIRED: u8 = 2;

/// [`SockLb::flags`] bit: the socket's connection has been counted as opened.
pub const SOCK_COUNTED: u32 = 1;

/// Per-CPU statistics slots in the `STATS` map.
/// `connect` to a VIP rewritten to a backend.
pub const STAT_CONNECT_TRANSLATED: u32 = 0;
/// `connect` to a VIP refused (no eligible backend) with ECONNREFUSED.
pub const STAT_CONNECT_REFUSED: u32 = 1;
/// `getpeername` answered with the VIP instead of the backend.
pub const STAT_PEER_REWRITTEN: u32 = 2;
/// A pool without a selection table, or a slot naming an empty entry (refused).
pub const STAT_TABLE_MISS: u32 = 3;
/// Socket storage could not be created: translated, but neither counted nor reverse-translated.
pub const STAT_STORAGE_FAILED: u32 = 4;
/// A connection counted as opened (sock_ops, right before the SYN).
pub const STAT_CONN_OPENED: u32 = 5;
/// A counted connection reached TCP_CLOSE.
pub const STAT_CONN_CLOSED: u32 = 6;
pub const STAT_COUNT: u32 = 7;

/// Key of the `POOLS` map: a virtual address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PoolKey {
    /// IPv6 address words in network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port_be: u16,
    /// IP protocol, [`IPPROTO_TCP`].
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the `POOLS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolInfo {
    /// Index of this pool's selection table in the `SELECTION` outer array.
    pub pool_id: u32,
    /// Number of filled slots in the table; 0 means "no eligible backend": refuse connects.
    pub active_slots: u32,
    /// Bumped on every table swap, for `show` and debugging.
    pub generation: u32,
    /// Family of the virtual address ([`FAMILY_V4`] or [`FAMILY_V6`]).
    pub family: u32,
    pub _pad: [u32; 2],
    /// Userspace only: hash of the eligible backends (address, id, weight) the live table was
    /// built from. Written after the table swap, so after an interrupted update the next writer
    /// sees a mismatch and swaps again.
    pub table_hash: u64,
}

/// Value of the userspace-only `BACKENDS` map, keyed by backend id: the bookkeeping behind ids
/// (stable per address, retired while draining). BPF reads backends from the selection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Address words as in [`PoolKey::addr`].
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port_be: u16,
    /// [`BACKEND_ACTIVE`], [`BACKEND_DOWN`] or [`BACKEND_RETIRED`].
    pub state: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Pool the backend belongs to.
    pub pool_id: u32,
    /// Weight the table was built with (userspace builds the table; BPF never reads it).
    pub weight: u32,
    /// `CLOCK_BOOTTIME` seconds when the backend was retired (0 otherwise): its id is reclaimed
    /// only after a grace period, so a connect racing the table swap cannot count on a reused id.
    pub retired_at_s: u32,
}

/// Per-socket state (socket-local storage): what `connect` chose, for `getpeername` and counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockLb {
    /// Virtual address the application dialled.
    pub vip: [u32; 4],
    /// Backend address written into the socket.
    pub backend: [u32; 4],
    pub vport_be: u16,
    pub bport_be: u16,
    pub backend_id: u32,
    /// [`SOCK_COUNTED`] once `opened` was incremented for this socket.
    pub flags: u32,
    pub _rsvd: u32,
}

/// Value of the `CONNS` array, indexed by backend id. Monotonic, so restarts never lose it:
/// live connections = `opened - closed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnCount {
    pub opened: u64,
    pub closed: u64,
}

impl ConnCount {
    /// Connections currently open (or opening) through this backend.
    pub const fn live(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }
}

/// The single value of the userspace-only `META` map pinned next to the others: what this pin
/// directory is attached to and which build loaded it, so adoption can check before it trusts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataplaneMeta {
    /// [`META_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout: u32,
    pub _pad: u32,
    /// Inode number of the cgroup v2 directory the programs are attached to (its cgroup id).
    pub cgroup_id: u64,
    /// Hash of the BPF object whose programs are attached (detects adoption across upgrades).
    pub object_hash: u64,
    /// Bumped by every userspace write, so a writer notices another writer's changes.
    pub write_seq: u64,
}

/// A backend as the selection table carries it: everything `connect` needs, so the hot path
/// reads no other map and a table swap changes backends and weights in one step.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotBackend {
    /// Address words as in [`PoolKey::addr`].
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port_be: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: u8,
    /// Backend id: index of its `CONNS` counters; 0 = unused entry.
    pub id: u32,
}

/// One pool's selection table, the value of a `SELECTION` inner map. Each slot holds an index
/// into `backends`; BPF draws a uniformly random slot per connect, so a backend's chance is its
/// share of the slots. Replaced whole (a fresh inner map) on every change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectionTable {
    pub slots: [u8; SELECTION_SLOTS],
    pub _pad: [u8; 3],
    pub backends: [SlotBackend; MAX_BACKENDS_PER_POOL],
}

impl SelectionTable {
    /// A table with no backend and every slot pointing at entry 0.
    pub const EMPTY: Self = Self {
        slots: [0; SELECTION_SLOTS],
        _pad: [0; 3],
        backends: [SlotBackend {
            addr: [0; 4],
            port_be: 0,
            family: 0,
            _pad: 0,
            id: 0,
        }; MAX_BACKENDS_PER_POOL],
    };
}

const _: () = assert!(core::mem::size_of::<PoolKey>() == 20);
const _: () = assert!(core::mem::size_of::<PoolInfo>() == 32);
const _: () = assert!(core::mem::size_of::<Backend>() == 32);
const _: () = assert!(core::mem::size_of::<SockLb>() == 48);
const _: () = assert!(core::mem::size_of::<ConnCount>() == 16);
const _: () = assert!(core::mem::size_of::<DataplaneMeta>() == 40);
const _: () = assert!(core::mem::size_of::<SlotBackend>() == 24);
const _: () = assert!(core::mem::size_of::<SelectionTable>() == 16384 + 24 * 256);
// Slot entries are one byte.
const _: () = assert!(MAX_BACKENDS_PER_POOL <= 256);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are repr(C), Copy, with explicit padding and no pointers, so any
    // byte pattern the kernel hands back is a valid value.
    unsafe impl aya::Pod for super::PoolKey {}
    unsafe impl aya::Pod for super::PoolInfo {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::SockLb {}
    unsafe impl aya::Pod for super::ConnCount {}
    unsafe impl aya::Pod for super::DataplaneMeta {}
    unsafe impl aya::Pod for super::SlotBackend {}
    unsafe impl aya::Pod for super::SelectionTable {}
}
