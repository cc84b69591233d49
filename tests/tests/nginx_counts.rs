//! The first end-to-end count: a real nginx, the real agent with real eBPF,
//! a known mix of requests; the agent's counts per (tenant, status code)
//! must equal nginx's own access log, exactly.

use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root};

const TENANTS: &[Option<&str>] = &[Some("acme"), Some("globex"), Some("initech"), None];
const PATHS: &[&str] = &["/ok", "/missing", "/error", "/unavailable", "/created"];

#[test]
fn counts_equal_nginx_access_log() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&format!(
        "services:\n  - name: shop\n    match:\n      port: {}\ntenant:\n  header: X-Tenant-ID\n  missing: unknown\n",
        nginx.port
    ));

    let mut sent = 0usize;
    // Keep-alive: one connection per tenant, every path several times,
    // with tenants interleaved across connections.
    let mut conns: Vec<Conn> = TENANTS.iter().map(|_| Conn::open(nginx.port)).collect();
    for round in 0..7 {
        for (i, tenant) in TENANTS.iter().enumerate() {
            let path = PATHS[(round + i) % PATHS.len()];
            let method = if round % 3 == 2 { "HEAD" } else { "GET" };
            conns[i].request(method, path, *tenant);
            sent += 1;
        }
    }
    // One keep-alive connection whose tenant changes from request to request.
    let mut mixed = Conn::open(nginx.port);
    for (i, path) in PATHS.iter().cycle().take(11).enumerate() {
        mixed.request("GET", path, TENANTS[i % TENANTS.len()]);
        sent += 1;
    }
    // A new connection per request.
    for (i, path) in PATHS.iter().cycle().take(13).enumerate() {
        let mut c = Conn::open(nginx.port);
        c.request("POST", path, TENANTS[(i + 1) % TENANTS.len()]);
        sent += 1;
    }
    // And curl, the client users actually type.
    for (tenant, path) in [("acme", "/ok"), ("globex", "/unavailable")] {
        let status = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-H"])
            .arg(format!("X-Tenant-ID: {tenant}"))
            .arg(format!("http://127.0.0.1:{}{path}", nginx.port))
            .status()
            .unwrap();
        assert!(status.success());
        sent += 1;
    }
    drop(conns);
    drop(mixed);

    nginx.wait_for_log_lines(sent);
    let expected = nginx.counts("unknown");
    assert_eq!(expected.values().sum::<u64>(), sent as u64);
    let got = agent.counts("shop");
    assert_eq!(
        got,
        expected,
        "agent counts (left) differ from nginx's access log (right); agent log:\n{}",
        agent.log()
    );
    // Every status the test sends shows up: the assertion above is not vacuous.
    for status in ["200", "201", "404", "500", "503"] {
        assert!(got.keys().any(|(_, s)| s == status), "no {status} counted");
    }
    let e = agent.scrape();
    assert_eq!(
        e.sum("burnwatch_dropped_events_total", &[]),
        0.0,
        "the capture dropped events"
    );
}
