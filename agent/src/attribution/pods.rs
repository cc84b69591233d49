//! Pods by cgroup id: the join between what the kernel puts in a series key
//! (the cgroup v2 id of the process that served the connection, see
//! `RequestKey::cgroup_id`) and who that process is in Kubernetes.
//!
//! Rebuilt from the pod index (`kubernetes.rs`) and a walk of the cgroup
//! tree when the index changes, and every [`REWALK_EVERY`] anyway (a
//! container's cgroup can appear after the pod status that names it).
//! Outside Kubernetes the directory is empty and costs nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kubernetes::{self, PodMeta, SharedIndex};

/// The cgroup tree is walked again at least this often.
const REWALK_EVERY: Duration = Duration::from_secs(10);

/// The labels a pod gives its series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodLabels {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    /// The owning Deployment, StatefulSet, DaemonSet... by name; empty for
    /// a bare pod.
    pub workload: Arc<str>,
}

impl PodLabels {
    /// As (label, value) pairs, the first `n` of the array; an empty
    /// workload (a bare pod) is left out. No allocation: exporters call
    /// this per series per scrape.
    pub fn pairs(&self) -> ([(&'static str, &str); 3], usize) {
        let mut out = [
            ("namespace", &*self.namespace),
            ("pod", &*self.pod),
            ("workload", ""),
        ];
        if self.workload.is_empty() {
            (out, 2)
        } else {
            out[2].1 = &self.workload;
            (out, 3)
        }
    }

    /// [`Self::pairs`] of an optional pod: nothing outside Kubernetes.
    pub fn pairs_of(pod: Option<&PodLabels>) -> ([(&'static str, &str); 3], usize) {
        pod.map_or(([("", ""); 3], 0), PodLabels::pairs)
    }
}

/// One pod container's cgroup: who it is, and its labels made once.
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub meta: PodMeta,
    pub labels: Arc<PodLabels>,
}

impl PodEntry {
    fn new(meta: PodMeta) -> Self {
        let labels = Arc::new(PodLabels {
            namespace: meta.namespace.clone(),
            pod: meta.pod.clone(),
            workload: meta
                .workload
                .as_ref()
                .map_or_else(|| Arc::from(""), |w| w.name.clone()),
        });
        PodEntry { meta, labels }
    }
}

#[derive(Default)]
pub struct PodDirectory {
    index: Option<SharedIndex>,
    cgroup_root: PathBuf,
    by_cgroup: HashMap<u64, PodEntry>,
    seen_generation: Option<u64>,
    walked_at: Option<Instant>,
    /// Bumped whenever `by_cgroup` changes: caches of resolved labels are
    /// valid for one version.
    version: u64,
}

impl PodDirectory {
    /// A directory fed by `index` (`None` outside Kubernetes: always empty).
    pub fn new(index: Option<SharedIndex>, cgroup_root: PathBuf) -> Self {
        PodDirectory {
            index,
            cgroup_root,
            ..Default::default()
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the pod index has listed this node's pods once (always true
    /// outside Kubernetes).
    pub fn synced(&self) -> bool {
        self.index
            .as_ref()
            .is_none_or(|i| i.read().is_ok_and(|i| i.synced()))
    }

    /// The pod of a kernel key's `cgroup_id` (0, outside Kubernetes, is
    /// never a pod).
    pub fn get(&self, cgroup_id: u64) -> Option<&PodEntry> {
        self.by_cgroup.get(&cgroup_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &PodEntry)> {
        self.by_cgroup.iter().map(|(k, v)| (*k, v))
    }

    /// Rebuilds the directory if the index changed or the last walk is
    /// old. Returns whether its content changed.
    pub fn refresh(&mut self, now: Instant) -> bool {
        let Some(index) = &self.index else {
            return false;
        };
        let Ok(index) = index.read() else {
            return false;
        };
        let generation = index.generation();
        let stale = self
            .walked_at
            .is_none_or(|t| now.duration_since(t) >= REWALK_EVERY);
        if !stale && self.seen_generation == Some(generation) {
            return false;
        }
        let found = kubernetes::pods_by_cgroup(&index, &self.cgroup_root);
        drop(index);
        self.seen_generation = Some(generation);
        self.walked_at = Some(now);
        let same = found.len() == self.by_cgroup.len()
            && found
                .iter()
                .all(|(cg, m)| self.by_cgroup.get(cg).is_some_and(|e| e.meta == *m));
        if same {
            return false;
        }
        self.by_cgroup = found
            .into_iter()
            .map(|(cg, meta)| (cg, PodEntry::new(meta)))
            .collect();
        self.version += 1;
        true
    }

    /// A directory with these entries, for tests.
    #[cfg(test)]
    pub fn from_entries(entries: impl IntoIterator<Item = (u64, PodMeta)>) -> Self {
        let by_cgroup = entries
            .into_iter()
            .map(|(cg, meta)| (cg, PodEntry::new(meta)))
            .collect();
        PodDirectory {
            index: Some(SharedIndex::default()),
            by_cgroup,
            version: 1,
            ..Default::default()
        }
    }
}
