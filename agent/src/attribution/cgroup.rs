//! Which container a process runs in: its cgroup path (from
//! `/proc/<pid>/cgroup`, cgroup v1 or v2) to the container id and pod uid
//! the container runtime and the kubelet put in it, and a cgroup v2
//! directory to its cgroup id.
//!
//! Written by hand: the formats are a handful of path conventions (kubelet's
//! cgroupfs and systemd drivers, containerd, CRI-O, Docker), and the crates
//! that parse them come with a whole container runtime client.
//!
//! Path shapes recognised (the container id is the 64 hex characters):
//! - cgroupfs driver: `/kubepods/besteffort/pod<uid>/<id>`,
//!   `/kubepods/pod<uid>/<id>` (Guaranteed QoS)
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
//!   `crio-<id>.scope`, `docker-<id>.scope`, `cri-dockerd-<id>.scope`
//! - plain Docker: `/docker/<id>`, `/system.slice/docker-<id>.scope`
//! - paths seen from inside another cgroup namespace (`/../../kubepods...`)
//!   and CRI-O's `crio-conmon-<id>.scope` (the monitor, not the container:
//!   not a container id).

// The lead wires pods to the kernel's cgroup ids; until then tests are the
// only callers of parts of this module.
#![cfg_attr(not(test), allow(dead_code))]

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A container id as runtimes print it: 64 lowercase hex characters, kept
/// inline (no allocation per lookup).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId([u8; 64]);

impl ContainerId {
    /// Parses 64 hex characters (any case; stored lowercase).
    pub fn parse(s: &str) -> Option<ContainerId> {
        let b = s.as_bytes();
        if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut id = [0u8; 64];
        for (d, s) in id.iter_mut().zip(b) {
            *d = s.to_ascii_lowercase();
        }
        Some(ContainerId(id))
    }

    /// Parses the `containerID` of a pod's container status:
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
    pub fn from_status(s: &str) -> Option<ContainerId> {
        let (_, id) = s.split_once("://")?;
        ContainerId::parse(id)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).expect("hex digits")
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({})", self.as_str())
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a cgroup path says about its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The cgroup path (v2 if the process has one beyond `/`, else the first
    /// v1 path naming a container).
    pub path: String,
    pub container_id: Option<ContainerId>,
    /// The pod's uid in its API form (dashes, lowercase), from the kubelet's
    /// `pod<uid>` segment.
    pub pod_uid: Option<String>,
}

/// Parses the text of `/proc/<pid>/cgroup`: lines `hierarchy:controllers:path`
/// (`0::path` is cgroup v2). Prefers the v2 line, falls back to v1 lines
/// (hybrid and v1-only hosts).
pub fn parse_proc_cgroup(text: &str) -> Option<CgroupInfo> {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(hier), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if hier == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else {
            v1.push(path);
        }
    }
    if let Some(path) = v2 {
        let info = parse_path(path);
        if info.container_id.is_some() || v1.is_empty() {
            return Some(info);
        }
    }
    let mut first = None;
    for path in v1 {
        let info = parse_path(path);
        if info.container_id.is_some() {
            return Some(info);
        }
        first.get_or_insert(info);
    }
    first.or_else(|| v2.map(parse_path))
}

/// Reads and parses `<proc>/<pid>/cgroup`.
pub fn for_pid(proc_root: &Path, pid: u32) -> io::Result<Option<CgroupInfo>> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(parse_proc_cgroup(&text))
}

