//! Services matched by process (comm, executable, cgroup) rather than port,
//! and the client side: outgoing requests of watched clients, per upstream.
//! Real servers, real clients (curl, wrk, raw sockets), real eBPF; counts
//! compared with the servers' own logs.

use burnwatch_e2e::agent::Agent;
use burnwatch_e2e::cgroup::TestCgroup;
use burnwatch_e2e::client::{self, Conn, Req};
use burnwatch_e2e::exposition::Exposition;
use burnwatch_e2e::servers::{Kind, MethodCounts, ScriptServer, Server};
use burnwatch_e2e::{assert_same_counts, require_root};

const TENANTS: &[Option<&str>] = &[Some("acme"), Some("globex"), None];
const CODES: &[u16] = &[200, 201, 404, 500, 503];

/// Keep-alive and fresh-connection requests to `port`; returns how many.
fn drive(port: u16, n: usize) -> usize {
    client::send_status_mix(port, n, CODES, TENANTS);
    let r = Conn::open(port).send_req(&Req::get("/status/503").tenant(Some("fresh")));
    assert_eq!(r.status, 503);
    n + 1
}

/// Services matched by comm (a server started after the agent, too), by
/// executable path, and by cgroup: each counts exactly its server's log,
/// and a server that matches none of them is not counted.
#[test]
fn services_match_by_comm_exe_and_cgroup() {
    require_root();
    let node = ScriptServer::start(Kind::Node);
    let go = ScriptServer::start(Kind::Go);
    let other = ScriptServer::start(Kind::Go);
    let cgroup = TestCgroup::create();
    cgroup.adopt(go.pid());
    let node_exe = std::fs::read_link(format!("/proc/{}/exe", node.pid())).unwrap();
    // The Python server starts after the agent: matched by its comm, which
    // the kernel checks itself. Its port is fixed now so the config can
    // name it (other tests' Python servers must not match).
    let py_port = burnwatch_e2e::free_port();
    let config = format!(
        "services:\n\
         \x20 - name: by-comm\n    match: {{comm: python3, port: {py_port}}}\n\
         \x20 - name: by-exe\n    match: {{exe: {}, port: {}}}\n\
         \x20 - name: by-cgroup\n    match: {{cgroup: {}}}\n\
         tenant:\n  header: X-Tenant-ID\n  missing: unknown\n",
        node_exe.display(),
        node.port,
        cgroup.path(),
    );
    let agent = Agent::start(&config);
    let py = ScriptServer::start_on(Kind::Python, py_port);
    let mut sent = [0usize; 3];
    for _ in 0..2 {
        sent[0] += drive(py.port, 7);
        sent[1] += drive(node.port, 7);
        sent[2] += drive(go.port, 7);
        drive(other.port, 3);
    }
    py.wait_for_log_lines(sent[0]);
    node.wait_for_log_lines(sent[1]);
    go.wait_for_log_lines(sent[2]);
    let e = agent.settle_and_scrape();
    for (name, server) in [("by-comm", &py), ("by-exe", &node), ("by-cgroup", &go)] {
        let got = burnwatch_e2e::agent::method_counts_of(&e, name);
        assert_same_counts(name, &got, &server.method_counts("unknown"), &agent);
    }
    let services: Vec<String> = e
        .find(burnwatch_e2e::agent::REQUESTS, &[])
        .map(|s| s.labels["service"].clone())
        .collect();
    assert!(
        services
            .iter()
            .all(|s| ["by-comm", "by-exe", "by-cgroup"].contains(&s.as_str())),
        "only configured services are counted: {services:?}"
    );
}

/// `burnwatch_http_client_requests_total` of `client` per (tenant, method,
/// status), and the upstreams seen.
fn client_counts(e: &Exposition, client: &str) -> (MethodCounts, Vec<String>) {
    let mut out = MethodCounts::new();
    let mut upstreams = Vec::new();
    for s in e.find(
        "burnwatch_http_client_requests_total",
        &[("service", client)],
    ) {
        let key = (
            s.labels["tenant"].clone(),
            s.labels["method"].clone(),
            s.labels["status_code"].clone(),
        );
        *out.entry(key).or_insert(0) += s.value as u64;
        if !upstreams.contains(&s.labels["upstream"]) {
            upstreams.push(s.labels["upstream"].clone());
        }
    }
    out.retain(|_, n| *n > 0);
    (out, upstreams)
}

