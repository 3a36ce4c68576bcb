//! eBPF connect-time steering: a TCP `connect()` to a pool's virtual address (VIP) is rewritten
//! in the kernel to one backend, chosen by weight; `getpeername()` still shows the VIP; live
//! connections per backend are counted in BPF. Nothing runs per packet.
//!
//! Layout and design: `docs/dataplane.md`. The API the node agent uses:
//! - [`Dataplane::load`] attaches to a cgroup (or adopts the pins a previous run left),
//!   [`Dataplane::open_pinned`] opens an existing attachment, [`Dataplane::detach`] removes it;
//! - [`Dataplane::set_pool`] / [`Dataplane::remove_pool`] program pools (cheap when nothing
//!   changed); [`Dataplane::pools`], [`Dataplane::connection_counts`] and
//!   [`Dataplane::stats`] read the state back.
pub mod addr;
mod attach;
pub mod cgroup;
pub mod cli;
mod error;
mod maps;
pub mod pins;
mod pools;
pub mod probe;
pub mod scratch;
pub mod spec;
pub mod table;

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use parking_lot::Mutex;
pub use router_common::ConnCount;
use router_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, Backend, DataplaneMeta, LAYOUT_VERSION, META_MAGIC, PoolInfo,
    SOCK_COUNTED, STAT_CONN_CLOSED, STAT_CONN_OPENED, STAT_CONNECT_REFUSED,
    STAT_CONNECT_TRANSLATED, STAT_PEER_REWRITTEN, STAT_STORAGE_FAILED, STAT_TABLE_MISS,
};
use serde::Serialize;

use self::{addr::socket_addr, maps::Maps, pins::PinLayout};
pub use self::{
    error::DataplaneError,
    pins::DEFAULT_PIN_ROOT,
    spec::{BackendParseError, BackendSpec, PoolSpecError},
};

/// The compiled BPF object (router-ebpf), embedded at build time.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// Where to attach and where to pin.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// cgroup v2 directory whose sockets are steered (absolute, or relative to the cgroup v2
    /// mount). Sockets of descendant cgroups are steered too.
    pub cgroup: PathBuf,
    /// bpffs directory for pins; the layout lives in `<pin_root>/v<N>/`.
    pub pin_root: PathBuf,
}

impl DataplaneConfig {
    /// `cgroup` with the default pin root.
    pub fn new(cgroup: impl Into<PathBuf>) -> Self {
        Self {
            cgroup: cgroup.into(),
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
        }
    }
}

/// How [`Dataplane::load`] got its attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Nothing was pinned: programs loaded, attached and pinned now.
    Attached,
    /// This build's programs were already attached: pins adopted, nothing reloaded.
    Adopted,
    /// Pins of another build (or an incomplete attachment) were found: this build's programs
    /// replaced the links make-before-break, keeping the maps and their contents.
    Replaced,
}

/// A backend's state as the maps hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Active,
    Down,
    /// Removed from its pool; listed while its connections drain.
    Retired,
}

impl BackendState {
    fn from_raw(state: u8) -> Self {
        match state {
            BACKEND_ACTIVE => Self::Active,
            BACKEND_DOWN => Self::Down,
            _ => Self::Retired,
        }
    }
}

/// Opened / closed connection counters of one backend; `live` = opened - closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ConnView {
    pub opened: u64,
    pub closed: u64,
    pub live: u64,
}

impl From<ConnCount> for ConnView {
    fn from(count: ConnCount) -> Self {
        Self {
            opened: count.opened,
            closed: count.closed,
            live: count.live(),
        }
    }
}

/// One backend of a pool, read from the maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
    pub conns: ConnView,
}

/// One pool, read from the maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolView {
    pub vip: SocketAddr,
    pub pool_id: u32,
    /// Bumped on every table swap.
    pub generation: u32,
    /// Filled slots of the live table; 0 = connects are refused.
    pub active_slots: u32,
    /// Sorted by address; retired backends last.
    pub backends: Vec<BackendView>,
}

