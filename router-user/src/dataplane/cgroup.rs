//! cgroup v2 plumbing: where the hierarchy is mounted (never assumed: hybrid hosts mount it at
//! `/sys/fs/cgroup/unified`), checking a path is a cgroup v2 directory, its id, moving a process
//! in, and short-lived cgroups for demos, probes and tests.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{error::DataplaneError, fs_magic};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Mount point of the cgroup v2 hierarchy, from `/proc/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf, DataplaneError> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|err| DataplaneError::io("reading", "/proc/mounts", err))?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
        })
        .next()
        .ok_or(DataplaneError::NoCgroup2)
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(code) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(code));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Resolves a cgroup given as an absolute path or relative to the cgroup v2 mount, and checks
/// that it is a cgroup v2 directory.
pub fn resolve(path: &Path) -> Result<PathBuf, DataplaneError> {
    let mount = cgroup2_mount()?;
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        mount.join(path)
    };
    match fs_magic(&full) {
        Ok(magic) if magic == CGROUP2_SUPER_MAGIC => Ok(full),
        Ok(_) => Err(DataplaneError::NotCgroup2 { path: full, mount }),
        Err(err) => Err(DataplaneError::io("opening cgroup", full, err)),
    }
}

/// The cgroup id of a cgroup v2 directory (its inode number, as `bpf_get_current_cgroup_id`
/// and link info report it).
pub fn cgroup_id(path: &Path) -> Result<u64, DataplaneError> {
    fs::metadata(path)
        .map(|meta| meta.ino())
        .map_err(|err| DataplaneError::io("reading cgroup", path, err))
}

/// The cgroup v2 directory the calling process belongs to (from `/proc/self/cgroup`).
pub fn current() -> Result<PathBuf, DataplaneError> {
    let mount = cgroup2_mount()?;
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|err| DataplaneError::io("reading", "/proc/self/cgroup", err))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or(DataplaneError::NoCgroup2)?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// Moves process `pid` (0 = the caller) into the cgroup. Sockets it already has stay where they
/// were created: join before opening any socket that should be steered.
pub fn join(path: &Path, pid: u32) -> Result<(), DataplaneError> {
    let procs = path.join("cgroup.procs");
    fs::write(&procs, pid.to_string())
        .map_err(|err| DataplaneError::io("moving a process into", procs, err))
}

/// A cgroup v2 directory created for a bounded job (demo, probe, test) and removed on drop.
#[derive(Debug)]
pub struct TempCgroup {
    path: PathBuf,
}

impl TempCgroup {
    /// Creates `<cgroup2 mount>/<name>`; fails if it exists (names must be unique).
    pub fn create(name: &str) -> Result<Self, DataplaneError> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir(&path).map_err(|err| DataplaneError::io("creating cgroup", &path, err))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the cgroup; it must hold no process any more.
    pub fn remove(mut self) -> Result<(), DataplaneError> {
        let path = std::mem::take(&mut self.path);
        fs::remove_dir(&path).map_err(|err| DataplaneError::io("removing cgroup", path, err))
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty()
            && let Err(err) = fs::remove_dir(&self.path)
        {
            tracing::warn!(cgroup = %self.path.display(), error = %err, "cannot remove cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/mnt/x\\"), "/mnt/x\\");
    }
}
