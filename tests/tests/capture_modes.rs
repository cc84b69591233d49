//! The two capture paths: the socket layer's tracepoints (kernels 6.4+,
//! the default where the kernel has them) and the syscall tracepoints (the
//! fallback, or `capture.mode: syscalls`). Each forced mode attaches what it
//! says and counts exactly; switching modes across a restart hands the
//! counts over; what the socket path cannot parse (io_uring) is counted
//! as an anomaly, never as requests and never silently; bytes a server
//! reads after ending a connection (a lingering close) are not requests.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use burnwatch_e2e::agent::{Agent, capture_counter, counts_of};
use burnwatch_e2e::client::Conn;
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::{assert_same_counts, free_port, require_root, wait_for};

fn config(port: u16, mode: &str) -> String {
    let capture = if mode.is_empty() {
        String::new()
    } else {
        format!("capture:\n  mode: {mode}\n")
    };
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
tenant:\n  header: X-Tenant-ID\n  missing: unknown\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n    window: 30d\n{capture}"
    )
}

/// Whether this kernel has the socket path's tracepoints (6.4+): `auto`
/// must then choose it.
fn kernel_has_socket_path() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let needle = b"btf_trace_sock_recv_length\0";
    btf.windows(needle.len()).any(|w| w == needle)
}

/// `n` requests on one keep-alive connection, every fifth a 500.
fn send(port: u16, tenant: &str, n: u64) {
    let mut c = Conn::open(port);
    for i in 0..n {
        let path = if i % 5 == 4 { "/error" } else { "/ok" };
        c.request("GET", path, Some(tenant));
    }
}

