//! The agent's hold on the eBPF dataplane: optional (without `--cgroup` and without pins, or
//! without the privileges, the agent runs without steering and says so once), and sparing
//! (weights that moved by less than [`WEIGHT_HYSTERESIS`] are not rewritten, so a noisy load
//! signal does not swap selection tables twenty times a second).
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::dataplane::{
    BackendSpec, ConnCount, Dataplane, DataplaneConfig, DataplaneError, Origin, PoolStatus,
};

/// A weight must move by more than this fraction (or the eligible set change) to be rewritten.
pub const WEIGHT_HYSTERESIS: f64 = 0.05;

/// Pools are rewritten at least this often even when unchanged, so a pool another writer
/// (the CLI) altered is put back.
const REASSERT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("cannot attach the dataplane to {cgroup}: {source}")]
    Attach {
        cgroup: PathBuf,
        #[source]
        source: Box<DataplaneError>,
    },
}

/// What [`Steering::program`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programmed {
    /// Within the hysteresis of what is live: nothing written.
    Unchanged,
    /// Checked against the maps (nothing or something written).
    Written { changed: bool, table_swapped: bool },
    /// No dataplane.
    NoSteering,
}

struct LivePool {
    specs: Vec<BackendSpec>,
    checked_at: Instant,
}

/// The dataplane, if the agent has one.
pub struct Steering {
    dataplane: Option<Dataplane>,
    /// Why there is none.
    reason: Option<String>,
    live: HashMap<SocketAddr, LivePool>,
}

impl Steering {
    /// Attaches to `cgroup` (or adopts what a previous agent pinned for it). Without a cgroup,
    /// adopts whatever is pinned under `pin_root`. Missing privileges or bpffs, and nothing
    /// pinned without a cgroup, mean no steering (logged once); other errors with an explicit
    /// cgroup (a wrong path, pins of another cgroup or layout) are returned.
    pub fn open(cgroup: Option<&Path>, pin_root: &Path) -> Result<Self, SteeringError> {
        let result = match cgroup {
            Some(cgroup) => Dataplane::load(&DataplaneConfig {
                cgroup: cgroup.to_path_buf(),
                pin_root: pin_root.to_path_buf(),
            }),
            None => Dataplane::open_pinned(pin_root),
        };
        match result {
            Ok(dataplane) => {
                let how = match dataplane.origin() {
                    Origin::Attached => "attached",
                    Origin::Adopted => "adopted the pinned programs and maps",
                    Origin::Replaced => "replaced the programs of another build",
                };
                tracing::info!(pins = %dataplane.pin_dir().display(), "steering: {how}");
                Ok(Self {
                    dataplane: Some(dataplane),
                    reason: None,
                    live: HashMap::new(),
                })
            }
            Err(err) => {
                let degrade = cgroup.is_none()
                    || matches!(
                        err,
                        DataplaneError::PermissionDenied { .. }
                            | DataplaneError::BpffsNotMounted { .. }
                    );
                if !degrade {
                    return Err(SteeringError::Attach {
                        cgroup: cgroup.map(Path::to_path_buf).unwrap_or_default(),
                        source: Box::new(err),
                    });
                }
                let reason = match cgroup {
                    None => format!(
                        "no --cgroup and no usable pins under {}: {err}",
                        pin_root.display()
                    ),
                    Some(_) => err.to_string(),
                };
                tracing::warn!(reason = %reason, "running without steering: weights are computed and reported, not programmed");
                Ok(Self::disabled(reason))
            }
        }
    }

    /// No dataplane, for `reason`.
    pub fn disabled(reason: impl Into<String>) -> Self {
        Self {
            dataplane: None,
            reason: Some(reason.into()),
            live: HashMap::new(),
        }
    }

    pub fn active(&self) -> bool {
        self.dataplane.is_some()
    }

