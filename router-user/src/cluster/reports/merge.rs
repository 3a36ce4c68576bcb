//! Merging node reports into the endpoint table.
//!
//! Per node the EPP keeps what the node's agent last said (loads, connection counts, GPUs,
//! verdicts), so deltas can be applied and a node that goes away can be handled as a unit:
//! - **Ordering.** Reports of one agent instance carry increasing sequence numbers; a report
//!   whose number is not above the last one applied is dropped. A new instance (agent restart)
//!   starts a new sequence. The newest stream of a node owns it; reports still arriving on an
//!   older stream are dropped.
//! - **Clocks.** Sample times are rebased onto the EPP's clock with the report's `sent_at`
//!   (`sampled_at + (received − sent_at)`): a sample's age is measured by the agent's own clock
//!   (plus the network delay), so clock skew between nodes does not age or rejuvenate it.
//! - **Disconnect.** When a node's stream ends its endpoints go *stale*, not idle: their last
//!   loads stay in the table with their old sample times (the scheduler treats them as unknown
//!   once older than its staleness threshold), they leave the covered set (the agent-less
//!   scraper takes over), the node's connection counts stop counting, and drains the agent had
//!   set are lifted (its GPU readings, which carry XID and ECC events, stay).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::agent::proto::{
    EndpointReport, GpuReport, Interest, NodeReport, SCHEMA_VERSION, WireError, parse_addr,
};
use crate::clock::Micros;
use crate::cluster::{EndpointTable, Health};
use crate::telemetry::{EndpointLoad, GpuSample};

/// Identifies one stream (one connection of one agent).
pub type StreamId = u64;

/// Why a report was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The report cannot come from a switchyard agent: the stream is ended with this error.
    #[error("invalid node report: {0}")]
    Invalid(String),
    /// Not newer than the last report applied from the same agent instance: dropped.
    #[error("report {seq} of node {node} is not newer than {last}: dropped")]
    Stale { node: String, seq: u64, last: u64 },
    /// A newer stream of the same node exists: dropped.
    #[error("node {node}: a newer stream took over; report dropped")]
    Superseded { node: String },
}

/// What applying one report did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Load samples the table took (values or fresher stamps).
    pub loads: usize,
    /// Entries skipped because a field did not parse (the rest of the report was applied).
    pub rejected: Vec<WireError>,
    /// The node's interest, when the report changed it.
    pub interest: Option<Interest>,
    /// Something that changes weights was applied (load values, verdicts, GPUs, connections).
    pub changed: bool,
}

#[derive(Debug, Default)]
struct EndpointEntry {
    /// The last load applied, rebased onto the EPP's clock.
    load: Option<EndpointLoad>,
    /// Live connections from this node and when they were counted (EPP clock).
    connections: Option<u64>,
    gpus: Vec<String>,
    /// The health this node's agent made us set, while it holds.
    marked: Option<Health>,
}

#[derive(Debug, Default)]
struct GpuEntry {
    sample: Option<GpuSample>,
    seq: u64,
}

#[derive(Debug)]
struct NodeEntry {
    stream: StreamId,
    connected: bool,
    instance: u64,
    last_seq: u64,
    /// EPP clock when the last report was applied.
    last_report_at: Micros,
    endpoints: BTreeMap<SocketAddr, EndpointEntry>,
    gpus: HashMap<String, GpuEntry>,
}

