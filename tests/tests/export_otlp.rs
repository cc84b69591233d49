//! OTLP export to a real OpenTelemetry collector (rotel-agent, which logs
//! every data point and log record it receives): real nginx traffic must
//! arrive as data points with the right values, over gRPC and over
//! HTTP/protobuf, with cumulative and delta temporality; an alert the engine
//! fires must arrive as a log record naming the SLO, tenant, severity,
//! windows, burn rates and threshold; and while the collector is down the
//! agent keeps serving and counting, drops exports beyond its queue and
//! counts them.

use std::collections::BTreeMap;
use std::time::Duration;

use burnwatch_e2e::peers::Rotel;
use burnwatch_e2e::{agent::Agent, client::Conn, free_port, nginx::Nginx, require_root, wait_for};

fn config(port: u16) -> String {
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
clients:\n  - name: shop-callers\n    match:\n      port: {port}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n\
alerting:\n  min_events: 10\n"
    )
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Latest value of the data point of `metric` whose attributes include
/// `want`.
fn latest(rotel: &Rotel, metric: &str, want: &[(&str, &str)]) -> Option<f64> {
    let want = attrs(want);
    rotel
        .points(metric)
        .into_iter()
        .rev()
        .find(|(a, _)| want.iter().all(|(k, v)| a.get(k) == Some(v)))
        .map(|(_, v)| v)
}

#[test]
fn grpc_metrics_and_alert_log_records() {
    require_root();
    let nginx = Nginx::start();
    let rotel = Rotel::start();
    let agent = Agent::start_with_exporters(
        &config(nginx.port),
        None,
        &format!(
            "  labels: {{ environment: staging, cluster: eu-1, node: node-a }}\n  otlp: {{ endpoint: \"http://127.0.0.1:{}\", protocol: grpc, interval: 1s, headers: {{ x-scope-orgid: burnwatch }} }}\n",
            rotel.grpc_port
        ),
    );
    let mut c = Conn::open(nginx.port);
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
    }
    for _ in 0..12 {
        assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
    }
    nginx.wait_for_log_lines(32);
    let arrived = wait_for(Duration::from_secs(20), || {
        let errors = latest(
            &rotel,
            "burnwatch_http_requests",
            &[
                ("service", "shop"),
                ("tenant", "acme"),
                ("status_code", "500"),
            ],
        );
        let ok = latest(
            &rotel,
            "burnwatch_http_requests",
            &[
                ("service", "shop"),
                ("tenant", "globex"),
                ("status_code", "200"),
            ],
        );
        (errors == Some(20.0) && ok == Some(12.0)).then_some(())
    });
    assert!(
        arrived.is_some(),
        "collector did not receive the counts; its log:\n{}\nagent log:\n{}",
        rotel
            .log()
            .chars()
            .rev()
            .take(6000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>(),
        agent.log()
    );
    assert_eq!(
        latest(
            &rotel,
            "burnwatch_http_request_duration_seconds",
            &[("service", "shop"), ("tenant", "globex")]
        ),
        Some(12.0),
        "histogram count"
    );
    // The same requests seen from the client side (this test's process is
    // the watched client of nginx's port).
    let client = wait_for(Duration::from_secs(10), || {
        latest(
            &rotel,
            "burnwatch_http_client_requests",
            &[
                ("service", "shop-callers"),
                ("tenant", "acme"),
                ("status_code", "500"),
            ],
        )
        .filter(|v| *v == 20.0)
    });
    assert_eq!(client, Some(20.0), "client series over OTLP");
    assert_eq!(
        latest(
            &rotel,
            "burnwatch_slo_events",
            &[
                ("slo", "shop-availability"),
                ("tenant", "acme"),
                ("outcome", "bad")
            ]
        ),
        Some(20.0)
    );
    assert_eq!(
        latest(
            &rotel,
            "burnwatch_slo_budget_status",
            &[
                ("slo", "shop-availability"),
                ("tenant", "globex"),
                ("status", "healthy")
            ]
        ),
        Some(1.0)
    );
    let log = rotel.log();
    for family in [
        "burnwatch_slo_burn_rate",
        "burnwatch_slo_error_budget_remaining_ratio",
        "burnwatch_slo_low_traffic",
        "burnwatch_tcp_failures",
        "burnwatch_dropped_events",
    ] {
        assert!(log.contains(&format!("-> Name: {family}\n")), "no {family}");
    }
    for resource in [
        "service.name: Str(burnwatch)",
        "k8s.node.name: Str(node-a)",
        "k8s.cluster.name: Str(eu-1)",
        "deployment.environment.name: Str(staging)",
        "host.name: Str(",
    ] {
        assert!(log.contains(resource), "no resource attribute {resource}");
    }

    // The engine pages for acme (100% errors): one log record.
    let record = wait_for(Duration::from_secs(15), || {
        rotel
            .log_records()
            .into_iter()
            .find(|r| r.get("burnwatch.alert.transition").map(String::as_str) == Some("fired"))
    })
    .unwrap_or_else(|| panic!("no alert log record; agent log:\n{}", agent.log()));
    assert_eq!(record["event_name"], "burnwatch.slo.alert");
    assert_eq!(record["slo"], "shop-availability");
    assert_eq!(record["tenant"], "acme");
    assert_eq!(record["service"], "shop");
    assert_eq!(record["severity"], "page");
    assert_eq!(record["severity_text"], "ERROR");
    assert_eq!(record["long_window"], "1h");
    assert_eq!(record["short_window"], "5m");
    assert_eq!(record["threshold"], "14.4");
    assert_eq!(record["long_burn_rate"], "1000");
    assert_eq!(record["objective"], "99.9");
    let e = agent.scrape();
    assert_eq!(
        e.sum("burnwatch_export_dropped_total", &[("exporter", "otlp")]),
        0.0
    );
    assert!(
        e.sum(
            "burnwatch_export_requests_total",
            &[("exporter", "otlp"), ("signal", "logs")]
        ) >= 1.0
    );
}

