//! Node reports as deltas: each report carries only what changed since the previous report on
//! the same stream, plus the stamps (sequence number, sample time) of every newer sample, so
//! the EPP's copy stays fresh without the values being resent. The first report of a stream,
//! and every `full_every`-th after it, is full: it lists the whole node, so a receiver that
//! missed something (or restarted) converges within one full period.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use super::proto::{
    Connections, EndpointReport, GpuList, GpuReport, Interest, Load, NodeReport, SCHEMA_VERSION,
    Verdict, pb,
};
use super::view::{ConnectionView, EndpointView, GpuView, NodeView};
use crate::clock::Micros;

/// A verdict's score must move by this much to be resent.
const SCORE_RESEND: f64 = 0.01;

/// Default number of reports between two full ones (5 s at 20 reports a second).
pub const DEFAULT_FULL_EVERY: u64 = 100;

#[derive(Debug, Default)]
struct SentEndpoint {
    load: Option<Load>,
    load_seq: Option<u64>,
    connections: Option<(u64, u64)>,
    gpus: Option<Vec<String>>,
    verdict: Option<Verdict>,
}

#[derive(Debug, Default)]
struct SentGpu {
    sample: Option<pb::GpuSample>,
    seq: Option<u64>,
    health: Option<(String, String)>,
}

/// Encodes [`NodeView`]s into [`NodeReport`]s for one stream at a time.
#[derive(Debug)]
pub struct ReportEncoder {
    node: String,
    instance: u64,
    seq: u64,
    full_every: u64,
    since_full: u64,
    full_next: bool,
    endpoints: HashMap<SocketAddr, SentEndpoint>,
    gpus: HashMap<String, SentGpu>,
    interest: Option<Interest>,
}