impl NodeEntry {
    fn new(stream: StreamId, instance: u64) -> Self {
        Self {
            stream,
            connected: true,
            instance,
            last_seq: 0,
            last_report_at: 0,
            endpoints: BTreeMap::new(),
            gpus: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct MergeState {
    nodes: HashMap<String, NodeEntry>,
    /// Which node each open stream reports for.
    streams: HashMap<StreamId, String>,
}

/// Every node's last word, applied to the endpoint table.
#[derive(Debug)]
pub struct Merger {
    table: Arc<EndpointTable>,
    state: Mutex<MergeState>,
}

impl Merger {
    pub fn new(table: Arc<EndpointTable>) -> Self {
        Self {
            table,
            state: Mutex::new(MergeState::default()),
        }
    }

    pub fn table(&self) -> &Arc<EndpointTable> {
        &self.table
    }

    /// Applies `report`, received on `stream` at `now` (EPP clock).
    pub fn apply(
        &self,
        stream: StreamId,
        report: &NodeReport,
        now: Micros,
    ) -> Result<Applied, ReportError> {
        if report.schema_version == 0 {
            return Err(ReportError::Invalid(
                "schema_version is unset (not a switchyard.v1 agent?)".into(),
            ));
        }
        if report.node.is_empty() {
            return Err(ReportError::Invalid("node is empty".into()));
        }
        if report.schema_version > SCHEMA_VERSION {
            tracing::debug!(
                node = %report.node,
                revision = report.schema_version,
                "node report from a newer schema revision; unknown fields ignored"
            );
        }
        let mut state = self.state.lock();
        let state = &mut *state;
        match state.streams.get(&stream) {
            Some(node) if *node != report.node => {
                return Err(ReportError::Invalid(format!(
                    "stream reported for node {node}, now for {}",
                    report.node
                )));
            }
            Some(_) => {}
            None => {
                // The first report of a stream claims the node.
                state.streams.insert(stream, report.node.clone());
                match state.nodes.get_mut(&report.node) {
                    Some(entry) => {
                        if entry.connected && entry.stream != stream {
                            tracing::warn!(
                                node = %report.node,
                                "a new report stream replaces one that is still open (agent restarted, or two agents share a node name)"
                            );
                        }
                        entry.stream = stream;
                        entry.connected = true;
                    }
                    None => {
                        state
                            .nodes
                            .insert(report.node.clone(), NodeEntry::new(stream, report.instance));
                    }
                }
            }
        }
        let Some(node) = state.nodes.get_mut(&report.node) else {
            return Err(ReportError::Invalid("node state missing".into()));
        };
        if node.stream != stream {
            return Err(ReportError::Superseded {
                node: report.node.clone(),
            });
        }
        if node.instance != report.instance {
            // The agent restarted: its sequence starts over.
            node.instance = report.instance;
            node.last_seq = 0;
        }
        if report.seq <= node.last_seq {
            return Err(ReportError::Stale {
                node: report.node.clone(),
                seq: report.seq,
                last: node.last_seq,
            });
        }
        node.last_seq = report.seq;
        node.last_report_at = now;
        let offset = i128::from(now) - i128::from(report.sent_at_us);
        let rebase =
            |at: Micros| (i128::from(at) + offset).clamp(0, i128::from(u64::MAX)) as Micros;

        let mut applied = Applied {
            interest: report.interest.clone(),
            ..Applied::default()
        };
        let mut connection_changes: HashSet<SocketAddr> = HashSet::new();
        let mut gpu_changes: HashSet<String> = HashSet::new();

        // Removals: listed ones, or everything not in a full report.
        let mut removed: Vec<SocketAddr> = Vec::new();
        if report.full {
            let listed: HashSet<&str> = report
                .endpoints
                .iter()
                .map(|e| e.address.as_str())
                .collect();
            removed.extend(
                node.endpoints
                    .keys()
                    .filter(|addr| !listed.contains(addr.to_string().as_str())),
            );
            let listed_gpus: HashSet<&str> = report.gpus.iter().map(|g| g.uuid.as_str()).collect();
            node.gpus
                .retain(|uuid, _| listed_gpus.contains(uuid.as_str()));
        } else {
            for text in &report.removed_endpoints {
                match parse_addr("removed_endpoints", text) {
                    Ok(addr) => removed.push(addr),
                    Err(err) => applied.rejected.push(err),
                }
            }
            for uuid in &report.removed_gpus {
                node.gpus.remove(uuid);
            }
        }
        for addr in removed {
            if let Some(entry) = node.endpoints.remove(&addr) {
                self.unmark(addr, &entry);
                if entry.connections.is_some() {
                    connection_changes.insert(addr);
                }
                applied.changed = true;
            }
        }

        for gpu in &report.gpus {
            if apply_gpu(node, gpu, &rebase) {
                gpu_changes.insert(gpu.uuid.clone());
            }
        }

        for entry in &report.endpoints {
            let addr = match parse_addr("endpoints.address", &entry.address) {
                Ok(addr) => addr,
                Err(err) => {
                    applied.rejected.push(err);
                    continue;
                }
            };
            let slot = node.endpoints.entry(addr).or_default();
            match self.apply_endpoint(&report.node, addr, slot, entry, &rebase) {
                Ok(outcome) => {
                    applied.loads += usize::from(outcome.load_applied);
                    applied.changed |= outcome.changed;
                    if outcome.connections_changed {
                        connection_changes.insert(addr);
                    }
                    if outcome.gpus_changed {
                        self.push_gpus(addr, slot, &node.gpus);
                    }
                }
                Err(err) => applied.rejected.push(err),
            }
        }
        if !gpu_changes.is_empty() {
            applied.changed = true;
            for (addr, entry) in &node.endpoints {
                if entry.gpus.iter().any(|uuid| gpu_changes.contains(uuid)) {
                    self.push_gpus(*addr, entry, &node.gpus);
                }
            }
        }
        if !connection_changes.is_empty() {
            applied.changed = true;
            self.push_connections(&state.nodes, connection_changes, now);
        }
        Ok(applied)
    }

    fn apply_endpoint(
        &self,
        node: &str,
        addr: SocketAddr,
        slot: &mut EndpointEntry,
        entry: &EndpointReport,
        rebase: &impl Fn(Micros) -> Micros,
    ) -> Result<EndpointOutcome, WireError> {
        let mut outcome = EndpointOutcome::default();
        // Parse everything first: a bad field leaves the entry as it was.
        let new_load = match &entry.load {
            Some(values) => {
                Some(values.to_endpoint_load(entry.load_seq, rebase(entry.load_sampled_at_us))?)
            }
            None => None,
        };
        if let Some(load) = new_load {
            outcome.changed = slot.load.as_ref().is_none_or(|old| {
                old.waiting != load.waiting
                    || old.running != load.running
                    || old.kv_cache_usage != load.kv_cache_usage
            });
            slot.load = Some(load);
            outcome.load_applied = true;
        } else if let Some(load) = slot.load.as_mut()
            && entry.load_seq != 0
            && entry.load_seq != load.seq
        {
            // Same values, newer sample.
            load.seq = entry.load_seq;
            load.sampled_at = rebase(entry.load_sampled_at_us);
            outcome.load_applied = true;
        }
        if outcome.load_applied
            && let Some(load) = &slot.load
        {
            self.table.update_load(&addr, load.clone());
        }
        if let Some(counts) = &entry.connections {
            let live = counts.opened.saturating_sub(counts.closed);
            outcome.connections_changed = slot.connections != Some(live);
            slot.connections = Some(live);
        }
        if let Some(list) = &entry.gpus {
            outcome.gpus_changed = slot.gpus != list.uuids;
            slot.gpus = list.uuids.clone();
        }
        if let Some(verdict) = &entry.verdict {
            let snapshot = self.table.snapshot();
            let current = snapshot.get(&addr).map(|e| e.health.clone());
            if verdict.drained {
                let health = Health::unhealthy(format!(
                    "drained by the node agent on {node}: {}",
                    verdict.reason
                ));
                if current
                    .as_ref()
                    .is_some_and(|h| *h == Health::Ready || slot.marked.as_ref() == Some(h))
                    && current.as_ref() != Some(&health)
                {
                    self.table.set_health(&addr, health.clone());
                    slot.marked = Some(health);
                    outcome.changed = true;
                }
            } else if let Some(marked) = slot.marked.take() {
                if current.as_ref() == Some(&marked) {
                    self.table.set_health(&addr, Health::Ready);
                }
                outcome.changed = true;
            }
        }
        Ok(outcome)
    }

    fn push_gpus(&self, addr: SocketAddr, entry: &EndpointEntry, gpus: &HashMap<String, GpuEntry>) {
        let samples: Vec<GpuSample> = entry
            .gpus
            .iter()
            .filter_map(|uuid| gpus.get(uuid).and_then(|g| g.sample.clone()))
            .collect();
        self.table.update_gpu(&addr, &samples);
    }

    /// Writes the sum over connected nodes of the live connections to each address.
    fn push_connections(
        &self,
        nodes: &HashMap<String, NodeEntry>,
        addrs: impl IntoIterator<Item = SocketAddr>,
        now: Micros,
    ) {
        for addr in addrs {
            let total: u64 = nodes
                .values()
                .filter(|node| node.connected)
                .filter_map(|node| node.endpoints.get(&addr).and_then(|e| e.connections))
                .sum();
            self.table
                .update_connections(&addr, total.min(u64::from(u32::MAX)) as u32, now);
        }
    }

    /// Lifts a drain this node's agent made us set, if it still holds.
    fn unmark(&self, addr: SocketAddr, entry: &EndpointEntry) {
        if let Some(marked) = &entry.marked
            && self.table.snapshot().get(&addr).map(|e| &e.health) == Some(marked)
        {
            self.table.set_health(&addr, Health::Ready);
        }
    }

    /// The stream ended: its node (if it still owns it) goes stale.
    pub fn close_stream(&self, stream: StreamId, now: Micros) {
        let mut state = self.state.lock();
        let Some(name) = state.streams.remove(&stream) else {
            return;
        };
        let Some(node) = state.nodes.get_mut(&name) else {
            return;
        };
        if node.stream != stream {
            return;
        }
        node.connected = false;
        let mut counted = Vec::new();
        for (addr, entry) in &mut node.endpoints {
            self.unmark(*addr, entry);
            entry.marked = None;
            if entry.connections.is_some() {
                counted.push(*addr);
            }
        }
        self.push_connections(&state.nodes, counted, now);
        tracing::info!(node = %name, "node report stream ended; its endpoints go stale");
    }

    /// Endpoints whose load a connected node reported within `ttl` of `now`.
    pub fn covered(&self, now: Micros, ttl: Micros) -> HashSet<SocketAddr> {
        let state = self.state.lock();
        state
            .nodes
            .values()
            .filter(|node| node.connected && now.saturating_sub(node.last_report_at) <= ttl)
            .flat_map(|node| {
                node.endpoints
                    .iter()
                    .filter(|(_, entry)| entry.load.is_some())
                    .map(|(addr, _)| *addr)
            })
            .collect()
    }

    /// Nodes with an open stream.
    pub fn connected_nodes(&self) -> usize {
        self.state
            .lock()
            .nodes
            .values()
            .filter(|n| n.connected)
            .count()
    }
}

#[derive(Debug, Default)]
struct EndpointOutcome {
    load_applied: bool,
    changed: bool,
    connections_changed: bool,
    gpus_changed: bool,
}

/// Applies one GPU entry; returns whether the endpoints using it need their GPU signals again.
fn apply_gpu(node: &mut NodeEntry, gpu: &GpuReport, rebase: &impl Fn(Micros) -> Micros) -> bool {
    let entry = node.gpus.entry(gpu.uuid.clone()).or_default();
    if gpu.seq != 0 && gpu.seq < entry.seq {
        return false;
    }
    let sampled_at = rebase(gpu.sampled_at_us);
    match (&gpu.sample, entry.sample.as_mut()) {
        (Some(values), _) => {
            entry.sample = Some(values.to_gpu_sample(&gpu.uuid, sampled_at));
        }
        (None, Some(sample)) if gpu.seq > entry.seq => sample.sampled_at = sampled_at,
        _ => return false,
    }
    entry.seq = gpu.seq;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::proto::{Connections, GpuList, Load, Verdict, pb};
    use crate::cluster::{EndpointMeta, LoadUpdate};

    const T0: Micros = 1_000_000_000;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8000))
    }

