//! Accuracy of `burnwatch_http_requests_total` against real servers' own
//! request logs, exactly, for what the agent does today: nginx, Python's
//! `http.server`, Node's `http` and Go's `net/http`, driven by raw sockets
//! (keep-alive, pipelining, one byte per write, requests split at awkward
//! places, 10 KiB header blocks, Content-Length and chunked bodies,
//! `Expect: 100-continue`, 1 MiB and chunked responses), curl and wrk; the
//! read and write syscalls the agent probes; hostile bytes on a watched port;
//! tenant values cut at 64 bytes.
//!
//! Each test compares per (tenant, method, status) where it can, which
//! implies the per (tenant, status) equality the SLIs are built on.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use burnwatch_e2e::agent::{self, Agent};
use burnwatch_e2e::client::{self, Conn, Req, Response};
use burnwatch_e2e::servers::{self, Kind, MethodCounts, ScriptServer, Server};
use burnwatch_e2e::{assert_same_counts, count_diff, require_root};

const TENANTS: &[Option<&str>] = &[Some("acme"), Some("globex"), Some("initech"), None];
const CODES: &[u16] = &[200, 201, 204, 404, 429, 500, 503];
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

fn status_path(code: u16) -> String {
    format!("/status/{code}")
}

/// Counts requests sent and checks each answer.
struct Tally {
    kind: &'static str,
    sent: usize,
}

impl Tally {
    fn check(&mut self, r: Response, code: u16, what: &str) -> Response {
        assert_eq!(r.status, code, "{}: {what}", self.kind);
        self.sent += 1;
        r
    }
}

/// Splits `bytes` right after each of `cuts` (substrings, in order).
fn split_after(bytes: &[u8], cuts: &[&str]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        let at = bytes[start..]
            .windows(cut.len())
            .position(|w| w == cut.as_bytes())
            .unwrap_or_else(|| panic!("{cut:?} not in the request"))
            + start
            + cut.len();
        pieces.push(bytes[start..at].to_vec());
        start = at;
    }
    pieces.push(bytes[start..].to_vec());
    pieces
}

