//! Harness for end-to-end tests: start real servers (nginx, Python, Node,
//! Go: [`servers`]), real clients ([`client`]: raw sockets, curl, wrk), the real
//! agent binary with real eBPF, drive real HTTP traffic, and read back both
//! sides: the server's own access log and the agent's `/metrics`.
//!
//! Every process started here is killed when its handle drops, so a failing
//! assertion does not leave servers behind.

pub mod agent;
pub mod cgroup;
pub mod client;
pub mod exposition;
pub mod kube_api;
pub mod nginx;
pub mod peers;
pub mod real_servers;
pub mod servers;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// These tests load eBPF programs; without root they must fail, not skip.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "end-to-end tests load eBPF programs and must run as root (cargo xtask test)"
    );
}

/// The keys on which the agent's counts (`got`) and a server's log (`want`)
/// differ, one per line, or `None` when they are equal.
pub fn count_diff<K: Ord + std::fmt::Debug>(
    got: &std::collections::BTreeMap<K, u64>,
    want: &std::collections::BTreeMap<K, u64>,
) -> Option<String> {
    if got == want {
        return None;
    }
    let keys: std::collections::BTreeSet<&K> = got.keys().chain(want.keys()).collect();
    let mut diff = String::new();
    for k in keys {
        let (g, w) = (got.get(k).copied(), want.get(k).copied());
        if g != w {
            diff.push_str(&format!(
                "  {k:?}: agent {} / server log {}\n",
                g.unwrap_or(0),
                w.unwrap_or(0)
            ));
        }
    }
    Some(format!(
        "differences:\n{diff}agent ({} requests): {got:?}\nserver log ({} requests): {want:?}\n",
        got.values().sum::<u64>(),
        want.values().sum::<u64>(),
    ))
}

/// Asserts that the agent's counts (`got`) equal a server's log (`want`),
/// key for key; on failure prints the keys that differ, both maps, and the
/// agent's log.
pub fn assert_same_counts<K: Ord + std::fmt::Debug>(
    what: &str,
    got: &std::collections::BTreeMap<K, u64>,
    want: &std::collections::BTreeMap<K, u64>,
    agent: &agent::Agent,
) {
    if let Some(diff) = count_diff(got, want) {
        panic!(
            "{what}: the agent's counts differ from the server's own log\n{diff}agent log:\n{}",
            agent.log()
        );
    }
}

/// Resident memory (VmRSS) of process `pid` in KiB; 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