/// One backend as [`Dataplane::set_pool`] programmed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub id: u32,
    pub weight: u32,
    pub down: bool,
    /// Slots of the selection table this backend holds.
    pub slots: usize,
}

/// The outcome of [`Dataplane::set_pool`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub vip: SocketAddr,
    pub pool_id: u32,
    pub generation: u32,
    /// Whether anything was written (false: the pool already was exactly this).
    pub changed: bool,
    /// Whether a new selection table was swapped in.
    pub table_swapped: bool,
    pub backends: Vec<BackendStatus>,
}

/// Counters of BPF events, summed over CPUs since the maps were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DataplaneStats {
    pub connects_translated: u64,
    pub connects_refused: u64,
    pub peers_rewritten: u64,
    pub table_misses: u64,
    pub storage_failures: u64,
    pub conns_opened: u64,
    pub conns_closed: u64,
}

/// What the dataplane recorded for one socket (from its socket storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SocketSteering {
    pub vip: SocketAddr,
    pub backend: SocketAddr,
    pub backend_id: u32,
    /// Counted as an open connection of the backend.
    pub counted: bool,
}

/// Userspace view of the maps a writer keeps between calls, so an unchanged `set_pool` costs
/// one map read. Reloaded when the meta record's write sequence says another writer wrote.
#[derive(Debug, Default)]
struct Cache {
    seq: Option<u64>,
    pools: BTreeMap<SocketAddr, PoolInfo>,
    backends: BTreeMap<u32, Backend>,
}

/// A handle on an attached dataplane (its pinned maps). Dropping it leaves the attachment in
/// place; [`Dataplane::detach`] removes it.
#[derive(Debug)]
pub struct Dataplane {
    layout: PinLayout,
    maps: Maps,
    cache: Mutex<Cache>,
    origin: Origin,
}

impl Dataplane {
    /// Attaches the programs to `config.cgroup` and pins everything under `config.pin_root`,
    /// or adopts what a previous run pinned there for the same cgroup (see [`Origin`]).
    ///
    /// Fails with a message saying what to do when bpffs is not mounted, the cgroup is not a
    /// cgroup v2 directory, the pins belong to another cgroup or layout, or the kernel rejects
    /// a program (the verifier log is included).
    pub fn load(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let layout = PinLayout::new(&config.pin_root);
        layout.ensure_bpffs()?;
        let cgroup = cgroup::resolve(&config.cgroup)?;
        let cgroup_id = cgroup::cgroup_id(&cgroup)?;
        let object_hash = object_hash();
        let meta_path = layout.map(&pins::META);

        let origin = if meta_path.exists() {
            let meta_map = pins::open_checked(&meta_path, &pins::META)?;
            let meta_map = aya::maps::Array::<_, DataplaneMeta>::try_from(
                aya::maps::Map::from_map_data(meta_map)
                    .map_err(DataplaneError::map(pins::META.pin_name))?,
            )
            .map_err(DataplaneError::map(pins::META.pin_name))?;
            let meta = maps::read_meta(&meta_map, &layout)?;
            if meta.cgroup_id != cgroup_id {
                return Err(DataplaneError::OtherCgroup {
                    dir: layout.dir().to_path_buf(),
                    attached: meta.cgroup_id,
                    requested: cgroup,
                });
            }
            for spec in &pins::ALL_MAPS {
                pins::open_checked(&layout.map(spec), spec)?;
            }
            let complete = attach::pinned_links(&layout).len() == pins::PROGRAMS.len();
            if complete && meta.object_hash == object_hash {
                Origin::Adopted
            } else {
                attach::attach_programs(&layout, &cgroup)?;
                let mut maps = Maps::open(&layout)?;
                maps.write_meta(&DataplaneMeta {
                    object_hash,
                    write_seq: meta.write_seq.wrapping_add(1),
                    ..meta
                })?;
                Origin::Replaced
            }
        } else {
            if layout.dir().exists() {
                // No meta: an attach was interrupted before it completed. Start clean.
                tracing::warn!(dir = %layout.dir().display(), "removing an incomplete attachment");
                attach::detach_pinned(&layout)?;
            }
            layout.create_dirs()?;
            if let Err(err) = attach::attach_programs(&layout, &cgroup)
                .and_then(|()| create_userspace_maps(&layout, cgroup_id, object_hash))
            {
                if let Err(cleanup) = attach::detach_pinned(&layout) {
                    tracing::warn!(error = %cleanup, "cleanup after a failed attach failed");
                }
                return Err(err);
            }
            Origin::Attached
        };
        let maps = Maps::open(&layout)?;
        tracing::info!(
            cgroup = %cgroup.display(),
            pins = %layout.dir().display(),
            origin = ?origin,
            "dataplane ready"
        );
        Ok(Self {
            layout,
            maps,
            cache: Mutex::new(Cache::default()),
            origin,
        })
    }

