//! Who may take new requests: the endpoint source's verdict (pod ready, terminating, listed in
//! the file) combined with passive outlier ejection by the proxy (connect failures, runs of
//! 5xx). Both write through here so neither overwrites the other in the endpoint table.
//!
//! A 4xx answer is the client's fault and never counts against an endpoint (an SGLang breaker
//! that counted 4xx took a whole fleet down).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::{EndpointMeta, EndpointTable, Health, MembershipChange};
use crate::scheduling::SchedulerHandle;

/// When the proxy takes an endpoint out of rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive 5xx answers that eject (0: never on 5xx).
    pub consecutive_5xx: u32,
    /// How long an ejected endpoint stays out.
    pub duration: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        // Envoy's outlier detection defaults: 5 consecutive 5xx, 30 s base ejection; shorter
        // here because connect failures to a restarting pod clear within seconds.
        Self {
            consecutive_5xx: 5,
            duration: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Entry {
    source: Health,
    ejected: Option<(Instant, String)>,
    consecutive_5xx: u32,
}

impl Entry {
    fn effective(&self) -> Health {
        match (&self.source, &self.ejected) {
            (Health::Ready, Some((_, reason))) => Health::unhealthy(reason.clone()),
            (source, _) => source.clone(),
        }
    }
}

/// Membership and health writer of the endpoint table.
pub struct Availability {
    table: Arc<EndpointTable>,
    scheduler: Arc<SchedulerHandle>,
    policy: EjectionPolicy,
    entries: Mutex<HashMap<SocketAddr, Entry>>,
}

impl std::fmt::Debug for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Availability")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Availability {
    pub fn new(
        table: Arc<EndpointTable>,
        scheduler: Arc<SchedulerHandle>,
        policy: EjectionPolicy,
    ) -> Self {
        Self {
            table,
            scheduler,
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn table(&self) -> &Arc<EndpointTable> {
        &self.table
    }

    /// Replaces the member set with the source's view (metadata and health). Ejections of
    /// endpoints that stay are kept; the scheduler forgets what it learned about removed ones.
    pub fn set_members(&self, members: Vec<(EndpointMeta, Health)>) -> MembershipChange {
        let mut entries = self.entries.lock();
        let mut wanted = HashMap::with_capacity(members.len());
        let mut metas = Vec::with_capacity(members.len());
        for (meta, health) in members {
            wanted.insert(meta.addr, health);
            metas.push(meta);
        }
        entries.retain(|addr, _| wanted.contains_key(addr));
        let change = self.table.set_members(metas);
        for (addr, health) in wanted {
            let entry = entries.entry(addr).or_insert_with(|| Entry {
                source: Health::Ready,
                ejected: None,
                consecutive_5xx: 0,
            });
            entry.source = health;
            self.table.set_health(&addr, entry.effective());
        }
        drop(entries);
        if !change.removed.is_empty() {
            self.scheduler
                .current()
                .sync_members(&self.table.snapshot());
        }
        change
    }

    /// The proxy could not connect to `addr`: out of rotation for the ejection period.
    pub fn connect_failed(&self, addr: SocketAddr, error: &str) {
        self.eject(addr, format!("connect failed: {error}"));
    }

    /// An answer from `addr` with HTTP `status`.
    pub fn answered(&self, addr: SocketAddr, status: u16) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&addr) else {
            return;
        };
        if status >= 500 {
            entry.consecutive_5xx = entry.consecutive_5xx.saturating_add(1);
            if self.policy.consecutive_5xx > 0
                && entry.consecutive_5xx >= self.policy.consecutive_5xx
                && entry.ejected.is_none()
            {
                let reason = format!("{} consecutive 5xx answers", entry.consecutive_5xx);
                drop(entries);
                self.eject(addr, reason);
            }
        } else {
            // 2xx, 3xx and 4xx (the client's fault) all show a working server.
            entry.consecutive_5xx = 0;
        }
    }

    fn eject(&self, addr: SocketAddr, reason: String) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&addr) else {
            return;
        };
        let until = Instant::now() + self.policy.duration;
        if entry.ejected.is_none() {
            tracing::warn!(endpoint = %addr, %reason, seconds = self.policy.duration.as_secs_f64(),
                "endpoint ejected");
        }
        entry.ejected = Some((until, reason));
        self.table.set_health(&addr, entry.effective());
    }

    /// Returns ejected endpoints whose period is over to rotation; call about once a second.
    pub fn expire(&self, now: Instant) {
        let mut entries = self.entries.lock();
        for (addr, entry) in entries.iter_mut() {
            if entry
                .ejected
                .as_ref()
                .is_some_and(|(until, _)| *until <= now)
            {
                entry.ejected = None;
                entry.consecutive_5xx = 0;
                tracing::info!(endpoint = %addr, "ejection over, endpoint back in rotation");
                self.table.set_health(addr, entry.effective());
            }
        }
    }

    /// Ejected endpoints and why.
    pub fn ejected(&self) -> Vec<(SocketAddr, String)> {
        let entries = self.entries.lock();
        let mut out: Vec<_> = entries
            .iter()
            .filter_map(|(addr, entry)| {
                entry
                    .ejected
                    .as_ref()
                    .map(|(_, reason)| (*addr, reason.clone()))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::Scheduler;

    fn availability(policy: EjectionPolicy) -> Availability {
        Availability::new(
            Arc::new(EndpointTable::new()),
            Arc::new(SchedulerHandle::new(Scheduler::builtin("random").unwrap())),
            policy,
        )
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn health(availability: &Availability, port: u16) -> Health {
        availability
            .table()
            .snapshot()
            .get(&addr(port))
            .map(|endpoint| endpoint.health.clone())
            .unwrap()
    }

    #[test]
    fn ejections_survive_source_updates_and_expire() {
        let availability = availability(EjectionPolicy {
            consecutive_5xx: 2,
            duration: Duration::from_millis(10),
        });
        let members = || {
            vec![
                (EndpointMeta::new(addr(1)), Health::Ready),
                (EndpointMeta::new(addr(2)), Health::Draining),
            ]
        };
        availability.set_members(members());
        availability.connect_failed(addr(1), "refused");
        assert!(matches!(health(&availability, 1), Health::Unhealthy(_)));
        // The source re-publishes: the ejection stays, the source's draining stays.
        availability.set_members(members());
        assert!(matches!(health(&availability, 1), Health::Unhealthy(_)));
        assert_eq!(health(&availability, 2), Health::Draining);
        availability.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(health(&availability, 1), Health::Ready);
    }

    #[test]
    fn only_runs_of_5xx_eject_never_4xx() {
        let availability = availability(EjectionPolicy {
            consecutive_5xx: 2,
            duration: Duration::from_secs(60),
        });
        availability.set_members(vec![(EndpointMeta::new(addr(1)), Health::Ready)]);
        for _ in 0..10 {
            availability.answered(addr(1), 404);
        }
        availability.answered(addr(1), 503);
        availability.answered(addr(1), 200);
        availability.answered(addr(1), 503);
        assert_eq!(health(&availability, 1), Health::Ready);
        availability.answered(addr(1), 500);
        assert!(matches!(health(&availability, 1), Health::Unhealthy(_)));
        assert_eq!(availability.ejected().len(), 1);
    }
}
