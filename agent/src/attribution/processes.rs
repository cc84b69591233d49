//! Which processes are which service: turns `match: {comm, exe, cgroup}`
//! into entries of the kernel's `MATCHES` map.
//!
//! The kernel can see a process's tgid, cgroup id and thread name at no
//! cost, but not its executable path. So:
//! - a matcher of only `comm` becomes one `COMM` entry (new processes match
//!   at once);
//! - a matcher of only `cgroup` becomes one `CGROUP` entry per cgroup v2
//!   directory under the prefix (a new container matches as soon as the
//!   next refresh sees its cgroup, before its first request in practice);
//! - anything with `exe`, or several fields, is resolved per process from
//!   /proc into `TGID` entries (new processes match within a refresh, and
//!   the kernel looks again at connections it ignored before: see
//!   `ConnState::generation`);
//! - a client matcher of only `port` becomes one `PORT` entry;
//! - a Kubernetes selector (`namespace`, `labels`, optionally `port`)
//!   becomes one `CGROUP` entry per container cgroup of every selected pod
//!   on this node (from the pod directory, refreshed as pods come and go).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burnwatch_common::maps::{CLIENT_ID_BASE, MatchKey, config_flags, match_kind, role};

use super::kubernetes;
use super::pods::PodDirectory;
use crate::config::{Config, Match};

/// Where the host's cgroup v2 hierarchy is: `$BURNWATCH_CGROUP_ROOT` when
/// set (the chart mounts the host's at `/host/sys/fs/cgroup`: a container's
/// own `/sys/fs/cgroup` shows only its cgroup namespace), else from this
/// process's mountinfo (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup_v2_root() -> PathBuf {
    if let Some(root) = std::env::var_os("BURNWATCH_CGROUP_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| super::cgroup::cgroup2_mount(&m))
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// Every this many refreshes, known processes are read again (an `exec`
/// changes a process's exe and comm without changing its pid).
const FULL_RESCAN_EVERY: u32 = 10;

/// One configured matcher: who it is (role, kernel id) and what it needs.
#[derive(Debug, Clone)]
struct Rule {
    role: u8,
    id: u32,
    m: Match,
}

impl Rule {
    /// Adds the `MATCHES` entry naming this rule for attribute `attr` of
    /// `kind` (the first rule to claim an entry keeps it).
    fn add_entry(&self, out: &mut BTreeMap<MatchKey, u32>, kind: u8, attr: &[u8]) {
        out.entry(key(kind, self.role, self.m.port.unwrap_or(0), attr))
            .or_insert(self.id);
    }
}

/// What a process looks like, from /proc.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProcessInfo {
    comm: String,
    exe: Option<PathBuf>,
    cgroup: Option<String>,
}

