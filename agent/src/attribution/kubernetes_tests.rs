//! The pod index on API responses in the wire format (`testdata/`: a
//! PodList and a NamespaceList as `GET /api/v1/pods?fieldSelector=
//! spec.nodeName=...` and `GET /api/v1/namespaces` return them, and a watch
//! stream's events), and a real process in a kubelet-shaped cgroup on this
//! machine resolved to its pod.

use std::path::{Path, PathBuf};

use k8s_openapi::List;
use kube::core::WatchEvent;

use super::*;
use crate::attribution::cgroup::{self, ContainerId};

const PODLIST: &str = include_str!("testdata/podlist.json");
const NAMESPACES: &str = include_str!("testdata/namespacelist.json");
const POD_WATCH: &str = include_str!("testdata/pod-watch-events.jsonl");

/// `containerID` of a container status in the fixtures, by pod and name.
fn status_id(pods: &List<Pod>, pod: &str, container: &str) -> ContainerId {
    let p = pods
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(pod))
        .unwrap();
    let s = p.status.as_ref().unwrap();
    let all = s
        .container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten());
    let c = all.into_iter().find(|c| c.name == container).unwrap();
    ContainerId::from_status(c.container_id.as_deref().unwrap()).unwrap()
}

fn fixture_index() -> (PodIndex, List<Pod>) {
    let pods: List<Pod> = serde_json::from_str(PODLIST).expect("PodList fixture");
    let namespaces: List<Namespace> = serde_json::from_str(NAMESPACES).expect("NamespaceList");
    let mut index = PodIndex::default();
    for n in &namespaces.items {
        index.apply_namespace(n);
    }
    for p in &pods.items {
        index.apply_pod(p);
    }
    (index, pods)
}

#[test]
fn pod_list_lookup_by_container_id() {
    let (index, pods) = fixture_index();
    assert_eq!(index.pod_count(), 5);

    let m = index
        .lookup(&status_id(&pods, "checkout-7d9f8b6c5d-x2x9k", "app"))
        .unwrap();
    assert_eq!(&*m.namespace, "shop");
    assert_eq!(&*m.pod, "checkout-7d9f8b6c5d-x2x9k");
    let w = m.workload.as_ref().unwrap();
    assert_eq!((&*w.kind, &*w.name), ("Deployment", "checkout"));
    assert_eq!(m.labels.get("app").map(String::as_str), Some("checkout"));
    assert_eq!(
        m.namespace_labels.get("team").map(String::as_str),
        Some("payments")
    );
    // Sidecars and init containers belong to the same pod.
    for c in ["envoy", "migrate"] {
        let other = index
            .lookup(&status_id(&pods, "checkout-7d9f8b6c5d-x2x9k", c))
            .unwrap();
        assert_eq!(other, m, "{c}");
    }

    let kinds = [
        ("postgres-0", "postgres", "StatefulSet", "postgres"),
        (
            "node-exporter-8qz7w",
            "node-exporter",
            "DaemonSet",
            "node-exporter",
        ),
        ("backup-29390880-zk2p4", "backup", "Job", "backup-29390880"),
    ];
    for (pod, container, kind, name) in kinds {
        let m = index.lookup(&status_id(&pods, pod, container)).unwrap();
        let w = m.workload.unwrap();
        assert_eq!((&*m.pod, &*w.kind, &*w.name), (pod, kind, name));
    }
    // CRI-O's containerID form resolves too (node-exporter is cri-o://).
    // A pending pod has no container yet but is known by uid (cgroup paths
    // carry it before the runtime reports the container id).
    let m = index
        .lookup_uid("d0e1f2a3-b4c5-4d6e-8f70-8192a3b4c5d6")
        .unwrap();
    assert_eq!((&*m.pod, m.workload), ("debug", None));
    assert!(
        m.namespace_labels
            .contains_key("kubernetes.io/metadata.name")
    );
    // Every container listed once: 3 in checkout (app, envoy, init), 1 each.
    assert_eq!(index.containers().count(), 6);
    assert!(
        index
            .lookup(&ContainerId::parse(&"0".repeat(64)).unwrap())
            .is_none()
    );
}

