//! Container id -> pod, from the Kubernetes API: a watch on the pods of this
//! node only (`spec.nodeName`) and on namespaces (their labels), kept as an
//! in-memory index.
//!
//! Outside Kubernetes (no in-cluster service account, no kubeconfig) or with
//! the API unreachable, the watch logs it once and the agent carries on with
//! process and cgroup attribution: lookups simply find nothing.
//!
//! Memory is bounded by what the API holds for one node: the pods the
//! kubelet runs there (110 by default) and the cluster's namespaces (capped
//! at [`MAX_NAMESPACES`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use super::cgroup::{self, ContainerId};
use crate::config::{Match, Tenant, TenantFrom};

/// Namespaces kept at most (their labels only); more are ignored.
pub const MAX_NAMESPACES: usize = 100_000;

/// Who a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub uid: Arc<str>,
    /// The controller behind the pod; `None` for a bare pod.
    pub workload: Option<Workload>,
    pub labels: Arc<BTreeMap<String, String>>,
    /// Labels of the pod's namespace (empty until the namespace is seen).
    pub namespace_labels: Arc<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, or the owner's own
    /// kind for anything else (`ReplicaSet` without a Deployment, CRDs).
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

/// A pod as indexed: everything but the namespace's labels, which are
/// joined at lookup time (they change independently).
#[derive(Debug, Clone)]
struct PodEntry {
    namespace: Arc<str>,
    pod: Arc<str>,
    workload: Option<Workload>,
    labels: Arc<BTreeMap<String, String>>,
    containers: Vec<ContainerId>,
}

/// Pods of this node by container id, and namespace labels.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<Arc<str>, PodEntry>,
    containers: HashMap<ContainerId, Arc<str>>,
    namespaces: HashMap<String, Arc<BTreeMap<String, String>>>,
    /// Pod uids seen since the watch (re)started listing; on InitDone the
    /// others are dropped.
    relisting: Option<Vec<Arc<str>>>,
    relisting_ns: Option<Vec<String>>,
    /// Whether the first list of this node's pods, and of the namespaces,
    /// has completed.
    pods_listed: bool,
    namespaces_listed: bool,
    /// Bumped on every change, so readers rebuild what they derive from
    /// the index only when it changed.
    generation: u64,
}

pub type SharedIndex = Arc<RwLock<PodIndex>>;

impl PodIndex {
    /// The pod running container `id`.
    pub fn lookup(&self, id: &ContainerId) -> Option<PodMeta> {
        let uid = self.containers.get(id)?;
        self.lookup_uid(uid)
    }

    /// The pod with this uid (e.g. from a cgroup path's `pod<uid>`).
    pub fn lookup_uid(&self, uid: &str) -> Option<PodMeta> {
        let (uid, p) = self.pods.get_key_value(uid)?;
        Some(self.meta(uid, p))
    }

    /// Every container of every pod on this node.
    #[cfg(test)]
    pub fn containers(&self) -> impl Iterator<Item = (ContainerId, PodMeta)> + '_ {
        self.pods.iter().flat_map(move |(uid, p)| {
            let meta = self.meta(uid, p);
            p.containers.iter().map(move |c| (*c, meta.clone()))
        })
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Whether the pods of this node and the namespaces have been listed
    /// once: until then a pod may be missing only because it is not
    /// listed yet.
    pub fn synced(&self) -> bool {
        self.pods_listed && self.namespaces_listed
    }

    /// Changes whenever pods or namespaces change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn meta(&self, uid: &Arc<str>, p: &PodEntry) -> PodMeta {
        PodMeta {
            namespace: p.namespace.clone(),
            pod: p.pod.clone(),
            uid: uid.clone(),
            workload: p.workload.clone(),
            labels: p.labels.clone(),
            namespace_labels: self
                .namespaces
                .get(&*p.namespace)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Adds or replaces a pod (its containers may have started since).
    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        let uid: Arc<str> = Arc::from(uid);
        self.generation += 1;
        self.remove_uid(&uid);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let containers: Vec<ContainerId> = status
            .into_iter()
            .flat_map(|s| {
                let all = [
                    s.container_statuses.as_deref(),
                    s.init_container_statuses.as_deref(),
                    s.ephemeral_container_statuses.as_deref(),
                ];
                all.into_iter().flatten().flatten()
            })
            .filter_map(|c| c.container_id.as_deref().and_then(ContainerId::from_status))
            .collect();
        for c in &containers {
            self.containers.insert(*c, uid.clone());
        }
        let entry = PodEntry {
            namespace: Arc::from(pod.metadata.namespace.as_deref().unwrap_or("default")),
            pod: Arc::from(pod.metadata.name.as_deref().unwrap_or("")),
            workload: workload_of(pod),
            labels: Arc::new(labels),
            containers,
        };
        if let Some(seen) = &mut self.relisting {
            seen.push(uid.clone());
        }
        self.pods.insert(uid, entry);
    }

