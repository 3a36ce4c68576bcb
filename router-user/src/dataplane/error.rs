//! Everything the dataplane API can fail with, each naming what failed and, where there is one,
//! what to do about it.
use std::{io, net::SocketAddr, path::PathBuf};

use super::spec::PoolSpecError;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "bpffs is not mounted at {path}: run `mount -t bpf bpf {path}` as root (or pick a pin root on a bpf filesystem)"
    )]
    BpffsNotMounted { path: PathBuf },

    #[error(
        "pin root {root} is not on a bpf filesystem: use a directory under a bpffs mount (such as /sys/fs/bpf) or mount one there with `mount -t bpf bpf {root}`"
    )]
    PinRootNotBpffs { root: PathBuf },

    #[error("no cgroup v2 hierarchy is mounted (looked for a `cgroup2` line in /proc/mounts)")]
    NoCgroup2,

    #[error("{path} is not a cgroup v2 directory (cgroup v2 is mounted at {mount})")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },

    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    #[error(
        "{what}: permission denied; the dataplane needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    )]
    PermissionDenied { what: String },

    #[error("cannot parse the embedded BPF object: {0}")]
    Object(aya::EbpfError),

    #[error("the embedded BPF object has no program `{0}` (build mismatch)")]
    MissingProgram(&'static str),

    #[error("the embedded BPF object has no map `{0}` (build mismatch)")]
    MissingMap(&'static str),

    #[error("the kernel rejected program `{program}`: {error}\nverifier log:\n{verifier_log}")]
    Verifier {
        program: &'static str,
        error: io::Error,
        verifier_log: String,
    },

    #[error("loading program `{program}`: {error}")]
    Program {
        program: &'static str,
        error: aya::programs::ProgramError,
    },

    #[error("attaching `{program}` to cgroup {cgroup}: {error}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        error: aya::programs::ProgramError,
    },

    #[error("pinning {path}: {error}")]
    Pin {
        path: PathBuf,
        error: aya::pin::PinError,
    },

    #[error("opening pinned link {path}: {error}")]
    Link {
        path: PathBuf,
        error: aya::programs::links::LinkError,
    },

    #[error("map {map}: {error}")]
    Map {
        map: &'static str,
        error: aya::maps::MapError,
    },

    #[error(
        "no dataplane is attached under {dir}: run `switchyard dataplane attach --cgroup PATH`"
    )]
    NotAttached { dir: PathBuf },

    #[error(
        "pinned map {path} does not match this build's layout ({detail}); it was left by another version: detach it (`switchyard dataplane detach --pin-root ...`) before attaching"
    )]
    StalePin { path: PathBuf, detail: String },

    #[error(
        "the dataplane under {dir} is attached to another cgroup (id {attached}), not {requested}; detach it first or use another --pin-root"
    )]
    OtherCgroup {
        dir: PathBuf,
        attached: u64,
        requested: PathBuf,
    },

    #[error("invalid pool {vip}: {reason}")]
    InvalidPool {
        vip: SocketAddr,
        reason: Box<PoolSpecError>,
    },

    #[error("no pool has the virtual address {0}")]
    PoolNotFound(SocketAddr),

    #[error("all {max} pools are in use: remove one first")]
    PoolsFull { max: u32 },

    #[error("no free backend id: all {max} are in use or still draining connections")]
    BackendIdsExhausted { max: u32 },
}

impl DataplaneError {
    /// An I/O failure on `path`; EPERM/EACCES become [`DataplaneError::PermissionDenied`].
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            return Self::PermissionDenied {
                what: format!("{what} {}", path.display()),
            };
        }
        Self::Io {
            what,
            path,
            error: source,
        }
    }

    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |error| Self::Map { map, error }
    }

    /// Whether this failure means "this machine cannot run BPF here" (not root, no bpffs, no
    /// cgroup v2), as opposed to a bug or bad input; tests use it to skip outside CI.
    pub fn is_environment(&self) -> bool {
        match self {
            Self::BpffsNotMounted { .. }
            | Self::PinRootNotBpffs { .. }
            | Self::NoCgroup2
            | Self::PermissionDenied { .. } => true,
            Self::Attach { error, .. } | Self::Program { error, .. } => is_eperm_program(error),
            Self::Map { error, .. } => is_eperm_map(error),
            _ => false,
        }
    }
}

fn is_eperm(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied
}

fn is_eperm_map(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::CreateError { io_error, .. } => is_eperm(io_error),
        aya::maps::MapError::SyscallError(sys) => is_eperm(&sys.io_error),
        _ => false,
    }
}

fn is_eperm_program(err: &aya::programs::ProgramError) -> bool {
    match err {
        aya::programs::ProgramError::SyscallError(sys) => is_eperm(&sys.io_error),
        aya::programs::ProgramError::LoadError { io_error, .. } => is_eperm(io_error),
        _ => false,
    }
}