/// What `/v1/slos` says the agent attached and runs.
fn attached(agent: &Agent) -> (Vec<String>, BTreeMap<String, bool>) {
    let body = burnwatch_e2e::client::get_body(agent.metrics_port, "/v1/slos")
        .unwrap_or_else(|| panic!("/v1/slos; log:\n{}", agent.log()));
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let probes = v["probes_attached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let caps = serde_json::from_value(v["capabilities"].clone()).unwrap();
    (probes, caps)
}

#[test]
fn each_forced_mode_attaches_its_path_and_counts_exactly() {
    require_root();
    let socket = kernel_has_socket_path();
    let mut modes = vec!["syscalls", ""];
    if socket {
        modes.push("socket");
    }
    for mode in modes {
        let nginx = Nginx::start();
        let agent = Agent::start(&config(nginx.port, mode));
        let (probes, caps) = attached(&agent);
        let runs_socket = mode == "socket" || (mode.is_empty() && socket);
        assert_eq!(
            caps.get("socket_capture"),
            Some(&runs_socket),
            "mode {mode:?}: {caps:?}"
        );
        if runs_socket {
            assert!(
                probes.iter().any(|p| p == "tp_btf:sock_recv_length")
                    && !probes.iter().any(|p| p.contains("syscalls:")),
                "mode {mode:?}: the socket path attaches no syscall tracepoint: {probes:?}"
            );
        } else {
            assert!(
                probes
                    .iter()
                    .any(|p| p == "tracepoint:syscalls:sys_exit_read")
                    && !probes.iter().any(|p| p.starts_with("tp_btf:")),
                "mode {mode:?}: {probes:?}"
            );
        }
        assert!(caps.values().all(|up| *up) || !runs_socket, "{caps:?}");
        send(nginx.port, "acme", 23);
        send(nginx.port, "globex", 9);
        nginx.wait_for_log_lines(32);
        let want = nginx.counts("unknown");
        let got = counts_of(&agent.settle_and_scrape(), "shop");
        assert_same_counts(&format!("mode {mode:?}"), &got, &want, &agent);
        agent.stop();
    }
}

/// An agent on the syscall path, restarted on the socket path (and back):
/// the new path's pins are another build, so the old maps' counts since
/// the last read are handed over, and the SLO windows hold every request
/// exactly once.
#[test]
fn switching_paths_across_a_restart_loses_and_doubles_nothing() {
    require_root();
    if !kernel_has_socket_path() {
        eprintln!("this kernel has no socket path (before 6.4): only the syscall path runs");
        return;
    }
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut served = 0;
    for (i, mode) in ["syscalls", "socket", "syscalls"].into_iter().enumerate() {
        let agent = Agent::start_with_state(&config(nginx.port, mode), Some(state.path()));
        if i > 0 {
            agent.wait_log("read the old build's final counts", Duration::from_secs(20));
        }
        send(nginx.port, "acme", 20);
        send(nginx.port, "globex", 5);
        served += 25;
        std::thread::sleep(Duration::from_millis(1500));
        // SIGTERM: a last read and checkpoint; the programs keep counting.
        agent.stop_keeping_pins();
        // Requests while no agent runs: the old path's programs count them.
        send(nginx.port, "initech", 4);
        served += 4;
    }
    let agent = Agent::start_with_state(&config(nginx.port, "socket"), Some(state.path()));
    agent.wait_log("read the old build's final counts", Duration::from_secs(20));
    nginx.wait_for_log_lines(served);
    let want = nginx.slo_events("unknown");
    let got = wait_for(Duration::from_secs(10), || {
        let got = engine_events(&agent, &want);
        (got == want).then_some(got)
    });
    assert!(
        got.is_some(),
        "SLO windows after switching paths: want {want:?}, got {:?}\nlog:\n{}",
        engine_events(&agent, &want),
        agent.log()
    );
    agent.stop();
}

/// (good, bad) of the availability SLO's window per tenant of `want`.
fn engine_events(
    agent: &Agent,
    want: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    want.keys()
        .map(|tenant| {
            let body = burnwatch_e2e::client::get_body(
                agent.metrics_port,
                &format!("/v1/slo?slo=shop-availability&tenant={tenant}"),
            )
            .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let get = |k: &str| v["period"][k].as_f64().unwrap_or(-1.0).round() as u64;
            (tenant.clone(), (get("good"), get("bad")))
        })
        .collect()
}

/// A server whose socket I/O goes through io_uring (inline, then through
/// io_uring's worker threads): the socket path sees each operation's byte
/// count but no buffer. Nothing it serves may be counted as a request, and
/// every read must show as `unparsed_io_uring`.
#[test]
fn io_uring_socket_io_is_an_anomaly_never_requests() {
    require_root();
    if !kernel_has_socket_path() {
        eprintln!("this kernel has no socket path (before 6.4): io_uring is a blind spot there");
        return;
    }
    for variant in ["inline", "async"] {
        let port = free_port();
        let mut server = UringServer::start(port, variant == "async");
        let agent = Agent::start(&config(port, ""));
        let before = capture_counter(&agent.scrape(), "unparsed_io_uring");
        let mut c = Conn::open(port);
        for i in 0..12 {
            let r = c.request("GET", &format!("/u{i}"), Some("acme"));
            assert_eq!(r.status, 200, "{variant}");
        }
        drop(c);
        assert_eq!(server.served(12), 12, "{variant}");
        let e = agent.settle_and_scrape();
        assert!(
            counts_of(&e, "shop").is_empty(),
            "{variant}: io_uring requests were counted:\n{}",
            e.text
        );
        let after = capture_counter(&e, "unparsed_io_uring");
        assert!(
            after >= before + 12,
            "{variant}: every io_uring read is counted as unparsed_io_uring ({before} -> {after}):\n{}",
            e.text
        );
        agent.stop();
        server.stop();
    }
}

/// `tests/src/bin/uring_http.rs`, running.
struct UringServer {
    child: Child,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl UringServer {
    fn start(port: u16, async_ops: bool) -> UringServer {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring_http"));
        cmd.arg(port.to_string());
        if async_ops {
            cmd.arg("async");
        }
        let child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("uring_http");
        wait_for(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("uring_http listens");
        UringServer {
            child,
            out,
            _dir: dir,
        }
    }

    /// Requests it logged, once `want` are (or after 5 s).
    fn served(&self, want: usize) -> usize {
        wait_for(Duration::from_secs(5), || {
            let n = std::fs::read_to_string(&self.out).ok()?.lines().count();
            (n >= want).then_some(n)
        })
        .unwrap_or(0);
        std::fs::read_to_string(&self.out).unwrap().lines().count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UringServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server that ends each connection as Apache or gunicorn do: it
/// answers the first request it reads with `Connection: close`, then
/// reads and discards whatever the client still sends (a lingering close)
/// until the client closes, having shut down its sending side first
/// (Apache, nginx) or not (`/no-shutdown`). Its log has one line per
/// connection.
///
/// - A request sent after the response: read after the server ended the
///   connection, never taken.
/// - Three pipelined requests in one write (the first `/no-shutdown`):
///   the server reads all three, answers the first, and drops the others
///   (RFC 9112 9.6): a `Connection: close` response ends the connection,
///   so the two requests queued behind it were never taken.
///
/// Neither is a request that got no answer (000): each is `after_close`.
#[test]
fn bytes_read_after_the_server_closed_are_not_requests() {
    require_root();
    if !kernel_has_socket_path() {
        eprintln!("this kernel has no socket path (before 6.4)");
        return;
    }
    lingering_close_on("socket");
}

/// The same on the syscall path.
#[test]
fn bytes_read_after_the_server_closed_are_not_requests_on_the_syscall_path() {
    require_root();
    lingering_close_on("syscalls");
}

fn lingering_close_on(mode: &str) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(16)
log = open("{log}", "a", buffering=1)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        more = c.recv(4096)
        if not more:
            break
        data += more
    if b"\r\n\r\n" not in data:
        c.close()
        continue
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    log.write("200\n")
    if not data.startswith(b"GET /no-shutdown "):
        c.shutdown(socket.SHUT_WR)
    while c.recv(4096):
        pass
    c.close()
"#,
        log = log.display()
    );
    // Killed however the test ends.
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Killed(
        Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .expect("python3"),
    );
    wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("server listens");
    let agent = Agent::start(&config(port, mode));
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let req = |path: &str| burnwatch_e2e::client::request_bytes("GET", path, Some("acme"), &[]);
    let before = lines();
    for _ in 0..5 {
        let mut c = Conn::open(port);
        let r = c.request("GET", "/ok", Some("acme"));
        assert_eq!(r.status, 200);
        c.send(&req("/late"));
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        let mut c = Conn::open(port);
        c.send(&[req("/no-shutdown"), req("/second"), req("/third")].concat());
        assert_eq!(c.read_response(false).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(Duration::from_secs(5), || {
        (lines() >= before + 10).then_some(())
    });
    let e = agent.settle_and_scrape();
    let got = counts_of(&e, "shop");
    let want: burnwatch_e2e::servers::Counts =
        [(("acme".to_string(), "200".to_string()), 10)].into();
    assert_same_counts(&format!("lingering close ({mode})"), &got, &want, &agent);
    assert!(
        capture_counter(&e, "after_close") >= 5 + 2 * 5,
        "{mode}: each late request, and each request behind a closing response, is after_close:\n{}",
        e.text
    );
    agent.stop();
}
