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
    /// The config file the agent runs with.
    pub config_path: PathBuf,
    /// What the harness appends to every config body (listener, state).
    config_suffix: String,
    /// This agent's own bpffs pin root (`state.bpffs_dir`): agents running
    /// at once (other tests, other engineers) never share pinned maps.
    pub pins: PathBuf,
    /// Leave the pins for the next agent (see [`Agent::kill9`]).
    keep_pins: bool,
    _dir: tempfile::TempDir,
}

/// Where test agents pin their programs and maps, one directory each.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/burnwatch-tests";

/// Removes pin sets left by test processes that died before their agents'
/// `Drop` ran (a killed `cargo test`): their programs stay attached and
/// tax every syscall of every later test and bench. Once per process.
fn remove_stale_test_pins() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for e in std::fs::read_dir(TEST_PIN_ROOT)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix('p')
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// A pin root for an agent on `state_dir`: the same state directory gets
/// the same pins (a restarted agent finds what the previous one left),
/// anything else a directory of its own.
fn pin_root_for(state_dir: Option<&std::path::Path>) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = match state_dir {
        Some(d) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in d.as_os_str().as_encoded_bytes() {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
            format!("s{h:016x}")
        }
        None => format!(
            "p{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    };
    PathBuf::from(TEST_PIN_ROOT).join(name)
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
        Agent::start_full(config_body, state_dir, "", &[])
    }

    /// Like [`Agent::start_with_state`], with `exporters` (YAML lines
    /// indented by two spaces, e.g. `  otlp: {...}\n`) added to the
    /// `exporters:` section beside the Prometheus listener.
    pub fn start_with_exporters(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        exporters: &str,
    ) -> Agent {
        Agent::start_full(config_body, state_dir, exporters, &[])
    }

    /// Like [`Agent::start_with_state`], with extra `burnwatch run` arguments.
    pub fn start_with_args(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        args: &[&str],
    ) -> Agent {
        Agent::start_full(config_body, state_dir, "", args)
    }

    /// The agent on `config_body`, its state in `state_dir`, `exporters`
    /// added beside the Prometheus listener, `args` after `run --config F`.
    pub fn start_full(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        exporters: &str,
        args: &[&str],
    ) -> Agent {
        Agent::start_with_env(config_body, state_dir, exporters, args, &[])
    }

    /// Like [`Agent::start_full`], with `env` set for the agent's process
    /// (debug switches such as `BURNWATCH_DEBUG_SKIP_PROGRAMS`).
    pub fn start_with_env(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        exporters: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        Agent::start_checkpointing(config_body, state_dir, exporters, args, env, 2)
    }

    /// Like [`Agent::start_with_env`], checkpointing every
    /// `checkpoint_secs` (2 s elsewhere, so restart tests need not wait).
    pub fn start_checkpointing(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        exporters: &str,
        args: &[&str],
        env: &[(&str, &str)],
        checkpoint_secs: u64,
    ) -> Agent {
        let ready = |port| crate::client::get_status(port, "/readyz") == Some(200);
        Agent::spawn_until_ready(
            config_body,
            state_dir,
            exporters,
            args,
            env,
            checkpoint_secs,
            &ready,
        )
    }

    /// Writes the config (`config_body`, the listener on a free port, the
    /// state and pin directories), starts the agent and waits until
    /// `ready(metrics_port)`.
    fn spawn_until_ready(
        config_body: &str,
        state_dir: Option<&std::path::Path>,
        exporters: &str,
        args: &[&str],
        env: &[(&str, &str)],
        checkpoint_secs: u64,
        ready: &dyn Fn(u16) -> bool,
    ) -> Agent {
        remove_stale_test_pins();
        let pins = pin_root_for(state_dir);
        let dir = tempfile::tempdir().unwrap();
        let state_dir = state_dir
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("state"));
        let metrics_port = free_port();
        let config = dir.path().join("burnwatch.yaml");
        let mut suffix = format!(
            "\nexporters:\n  prometheus:\n    listen: 127.0.0.1:{metrics_port}\n{exporters}"
        );
        suffix.push_str(&format!(
            "state:\n  dir: {}\n  checkpoint_interval_secs: {checkpoint_secs}\n  bpffs_dir: {}\n",
            state_dir.display(),
            pins.display()
        ));
        std::fs::write(&config, format!("{config_body}{suffix}")).unwrap();
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
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        let mut agent = Agent {
            child,
            metrics_port,
            log_path,
            config_path: config,
            config_suffix: suffix,
            pins,
            keep_pins: false,
            _dir: dir,
        };
        // Verifying the programs takes ~5 s on an idle machine; several
        // agents verifying at once on 2 busy cores take much longer.
        let up = wait_for(Duration::from_secs(180), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited with {status}:\n{}", agent.log());
            }
            ready(metrics_port).then_some(())
        });
        assert!(up.is_some(), "agent not ready in 180 s:\n{}", agent.log());
        agent
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the agent process exited?
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the agent (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        crate::rss_kib(self.child.id())
    }

    /// Replaces the config file with `config_body` plus the harness' own
    /// sections (same listener, state and pins), for reload tests.
    pub fn rewrite_config(&self, config_body: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, format!("{config_body}{}", self.config_suffix)).unwrap();
        // Atomic, like a ConfigMap update: the agent never reads half a file.
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Sends a signal (`libc::SIGHUP`, ...) to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// `kill -9`: no shutdown work at all. The pins stay for the next agent
    /// on the same state directory (which removes them when dropped).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.keep_pins = true;
    }

    /// Waits up to `timeout` for the agent's log to contain `needle`;
    /// panics with the log when it does not.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        assert!(
            wait_for(timeout, || self.log().contains(needle).then_some(())).is_some(),
            "the agent never logged {needle:?}:\n{}",
            self.log()
        );
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

    /// Like [`Agent::stop`], but leaves whatever the agent left pinned (the
    /// caller checks it and cleans up).
    pub fn stop_keeping_pins(mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
        self.keep_pins = true;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_pins {
            // Unpinning the links detaches the programs; the maps go with them.
            let _ = std::fs::remove_dir_all(&self.pins);
        }
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

impl Agent {
    /// Like [`Agent::start_with_env`] (no state directory, exporters or
    /// extra arguments), but ready when `ready(metrics_port)` says so: an
    /// agent serving HTTPS (`api.tls`) or bound to another address
    /// (`BURNWATCH_LISTEN`) does not answer the plain 127.0.0.1 probe.
    pub fn start_ready_by(
        config_body: &str,
        env: &[(&str, &str)],
        ready: &dyn Fn(u16) -> bool,
    ) -> Agent {
        Agent::spawn_until_ready(config_body, None, "", &[], env, 2, ready)
    }
}

impl Agent {
    /// Waits up to `timeout` for the agent to exit on its own; its exit
    /// status, or `None` while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }
}
