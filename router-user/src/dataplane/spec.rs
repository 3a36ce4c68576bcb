//! What a caller asks for (a pool's backends with weights) and the checks it must pass before
//! anything touches a map: bad input is rejected whole, so the previous table stays in force.
use std::{collections::HashSet, fmt, net::SocketAddr, str::FromStr};

use router_common::{MAX_BACKENDS_PER_POOL, MAX_WEIGHT};
use serde::Serialize;

use super::addr::{canonical, family, is_unspecified};

/// One backend of a pool as the caller specifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BackendSpec {
    /// Pod `ip:port` connections are steered to.
    pub addr: SocketAddr,
    /// Relative share of new connections (0..=65535); 0 keeps the backend listed (its counts stay
    /// visible) but never chosen.
    pub weight: u32,
    /// Marked down (failed health, draining): never chosen, whatever its weight.
    pub down: bool,
}

impl BackendSpec {
    /// An up backend with `weight`.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight,
            down: false,
        }
    }

    /// Whether the selection table gives this backend slots.
    pub fn eligible(&self) -> bool {
        self.weight > 0 && !self.down
    }
}

/// Why a `--backend ADDR[=WEIGHT]` argument does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendParseError {
    #[error("`{input}`: bad backend address `{addr}` (expected ip:port, IPv6 as [ip]:port)")]
    Address { input: String, addr: String },
    #[error("`{input}`: weight `{weight}` is not a whole number from 0 to {MAX_WEIGHT}")]
    Weight { input: String, weight: String },
}

impl FromStr for BackendSpec {
    type Err = BackendParseError;

    /// `ip:port` (weight 1) or `ip:port=weight`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (addr_text, weight_text) = match input.rsplit_once('=') {
            Some((addr, weight)) => (addr.trim(), Some(weight.trim())),
            None => (input.trim(), None),
        };
        let addr = addr_text
            .parse::<SocketAddr>()
            .map_err(|_| BackendParseError::Address {
                input: input.to_owned(),
                addr: addr_text.to_owned(),
            })?;
        let weight = match weight_text {
            None => 1,
            Some(text) => match text.parse::<u32>() {
                Ok(weight) if weight <= MAX_WEIGHT => weight,
                _ => {
                    return Err(BackendParseError::Weight {
                        input: input.to_owned(),
                        weight: text.to_owned(),
                    });
                }
            },
        };
        Ok(Self::new(addr, weight))
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.addr, self.weight)?;
        if self.down {
            f.write_str(" (down)")?;
        }
        Ok(())
    }
}

/// Why a pool specification is rejected. Nothing is written when any of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolSpecError {
    #[error(
        "no backends given (to refuse connections keep the backends and mark them down; to stop steering remove the pool)"
    )]
    NoBackends,
    #[error("{count} backends given, a pool holds at most {max}")]
    TooManyBackends { count: usize, max: usize },
    #[error("backend {addr}: weight {weight} is larger than the maximum {max}")]
    WeightTooLarge {
        addr: SocketAddr,
        weight: u32,
        max: u32,
    },
    #[error("backend {addr} is listed twice")]
    DuplicateBackend { addr: SocketAddr },
    #[error("virtual address {vip}: port 0 cannot be dialled")]
    VipPortZero { vip: SocketAddr },
    #[error("virtual address {vip}: an unspecified or multicast address cannot be a VIP")]
    VipNotUnicast { vip: SocketAddr },
    #[error("backend {addr}: port 0 cannot be dialled")]
    BackendPortZero { addr: SocketAddr },
    #[error("backend {addr}: an unspecified or multicast address cannot be dialled")]
    BackendNotUnicast { addr: SocketAddr },
    #[error(
        "backend {addr} is {backend_family} but the virtual address {vip} is {vip_family}: a socket cannot be steered across families"
    )]
    FamilyMismatch {
        vip: SocketAddr,
        addr: SocketAddr,
        vip_family: &'static str,
        backend_family: &'static str,
    },
}

/// A pool specification that passed every check, in canonical form: IPv4-mapped addresses
/// turned into IPv4, backends sorted by address (so the same set always builds the same table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPool {
    pub vip: SocketAddr,
    pub backends: Vec<BackendSpec>,
}

/// Checks a pool specification; see [`PoolSpecError`] for the rules.
pub fn validate_pool(
    vip: SocketAddr,
    backends: &[BackendSpec],
) -> Result<ValidPool, PoolSpecError> {
    let vip = canonical(vip);
    if vip.port() == 0 {
        return Err(PoolSpecError::VipPortZero { vip });
    }
    if is_unspecified(vip.ip()) || vip.ip().is_multicast() {
        return Err(PoolSpecError::VipNotUnicast { vip });
    }
    if backends.is_empty() {
        return Err(PoolSpecError::NoBackends);
    }
    if backends.len() > MAX_BACKENDS_PER_POOL {
        return Err(PoolSpecError::TooManyBackends {
            count: backends.len(),
            max: MAX_BACKENDS_PER_POOL,
        });
    }
    let mut seen = HashSet::with_capacity(backends.len());
    let mut out = Vec::with_capacity(backends.len());
    for spec in backends {
        let addr = canonical(spec.addr);
        if spec.weight > MAX_WEIGHT {
            return Err(PoolSpecError::WeightTooLarge {
                addr,
                weight: spec.weight,
                max: MAX_WEIGHT,
            });
        }
        if addr.port() == 0 {
            return Err(PoolSpecError::BackendPortZero { addr });
        }
        if is_unspecified(addr.ip()) || addr.ip().is_multicast() {
            return Err(PoolSpecError::BackendNotUnicast { addr });
        }
        if family(addr) != family(vip) {
            return Err(PoolSpecError::FamilyMismatch {
                vip,
                addr,
                vip_family: family_name(vip),
                backend_family: family_name(addr),
            });
        }
        if !seen.insert(addr) {
            return Err(PoolSpecError::DuplicateBackend { addr });
        }
        out.push(BackendSpec { addr, ..*spec });
    }
    out.sort_by_key(|spec| spec.addr);
    Ok(ValidPool { vip, backends: out })
}