    pub fn delete_pod(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.remove_uid(uid);
        }
    }

    fn remove_uid(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            self.generation += 1;
            for c in old.containers {
                self.containers.remove(&c);
            }
        }
    }

    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return;
        };
        if self.namespaces.len() >= MAX_NAMESPACES && !self.namespaces.contains_key(&name) {
            return;
        }
        let labels = Arc::new(ns.metadata.labels.clone().unwrap_or_default());
        self.generation += 1;
        if let Some(seen) = &mut self.relisting_ns {
            seen.push(name.clone());
        }
        self.namespaces.insert(name, labels);
    }

    pub fn delete_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            self.generation += 1;
            self.namespaces.remove(name);
        }
    }

    /// A raw watch event as the API sends it (`{"type": "ADDED", "object": ...}`).
    #[cfg(test)]
    pub fn apply_pod_watch_event(&mut self, ev: &kube::core::WatchEvent<Pod>) {
        use kube::core::WatchEvent;
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => self.apply_pod(p),
            WatchEvent::Deleted(p) => self.delete_pod(p),
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => {}
        }
    }

    /// An event of kube's watcher (which relists after a broken watch).
    fn apply_pod_event(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Apply(p) | Event::InitApply(p) => self.apply_pod(&p),
            Event::Delete(p) => self.delete_pod(&p),
            Event::Init => self.relisting = Some(Vec::new()),
            Event::InitDone => {
                self.pods_listed = true;
                if let Some(seen) = self.relisting.take() {
                    let seen: std::collections::HashSet<Arc<str>> = seen.into_iter().collect();
                    let gone: Vec<Arc<str>> = self
                        .pods
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        self.remove_uid(&uid);
                    }
                }
            }
        }
    }

    fn apply_namespace_event(&mut self, ev: Event<Namespace>) {
        match ev {
            Event::Apply(n) | Event::InitApply(n) => self.apply_namespace(&n),
            Event::Delete(n) => self.delete_namespace(&n),
            Event::Init => self.relisting_ns = Some(Vec::new()),
            Event::InitDone => {
                self.namespaces_listed = true;
                if let Some(seen) = self.relisting_ns.take() {
                    let seen: std::collections::HashSet<String> = seen.into_iter().collect();
                    self.namespaces.retain(|n, _| seen.contains(n));
                    self.generation += 1;
                }
            }
        }
    }
}

/// The controller behind a pod: a ReplicaSet owned by a Deployment is named
/// `<deployment>-<pod-template-hash>`, so the Deployment is recovered from
/// the pod's own `pod-template-hash` label without reading the ReplicaSet
/// (which the agent's role may not read).
pub fn workload_of(pod: &Pod) -> Option<Workload> {
    let owner = pod
        .metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    let w = |kind: &str, name: &str| Workload {
        kind: Arc::from(kind),
        name: Arc::from(name),
    };
    if owner.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deploy) = hash.and_then(|h| {
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|s| s.strip_suffix('-'))
        }) {
            return Some(w("Deployment", deploy));
        }
    }
    Some(w(&owner.kind, &owner.name))
}

/// Does a service's `match` select this pod? Only the pod part (namespace,
/// labels) is checked here; `port` is matched by the kernel. A match with
/// no pod part selects every pod.
pub fn matches(m: &Match, pod: &PodMeta) -> bool {
    m.namespace
        .as_deref()
        .is_none_or(|ns| ns == &*pod.namespace)
        && m.labels
            .iter()
            .all(|(k, v)| pod.labels.get(k).is_some_and(|pv| pv == v))
}