    fn setup() -> (Arc<EndpointTable>, Merger) {
        let table = Arc::new(EndpointTable::new());
        table.set_members((1..=4).map(|i| EndpointMeta::new(addr(i))));
        let merger = Merger::new(table.clone());
        (table, merger)
    }

    fn report(node: &str, instance: u64, seq: u64, sent_at: Micros) -> NodeReport {
        NodeReport {
            schema_version: SCHEMA_VERSION,
            node: node.into(),
            instance,
            seq,
            sent_at_us: sent_at,
            ..NodeReport::default()
        }
    }

    fn with_load(i: u8, waiting: u32, seq: u64, sampled_at: Micros) -> EndpointReport {
        EndpointReport {
            address: addr(i).to_string(),
            load: Some(Load {
                engine: "vllm".into(),
                waiting,
                ..Load::default()
            }),
            load_seq: seq,
            load_sampled_at_us: sampled_at,
            ..EndpointReport::default()
        }
    }

    fn waiting(table: &EndpointTable, i: u8) -> Option<u32> {
        table
            .snapshot()
            .get(&addr(i))
            .and_then(|e| e.live().load())
            .map(|l| l.waiting)
    }

    #[test]
    fn reports_apply_in_order_and_older_ones_are_dropped() {
        let (table, merger) = setup();
        let mut first = report("n1", 7, 2, T0);
        first.full = true;
        first.endpoints.push(with_load(1, 3, 10, T0 - 5_000));
        let applied = merger.apply(1, &first, T0 + 1_000).unwrap();
        assert_eq!(applied.loads, 1);
        assert_eq!(waiting(&table, 1), Some(3));
        // Rebased: the sample was 5 ms old when sent, received 1 ms later.
        let load = table
            .snapshot()
            .get(&addr(1))
            .unwrap()
            .live()
            .load()
            .unwrap();
        assert_eq!(load.sampled_at, T0 - 4_000);

        let mut older = report("n1", 7, 1, T0 + 10);
        older.endpoints.push(with_load(1, 99, 11, T0));
        assert!(matches!(
            merger.apply(1, &older, T0 + 2_000),
            Err(ReportError::Stale { .. })
        ));
        assert_eq!(waiting(&table, 1), Some(3));

        // A stamp-only delta refreshes the sample time without resending values.
        let mut stamp = report("n1", 7, 3, T0 + 50_000);
        stamp.endpoints.push(EndpointReport {
            address: addr(1).to_string(),
            load_seq: 11,
            load_sampled_at_us: T0 + 49_000,
            ..EndpointReport::default()
        });
        let applied = merger.apply(1, &stamp, T0 + 50_000).unwrap();
        assert_eq!(applied.loads, 1);
        assert!(!applied.changed);
        let load = table
            .snapshot()
            .get(&addr(1))
            .unwrap()
            .live()
            .load()
            .unwrap();
        assert_eq!((load.waiting, load.sampled_at), (3, T0 + 49_000));

        // The agent restarted: a new instance starts its sequence again.
        let mut restarted = report("n1", 8, 1, T0 + 60_000);
        restarted.endpoints.push(with_load(1, 5, 1, T0 + 59_000));
        merger.apply(1, &restarted, T0 + 60_000).unwrap();
        assert_eq!(waiting(&table, 1), Some(5));
    }