    /// Why the agent does not steer, when it does not.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Programs `vip` unless every weight is within the hysteresis of what is live and the
    /// eligible set is the same (then nothing is written, not even checked, for up to a
    /// second).
    pub fn program(
        &mut self,
        vip: SocketAddr,
        specs: &[BackendSpec],
    ) -> Result<Programmed, DataplaneError> {
        let Some(dataplane) = self.dataplane.as_mut() else {
            return Ok(Programmed::NoSteering);
        };
        if let Some(live) = self.live.get(&vip)
            && live.checked_at.elapsed() < REASSERT_EVERY
            && within_hysteresis(&live.specs, specs)
        {
            return Ok(Programmed::Unchanged);
        }
        // Keep the live weights when only the reassertion is due: they are what is in force.
        let to_write = match self.live.get(&vip) {
            Some(live) if within_hysteresis(&live.specs, specs) => live.specs.clone(),
            _ => specs.to_vec(),
        };
        let status: PoolStatus = dataplane.set_pool(vip, &to_write)?;
        self.live.insert(
            vip,
            LivePool {
                specs: to_write,
                checked_at: Instant::now(),
            },
        );
        Ok(Programmed::Written {
            changed: status.changed,
            table_swapped: status.table_swapped,
        })
    }

    /// Stops steering `vip` (a pool the EPP no longer lists).
    pub fn remove(&mut self, vip: SocketAddr) -> Result<(), DataplaneError> {
        self.live.remove(&vip);
        match self.dataplane.as_mut() {
            Some(dataplane) => match dataplane.remove_pool(vip) {
                Ok(()) | Err(DataplaneError::PoolNotFound(_)) => Ok(()),
                Err(err) => Err(err),
            },
            None => Ok(()),
        }
    }

    /// Live connection counters per backend address; empty without a dataplane.
    pub fn connection_counts(&self) -> Result<HashMap<SocketAddr, ConnCount>, DataplaneError> {
        match &self.dataplane {
            Some(dataplane) => dataplane.connection_counts(),
            None => Ok(HashMap::new()),
        }
    }

    /// The live table's slots per backend (for checks and `/debug/state`).
    pub fn table_shares(
        &self,
        vip: SocketAddr,
    ) -> Result<BTreeMap<SocketAddr, usize>, DataplaneError> {
        match &self.dataplane {
            Some(dataplane) => dataplane.table_shares(vip),
            None => Ok(BTreeMap::new()),
        }
    }
}

/// Same backends, same eligibility, every weight within [`WEIGHT_HYSTERESIS`].
pub fn within_hysteresis(live: &[BackendSpec], wanted: &[BackendSpec]) -> bool {
    live.len() == wanted.len()
        && live.iter().zip(wanted).all(|(a, b)| {
            a.addr == b.addr
                && a.eligible() == b.eligible()
                && (!a.eligible()
                    || f64::from(a.weight.abs_diff(b.weight))
                        <= WEIGHT_HYSTERESIS * f64::from(a.weight.max(b.weight)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(i: u8, weight: u32, down: bool) -> BackendSpec {
        BackendSpec {
            addr: SocketAddr::from(([10, 0, 0, i], 80)),
            weight,
            down,
        }
    }

    #[test]
    fn small_weight_moves_are_ignored_and_set_changes_are_not() {
        let live = [spec(1, 1000, false), spec(2, 500, false)];
        assert!(within_hysteresis(
            &live,
            &[spec(1, 1000, false), spec(2, 520, false)]
        ));
        assert!(!within_hysteresis(
            &live,
            &[spec(1, 1000, false), spec(2, 560, false)]
        ));
        assert!(!within_hysteresis(
            &live,
            &[spec(1, 1000, false), spec(2, 500, true)]
        ));
        assert!(!within_hysteresis(&live, &[spec(1, 1000, false)]));
        assert!(!within_hysteresis(
            &live,
            &[spec(1, 1000, false), spec(3, 500, false)]
        ));
        // Down backends compare by state only.
        assert!(within_hysteresis(&[spec(1, 0, true)], &[spec(1, 7, true)]));
    }

    #[test]
    fn without_pins_or_cgroup_the_agent_runs_without_steering() {
        let dir = tempfile::tempdir().unwrap();
        let mut steering = Steering::open(None, dir.path()).expect("degrades, does not fail");
        assert!(!steering.active());
        assert!(steering.reason().unwrap().contains("no --cgroup"));
        assert_eq!(
            steering
                .program(SocketAddr::from(([10, 96, 0, 1], 80)), &[spec(1, 1, false)])
                .unwrap(),
            Programmed::NoSteering
        );
        assert!(steering.connection_counts().unwrap().is_empty());
    }
}
