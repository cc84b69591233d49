//! The agent keeps watch over its kernel side: the pin root lock, and every
//! map, program and link it pinned. Checked once per poll (a `stat` per pin
//! and a `BPF_OBJ_GET_INFO_BY_FD` per link: about fifty cheap syscalls).
//!
//! The agent holds a descriptor of every object it pinned, links included,
//! so its programs stay attached and its maps keep their counts whatever
//! happens to the pins while it runs. What it does about each fault
//! ([`Guard::check`]):
//!
//! - **Pins removed** (`rm`, `burnwatch uninstall --force`, another
//!   process), up to the whole pin root: re-pinned from the held
//!   descriptors, at the same paths, and the pin root locked again when it
//!   was removed. Nothing detached in between (the descriptors held every
//!   link), so no request is lost and the counts continue: repairing beats
//!   exiting, which would detach the programs and start from empty maps.
//!   Logged at error level, once per incident.
//! - **A pin replaced** by a different object (another id at our path)
//!   while the agent holds the lock: no agent did it (a tool or a script),
//!   and the programs still use the agent's object, so the impostor is
//!   unpinned and the agent's object pinned back (a restarted agent would
//!   otherwise read the impostor). Counts continue.
//! - **The pin root taken**: removed, created again and locked by another
//!   agent before this one could lock it again. Another agent works on
//!   this pin root; fighting it would corrupt both, so the agent reports
//!   not ready and exits non-zero (the DaemonSet restarts it; the restarted
//!   agent meets the lock and names the holder).
//! - **A link detached** (its `bpf_link_info` no longer names its program):
//!   the program stopped counting, and requests were lost meanwhile, so
//!   the counts cannot be vouched for: not ready, exit non-zero. The
//!   restarted agent does not reuse a pin set with a detached link
//!   ([`detached_links`]), it loads fresh programs and maps. Measured on
//!   6.18: the agent's links are `perf_event` links (tracepoints), which
//!   have no detach operation: `bpftool link detach` fails with
//!   `EOPNOTSUPP` and `bpf_link_info` is unchanged (`type` perf_event,
//!   same `prog_id`); such a link only goes when its last reference does,
//!   and the agent holds one. The check is a cheap guard for kernels and
//!   link types that can detach (the `prog_id` goes, or the info call
//!   fails once the link's target is gone).
//! - **The kernel config rewritten** (the `CONFIG` map no longer holds what
//!   this agent wrote; checked in `Probe::check_kernel_side`): another
//!   agent or tool writes this pin root's maps; not ready, exit non-zero.
//!   The pins are intact, so the restarted agent reuses them and the
//!   counts continue.

use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya_obj::generated::{bpf_cmd, bpf_link_info};

use super::lock::{PinRootLock, TryLock};
use super::pins::Pins;

/// What the last check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Fine,
    /// A fault repaired in place (logged): counts continue.
    Repaired(String),
    /// A fault the agent does not repair: not ready, then exit.
    Broken(String),
    /// A repair that failed this time (a removal racing it): not ready,
    /// tried again at the next check; broken only if it keeps failing.
    Retry(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Program,
    Link,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Map => "map",
            Kind::Program => "program",
            Kind::Link => "link",
        }
    }
}

/// One pinned object, held open.
struct Held {
    kind: Kind,
    path: PathBuf,
    fd: OwnedFd,
    id: u32,
    /// The pin's inode: unchanged means still our pin (one `stat`).
    ino: u64,
    /// Links: the program the link runs.
    prog_id: u32,
}

/// The lock and the held pins of one agent.
pub struct Guard {
    lock: PinRootLock,
    pins: Pins,
    held: Vec<Held>,
}

impl Guard {
    /// Opens and holds every pin of `pins` (maps, programs, links).
    pub fn open(lock: PinRootLock, pins: &Pins) -> Result<Guard> {
        let mut held = Vec::new();
        for (sub, kind) in [
            ("maps", Kind::Map),
            ("progs", Kind::Program),
            ("links", Kind::Link),
        ] {
            let dir = pins.dir.join(sub);
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .collect();
            entries.sort();
            for path in entries {
                let fd = obj_get(&path).with_context(|| {
                    format!("opening pinned {} {}", kind.name(), path.display())
                })?;
                let id = obj_id(&fd)
                    .with_context(|| format!("identifying pinned {}", path.display()))?;
                let prog_id = match kind {
                    Kind::Link => link_info(&fd)?.prog_id,
                    _ => 0,
                };
                let ino = std::fs::symlink_metadata(&path)?.ino();
                held.push(Held {
                    kind,
                    path,
                    fd,
                    id,
                    ino,
                    prog_id,
                });
            }
        }
        Ok(Guard {
            lock,
            pins: pins.clone(),
            held,
        })
    }

