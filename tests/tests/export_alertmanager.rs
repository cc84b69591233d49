//! Alerts pushed straight to a real Alertmanager (v2 API): real nginx
//! errors for one tenant make the engine page, the alert shows up in
//! Alertmanager with the SLO's alert name and labels, is re-sent while it
//! fires, and disappears when the engine resolves it (sent with endsAt =
//! now, well before its resend expiry).

use std::time::{Duration, Instant};

use burnwatch_e2e::peers::Alertmanager;
use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root, wait_for};

const ALERT: &str = "ShopAvailabilityBudgetBurnPage";

fn config(port: u16) -> String {
    // One page tier (1h/5m at 14.4x) so that good traffic resolves it fast.
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n\
alerting:\n  min_events: 10\n  tiers:\n    - {{ severity: page, long_window: 1h, short_window: 5m, burn_rate: 14.4 }}\n"
    )
}

fn ours(am: &Alertmanager) -> Vec<serde_json::Value> {
    am.alerts()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == ALERT)
        .collect()
}

#[test]
fn engine_alerts_reach_alertmanager_and_resolve() {
    require_root();
    let nginx = Nginx::start();
    let am = Alertmanager::start();
    let agent = Agent::start_with_exporters(
        &config(nginx.port),
        None,
        &format!(
            "  labels: {{ cluster: eu-1 }}\n  alertmanager: {{ url: \"http://127.0.0.1:{}\", resend_interval: 3s }}\n",
            am.port
        ),
    );
    let mut c = Conn::open(nginx.port);
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
        assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
    }
    let fired = wait_for(Duration::from_secs(20), || {
        let a = ours(&am);
        (!a.is_empty()).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "no alert in Alertmanager: {:?}\nagent log:\n{}",
            am.alerts(),
            agent.log()
        )
    });
    assert_eq!(fired.len(), 1, "{fired:?}");
    let labels = &fired[0]["labels"];
    assert_eq!(labels["tenant"], "acme");
    assert_eq!(labels["slo"], "shop-availability");
    assert_eq!(labels["service"], "shop");
    assert_eq!(labels["severity"], "page");
    assert_eq!(labels["cluster"], "eu-1");
    assert_eq!(fired[0]["status"]["state"], "active");
    let summary = fired[0]["annotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(summary.contains("1000x over 1h"), "{summary}");

    // Re-sent while firing: the push counter keeps rising.
    let sent = |agent: &Agent| {
        agent.scrape().sum(
            "burnwatch_export_requests_total",
            &[("exporter", "alertmanager")],
        )
    };
    let before = sent(&agent);
    std::thread::sleep(Duration::from_secs(7));
    assert!(sent(&agent) >= before + 2.0, "no periodic re-send");

    // Enough good traffic brings the 5m burn under 14.4: resolved.
    for _ in 0..2000 {
        assert_eq!(c.request("GET", "/ok", Some("acme")).status, 200);
    }
    let resolved = wait_for(Duration::from_secs(20), || {
        agent
            .log()
            .contains("SLO alert resolved")
            .then(Instant::now)
    })
    .unwrap_or_else(|| panic!("engine did not resolve:\n{}", agent.log()));
    // The last re-send set endsAt 12 s ahead; an explicit resolve clears
    // the alert long before that.
    let gone = wait_for(Duration::from_secs(6), || {
        ours(&am).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "alert still active {:?} after the engine resolved it",
        resolved.elapsed()
    );
    assert_eq!(
        agent.scrape().sum(
            "burnwatch_export_failures_total",
            &[("exporter", "alertmanager")]
        ),
        0.0
    );
}