/// Computes the `MATCHES` entries the config asks for, refreshed from /proc
/// and the cgroup tree.
pub struct ProcessMatcher {
    /// Entries that do not depend on running processes (comm, client port).
    fixed: BTreeMap<MatchKey, u32>,
    /// Rules resolved through the cgroup tree.
    cgroup_rules: Vec<Rule>,
    /// Rules resolved per process.
    process_rules: Vec<Rule>,
    /// Rules selecting Kubernetes pods, resolved through the pod directory.
    pod_rules: Vec<Rule>,
    /// Processes read so far (pid -> what they looked like).
    known: HashMap<u32, ProcessInfo>,
    refreshes: u32,
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl ProcessMatcher {
    pub fn new(config: &Config) -> Self {
        let services = config.services.iter().enumerate().map(|(i, s)| Rule {
            role: role::SERVER,
            id: i as u32,
            m: s.matcher.clone(),
        });
        let clients = config.clients.iter().enumerate().map(|(i, s)| Rule {
            role: role::CLIENT,
            id: CLIENT_ID_BASE + i as u32,
            m: s.matcher.clone(),
        });
        let mut fixed = BTreeMap::new();
        let mut cgroup_rules = Vec::new();
        let mut process_rules = Vec::new();
        let mut pod_rules = Vec::new();
        for r in services.chain(clients) {
            let m = &r.m;
            let port = m.port.unwrap_or(0);
            if m.selects_pods() {
                pod_rules.push(r);
                continue;
            }
            match (&m.comm, &m.exe, &m.cgroup) {
                // Server ports alone live in SERVICE_PORTS.
                (None, None, None) if r.role == role::SERVER => {}
                (None, None, None) => {
                    fixed
                        .entry(key(match_kind::PORT, r.role, port, &[]))
                        .or_insert(r.id);
                }
                (Some(comm), None, None) => {
                    fixed
                        .entry(key(match_kind::COMM, r.role, port, comm.as_bytes()))
                        .or_insert(r.id);
                }
                (None, None, Some(_)) => cgroup_rules.push(r),
                _ => process_rules.push(r),
            }
        }
        ProcessMatcher {
            fixed,
            cgroup_rules,
            process_rules,
            pod_rules,
            known: HashMap::new(),
            refreshes: 0,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: cgroup_v2_root(),
        }
    }

    /// The `config_flags::MATCH_*` bits for the kinds of entries this
    /// config can produce (the kernel skips lookups of the others).
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        for k in self.fixed.keys() {
            f |= match k.kind {
                match_kind::COMM => config_flags::MATCH_COMM,
                match_kind::PORT => config_flags::MATCH_PORT,
                _ => 0,
            };
        }
        if !self.cgroup_rules.is_empty() || !self.pod_rules.is_empty() {
            f |= config_flags::MATCH_CGROUP;
        }
        if !self.process_rules.is_empty() {
            f |= config_flags::MATCH_TGID;
        }
        f
    }

    /// Whether entries depend on running processes (a refresh can change
    /// them).
    pub fn is_dynamic(&self) -> bool {
        !self.cgroup_rules.is_empty()
            || !self.process_rules.is_empty()
            || !self.pod_rules.is_empty()
    }

