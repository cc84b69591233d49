//! The servers and proxies people run (Apache with mpm_event and
//! mpm_prefork, Varnish, haproxy, lighttpd, gunicorn sync and gthread,
//! uvicorn on h11 and httptools, `php -S`, WEBrick, puma, Caddy, h2o),
//! under the clients people use (ab with and without keep-alive, h2load
//! pipelining 8 deep, siege, curl's HTTP/1.0, bodies, chunked uploads and
//! `Expect: 100-continue`, wrk): for every server x client, the agent's
//! counts per (tenant, method, status) equal the server's OWN log, exactly.
//! The proxies are checked on both sides: the proxy's log against its
//! service, and the backend nginx's log against the agent's client counts
//! (the proxy's requests to it, `clients:`) and against nginx's service.
//!
//! Every combination is compared on its own (the agent's counts and the
//! log lines since the previous one); a test collects every mismatch of its
//! family and fails at the end with the whole table.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burnwatch_e2e::agent::{Agent, method_counts_of};
use burnwatch_e2e::client;
use burnwatch_e2e::exposition::Exposition;
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::real_servers::{GunicornWorker, Mpm, RealServer, UvicornHttp, require_program};
use burnwatch_e2e::servers::{MethodCounts, Server, parse_log};
use burnwatch_e2e::{count_diff, free_port, require_root};

/// The config's `missing` tenant: what a request without X-Tenant-ID counts as.
const MISSING: &str = "unknown";

/// How long a log must stay unchanged before a combination is compared
/// (varnishncsa and lighttpd's piped logger write a little after the
/// response).
const QUIET: Duration = Duration::from_millis(1500);

/// Wall-time bound of one client run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The clients, in the order each server sees them.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// `ab -n 300 -c 4`: HTTP/1.0, a connection per request.
    Ab,
    /// `ab -k -n 300 -c 4`: HTTP/1.0 keep-alive.
    AbKeepAlive,
    /// `h2load --h1 -n 400 -c 4 -m 8`: HTTP/1.1, 8 requests pipelined, on
    /// `/`, `/status/404` and `/status/201` (answers that keep the
    /// connection open: servers answer a pipelined batch in one write).
    H2load,
    /// The same on `/`, `/status/503` and `/status/500`: servers that close
    /// the connection after a 5xx (Apache) leave pipelined requests
    /// unanswered.
    H2load5xx,
    /// `siege -r 10 -c 4`: GET and POST from a URL file, keep-alive.
    Siege,
    /// curl: HTTP/1.0, POST with a body, chunked upload, `Expect:
    /// 100-continue` with a 4 KiB body, HEAD, and requests without a tenant.
    Curl,
    /// `wrk -t2 -c4 -d2s` with a Lua script cycling tenants (and none),
    /// methods and paths.
    Wrk,
}

const CLIENTS: [Client; 7] = [
    Client::Ab,
    Client::AbKeepAlive,
    Client::H2load,
    Client::H2load5xx,
    Client::Siege,
    Client::Curl,
    Client::Wrk,
];

const WRK_SCRIPT: &str = r#"
local tenants = {"wrk-a", "wrk-b", "wrk-c", false}
local paths = {"/", "/status/404", "/status/503"}
local methods = {"GET", "POST", "GET"}
local i = 0
request = function()
  i = i + 1
  local headers = {}
  local t = tenants[(i % 4) + 1]
  if t then headers["X-Tenant-ID"] = t end
  local m = methods[(i % 3) + 1]
  local body = nil
  if m == "POST" then
    body = "k=v&n=" .. i
    headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
  return wrk.format(m, paths[(math.floor(i / 3) % 3) + 1], headers, body)
end
"#;

/// Runs `cmd` for at most [`CLIENT_TIMEOUT`] (killed then) and returns
/// whether it exited 0, and its stdout and stderr.
fn run_bounded(cmd: &mut Command, dir: &Path, name: &str) -> (bool, String) {
    let out_path = dir.join(format!("{name}.out"));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let end = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("killed after {CLIENT_TIMEOUT:?}\n{text}")),
    }
}

