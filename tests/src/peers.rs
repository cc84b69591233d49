//! Real peers of the exporters, on loopback, each killed when dropped:
//! Prometheus (Debian `prometheus`), Alertmanager (Debian
//! `prometheus-alertmanager`) and an OpenTelemetry collector (PyPI `rotel`'s
//! `rotel-agent`, whose debug log prints every data point and log record it
//! receives).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

fn spawn(program: &str, args: &[String], log: &std::path::Path, install: &str) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(program)
        .args(args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {program} ({e}): install {install} (cargo xtask setup)")
        })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `curl -s URL` with extra arguments; the body, or `None` on failure.
pub fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "--fail"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Prometheus {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `127.0.0.1:<target_port>/metrics` every second.
    pub fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: burnwatch\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let child = spawn(
            "prometheus",
            &args,
            &dir.path().join("prometheus.log"),
            "Debian's prometheus",
        );
        let p = Prometheus { port, child, dir };
        let ready = wait_for(Duration::from_secs(30), || {
            curl(&[&format!("http://127.0.0.1:{port}/-/ready")])
        });
        assert!(ready.is_some(), "prometheus not ready:\n{}", p.log());
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API; the raw JSON answer.
    pub fn query(&self, promql: &str) -> String {
        curl(&[
            "-G",
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            "--data-urlencode",
            &format!("query={promql}"),
        ])
        .unwrap_or_default()
    }

    /// (labels, value) of each sample of an instant vector query.
    pub fn samples(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let json: serde_json::Value =
            serde_json::from_str(&self.query(promql)).unwrap_or(serde_json::Value::Null);
        let mut out = Vec::new();
        for r in json["data"]["result"].as_array().into_iter().flatten() {
            let labels = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            out.push((labels, value));
        }
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

pub struct Alertmanager {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
        )
        .unwrap();
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // No gossip: a single instance, no fixed cluster port.
            "--cluster.listen-address=".to_string(),
        ];
        let child = spawn(
            "prometheus-alertmanager",
            &args,
            &dir.path().join("alertmanager.log"),
            "Debian's prometheus-alertmanager",
        );
        let am = Alertmanager { port, child, dir };
        let ready = wait_for(Duration::from_secs(30), || {
            curl(&[&format!("http://127.0.0.1:{port}/-/ready")])
        });
        assert!(ready.is_some(), "alertmanager not ready:\n{}", am.log());
        am
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// Active alerts (`GET /api/v2/alerts`), as JSON.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        curl(&[&format!("http://127.0.0.1:{}/api/v2/alerts", self.port)])
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Path of `rotel-agent` (shipped inside PyPI's `rotel` package).
pub fn rotel_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("ROTEL_AGENT") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        _ => panic!("rotel-agent not found: install PyPI's rotel (cargo xtask setup)"),
    }
}

pub struct Rotel {
    pub grpc_port: u16,
    pub http_port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Rotel {
    /// A collector on two free ports that logs every metric and log record.
    pub fn start() -> Rotel {
        Rotel::start_on(free_port(), free_port())
    }

    /// Like [`Rotel::start`] on given ports (to bring up a collector an
    /// agent has been failing to reach).
    pub fn start_on(grpc_port: u16, http_port: u16) -> Rotel {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = [
            "start",
            "--exporter",
            "blackhole",
            "--debug-log",
            "metrics",
            "--debug-log",
            "logs",
            "--debug-log-verbosity",
            "detailed",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc_port}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http_port}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let bin = rotel_agent();
        let child = spawn(
            bin.to_str().unwrap(),
            &args,
            &dir.path().join("rotel.log"),
            "PyPI's rotel",
        );
        let r = Rotel {
            grpc_port,
            http_port,
            child,
            dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", grpc_port)).ok()
        });
        assert!(up.is_some(), "rotel not listening:\n{}", r.log());
        r
    }

    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("rotel.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Every data point of `metric` received so far, in arrival order:
    /// (attributes, value or histogram count).
    pub fn points(&self, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        parse_points(&self.log(), metric)
    }

    /// Attributes of every log record received so far.
    pub fn log_records(&self) -> Vec<BTreeMap<String, String>> {
        parse_records(&self.log())
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `     -> key: Str(value)` / `Double(1.5)` / `Int(3)`.
fn attribute(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix("-> ")?;
    let (key, value) = rest.split_once(": ")?;
    let open = value.find('(')?;
    let inner = value[open + 1..].strip_suffix(')')?;
    Some((key.to_string(), inner.to_string()))
}

/// Parses rotel's detailed debug log of metrics.
pub fn parse_points(log: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    let mut in_metric = false;
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in log.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("-> Name: ") {
            in_metric = name == metric;
            current = None;
        } else if t.starts_with("Metric #") || t.starts_with("ResourceMetrics #") {
            in_metric = false;
            current = None;
        } else if !in_metric {
            continue;
        } else if t.starts_with("NumberDataPoints #") || t.starts_with("HistogramDataPoints #") {
            current = Some(BTreeMap::new());
        } else if let (Some(attrs), Some((k, v))) = (current.as_mut(), attribute(line)) {
            attrs.insert(k, v);
        } else if let Some(v) = t
            .strip_prefix("Value: ")
            .or_else(|| t.strip_prefix("Count: "))
            && let Some(attrs) = current.take()
        {
            out.push((attrs, v.trim().parse().unwrap_or(f64::NAN)));
        }
    }
    out
}

/// Parses rotel's detailed debug log of log records: their attributes, plus
/// `severity_text` and `event_name`.
pub fn parse_records(log: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in log.lines() {
        let t = line.trim();
        if t.starts_with("LogRecord #") {
            out.extend(current.take());
            current = Some(BTreeMap::new());
        } else if t.starts_with("ResourceMetrics #") || t.starts_with("ResourceLogs #") {
            out.extend(current.take());
        } else if let Some(rec) = current.as_mut() {
            if let Some(v) = t.strip_prefix("SeverityText: ") {
                rec.insert("severity_text".into(), v.into());
            } else if let Some(v) = t.strip_prefix("EventName: ") {
                rec.insert("event_name".into(), v.into());
            } else if let Some((k, v)) = attribute(line) {
                rec.insert(k, v);
            }
        }
    }
    out.extend(current);
    out
}

/// `promtool check metrics` on `text`: must parse, and lint clean.
pub fn promtool_check(text: &str) {
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus, cargo xtask setup)");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
