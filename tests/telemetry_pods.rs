//! PID → pod mapping on a synthetic `/proc` tree with the cgroup lines kubelet and the
//! runtimes write: cgroup v1 and v2, systemd and cgroupfs drivers, containerd, CRI-O and
//! dockershim, all three QoS classes, static pods, cgroup namespaces and nested kubelets.
use std::collections::HashMap;
use std::path::Path;

use switchyard::telemetry::pods::{
    PodRef, ProcError, ProcRoot, attribute_gpus, pod_from_cgroup_file,
};
use switchyard::telemetry::{GpuProcess, GpuSample};

const UID_A: &str = "7d5c1c52-3c1e-4e0a-9a1c-2f4b6d8e0a1b";
const UID_B: &str = "0b7c4e2a-91d3-4f6b-8e5a-c3d2b1a09f8e";
const STATIC_UID: &str = "5b0a8b3c1b6e6b0c8f4e7a1d3c2b9f0e";
const CID: &str = "3f1c9e2b7a6d5c4b3a2918f7e6d5c4b3a2918f7e6d5c4b3a2918f7e6d5c4b3a2";
const CID_2: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";

fn underscored(uid: &str) -> String {
    uid.replace('-', "_")
}

/// (case, /proc/<pid>/cgroup text, expected pod)
fn cases() -> Vec<(&'static str, String, Option<PodRef>)> {
    let a = |cid: Option<&str>| {
        Some(PodRef {
            pod_uid: UID_A.into(),
            container_id: cid.map(str::to_owned),
        })
    };
    let ua = underscored(UID_A);
    vec![
        (
            "v2 systemd containerd burstable",
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice/cri-containerd-{CID}.scope\n"
            ),
            a(Some(CID)),
        ),
        (
            "v2 systemd cri-o guaranteed",
            format!("0::/kubepods.slice/kubepods-pod{ua}.slice/crio-{CID}.scope\n"),
            a(Some(CID)),
        ),
        (
            "v2 systemd cri-o with crun's container sub-cgroup",
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ua}.slice/crio-{CID}.scope/container\n"
            ),
            a(Some(CID)),
        ),
        (
            "v2 systemd cri-o conmon belongs to the pod, not a container",
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice/crio-conmon-{CID}.scope\n"
            ),
            a(None),
        ),
        (
            "v2 cgroupfs containerd besteffort",
            format!("0::/kubepods/besteffort/pod{UID_A}/{CID}\n"),
            a(Some(CID)),
        ),
        (
            "v2 cgroupfs cri-o burstable",
            format!("0::/kubepods/burstable/pod{UID_A}/crio-{CID}\n"),
            a(Some(CID)),
        ),
        (
            "v2 cgroupfs guaranteed",
            format!("0::/kubepods/pod{UID_A}/{CID}\n"),
            a(Some(CID)),
        ),
        (
            "v1 cgroupfs dockershim burstable",
            format!(
                "12:hugetlb:/kubepods/burstable/pod{UID_A}/{CID}\n\
                 11:memory:/kubepods/burstable/pod{UID_A}/{CID}\n\
                 4:cpu,cpuacct:/kubepods/burstable/pod{UID_A}/{CID}\n\
                 1:name=systemd:/kubepods/burstable/pod{UID_A}/{CID}\n"
            ),
            a(Some(CID)),
        ),
        (
            "v1 systemd containerd besteffort (hybrid host, unified line unused)",
            format!(
                "11:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ua}.slice/cri-containerd-{CID}.scope\n\
                 6:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ua}.slice/cri-containerd-{CID}.scope\n\
                 1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ua}.slice/cri-containerd-{CID}.scope\n\
                 0::/\n"
            ),
            a(Some(CID)),
        ),
        (
            "v1 systemd dockershim guaranteed",
            format!("10:devices:/kubepods.slice/kubepods-pod{ua}.slice/docker-{CID_2}.scope\n"),
            Some(PodRef {
                pod_uid: UID_A.into(),
                container_id: Some(CID_2.into()),
            }),
        ),
        (
            "v2 seen from a private cgroup namespace",
            format!("0::/../../kubepods-burstable-pod{ua}.slice/cri-containerd-{CID}.scope\n"),
            a(Some(CID)),
        ),
        (
            "v2 nested kubelet (kind)",
            format!(
                "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{ua}.slice/cri-containerd-{CID}.scope\n"
            ),
            a(Some(CID)),
        ),
        (
            "v2 static pod (config-hash UID)",
            format!("0::/kubepods/burstable/pod{STATIC_UID}/{CID}\n"),
            Some(PodRef {
                pod_uid: STATIC_UID.into(),
                container_id: Some(CID.into()),
            }),
        ),
        (
            "host daemon",
            "0::/system.slice/nvidia-persistenced.service\n".into(),
            None,
        ),
        (
            "podman container, not a pod",
            format!("0::/machine.slice/libpod-{CID}.scope/container\n"),
            None,
        ),
        (
            "pod-like name with a bad UID",
            format!("0::/kubepods/burstable/podnot-a-uid/{CID}\n"),
            None,
        ),
    ]
}