/// The container id and pod uid in one cgroup path.
pub fn parse_path(path: &str) -> CgroupInfo {
    let mut container_id = None;
    let mut pod_uid = None;
    for seg in path.split('/') {
        if let Some(uid) = pod_uid_of_segment(seg) {
            pod_uid = Some(uid);
        }
        if let Some(id) = container_id_of_segment(seg) {
            container_id = Some(id);
        }
    }
    CgroupInfo {
        path: path.to_string(),
        container_id,
        pod_uid,
    }
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
/// `cri-dockerd-<id>.scope`, `libpod-<id>.scope`, or a bare `<id>`
/// (cgroupfs driver, `/docker/<id>`).
fn container_id_of_segment(seg: &str) -> Option<ContainerId> {
    if let Some(id) = ContainerId::parse(seg) {
        return Some(id);
    }
    let stem = seg.strip_suffix(".scope")?;
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let (_, id) = stem.rsplit_once('-')?;
    ContainerId::parse(id)
}

/// `pod<uid>` (cgroupfs driver) or `kubepods[-<qos>]-pod<uid_>.slice`
/// (systemd driver, dashes of the uid escaped as underscores).
fn pod_uid_of_segment(seg: &str) -> Option<String> {
    let raw = if let Some(s) = seg.strip_suffix(".slice") {
        if !s.starts_with("kubepods") {
            return None;
        }
        s.rsplit_once("-pod")?.1
    } else {
        seg.strip_prefix("pod")?
    };
    let uid: String = raw
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    // RFC 4122 text form: 36 characters, dashes at 8, 13, 18, 23.
    let ok = uid.len() == 36
        && uid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then_some(uid)
}

/// The cgroup id of a cgroup v2 directory: the inode number of the directory
/// in cgroupfs, which is the id `bpf_get_current_cgroup_id()` returns in the
/// kernel for tasks in that cgroup (kernfs node id on 64-bit kernels).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones), from a mountinfo text
/// (`/proc/self/mountinfo`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Every container cgroup under a cgroup v2 root, as (container id, cgroup
/// id, path relative to the root). Walking the hierarchy finds a pod's
/// cgroup ids whatever cgroup namespace the agent runs in (where
/// `/proc/<pid>/cgroup` shows paths relative to its own cgroup, `/../..`).
/// Depth is bounded: kubelet nests containers 4 levels below the root.
pub fn container_cgroups(root: &Path) -> Vec<(ContainerId, u64, String)> {
    const MAX_DEPTH: usize = 6;
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            let name = e.file_name();
            if let Some(id) = name.to_str().and_then(container_id_of_segment) {
                if let Ok(cg) = cgroup_id(&path) {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    out.push((id, cg, format!("/{}", rel.display())));
                }
            } else if depth + 1 < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0e8b7d41f6a5c2e9d8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4";
    const UID: &str = "8d3e1f4a-2b6c-4d7e-9f80-1a2b3c4d5e6f";

    fn id() -> ContainerId {
        ContainerId::parse(ID).unwrap()
    }

    #[test]
    fn cgroup_v2_systemd_driver_runtimes() {
        let uid_ = UID.replace('-', "_");
        for scope in ["cri-containerd", "crio", "docker", "cri-dockerd"] {
            let path = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/{scope}-{ID}.scope"
            );
            let info = parse_proc_cgroup(&format!("0::{path}\n")).unwrap();
            assert_eq!(info.container_id, Some(id()), "{scope}");
            assert_eq!(info.pod_uid.as_deref(), Some(UID), "{scope}");
            assert_eq!(info.path, path);
        }
        // Guaranteed QoS pods sit directly under kubepods.slice.
        let g = format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope\n");
        let info = parse_proc_cgroup(&g).unwrap();
        assert_eq!(
            (info.container_id, info.pod_uid.as_deref()),
            (Some(id()), Some(UID))
        );
    }

    #[test]
    fn cgroup_v2_cgroupfs_driver() {
        for qos in ["besteffort/", "burstable/", ""] {
            let t = format!("0::/kubepods/{qos}pod{UID}/{ID}\n");
            let info = parse_proc_cgroup(&t).unwrap();
            assert_eq!(info.container_id, Some(id()), "{t}");
            assert_eq!(info.pod_uid.as_deref(), Some(UID), "{t}");
        }
    }

    #[test]
    fn cgroup_v1_lines_of_a_kubernetes_container() {
        // A real cgroup v1 /proc/<pid>/cgroup of a containerd container
        // (cgroupfs driver): every controller names the same path.
        let t = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
             11:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
             10:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n\
             0::/\n"
        );
        let info = parse_proc_cgroup(&t).unwrap();
        assert_eq!(info.container_id, Some(id()));
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn plain_docker_and_crio_conmon() {
        let info = parse_proc_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")).unwrap();
        assert_eq!((info.container_id, info.pod_uid), (Some(id()), None));
        let info = parse_proc_cgroup(&format!("4:memory:/docker/{ID}\n0::/\n")).unwrap();
        assert_eq!(info.container_id, Some(id()));
        // CRI-O's monitor process is not the container.
        let info = parse_proc_cgroup(&format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope\n",
            UID.replace('-', "_")
        ))
        .unwrap();
        assert_eq!(info.container_id, None);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn paths_seen_from_another_cgroup_namespace() {
        let t = format!(
            "0::/../../kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        let info = parse_proc_cgroup(&t).unwrap();
        assert_eq!(
            (info.container_id, info.pod_uid.as_deref()),
            (Some(id()), Some(UID))
        );
    }

    #[test]
    fn host_processes_have_no_container() {
        for t in [
            "0::/init.scope\n",
            "0::/system.slice/nginx.service\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "4:memory:/process_api/d10f622d0a2f9d876cd68d55c2243d5f\n0::/\n",
        ] {
            let info = parse_proc_cgroup(t).unwrap();
            assert_eq!((info.container_id, info.pod_uid), (None, None), "{t}");
        }
        assert_eq!(parse_proc_cgroup("garbage"), None);
        // Ids must be exactly 64 hex characters.
        assert_eq!(
            parse_path(&format!("/docker/{}", &ID[..63])).container_id,
            None
        );
        assert_eq!(parse_path(&format!("/docker/{ID}0")).container_id, None);
    }

    #[test]
    fn status_container_ids() {
        for p in ["containerd://", "cri-o://", "docker://"] {
            assert_eq!(ContainerId::from_status(&format!("{p}{ID}")), Some(id()));
        }
        assert_eq!(ContainerId::from_status(ID), None);
        assert_eq!(ContainerId::parse(&ID.to_uppercase()), Some(id()));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1 = "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(v1), None);
    }
}
