//! Which pod a GPU process belongs to, read from `/proc/<pid>/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after its UID, and the runtime puts each
//! container in a child named after the container ID. The spellings differ by cgroup driver
//! and runtime, all handled here (cgroup v1 and v2):
//!
//! | driver  | pod segment                                         | container segment                 |
//! |---------|-----------------------------------------------------|-----------------------------------|
//! | systemd | `kubepods-burstable-pod<uid, _ for ->.slice`        | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//! | cgroupfs| `kubepods/besteffort/pod<uid>` (guaranteed: `kubepods/pod<uid>`) | `<id>`, `crio-<id>`   |
//!
//! Only path segments are matched, not a fixed prefix, so the paths a process in a private
//! cgroup namespace sees (`0::/../../kubepods-…-pod….slice/cri-containerd-….scope`) and nested
//! kubelets (`kubelet.slice/kubelet-kubepods.slice/…`) work too. The pod UID → pod lookup is
//! the caller's (the Kubernetes pod watcher).
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::telemetry::gpu::GpuSample;

/// A pod (and the container in it) a process runs in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// The pod's UID as the API server spells it (dashes).
    pub pod_uid: String,
    /// The runtime's container ID; `None` for processes of the pod but not of one container
    /// (CRI-O's `conmon`, processes left in the pod cgroup itself).
    pub container_id: Option<String>,
}

/// Reads the pod of `pid` from one `/proc/<pid>/cgroup` text. The cgroup v2 line (`0::`) is
/// preferred; on v1 hosts any controller's line will do (they agree for pods).
pub fn pod_from_cgroup_file(text: &str) -> Option<PodRef> {
    let mut unified = None;
    let mut legacy = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            unified = unified.or_else(|| pod_from_cgroup_path(path));
        } else if legacy.is_none() {
            legacy = pod_from_cgroup_path(path);
        }
    }
    unified.or(legacy)
}

/// Reads the pod from one cgroup path.
pub fn pod_from_cgroup_path(path: &str) -> Option<PodRef> {
    let mut segments = path.split('/').filter(|segment| !segment.is_empty());
    let pod_uid = segments.by_ref().find_map(pod_uid_of_segment)?;
    let container_id = segments.next().and_then(container_id_of_segment);
    Some(PodRef {
        pod_uid,
        container_id,
    })
}

fn pod_uid_of_segment(segment: &str) -> Option<String> {
    let raw = if let Some(slice) = segment.strip_suffix(".slice") {
        // systemd: kubepods[-<qos>]-pod<uid with _>.slice
        if !slice.contains("kubepods") {
            return None;
        }
        &slice[slice.rfind("-pod")? + "-pod".len()..]
    } else {
        // cgroupfs: pod<uid>
        segment.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// API-server pod UIDs are UUIDs; static (mirror) pods use the 32-hex-digit config hash.
fn is_pod_uid(uid: &str) -> bool {
    let hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = uid.split('-').collect();
    match parts.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [single] => hex(single, 32),
        _ => false,
    }
}

fn container_id_of_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    let valid = id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| id.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {0} has exited")]
    Gone(u32),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A `/proc` to read from: `/proc` on the host, `/host/proc` in an agent container (with
/// `hostPID: true` NVML's PIDs are the host's), a synthetic tree in tests.
#[derive(Clone, Debug)]
pub struct ProcRoot {
    root: PathBuf,
}

impl Default for ProcRoot {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The pod of `pid`, `None` for a process outside any pod (a host daemon).
    pub fn pod_of(&self, pid: u32) -> Result<Option<PodRef>, ProcError> {
        let path = self.root.join(pid.to_string()).join("cgroup");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(pod_from_cgroup_file(&text)),
            Err(err) if err.kind() == ErrorKind::NotFound => Err(ProcError::Gone(pid)),
            Err(source) => Err(ProcError::Io { path, source }),
        }
    }
}

/// One pod's use of one GPU, with whatever the caller's lookup found for it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodGpuUse<T> {
    pub pod: PodRef,
    pub pids: Vec<u32>,
    /// Sum over its processes; `None` when NVML could not tell for any of them (MIG).
    pub used_memory_bytes: Option<u64>,
    /// The caller's lookup result (e.g. the model-server endpoint), `None` if unknown.
    pub resolved: Option<T>,
}

/// The pods using one GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuAttribution<T> {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub pods: Vec<PodGpuUse<T>>,
    /// Processes outside pods, or gone before they could be read.
    pub unattributed_pids: Vec<u32>,
}

impl<T> GpuAttribution<T> {
    /// The pod with the most GPU memory: the model server when a GPU is shared with helpers.
    pub fn primary(&self) -> Option<&PodGpuUse<T>> {
        self.pods
            .iter()
            .max_by_key(|usage| (usage.used_memory_bytes.unwrap_or(0), usage.pids.len()))
    }
}

/// Attributes each GPU's compute processes to pods, resolving each pod with `lookup`.
/// Read errors other than "process gone" are logged and count the PID as unattributed.
pub fn attribute_gpus<T>(
    samples: &[GpuSample],
    proc_root: &ProcRoot,
    mut lookup: impl FnMut(&PodRef) -> Option<T>,
) -> Vec<GpuAttribution<T>> {
    samples
        .iter()
        .map(|sample| {
            let mut attribution = GpuAttribution {
                gpu_index: sample.index,
                gpu_uuid: sample.uuid.clone(),
                pods: Vec::new(),
                unattributed_pids: Vec::new(),
            };
            for process in &sample.processes {
                let pod = match proc_root.pod_of(process.pid) {
                    Ok(Some(pod)) => pod,
                    Ok(None) | Err(ProcError::Gone(_)) => {
                        attribution.unattributed_pids.push(process.pid);
                        continue;
                    }
                    Err(err) => {
                        tracing::debug!(pid = process.pid, error = %err, "cannot map process to pod");
                        attribution.unattributed_pids.push(process.pid);
                        continue;
                    }
                };
                match attribution.pods.iter_mut().find(|usage| usage.pod == pod) {
                    Some(usage) => {
                        usage.pids.push(process.pid);
                        usage.used_memory_bytes = add_memory(usage.used_memory_bytes, process.used_memory_bytes);
                    }
                    None => {
                        let resolved = lookup(&pod);
                        attribution.pods.push(PodGpuUse {
                            pod,
                            pids: vec![process.pid],
                            used_memory_bytes: process.used_memory_bytes,
                            resolved,
                        });
                    }
                }
            }
            attribution
        })
        .collect()
}

fn add_memory(total: Option<u64>, more: Option<u64>) -> Option<u64> {
    match (total, more) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    }
}
