//! KNOWN FAILURES: accuracy tests that reproduce open bugs and missing
//! features of the capture (issue 3). Not compiled into the suite (this
//! folder is not `tests/tests/`); each test says what it waits for. When one
//! is fixed, move its test into `tests/tests/capture_features.rs` unchanged.
//!
//! Bugs (see each test for the bytes that show it):
//! - a request whose connection's first read is shorter than its method
//!   and a space is never counted;
//! - a status line split over iovecs (Varnish's writev) is not seen;
//! - a read that needs more than 1024 scan steps (16 KiB of headers, or
//!   ~500 body chunks) loses the stream: the next request is lost;
//! - a response body whose own write starts like a status line answers the
//!   next pipelined request;
//! - requests with methods outside the nine known ones (PURGE, PROPFIND,
//!   ...) are not counted, and neither is a request pipelined after them;
//! - a keep-alive connection whose server thread sits in a blocking read
//!   when the agent starts loses its next request.

use std::collections::BTreeSet;
use std::time::Duration;

use burnwatch_e2e::agent::{self, Agent};
use burnwatch_e2e::client::{self, Conn, Req};
use burnwatch_e2e::servers::{self, Counts, Kind, MethodCounts, ScriptServer, Server};
use burnwatch_e2e::{assert_same_counts, count_diff, free_port, require_root};

const TENANTS: &[Option<&str>] = &[Some("acme"), Some("globex"), Some("initech"), None];
const CODES: &[u16] = &[200, 201, 204, 404, 429, 500, 503];

fn status_path(code: u16) -> String {
    format!("/status/{code}")
}

/// Keep-alive requests, a pipelined batch, a body, a 1 MiB response.
/// Returns the number of requests sent.
fn drive_small_mix(port: u16, what: &str) -> usize {
    let mut sent = 0;
    let mut c = Conn::open(port);
    for i in 0..12 {
        let code = CODES[i % CODES.len()];
        let method = ["GET", "HEAD", "POST"][i % 3];
        let r =
            c.send_req(&Req::new(method, &status_path(code)).tenant(TENANTS[i % TENANTS.len()]));
        assert_eq!(r.status, code, "{what}");
        sent += 1;
    }
    let reqs: Vec<Req> = (0..4)
        .map(|j| Req::get(&status_path(CODES[j])).tenant(TENANTS[j]))
        .collect();
    for (j, r) in c.pipeline(&reqs).into_iter().enumerate() {
        assert_eq!(r.status, CODES[j], "{what}: pipelined");
        sent += 1;
    }
    let r = c.send_req(
        &Req::new("POST", "/status/201")
            .tenant(Some("acme"))
            .body(&[b'q'; 5000]),
    );
    assert_eq!(r.status, 201, "{what}: body");
    let r = c.send_req(&Req::get("/big").tenant(Some("initech")));
    assert_eq!((r.status, r.body.len()), (200, 1 << 20), "{what}: /big");
    let r = Conn::open(port).send_req(&Req::get("/status/503").tenant(Some("globex")));
    assert_eq!(r.status, 503, "{what}: fresh connection");
    sent + 3
}