/// The lines of a client's report that say how it went.
fn report_lines(text: &str, keys: &[&str]) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Ab => "ab",
            Client::AbKeepAlive => "ab -k",
            Client::H2load => "h2load -m 8",
            Client::H2load5xx => "h2load -m 8 5xx",
            Client::Siege => "siege",
            Client::Curl => "curl",
            Client::Wrk => "wrk",
        }
    }

    /// h2load's tenant (its requests are all GETs), `None` for the others.
    fn h2load_tenant(self) -> Option<&'static str> {
        match self {
            Client::H2load => Some("h2load"),
            Client::H2load5xx => Some("h2load-5xx"),
            _ => None,
        }
    }

    /// Runs the client against `127.0.0.1:port`; a one-line summary of
    /// what it reported.
    fn run(self, port: u16, dir: &Path) -> String {
        let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
        match self {
            Client::Ab | Client::AbKeepAlive => {
                require_program("ab", "apt-get install -y apache2-utils");
                let (tenant, path, keep) = match self {
                    Client::Ab => ("ab", "/", false),
                    _ => ("ab-k", "/status/404", true),
                };
                let mut cmd = Command::new("ab");
                cmd.args(["-q", "-n", "300", "-c", "4", "-s", "30", "-H"])
                    .arg(format!("X-Tenant-ID: {tenant}"));
                if keep {
                    cmd.arg("-k");
                }
                let (ok, text) = run_bounded(cmd.arg(url(path)), dir, "ab");
                let keys = [
                    "Complete requests",
                    "Failed requests",
                    "Non-2xx",
                    "Keep-Alive requests",
                    "apr_",
                ];
                format!("exit ok={ok}: {}", report_lines(&text, &keys))
            }
            Client::H2load | Client::H2load5xx => {
                require_program("h2load", "apt-get install -y nghttp2-client");
                let (tenant, paths) = match self {
                    Client::H2load => ("h2load", ["/", "/status/404", "/status/201"]),
                    _ => ("h2load-5xx", ["/", "/status/503", "/status/500"]),
                };
                let mut cmd = Command::new("h2load");
                // -N: a server that stops answering a connection (pipelining
                // it does not support) does not hold h2load for long.
                cmd.args(["--h1", "-n", "400", "-c", "4", "-m", "8", "-N", "5s", "-H"])
                    .arg(format!("X-Tenant-ID: {tenant}"))
                    .args(paths.map(url));
                let (ok, text) = run_bounded(&mut cmd, dir, "h2load");
                format!(
                    "exit ok={ok}: {}",
                    report_lines(&text, &["requests:", "status codes:"])
                )
            }
            Client::Siege => {
                require_program("siege", "apt-get install -y siege");
                let rc = dir.join("siegerc");
                std::fs::write(
                    &rc,
                    "verbose = false\nquiet = true\nlogging = false\nprotocol = HTTP/1.1\n\
                     connection = keep-alive\nparser = false\nfollow-location = false\n\
                     timeout = 30\nfailures = 1000000\nbenchmark = true\ninternet = false\n",
                )
                .unwrap();
                let urls = dir.join("urls.txt");
                std::fs::write(
                    &urls,
                    format!(
                        "{}\n{}\n{} POST a=1&b=2\n",
                        url("/"),
                        url("/status/500"),
                        url("/")
                    ),
                )
                .unwrap();
                let mut cmd = Command::new("siege");
                cmd.arg("-R")
                    .arg(&rc)
                    .args(["-r", "10", "-c", "4", "-b", "-q", "-f"])
                    .arg(&urls)
                    .args(["-H", "X-Tenant-ID: siege"]);
                let (ok, text) = run_bounded(&mut cmd, dir, "siege");
                format!("exit ok={ok} {}", text.trim())
            }
            Client::Curl => {
                require_program("curl", "apt-get install -y curl");
                let body = dir.join("body-4k");
                std::fs::write(&body, vec![b'b'; 4096]).unwrap();
                let upload = dir.join("upload-3k");
                std::fs::write(&upload, vec![b'u'; 3000]).unwrap();
                let at = |p: &Path| format!("@{}", p.display());
                let runs: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
                    (
                        "http1.0",
                        vec![
                            "--http1.0".into(),
                            "-H".into(),
                            "X-Tenant-ID: curl-http10".into(),
                        ],
                        vec!["/", "/status/404", "/status/500"],
                    ),
                    (
                        "post",
                        vec![
                            "-H".into(),
                            "X-Tenant-ID: curl-post".into(),
                            "-d".into(),
                            "a=1&b=2".into(),
                        ],
                        vec!["/", "/status/201"],
                    ),
                    (
                        "chunked",
                        vec![
                            "-H".into(),
                            "X-Tenant-ID: curl-chunked".into(),
                            "-H".into(),
                            "Transfer-Encoding: chunked".into(),
                            "--data-binary".into(),
                            at(&upload),
                        ],
                        vec!["/status/201", "/"],
                    ),
                    (
                        "expect",
                        vec![
                            "-H".into(),
                            "X-Tenant-ID: curl-expect".into(),
                            "-H".into(),
                            "Expect: 100-continue".into(),
                            "--data-binary".into(),
                            at(&body),
                        ],
                        vec!["/status/202", "/", "/status/201", "/status/404"],
                    ),
                    (
                        "head",
                        vec!["-I".into(), "-H".into(), "X-Tenant-ID: curl-head".into()],
                        vec!["/"],
                    ),
                    ("no-tenant", vec![], vec!["/", "/status/404"]),
                ];
                let mut summary = Vec::new();
                for (what, args, paths) in runs {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let urls: Vec<String> = paths.iter().map(|p| url(p)).collect();
                    let codes = client::curl(&args, &urls);
                    summary.push(format!("{what} {codes:?}"));
                }
                summary.join(", ")
            }
            Client::Wrk => {
                require_program("wrk", "apt-get install -y wrk");
                let report = client::wrk(port, 2, 4, Duration::from_secs(2), WRK_SCRIPT);
                report_lines(&report, &["Requests/sec", "Non-2xx", "Socket errors"])
                    + &report
                        .lines()
                        .find(|l| l.contains("requests in"))
                        .map(|l| format!("; {}", l.trim()))
                        .unwrap_or_default()
            }
        }
    }
}

