//! The pinned layout under bpffs and the checks made before adopting it.
//!
//! ```text
//! <pin root>/v1/maps/{pools,backends,selection,sock_lb,conns,stats,meta}
//! <pin root>/v1/links/{connect4,connect6,getpeername4,getpeername6,sockops}
//! ```
//! The layout version is part of the path: a build with another map layout uses another
//! directory and never reads these maps. Within a version each pinned map's type, key and
//! value sizes, capacity and flags are still compared with what this build expects (aya reuses
//! any existing pin without checking).
use std::{
    fs::{self, File},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use router_common::{
    Backend, ConnCount, DataplaneMeta, LAYOUT_VERSION, MAX_BACKENDS, MAX_POOLS, PoolInfo, PoolKey,
    STAT_COUNT, SockLb,
};

use super::{error::DataplaneError, fs_magic};

/// Where the dataplane pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/switchyard";

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_F_NO_PREALLOC: u32 = 1;

/// One map of the layout: its name in the BPF object, its pin file, and its shape.
#[derive(Debug, Clone, Copy)]
pub struct MapSpec {
    /// Name in the BPF object (`None` for maps userspace creates itself).
    pub object_name: Option<&'static str>,
    pub pin_name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

const fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

pub const POOLS: MapSpec = MapSpec {
    object_name: Some("POOLS"),
    pin_name: "pools",
    map_type: MapType::Hash,
    key_size: size32::<PoolKey>(),
    value_size: size32::<PoolInfo>(),
    max_entries: MAX_POOLS,
    flags: BPF_F_NO_PREALLOC,
};
/// Userspace bookkeeping (ids, states, weights): BPF reads backends from the selection table.
pub const BACKENDS: MapSpec = MapSpec {
    object_name: None,
    pin_name: "backends",
    map_type: MapType::Hash,
    key_size: 4,
    value_size: size32::<Backend>(),
    max_entries: MAX_BACKENDS,
    flags: BPF_F_NO_PREALLOC,
};
pub const SELECTION: MapSpec = MapSpec {
    object_name: Some("SELECTION"),
    pin_name: "selection",
    map_type: MapType::ArrayOfMaps,
    key_size: 4,
    value_size: 4,
    max_entries: MAX_POOLS,
    flags: 0,
};
pub const SOCK_LB: MapSpec = MapSpec {
    object_name: Some("SOCK_LB"),
    pin_name: "sock_lb",
    map_type: MapType::SkStorage,
    key_size: 4,
    value_size: size32::<SockLb>(),
    max_entries: 0,
    flags: BPF_F_NO_PREALLOC,
};
pub const CONNS: MapSpec = MapSpec {
    object_name: Some("CONNS"),
    pin_name: "conns",
    map_type: MapType::Array,
    key_size: 4,
    value_size: size32::<ConnCount>(),
    max_entries: MAX_BACKENDS,
    flags: 0,
};
pub const STATS: MapSpec = MapSpec {
    object_name: Some("STATS"),
    pin_name: "stats",
    map_type: MapType::PerCpuArray,
    key_size: 4,
    value_size: 8,
    max_entries: STAT_COUNT,
    flags: 0,
};
pub const META: MapSpec = MapSpec {
    object_name: None,
    pin_name: "meta",
    map_type: MapType::Array,
    key_size: 4,
    value_size: size32::<DataplaneMeta>(),
    max_entries: 1,
    flags: 0,
};

/// Every map of the layout. Those without an object name are created by userspace after the
/// programs are attached; META last, as its presence means the attach completed.
pub const ALL_MAPS: [MapSpec; 7] = [POOLS, SELECTION, SOCK_LB, CONNS, STATS, BACKENDS, META];

/// Programs of the BPF object and the pin file of each one's cgroup link, in attach order:
/// counting and reverse translation are in place before the first connect is steered.
pub const PROGRAMS: [(&str, &str); 5] = [
    ("sy_sockops", "sockops"),
    ("sy_getpeername4", "getpeername4"),
    ("sy_getpeername6", "getpeername6"),
    ("sy_connect4", "connect4"),
    ("sy_connect6", "connect6"),
];

/// Paths of one pin root's current layout version.
#[derive(Debug, Clone)]
pub struct PinLayout {
    root: PathBuf,
    dir: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let dir = root.join(format!("v{LAYOUT_VERSION}"));
        Self { root, dir }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/v<LAYOUT_VERSION>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn map(&self, spec: &MapSpec) -> PathBuf {
        self.maps_dir().join(spec.pin_name)
    }

    pub fn link(&self, pin_name: &str) -> PathBuf {
        self.links_dir().join(pin_name)
    }

    /// Where a replacement link waits before it is renamed over the live one (bpffs rejects
    /// names with a dot, hence the underscore).
    pub fn staged_link(&self, pin_name: &str) -> PathBuf {
        self.links_dir().join(format!("{pin_name}_staged"))
    }

    /// Fails with a message saying what to mount when the pin root is not on bpffs.
    pub fn ensure_bpffs(&self) -> Result<(), DataplaneError> {
        let mut probe = self.root.as_path();
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        let magic = fs_magic(probe).map_err(|err| DataplaneError::io("inspecting", probe, err))?;
        if magic == BPF_FS_MAGIC {
            return Ok(());
        }
        // Under /sys/fs/bpf the usual cause is bpffs not being mounted at all: say what to run.
        let default_mount = Path::new("/sys/fs/bpf");
        if self.root.starts_with(default_mount) {
            Err(DataplaneError::BpffsNotMounted {
                path: default_mount.to_path_buf(),
            })
        } else {
            Err(DataplaneError::PinRootNotBpffs {
                root: self.root.clone(),
            })
        }
    }

    /// Creates `<dir>/maps` and `<dir>/links`.
    pub fn create_dirs(&self) -> Result<(), DataplaneError> {
        for dir in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|err| DataplaneError::io("creating pin directory", dir, err))?;
        }
        Ok(())
    }

    /// Removes the version directory and, if then empty, the root. Missing files are fine.
    pub fn remove_dirs(&self) -> Result<(), DataplaneError> {
        for dir in [self.maps_dir(), self.links_dir(), self.dir.clone()] {
            remove_dir_if_exists(&dir)?;
        }
        // Other layout versions may still live under the root: leave it if not empty.
        if fs::remove_dir(&self.root).is_err() {
            tracing::debug!(root = %self.root.display(), "pin root kept (not empty)");
        }
        Ok(())
    }

    /// Takes the writer lock (an exclusive `flock` on the version directory): one writer at a
    /// time, so concurrent `set_pool` calls from the agent and the CLI cannot interleave.
    pub fn lock(&self) -> Result<WriteLock, DataplaneError> {
        let dir = File::open(&self.dir)
            .map_err(|err| DataplaneError::io("opening pin directory", &self.dir, err))?;
        // SAFETY: flock on an fd we own; blocks until the other writer is done.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(DataplaneError::io(
                "locking pin directory",
                &self.dir,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(WriteLock { _dir: dir })
    }
}