    #[test]
    fn a_newer_stream_owns_the_node_and_disconnect_makes_it_stale_not_idle() {
        let (table, merger) = setup();
        let mut first = report("n1", 7, 1, T0);
        first.full = true;
        first.endpoints.push(with_load(1, 4, 1, T0));
        first.endpoints.push(EndpointReport {
            address: addr(2).to_string(),
            connections: Some(Connections {
                opened: 10,
                closed: 4,
                seq: 1,
                counted_at_us: T0,
            }),
            ..EndpointReport::default()
        });
        merger.apply(1, &first, T0).unwrap();
        let mut other = report("n2", 9, 1, T0);
        other.endpoints.push(EndpointReport {
            address: addr(2).to_string(),
            connections: Some(Connections {
                opened: 3,
                closed: 0,
                seq: 1,
                counted_at_us: T0,
            }),
            ..EndpointReport::default()
        });
        merger.apply(2, &other, T0).unwrap();
        let conns = |t: &EndpointTable| {
            t.snapshot()
                .get(&addr(2))
                .unwrap()
                .live()
                .connections()
                .map(|c| c.0)
        };
        assert_eq!(conns(&table), Some(9), "summed over nodes");
        assert_eq!(merger.covered(T0, 500_000), HashSet::from([addr(1)]));

        // The agent reconnects on a new stream; the old one's late reports are dropped.
        let mut again = report("n1", 7, 2, T0 + 100);
        again.full = true;
        again.endpoints.push(with_load(1, 4, 2, T0 + 100));
        merger.apply(3, &again, T0 + 100).unwrap();
        let late = report("n1", 7, 3, T0 + 200);
        assert!(matches!(
            merger.apply(1, &late, T0 + 200),
            Err(ReportError::Superseded { .. })
        ));
        merger.close_stream(1, T0 + 300); // the old stream's end does not disconnect the node
        assert_eq!(merger.connected_nodes(), 2);

        merger.close_stream(3, T0 + 400);
        assert_eq!(merger.connected_nodes(), 1);
        assert!(merger.covered(T0 + 400, 500_000).is_empty());
        // The load is still there (stale by its age), not reset to idle.
        assert_eq!(waiting(&table, 1), Some(4));
        assert_eq!(
            conns(&table),
            Some(3),
            "the gone node's connections no longer count"
        );
        assert!(merger.covered(T0 + 2_000_000, 500_000).is_empty());
    }

