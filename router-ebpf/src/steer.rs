//! `connect4` / `connect6`: rewrite a TCP connect to a pool's VIP into a connect to one backend.
//!
//! Context fields are read and written with volatile word-sized accesses: the verifier only
//! allows certain access sizes on `bpf_sock_addr`, and LLVM must not merge or split them.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_prandom_u32, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use router_common::{
    FAMILY_V4, IPPROTO_TCP, PoolKey, SELECTION_SLOTS, SOCK_COUNTED, STAT_CONNECT_REFUSED,
    STAT_CONNECT_TRANSLATED, STAT_STORAGE_FAILED, STAT_TABLE_MISS, SlotBackend, SockLb,
    V4_MAPPED_WORD2,
};

use crate::maps::{POOLS, SELECTION, SOCK_LB, bump};

/// Allowed: let `connect` proceed (with whatever address the program left in the context).
const ALLOW: i32 = 1;
/// Rejected: `connect` fails with the errno set by `bpf_set_retval`.
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// What the selection table says for one connect.
enum Choice {
    /// The address is not a pool's VIP: leave the connect alone.
    NotPool,
    /// The pool exists but cannot serve: fail the connect (statistic to bump).
    Refuse(u32),
    /// Steer to this backend.
    Steer(SlotBackend),
}

#[cgroup_sock_addr(connect4)]
pub fn sy_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; the verifier allows 4-byte reads of these fields.
    let (protocol, ip, port) = unsafe {
        (
            read_volatile(&raw const (*sa).protocol),
            read_volatile(&raw const (*sa).user_ip4),
            read_volatile(&raw const (*sa).user_port),
        )
    };
    if protocol != u32::from(IPPROTO_TCP) {
        return ALLOW;
    }
    let key = pool_key([0, 0, V4_MAPPED_WORD2, ip], port);
    // A v4 socket can only reach a v4 backend; userspace never builds such a pool, so a
    // mismatch is a table inconsistency, refused and counted as a miss.
    steer(&ctx, &key, Some(FAMILY_V4), |sa, backend| {
        // SAFETY: context writes of the allowed size (4 bytes) to writable fields.
        unsafe {
            write_volatile(&raw mut (*sa).user_ip4, backend.addr[3]);
            write_volatile(&raw mut (*sa).user_port, u32::from(backend.port_be));
        }
    })
}

#[cgroup_sock_addr(connect6)]
pub fn sy_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: context reads of allowed sizes; `user_ip6` word by word (never as one copy).
    let (protocol, addr, port) = unsafe {
        (
            read_volatile(&raw const (*sa).protocol),
            read_ip6(sa),
            read_volatile(&raw const (*sa).user_port),
        )
    };
    if protocol != u32::from(IPPROTO_TCP) {
        return ALLOW;
    }
    // An IPv4-mapped destination (`::ffff:a.b.c.d` from a dual-stack socket) matches the
    // IPv4 pool directly: pools are keyed by the mapped form.
    steer(&ctx, &pool_key(addr, port), None, |sa, backend| {
        // SAFETY: 4-byte context writes to writable fields of a v6 program.
        unsafe {
            write_ip6(sa, &backend.addr);
            write_volatile(&raw mut (*sa).user_port, u32::from(backend.port_be));
        }
    })
}