/// Held while writing; the lock drops with the descriptor.
#[derive(Debug)]
pub struct WriteLock {
    _dir: File,
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), DataplaneError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(DataplaneError::io("removing pin directory", dir, err)),
    }
}

/// Opens a pinned map and checks its shape against `spec`.
pub fn open_checked(path: &Path, spec: &MapSpec) -> Result<MapData, DataplaneError> {
    let map = MapData::from_pin(path).map_err(|source| match &source {
        aya::maps::MapError::SyscallError(sys)
            if sys.io_error.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            DataplaneError::PermissionDenied {
                what: format!("opening pinned map {}", path.display()),
            }
        }
        _ => DataplaneError::Map {
            map: spec.pin_name,
            error: source,
        },
    })?;
    check_shape(path, &map, spec)?;
    Ok(map)
}

/// Compares a map's kernel info with `spec`; a mismatch is a [`DataplaneError::StalePin`].
pub fn check_shape(path: &Path, map: &MapData, spec: &MapSpec) -> Result<(), DataplaneError> {
    let info = map.info().map_err(DataplaneError::map(spec.pin_name))?;
    let map_type = info
        .map_type()
        .map_err(DataplaneError::map(spec.pin_name))?;
    let found = (
        map_type,
        info.key_size(),
        info.value_size(),
        info.max_entries(),
        info.map_flags(),
    );
    let expected = (
        spec.map_type,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        spec.flags,
    );
    if found != expected {
        return Err(DataplaneError::StalePin {
            path: path.to_path_buf(),
            detail: format!(
                "expected {:?} key {} value {} entries {} flags {:#x}, found {:?} key {} value {} entries {} flags {:#x}",
                expected.0,
                expected.1,
                expected.2,
                expected.3,
                expected.4,
                found.0,
                found.1,
                found.2,
                found.3,
                found.4
            ),
        });
    }
    Ok(())
}