    /// Looks at the pin root and every held pin once; repairs what it can
    /// (see the module doc for what is repaired and what is not).
    pub fn check(&mut self) -> Health {
        let mut repaired = Vec::new();
        if !self.lock.still_root() {
            let root = self.lock.root().to_path_buf();
            let relocked =
                super::pins::ensure_bpffs(&root).and_then(|()| PinRootLock::try_lock(&root));
            match relocked {
                Ok(TryLock::Locked(lock)) => {
                    self.lock = lock;
                    repaired.push(format!("the pin root {} was removed", root.display()));
                }
                Ok(TryLock::Held(holder)) => {
                    return Health::Broken(format!(
                        "the pin root {} was removed, and the new one is held by another \
                         burnwatch agent ({holder})",
                        root.display()
                    ));
                }
                Ok(TryLock::Missing) => {
                    return Health::Broken(format!(
                        "the pin root {} was removed and could not be created again",
                        root.display()
                    ));
                }
                Err(e) => {
                    return Health::Broken(format!(
                        "the pin root {} was removed and could not be locked again: {e:#}",
                        root.display()
                    ));
                }
            }
        }
        let mut removed = Vec::new();
        for h in &mut self.held {
            match std::fs::symlink_metadata(&h.path) {
                Ok(m) if m.ino() == h.ino => {}
                Ok(m) => {
                    // Another inode: pinned again, by us (`bpftool ... pin
                    // id`, same id) or another object.
                    match obj_get(&h.path).and_then(|fd| obj_id(&fd)) {
                        Ok(id) if id == h.id => h.ino = m.ino(),
                        other => {
                            let what = match other {
                                Ok(id) => {
                                    format!("another object (id {id}, this agent's is {})", h.id)
                                }
                                Err(e) => format!("something that is not a BPF object ({e})"),
                            };
                            // The lock is ours (checked above), so no agent
                            // did it: a tool or script. Our object goes back
                            // (the programs use ours; a restarted agent
                            // would read the impostor).
                            let restored = std::fs::remove_file(&h.path)
                                .context("removing it")
                                .and_then(|()| repin(h));
                            if let Err(e) = restored {
                                return Health::Retry(format!(
                                    "pinned {} {} was replaced by {what}, and putting this \
                                     agent's back failed: {e:#}",
                                    h.kind.name(),
                                    h.path.display()
                                ));
                            }
                            repaired.push(format!(
                                "pinned {} {} was replaced by {what}: this agent's is pinned \
                                 there again",
                                h.kind.name(),
                                h.path.display()
                            ));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Err(e) = repin(h) {
                        return Health::Retry(format!(
                            "pinned {} {} was removed and pinning it again failed: {e:#}",
                            h.kind.name(),
                            h.path.display()
                        ));
                    }
                    removed.push(h.path.clone());
                }
                Err(e) => {
                    return Health::Broken(format!(
                        "cannot check pinned {} {}: {e}",
                        h.kind.name(),
                        h.path.display()
                    ));
                }
            }
            if h.kind == Kind::Link
                && let Some(why) = detached(h)
            {
                return Health::Broken(why);
            }
        }
        if !removed.is_empty() {
            repaired.push(format!(
                "{} of the {} pins this agent holds under {} were removed",
                removed.len(),
                self.held.len(),
                self.pins.dir.display()
            ));
        }
        if repaired.is_empty() {
            Health::Fine
        } else {
            Health::Repaired(repaired.join("; "))
        }
    }
}

/// Pins `h` again at its path, creating the directories.
fn repin(h: &mut Held) -> Result<()> {
    if let Some(parent) = h.path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    obj_pin(&h.fd, &h.path)?;
    h.ino = std::fs::symlink_metadata(&h.path)?.ino();
    Ok(())
}

/// Why the held link `h` no longer runs its program, if it does not.
fn detached(h: &Held) -> Option<String> {
    match link_info(&h.fd) {
        Ok(info) if info.prog_id == h.prog_id && info.prog_id != 0 => None,
        Ok(info) => Some(format!(
            "link {} (id {}) was detached: it runs program id {} instead of {}, its \
             tracepoint is no longer counted",
            h.path.display(),
            h.id,
            info.prog_id,
            h.prog_id
        )),
        Err(e) => Some(format!(
            "link {} (id {}) cannot be inspected any more ({e}): taken as detached",
            h.path.display(),
            h.id
        )),
    }
}

/// The pinned links under `pins` that no longer run a program (a pin set
/// an agent must not reuse: its tracepoints count nothing).
pub fn detached_links(pins: &Pins) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(pins.dir.join("links")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            obj_get(p)
                .and_then(|fd| link_info(&fd))
                .is_ok_and(|info| info.prog_id == 0)
        })
        .collect()
}

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn sys_bpf<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised member of `union bpf_attr` of
    // the size passed (the kernel zero-extends a shorter attr); its
    // pointers refer to memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// A new descriptor of the object pinned at `path` (`BPF_OBJ_GET`).
pub(super) fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returns a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` at `path` (`BPF_OBJ_PIN`).
fn obj_pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (its pointer fields left zero).
fn obj_info<T>(fd: &OwnedFd, info: &mut T) -> std::io::Result<()> {
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// The id of a map, program or link: the second `u32` of each one's info
/// (`type`, `id`, ...); the kernel copies no more than asked.
fn obj_id(fd: &OwnedFd) -> std::io::Result<u32> {
    let mut head = [0u32; 2];
    obj_info(fd, &mut head)?;
    Ok(head[1])
}

/// The kernel's `bpf_link_info` of the link `fd`.
pub(super) fn link_info(fd: &OwnedFd) -> std::io::Result<bpf_link_info> {
    // SAFETY: bpf_link_info is plain integers and unions of them; all
    // zeroes is valid (and leaves its name pointers NULL).
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    /// Not a BPF object: errors, no panic.
    #[test]
    fn a_descriptor_that_is_no_bpf_object_has_no_id() {
        let f: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(super::obj_id(&f).is_err());
        assert!(super::link_info(&f).is_err());
        assert!(super::obj_get(std::path::Path::new("/nonexistent/pin")).is_err());
    }
}