/// Writes `pieces` with a pause after each, so the server reads them apart.
fn send_pieces(c: &mut Conn, pieces: &[Vec<u8>]) {
    for p in pieces {
        c.send(p);
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// The traffic mix every server gets. Returns how many requests the server
/// answers (and so logs).
fn drive_mix(server: &dyn Server) -> usize {
    let port = server.port();
    let kind = server.kind();
    let mut t = Tally { kind, sent: 0 };

    // Keep-alive: one connection per tenant, statuses and methods rotating.
    let mut conns: Vec<Conn> = TENANTS.iter().map(|_| Conn::open(port)).collect();
    for round in 0..5 {
        for (i, tenant) in TENANTS.iter().enumerate() {
            let code = CODES[(round * 2 + i) % CODES.len()];
            let method = METHODS[(round + i * 2) % METHODS.len()];
            let r = conns[i].send_req(&Req::new(method, &status_path(code)).tenant(*tenant));
            t.check(r, code, "keep-alive");
        }
    }
    // One keep-alive connection whose tenant changes per request, and a
    // new connection per request.
    let mut mixed = Conn::open(port);
    for i in 0..8 {
        let code = CODES[i % CODES.len()];
        let r = mixed.send_req(&Req::get(&status_path(code)).tenant(TENANTS[i % TENANTS.len()]));
        t.check(r, code, "mixed tenants");
        let r = Conn::open(port).send_req(
            &Req::new("POST", &status_path(code))
                .tenant(TENANTS[(i + 1) % TENANTS.len()])
                .header("Connection: close"),
        );
        t.check(r, code, "connection per request");
    }

    // Pipelining: four requests in one write, on a fresh connection (the
    // batch is its first read) and on two busy ones.
    let batch = |salt: usize| -> Vec<Req> {
        (0..4)
            .map(|j| {
                let code = CODES[(salt + j * 3) % CODES.len()];
                let method = ["GET", "HEAD", "DELETE", "GET"][j];
                Req::new(method, &status_path(code)).tenant(TENANTS[(salt + j) % TENANTS.len()])
            })
            .collect()
    };
    let mut fresh = Conn::open(port);
    for (salt, c) in [(0, &mut fresh), (1, &mut conns[0]), (2, &mut mixed)] {
        let reqs = batch(salt);
        let resps = c.pipeline(&reqs);
        for (req, r) in reqs.iter().zip(resps) {
            let code: u16 = req.path.trim_start_matches("/status/").parse().unwrap();
            t.check(r, code, "pipelined");
        }
    }

    // Deep pipelines: 40 requests in one write, far deeper than the
    // kernel's per-connection queue (4; the rest spill to a map), with
    // bodies among them, on a fresh connection and on a busy one.
    let deep = |salt: usize| -> Vec<Req> {
        (0..40)
            .map(|j| {
                let code = CODES[(salt + j) % CODES.len()];
                let tenant = TENANTS[(salt + j * 5) % TENANTS.len()];
                match j % 4 {
                    0 => Req::new("POST", &status_path(code))
                        .tenant(tenant)
                        .body(&[b'd'; 300]),
                    1 => Req::new("HEAD", &status_path(code)).tenant(tenant),
                    _ => Req::get(&status_path(code)).tenant(tenant),
                }
            })
            .collect()
    };
    for (salt, c) in [(3, &mut Conn::open(port)), (4, &mut conns[0])] {
        let reqs = deep(salt);
        let resps = c.pipeline(&reqs);
        for (req, r) in reqs.iter().zip(resps) {
            let code: u16 = req.path.trim_start_matches("/status/").parse().unwrap();
            t.check(r, code, "deep pipeline");
        }
    }

    // One byte per write, on a connection the agent already knows; a GET,
    // then a POST with a body, then a normal request.
    let c = &mut conns[1];
    c.dribble(
        &Req::get("/status/429").tenant(Some("dribbler")).bytes(),
        Duration::from_millis(2),
    );
    t.check(c.read_final(false), 429, "dribbled GET");
    c.dribble(
        &Req::new("POST", "/status/201")
            .tenant(Some("dribbler"))
            .body(b"field=value&other=1")
            .bytes(),
        Duration::from_millis(2),
    );
    t.check(c.read_final(false), 201, "dribbled POST");
    t.check(c.send_req(&Req::get("/status/200")), 200, "after dribbling");

    // Requests split at awkward places: inside the path, inside the tenant
    // header's name and value, between the final CR and LF.
    let split = Req::get("/status/404")
        .tenant(Some("split-tenant"))
        .header("Accept: */*")
        .bytes();
    let pieces = split_after(&split, &["GET /sta", "X-Ten", "split-te", "\r\n\r"]);
    send_pieces(&mut conns[2], &pieces);
    t.check(conns[2].read_final(false), 404, "split request");
    // The same on a fresh connection whose first read is the first piece.
    let pieces = split_after(&split, &["GET /status/404 HT", "X-Ten", "split-te"]);
    let mut c = Conn::open(port);
    send_pieces(&mut c, &pieces);
    t.check(c.read_final(false), 404, "split request, fresh connection");

    // A 10 KiB header block with the tenant header near its end, on a busy
    // connection and on a fresh one, followed by a normal request.
    let big = Req::get("/status/500")
        .tenant(Some("bigheaders"))
        .padding(10 * 1024);
    assert!(big.bytes().len() > 10 * 1024);
    t.check(conns[3].send_req(&big), 500, "10 KiB header block");
    t.check(
        conns[3].send_req(&Req::get("/status/200")),
        200,
        "after 10 KiB header block",
    );
    let mut c = Conn::open(port);
    t.check(
        c.send_req(&big),
        500,
        "10 KiB header block, fresh connection",
    );

    // Request bodies the agent must skip: they hold request lines, header
    // lines and a status line that must not count.
    let fake = b"GET /status/500 HTTP/1.1\r\nX-Tenant-ID: evil\r\n\r\nHTTP/1.1 500 Nope\r\n";
    let mut c = Conn::open(port);
    let body: Vec<u8> = fake.iter().copied().cycle().take(3000).collect();
    let r = c.send_req(
        &Req::new("POST", "/status/201")
            .tenant(Some("acme"))
            .body(&body),
    );
    t.check(r, 201, "Content-Length body");
    let chunks = vec![
        fake.to_vec(),
        vec![b'c'; 5000],
        b"X-Tenant-ID: evil\r\n\r\n".to_vec(),
        fake.to_vec(),
    ];
    let r = c.send_req(
        &Req::new("PUT", "/status/200")
            .tenant(Some("globex"))
            .chunked(chunks),
    );
    t.check(r, 200, "chunked body");
    let r = c.send_req(
        &Req::new("POST", "/status/503")
            .tenant(Some("initech"))
            .body(&vec![b'b'; 256 * 1024]),
    );
    t.check(r, 503, "256 KiB body");
    t.check(
        c.send_req(&Req::get("/status/404").tenant(Some("acme"))),
        404,
        "after bodies",
    );

    // Expect: 100-continue; the interim 100 is not a final status.
    let mut c = Conn::open(port);
    let (interim, r) = c.expect_continue(
        &Req::new("POST", "/status/201")
            .tenant(Some("patient"))
            .body(&[b'p'; 2048]),
    );
    if kind != "nginx" {
        // nginx answers a `return` location at once, without 100.
        assert_eq!(interim, Some(100), "{kind}: no 100 Continue");
    }
    t.check(r, 201, "Expect: 100-continue");
    t.check(
        c.send_req(&Req::get("/status/200").tenant(Some("patient"))),
        200,
        "after 100-continue",
    );

    // Large and chunked responses, then a normal request on the same
    // connection: body writes must not look like responses.
    let mut c = Conn::open(port);
    let r = t.check(
        c.send_req(&Req::get("/big").tenant(Some("acme"))),
        200,
        "/big",
    );
    assert_eq!(r.body.len(), 1 << 20, "{kind}: /big body");
    let r = t.check(
        c.send_req(
            &Req::get("/chunked")
                .tenant(Some("globex"))
                .header("Accept-Encoding: gzip"),
        ),
        200,
        "/chunked",
    );
    assert!(!r.body.is_empty(), "{kind}: /chunked body");
    t.check(
        c.send_req(&Req::new("HEAD", "/big").tenant(Some("initech"))),
        200,
        "HEAD /big",
    );
    t.check(
        c.send_req(&Req::get("/status/503").tenant(Some("initech"))),
        503,
        "after big responses",
    );

    // The tenant header's name in any case; blanks around its value.
    let mut c = Conn::open(port);
    for (line, code) in [
        ("x-tenant-id: lowercase", 200),
        ("X-TENANT-ID: uppercase", 404),
        ("X-Tenant-ID:    padded   ", 500),
    ] {
        t.check(
            c.send_req(&Req::get(&status_path(code)).header(line)),
            code,
            line,
        );
    }

    // curl: several URLs over one connection, HEAD, POST, DELETE, HTTP/1.0.
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let runs: Vec<(Vec<&str>, Vec<String>, Vec<u16>)> = vec![
        (
            vec!["-H", "X-Tenant-ID: curl-co"],
            vec![url("/status/200"), url("/status/404"), url("/status/500")],
            vec![200, 404, 500],
        ),
        (
            vec!["-I", "-H", "X-Tenant-ID: curl-co"],
            vec![url("/status/201")],
            vec![201],
        ),
        (
            vec!["--data-binary", "a=1&b=2", "-H", "X-Tenant-ID: curl-co"],
            vec![url("/status/429")],
            vec![429],
        ),
        (vec!["-X", "DELETE"], vec![url("/status/204")], vec![204]),
        (
            vec!["-0", "-H", "X-Tenant-ID: old-timer"],
            vec![url("/status/503")],
            vec![503],
        ),
    ];
    for (args, urls, want) in runs {
        let got = client::curl(&args, &urls);
        assert_eq!(got, want, "{kind}: curl {args:?} {urls:?}");
        t.sent += got.len();
    }
    t.sent
}

/// The mix against nginx, Python, Node and Go, one agent watching the four:
/// for each server, the agent's counts per (tenant, method, status) equal
/// the server's log exactly. Every server is checked before the test fails.
#[test]
fn mix_matches_every_server_log() {
    mix_matches_every_server_log_on("");
}

/// The same on the syscall path (the fallback for kernels before 6.4).
#[test]
fn mix_matches_every_server_log_on_the_syscall_path() {
    mix_matches_every_server_log_on(SYSCALL_PATH);
}

/// Appended to an agent config: the syscall-tracepoint capture path.
const SYSCALL_PATH: &str = "capture:\n  mode: syscalls\n";

fn mix_matches_every_server_log_on(capture: &str) {
    require_root();
    let all: Vec<Box<dyn Server>> = ["nginx", "python", "node", "go"]
        .into_iter()
        .map(servers::start)
        .collect();
    let services: Vec<(&str, u16)> = all.iter().map(|s| (s.kind(), s.port())).collect();
    let agent = Agent::start(&(agent::config(&services) + capture));
    for s in &all {
        let sent = drive_mix(&**s);
        s.wait_for_log_lines(sent);
        let log = s.log_lines();
        assert_eq!(
            log.len(),
            sent,
            "{} logged more requests than were sent:\n{}",
            s.kind(),
            log.join("\n")
        );
    }
    let e = agent.settle_and_scrape();
    let mut failures = String::new();
    for s in &all {
        let kind = s.kind();
        let want = s.method_counts("unknown");
        let got = agent::method_counts_of(&e, kind);
        if let Some(d) = count_diff(&got, &want) {
            failures.push_str(&format!("{kind}:\n{d}"));
        }
        if let Some(d) = count_diff(&agent::counts_of(&e, kind), &s.counts("unknown")) {
            failures.push_str(&format!("{kind} per (tenant, status):\n{d}"));
        }
        // Not vacuous: many tenants, statuses and methods were compared.
        let tenants: BTreeSet<_> = want.keys().map(|k| k.0.as_str()).collect();
        let methods: BTreeSet<_> = want.keys().map(|k| k.1.as_str()).collect();
        let statuses: BTreeSet<_> = want.keys().map(|k| k.2.as_str()).collect();
        assert!(tenants.len() >= 10, "{kind}: tenants {tenants:?}");
        for t in [
            "unknown",
            "dribbler",
            "bigheaders",
            "split-tenant",
            "lowercase",
            "padded",
        ] {
            assert!(tenants.contains(t), "{kind}: no tenant {t} in {tenants:?}");
        }
        assert!(methods.len() >= 7, "{kind}: methods {methods:?}");
        assert!(statuses.len() >= 7, "{kind}: statuses {statuses:?}");
        assert!(
            !got.keys().any(|k| k.2 == "100"),
            "{kind}: 100 Continue counted"
        );
    }
    assert!(
        failures.is_empty(),
        "the agent's counts differ from the servers' own logs:\n{failures}agent log:\n{}",
        agent.log()
    );
    assert_no_drops(&agent, "mix");
    assert_eq!(
        agent::capture_counter(&agent.scrape(), "pipeline_overflow"),
        0,
        "mix: pipelined requests were not kept (deep pipelines spill)"
    );
}

/// The capture lost nothing, and no connection state was reported evicted:
/// far fewer connections than the map holds, so any `state_evicted` is a
/// false alarm from a close, reset or kill path (these mixes have all).
fn assert_no_drops(agent: &Agent, what: &str) {
    let e = agent.scrape();
    assert_eq!(
        e.sum("burnwatch_dropped_events_total", &[]),
        0.0,
        "{what}: the capture dropped events:\n{}",
        e.text
    );
    assert_eq!(
        agent::capture_counter(&e, "state_evicted"),
        0,
        "{what}: connection state reported evicted:\n{}",
        e.text
    );
}

/// wrk's Lua script: tenants (one of five requests without one), methods
/// and statuses rotate per request. (No HEAD: wrk waits for a HEAD
/// response's body.)
const WRK_SCRIPT: &str = r#"
local tenants = {"acme", "globex", "initech", "umbrella", ""}
local codes = {200, 200, 201, 404, 429, 500, 503}
local n = 0
request = function()
  n = n + 1
  local t = tenants[(n % #tenants) + 1]
  if t == "" then
    wrk.headers["X-Tenant-ID"] = nil
  else
    wrk.headers["X-Tenant-ID"] = t
  end
  local method = "GET"
  if n % 3 == 0 then method = "POST" end
  return wrk.format(method, "/status/" .. codes[(n % #codes) + 1])
end
"#;

/// wrk, 2 s and 8 connections against each server in turn, one agent
/// watching all four: the agent's total and per (tenant, method, status)
/// counts equal each server's log.
#[test]
fn wrk_load_matches_every_server_log() {
    require_root();
    let all: Vec<Box<dyn Server>> = ["nginx", "python", "node", "go"]
        .into_iter()
        .map(servers::start)
        .collect();
    let services: Vec<(&str, u16)> = all.iter().map(|s| (s.kind(), s.port())).collect();
    let agent = Agent::start(&agent::config(&services));
    for s in &all {
        let report = client::wrk(s.port(), 2, 8, Duration::from_secs(2), WRK_SCRIPT);
        let logged = s.wait_for_quiet_log(Duration::from_millis(500));
        assert!(
            logged > 300,
            "{}: only {logged} requests in 2 s of wrk:\n{report}",
            s.kind()
        );
    }
    let e = agent.settle_and_scrape();
    for s in &all {
        let kind = s.kind();
        let want = s.method_counts("unknown");
        let got = agent::method_counts_of(&e, kind);
        let (g, w): (u64, u64) = (got.values().sum(), want.values().sum());
        assert_eq!(
            g,
            w,
            "{kind}: agent total {g}, server log total {w}; agent log:\n{}",
            agent.log()
        );
        assert_same_counts(kind, &got, &want, &agent);
        let tenants: BTreeSet<_> = got.keys().map(|k| k.0.as_str()).collect();
        assert_eq!(tenants.len(), 5, "{kind}: {tenants:?}");
        assert!(got.keys().map(|k| &k.2).collect::<BTreeSet<_>>().len() >= 6);
        eprintln!("{kind}: {w} requests under wrk, counted exactly");
    }
    assert_no_drops(&agent, "wrk");
}

/// A real TLS 1.3-style ClientHello record for `localhost`.
fn client_hello() -> Vec<u8> {
    let mut ext = Vec::new();
    // server_name
    let name = b"localhost";
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    // supported_versions: TLS 1.3, 1.2
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
    // supported_groups: x25519
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
    // ALPN: http/1.1
    ext.extend_from_slice(&[0x00, 0x10, 0x00, 0x0b, 0x00, 0x09, 0x08]);
    ext.extend_from_slice(b"http/1.1");
    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    body.push(32);
    body.extend((0..32u8).map(|i| i.wrapping_mul(11)));
    let suites = [0x13u8, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2f, 0xc0, 0x30];
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `bytes` on a new connection, then half-closes and reads whatever
/// comes back until EOF (or 3 s).
fn hostile(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    std::thread::sleep(Duration::from_millis(50));
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// Garbage, TLS ClientHellos (hand-made and curl's own) and garbage after a
/// valid request, on the watched port while a normal keep-alive connection
/// works: only the normal requests count, exactly.
fn hostile_traffic(server: &dyn Server, agent: &Agent) {
    let port = server.port();
    let kind = server.kind();
    // The normal connection works until the hostile traffic is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let normal = std::thread::spawn(move || {
        let mut c = Conn::open(port);
        let mut sent = 0;
        for i in 0.. {
            if i >= 20 && stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let code = CODES[i % CODES.len()];
            let tenant = ["acme", "globex", "initech"][i % 3];
            let r = c.send_req(&Req::get(&status_path(code)).tenant(Some(tenant)));
            assert_eq!(r.status, code);
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    });
    let mut noise: Vec<u8> = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let mut before_garbage = 0;
    for round in 0..3 {
        hostile(port, &client_hello());
        hostile(port, &noise);
        hostile(port, b"hello there\r\n\r\n");
        hostile(port, b"\x00\x00\x00\x00\x00\x00\x00\x00\r\n\r\n");
        let status = client::curl(
            &["-k", "--max-time", "3"],
            &[format!("https://127.0.0.1:{port}/status/200")],
        );
        assert_ne!(status, vec![200], "{kind}: TLS answered?");
        // A valid request, then garbage on the same connection.
        let mut c = Conn::open(port);
        let r = c.send_req(&Req::get("/status/201").tenant(Some("before-garbage")));
        assert_eq!(r.status, 201);
        before_garbage += 1;
        c.send(&noise[round * 100..round * 100 + 300]);
        c.send(b"\r\n\r\n");
        let _ = c.stream().shutdown(Shutdown::Write);
        c.drain(Duration::from_secs(3));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = normal.join().unwrap() + before_garbage;

    // nginx logs its 400 answers to the garbage too: those are no requests.
    // Every real request of this test carries a tenant and no 400.
    let is_request = |l: &String| !l.starts_with("400 - ");
    let got_lines = burnwatch_e2e::wait_for(Duration::from_secs(10), || {
        let n = server.log_lines().iter().filter(|l| is_request(l)).count();
        (n >= sent).then_some(n)
    });
    assert_eq!(
        got_lines,
        Some(sent),
        "{kind} logged:\n{:?}",
        server.log_lines()
    );
    let lines: Vec<String> = server.log_lines().into_iter().filter(is_request).collect();
    let want: MethodCounts = servers::parse_log(&lines, "unknown");
    let got = agent.method_counts(kind);
    assert_same_counts(kind, &got, &want, agent);
    assert!(got.keys().any(|k| k.0 == "before-garbage"));
    assert!(
        !got.keys().any(|k| k.2 == "400"),
        "{kind}: a 400 answer to garbage was counted"
    );
}

#[test]
fn hostile_bytes_are_not_counted() {
    require_root();
    let nginx = servers::start("nginx");
    let python = servers::start("python");
    let agent = Agent::start(&agent::config(&[
        ("nginx", nginx.port()),
        ("python", python.port()),
    ]));
    hostile_traffic(&*nginx, &agent);
    hostile_traffic(&*python, &agent);
    assert!(
        nginx.log_lines().iter().any(|l| l.starts_with("400 ")),
        "nginx never answered the garbage: the test sent nothing hostile?"
    );
}

/// Tenant values longer than 64 bytes are cut to their first 64 bytes,
/// also when the header ends a 10 KiB header block; shorter ones are kept.
#[test]
fn long_tenants_are_cut_to_64_bytes() {
    require_root();
    let nginx = servers::start("nginx");
    let agent = Agent::start(&agent::config(&[("shop", nginx.port())]));
    let alphabet: Vec<u8> = (b'a'..=b'z').chain(b'0'..=b'9').collect();
    let tenant = |len: usize, salt: usize| -> String {
        (0..len)
            .map(|i| alphabet[(i + salt) % alphabet.len()] as char)
            .collect()
    };
    let cases = [
        (100, 0, 200),
        (100, 0, 500),
        (65, 1, 404),
        (64, 2, 200),
        (63, 3, 503),
        (200, 4, 200),
    ];
    let mut c = Conn::open(nginx.port());
    let mut sent = 0;
    let mut truncated = 0;
    for (len, salt, code) in cases {
        for padding in [0, 10 * 1024] {
            let t = tenant(len, salt);
            let r = c.send_req(
                &Req::get(&status_path(code))
                    .tenant(Some(&t))
                    .padding(padding),
            );
            assert_eq!(r.status, code);
            sent += 1;
            truncated += usize::from(len > 64);
        }
    }
    nginx.wait_for_log_lines(sent);
    // nginx logs each tenant whole; the agent keeps the first 64 bytes.
    let logged = nginx.counts("unknown");
    assert!(logged.keys().any(|(t, _)| t.len() == 200), "{logged:?}");
    let mut want = servers::Counts::new();
    for ((t, s), n) in logged {
        *want
            .entry((t[..t.len().min(64)].to_string(), s))
            .or_insert(0) += n;
    }
    let e = agent.settle_and_scrape();
    let got = agent::counts_of(&e, "shop");
    assert_same_counts("shop", &got, &want, &agent);
    let hundred = tenant(100, 0);
    assert_eq!(
        got.get(&(hundred[..64].to_string(), "200".to_string())),
        Some(&2),
        "the 100-byte tenant's label is not its first 64 bytes: {got:?}"
    );
    assert!(got.keys().all(|(t, _)| t.len() <= 64));
    assert!(got.contains_key(&(tenant(63, 3), "503".to_string())));
    assert_eq!(
        agent::capture_counter(&e, "tenant_truncated"),
        truncated as u64,
        "tenant_truncated:\n{}",
        e.text
    );
}

/// The syscalls the agent probes, one server each: reads by `read`, `recv`
/// (recvfrom), `readv` and `recvmsg` (requests spread over iovecs of 64,
/// 4096 and 65536 bytes), responses by `write`, `send` (sendto), `writev`,
/// `sendmsg`, and head by `write` with the body by `sendfile`; a server that peeks
/// (`MSG_PEEK`, by recvfrom and recvmsg) before it reads, whose peeked
/// bytes must not be parsed as requests a second time; and one that drops
/// request bodies unread (`MSG_TRUNC`), whose dropped bytes must be
/// skipped by count.
#[test]
fn syscall_variants_match_request_log() {
    syscall_variants_match_request_log_on("");
}

/// The same on the syscall path.
#[test]
fn syscall_variants_match_request_log_on_the_syscall_path() {
    syscall_variants_match_request_log_on(SYSCALL_PATH);
}

fn syscall_variants_match_request_log_on(capture: &str) {
    require_root();
    let modes = [
        ("read", "write"),
        ("recvfrom", "sendto"),
        ("read", "writev"),
        ("recvfrom", "sendfile"),
        ("readv", "write"),
        ("recvmsg", "sendto"),
        ("read", "sendmsg"),
        ("recvmsg", "sendmsg"),
        ("peek", "sendto"),
        ("discard", "write"),
        // Dozens of iovecs per syscall: requests read across 40 small
        // buffers, pipelined answers written as Apache writes them.
        ("readv_many", "writev_many"),
    ];
    let all: Vec<(String, ScriptServer)> = modes
        .iter()
        .map(|&(r, w)| {
            (
                format!("{r}-{w}"),
                ScriptServer::start(Kind::Syscalls(r, w)),
            )
        })
        .collect();
    let services: Vec<(&str, u16)> = all.iter().map(|(n, s)| (n.as_str(), s.port)).collect();
    let agent = Agent::start(&(agent::config(&services) + capture));
    for (name, s) in &all {
        let mut sent = drive_small_mix(s.port, name);
        if name == "discard-write" {
            sent += drain_past_a_body(s.port);
        }
        s.wait_for_log_lines(sent);
    }
    let e = agent.settle_and_scrape();
    for (name, s) in &all {
        let want = s.method_counts("unknown");
        let got = agent::method_counts_of(&e, name);
        assert_same_counts(name, &got, &want, &agent);
        assert!(got.len() >= 6, "{name}: {got:?}");
    }
    assert_eq!(
        agent::capture_counter(&e, "discarded_unseen"),
        2,
        "each drained request line is one loss of place:\n{}",
        e.text
    );
    assert_no_drops(&agent, "syscalls");
}

/// Requests the `discard` server answers, then drops everything after them
/// unread (`MSG_TRUNC`), requests too, which it never sees or logs: the
/// agent must not count them either, and counts each dropped request line
/// as a `discarded_unseen`. First a POST answered before its 100 KB body,
/// a request pipelined behind the body; then a GET, and once its response
/// is read another request, which the server's buffer meets holding the
/// GET's bytes (a build that parsed it counted a phantom request). Returns
/// requests the server answers (2).
fn drain_past_a_body(port: u16) -> usize {
    let mut c = Conn::open(port);
    let mut bytes = Req::new("POST", "/drain/413")
        .tenant(Some("acme"))
        .body(&vec![b'b'; 100_000])
        .bytes();
    bytes.extend(Req::get("/status/200").tenant(Some("globex")).bytes());
    c.send(&bytes);
    assert_eq!(c.read_response(false).status, 413, "drain");
    let mut c = Conn::open(port);
    let r = c.send_req(&Req::get("/drain/429").tenant(Some("acme")));
    assert_eq!(r.status, 429, "drain");
    c.send(&Req::get("/status/200").tenant(Some("globex")).bytes());
    c.drain(Duration::from_millis(200));
    2
}

/// A smaller mix for servers with one syscall path: keep-alive, a fresh
/// connection, pipelining, a body, a chunked body, a 1 MiB response.
/// Returns requests sent.
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
    let r = Conn::open(port).send_req(
        &Req::new("POST", "/status/201")
            .tenant(Some("acme"))
            .body(&[b'q'; 5000]),
    );
    assert_eq!(r.status, 201, "{what}: body");
    sent += 1;
    let r = c.send_req(
        &Req::new("PUT", "/status/404")
            .tenant(Some("globex"))
            .chunked(vec![b"one".to_vec(), vec![b'2'; 3000]]),
    );
    assert_eq!(r.status, 404, "{what}: chunked body");
    sent += 1;
    let r = c.send_req(&Req::get("/big").tenant(Some("initech")));
    assert_eq!((r.status, r.body.len()), (200, 1 << 20), "{what}: /big");
    sent += 1;
    let r = c.send_req(&Req::get("/status/503").tenant(Some("initech")));
    assert_eq!(r.status, 503, "{what}: after /big");
    sent + 1
}

/// Keep-alive connections opened before the agent started count from their
/// next request (README), on servers that read after epoll says a socket is
/// readable: nginx, Node, Go. (Python's thread-per-connection server sits
/// in a blocking read when the agent attaches: see accuracy_pending.rs.)
#[test]
fn connections_from_before_the_agent_count_from_their_next_request() {
    require_root();
    let all: Vec<Box<dyn Server>> = ["nginx", "node", "go"]
        .into_iter()
        .map(servers::start)
        .collect();
    let mut conns: Vec<Vec<Conn>> = Vec::new();
    for s in &all {
        let mut cs: Vec<Conn> = (0..3).map(|_| Conn::open(s.port())).collect();
        for c in &mut cs {
            let r = c.send_req(&Req::get("/status/200").tenant(Some("before")));
            assert_eq!(r.status, 200);
        }
        s.wait_for_log_lines(3);
        conns.push(cs);
    }
    let services: Vec<(&str, u16)> = all.iter().map(|s| (s.kind(), s.port())).collect();
    let agent = Agent::start(&agent::config(&services));
    for (s, cs) in all.iter().zip(&mut conns) {
        for (i, c) in cs.iter_mut().enumerate() {
            for j in 0..3 {
                let code = CODES[(i + j) % CODES.len()];
                let r = c.send_req(&Req::get(&status_path(code)).tenant(TENANTS[j]));
                assert_eq!(r.status, code);
            }
            let reqs: Vec<Req> = (0..3)
                .map(|j| Req::get(&status_path(CODES[j])).tenant(Some("piped")))
                .collect();
            c.pipeline(&reqs);
        }
        s.wait_for_log_lines(3 + 3 * 6);
    }
    let e = agent.settle_and_scrape();
    for s in &all {
        let after: Vec<String> = s.log_lines().into_iter().skip(3).collect();
        assert_eq!(after.len(), 18);
        let want = servers::parse_log(&after, "unknown");
        assert_same_counts(
            s.kind(),
            &agent::method_counts_of(&e, s.kind()),
            &want,
            &agent,
        );
    }
}