/// Pending: the client side. A client process (curl, and wrk for load)
/// calls a server the agent does not watch as a server; the agent, watching
/// the client's requests to that upstream, counts exactly what the server
/// logs.
///
/// THE CONFIG BELOW IS A GUESS: the client-side config syntax does not exist
/// yet. Adjust `client_config` to the real one when it lands.
#[test]
fn client_side_counts_match_upstream_log() {
    fn client_config(name: &str, upstream_port: u16) -> String {
        format!(
            "services:\n  - name: {name}\n    match:\n      upstream_port: {upstream_port}\n\
             tenant:\n  header: X-Tenant-ID\n  missing: unknown\n"
        )
    }
    require_root();
    let go = servers::start("go");
    let port = go.port();
    let agent = Agent::start(&client_config("upstream", port));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let mut sent = 0;
    for (tenant, codes) in [("acme", [200, 404, 500]), ("globex", [201, 503, 200])] {
        let header = format!("X-Tenant-ID: {tenant}");
        let urls: Vec<String> = codes.iter().map(|c| url(&status_path(*c))).collect();
        assert_eq!(client::curl(&["-H", &header], &urls), codes.to_vec());
        sent += codes.len();
    }
    go.wait_for_log_lines(sent);
    let script = r#"
local tenants = {"acme", "globex", "initech"}
local codes = {200, 404, 500, 503}
local n = 0
request = function()
  n = n + 1
  wrk.headers["X-Tenant-ID"] = tenants[(n % #tenants) + 1]
  return wrk.format("GET", "/status/" .. codes[(n % #codes) + 1])
end
"#;
    client::wrk(port, 1, 4, Duration::from_secs(2), script);
    go.wait_for_quiet_log(Duration::from_millis(500));
    let want = go.method_counts("unknown");
    let got = agent.method_counts("upstream");
    assert_same_counts("upstream (client side)", &got, &want, &agent);
}

// ------------------------------------------------------------------ bugs

/// BUG: a request is lost when its connection's first read is shorter than
/// the method and a space. Minimal reproduction: on a new connection to a
/// watched nginx, write `G`, `E`, `T`, ` `, `/`... one byte per write (2 ms
/// apart), the whole request `GET /status/404 HTTP/1.1\r\nHost:
/// localhost\r\nX-Tenant-ID: drib\r\n\r\n`. nginx answers 404 and logs it;
/// the agent counts nothing (no anomaly either): `new_connection` needs a
/// request line's start in the first read. The next request on the
/// connection is counted.
#[test]
fn bug_first_request_dribbled_on_a_new_connection_is_lost() {
    require_root();
    let nginx = servers::start("nginx");
    let agent = Agent::start(&agent::config(&[("shop", nginx.port())]));
    let mut c = Conn::open(nginx.port());
    c.dribble(
        &Req::get("/status/404").tenant(Some("drib")).bytes(),
        Duration::from_millis(2),
    );
    assert_eq!(c.read_final(false).status, 404);
    let r = c.send_req(&Req::get("/status/200").tenant(Some("next")));
    assert_eq!(r.status, 200);
    // Also a first read of exactly "GET" (then the rest).
    let mut c = Conn::open(nginx.port());
    let bytes = Req::get("/status/500").tenant(Some("three-bytes")).bytes();
    c.send(&bytes[..3]);
    std::thread::sleep(Duration::from_millis(50));
    c.send(&bytes[3..]);
    assert_eq!(c.read_final(false).status, 500);
    nginx.wait_for_log_lines(3);
    let want = nginx.method_counts("unknown");
    assert_same_counts("shop", &agent.method_counts("shop"), &want, &agent);
}

/// BUG: a status line split over iovecs is not seen. Varnish writes a
/// response with one writev whose iovecs are the status line's fields:
/// `["HTTP/1.1", " ", "200", " ", "OK", "\r\n", headers, body]`. The agent
/// parses only the first iovec (8 bytes here, too short for a status line):
/// nothing is counted, and no anomaly says so.
#[test]
fn bug_status_line_split_over_iovecs_is_not_counted() {
    require_root();
    let s = ScriptServer::start(Kind::Syscalls("read", "writev_fields"));
    let agent = Agent::start(&agent::config(&[("varnish-like", s.port)]));
    let mut c = Conn::open(s.port);
    for (i, code) in [200, 404, 500, 503].into_iter().enumerate() {
        let r = c.send_req(&Req::get(&status_path(code)).tenant(TENANTS[i]));
        assert_eq!(r.status, code);
    }
    s.wait_for_log_lines(4);
    let want = s.method_counts("unknown");
    assert_same_counts(
        "varnish-like",
        &agent.method_counts("varnish-like"),
        &want,
        &agent,
    );
}

/// BUG: the 16 KiB scan limit is per read, not per request. Four pipelined
/// requests with 5 KiB header blocks each (tenant header last), written at
/// once to Node (which reads 64 KiB at a time): the fourth request's tenant
/// lies past 16 KiB of the read and counts as `unknown`, and the parser,
/// stopped mid-header, eats the next request: the GET after the batch is
/// lost.
#[test]
fn bug_scan_limit_is_per_read_not_per_request() {
    require_root();
    let node = servers::start("node");
    let agent = Agent::start(&agent::config(&[("node", node.port())]));
    let mut c = Conn::open(node.port());
    assert_eq!(
        c.send_req(&Req::get("/status/200").tenant(Some("first")))
            .status,
        200
    );
    let reqs: Vec<Req> = (0..4)
        .map(|i| {
            Req::get("/status/404")
                .tenant(Some(&format!("t{i}")))
                .padding(5000)
        })
        .collect();
    for r in c.pipeline(&reqs) {
        assert_eq!(r.status, 404);
    }
    for (t, code) in [("after", 500), ("after2", 503)] {
        assert_eq!(
            c.send_req(&Req::get(&status_path(code)).tenant(Some(t)))
                .status,
            code
        );
    }
    node.wait_for_log_lines(7);
    let want = node.method_counts("unknown");
    assert_same_counts("node", &agent.method_counts("node"), &want, &agent);
}

/// BUG: a response body whose own write starts like a status line answers
/// the next pipelined request. Python's /status-line-body answers 200 with
/// the body `HTTP/1.1 500 Internal Server Error\r\n\r\n` in its own send.
/// Pipelining `GET /status-line-body` and `GET /status/201` counts the
/// second request as 500 (and the real 201 as a response without request).
#[test]
fn bug_body_that_looks_like_a_status_line_is_counted() {
    require_root();
    let py = servers::start("python");
    let agent = Agent::start(&agent::config(&[("py", py.port())]));
    let mut c = Conn::open(py.port());
    let reqs = vec![
        Req::get("/status-line-body").tenant(Some("piped")),
        Req::get("/status/201").tenant(Some("piped")),
    ];
    let statuses: Vec<u16> = c.pipeline(&reqs).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 201]);
    py.wait_for_log_lines(2);
    let want = py.method_counts("unknown");
    assert_same_counts("py", &agent.method_counts("py"), &want, &agent);
}

/// BUG: requests with a method outside the nine the parser knows (PURGE,
/// PROPFIND, MKCOL, REPORT: real methods nginx answers) are not counted,
/// although the exporter has a method label `OTHER` for them; a GET
/// pipelined after a PURGE in the same write is lost too. Expected: each
/// counted with method `OTHER`, and the GET as GET.
#[test]
fn bug_unknown_methods_are_not_counted() {
    require_root();
    let nginx = servers::start("nginx");
    let agent = Agent::start(&agent::config(&[("shop", nginx.port())]));
    let mut c = Conn::open(nginx.port());
    assert_eq!(c.send_req(&Req::get("/status/200")).status, 200);
    for m in ["PURGE", "PROPFIND", "MKCOL", "REPORT"] {
        let r = c.send_req(&Req::new(m, "/status/200").tenant(Some(&m.to_lowercase())));
        assert_eq!(r.status, 200);
    }
    let reqs = vec![
        Req::new("PURGE", "/status/404").tenant(Some("piped-purge")),
        Req::get("/status/201").tenant(Some("piped-get")),
    ];
    let statuses: Vec<u16> = c.pipeline(&reqs).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 201]);
    let mut fresh = Conn::open(nginx.port());
    let r = fresh.send_req(&Req::new("PURGE", "/status/500").tenant(Some("fresh-purge")));
    assert_eq!(r.status, 500);
    nginx.wait_for_log_lines(8);
    let known = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let mut want = MethodCounts::new();
    for ((t, m, s), n) in nginx.method_counts("unknown") {
        let m = if known.contains(&m.as_str()) {
            m
        } else {
            "OTHER".to_string()
        };
        *want.entry((t, m, s)).or_insert(0) += n;
    }
    assert_same_counts("shop", &agent.method_counts("shop"), &want, &agent);
}

/// BUG (or README): "keep-alive connections opened before the agent
/// started are counted from their next request" does not hold when the
/// server's thread sits in a blocking read when the agent attaches (Python's
/// ThreadingHTTPServer, any thread-per-connection server): that read's
/// entry was never seen, so the request it returns is lost; the one after
/// is counted. Either the agent or the README should change (if the README,
/// this test should expect one lost request per such connection).
#[test]
fn bug_blocked_reader_loses_next_request_after_agent_start() {
    require_root();
    let py = servers::start("python");
    let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(py.port())).collect();
    for c in &mut conns {
        assert_eq!(
            c.send_req(&Req::get("/status/200").tenant(Some("before")))
                .status,
            200
        );
    }
    py.wait_for_log_lines(3);
    let agent = Agent::start(&agent::config(&[("py", py.port())]));
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..3 {
            let code = CODES[(i + j) % CODES.len()];
            assert_eq!(
                c.send_req(&Req::get(&status_path(code)).tenant(TENANTS[j]))
                    .status,
                code
            );
        }
    }
    py.wait_for_log_lines(12);
    let after: Vec<String> = py.log_lines().into_iter().skip(3).collect();
    let want = servers::parse_log(&after, "unknown");
    assert_same_counts("py", &agent.method_counts("py"), &want, &agent);
}