#[test]
fn cgroup_lines_of_every_driver_and_runtime() {
    for (name, text, expected) in cases() {
        assert_eq!(pod_from_cgroup_file(&text), expected, "{name}");
    }
}

fn write_proc(root: &Path, pid: u32, cgroup: &str) {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup"), cgroup).unwrap();
}

#[test]
fn synthetic_proc_tree() {
    let tree = tempfile::tempdir().unwrap();
    let proc_root = ProcRoot::new(tree.path());
    for (pid, (name, text, expected)) in (100..).zip(cases()) {
        write_proc(tree.path(), pid, &text);
        assert_eq!(proc_root.pod_of(pid).unwrap(), expected, "{name}");
    }
    assert!(matches!(proc_root.pod_of(99), Err(ProcError::Gone(99))));
}

#[test]
fn gpus_are_attributed_to_the_pods_using_them() {
    let tree = tempfile::tempdir().unwrap();
    let ua = underscored(UID_A);
    let pod_a = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice/cri-containerd-{CID}.scope\n"
    );
    write_proc(tree.path(), 10, &pod_a);
    write_proc(tree.path(), 11, &pod_a);
    write_proc(
        tree.path(),
        12,
        &format!("0::/kubepods/besteffort/pod{UID_B}/{CID_2}\n"),
    );
    write_proc(tree.path(), 13, "0::/system.slice/dcgm.service\n");
    const GIB: u64 = 1 << 30;
    let process = |pid, gib: Option<u64>| GpuProcess {
        pid,
        used_memory_bytes: gib.map(|g| g * GIB),
    };
    let samples = vec![
        GpuSample {
            index: 0,
            uuid: "GPU-0".into(),
            processes: vec![
                process(10, Some(70)),
                process(11, Some(1)),
                process(12, Some(2)),
                process(13, None),
                process(14, Some(1)), // exited before we looked
            ],
            ..GpuSample::default()
        },
        GpuSample {
            index: 1,
            uuid: "GPU-1".into(),
            processes: vec![process(12, None)], // MIG: no per-process memory
            ..GpuSample::default()
        },
    ];
    let endpoints: HashMap<&str, &str> = HashMap::from([(UID_A, "10.0.3.7:8000")]);
    let attributions = attribute_gpus(&samples, &ProcRoot::new(tree.path()), |pod| {
        endpoints.get(pod.pod_uid.as_str()).map(|e| e.to_string())
    });
    assert_eq!(attributions.len(), 2);
    let gpu0 = &attributions[0];
    assert_eq!(gpu0.pods.len(), 2);
    let primary = gpu0.primary().unwrap();
    assert_eq!(primary.pod.pod_uid, UID_A);
    assert_eq!(primary.pids, vec![10, 11]);
    assert_eq!(primary.used_memory_bytes, Some(71 * GIB));
    assert_eq!(primary.resolved.as_deref(), Some("10.0.3.7:8000"));
    assert_eq!(gpu0.pods[1].pod.pod_uid, UID_B);
    assert_eq!(gpu0.pods[1].resolved, None);
    assert_eq!(gpu0.unattributed_pids, vec![13, 14]);
    let gpu1 = &attributions[1];
    assert_eq!(gpu1.primary().unwrap().pod.pod_uid, UID_B);
    assert_eq!(gpu1.primary().unwrap().used_memory_bytes, None);
}
