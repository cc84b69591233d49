//! Harness for end-to-end tests: start real servers (nginx), the real
//! agent binary with real eBPF, drive real HTTP traffic, and read back both
//! sides: the server's own access log and the agent's `/metrics`.
//!
//! Every process started here is killed when its handle drops, so a failing
//! assertion does not leave servers behind.

pub mod agent;
pub mod client;
pub mod exposition;
pub mod nginx;

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