    /// Opens the dataplane pinned under `pin_root` without attaching anything (the programs
    /// keep running from their pinned links). Fails with [`DataplaneError::NotAttached`] when
    /// nothing complete is pinned there.
    pub fn open_pinned(pin_root: impl AsRef<Path>) -> Result<Self, DataplaneError> {
        let layout = PinLayout::new(pin_root.as_ref());
        layout.ensure_bpffs()?;
        if !layout.map(&pins::META).exists() {
            return Err(DataplaneError::NotAttached {
                dir: layout.dir().to_path_buf(),
            });
        }
        let maps = Maps::open(&layout)?;
        Ok(Self {
            layout,
            maps,
            cache: Mutex::new(Cache::default()),
            origin: Origin::Adopted,
        })
    }

    /// Detaches the programs and removes every pin of the layout under `pin_root`, complete or
    /// not. Returns the number of pins removed (0: nothing was there).
    pub fn detach_pinned(pin_root: impl AsRef<Path>) -> Result<usize, DataplaneError> {
        let layout = PinLayout::new(pin_root.as_ref());
        layout.ensure_bpffs()?;
        attach::detach_pinned(&layout)
    }

    /// Detaches the programs from the cgroup and removes the pins. Established connections
    /// keep their backend; `getpeername` on them shows the backend from then on.
    pub fn detach(self) -> Result<usize, DataplaneError> {
        let Self { layout, maps, .. } = self;
        drop(maps);
        attach::detach_pinned(&layout)
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// `<pin root>/v<N>`.
    pub fn pin_dir(&self) -> &Path {
        self.layout.dir()
    }

    /// The cgroup id the programs are attached to.
    pub fn cgroup_id(&self) -> Result<u64, DataplaneError> {
        Ok(self.maps.read_meta(&self.layout)?.cgroup_id)
    }

    /// Pin names of the links currently pinned (all five when fully attached).
    pub fn attached_links(&self) -> Vec<&'static str> {
        attach::pinned_links(&self.layout)
    }

    /// Program name and kernel program id behind each pinned link (for `bpftool prog show id`
    /// and the kernel's run-time statistics).
    pub fn attached_programs(&self) -> Result<Vec<(&'static str, u32)>, DataplaneError> {
        let mut programs = Vec::new();
        for pin in attach::pinned_links(&self.layout) {
            let path = self.layout.link(pin);
            let link = aya::programs::links::PinnedLink::from_pin(&path).map_err(|error| {
                DataplaneError::Link {
                    path: path.clone(),
                    error,
                }
            })?;
            // Dropping this handle only closes our descriptor: the pin keeps the link.
            let info = aya::programs::links::FdLink::from(link)
                .info()
                .map_err(|error| DataplaneError::Link { path, error })?;
            programs.push((pin, info.program_id()));
        }
        Ok(programs)
    }