/// The tenant of requests served by this pod under a Kubernetes tenant
/// rule; `None` for the other rules (the tenant comes from the request) and
/// when the namespace lacks the label.
pub fn tenant_of(rule: &Tenant, pod: &PodMeta) -> Option<Arc<str>> {
    match rule.from {
        TenantFrom::Namespace => Some(pod.namespace.clone()),
        TenantFrom::NamespaceLabel => {
            let label = rule.label.as_deref()?;
            pod.namespace_labels
                .get(label)
                .map(|v| Arc::from(v.as_str()))
        }
        TenantFrom::Header | TenantFrom::Host | TenantFrom::Path | TenantFrom::None => None,
    }
}

/// The service name of a pod no configured service names: its workload
/// (`checkout` for Deployment checkout), else the pod itself.
pub fn default_service_name(pod: &PodMeta) -> Arc<str> {
    pod.workload
        .as_ref()
        .map_or_else(|| pod.pod.clone(), |w| w.name.clone())
}

/// Every pod container on this node by cgroup v2 id (the id
/// `bpf_get_current_cgroup_id()` returns for its processes), found by
/// walking the cgroup hierarchy at `cgroup_root` (`/host/sys/fs/cgroup` in
/// the chart) and looking the container ids up in the index.
pub fn pods_by_cgroup(index: &PodIndex, cgroup_root: &Path) -> Vec<(u64, PodMeta)> {
    cgroup::container_cgroups(cgroup_root)
        .into_iter()
        .filter_map(|(id, cg, _)| index.lookup(&id).map(|m| (cg, m)))
        .collect()
}

/// This node's name when the agent runs in a cluster (`NODE_NAME`, set by
/// the chart from `spec.nodeName`): pods are attributed then.
pub fn node_name() -> Option<String> {
    std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())
}

/// Starts the pod and namespace watches when the agent runs in a cluster
/// (`NODE_NAME` set, as the chart does), filling the returned index in the
/// background. `None` outside Kubernetes.
pub fn spawn_from_env() -> Option<SharedIndex> {
    let Some(node) = node_name() else {
        info!("NODE_NAME not set: no Kubernetes pod attribution (process and cgroup only)");
        return None;
    };
    let index = SharedIndex::default();
    tokio::spawn(watch(index.clone(), node));
    Some(index)
}

/// Runs the watches until the process ends. Every failure is logged once at
/// `warn`, repeats at `debug`; the watcher retries with backoff.
pub async fn watch(index: SharedIndex, node: String) {
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no Kubernetes API: pods are not attributed (process and cgroup only)");
            // Nothing will be listed: nobody waits for it.
            if let Ok(mut i) = index.write() {
                i.pods_listed = true;
                i.namespaces_listed = true;
            }
            return;
        }
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client);
    let pod_config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));

    let pod_index = index.clone();
    let pods = async move {
        let mut warned = false;
        let mut stream = watcher(pods, pod_config).default_backoff().boxed();
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => {
                    if matches!(ev, Event::InitDone) {
                        let n = pod_index.read().map(|i| i.pod_count()).unwrap_or(0);
                        info!(node = %node, pods = n, "pods of this node listed");
                    }
                    if let Ok(mut i) = pod_index.write() {
                        i.apply_pod_event(ev);
                    }
                }
                Ok(None) => return,
                Err(e) if !warned => {
                    warned = true;
                    warn!(error = %e, "pod watch failed (retrying; further errors at debug level)");
                }
                Err(e) => debug!(error = %e, "pod watch failed"),
            }
        }
    };
    let namespaces = async move {
        let mut warned = false;
        let mut stream = watcher(namespaces, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => {
                    if let Ok(mut i) = index.write() {
                        i.apply_namespace_event(ev);
                    }
                }
                Ok(None) => return,
                Err(e) if !warned => {
                    warned = true;
                    warn!(error = %e, "namespace watch failed (retrying; further errors at debug level)");
                }
                Err(e) => debug!(error = %e, "namespace watch failed"),
            }
        }
    };
    futures::join!(pods, namespaces);
}

#[cfg(test)]
#[path = "kubernetes_tests.rs"]
mod tests;