#[test]
fn watch_events_add_restart_and_delete() {
    let (mut index, pods) = fixture_index();
    let old_app = status_id(&pods, "checkout-7d9f8b6c5d-x2x9k", "app");
    let postgres = status_id(&pods, "postgres-0", "postgres");
    let events: Vec<WatchEvent<Pod>> = POD_WATCH
        .lines()
        .map(|l| serde_json::from_str(l).expect("watch event"))
        .collect();
    assert_eq!(events.len(), 4);
    for ev in &events {
        index.apply_pod_watch_event(ev);
    }
    let WatchEvent::Added(search) = &events[0] else {
        panic!("first event is ADDED")
    };
    let sid = ContainerId::from_status(
        search
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let m = index.lookup(&sid).unwrap();
    assert_eq!(m.workload.unwrap().name.as_ref(), "search");
    // The restarted container has a new id; the old one no longer resolves.
    assert!(index.lookup(&old_app).is_none());
    let WatchEvent::Modified(restarted) = &events[1] else {
        panic!("second event is MODIFIED")
    };
    let new_app = ContainerId::from_status(
        restarted
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_ne!(new_app, old_app);
    assert_eq!(
        &*index.lookup(&new_app).unwrap().pod,
        "checkout-7d9f8b6c5d-x2x9k"
    );
    // DELETED postgres-0.
    assert!(index.lookup(&postgres).is_none());
    assert_eq!(index.pod_count(), 5);
}

#[test]
fn relist_after_a_broken_watch_drops_pods_that_are_gone() {
    let (mut index, pods) = fixture_index();
    index.apply_pod_event(Event::Init);
    for p in pods
        .items
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some("postgres-0"))
    {
        index.apply_pod_event(Event::InitApply(p.clone()));
    }
    // Until the relist is complete, nothing is dropped.
    assert!(
        index
            .lookup(&status_id(&pods, "postgres-0", "postgres"))
            .is_some()
    );
    index.apply_pod_event(Event::InitDone);
    assert!(
        index
            .lookup(&status_id(&pods, "postgres-0", "postgres"))
            .is_none()
    );
    assert_eq!(index.pod_count(), 4);
}

#[test]
fn synced_once_pods_and_namespaces_are_listed() {
    let mut index = PodIndex::default();
    assert!(!index.synced());
    index.apply_pod_event(Event::Init);
    index.apply_pod_event(Event::InitDone);
    assert!(!index.synced(), "namespaces not listed yet");
    index.apply_namespace_event(Event::Init);
    index.apply_namespace_event(Event::InitDone);
    assert!(index.synced());
    // A relist after a broken watch does not unsync it.
    index.apply_pod_event(Event::Init);
    assert!(index.synced());
}

/// Removes the test's cgroup directories (deepest first) and kills the
/// child, even when an assertion fails.
struct CgroupGuard {
    dirs: Vec<PathBuf>,
    child: Option<std::process::Child>,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The kernel's own id of a cgroup directory, through its file handle
/// (kernfs encodes the cgroup id in it): an independent check of the inode
/// number `cgroup::cgroup_id` returns.
fn kernel_cgroup_id(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: [u8; 8],
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut h = Handle {
        bytes: 8,
        kind: 0,
        id: [0; 8],
    };
    let mut mount_id = 0;
    // SAFETY: `h` has room for the 8-byte handle it announces.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            (&mut h as *mut Handle).cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    u64::from_ne_bytes(h.id)
}

#[test]
fn real_process_in_a_kubelet_cgroup_resolves_to_its_pod() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = cgroup::cgroup2_mount(&mountinfo)
        .expect("this test needs a cgroup v2 hierarchy (mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified)");
    let (index, pods) = fixture_index();
    let app = status_id(&pods, "checkout-7d9f8b6c5d-x2x9k", "app");
    let uid = "5f0c8a52-3d4e-4b1a-9c7e-2a6b8d0e1f34";

    // The systemd driver's layout, under a directory of this test run.
    let top = root.join(format!("burnwatch-test-{}", std::process::id()));
    let mut dirs = vec![top.clone()];
    let mut dir = top.clone();
    for seg in [
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".to_string(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{app}.scope"),
    ] {
        dir = dir.join(seg);
        dirs.push(dir.clone());
    }
    let mut guard = CgroupGuard {
        dirs: dirs.clone(),
        child: None,
    };
    for d in &dirs {
        std::fs::create_dir(d).unwrap_or_else(|e| {
            panic!(
                "mkdir {}: {e} (this test needs root and a writable cgroup v2 hierarchy)",
                d.display()
            )
        });
    }
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    guard.child = Some(child);
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .expect("move the child into its cgroup");

    // pid -> cgroup -> container id -> pod.
    let info = cgroup::for_pid(Path::new("/proc"), pid).unwrap().unwrap();
    assert!(
        info.path.ends_with(&format!("cri-containerd-{app}.scope")),
        "{}",
        info.path
    );
    assert_eq!(info.container_id, Some(app));
    assert_eq!(info.pod_uid.as_deref(), Some(uid));
    let meta = index.lookup(&info.container_id.unwrap()).unwrap();
    assert_eq!(
        (&*meta.namespace, &*meta.pod),
        ("shop", "checkout-7d9f8b6c5d-x2x9k")
    );
    assert_eq!(meta.workload.unwrap().name.as_ref(), "checkout");
    assert_eq!(index.lookup_uid(uid).unwrap().pod, meta.pod);

    // container id -> cgroup id, by walking the hierarchy, equals the
    // kernel's id of the process's cgroup.
    let found = cgroup::container_cgroups(&top);
    assert_eq!(found.len(), 1, "{found:?}");
    let (id, cgroup_id, rel) = &found[0];
    assert_eq!(*id, app);
    assert!(info.path.ends_with(rel.as_str()), "{} vs {rel}", info.path);
    assert_eq!(*cgroup_id, kernel_cgroup_id(&dir));
    assert_eq!(
        *cgroup_id,
        cgroup::cgroup_id(&root.join(info.path.trim_start_matches('/'))).unwrap()
    );
    // What the lead joins to the kernel's cgroup ids.
    let by_cgroup = pods_by_cgroup(&index, &top);
    assert_eq!(by_cgroup.len(), 1);
    assert_eq!(
        (by_cgroup[0].0, &*by_cgroup[0].1.pod),
        (*cgroup_id, "checkout-7d9f8b6c5d-x2x9k")
    );
    drop(guard);
    assert!(!top.exists(), "cleanup");
}

