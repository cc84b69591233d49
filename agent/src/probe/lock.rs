//! One agent per pin root: the agent holds an exclusive `flock(2)` on the
//! pin root directory (`state.bpffs_dir`) for as long as it runs.
//!
//! Two agents on one pin root corrupt each other (the second reuses the
//! first one's pins and rewrites its kernel config, an upgrade removes the
//! other build's pins), so the second refuses to start, naming the pin
//! root and the holder's pid; `burnwatch uninstall` refuses too while an
//! agent holds it (unless `--force`).
//!
//! Why the directory itself and not a lock file: bpffs holds no regular
//! files, and a lock file elsewhere (`/run/burnwatch/...`) is not shared
//! between a DaemonSet's pods (the chart mounts only `/sys/fs/bpf` from the
//! host, and the root filesystem is read-only), while the pin root is, by
//! definition, wherever the pins are. `flock` is a VFS lock that works on
//! any inode, bpffs directories included (measured on 6.18: a second
//! `LOCK_EX | LOCK_NB` on another open of the directory fails with
//! `EWOULDBLOCK`, and `/proc/locks` lists the holder). It needs no
//! capability, and the kernel drops it when the holder dies (`kill -9`
//! included), so a restarted agent starts. The lock sits on the directory's
//! inode: a pin root removed and created again (`uninstall --force`, `rm -r`)
//! is a new, unlocked inode; the agent's periodic check notices
//! ([`PinRootLock::still_root`]) and locks the new one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// An exclusive lock on a pin root, held until dropped (or the process dies).
#[derive(Debug)]
pub struct PinRootLock {
    dir: File,
    root: PathBuf,
}

/// Who holds a pin root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// From `/proc/locks`; `None` when not visible (another pid namespace).
    pub pid: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown: not visible from this pid namespace"),
        }
    }
}

/// What [`PinRootLock::try_lock`] found.
#[derive(Debug)]
pub enum TryLock {
    Locked(PinRootLock),
    Held(Holder),
    /// No pin root (nothing pinned there).
    Missing,
}

impl PinRootLock {
    /// The agent's lock: creates the pin root (mounting bpffs when needed)
    /// and locks it, or fails naming the pin root and the agent holding it.
    pub fn acquire(root: &Path) -> Result<PinRootLock> {
        // A root removed between its creation and the lock: once more.
        for _ in 0..3 {
            super::pins::ensure_bpffs(root)?;
            match PinRootLock::try_lock(root)? {
                TryLock::Locked(lock) => return Ok(lock),
                TryLock::Held(holder) => bail!("{}", in_use(root, holder)),
                TryLock::Missing => continue,
            }
        }
        bail!(
            "pin root {} keeps disappearing (removed while the agent starts)",
            root.display()
        )
    }

    /// Locks `root` if it exists and no other process holds it; never waits.
    pub fn try_lock(root: &Path) -> Result<TryLock> {
        let dir = match File::open(root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TryLock::Missing),
            Err(e) => {
                return Err(e).with_context(|| format!("opening pin root {}", root.display()));
            }
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(TryLock::Held(holder(&dir)));
            }
            return Err(e).with_context(|| format!("locking pin root {}", root.display()));
        }
        let lock = PinRootLock {
            dir,
            root: root.to_path_buf(),
        };
        // Locked a directory that was removed meanwhile: it guards nothing.
        if !lock.still_root() {
            return Ok(TryLock::Missing);
        }
        Ok(TryLock::Locked(lock))
    }

    /// Whether the locked directory is still the pin root (neither removed
    /// nor replaced by a new directory of the same name). Two `stat`s.
    pub fn still_root(&self) -> bool {
        match (self.dir.metadata(), std::fs::metadata(&self.root)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The error of a second agent (or an uninstall) on a held pin root.
pub fn in_use(root: &Path, holder: Holder) -> String {
    format!(
        "pin root {} (state.bpffs_dir) is in use by a running burnwatch agent ({holder}); \
         one agent per pin root: stop that agent, or give this one its own state.bpffs_dir",
        root.display()
    )
}

/// The process holding the `flock` on `dir`'s inode, from `/proc/locks`.
fn holder(dir: &File) -> Holder {
    let pid = dir.metadata().ok().and_then(|m| {
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        flock_holder(&locks, libc::major(m.dev()), libc::minor(m.dev()), m.ino())
    });
    Holder { pid }
}

/// The pid of the granted `FLOCK` on (`major`:`minor`, `ino`) in the text of
/// `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 1234 00:28:41647 0 EOF`; the
/// device numbers in hex; waiters' lines have `->` after the number).
fn flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        let mut dev = f[5].split(':');
        let (ma, mi, i) = (dev.next()?, dev.next()?, dev.next()?);
        let same = u32::from_str_radix(ma, 16).ok()? == major
            && u32::from_str_radix(mi, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        // A pid outside this pid namespace reads as 0 (or -1).
        let pid = f[4].parse::<u32>().ok().filter(|p| *p > 0)?;
        same.then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 10145 00:28:41647 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 9778 fe:00:10133506 0 EOF\n\
                     4: -> FLOCK  ADVISORY  WRITE 8541 00:28:41647 0 EOF\n\
                     5: POSIX  ADVISORY  WRITE 77 00:28:41647 0 EOF\n";
        assert_eq!(flock_holder(locks, 0, 0x28, 41647), Some(10145));
        assert_eq!(flock_holder(locks, 0xfe, 0, 10133506), Some(9778));
        assert_eq!(flock_holder(locks, 0, 0x28, 1), None);
        assert_eq!(flock_holder("", 0, 0x28, 41647), None);
    }

    /// flock is per open of the file: a second open of the same directory
    /// in this process is refused like another process would be, and the
    /// lock goes with the descriptor.
    #[test]
    fn a_locked_directory_cannot_be_locked_again_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let TryLock::Locked(first) = PinRootLock::try_lock(dir.path()).unwrap() else {
            panic!("not locked")
        };
        match PinRootLock::try_lock(dir.path()).unwrap() {
            TryLock::Held(h) => assert_eq!(h.pid, Some(std::process::id())),
            other => panic!("locked twice: {other:?}"),
        }
        assert!(first.still_root());
        drop(first);
        assert!(matches!(
            PinRootLock::try_lock(dir.path()).unwrap(),
            TryLock::Locked(_)
        ));
        let gone = dir.path().join("gone");
        assert!(matches!(
            PinRootLock::try_lock(&gone).unwrap(),
            TryLock::Missing
        ));
    }

    #[test]
    fn a_removed_and_recreated_root_is_not_the_locked_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let TryLock::Locked(lock) = PinRootLock::try_lock(&root).unwrap() else {
            panic!("not locked")
        };
        std::fs::remove_dir(&root).unwrap();
        assert!(!lock.still_root());
        std::fs::create_dir(&root).unwrap();
        assert!(!lock.still_root());
        assert!(matches!(
            PinRootLock::try_lock(&root).unwrap(),
            TryLock::Locked(_)
        ));
    }
}
