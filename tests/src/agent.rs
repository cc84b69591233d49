//! The real `burnwatch` binary, started with a config file.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{exposition::Exposition, free_port, wait_for, workspace_root};

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
        let dir = tempfile::tempdir().unwrap();
        let metrics_port = free_port();
        let config = dir.path().join("burnwatch.yaml");
        std::fs::write(
            &config,
            format!(
                "{config_body}\nexporters:\n  prometheus:\n    listen: 127.0.0.1:{metrics_port}\n"
            ),
        )
        .unwrap();
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
        let ready = wait_for(Duration::from_secs(60), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited with {status}:\n{}", agent.log());
            }
            crate::client::get_status(metrics_port, "/readyz")
                .filter(|s| *s == 200)
                .map(|_| ())
        });
        assert!(ready.is_some(), "agent not ready in 60 s:\n{}", agent.log());
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
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
