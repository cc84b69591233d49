//! Kernel state that outlives the agent process: maps, programs and links
//! pinned in bpffs, so the kernel keeps counting while the agent restarts.
//!
//! Layout under the pin root (config `state.bpffs_dir`, default
//! `/sys/fs/bpf/burnwatch`):
//!
//! ```text
//! <root>/<build id>/maps/<MAP>        every map of the eBPF object
//! <root>/<build id>/progs/<program>   every program (for BPF statistics)
//! <root>/<build id>/links/<cat>:<tp>  one perf-event link per tracepoint
//! ```
//!
//! The build id is a hash of the embedded eBPF object: the same build finds
//! its own pins and reuses them as they are (programs never stopped, counts
//! continue), a different build (an upgrade) cannot misread maps whose
//! layout changed, so it loads fresh ones and removes the old build's pins,
//! which detaches the old programs. Links are pinned last, so a directory
//! with every link in it is complete; anything else is replaced.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

/// bpffs' magic number (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted when a node boots without it.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// A hash of the eBPF object the agent embeds: pins made by a build with the
/// same id have the same map layouts and programs.
pub fn build_id(object: &[u8]) -> String {
    // FNV-1a: stable across Rust releases (std's hasher is not promised to be).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Is `name` a directory this module created under the pin root?
pub(super) fn is_build_dir(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pin directory of one build.
#[derive(Debug, Clone)]
pub struct Pins {
    pub root: PathBuf,
    pub dir: PathBuf,
}

impl Pins {
    pub fn new(root: &Path, build_id: &str) -> Pins {
        Pins {
            root: root.to_path_buf(),
            dir: root.join(build_id),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    pub fn link(&self, category: &str, tracepoint: &str) -> PathBuf {
        self.dir
            .join("links")
            .join(format!("{category}:{tracepoint}"))
    }

    /// Creates the directories pins go into, mounting bpffs first when the
    /// root is under an unmounted `/sys/fs/bpf`.
    pub fn create_dirs(&self) -> Result<()> {
        ensure_bpffs(&self.root)?;
        for sub in ["maps", "progs", "links"] {
            let d = self.dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating pin directory {}", d.display()))?;
        }
        Ok(())
    }

    /// Removes this build's pins (a partial or unusable set).
    pub fn remove(&self) -> Result<()> {
        remove_tree(&self.dir)
    }

    /// Removes the pins of every other build under the root: their programs
    /// detach as soon as no process holds their links.
    pub fn remove_other_builds(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_build_dir(&name) && e.path() != self.dir {
                match remove_tree(&e.path()) {
                    Ok(()) => {
                        info!(pins = %e.path().display(), "removed the pins of another build")
                    }
                    Err(e) => warn!("removing old pins: {e:#}"),
                }
            }
        }
    }
}

/// Removes every build's pins under `root`, then `root` itself when empty:
/// `burnwatch uninstall`. Returns the build directories removed. Entries this
/// module did not create are left alone.
pub fn uninstall(root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_build_dir(&name) {
            // `uninstall --force` under a running agent races its re-pinning
            // (probe::guard): a directory refilled meanwhile is emptied again.
            let mut tries = 0;
            while let Err(err) = remove_tree(&e.path()) {
                tries += 1;
                if tries == 3 {
                    return Err(err);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            removed.push(e.path());
        }
    }
    // Fails harmlessly when something else lives in the root.
    let _ = std::fs::remove_dir(root);
    Ok(removed)
}

/// `rm -r` for a pin tree (bpffs supports unlink and rmdir).
fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing pins in {}", dir.display())),
    }
}

fn fs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Some(st.f_type as i64)
}

/// Mounts bpffs at `/sys/fs/bpf` when the pin root lives there and it is
/// not mounted (many nodes boot without it); any other root must already
/// be on a bpffs.
pub(super) fn ensure_bpffs(root: &Path) -> Result<()> {
    let mount = Path::new(BPFFS_MOUNT);
    if root.starts_with(mount) && fs_type(mount) != Some(BPF_FS_MAGIC) {
        super::preflight::mount("bpf", BPFFS_MOUNT, "bpf")?;
        info!("mounted bpffs at {BPFFS_MOUNT}");
    }
    std::fs::create_dir_all(root)
        .with_context(|| format!("creating pin root {}", root.display()))?;
    if fs_type(root) != Some(BPF_FS_MAGIC) {
        bail!(
            "pin root {} (state.bpffs_dir) is not on a bpf filesystem; mount one there \
             (mount -t bpf bpf DIR) or choose a directory under {BPFFS_MOUNT}",
            root.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_are_stable_and_recognised() {
        assert_eq!(build_id(b""), "cbf29ce484222325");
        assert_ne!(build_id(b"a"), build_id(b"b"));
        assert!(is_build_dir(&build_id(b"object")));
        assert!(!is_build_dir("maps"));
        assert!(!is_build_dir("cbf29ce48422232g"));
    }
}
