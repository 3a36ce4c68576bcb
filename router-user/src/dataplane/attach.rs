//! Loading the BPF object, attaching its programs to a cgroup with pinned links, and detaching.
//!
//! Links are pinned so the attachment outlives the process: steering, reverse translation and
//! counting go on while no agent runs, and a restarted agent adopts the pins instead of
//! reloading. Replacing the programs (a new build) is make-before-break: the new links are
//! attached and pinned under temporary names, then renamed over the old pins; dropping our
//! handle on an old link then detaches it. While both are attached the old `connect` program
//! runs first and the new one sees a backend address (not a VIP) and passes it through; the
//! counting flag in the socket's storage keeps counts exact, as both programs share the maps.
use std::{
    fs::{self, File},
    path::Path,
};

use aya::{
    EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps,
        links::{FdLink, PinnedLink},
    },
};

use super::{
    BPF_OBJECT,
    error::DataplaneError,
    pins::{ALL_MAPS, PROGRAMS, PinLayout},
};

/// Loads the embedded object with every map bound to its pin (existing pins are reused, new
/// maps are created and pinned), attaches all programs to `cgroup` and pins their links,
/// replacing links already pinned there. On error, links attached by this call are detached
/// again and the previous ones are untouched.
pub fn attach_programs(layout: &PinLayout, cgroup: &Path) -> Result<(), DataplaneError> {
    let cgroup_dir =
        File::open(cgroup).map_err(|err| DataplaneError::io("opening cgroup", cgroup, err))?;
    let mut loader = EbpfLoader::new();
    let pin_paths: Vec<_> = ALL_MAPS
        .iter()
        .filter_map(|spec| Some((spec.object_name?, layout.map(spec))))
        .collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(BPF_OBJECT).map_err(|err| match err {
        aya::EbpfError::MapError(source) if is_eperm(&source) => DataplaneError::PermissionDenied {
            what: "creating BPF maps".into(),
        },
        other => DataplaneError::Object(other),
    })?;

    // Attach under temporary pin names first; rename over the live pins only when all worked.
    let mut staged: Vec<(PinnedLink, &str)> = Vec::with_capacity(PROGRAMS.len());
    for (program, pin_name) in PROGRAMS {
        let staged_path = layout.staged_link(pin_name);
        // A staged pin left by an interrupted attempt is garbage: drop it (detaching it).
        discard_link(&staged_path)?;
        match attach_one(&mut ebpf, program, &cgroup_dir, cgroup) {
            Ok(link) => match link.pin(&staged_path) {
                Ok(pinned) => staged.push((pinned, pin_name)),
                Err(source) => {
                    abandon(staged);
                    return Err(DataplaneError::Pin {
                        path: staged_path,
                        error: source,
                    });
                }
            },
            Err(err) => {
                abandon(staged);
                return Err(err);
            }
        }
    }
    for (pinned, pin_name) in staged {
        let live_path = layout.link(pin_name);
        // Hold the old link (if any) while its pin is replaced, then let it go: it detaches
        // once its last reference (this handle) is dropped.
        let old = PinnedLink::from_pin(&live_path).ok();
        let staged_path = layout.staged_link(pin_name);
        fs::rename(&staged_path, &live_path)
            .map_err(|err| DataplaneError::io("renaming pinned link", &staged_path, err))?;
        drop(pinned);
        drop(old);
    }
    Ok(())
}

/// Loads and attaches one program, returning its link (not yet pinned).
fn attach_one(
    ebpf: &mut aya::Ebpf,
    program: &'static str,
    cgroup_dir: &File,
    cgroup: &Path,
) -> Result<FdLink, DataplaneError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or(DataplaneError::MissingProgram(program))?;
    let attach_err = |source| DataplaneError::Attach {
        program,
        cgroup: cgroup.to_path_buf(),
        error: source,
    };
    // Cgroup links are always multi-attach; `Single` is the only mode the kernel accepts for
    // link_create on cgroups (other modes give EINVAL). The two program types share no trait
    // for this, hence the macro.
    macro_rules! load_and_attach {
        ($prog:expr) => {{
            let prog = $prog;
            prog.load().map_err(|err| load_error(program, err))?;
            let id = prog
                .attach(cgroup_dir, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            prog.take_link(id)
                .and_then(|link| FdLink::try_from(link).map_err(link_to_program_error))
        }};
    }
    let link: Result<FdLink, ProgramError> =
        if let Ok(prog) = <&mut CgroupSockAddr>::try_from(&mut *prog) {
            load_and_attach!(prog)
        } else if let Ok(prog) = <&mut SockOps>::try_from(&mut *prog) {
            load_and_attach!(prog)
        } else {
            return Err(DataplaneError::MissingProgram(program));
        };
    link.map_err(|source| DataplaneError::Attach {
        program,
        cgroup: cgroup.to_path_buf(),
        error: source,
    })
}

fn link_to_program_error(err: aya::programs::links::LinkError) -> ProgramError {
    ProgramError::SyscallError(aya::sys::SyscallError {
        call: "link conversion",
        io_error: std::io::Error::other(err),
    })
}

/// A load failure with the verifier's log kept, or a permission problem said as such.
fn load_error(program: &'static str, err: ProgramError) -> DataplaneError {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if io_error.kind() == std::io::ErrorKind::PermissionDenied
                && verifier_log.to_string().trim().is_empty()
            {
                DataplaneError::PermissionDenied {
                    what: format!("loading program {program}"),
                }
            } else {
                DataplaneError::Verifier {
                    program,
                    error: io_error,
                    verifier_log: verifier_log.to_string(),
                }
            }
        }
        error => DataplaneError::Program { program, error },
    }
}

fn is_eperm(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::CreateError { io_error, .. } => {
            io_error.kind() == std::io::ErrorKind::PermissionDenied
        }
        _ => false,
    }
}

/// Unpins and drops staged links after a failure, detaching them.
fn abandon(staged: Vec<(PinnedLink, &str)>) {
    for (pinned, name) in staged {
        if let Err(err) = pinned.unpin() {
            tracing::warn!(link = name, error = %err, "cannot remove a staged link pin");
        }
    }
}

/// Unpins and detaches the link pinned at `path`, if there is one.
pub fn discard_link(path: &Path) -> Result<bool, DataplaneError> {
    if !path.exists() {
        return Ok(false);
    }
    let link = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
        path: path.to_path_buf(),
        error: source,
    })?;
    // Dropping the returned FdLink closes the last reference: the kernel detaches it.
    link.unpin()
        .map_err(|err| DataplaneError::io("unpinning link", path, err))?;
    Ok(true)
}

/// Which link pins of the layout exist.
pub fn pinned_links(layout: &PinLayout) -> Vec<&'static str> {
    PROGRAMS
        .iter()
        .filter(|(_, pin)| layout.link(pin).exists())
        .map(|(_, pin)| *pin)
        .collect()
}

/// Detaches everything pinned under `layout`: links first (connect programs before the rest,
/// so steering stops before reverse translation and counting), then the maps and directories.
/// Works on a partial layout too (an interrupted attach). Returns how many pins were removed.
pub fn detach_pinned(layout: &PinLayout) -> Result<usize, DataplaneError> {
    let mut removed = 0;
    for (_, pin_name) in PROGRAMS.iter().rev() {
        for path in [layout.link(pin_name), layout.staged_link(pin_name)] {
            if discard_link(&path)? {
                removed += 1;
            }
        }
    }
    for spec in ALL_MAPS.iter().rev() {
        let path = layout.map(spec);
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(DataplaneError::io("unpinning map", path, err)),
        }
    }
    layout.remove_dirs()?;
    Ok(removed)
}