/// The client side: curl and a raw-socket client (keep-alive and fresh
/// connections) call a Go server; the agent, watching clients to that
/// upstream port, counts per tenant, method and status exactly what the
/// server logs, labelled with the upstream's address.
///
/// Left out: wrk (it closes connections with requests in flight when its
/// time is up, which a client rightly counts as 000) and pipelining (a
/// client's read is matched by the status line it starts with, so several
/// responses in one read answer only the oldest request; the rest count as
/// 000 when the connection closes).
#[test]
fn client_requests_match_the_upstream_log() {
    require_root();
    let go = ScriptServer::start(Kind::Go);
    let port = go.port;
    let agent = Agent::start(&format!(
        "services:\n  - name: unrelated\n    match: {{port: 1}}\n\
         clients:\n  - name: upstream\n    match: {{port: {port}}}\n\
         tenant:\n  header: X-Tenant-ID\n  missing: unknown\n"
    ));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let mut sent = 0;
    for (tenant, codes) in [("acme", [200, 404, 500]), ("globex", [201, 503, 200])] {
        let header = format!("X-Tenant-ID: {tenant}");
        let urls: Vec<String> = codes.iter().map(|c| url(&format!("/status/{c}"))).collect();
        assert_eq!(client::curl(&["-H", &header], &urls), codes.to_vec());
        sent += codes.len();
    }
    sent += drive(port, 9);
    go.wait_for_log_lines(sent);
    let want = go.method_counts("unknown");
    let (got, upstreams) = client_counts(&agent.settle_and_scrape(), "upstream");
    assert_same_counts("upstream (client side)", &got, &want, &agent);
    assert_eq!(upstreams, vec![format!("127.0.0.1:{port}")]);
}

/// The client side over IPv6 and IPv4 to one upstream (nginx listening on
/// both): curl and raw-socket clients on each family; the client counts
/// equal nginx's log per (tenant, method, status), and each family is its
/// own upstream, `127.0.0.1:port` and `[::1]:port`.
#[test]
fn client_requests_over_ipv6_are_counted_per_upstream() {
    require_root();
    let nginx = burnwatch_e2e::nginx::Nginx::start_dual_stack();
    let port = nginx.port;
    let agent = Agent::start(&format!(
        "services:\n  - name: unrelated\n    match: {{port: 1}}\n\
         clients:\n  - name: upstream\n    match: {{port: {port}}}\n\
         tenant:\n  header: X-Tenant-ID\n  missing: unknown\n"
    ));
    let mut sent = 0;
    for (host, tenant) in [("127.0.0.1", "four"), ("[::1]", "six")] {
        let header = format!("X-Tenant-ID: {tenant}");
        let urls: Vec<String> = CODES
            .iter()
            .map(|c| format!("http://{host}:{port}/status/{c}"))
            .collect();
        assert_eq!(client::curl(&["-g", "-H", &header], &urls), CODES.to_vec());
        sent += CODES.len();
    }
    let mut c = Conn::open_v6(port);
    for (i, code) in CODES.iter().enumerate() {
        let method = ["GET", "POST", "HEAD"][i % 3];
        let r = c.send_req(&Req::new(method, &format!("/status/{code}")).tenant(TENANTS[i % 3]));
        assert_eq!(r.status, *code);
        sent += 1;
    }
    nginx.wait_for_log_lines(sent);
    let want = Server::method_counts(&nginx, "unknown");
    let (got, mut upstreams) = client_counts(&agent.settle_and_scrape(), "upstream");
    assert_same_counts("upstream over IPv4 and IPv6", &got, &want, &agent);
    upstreams.sort();
    assert_eq!(
        upstreams,
        vec![format!("127.0.0.1:{port}"), format!("[::1]:{port}")]
    );
}
