//! Socket addresses to and from the raw network-order words the BPF maps hold.
//!
//! IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), exactly as the kernel presents a mapped
//! destination to `connect6`, so one key serves `connect4` and `connect6`. Each word is built
//! with `from_ne_bytes` over network-order octets, matching the kernel's `user_ip6` words.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use router_common::{FAMILY_V4, FAMILY_V6, IPPROTO_TCP, PoolKey};

/// Address words of `ip`, IPv4 mapped into IPv6.
pub fn ip_words(ip: IpAddr) -> [u32; 4] {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word =
        |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The IP address the words hold; IPv4-mapped words give back an IPv4 address.
pub fn words_ip(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A port in the network byte order the maps (and `sin_port`) use.
pub fn port_be(port: u16) -> u16 {
    port.to_be()
}

/// The socket address the words and network-order port describe.
pub fn socket_addr(words: [u32; 4], port_be: u16) -> SocketAddr {
    SocketAddr::new(words_ip(words), u16::from_be(port_be))
}

/// `addr` with an IPv4-mapped IPv6 address turned into plain IPv4 (and scope/flow dropped),
/// so `[::ffff:10.0.0.1]:80` and `10.0.0.1:80` name the same pool or backend.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        },
        v4 => v4,
    }
}

/// [`FAMILY_V4`] or [`FAMILY_V6`] of a canonical address.
pub fn family(addr: SocketAddr) -> u8 {
    match addr {
        SocketAddr::V4(_) => FAMILY_V4,
        SocketAddr::V6(_) => FAMILY_V6,
    }
}

/// The `POOLS` key of a virtual address.
pub fn pool_key(vip: SocketAddr) -> PoolKey {
    let vip = canonical(vip);
    PoolKey {
        addr: ip_words(vip.ip()),
        port_be: port_be(vip.port()),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// The virtual address of a `POOLS` key.
pub fn key_addr(key: &PoolKey) -> SocketAddr {
    socket_addr(key.addr, key.port_be)
}

/// `addr` as an IPv4-mapped IPv6 socket address (for dialling an IPv4 VIP from an AF_INET6
/// socket); IPv6 addresses are returned unchanged.
pub fn v4_mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    }
}

/// The unspecified address of the same family (used to tell "no address" apart).
pub fn is_unspecified(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => v6 == Ipv6Addr::UNSPECIFIED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_mapped_in_kernel_word_order() {
        let words = ip_words("10.96.0.10".parse().unwrap());
        assert_eq!(words[0], 0);
        assert_eq!(words[1], 0);
        assert_eq!(words[2], router_common::V4_MAPPED_WORD2);
        // The kernel's user_ip4 for 10.96.0.10 is the in-memory network-order u32.
        assert_eq!(words[3], u32::from_ne_bytes([10, 96, 0, 10]));
    }

    #[test]
    fn words_round_trip_both_families() {
        for text in ["127.0.0.1:9001", "[fd00:5::10]:8080", "[::1]:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            let key = pool_key(addr);
            assert_eq!(key_addr(&key), addr, "{text}");
        }
    }

    #[test]
    fn mapped_and_plain_ipv4_name_the_same_pool() {
        let plain: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.96.0.10]:80".parse().unwrap();
        assert_eq!(pool_key(plain), pool_key(mapped));
        assert_eq!(canonical(mapped), plain);
        assert_eq!(v4_mapped(plain), mapped);
    }

    #[test]
    fn port_is_network_order() {
        let key = pool_key("10.0.0.1:8000".parse().unwrap());
        assert_eq!(key.port_be.to_ne_bytes(), 8000u16.to_be_bytes());
    }
}
