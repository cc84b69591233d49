//! Config reload on a running agent: a valid new config (file change)
//! applies in place, kernel side included, without losing the windows of
//! unchanged SLOs; an invalid one (file change or SIGHUP) is rejected with
//! file:line: field and the old config keeps running.

use std::time::Duration;

use burnwatch_e2e::agent::{Agent, counts_of};
use burnwatch_e2e::client::{Conn, get_body};
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::{require_root, wait_for};

fn services(shop: u16, shop2: Option<u16>) -> String {
    let mut s = format!("services:\n  - name: shop\n    match:\n      port: {shop}\n");
    if let Some(p) = shop2 {
        s.push_str(&format!("  - name: shop2\n    match:\n      port: {p}\n"));
    }
    s
}

const AVAIL: &str = "  - name: avail\n    service: shop\n    objective: 99.9\n    window: 30d\n";

fn config_a(shop: u16) -> String {
    format!(
        "{}tenant:\n  missing: unknown\nslos:\n{AVAIL}{}",
        services(shop, None),
        strict("[\"4xx\", \"5xx\"]")
    )
}

/// An SLO whose bad statuses are `bad` (a YAML list).
fn strict(bad: &str) -> String {
    format!(
        "  - name: strict\n    service: shop\n    objective: 99\n    window: 30d\n    sli: {{ availability: {{ bad_status: {bad} }} }}\n"
    )
}

/// `avail` unchanged, `strict` redefined, `extra` added, a second service,
/// a new label for requests without a tenant.
fn config_b(shop: u16, shop2: u16) -> String {
    format!(
        "{}tenant:\n  missing: anon\nslos:\n{AVAIL}{}{}",
        services(shop, Some(shop2)),
        strict("[\"5xx\"]"),
        "  - name: extra\n    service: shop\n    objective: 95\n    window: 7d\n"
    )
}

/// (good, bad) the engine holds for (slo, tenant) over the SLO's period.
fn period(agent: &Agent, slo: &str, tenant: &str) -> Option<(u64, u64)> {
    let body = get_body(
        agent.metrics_port,
        &format!("/v1/slo?slo={slo}&tenant={tenant}"),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let g = v["period"]["good"].as_f64()?.round() as u64;
    let b = v["period"]["bad"].as_f64()?.round() as u64;
    Some((g, b))
}

fn wait_log(agent: &Agent, needle: &str, times: usize) {
    let ok = wait_for(Duration::from_secs(15), || {
        (agent.log().matches(needle).count() >= times).then_some(())
    });
    assert!(
        ok.is_some(),
        "no {needle:?} (x{times}) in the agent log:\n{}",
        agent.log()
    );
}

#[test]
fn reload_applies_valid_configs_in_place_and_rejects_invalid_ones() {
    require_root();
    let nginx = Nginx::start();
    let nginx2 = Nginx::start();
    let mut agent = Agent::start(&config_a(nginx.port));

    let mut c = Conn::open(nginx.port);
    for _ in 0..20 {
        c.request("GET", "/error", Some("acme"));
        c.request("GET", "/missing", Some("acme"));
    }
    let mut c2 = Conn::open(nginx2.port);
    for _ in 0..5 {
        c2.request("GET", "/ok", None);
    }
    let e = agent.settle_and_scrape();
    assert!(
        counts_of(&e, "shop2").is_empty(),
        "shop2 is not configured yet"
    );
    assert_eq!(period(&agent, "avail", "acme"), Some((20, 20)));
    assert_eq!(period(&agent, "strict", "acme"), Some((0, 40)));

    // A valid new config, written over the file (the file watch applies it).
    agent.rewrite_config(&config_b(nginx.port, nginx2.port));
    wait_log(&agent, "config reload (file changed): applied", 1);
    // Connections keep the service they were classified with when first
    // seen: a new connection to the newly configured port.
    let mut c2 = Conn::open(nginx2.port);
    for _ in 0..5 {
        c.request("GET", "/error", Some("acme"));
        c.request("GET", "/missing", Some("acme"));
        c2.request("GET", "/ok", None);
    }
    let e = agent.settle_and_scrape();
    // The unchanged SLO kept its window; the redefined one restarted with
    // the new meaning; the new one starts at the reload (no history invented).
    assert_eq!(
        period(&agent, "avail", "acme"),
        Some((25, 25)),
        "{}",
        agent.log()
    );
    assert_eq!(period(&agent, "strict", "acme"), Some((5, 5)));
    assert_eq!(period(&agent, "extra", "acme"), Some((5, 5)));
    // The kernel picked up the new service port and tenant label in place:
    // no program was loaded again.
    assert_eq!(
        counts_of(&e, "shop2"),
        [(("anon".to_string(), "200".to_string()), 5)]
            .into_iter()
            .collect()
    );
    assert_eq!(agent.log().matches("eBPF programs attached").count(), 1);

    // An invalid config: rejected with file:line: field; the old one runs.
    let bad = config_b(nginx.port, nginx2.port).replace("objective: 95", "objective: 150");
    agent.rewrite_config(&bad);
    wait_log(&agent, "config reload (file changed) rejected", 1);
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reload (file changed) rejected"))
        .unwrap()
        .to_string();
    let where_ = format!("{}:", agent.config_path.display());
    assert!(
        line.contains(&where_) && line.contains("objective"),
        "the rejection does not name file:line and field: {line}"
    );
    // SIGHUP re-reads the same invalid file: rejected again.
    agent.signal(libc::SIGHUP);
    wait_log(&agent, "config reload (SIGHUP) rejected", 1);
    for _ in 0..3 {
        c.request("GET", "/error", Some("acme"));
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!agent.exited(), "agent died:\n{}", agent.log());
    assert_eq!(period(&agent, "avail", "acme"), Some((25, 28)));
    assert_eq!(period(&agent, "extra", "acme"), Some((5, 8)));

    // SIGHUP with a valid file: applied (the file watch may see the write
    // first; either way it is applied once and keeps the windows).
    let valid = config_b(nginx.port, nginx2.port).replace("objective: 95", "objective: 96");
    agent.rewrite_config(&valid);
    agent.signal(libc::SIGHUP);
    wait_log(&agent, ": applied", 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(period(&agent, "avail", "acme"), Some((25, 28)));
    assert_eq!(
        period(&agent, "extra", "acme"),
        Some((5, 8)),
        "{}",
        agent.log()
    );
}
