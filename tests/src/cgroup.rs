//! Cgroup v2 directories of a test's own, for servers that must run "in a
//! container" (matched by cgroup, or joined to a Kubernetes pod by their
//! cgroup's container id). Removed on drop, after moving their processes
//! back to the root.

use std::path::PathBuf;

pub struct TestCgroup {
    root: PathBuf,
    /// `<root>/burnwatch-test-<pid>`: what drop removes, bottom up.
    top: PathBuf,
    /// The leaf processes are moved into.
    dir: PathBuf,
}

impl TestCgroup {
    /// `<root>/burnwatch-test-<pid>`.
    pub fn create() -> TestCgroup {
        TestCgroup::nested("")
    }

    /// `<root>/burnwatch-test-<pid>/<rel>` (e.g. a kubelet-shaped
    /// `kubepods.slice/.../cri-containerd-<id>.scope`).
    pub fn nested(rel: &str) -> TestCgroup {
        let unified = PathBuf::from("/sys/fs/cgroup");
        let root = if unified.join("cgroup.controllers").exists() {
            unified
        } else {
            unified.join("unified")
        };
        assert!(
            root.join("cgroup.procs").exists(),
            "no cgroup v2 hierarchy at {} (the test needs one)",
            root.display()
        );
        let top = root.join(format!("burnwatch-test-{}", std::process::id()));
        let dir = if rel.is_empty() {
            top.clone()
        } else {
            top.join(rel)
        };
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        TestCgroup { root, top, dir }
    }

    /// The cgroup's path as `/proc/<pid>/cgroup` shows it.
    pub fn path(&self) -> String {
        format!("/{}", self.dir.strip_prefix(&self.root).unwrap().display())
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let mut d = self.dir.clone();
        while d.starts_with(&self.top) {
            let _ = std::fs::remove_dir(&d);
            if !d.pop() {
                break;
            }
        }
    }
}
