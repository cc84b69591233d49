//! `burnwatch status` and `burnwatch gate`, the real binary, against a real agent
//! watching real nginx: acme gets 500s (its SLO pages), globex gets 200s.
//! Also the JSON API behind them (`/v1/slos`, `/v1/slos/{slo}/tenants/{tenant}`).

use std::process::{Command, Output};

use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root};

fn config(port: u16) -> String {
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n    window: 30d\n"
    )
}

fn burnwatch(args: &[&str]) -> Output {
    Command::new(burnwatch_e2e::agent::binary())
        .args(args)
        .output()
        .expect("run burnwatch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_and_gate_read_a_live_agent() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&config(nginx.port));
    let url = format!("http://127.0.0.1:{}", agent.metrics_port);

    let mut c = Conn::open(nginx.port);
    for _ in 0..30 {
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
        assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
    }
    nginx.wait_for_log_lines(60);
    agent.settle_and_scrape();

    // The table: acme (paging) first, globex untouched.
    let out = burnwatch(&["status", "--agent", &url]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("1 SLOs, 2 series, 1 paging"), "{table}");
    assert!(
        lines[1].starts_with("SLO") && lines[1].contains("BURN5m"),
        "{table}"
    );
    let acme = lines[2];
    assert!(
        acme.starts_with("shop-availability  acme"),
        "acme first:\n{table}"
    );
    assert!(
        acme.contains("page 14.4x 1h/5m") && acme.contains("critical"),
        "{acme}"
    );
    assert!(acme.contains(" 1000 "), "100% errors burn 1000x: {acme}");
    let globex = lines[3];
    assert!(
        globex.contains("globex") && globex.contains("100.0%"),
        "{globex}"
    );
    assert!(
        globex.contains("healthy") && globex.trim_end().ends_with('-'),
        "{globex}"
    );

    // --json: the same data for scripts.
    let out = burnwatch(&["status", "--json", "--agent", &url]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let first = &json["series"][0];
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["firing"]["tier"]["severity"], "page");
    assert_eq!(first["period_bad"], 30.0);
    let burn_5m = first["burn"][0]["burn_rate"].as_f64().expect("5m burn");
    assert!((burn_5m - 1000.0).abs() < 1.0, "{burn_5m}");
    assert!(
        json["probes_attached"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with("tracepoint:")))),
        "{json}"
    );

    // The detail endpoint carries the sparkline history.
    let body = burnwatch_e2e::client::get_body(
        agent.metrics_port,
        "/v1/slos/shop-availability/tenants/acme",
    )
    .expect("detail");
    let detail: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(detail["history"]["step_secs"], 300);
    assert_eq!(detail["history"]["windows"][0], "5m");
    let points = detail["history"]["points"].as_array().expect("points");
    assert_eq!(points.len(), 72, "6 hours of 5-minute points");
    let last = points.last().expect("a point")["burn"][0].as_f64();
    assert!(last.is_some_and(|b| (b - 1000.0).abs() < 1.0), "{last:?}");
    let missing = burnwatch_e2e::client::get_status(
        agent.metrics_port,
        "/v1/slos/shop-availability/tenants/nobody",
    );
    assert_eq!(missing, Some(404));

    // The gate: exit status and reason.
    let out = burnwatch(&[
        "gate",
        "--agent",
        &url,
        "--slo",
        "shop-availability",
        "--tenant",
        "acme",
        "--risk",
        "low",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "defer while paging: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).starts_with("defer: page alert firing"),
        "{}",
        text(&out.stdout)
    );
    let out = burnwatch(&[
        "gate",
        "--agent",
        &url,
        "--slo",
        "shop-availability",
        "--tenant",
        "globex",
        "--risk",
        "high",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("approve: "),
        "{}",
        text(&out.stdout)
    );
    let out = burnwatch(&["gate", "--agent", &url, "--slo", "nope", "--tenant", "acme"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no SLO named \"nope\""),
        "{}",
        text(&out.stderr)
    );

    // No agent: a clear error, not a hang.
    let dead = format!("http://127.0.0.1:{}", burnwatch_e2e::free_port());
    let out = burnwatch(&["status", "--agent", &dead]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the agent"),
        "{}",
        text(&out.stderr)
    );
}