fn family_name(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_backend_arguments() {
        assert_eq!(
            "127.0.0.1:9001=3".parse::<BackendSpec>().unwrap(),
            BackendSpec::new(addr("127.0.0.1:9001"), 3)
        );
        assert_eq!(
            "[::1]:9001".parse::<BackendSpec>().unwrap(),
            BackendSpec::new(addr("[::1]:9001"), 1)
        );
        assert_eq!("10.0.0.1:80=0".parse::<BackendSpec>().unwrap().weight, 0);
    }

    #[test]
    fn rejects_bad_backend_arguments_with_the_reason() {
        let err = "127.0.0.1=3".parse::<BackendSpec>().unwrap_err();
        assert!(matches!(err, BackendParseError::Address { .. }), "{err}");
        let err = "300.0.0.1:80=3".parse::<BackendSpec>().unwrap_err();
        assert!(
            err.to_string()
                .contains("bad backend address `300.0.0.1:80`"),
            "{err}"
        );
        let err = "127.0.0.1:80=65536".parse::<BackendSpec>().unwrap_err();
        assert!(matches!(err, BackendParseError::Weight { .. }), "{err}");
        let err = "127.0.0.1:80=99999999999999"
            .parse::<BackendSpec>()
            .unwrap_err();
        assert!(err.to_string().contains("0 to 65535"), "{err}");
        let err = "127.0.0.1:80=-1".parse::<BackendSpec>().unwrap_err();
        assert!(matches!(err, BackendParseError::Weight { .. }), "{err}");
    }

    #[test]
    fn validation_rejects_each_bad_input() {
        let vip = addr("10.96.0.10:80");
        let ok = BackendSpec::new(addr("127.0.0.1:9001"), 1);
        assert_eq!(validate_pool(vip, &[]), Err(PoolSpecError::NoBackends));
        let many: Vec<_> = (0..=MAX_BACKENDS_PER_POOL as u16)
            .map(|i| BackendSpec::new(SocketAddr::new("127.0.0.1".parse().unwrap(), 1000 + i), 1))
            .collect();
        assert_eq!(
            validate_pool(vip, &many),
            Err(PoolSpecError::TooManyBackends {
                count: MAX_BACKENDS_PER_POOL + 1,
                max: MAX_BACKENDS_PER_POOL
            })
        );
        let heavy = BackendSpec::new(addr("127.0.0.1:9002"), MAX_WEIGHT + 1);
        assert!(matches!(
            validate_pool(vip, &[ok, heavy]),
            Err(PoolSpecError::WeightTooLarge { .. })
        ));
        assert_eq!(
            validate_pool(vip, &[ok, ok]),
            Err(PoolSpecError::DuplicateBackend { addr: ok.addr })
        );
        assert!(matches!(
            validate_pool(addr("10.96.0.10:0"), &[ok]),
            Err(PoolSpecError::VipPortZero { .. })
        ));
        assert!(matches!(
            validate_pool(addr("0.0.0.0:80"), &[ok]),
            Err(PoolSpecError::VipNotUnicast { .. })
        ));
        assert!(matches!(
            validate_pool(vip, &[BackendSpec::new(addr("127.0.0.1:0"), 1)]),
            Err(PoolSpecError::BackendPortZero { .. })
        ));
        assert!(matches!(
            validate_pool(vip, &[BackendSpec::new(addr("[::1]:80"), 1)]),
            Err(PoolSpecError::FamilyMismatch { .. })
        ));
    }

    #[test]
    fn validation_canonicalises_and_sorts() {
        let vip = addr("[::ffff:10.96.0.10]:80");
        let b2 = BackendSpec::new(addr("127.0.0.2:80"), 2);
        let b1 = BackendSpec::new(addr("[::ffff:127.0.0.1]:80"), 1);
        let pool = validate_pool(vip, &[b2, b1]).unwrap();
        assert_eq!(pool.vip, addr("10.96.0.10:80"));
        assert_eq!(
            pool.backends,
            vec![BackendSpec::new(addr("127.0.0.1:80"), 1), b2]
        );
        // The same backends given as plain and mapped IPv4 are one backend.
        let mapped_dup = BackendSpec::new(addr("[::ffff:127.0.0.2]:80"), 1);
        assert!(matches!(
            validate_pool(vip, &[b2, mapped_dup]),
            Err(PoolSpecError::DuplicateBackend { .. })
        ));
    }

    #[test]
    fn zero_weight_and_down_are_valid_but_not_eligible() {
        let vip = addr("10.96.0.10:80");
        let zero = BackendSpec::new(addr("127.0.0.1:1"), 0);
        let down = BackendSpec {
            down: true,
            ..BackendSpec::new(addr("127.0.0.1:2"), 5)
        };
        let pool = validate_pool(vip, &[zero, down]).unwrap();
        assert!(pool.backends.iter().all(|b| !b.eligible()));
    }
}