    #[test]
    fn full_reports_remove_what_they_omit_and_bad_entries_are_skipped() {
        let (table, merger) = setup();
        let mut first = report("n1", 1, 1, T0);
        first.full = true;
        first.endpoints.push(with_load(1, 1, 1, T0));
        first.endpoints.push(with_load(2, 2, 1, T0));
        merger.apply(1, &first, T0).unwrap();
        let mut second = report("n1", 1, 2, T0);
        second.full = true;
        second.endpoints.push(with_load(2, 2, 2, T0));
        let mut bad = with_load(3, 1, 1, T0);
        bad.load.as_mut().unwrap().kv_cache_usage = 2.0;
        second.endpoints.push(bad);
        second.endpoints.push(EndpointReport {
            address: "not-an-address".into(),
            ..EndpointReport::default()
        });
        let applied = merger.apply(1, &second, T0 + 1).unwrap();
        assert_eq!(applied.rejected.len(), 2, "{:?}", applied.rejected);
        assert_eq!(merger.covered(T0 + 1, 500_000), HashSet::from([addr(2)]));
        assert_eq!(waiting(&table, 3), None, "the bad entry changed nothing");

        let unset = NodeReport {
            node: "n1".into(),
            ..NodeReport::default()
        };
        assert!(matches!(
            merger.apply(9, &unset, T0),
            Err(ReportError::Invalid(_))
        ));
        // Unknown endpoints are accepted (the table ignores them).
        let mut stranger = report("n3", 1, 1, T0);
        stranger.endpoints.push(EndpointReport {
            address: "10.9.9.9:1".into(),
            load: Some(Load {
                engine: "vllm".into(),
                ..Load::default()
            }),
            load_seq: 1,
            ..EndpointReport::default()
        });
        assert!(merger.apply(4, &stranger, T0).is_ok());
        assert_eq!(
            table.update_load(&"10.9.9.9:1".parse().unwrap(), EndpointLoad::default()),
            LoadUpdate::UnknownEndpoint
        );
    }