/// The `POOLS` key for a destination read from the context.
#[inline(always)]
fn pool_key(addr: [u32; 4], user_port: u32) -> PoolKey {
    PoolKey {
        addr,
        // Only the low 16 bits carry `sin_port` (network order).
        port_be: user_port as u16,
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// Selects a backend for `key` and applies it: `rewrite` writes the destination into the
/// context, then the choice is recorded in the socket's storage. A backend of another family
/// than `family` (when given) is refused.
#[inline(always)]
fn steer(
    ctx: &SockAddrContext,
    key: &PoolKey,
    family: Option<u8>,
    rewrite: impl FnOnce(*mut bpf_sock_addr, &SlotBackend),
) -> i32 {
    match select(key) {
        Choice::NotPool => ALLOW,
        Choice::Refuse(stat) => refuse(stat),
        Choice::Steer(backend) if family.is_some_and(|f| f != backend.family) => {
            refuse(STAT_TABLE_MISS)
        }
        Choice::Steer(backend) => {
            rewrite(ctx.sock_addr, &backend);
            remember(ctx, key, &backend);
            bump(STAT_CONNECT_TRANSLATED);
            ALLOW
        }
    }
}

/// Looks the VIP up and draws one slot of its selection table.
#[inline(always)]
fn select(key: &PoolKey) -> Choice {
    let Some(pool) = POOLS.get_ptr(key) else {
        return Choice::NotPool;
    };
    // SAFETY: a hit in a non-preallocated hash stays valid (RCU) for the program run.
    let pool = unsafe { *pool };
    if pool.active_slots == 0 {
        return Choice::Refuse(STAT_CONNECT_REFUSED);
    }
    // Uniform slot in [0, SELECTION_SLOTS) by multiply-shift (Lemire's range reduction)
    // rather than `%`: LLVM turns a constant modulo into a multiply-subtract sequence whose
    // bound the verifier cannot follow, whereas it tracks this product and shift exactly.
    // SAFETY: helper without preconditions.
    let draw = u64::from(unsafe { bpf_get_prandom_u32() });
    let slot = ((draw * SELECTION_SLOTS as u64) >> 32) as usize;
    let Some(table) = SELECTION.get_value(pool.pool_id, &0) else {
        return Choice::Refuse(STAT_TABLE_MISS);
    };
    let Some(&index) = table.slots.get(slot) else {
        return Choice::Refuse(STAT_TABLE_MISS);
    };
    // A one-byte index into a 256-entry array: always in bounds.
    match table.backends.get(usize::from(index)) {
        Some(backend) if backend.id != 0 => Choice::Steer(*backend),
        _ => Choice::Refuse(STAT_TABLE_MISS),
    }
}

/// Fails the connect with ECONNREFUSED (rather than the default EPERM of a rejecting program).
#[inline(always)]
fn refuse(stat: u32) -> i32 {
    bump(stat);
    // SAFETY: helper available to connect programs (kernel >= 5.18); it only sets the errno.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// Records the choice in the socket's storage, for `getpeername` and for connection counting.
#[inline(always)]
fn remember(ctx: &SockAddrContext, vip: &PoolKey, backend: &SlotBackend) {
    // SAFETY: the helper takes the context's socket, which is a full socket in connect hooks.
    let state: *mut SockLb = unsafe { SOCK_LB.get_or_insert_ptr_mut(ctx, None) };
    if state.is_null() {
        bump(STAT_STORAGE_FAILED);
        return;
    }
    // SAFETY: non-null storage of this socket; connect runs with the socket locked.
    let state = unsafe { &mut *state };
    // A socket already counted is connected (this connect fails with EISCONN): keep the
    // backend it was counted against, or its close would be charged to another backend.
    if state.flags & SOCK_COUNTED != 0 {
        return;
    }
    state.vip = vip.addr;
    state.vport_be = vip.port_be;
    state.backend = backend.addr;
    state.bport_be = backend.port_be;
    state.backend_id = backend.id;
}

/// Reads `user_ip6` one 4-byte word at a time (a whole-array copy fails verification).
///
/// # Safety
/// `sa` must be the context of a v6 sock_addr program.
#[inline(always)]
pub unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: per the function contract.
    unsafe {
        [
            read_volatile(&raw const (*sa).user_ip6[0]),
            read_volatile(&raw const (*sa).user_ip6[1]),
            read_volatile(&raw const (*sa).user_ip6[2]),
            read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    }
}

/// Writes `user_ip6` one 4-byte word at a time.
///
/// # Safety
/// `sa` must be the context of a v6 sock_addr program whose attach type allows the write.
#[inline(always)]
pub unsafe fn write_ip6(sa: *mut bpf_sock_addr, addr: &[u32; 4]) {
    // SAFETY: per the function contract.
    unsafe {
        write_volatile(&raw mut (*sa).user_ip6[0], addr[0]);
        write_volatile(&raw mut (*sa).user_ip6[1], addr[1]);
        write_volatile(&raw mut (*sa).user_ip6[2], addr[2]);
        write_volatile(&raw mut (*sa).user_ip6[3], addr[3]);
    }
}