#[test]
fn service_match_tenant_rule_and_default_name() {
    let (index, pods) = fixture_index();
    let checkout = index
        .lookup(&status_id(&pods, "checkout-7d9f8b6c5d-x2x9k", "app"))
        .unwrap();
    let postgres = index
        .lookup(&status_id(&pods, "postgres-0", "postgres"))
        .unwrap();
    let config = crate::config::Config::parse(
        "services:\n  - name: checkout\n    match: {namespace: shop, labels: {app: checkout}}\n  - name: shop\n    match: {namespace: shop}\n  - name: any-checkout\n    match: {labels: {app: checkout}}\ntenant: {from: namespace_label, label: team}\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    let m = |i: usize, p: &PodMeta| matches(&config.services[i].matcher, p);
    assert!(m(0, &checkout) && !m(0, &postgres));
    assert!(m(1, &checkout) && m(1, &postgres));
    assert!(m(2, &checkout) && !m(2, &postgres));
    assert_eq!(
        tenant_of(&config.tenant, &checkout).as_deref(),
        Some("payments")
    );
    let node_exporter = index
        .lookup(&status_id(&pods, "node-exporter-8qz7w", "node-exporter"))
        .unwrap();
    assert_eq!(
        tenant_of(&config.tenant, &node_exporter).as_deref(),
        Some("sre")
    );
    let debug = index
        .lookup_uid("d0e1f2a3-b4c5-4d6e-8f70-8192a3b4c5d6")
        .unwrap();
    assert_eq!(
        tenant_of(&config.tenant, &debug),
        None,
        "default has no team label"
    );
    let by_ns = crate::config::Tenant {
        from: crate::config::TenantFrom::Namespace,
        ..Default::default()
    };
    assert_eq!(tenant_of(&by_ns, &postgres).as_deref(), Some("shop"));
    assert_eq!(
        tenant_of(&crate::config::Tenant::default(), &postgres),
        None
    );
    assert_eq!(&*default_service_name(&checkout), "checkout");
    assert_eq!(&*default_service_name(&debug), "debug");
}
