//! The shared endpoint table: membership, health and live signals behind one snapshot pointer.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::{
    endpoint::{EndpointMeta, Health},
    inflight::Inflight,
    live::{GpuSignals, LiveEndpoint, LoadUpdate},
    snapshot::{Snapshot, SnapshotEndpoint},
};
use crate::{
    clock::Micros,
    telemetry::{EndpointLoad, GpuSample},
};

#[derive(Debug)]
struct Member {
    meta: Arc<EndpointMeta>,
    health: Health,
    live: Arc<LiveEndpoint>,
}

#[derive(Debug, Default)]
struct Members {
    by_addr: BTreeMap<SocketAddr, Member>,
    version: u64,
}

/// What a membership change did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    /// Members whose metadata changed (their live state is kept).
    pub updated: Vec<SocketAddr>,
}

impl MembershipChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

/// The concurrent view of every endpoint the router may send to.
///
/// Writers: membership (Kubernetes pod watcher or static flags) through [`set_members`],
/// [`upsert_member`], [`remove_member`], [`set_health`]; agents and scrapers through
/// [`update_load`], [`update_gpu`], [`update_connections`]; request paths through the
/// [`Inflight`] guards of [`begin`]. Readers take [`snapshot`] (one atomic pointer load) and
/// never lock. Membership and health changes publish a new snapshot; signal updates are written
/// into the endpoint's live cell in place, so they cost O(1) whatever the fleet size.
///
/// [`set_members`]: Self::set_members
/// [`upsert_member`]: Self::upsert_member
/// [`remove_member`]: Self::remove_member
/// [`set_health`]: Self::set_health
/// [`update_load`]: Self::update_load
/// [`update_gpu`]: Self::update_gpu
/// [`update_connections`]: Self::update_connections
/// [`begin`]: Self::begin
/// [`snapshot`]: Self::snapshot
#[derive(Debug)]
pub struct EndpointTable {
    members: Mutex<Members>,
    current: ArcSwap<Snapshot>,
}

impl Default for EndpointTable {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointTable {
    pub fn new() -> Self {
        Self {
            members: Mutex::new(Members::default()),
            current: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    /// The current snapshot: lock-free, cheap; hold it for the length of one decision.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the member set. Endpoints that stay keep their live state (loads, in-flight
    /// counts); removed ones are forgotten, so an address that comes back starts afresh. New
    /// members start `Ready` with no load sample (which the scheduler does not treat as idle).
    pub fn set_members<I>(&self, members: I) -> MembershipChange
    where
        I: IntoIterator<Item = EndpointMeta>,
    {
        let mut wanted: BTreeMap<SocketAddr, EndpointMeta> = BTreeMap::new();
        for meta in members {
            wanted.insert(meta.addr, meta);
        }
        let mut guard = self.members.lock();
        let mut change = MembershipChange::default();
        guard.by_addr.retain(|addr, _| {
            let keep = wanted.contains_key(addr);
            if !keep {
                change.removed.push(*addr);
            }
            keep
        });
        for meta in wanted.into_values() {
            Self::upsert_locked(&mut guard, meta, &mut change);
        }
        if !change.is_empty() {
            self.publish(&mut guard);
        }
        change
    }

    /// Adds a member or replaces its metadata (keeping its live state and health).
    pub fn upsert_member(&self, meta: EndpointMeta) -> MembershipChange {
        let mut guard = self.members.lock();
        let mut change = MembershipChange::default();
        Self::upsert_locked(&mut guard, meta, &mut change);
        if !change.is_empty() {
            self.publish(&mut guard);
        }
        change
    }

    /// Removes a member; returns whether it was one. Requests already routed to it finish and
    /// release their guards normally.
    pub fn remove_member(&self, addr: &SocketAddr) -> bool {
        let mut guard = self.members.lock();
        let removed = guard.by_addr.remove(addr).is_some();
        if removed {
            self.publish(&mut guard);
        }
        removed
    }

    /// Sets a member's health; returns false if the address is not a member.
    pub fn set_health(&self, addr: &SocketAddr, health: Health) -> bool {
        let mut guard = self.members.lock();
        let Some(member) = guard.by_addr.get_mut(addr) else {
            return false;
        };
        if member.health != health {
            member.health = health;
            self.publish(&mut guard);
        }
        true
    }

    /// Applies a load sample; samples older than the one held (by `seq`) are dropped.
    pub fn update_load(&self, addr: &SocketAddr, load: EndpointLoad) -> LoadUpdate {
        match self.current.load().get(addr) {
            Some(endpoint) => endpoint.live.update_load(load),
            None => LoadUpdate::UnknownEndpoint,
        }
    }

    /// Applies GPU readings of the GPUs the endpoint uses; returns false if the address is not a
    /// member or the slice is empty.
    pub fn update_gpu(&self, addr: &SocketAddr, gpus: &[GpuSample]) -> bool {
        let Some(signals) = GpuSignals::from_samples(gpus) else {
            return false;
        };
        match self.current.load().get(addr) {
            Some(endpoint) => {
                endpoint.live.update_gpu(&signals);
                true
            }
            None => false,
        }
    }

    /// Records the node dataplane's live connection count to the endpoint, counted at `at`.
    pub fn update_connections(&self, addr: &SocketAddr, live: u32, at: Micros) -> bool {
        match self.current.load().get(addr) {
            Some(endpoint) => {
                endpoint.live.update_connections(live, at);
                true
            }
            None => false,
        }
    }

    /// Starts counting a request routed to `addr` (see [`Inflight`]); `None` if not a member.
    pub fn begin(&self, addr: &SocketAddr, estimated_tokens: u64) -> Option<Inflight> {
        self.current.load().begin(addr, estimated_tokens)
    }

    fn upsert_locked(members: &mut Members, meta: EndpointMeta, change: &mut MembershipChange) {
        let addr = meta.addr;
        match members.by_addr.get_mut(&addr) {
            Some(member) if *member.meta == meta => {}
            Some(member) => {
                member.meta = Arc::new(meta);
                change.updated.push(addr);
            }
            None => {
                members.by_addr.insert(
                    addr,
                    Member {
                        meta: Arc::new(meta),
                        health: Health::Ready,
                        live: LiveEndpoint::new(),
                    },
                );
                change.added.push(addr);
            }
        }
    }

    fn publish(&self, members: &mut Members) {
        members.version += 1;
        let endpoints = members
            .by_addr
            .values()
            .map(|member| SnapshotEndpoint {
                meta: member.meta.clone(),
                health: member.health.clone(),
                live: member.live.clone(),
            })
            .collect();
        self.current
            .store(Arc::new(Snapshot::build(members.version, endpoints)));
    }
}
