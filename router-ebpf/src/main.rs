//! Switchyard's BPF programs: connect-time steering of TCP connections to pool virtual
//! addresses (VIPs), reverse translation for `getpeername`, and live connection counts.
//!
//! Nothing here runs per packet: `connect4/6` run once per `connect()`, `getpeername4/6` once
//! per `getpeername()`, and `sock_ops` on a handful of TCP state changes per connection.
//! Map layouts live in `router-common`; userspace (`router-user/src/dataplane`) builds the
//! selection tables and swaps them whole, so BPF only indexes them.
#![no_std]
#![no_main]
// `atomic_xadd`: the only way to emit a BPF atomic add from Rust (see `sockops::atomic_add`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod maps;
mod peer;
mod sockops;
mod steer;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
