//! `getpeername4` / `getpeername6`: show applications the VIP they dialled, not the backend.
//!
//! The socket's own storage (written by `connect`) says what to show; the rewrite happens only
//! while the peer still equals the stored backend, so an unrelated socket is never touched.
//! These hooks must return 1 (the verifier allows nothing else).
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use router_common::{STAT_PEER_REWRITTEN, SockLb, V4_MAPPED_WORD2};

use crate::{
    maps::{SOCK_LB, bump},
    steer::{read_ip6, write_ip6},
};

const DONE: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub fn sy_getpeername4(ctx: SockAddrContext) -> i32 {
    let Some(state) = stored(&ctx) else {
        return DONE;
    };
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte reads of readable context fields.
    let (ip, port) = unsafe {
        (
            read_volatile(&raw const (*sa).user_ip4),
            read_volatile(&raw const (*sa).user_port),
        )
    };
    let v4_backend = state.backend[0] == 0
        && state.backend[1] == 0
        && state.backend[2] == V4_MAPPED_WORD2
        && state.backend[3] == ip;
    if v4_backend && state.bport_be == port as u16 {
        // SAFETY: 4-byte writes, allowed for getpeername programs.
        unsafe {
            write_volatile(&raw mut (*sa).user_ip4, state.vip[3]);
            write_volatile(&raw mut (*sa).user_port, u32::from(state.vport_be));
        }
        bump(STAT_PEER_REWRITTEN);
    }
    DONE
}

#[cgroup_sock_addr(getpeername6)]
pub fn sy_getpeername6(ctx: SockAddrContext) -> i32 {
    let Some(state) = stored(&ctx) else {
        return DONE;
    };
    let sa = ctx.sock_addr;
    // SAFETY: word reads of readable context fields of a v6 program.
    let (addr, port) = unsafe { (read_ip6(sa), read_volatile(&raw const (*sa).user_port)) };
    if addr == state.backend && state.bport_be == port as u16 {
        // SAFETY: 4-byte writes, allowed for getpeername programs.
        unsafe {
            write_ip6(sa, &state.vip);
            write_volatile(&raw mut (*sa).user_port, u32::from(state.vport_be));
        }
        bump(STAT_PEER_REWRITTEN);
    }
    DONE
}

/// The socket's steering record, if `connect` wrote one.
#[inline(always)]
fn stored(ctx: &SockAddrContext) -> Option<SockLb> {
    // SAFETY: lookup only (no create) on the context's socket.
    let state = unsafe { SOCK_LB.get_ptr_mut(ctx) };
    if state.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket, valid for the program run.
    let state = unsafe { *state };
    (state.backend_id != 0).then_some(state)
}