#[test]
fn http_delta_survives_a_collector_outage() {
    require_root();
    let nginx = Nginx::start();
    let (grpc_port, http_port) = (free_port(), free_port());
    // Nobody listens on http_port yet: the collector is down.
    let agent = Agent::start_with_exporters(
        &config(nginx.port),
        None,
        &format!(
            "  otlp: {{ endpoint: \"http://127.0.0.1:{http_port}\", protocol: http, interval: 1s, temporality: delta, max_queue: 2, timeout: 1s }}\n"
        ),
    );
    let mut c = Conn::open(nginx.port);
    for _ in 0..10 {
        assert_eq!(c.request("GET", "/ok", Some("acme")).status, 200);
    }
    // /metrics keeps serving and counting while the collector is down.
    let dropped = |e: &burnwatch_e2e::exposition::Exposition| {
        e.sum(
            "burnwatch_export_dropped_total",
            &[("exporter", "otlp"), ("signal", "metrics")],
        )
    };
    let seen = wait_for(Duration::from_secs(20), || {
        let e = agent.scrape();
        (e.sum(
            "burnwatch_http_requests_total",
            &[("service", "shop"), ("tenant", "acme")],
        ) == 10.0)
            .then_some(e)
    })
    .unwrap_or_else(|| panic!("requests not counted:\n{}", agent.log()));
    // The export holding those 10 requests is built at the next tick; with
    // a queue of 2, three more drops guarantee it was among the dropped.
    let before = dropped(&seen);
    let after = wait_for(Duration::from_secs(30), || {
        let e = agent.scrape();
        (dropped(&e) >= before + 3.0).then_some(e)
    })
    .unwrap_or_else(|| panic!("no drops counted:\n{}", agent.log()));
    assert!(
        after.sum(
            "burnwatch_export_failures_total",
            &[("exporter", "otlp"), ("signal", "metrics")]
        ) >= 1.0
    );

    // The collector comes up: the agent recovers (backoff is at most 30 s). The export holding the first 10 requests was
    // dropped, so with delta temporality the collector sees only the 5 new
    // ones. They are sent once an export got through: sent during the
    // backoff, their export could itself be pushed out of the 2-deep queue
    // by the ticks before the next attempt (a CI run failed so).
    let rotel = Rotel::start_on(grpc_port, http_port);
    let accepted = |e: &burnwatch_e2e::exposition::Exposition| {
        e.sum(
            "burnwatch_export_requests_total",
            &[("exporter", "otlp"), ("signal", "metrics")],
        )
    };
    wait_for(Duration::from_secs(60), || {
        (accepted(&agent.scrape()) >= 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no export accepted after the collector came up:\n{}",
            agent.log()
        )
    });
    for _ in 0..5 {
        assert_eq!(c.request("GET", "/ok", Some("acme")).status, 200);
    }
    let want = [
        ("service", "shop"),
        ("tenant", "acme"),
        ("status_code", "200"),
    ];
    let sum = || -> f64 {
        let want = attrs(&want);
        rotel
            .points("burnwatch_http_requests")
            .into_iter()
            .filter(|(a, _)| want.iter().all(|(k, v)| a.get(k) == Some(v)))
            .map(|(_, v)| v)
            .sum()
    };
    let got = wait_for(Duration::from_secs(90), || (sum() == 5.0).then_some(()));
    assert!(
        got.is_some(),
        "deltas received sum to {}, want 5; agent log:\n{}",
        sum(),
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sum(), 5.0, "later deltas must be 0");
    assert!(rotel.log().contains("AGGREGATION_TEMPORALITY_DELTA"));
}
