//! Pods joined to series, end to end: the real agent told it runs in
//! Kubernetes (`NODE_NAME`, a kubeconfig) watches a stand-in API server that
//! answers with recorded API responses; a real server runs in a cgroup
//! shaped as the kubelet (systemd driver, containerd) makes them, whose
//! container id the recorded pod's status names. The kernel keys series
//! by the serving cgroup; the agent names them after the pod.
//!
//! One test per binary: it sets the process environment the agent inherits.

use std::collections::BTreeMap;
use std::time::Duration;

use burnwatch_e2e::agent::{Agent, REQUESTS, method_counts_of};
use burnwatch_e2e::cgroup::TestCgroup;
use burnwatch_e2e::client;
use burnwatch_e2e::kube_api::FakeApiServer;
use burnwatch_e2e::servers::{Kind, MethodCounts, ScriptServer, Server};
use burnwatch_e2e::{assert_same_counts, require_root, wait_for, workspace_root};

/// The recorded `checkout` pod: namespace `shop` (label team=payments),
/// Deployment `checkout`, and the first of its containers.
const POD: &str = "checkout-7d9f8b6c5d-x2x9k";
const POD_UID: &str = "5f0c8a52-3d4e-4b1a-9c7e-2a6b8d0e1f34";
const CONTAINER: &str = "123beec1446e73544a838df719244e188ea8f7bd60b4531a75f9844d954ae3c3";

const CODES: &[u16] = &[200, 201, 404, 500, 503];

fn drive(port: u16, n: usize) -> usize {
    client::send_status_mix(port, n, CODES, &[Some("acme"), None])
}

/// The server's own log with every request's tenant replaced by `tenant`
/// (the tenant comes from the pod's namespace, not from the request).
fn as_tenant(counts: MethodCounts, tenant: &str) -> MethodCounts {
    let mut out = MethodCounts::new();
    for ((_, method, status), n) in counts {
        *out.entry((tenant.to_string(), method, status)).or_insert(0) += n;
    }
    out
}

fn wait_for_pods_listed(agent: &Agent) {
    let listed = wait_for(Duration::from_secs(30), || {
        agent
            .log()
            .contains("pods of this node listed")
            .then_some(())
    });
    assert!(
        listed.is_some(),
        "the agent never listed pods:\n{}",
        agent.log()
    );
    // The pod directory and the kernel's matchers follow within a poll.
    std::thread::sleep(Duration::from_millis(2500));
}

#[test]
fn series_carry_the_serving_pod_and_tenants_its_namespace() {
    require_root();
    let data = workspace_root().join("agent/src/attribution/testdata");
    let api = FakeApiServer::start(
        std::fs::read_to_string(data.join("podlist.json")).unwrap(),
        std::fs::read_to_string(data.join("namespacelist.json")).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    // SAFETY: the only test of this binary; no other thread reads the
    // environment while it is set.
    unsafe {
        std::env::set_var("NODE_NAME", "ip-10-0-3-17.eu-west-1.compute.internal");
        std::env::set_var("KUBECONFIG", &kubeconfig);
    }
    let in_pod = ScriptServer::start(Kind::Go);
    let outside = ScriptServer::start(Kind::Go);
    let cgroup = TestCgroup::nested(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CONTAINER}.scope",
        POD_UID.replace('-', "_")
    ));
    cgroup.adopt(in_pod.pid());

    // 1. A service selected by namespace and labels; tenant = namespace.
    let agent = Agent::start(
        "services:\n  - name: checkout\n    match: {namespace: shop, labels: {app: checkout}}\n\
         tenant:\n  from: namespace\n",
    );
    wait_for_pods_listed(&agent);
    let sent = drive(in_pod.port, 20) + drive(in_pod.port, 7);
    drive(outside.port, 9);
    in_pod.wait_for_log_lines(sent);
    let e = agent.settle_and_scrape();
    assert_same_counts(
        "checkout",
        &method_counts_of(&e, "checkout"),
        &as_tenant(in_pod.method_counts("unknown"), "shop"),
        &agent,
    );
    let mut pods = BTreeMap::new();
    for s in e.find(REQUESTS, &[]) {
        let l = &s.labels;
        *pods
            .entry((
                l["service"].clone(),
                l.get("namespace").cloned().unwrap_or_default(),
                l.get("pod").cloned().unwrap_or_default(),
                l.get("workload").cloned().unwrap_or_default(),
            ))
            .or_insert(0.0) += s.value;
    }
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        [&(
            "checkout".to_string(),
            "shop".to_string(),
            POD.to_string(),
            "checkout".to_string()
        )],
        "only the selected pod is counted, labelled with its pod: {pods:?}"
    );
    assert_eq!(
        e.sum(
            "burnwatch_http_request_duration_seconds_count",
            &[("pod", POD), ("tenant", "shop")]
        ),
        sent as f64,
        "the latency histogram carries the pod too"
    );
    drop(agent);

    // 2. No services configured: every server is found; the one in the pod
    // is named after its workload, the tenant is its namespace's label.
    let agent = Agent::start("tenant:\n  from: namespace_label\n  label: team\n  missing: none\n");
    wait_for_pods_listed(&agent);
    let before = in_pod.log_lines().len();
    let sent = drive(in_pod.port, 11);
    drive(outside.port, 5);
    in_pod.wait_for_log_lines(before + sent);
    let e = agent.settle_and_scrape();
    let mut expected = MethodCounts::new();
    for line in &in_pod.log_lines()[before..] {
        let mut f = line.split(' ');
        let (status, _tenant, method) = (f.next().unwrap(), f.next(), f.next().unwrap());
        *expected
            .entry((
                "payments".to_string(),
                method.to_string(),
                status.to_string(),
            ))
            .or_insert(0) += 1;
    }
    assert_same_counts(
        "checkout",
        &method_counts_of(&e, "checkout"),
        &expected,
        &agent,
    );
    let outside_series: Vec<_> = e
        .find(REQUESTS, &[])
        .filter(|s| s.labels["service"].ends_with(&format!(":{}", outside.port)))
        .collect();
    assert!(
        !outside_series.is_empty()
            && outside_series
                .iter()
                .all(|s| !s.labels.contains_key("pod") && s.labels["tenant"] == "none"),
        "a server outside any pod keeps its <comm>:<port> name, no pod, the missing tenant"
    );
    drop(api);
}
