//! A temporary cgroup and pin directory for steering this process's own connects (the demo,
//! the benchmarks): it remembers the cgroup the process came from and, whatever happens, moves
//! back there, detaches the programs and removes the cgroup when dropped.
use std::path::{Path, PathBuf};

use super::cgroup::{self, TempCgroup};
use super::{Dataplane, DataplaneError};

/// The cgroup `<cgroup2 mount>/<name>` and the pin root `/sys/fs/bpf/<name>`.
#[derive(Debug)]
pub struct SteeringScratch {
    home: PathBuf,
    cgroup: Option<TempCgroup>,
    pin_root: PathBuf,
}

impl SteeringScratch {
    /// Creates both; `name` must be unique (include the pid). Pins a crashed earlier run left
    /// under the same name are removed first.
    pub fn create(name: &str) -> Result<Self, DataplaneError> {
        let home = cgroup::current()?;
        let pin_root = PathBuf::from("/sys/fs/bpf").join(name);
        if pin_root.exists() {
            Dataplane::detach_pinned(&pin_root)?;
        }
        Ok(Self {
            home,
            cgroup: Some(TempCgroup::create(name)?),
            pin_root,
        })
    }

    pub fn cgroup(&self) -> &Path {
        self.cgroup.as_ref().map_or(Path::new(""), TempCgroup::path)
    }

    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Moves this process into the cgroup: sockets it opens from now on are steered.
    pub fn enter(&self) -> Result<(), DataplaneError> {
        cgroup::join(self.cgroup(), 0)
    }

    /// Moves this process back to the cgroup it came from.
    pub fn leave(&self) -> Result<(), DataplaneError> {
        cgroup::join(&self.home, 0)
    }
}

impl Drop for SteeringScratch {
    fn drop(&mut self) {
        if let Err(err) = self.leave() {
            tracing::warn!(error = %err, "cannot move back to the original cgroup");
        }
        if self.pin_root.exists()
            && let Err(err) = Dataplane::detach_pinned(&self.pin_root)
        {
            tracing::warn!(error = %err, "cannot detach the scratch dataplane");
        }
        if let Some(cgroup) = self.cgroup.take()
            && let Err(err) = cgroup.remove()
        {
            tracing::warn!(error = %err, "cannot remove the scratch cgroup");
        }
    }
}
