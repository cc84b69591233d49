//! The real `burnwatch` binary, started with a config file.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::servers::{Counts, MethodCounts};
use crate::{exposition::Exposition, free_port, wait_for, workspace_root};

/// The metric the tests compare with the servers' logs.
pub const REQUESTS: &str = "burnwatch_http_requests_total";

pub struct Agent {
    child: Child,
    pub metrics_port: u16,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Path of the agent binary under test (release build of this workspace,
/// or `BURNWATCH_BIN`).
pub fn binary() -> PathBuf {
    std::env::var_os("BURNWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/burnwatch"))
}

impl Agent {
    /// Starts the agent with `config_body` (YAML) plus a Prometheus listener
    /// on a free port, and waits until it has attached and read the kernel
    /// maps once.
    pub fn start(config_body: &str) -> Agent {
        Agent::start_with_state(config_body, None)
    }

    /// Like [`Agent::start`], with the SLO state store in `state_dir` (to
    /// restart an agent on the state a previous one left).
    pub fn start_with_state(config_body: &str, state_dir: Option<&std::path::Path>) -> Agent {
        Agent::start_with_exporters(config_body, state_dir, "")
    }

    /// Like [`Agent::start_with_state`], with `exporters` (YAML lines
    /// indented by two spaces, e.g. `  otlp: {...}\n`) added to the
    /// `exporters:` section beside the Prometheus listener.
    pub fn start_with_exporters(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        exporters: &str,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = state_dir
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("state"));
        let metrics_port = free_port();
        let config = dir.path().join("burnwatch.yaml");
        let mut body = format!(
            "{config_body}\nexporters:\n  prometheus:\n    listen: 127.0.0.1:{metrics_port}\n{exporters}"
        );
        // Checkpoints every 2 s, so restart tests need not wait long.
        body.push_str(&format!(
            "state:\n  dir: {}\n  checkpoint_interval_secs: 2\n",
            state_dir.display()
        ));
        std::fs::write(&config, body).unwrap();
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let bin = binary();
        assert!(
            bin.exists(),
            "agent binary {} not built (cargo build --release)",
            bin.display()
        );
        let child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        let mut agent = Agent {
            child,
            metrics_port,
            log_path,
            _dir: dir,
        };
        // Verifying the programs takes ~5 s on an idle machine; several
        // agents verifying at once on 2 busy cores take much longer.
        let ready = wait_for(Duration::from_secs(180), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited with {status}:\n{}", agent.log());
            }
            crate::client::get_status(metrics_port, "/readyz")
                .filter(|s| *s == 200)
                .map(|_| ())
        });
        assert!(
            ready.is_some(),
            "agent not ready in 180 s:\n{}",
            agent.log()
        );
        agent
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Scrapes `/metrics`.
    pub fn scrape(&self) -> Exposition {
        let body = crate::client::get_body(self.metrics_port, "/metrics")
            .unwrap_or_else(|| panic!("scrape failed; agent log:\n{}", self.log()));
        Exposition::parse(&body)
    }

    /// Waits two poll intervals so counts reach the exposition, then scrapes.
    pub fn settle_and_scrape(&self) -> Exposition {
        std::thread::sleep(Duration::from_millis(2500));
        self.scrape()
    }

    /// Settles, then `burnwatch_http_requests_total` of `service` per
    /// (tenant, status code).
    pub fn counts(&self, service: &str) -> Counts {
        counts_of(&self.settle_and_scrape(), service)
    }

    /// Settles, then `burnwatch_http_requests_total` of `service` per
    /// (tenant, method, status code).
    pub fn method_counts(&self, service: &str) -> MethodCounts {
        method_counts_of(&self.settle_and_scrape(), service)
    }
}

/// One capture self-metric (`burnwatch_capture_anomalies_total{kind}` or
/// `burnwatch_dropped_events_total{reason}`) by its label value.
pub fn capture_counter(e: &Exposition, name: &str) -> u64 {
    (e.sum("burnwatch_capture_anomalies_total", &[("kind", name)])
        + e.sum("burnwatch_dropped_events_total", &[("reason", name)])) as u64
}

/// `burnwatch_http_requests_total` of `service` per (tenant, status code).
pub fn counts_of(e: &Exposition, service: &str) -> Counts {
    let mut out = Counts::new();
    for s in e.find(REQUESTS, &[("service", service)]) {
        let key = (s.labels["tenant"].clone(), s.labels["status_code"].clone());
        *out.entry(key).or_insert(0) += s.value as u64;
    }
    out.retain(|_, n| *n > 0);
    out
}

/// `burnwatch_http_requests_total` of `service` per (tenant, method, status).
pub fn method_counts_of(e: &Exposition, service: &str) -> MethodCounts {
    let mut out = MethodCounts::new();
    for s in e.find(REQUESTS, &[("service", service)]) {
        let key = (
            s.labels["tenant"].clone(),
            s.labels["method"].clone(),
            s.labels["status_code"].clone(),
        );
        *out.entry(key).or_insert(0) += s.value as u64;
    }
    out.retain(|_, n| *n > 0);
    out
}

impl Agent {
    /// Stops the agent with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config watching `services` (name, local port), tenant from
/// `X-Tenant-ID`, `unknown` when missing.
pub fn config(services: &[(&str, u16)]) -> String {
    config_with_tenant(services, "  header: X-Tenant-ID\n  missing: unknown\n")
}

/// A config watching `services` (name, local port) with `tenant_block` as
/// the body of the `tenant:` section (indented by two spaces per line).
pub fn config_with_tenant(services: &[(&str, u16)], tenant_block: &str) -> String {
    let mut c = String::from("services:\n");
    for (name, port) in services {
        c.push_str(&format!(
            "  - name: {name}\n    match:\n      port: {port}\n"
        ));
    }
    c.push_str("tenant:\n");
    c.push_str(tenant_block);
    c
}
