//! The pools the agent programs and the cluster weights it holds for them.
//!
//! A pool's VIP and backend set come from a static flag (`--pool VIP=ADDR,ADDR`) or from the
//! EPP's cluster view (pools the EPP knows a VIP for, unless `--no-epp-pools`). Cluster
//! weights are kept per VIP with the time they arrived, for static pools too when the EPP
//! knows the same VIP, and stay in use (with decaying trust) while the EPP is away. A pool
//! learnt from the EPP is dropped only when a *complete* view no longer lists it.
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;

use super::link::ReceivedView;
use super::proto::parse_addr;
use super::score::ClusterBackend;
use super::view::PoolSource;
use crate::clock::Micros;

/// `VIP=ADDR[,ADDR...]`, e.g. `10.96.0.10:8000=10.1.0.5:8000,10.1.0.6:8000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPool {
    pub vip: SocketAddr,
    pub backends: Vec<SocketAddr>,
}

impl FromStr for StaticPool {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (vip, backends) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not VIP=ADDR[,ADDR...]"))?;
        let vip: SocketAddr = vip
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: the VIP `{vip}` is not an ip:port address"))?;
        let mut list = Vec::new();
        for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            let addr: SocketAddr = backend
                .parse()
                .map_err(|_| format!("`{text}`: backend `{backend}` is not an ip:port address"))?;
            if list.contains(&addr) {
                return Err(format!("`{text}`: backend {addr} is listed twice"));
            }
            list.push(addr);
        }
        if list.is_empty() {
            return Err(format!("`{text}`: no backends"));
        }
        Ok(Self {
            vip,
            backends: list,
        })
    }
}

/// The EPP's weights for one VIP and when they arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPool {
    pub name: String,
    pub backends: BTreeMap<SocketAddr, ClusterBackend>,
    pub received_at: Micros,
}

/// One pool to program this pass.
#[derive(Clone, Debug)]
pub struct PoolPlan<'a> {
    pub vip: SocketAddr,
    pub name: Option<&'a str>,
    pub source: PoolSource,
    pub backends: Vec<SocketAddr>,
    pub cluster: Option<&'a ClusterPool>,
}

/// Static pools, pools learnt from the EPP, and the cluster weights per VIP.
#[derive(Debug, Default)]
pub struct PoolBook {
    statics: Vec<StaticPool>,
    discover: bool,
    /// VIPs learnt from the EPP (not static).
    learnt: HashSet<SocketAddr>,
    cluster: BTreeMap<SocketAddr, ClusterPool>,
    /// The view applied last (views repeat on the watch channel).
    applied_at: Option<Micros>,
    /// Entries of views that did not parse, reported once.
    warned: HashSet<String>,
}

impl PoolBook {
    pub fn new(statics: Vec<StaticPool>, discover: bool) -> Self {
        Self {
            statics,
            discover,
            ..Self::default()
        }
    }

    /// VIPs configured on this agent.
    pub fn static_vips(&self) -> Vec<SocketAddr> {
        self.statics.iter().map(|p| p.vip).collect()
    }

    pub fn discovers(&self) -> bool {
        self.discover
    }

    /// Takes a cluster view (once); returns the learnt pools it removed.
    pub fn apply_view(&mut self, received: &ReceivedView) -> Vec<SocketAddr> {
        if self.applied_at == Some(received.received_at) {
            return Vec::new();
        }
        self.applied_at = Some(received.received_at);
        let view = &received.view;
        let mut listed = HashSet::new();
        for pool in &view.pools {
            let vip = match parse_addr("pools.vip", &pool.vip) {
                Ok(vip) => vip,
                Err(err) => {
                    self.warn_once(format!("pool {}: {err}", pool.name));
                    continue;
                }
            };
            let mut backends = BTreeMap::new();
            for backend in &pool.backends {
                match parse_addr("pools.backends.address", &backend.address) {
                    Ok(addr) => {
                        backends.insert(
                            addr,
                            ClusterBackend {
                                weight: backend.weight.min(u32::from(u16::MAX)),
                                down: backend.down,
                            },
                        );
                    }
                    Err(err) => self.warn_once(format!("pool {}: {err}", pool.name)),
                }
            }
            listed.insert(vip);
            let is_static = self.statics.iter().any(|p| p.vip == vip);
            if !is_static && self.discover {
                self.learnt.insert(vip);
            }
            self.cluster.insert(
                vip,
                ClusterPool {
                    name: pool.name.clone(),
                    backends,
                    received_at: received.received_at,
                },
            );
        }
        let mut removed = Vec::new();
        if view.complete {
            self.learnt.retain(|vip| {
                let keep = listed.contains(vip);
                if !keep {
                    removed.push(*vip);
                }
                keep
            });
            for vip in &removed {
                self.cluster.remove(vip);
            }
        }
        removed
    }

