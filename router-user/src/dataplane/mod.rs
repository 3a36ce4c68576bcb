//! eBPF connect-time steering.
pub mod cli;

/// The compiled BPF object (router-ebpf), embedded at build time.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));