    /// Every entry the kernel should have now.
    pub fn entries(&mut self, pods: &PodDirectory) -> BTreeMap<MatchKey, u32> {
        let mut out = self.fixed.clone();
        for r in &self.pod_rules {
            for (cgroup_id, pod) in pods.iter() {
                // Pod fields here; comm/exe/cgroup, if also given, are not
                // checked per container (the config documents selectors
                // with `port` only).
                if kubernetes::matches(&r.m, &pod.meta) {
                    r.add_entry(&mut out, match_kind::CGROUP, &cgroup_id.to_le_bytes());
                }
            }
        }
        if !self.cgroup_rules.is_empty() {
            let mut dirs = Vec::new();
            walk_cgroups(&self.cgroup_root, "", &mut dirs);
            for r in &self.cgroup_rules {
                let prefix = r.m.cgroup.as_deref().unwrap_or("/");
                for (path, id) in &dirs {
                    if path.starts_with(prefix) {
                        r.add_entry(&mut out, match_kind::CGROUP, &id.to_le_bytes());
                    }
                }
            }
        }
        if !self.process_rules.is_empty() {
            self.refresh_processes();
            for (pid, info) in &self.known {
                for r in &self.process_rules {
                    if matches(&r.m, info) {
                        r.add_entry(&mut out, match_kind::TGID, &pid.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Reads new processes (all of them every `FULL_RESCAN_EVERY` calls)
    /// and forgets those that exited.
    fn refresh_processes(&mut self) {
        self.refreshes = self.refreshes.wrapping_add(1);
        let full = self.refreshes % FULL_RESCAN_EVERY == 1;
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let mut alive = Vec::new();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            alive.push(pid);
            if (full || !self.known.contains_key(&pid))
                && let Some(info) = read_process(&self.proc_root, pid)
            {
                self.known.insert(pid, info);
            }
        }
        alive.sort_unstable();
        self.known.retain(|pid, _| alive.binary_search(pid).is_ok());
    }
}

fn key(kind: u8, role: u8, port: u16, attr: &[u8]) -> MatchKey {
    let mut k = MatchKey {
        kind,
        role,
        port,
        _pad: 0,
        attr: [0; 16],
    };
    let n = attr.len().min(16);
    k.attr[..n].copy_from_slice(&attr[..n]);
    k
}

/// Whether a process fits every field a matcher gives (the port is the
/// kernel's to check).
fn matches(m: &Match, p: &ProcessInfo) -> bool {
    m.comm.as_ref().is_none_or(|c| *c == p.comm)
        && m.exe.as_ref().is_none_or(|e| p.exe.as_ref() == Some(e))
        && m.cgroup.as_ref().is_none_or(|c| {
            p.cgroup
                .as_ref()
                .is_some_and(|pc| pc.starts_with(c.as_str()))
        })
}

fn read_process(proc_root: &Path, pid: u32) -> Option<ProcessInfo> {
    let dir = proc_root.join(pid.to_string());
    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
    Some(ProcessInfo {
        comm: comm.trim_end_matches('\n').to_string(),
        // Kernel threads have no exe; a process that exits mid-read has none.
        exe: std::fs::read_link(dir.join("exe")).ok(),
        cgroup: std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|s| cgroup_v2_path(&s)),
    })
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` file (the `0::` line).
pub fn cgroup_v2_path(file: &str) -> Option<String> {
    file.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Every directory of the cgroup v2 tree under `root`, as (path relative to
/// the root starting with `/`, cgroup id). The id of a cgroup v2 directory
/// is its inode number: what `bpf_get_current_cgroup_id()` returns.
fn walk_cgroups(root: &Path, rel: &str, out: &mut Vec<(String, u64)>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(&rel[1..])
    };
    let Ok(id) = super::cgroup::cgroup_id(&dir) else {
        return;
    };
    out.push((
        if rel.is_empty() {
            "/".to_string()
        } else {
            rel.to_string()
        },
        id,
    ));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(name) = e.file_name().to_str()
        {
            walk_cgroups(root, &format!("{rel}/{name}"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn comm_and_client_port_matchers_are_fixed_entries() {
        let mut m = ProcessMatcher::new(&config(
            "services:\n  - name: web\n    match: {comm: nginx, port: 8080}\n  - name: api\n    match: {port: 9000}\n\
             clients:\n  - name: payments\n    match: {port: 443}\n",
        ));
        assert!(!m.is_dynamic());
        assert_eq!(
            m.flags(),
            config_flags::MATCH_COMM | config_flags::MATCH_PORT
        );
        let e = m.entries(&PodDirectory::default());
        assert_eq!(e.len(), 2);
        assert_eq!(e[&key(match_kind::COMM, role::SERVER, 8080, b"nginx")], 0);
        assert_eq!(
            e[&key(match_kind::PORT, role::CLIENT, 443, &[])],
            CLIENT_ID_BASE
        );
    }

    #[test]
    fn exe_matchers_resolve_this_process() {
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let yaml = format!(
            "services:\n  - name: me\n    match: {{exe: {}}}\n",
            me.display()
        );
        let mut m = ProcessMatcher::new(&config(&yaml));
        assert_eq!(m.flags(), config_flags::MATCH_TGID);
        let e = m.entries(&PodDirectory::default());
        let pid = std::process::id();
        assert_eq!(
            e.get(&key(match_kind::TGID, role::SERVER, 0, &pid.to_le_bytes())),
            Some(&0),
            "{e:?}"
        );
    }

    #[test]
    fn cgroup_matchers_resolve_the_cgroup_tree() {
        // A fake tree: ids are inode numbers of real directories.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("system.slice/nginx.service")).unwrap();
        std::fs::create_dir_all(root.path().join("user.slice")).unwrap();
        let mut m = ProcessMatcher::new(&config(
            "services:\n  - name: web\n    match: {cgroup: /system.slice/nginx}\n",
        ));
        m.cgroup_root = root.path().to_path_buf();
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(root.path().join("system.slice/nginx.service")).unwrap(),
        );
        let e = m.entries(&PodDirectory::default());
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[&key(match_kind::CGROUP, role::SERVER, 0, &ino.to_le_bytes())],
            0
        );
    }

    #[test]
    fn cgroup_v2_line() {
        assert_eq!(
            cgroup_v2_path("12:pids:/x\n0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(cgroup_v2_path("1:name=systemd:/x\n"), None);
    }
}