    /// Every pool with its backends and their connection counters, read from the maps.
    pub fn pools(&self) -> Result<Vec<PoolView>, DataplaneError> {
        let mut backends_by_pool: HashMap<u32, Vec<BackendView>> = HashMap::new();
        for entry in self.maps.backends.iter() {
            let (id, backend) = entry.map_err(DataplaneError::map(pins::BACKENDS.pin_name))?;
            backends_by_pool
                .entry(backend.pool_id)
                .or_default()
                .push(BackendView {
                    id,
                    addr: socket_addr(backend.addr, backend.port_be),
                    weight: backend.weight,
                    state: BackendState::from_raw(backend.state),
                    conns: self.conns(id)?.into(),
                });
        }
        let mut pools = Vec::new();
        for entry in self.maps.pools.iter() {
            let (key, info) = entry.map_err(DataplaneError::map(pins::POOLS.pin_name))?;
            let mut backends = backends_by_pool.remove(&info.pool_id).unwrap_or_default();
            backends.sort_by_key(|b| (b.state == BackendState::Retired, b.addr));
            pools.push(PoolView {
                vip: addr::key_addr(&key),
                pool_id: info.pool_id,
                generation: info.generation,
                active_slots: info.active_slots,
                backends,
            });
        }
        pools.sort_by_key(|pool| pool.vip);
        Ok(pools)
    }

    /// Slots each backend holds in the pool's live selection table, read back from the kernel
    /// (64 KiB per pool: for `show` and checks, not for hot paths). Empty when the pool
    /// refuses connects.
    pub fn table_shares(
        &self,
        vip: SocketAddr,
    ) -> Result<BTreeMap<SocketAddr, usize>, DataplaneError> {
        let vip = addr::canonical(vip);
        let key = addr::pool_key(vip);
        let info = match self.maps.pools.get(&key, 0) {
            Ok(info) => info,
            Err(aya::maps::MapError::KeyNotFound) => {
                return Err(DataplaneError::PoolNotFound(vip));
            }
            Err(source) => return Err(DataplaneError::map(pins::POOLS.pin_name)(source)),
        };
        if info.active_slots == 0 {
            return Ok(BTreeMap::new());
        }
        let inner = self
            .maps
            .selection
            .get(&info.pool_id, 0)
            .map_err(DataplaneError::map(pins::SELECTION.pin_name))?;
        let table = inner
            .get(&0, 0)
            .map_err(DataplaneError::map(pins::SELECTION.pin_name))?;
        Ok(table::table_shares(&table)
            .into_values()
            .map(|(backend, slots)| (socket_addr(backend.addr, backend.port_be), slots))
            .collect())
    }

    /// Live connection counters per backend address (summed over pools that share an
    /// address, draining backends included): the router's instant load signal.
    pub fn connection_counts(&self) -> Result<HashMap<SocketAddr, ConnCount>, DataplaneError> {
        let backends: Vec<(u32, Backend)> = {
            let mut cache = self.cache.lock();
            self.refresh(&mut cache)?;
            cache.backends.iter().map(|(id, b)| (*id, *b)).collect()
        };
        let mut counts: HashMap<SocketAddr, ConnCount> = HashMap::new();
        for (id, backend) in backends {
            let count = self.conns(id)?;
            let total = counts
                .entry(socket_addr(backend.addr, backend.port_be))
                .or_default();
            total.opened += count.opened;
            total.closed += count.closed;
        }
        Ok(counts)
    }