    fn warn_once(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            tracing::warn!(error = %message, "ignoring part of the EPP's cluster view");
        }
    }

    /// Every pool to program, static ones first.
    pub fn plans(&self) -> Vec<PoolPlan<'_>> {
        let mut plans: Vec<PoolPlan<'_>> = self
            .statics
            .iter()
            .map(|pool| PoolPlan {
                vip: pool.vip,
                name: self.cluster.get(&pool.vip).map(|c| c.name.as_str()),
                source: PoolSource::Static,
                backends: pool.backends.clone(),
                cluster: self.cluster.get(&pool.vip),
            })
            .collect();
        let mut learnt: Vec<&SocketAddr> = self.learnt.iter().collect();
        learnt.sort();
        for vip in learnt {
            let Some(cluster) = self.cluster.get(vip) else {
                continue;
            };
            if cluster.backends.is_empty() {
                continue;
            }
            plans.push(PoolPlan {
                vip: *vip,
                name: Some(cluster.name.as_str()),
                source: PoolSource::Epp,
                backends: cluster.backends.keys().copied().collect(),
                cluster: Some(cluster),
            });
        }
        plans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::proto::{BackendWeight, ClusterView, PoolWeights};

    type PoolSpec<'a> = (&'a str, &'a str, &'a [(&'a str, u32)]);

    fn view(at: Micros, complete: bool, pools: &[PoolSpec<'_>]) -> ReceivedView {
        ReceivedView {
            received_at: at,
            view: ClusterView {
                complete,
                pools: pools
                    .iter()
                    .map(|(name, vip, backends)| PoolWeights {
                        name: (*name).into(),
                        vip: (*vip).into(),
                        backends: backends
                            .iter()
                            .map(|(addr, weight)| BackendWeight {
                                address: (*addr).into(),
                                weight: *weight,
                                down: *weight == 0,
                                reason: String::new(),
                            })
                            .collect(),
                    })
                    .collect(),
                ..ClusterView::default()
            },
        }
    }

    #[test]
    fn static_pools_parse_with_clear_errors() {
        let pool: StaticPool = "10.96.0.1:80=10.1.0.1:8000, 10.1.0.2:8000".parse().unwrap();
        assert_eq!(pool.backends.len(), 2);
        for (bad, needle) in [
            ("10.96.0.1:80", "VIP=ADDR"),
            ("vip=10.1.0.1:8000", "the VIP"),
            ("10.96.0.1:80=", "no backends"),
            ("10.96.0.1:80=x", "backend `x`"),
            ("10.96.0.1:80=10.1.0.1:1,10.1.0.1:1", "twice"),
        ] {
            let err = bad.parse::<StaticPool>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn views_add_learnt_pools_weight_static_ones_and_complete_views_remove() {
        let statics = vec!["10.96.0.1:80=10.1.0.1:8000".parse().unwrap()];
        let mut book = PoolBook::new(statics, true);
        let removed = book.apply_view(&view(
            100,
            true,
            &[
                ("static", "10.96.0.1:80", &[("10.1.0.1:8000", 1000)]),
                (
                    "learnt",
                    "10.96.0.2:80",
                    &[("10.1.0.7:8000", 500), ("10.1.0.8:8000", 0)],
                ),
                ("broken", "nope", &[]),
            ],
        ));
        assert!(removed.is_empty());
        let plans = book.plans();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].source, PoolSource::Static);
        assert_eq!(plans[0].cluster.unwrap().received_at, 100);
        assert_eq!(plans[1].source, PoolSource::Epp);
        assert_eq!(plans[1].backends.len(), 2);
        assert!(plans[1].cluster.unwrap().backends[&"10.1.0.8:8000".parse().unwrap()].down);

        // An incomplete view keeps what it does not list; a complete one removes learnt pools.
        assert!(book.apply_view(&view(200, false, &[])).is_empty());
        assert_eq!(book.plans().len(), 2);
        let removed = book.apply_view(&view(300, true, &[]));
        assert_eq!(removed, vec!["10.96.0.2:80".parse::<SocketAddr>().unwrap()]);
        let plans = book.plans();
        assert_eq!(plans.len(), 1, "static pools stay");
        assert_eq!(
            plans[0].cluster.unwrap().received_at,
            100,
            "its old weights stay, to decay"
        );

        // Without discovery, EPP pools only weight static ones.
        let mut book = PoolBook::new(Vec::new(), false);
        book.apply_view(&view(
            1,
            true,
            &[("learnt", "10.96.0.2:80", &[("10.1.0.7:8000", 1)])],
        ));
        assert!(book.plans().is_empty());
    }
}
