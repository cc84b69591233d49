//! The SLO engine end to end: real nginx errors for one tenant must page
//! for that tenant within seconds (a fresh series at 100% errors burns far
//! above 14.4), leave the other tenant alone, drive the release gate, and
//! survive an agent restart through the state store.

use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root};

fn config(port: u16) -> String {
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n    window: 30d\n\
alerting:\n  min_events: 10\n"
    )
}

fn gate(agent: &Agent, tenant: &str, risk: &str) -> String {
    burnwatch_e2e::client::get_body(
        agent.metrics_port,
        &format!("/v1/gate?slo=shop-availability&tenant={tenant}&risk={risk}"),
    )
    .expect("gate answers")
}

#[test]
fn errors_page_the_burning_tenant_only_and_survive_restart() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));

    let mut c = Conn::open(nginx.port);
    for _ in 0..30 {
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
        assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
    }
    nginx.wait_for_log_lines(60);
    let e = agent.settle_and_scrape();

    let slo = ("slo", "shop-availability");
    assert_eq!(
        e.sum(
            "burnwatch_slo_events_total",
            &[slo, ("tenant", "acme"), ("outcome", "bad")]
        ),
        30.0
    );
    assert_eq!(
        e.sum(
            "burnwatch_slo_events_total",
            &[slo, ("tenant", "globex"), ("outcome", "good")]
        ),
        30.0
    );
    assert!((e.sum("burnwatch_slo_objective_ratio", &[slo]) - 0.999).abs() < 1e-9);
    let burn_5m = e.sum(
        "burnwatch_slo_burn_rate",
        &[slo, ("tenant", "acme"), ("window", "5m")],
    );
    assert!(
        (burn_5m - 1000.0).abs() < 1.0,
        "100% errors burn at 1/(1-0.999) = 1000, got {burn_5m}"
    );
    let paging = e
        .find(
            "burnwatch_slo_alert_firing",
            &[slo, ("tenant", "acme"), ("severity", "page")],
        )
        .count();
    assert_eq!(paging, 1, "acme pages:\n{}", e.text);
    assert_eq!(
        e.find("burnwatch_slo_alert_firing", &[slo, ("tenant", "globex")])
            .count(),
        0,
        "globex is healthy"
    );
    assert_eq!(
        e.sum(
            "burnwatch_slo_error_budget_remaining_ratio",
            &[slo, ("tenant", "globex")]
        ),
        1.0
    );
    assert!(
        e.sum(
            "burnwatch_slo_error_budget_remaining_ratio",
            &[slo, ("tenant", "acme")]
        ) < 1.0
    );
    assert_eq!(
        e.sum(
            "burnwatch_slo_budget_status",
            &[slo, ("tenant", "globex"), ("status", "healthy")]
        ),
        1.0
    );

    let acme = gate(&agent, "acme", "low");
    assert!(
        acme.contains("\"verdict\":\"defer\"") || acme.contains("\"verdict\":\"block\""),
        "a paging tenant must not get a release approved: {acme}"
    );
    let globex = gate(&agent, "globex", "high");
    assert!(globex.contains("\"verdict\":\"approve\""), "{globex}");
    assert!(agent.log().contains("SLO alert fired"), "{}", agent.log());

    // Restart on the same state: the windows (and the alert) come back.
    agent.stop();
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let e = agent.settle_and_scrape();
    let burn_5m = e.sum(
        "burnwatch_slo_burn_rate",
        &[slo, ("tenant", "acme"), ("window", "5m")],
    );
    assert!(
        (burn_5m - 1000.0).abs() < 1.0,
        "restored 5m burn {burn_5m}; log:\n{}",
        agent.log()
    );
    assert_eq!(
        e.find(
            "burnwatch_slo_alert_firing",
            &[slo, ("tenant", "acme"), ("severity", "page")]
        )
        .count(),
        1,
        "the page survives a restart"
    );
    assert!(
        agent.log().contains("restored SLO state"),
        "{}",
        agent.log()
    );
}

/// `kill -9` in the middle of an outage: the restarted agent resumes from
/// the last checkpoint (every 2 s here), so the windows still hold the
/// errors and the page is still firing.
#[test]
fn kill_9_loses_at_most_one_checkpoint_interval() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let mut c = Conn::open(nginx.port);
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
    }
    nginx.wait_for_log_lines(20);
    let e = agent.settle_and_scrape();
    let slo = ("slo", "shop-availability");
    assert_eq!(
        e.sum(
            "burnwatch_slo_events_total",
            &[slo, ("tenant", "acme"), ("outcome", "bad")]
        ),
        20.0
    );
    // One checkpoint interval after the engine saw the errors.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    drop(agent); // SIGKILL: no shutdown checkpoint

    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let e = agent.settle_and_scrape();
    let burn_5m = e.sum(
        "burnwatch_slo_burn_rate",
        &[slo, ("tenant", "acme"), ("window", "5m")],
    );
    assert!(
        (burn_5m - 1000.0).abs() < 1.0,
        "5m burn after kill -9: {burn_5m}; log:\n{}",
        agent.log()
    );
    assert_eq!(
        e.find(
            "burnwatch_slo_alert_firing",
            &[slo, ("tenant", "acme"), ("severity", "page")]
        )
        .count(),
        1
    );
}