    /// BPF event counters, summed over CPUs.
    pub fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        let stat = |index: u32| -> Result<u64, DataplaneError> {
            let values = self
                .maps
                .stats
                .get(&index, 0)
                .map_err(DataplaneError::map(pins::STATS.pin_name))?;
            Ok(values.iter().sum())
        };
        Ok(DataplaneStats {
            connects_translated: stat(STAT_CONNECT_TRANSLATED)?,
            connects_refused: stat(STAT_CONNECT_REFUSED)?,
            peers_rewritten: stat(STAT_PEER_REWRITTEN)?,
            table_misses: stat(STAT_TABLE_MISS)?,
            storage_failures: stat(STAT_STORAGE_FAILED)?,
            conns_opened: stat(STAT_CONN_OPENED)?,
            conns_closed: stat(STAT_CONN_CLOSED)?,
        })
    }

    /// What the dataplane recorded for `socket` (None: it was not steered).
    pub fn socket_steering(
        &self,
        socket: &impl AsRawFd,
    ) -> Result<Option<SocketSteering>, DataplaneError> {
        match self.maps.sock_lb.get(socket, 0) {
            Ok(state) if state.backend_id != 0 => Ok(Some(SocketSteering {
                vip: socket_addr(state.vip, state.vport_be),
                backend: socket_addr(state.backend, state.bport_be),
                backend_id: state.backend_id,
                counted: state.flags & SOCK_COUNTED != 0,
            })),
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::map(pins::SOCK_LB.pin_name)(source)),
        }
    }

    fn conns(&self, id: u32) -> Result<ConnCount, DataplaneError> {
        self.maps
            .conns
            .get(&id, 0)
            .map_err(DataplaneError::map(pins::CONNS.pin_name))
    }

    /// Reloads the cache when another writer changed the maps since it was filled.
    fn refresh(&self, cache: &mut Cache) -> Result<(), DataplaneError> {
        let seq = self.maps.read_meta(&self.layout)?.write_seq;
        if cache.seq == Some(seq) {
            return Ok(());
        }
        cache.pools.clear();
        for entry in self.maps.pools.iter() {
            let (key, info) = entry.map_err(DataplaneError::map(pins::POOLS.pin_name))?;
            cache.pools.insert(addr::key_addr(&key), info);
        }
        cache.backends.clear();
        for entry in self.maps.backends.iter() {
            let (id, backend) = entry.map_err(DataplaneError::map(pins::BACKENDS.pin_name))?;
            cache.backends.insert(id, backend);
        }
        cache.seq = Some(seq);
        Ok(())
    }
}

/// Creates and pins the maps only userspace uses: BACKENDS, then META, written last, so its
/// presence means "attached".
fn create_userspace_maps(
    layout: &PinLayout,
    cgroup_id: u64,
    object_hash: u64,
) -> Result<(), DataplaneError> {
    let backends = aya::maps::HashMap::<_, u32, Backend>::create(
        pins::BACKENDS.max_entries,
        pins::BACKENDS.flags,
    )
    .map_err(DataplaneError::map(pins::BACKENDS.pin_name))?;
    let path = layout.map(&pins::BACKENDS);
    backends
        .pin(&path)
        .map_err(|error| DataplaneError::Pin { path, error })?;

    let mut meta = aya::maps::Array::<_, DataplaneMeta>::create(1, 0)
        .map_err(DataplaneError::map(pins::META.pin_name))?;
    meta.set(
        0,
        DataplaneMeta {
            magic: META_MAGIC,
            layout: LAYOUT_VERSION,
            _pad: 0,
            cgroup_id,
            object_hash,
            write_seq: 0,
        },
        0,
    )
    .map_err(DataplaneError::map(pins::META.pin_name))?;
    let path = layout.map(&pins::META);
    meta.pin(&path)
        .map_err(|error| DataplaneError::Pin { path, error })
}

/// Identifies this build's BPF object (adoption replaces programs of another build).
fn object_hash() -> u64 {
    xxhash_rust::xxh3::xxh3_64(BPF_OBJECT)
}

/// `f_type` of the filesystem holding `path`.
pub(crate) fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid NUL-terminated path and a buffer of the right type for statfs to fill.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    // `f_type` is `__fsword_t`: i64 here, 32-bit on some targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_handle_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::Dataplane>();
    }
}
