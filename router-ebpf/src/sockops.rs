//! `sock_ops`: live connection counts per backend.
//!
//! State machine, idempotent through the `SOCK_COUNTED` flag in the socket's storage:
//! 1. `connect4/6` records the chosen backend (flag clear).
//! 2. `TCP_CONNECT_CB` (right before the SYN): flag clear -> set it, `opened += 1`, and ask for
//!    state callbacks on this socket.
//! 3. `STATE_CB` entering `TCP_CLOSE` (failed handshake, reset, or the end of FIN/TIME_WAIT
//!    handling) with the flag set -> clear it, `closed += 1`.
//!
//! Live = opened - closed. Sockets without storage (not steered, server sockets in the cgroup,
//! sockets opened before the attach) are ignored, so nothing can go negative.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{null_mut, read_volatile},
};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, bpf_sock_ops,
    },
    helpers::generated::{bpf_sk_storage_get, bpf_sock_ops_cb_flags_set},
    macros::sock_ops,
    programs::SockOpsContext,
};
use router_common::{SOCK_COUNTED, STAT_CONN_CLOSED, STAT_CONN_OPENED, SockLb};

use crate::maps::{CONNS, SOCK_LB, bump};

/// sock_ops programs return 1 for "handled"; the value is otherwise unused for these ops.
const DONE: u32 = 1;

#[sock_ops]
pub fn sy_sockops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: 4-byte read of a readable context field.
    let op = unsafe { read_volatile(&raw const (*ops).op) };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        count_opened(ops);
    } else if op == BPF_SOCK_OPS_STATE_CB {
        // SAFETY: for STATE_CB, args[1] holds the new TCP state.
        let new_state = unsafe { read_volatile(&raw const (*ops).__bindgen_anon_1.args[1]) };
        if new_state == BPF_TCP_CLOSE {
            count_closed(ops);
        }
    }
    DONE
}

#[inline(always)]
fn count_opened(ops: *mut bpf_sock_ops) {
    let Some(state) = storage(ops) else {
        return;
    };
    if state.backend_id == 0 || state.flags & SOCK_COUNTED != 0 {
        return;
    }
    // SAFETY: 4-byte read of a readable context field.
    let cb_flags = unsafe { read_volatile(&raw const (*ops).bpf_sock_ops_cb_flags) };
    let wanted = (cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32;
    // Without state callbacks the close would go unseen: count only once they are on.
    // SAFETY: helper on the program's own context.
    if unsafe { bpf_sock_ops_cb_flags_set(ops, wanted) } != 0 {
        return;
    }
    state.flags |= SOCK_COUNTED;
    if let Some(count) = CONNS.get_ptr_mut(state.backend_id) {
        // SAFETY: the array value is stable and 8-byte aligned; other CPUs only touch it
        // through atomic adds as well.
        unsafe { atomic_add(&raw mut (*count).opened) };
    }
    bump(STAT_CONN_OPENED);
}

#[inline(always)]
fn count_closed(ops: *mut bpf_sock_ops) {
    let Some(state) = storage(ops) else {
        return;
    };
    if state.flags & SOCK_COUNTED == 0 {
        return;
    }
    state.flags &= !SOCK_COUNTED;
    if let Some(count) = CONNS.get_ptr_mut(state.backend_id) {
        // SAFETY: as in `count_opened`.
        unsafe { atomic_add(&raw mut (*count).closed) };
    }
    bump(STAT_CONN_CLOSED);
}

/// Adds one with a BPF atomic add. `AtomicU64::fetch_add` is not offered on the BPF target
/// (it has no compare-and-swap in the base ISA); the intrinsic's result is unused, so LLVM emits
/// the plain `BPF_ATOMIC | BPF_ADD` that every kernel we support accepts.
///
/// # Safety
/// `counter` must point into a map value that stays valid for the program run.
#[inline(always)]
unsafe fn atomic_add(counter: *mut u64) {
    // SAFETY: per the function contract.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// The socket's steering record, if `connect` wrote one (never creates one).
#[inline(always)]
fn storage<'a>(ops: *mut bpf_sock_ops) -> Option<&'a mut SockLb> {
    // SAFETY: 8-byte read of the `sk` context field; the verifier types it socket-or-null.
    let sk = unsafe { read_volatile(&raw const (*ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    let map = (&raw const SOCK_LB).cast_mut().cast::<c_void>();
    // SAFETY: `sk` is a non-null socket from the context; flags 0 = lookup only.
    let state = unsafe { bpf_sk_storage_get(map, sk.cast(), null_mut(), 0) }.cast::<SockLb>();
    // SAFETY: non-null storage of this socket; sock_ops runs with the socket locked.
    unsafe { state.as_mut() }
}