impl ReportEncoder {
    /// `instance` identifies this agent process (drawn at random at start).
    pub fn new(node: impl Into<String>, instance: u64, full_every: u64) -> Self {
        Self {
            node: node.into(),
            instance,
            seq: 0,
            full_every: full_every.max(1),
            since_full: 0,
            full_next: true,
            endpoints: HashMap::new(),
            gpus: HashMap::new(),
            interest: None,
        }
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Sequence number of the last report encoded.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A new stream starts: the next report is full. The sequence continues (it is per
    /// instance, not per stream), so the EPP can still drop a late report of the old stream.
    pub fn reset(&mut self) {
        self.full_next = true;
    }

    /// The report for `view`, sent at `now`.
    pub fn encode(&mut self, view: &NodeView, now: Micros) -> NodeReport {
        let full = self.full_next || self.since_full + 1 >= self.full_every;
        if full {
            self.endpoints.clear();
            self.gpus.clear();
            self.interest = None;
            self.since_full = 0;
            self.full_next = false;
        } else {
            self.since_full += 1;
        }
        self.seq += 1;
        let mut report = NodeReport {
            schema_version: SCHEMA_VERSION,
            node: self.node.clone(),
            instance: self.instance,
            seq: self.seq,
            sent_at_us: now,
            full,
            telemetry: view.telemetry.to_owned(),
            ..NodeReport::default()
        };
        self.encode_endpoints(view, full, &mut report);
        self.encode_gpus(&view.gpus, full, &mut report);
        let interest = Interest {
            pool_vips: view
                .interest
                .pool_vips
                .iter()
                .map(ToString::to_string)
                .collect(),
            discover_pools: view.interest.discover_pools,
        };
        if self.interest.as_ref() != Some(&interest) {
            report.interest = Some(interest.clone());
            self.interest = Some(interest);
        }
        report
    }

    fn encode_endpoints(&mut self, view: &NodeView, full: bool, report: &mut NodeReport) {
        let mut current: BTreeMap<SocketAddr, (Option<&EndpointView>, Option<&ConnectionView>)> =
            BTreeMap::new();
        for endpoint in &view.endpoints {
            current.entry(endpoint.addr).or_default().0 = Some(endpoint);
        }
        for count in &view.connections {
            current.entry(count.addr).or_default().1 = Some(count);
        }
        let gone: BTreeSet<SocketAddr> = self
            .endpoints
            .keys()
            .filter(|addr| !current.contains_key(addr))
            .copied()
            .collect();
        for addr in gone {
            self.endpoints.remove(&addr);
            report.removed_endpoints.push(addr.to_string());
        }
        for (addr, (endpoint, count)) in current {
            let sent = self.endpoints.entry(addr).or_default();
            let mut entry = EndpointReport {
                address: addr.to_string(),
                ..EndpointReport::default()
            };
            let mut changed = false;
            if let Some(load) = endpoint.and_then(|e| e.load.as_ref()) {
                let values = Load::from(load);
                if sent.load.as_ref() != Some(&values) {
                    entry.load = Some(values.clone());
                    sent.load = Some(values);
                    changed = true;
                }
                if sent.load_seq != Some(load.seq) || entry.load.is_some() {
                    entry.load_seq = load.seq;
                    entry.load_sampled_at_us = load.sampled_at;
                    sent.load_seq = Some(load.seq);
                    changed = true;
                }
            }
            if let Some(count) = count
                && sent.connections != Some((count.opened, count.closed))
            {
                entry.connections = Some(Connections {
                    opened: count.opened,
                    closed: count.closed,
                    seq: count.seq,
                    counted_at_us: count.counted_at,
                });
                sent.connections = Some((count.opened, count.closed));
                changed = true;
            }
            if let Some(endpoint) = endpoint {
                if sent.gpus.as_ref() != Some(&endpoint.gpus) {
                    entry.gpus = Some(GpuList {
                        uuids: endpoint.gpus.clone(),
                    });
                    sent.gpus = Some(endpoint.gpus.clone());
                    changed = true;
                }
                let verdict = Verdict {
                    drained: endpoint.drain.is_some(),
                    reason: endpoint
                        .drain
                        .as_ref()
                        .map(|d| d.reason.clone())
                        .unwrap_or_default(),
                    score: endpoint.score,
                };
                let resend = sent.verdict.as_ref().is_none_or(|old| {
                    old.drained != verdict.drained
                        || old.reason != verdict.reason
                        || (old.score - verdict.score).abs() >= SCORE_RESEND
                });
                if resend {
                    entry.verdict = Some(verdict.clone());
                    sent.verdict = Some(verdict);
                    changed = true;
                }
            }
            if changed || full {
                report.endpoints.push(entry);
            }
        }
    }

    fn encode_gpus(&mut self, gpus: &[GpuView], full: bool, report: &mut NodeReport) {
        let current: BTreeMap<&str, &GpuView> =
            gpus.iter().map(|g| (g.sample.uuid.as_str(), g)).collect();
        let gone: Vec<String> = self
            .gpus
            .keys()
            .filter(|uuid| !current.contains_key(uuid.as_str()))
            .cloned()
            .collect();
        for uuid in gone {
            self.gpus.remove(&uuid);
            report.removed_gpus.push(uuid);
        }
        for (uuid, gpu) in current {
            let sent = self.gpus.entry(uuid.to_owned()).or_default();
            let mut entry = GpuReport {
                uuid: uuid.to_owned(),
                ..GpuReport::default()
            };
            let mut changed = false;
            let values = pb::GpuSample::from(&gpu.sample);
            if sent.sample.as_ref() != Some(&values) {
                entry.sample = Some(values.clone());
                sent.sample = Some(values);
                changed = true;
            }
            if sent.seq != Some(gpu.seq) || entry.sample.is_some() {
                entry.seq = gpu.seq;
                entry.sampled_at_us = gpu.sample.sampled_at;
                sent.seq = Some(gpu.seq);
                changed = true;
            }
            let health = (gpu.health_label().to_owned(), gpu.health_reason());
            if sent.health.as_ref() != Some(&health) || entry.sample.is_some() {
                entry.health = health.0.clone();
                entry.health_reason = health.1.clone();
                sent.health = Some(health);
                changed = true;
            }
            if changed || full {
                report.gpus.push(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::score::{Drain, DrainKind};
    use crate::agent::view::InterestView;
    use crate::telemetry::health::GpuHealth;
    use crate::telemetry::{EndpointLoad, GpuSample};
    use prost::Message;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8000))
    }

    fn endpoint(i: u8, waiting: u32, seq: u64) -> EndpointView {
        EndpointView {
            addr: addr(i),
            pod: None,
            engine: None,
            load: Some(EndpointLoad {
                waiting,
                kv_cache_usage: 0.25,
                sampled_at: 1_000 + seq,
                seq,
                ..EndpointLoad::default()
            }),
            scrape_error: None,
            gpus: vec![format!("GPU-{i}")],
            drain: None,
            score: 1.0,
        }
    }

    fn gpu(i: u8, used: u64, seq: u64) -> GpuView {
        GpuView {
            sample: GpuSample {
                uuid: format!("GPU-{i}"),
                memory_used_bytes: used,
                memory_total_bytes: 100,
                sampled_at: 2_000 + seq,
                ..GpuSample::default()
            },
            seq,
            health: GpuHealth::Healthy,
        }
    }

    fn view(endpoints: Vec<EndpointView>, gpus: Vec<GpuView>) -> NodeView {
        NodeView {
            node: "n1".into(),
            telemetry: "sim",
            endpoints,
            gpus,
            interest: InterestView {
                pool_vips: vec![SocketAddr::from(([10, 96, 0, 1], 80))],
                discover_pools: true,
            },
            ..NodeView::default()
        }
    }

    #[test]
    fn first_report_is_full_then_only_changes_and_stamps() {
        let mut encoder = ReportEncoder::new("n1", 42, 100);
        let first = encoder.encode(
            &view(
                vec![endpoint(1, 0, 1), endpoint(2, 0, 1)],
                vec![gpu(1, 10, 1)],
            ),
            10,
        );
        assert!(first.full);
        assert_eq!(
            (first.seq, first.instance, first.schema_version),
            (1, 42, SCHEMA_VERSION)
        );
        assert_eq!(first.endpoints.len(), 2);
        assert!(
            first
                .endpoints
                .iter()
                .all(|e| e.load.is_some() && e.verdict.is_some())
        );
        assert!(first.interest.is_some());
        assert_eq!(first.gpus.len(), 1);

        // Same values, newer samples: stamps only.
        let second = encoder.encode(
            &view(
                vec![endpoint(1, 0, 2), endpoint(2, 0, 2)],
                vec![gpu(1, 10, 2)],
            ),
            20,
        );
        assert!(!second.full);
        assert_eq!(second.endpoints.len(), 2);
        for entry in &second.endpoints {
            assert!(entry.load.is_none() && entry.gpus.is_none() && entry.verdict.is_none());
            assert_eq!(entry.load_seq, 2);
            assert_eq!(entry.load_sampled_at_us, 1_002);
        }
        assert!(
            second.interest.is_none(),
            "unchanged interest is not resent"
        );
        assert!(second.gpus[0].sample.is_none() && second.gpus[0].seq == 2);
        assert!(second.encoded_len() < first.encoded_len() / 2);

        // One endpoint's queue changes; the other has no newer sample: only the first is sent.
        let third = encoder.encode(
            &view(
                vec![endpoint(1, 7, 3), endpoint(2, 0, 2)],
                vec![gpu(1, 10, 2)],
            ),
            30,
        );
        assert_eq!(third.endpoints.len(), 1);
        assert_eq!(third.endpoints[0].address, addr(1).to_string());
        assert_eq!(third.endpoints[0].load.as_ref().map(|l| l.waiting), Some(7));
        assert!(third.gpus.is_empty());
        assert_eq!(third.seq, 3);
    }

    #[test]
    fn removals_verdicts_connections_and_periodic_full_reports() {
        let mut encoder = ReportEncoder::new("n1", 1, 4);
        let mut v = view(
            vec![endpoint(1, 0, 1), endpoint(2, 0, 1)],
            vec![gpu(1, 1, 1), gpu(2, 1, 1)],
        );
        v.connections = vec![ConnectionView {
            addr: addr(9),
            opened: 5,
            closed: 1,
            seq: 1,
            counted_at: 7,
        }];
        let first = encoder.encode(&v, 1);
        let remote = first
            .endpoints
            .iter()
            .find(|e| e.address == addr(9).to_string())
            .unwrap();
        assert_eq!(
            remote.connections.as_ref().map(|c| (c.opened, c.closed)),
            Some((5, 1))
        );
        assert!(remote.load.is_none() && remote.verdict.is_none());

        v.endpoints.pop();
        v.gpus.pop();
        v.endpoints[0].drain = Some(Drain::new(DrainKind::GpuFault, "critical XID 79"));
        v.endpoints[0].score = 0.0;
        v.connections[0].seq = 2; // read again, same counts: not resent
        let second = encoder.encode(&v, 2);
        assert_eq!(second.removed_endpoints, vec![addr(2).to_string()]);
        assert_eq!(second.removed_gpus, vec!["GPU-2".to_string()]);
        let verdict = second.endpoints[0]
            .verdict
            .as_ref()
            .expect("verdict changed");
        assert!(verdict.drained && verdict.reason.contains("79"));
        assert!(
            second
                .endpoints
                .iter()
                .all(|e| e.address != addr(9).to_string())
        );

        assert!(!encoder.encode(&v, 3).full);
        assert!(!encoder.encode(&v, 4).full);
        let fifth = encoder.encode(&v, 5);
        assert!(fifth.full, "reports 1, 5, 9... are full");
        assert_eq!(fifth.endpoints.len(), 2);
        encoder.reset();
        assert!(encoder.encode(&v, 6).full, "a new stream starts full");
        assert_eq!(encoder.seq(), 6, "the sequence continues across streams");
    }
}