/// Which of the agent's series a log is compared with.
#[derive(Clone, Copy, Debug)]
enum Series {
    /// `burnwatch_http_requests_total{service}`.
    Service(&'static str),
    /// `burnwatch_http_client_requests_total{service}` (a `clients:` entry).
    Client(&'static str),
}

impl Series {
    fn counts(self, e: &Exposition) -> MethodCounts {
        match self {
            Series::Service(s) => method_counts_of(e, s),
            Series::Client(c) => {
                let mut out = MethodCounts::new();
                for s in e.find("burnwatch_http_client_requests_total", &[("service", c)]) {
                    let key = (
                        s.labels["tenant"].clone(),
                        s.labels["method"].clone(),
                        s.labels["status_code"].clone(),
                    );
                    *out.entry(key).or_insert(0) += s.value as u64;
                }
                out
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Series::Service(s) => format!("service {s}"),
            Series::Client(c) => format!("client {c}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Series::Service(s) | Series::Client(s) => s,
        }
    }
}

/// One comparison: a series of the agent against a server's own log.
struct Check<'a> {
    series: Series,
    log: &'a (dyn Server + Sync),
}

/// A server the clients talk to, and what is compared after each client.
struct Target<'a> {
    /// Its service name (the agent's `service` label).
    name: &'static str,
    port: u16,
    checks: Vec<Check<'a>>,
    /// A server that reads pipelined requests and then neither answers
    /// them nor says it closes (gunicorn's gthread worker answers the
    /// first and leaves the rest in its buffer; `php -S` takes a pipelined
    /// buffer as malformed and closes without a word). The requests h2load
    /// sent that the log does not have were taken and never answered:
    /// exactly what status 000 means, so its service must count them as
    /// 000 (and every answered one as the log says).
    drops_pipelined: bool,
}

/// Requests h2load sent (`requests: N total, M started, ...`).
fn h2load_started(summary: &str) -> u64 {
    summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" started"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `started` in h2load's report: {summary}"))
}

/// One compared server x client x series.
struct Row {
    server: &'static str,
    client: &'static str,
    compared: String,
    /// The server's log lines for this combination.
    logged: u64,
    /// `None`: exact; otherwise the difference.
    mismatch: Option<String>,
    /// Capture anomalies and TCP failures the agent counted meanwhile.
    anomalies: String,
    summary: String,
}

fn delta(now: &MethodCounts, before: &MethodCounts) -> MethodCounts {
    let mut out = MethodCounts::new();
    for (k, n) in now {
        let d = n.saturating_sub(before.get(k).copied().unwrap_or(0));
        if d > 0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// `burnwatch_capture_anomalies_total` and `burnwatch_tcp_failures_total`
/// of `service` per kind.
fn anomalies(e: &Exposition, service: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (metric, prefix) in [
        ("burnwatch_capture_anomalies_total", ""),
        ("burnwatch_tcp_failures_total", "tcp_"),
    ] {
        for s in e.find(metric, &[("service", service)]) {
            let kind = s.labels.get("kind").cloned().unwrap_or_default();
            *out.entry(format!("{prefix}{kind}")).or_insert(0) += s.value as u64;
        }
    }
    out
}

fn anomaly_delta(now: &Exposition, before: &Exposition, service: &str) -> String {
    let (a, b) = (anomalies(now, service), anomalies(before, service));
    let parts: Vec<String> = a
        .iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(b.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k}+{d}"))
        })
        .collect();
    parts.join(" ")
}

/// Runs every client against `target`, one after the other; after each,
/// waits for the logs to be quiet and compares every check.
fn drive(agent: &Agent, target: &Target, rows: &Mutex<Vec<Row>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut before = agent.settle_and_scrape();
    let mut seen: Vec<usize> = target
        .checks
        .iter()
        .map(|c| c.log.log_lines().len())
        .collect();
    for client in CLIENTS {
        let started = Instant::now();
        let summary = client.run(target.port, dir.path());
        let took = started.elapsed();
        for c in &target.checks {
            c.log.wait_for_quiet_log(QUIET);
        }
        let now = agent.settle_and_scrape();
        for (i, c) in target.checks.iter().enumerate() {
            let lines = c.log.log_lines();
            let new = &lines[seen[i].min(lines.len())..];
            let mut want = parse_log(new, MISSING);
            if target.drops_pipelined
                && matches!(c.series, Series::Service(_))
                && let Some(tenant) = client.h2load_tenant()
            {
                let unanswered = h2load_started(&summary).saturating_sub(new.len() as u64);
                if unanswered > 0 {
                    let key = (tenant.to_string(), "GET".to_string(), "000".to_string());
                    *want.entry(key).or_insert(0) += unanswered;
                }
            }
            let got = delta(&c.series.counts(&now), &c.series.counts(&before));
            // Nothing logged and nothing counted tests nothing: a server
            // that was not reached fails too.
            let mismatch = if want.is_empty() && got.is_empty() {
                Some(format!(
                    "  neither the {} log nor the agent has a request of this client \
                     ({summary})\n{}",
                    c.log.kind(),
                    c.log.diagnostics()
                ))
            } else {
                count_diff(&got, &want).map(|d| {
                    if want.is_empty() {
                        format!("  (the {} log has no line)\n{d}", c.log.kind())
                    } else {
                        d
                    }
                })
            };
            seen[i] = lines.len();
            rows.lock().unwrap().push(Row {
                server: target.name,
                client: client.name(),
                compared: format!("{} vs {} log", c.series.describe(), c.log.kind()),
                logged: new.len() as u64,
                mismatch,
                anomalies: anomaly_delta(&now, &before, c.series.name()),
                summary: format!("{:.1}s {summary}", took.as_secs_f64()),
            });
        }
        before = now;
    }
}

/// Drives every target at once (a thread each), then prints the table of
/// all combinations and fails with it when any differs.
fn run_family(family: &str, agent: &Agent, targets: &[Target]) {
    let rows = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in targets {
            let rows = &rows;
            s.spawn(move || drive(agent, t, rows));
        }
    });
    let rows = rows.into_inner().unwrap();
    // Every row, and again the mismatches alone (for the failure message).
    let (mut table, mut mismatches) = (String::new(), String::new());
    let mut failed = 0;
    for r in &rows {
        let verdict = if r.mismatch.is_some() {
            failed += 1;
            "MISMATCH"
        } else {
            "exact"
        };
        let mut row = format!(
            "{verdict:8} {:18} x {:15} {} ({} logged) [{}] anomalies: [{}]\n",
            r.server, r.client, r.compared, r.logged, r.summary, r.anomalies
        );
        if let Some(diff) = &r.mismatch {
            for l in diff.lines() {
                row.push_str(&format!("           {l}\n"));
            }
            mismatches.push_str(&row);
        }
        table.push_str(&row);
    }
    eprintln!(
        "=== {family}: {} of {} comparisons exact\n{table}",
        rows.len() - failed,
        rows.len()
    );
    assert!(
        rows.len() == targets.iter().map(|t| t.checks.len()).sum::<usize>() * CLIENTS.len(),
        "{family}: some combinations were not compared"
    );
    assert!(
        failed == 0,
        "{family}: {failed} of {} server x client comparisons differ from the servers' own logs:\n\
         {mismatches}\n(the whole table is above)\nagent log:\n{}",
        rows.len(),
        agent.log()
    );
}