    #[test]
    fn verdicts_drain_and_restore_and_gpus_reach_their_endpoints() {
        let (table, merger) = setup();
        let mut first = report("n1", 1, 1, T0);
        first.full = true;
        let mut entry = with_load(1, 0, 1, T0);
        entry.gpus = Some(GpuList {
            uuids: vec!["GPU-a".into()],
        });
        entry.verdict = Some(Verdict {
            drained: true,
            reason: "critical XID 79".into(),
            score: 0.0,
        });
        first.endpoints.push(entry);
        first.gpus.push(GpuReport {
            uuid: "GPU-a".into(),
            sample: Some(pb::GpuSample {
                memory_total_bytes: 100,
                memory_used_bytes: 50,
                last_xid: Some(79),
                ..pb::GpuSample::default()
            }),
            seq: 1,
            sampled_at_us: T0,
            ..GpuReport::default()
        });
        merger.apply(1, &first, T0).unwrap();
        let snapshot = table.snapshot();
        let endpoint = snapshot.get(&addr(1)).unwrap();
        assert!(matches!(&endpoint.health, Health::Unhealthy(r) if r.contains("XID 79")));
        assert_eq!(endpoint.live().gpu().and_then(|g| g.last_xid), Some(79));

        let mut second = report("n1", 1, 2, T0);
        second.endpoints.push(EndpointReport {
            address: addr(1).to_string(),
            verdict: Some(Verdict {
                drained: false,
                reason: String::new(),
                score: 1.0,
            }),
            ..EndpointReport::default()
        });
        second.gpus.push(GpuReport {
            uuid: "GPU-a".into(),
            sample: Some(pb::GpuSample {
                memory_total_bytes: 100,
                memory_used_bytes: 50,
                ..pb::GpuSample::default()
            }),
            seq: 2,
            sampled_at_us: T0,
            ..GpuReport::default()
        });
        merger.apply(1, &second, T0).unwrap();
        let snapshot = table.snapshot();
        let endpoint = snapshot.get(&addr(1)).unwrap();
        assert_eq!(endpoint.health, Health::Ready);
        assert_eq!(endpoint.live().gpu().and_then(|g| g.last_xid), None);

        // A drain set by the pod watcher (not by us) is left alone.
        table.set_health(&addr(2), Health::Draining);
        let mut third = report("n1", 1, 3, T0);
        third.endpoints.push(EndpointReport {
            address: addr(2).to_string(),
            verdict: Some(Verdict {
                drained: false,
                reason: String::new(),
                score: 1.0,
            }),
            ..EndpointReport::default()
        });
        merger.apply(1, &third, T0).unwrap();
        assert_eq!(
            table.snapshot().get(&addr(2)).unwrap().health,
            Health::Draining
        );
    }
}
