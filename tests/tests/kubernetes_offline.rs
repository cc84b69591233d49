//! The real agent told it runs in Kubernetes (`NODE_NAME`, as the chart
//! sets it) where no API server answers: it says so once and carries on
//! serving metrics. One test per binary: it sets the process environment the
//! agent inherits.

use std::time::Duration;

use burnwatch_e2e::agent::Agent;
use burnwatch_e2e::{free_port, require_root};

fn occurrences(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn no_reachable_api_is_logged_once_and_the_agent_carries_on() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig whose API server port has no listener: every watch
    // attempt is refused, and retried with backoff.
    let kubeconfig = burnwatch_e2e::kube_api::kubeconfig(dir.path(), free_port());
    // SAFETY: the only test of this binary; no other thread reads the
    // environment while it is set.
    unsafe {
        std::env::set_var("NODE_NAME", "node-a");
        std::env::set_var("KUBECONFIG", &kubeconfig);
    }
    let agent = Agent::start("");
    // Several backoff rounds (the watcher retries within a second or two).
    std::thread::sleep(Duration::from_secs(6));
    let e = agent.scrape();
    assert!(
        e.sum("burnwatch_probes_attached", &[]) > 0.0,
        "still measuring"
    );
    let log = agent.log();
    assert_eq!(occurrences(&log, "pod watch failed"), 1, "{log}");
    assert_eq!(occurrences(&log, "namespace watch failed"), 1, "{log}");
    drop(agent);

    // No kubeconfig and not in a pod: no client at all, said once.
    unsafe {
        std::env::set_var("KUBECONFIG", dir.path().join("missing"));
        std::env::set_var("HOME", dir.path());
    }
    let agent = Agent::start("");
    std::thread::sleep(Duration::from_secs(2));
    let _ = agent.scrape();
    let log = agent.log();
    assert_eq!(occurrences(&log, "no Kubernetes API"), 1, "{log}");
    assert_eq!(occurrences(&log, "watch failed"), 0, "{log}");
}