/// The agent's config: each `(name, port)` service, each `(name, port)`
/// client (the upstream's port), tenant from X-Tenant-ID.
fn config(services: &[(&str, u16)], clients: &[(&str, u16)]) -> String {
    let mut c = String::from("services:\n");
    for (name, port) in services {
        c.push_str(&format!(
            "  - name: {name}\n    match:\n      port: {port}\n"
        ));
    }
    if !clients.is_empty() {
        c.push_str("clients:\n");
        for (name, port) in clients {
            c.push_str(&format!(
                "  - name: {name}\n    match:\n      port: {port}\n"
            ));
        }
    }
    c.push_str(&format!(
        "tenant:\n  from: header\n  header: X-Tenant-ID\n  missing: {MISSING}\n"
    ));
    c
}

/// A target compared on its own service only.
fn plain<'a>(name: &'static str, server: &'a RealServer) -> Target<'a> {
    Target {
        name,
        port: server.port,
        checks: vec![Check {
            series: Series::Service(name),
            log: server,
        }],
        drops_pipelined: matches!(name, "gunicorn-gthread" | "php-builtin"),
    }
}

/// Starts each server on its own thread (they take a second or two each).
fn start_all(starters: Vec<Box<dyn FnOnce() -> RealServer + Send>>) -> Vec<RealServer> {
    std::thread::scope(|s| {
        let handles: Vec<_> = starters.into_iter().map(|f| s.spawn(f)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// [`RealServer::wait_logging`] on each server, at once.
fn wait_logging(servers: &[RealServer]) {
    std::thread::scope(|s| {
        for server in servers {
            s.spawn(move || server.wait_logging());
        }
    });
}

/// Apache 2.4 with mpm_event and with mpm_prefork.
#[test]
fn apache_event_and_prefork_counts_equal_their_logs() {
    require_root();
    let servers = start_all(vec![
        Box::new(|| RealServer::apache(Mpm::Event, free_port())),
        Box::new(|| RealServer::apache(Mpm::Prefork, free_port())),
    ]);
    let (event, prefork) = (&servers[0], &servers[1]);
    let agent = Agent::start(&config(
        &[
            ("apache-event", event.port),
            ("apache-prefork", prefork.port),
        ],
        &[],
    ));
    wait_logging(&servers);
    run_family(
        "apache",
        &agent,
        &[
            plain("apache-event", event),
            plain("apache-prefork", prefork),
        ],
    );
}

/// Varnish and haproxy, each in front of its own nginx: the proxy's log
/// against its service; nginx's log against the agent's client counts of
/// the proxy's backend requests and against nginx's own service.
#[test]
fn varnish_and_haproxy_count_both_sides() {
    require_root();
    let (varnish_nginx, haproxy_nginx) = (Nginx::start(), Nginx::start());
    let (vb, hb) = (varnish_nginx.port, haproxy_nginx.port);
    let servers = start_all(vec![
        Box::new(move || RealServer::varnish(free_port(), vb)),
        Box::new(move || RealServer::haproxy(free_port(), hb)),
    ]);
    let agent = Agent::start(&config(
        &[
            ("varnish", servers[0].port),
            ("varnish-nginx", vb),
            ("haproxy", servers[1].port),
            ("haproxy-nginx", hb),
        ],
        &[("varnish-backend", vb), ("haproxy-backend", hb)],
    ));
    // Only now the first requests: the proxies' pooled backend connections
    // are opened while the agent watches.
    wait_logging(&servers);
    let (varnish, haproxy) = (&servers[0], &servers[1]);
    run_family(
        "proxies",
        &agent,
        &[
            proxy(
                "varnish",
                varnish,
                &varnish_nginx,
                "varnish-nginx",
                "varnish-backend",
            ),
            proxy(
                "haproxy",
                haproxy,
                &haproxy_nginx,
                "haproxy-nginx",
                "haproxy-backend",
            ),
        ],
    );
}

/// A proxy compared on both sides: its log against its service, its
/// backend nginx's log against the agent's client counts and against
/// nginx's service.
fn proxy<'a>(
    name: &'static str,
    server: &'a RealServer,
    nginx: &'a Nginx,
    nginx_service: &'static str,
    backend_client: &'static str,
) -> Target<'a> {
    Target {
        name,
        port: server.port,
        checks: vec![
            Check {
                series: Series::Service(name),
                log: server,
            },
            Check {
                series: Series::Client(backend_client),
                log: nginx,
            },
            Check {
                series: Series::Service(nginx_service),
                log: nginx,
            },
        ],
        drops_pipelined: false,
    }
}

/// The app servers: gunicorn (sync, gthread), uvicorn (h11, httptools),
/// `php -S`, WEBrick and puma.
#[test]
fn python_php_ruby_app_servers_counts_equal_their_logs() {
    require_root();
    let servers = start_all(vec![
        Box::new(|| RealServer::gunicorn(GunicornWorker::Sync, free_port())),
        Box::new(|| RealServer::gunicorn(GunicornWorker::Gthread, free_port())),
        Box::new(|| RealServer::uvicorn(UvicornHttp::H11, free_port())),
        Box::new(|| RealServer::uvicorn(UvicornHttp::Httptools, free_port())),
        Box::new(|| RealServer::php(free_port())),
        Box::new(|| RealServer::webrick(free_port())),
        Box::new(|| RealServer::puma(free_port())),
    ]);
    let services: Vec<(&'static str, u16)> = servers.iter().map(|s| (s.kind(), s.port)).collect();
    let agent = Agent::start(&config(&services, &[]));
    wait_logging(&servers);
    let targets: Vec<Target> = servers.iter().map(|s| plain(s.kind(), s)).collect();
    run_family("app servers", &agent, &targets);
}

/// Caddy, h2o and lighttpd.
#[test]
fn caddy_h2o_lighttpd_counts_equal_their_logs() {
    require_root();
    let servers = start_all(vec![
        Box::new(|| RealServer::caddy(free_port())),
        Box::new(|| RealServer::h2o(free_port())),
        Box::new(|| RealServer::lighttpd(free_port())),
    ]);
    let services: Vec<(&'static str, u16)> = servers.iter().map(|s| (s.kind(), s.port)).collect();
    let agent = Agent::start(&config(&services, &[]));
    wait_logging(&servers);
    let targets: Vec<Target> = servers.iter().map(|s| plain(s.kind(), s)).collect();
    run_family("caddy, h2o, lighttpd", &agent, &targets);
}
