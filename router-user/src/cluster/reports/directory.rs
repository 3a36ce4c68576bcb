//! The pools the EPP answers node agents about: each pool's name, the VIP its clients dial, and
//! how to find its members in the endpoint table. Filled from configuration (`--pool-vip`, a
//! config file, the InferencePool watcher); kept generic so any of them can drive it.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cluster::SnapshotEndpoint;

/// How a pool's members are found in the endpoint table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMembers {
    /// Every endpoint of the table: an EPP that serves exactly one pool (GIE's model).
    All,
    /// Endpoints whose `EndpointMeta::pool` is the pool's name.
    Named,
}

/// One pool of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEntry {
    pub name: String,
    /// What clients dial; pools without one are not sent to agents (they cannot steer to it).
    pub vip: Option<SocketAddr>,
    pub members: PoolMembers,
}

impl PoolEntry {
    pub fn new(name: impl Into<String>, vip: Option<SocketAddr>, members: PoolMembers) -> Self {
        Self {
            name: name.into(),
            vip,
            members,
        }
    }

    /// Whether `endpoint` belongs to this pool.
    pub fn contains(&self, endpoint: &SnapshotEndpoint) -> bool {
        match self.members {
            PoolMembers::All => true,
            PoolMembers::Named => endpoint.meta.pool == self.name,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolEntryError {
    #[error("`{0}`: the pool name is empty (expected NAME=VIP, e.g. llama=10.96.0.10:8000)")]
    EmptyName(String),
    #[error("`{input}`: `{vip}` is not an ip:port virtual address")]
    Vip { input: String, vip: String },
}

/// `NAME=VIP` (members by pool name) or `NAME` (no VIP), as a flag or config value.
impl FromStr for PoolEntry {
    type Err = PoolEntryError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (name, vip) = match input.split_once('=') {
            Some((name, vip)) => (name.trim(), Some(vip.trim())),
            None => (input.trim(), None),
        };
        if name.is_empty() {
            return Err(PoolEntryError::EmptyName(input.to_owned()));
        }
        let vip = vip
            .map(|vip| {
                vip.parse::<SocketAddr>().map_err(|_| PoolEntryError::Vip {
                    input: input.to_owned(),
                    vip: vip.to_owned(),
                })
            })
            .transpose()?;
        Ok(Self::new(name, vip, PoolMembers::Named))
    }
}

#[derive(Debug)]
struct DirectoryState {
    pools: BTreeMap<String, PoolEntry>,
    /// The directory holds every pool it will hold (its sources have synced).
    synced: bool,
}

/// The pools, shared between their sources and the node-report service.
#[derive(Clone, Debug)]
pub struct PoolDirectory {
    state: Arc<RwLock<DirectoryState>>,
}

impl Default for PoolDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolDirectory {
    /// An empty directory, marked synced (static configuration is complete from the start).
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(DirectoryState {
                pools: BTreeMap::new(),
                synced: true,
            })),
        }
    }

    /// One pool made of every endpoint of the table: the usual EPP, which serves one pool
    /// (`--pool-name` and `--pool-vip`).
    pub fn single(name: impl Into<String>, vip: Option<SocketAddr>) -> Self {
        let directory = Self::new();
        directory.set_pool(PoolEntry::new(name, vip, PoolMembers::All));
        directory
    }

    /// Adds or replaces a pool (by name).
    pub fn set_pool(&self, entry: PoolEntry) {
        self.state.write().pools.insert(entry.name.clone(), entry);
    }

    /// Removes a pool; returns whether it was there.
    pub fn remove_pool(&self, name: &str) -> bool {
        self.state.write().pools.remove(name).is_some()
    }

    /// Marks whether the directory is complete. While it is not, agents are told so and keep
    /// the pools they learnt earlier.
    pub fn set_synced(&self, synced: bool) {
        self.state.write().synced = synced;
    }

    pub fn synced(&self) -> bool {
        self.state.read().synced
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Vec<PoolEntry> {
        self.state.read().pools.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_from_flags() {
        let entry: PoolEntry = "llama=10.96.0.10:8000".parse().unwrap();
        assert_eq!(entry.name, "llama");
        assert_eq!(entry.vip, Some("10.96.0.10:8000".parse().unwrap()));
        assert_eq!("llama".parse::<PoolEntry>().unwrap().vip, None);
        let err = "=10.0.0.1:80".parse::<PoolEntry>().unwrap_err();
        assert!(matches!(err, PoolEntryError::EmptyName(_)));
        let err = "llama=10.96.0.10".parse::<PoolEntry>().unwrap_err();
        assert!(err.to_string().contains("not an ip:port"), "{err}");
    }

    #[test]
    fn pools_are_replaced_by_name_and_removed() {
        let directory = PoolDirectory::single("a", None);
        directory.set_pool("a=10.96.0.1:80".parse().unwrap());
        directory.set_pool("b".parse().unwrap());
        let pools = directory.pools();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].vip, Some("10.96.0.1:80".parse().unwrap()));
        assert!(directory.remove_pool("b"));
        assert!(!directory.remove_pool("b"));
        assert!(directory.synced());
        directory.set_synced(false);
        assert!(!directory.synced());
    }
}
