//! The `/metrics` exposition scraped by a real Prometheus: real nginx
//! traffic counted by the agent must come back through PromQL with the
//! config's `environment`/`cluster`/`node` labels and tenants replaced by
//! their HMAC pseudonyms (computed here by Python's hmac, an independent
//! implementation); the classic text format passes `promtool check
//! metrics`; OpenMetrics is served when asked for.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use burnwatch_e2e::peers::{Prometheus, curl};
use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root, wait_for};

const KEY: &str = "burnwatch-test-key-0123456789";

/// HMAC-SHA256(KEY, tenant), first 8 bytes in hex, by Python.
fn pseudonym(tenant: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest()[:16])",
            KEY,
            tenant,
        ])
        .output()
        .expect("python3 (cargo xtask setup)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn prometheus_scrapes_labelled_pseudonymous_series() {
    require_root();
    let nginx = Nginx::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tenant.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let config = format!(
        "services:\n  - name: shop\n    match:\n      port: {}\n\
tenant:\n  header: X-Tenant-ID\n  hash: hmac-sha256\n  hash_key_file: {}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n",
        nginx.port,
        key.display()
    );
    let agent = Agent::start_with_exporters(
        &config,
        None,
        "  labels: { environment: staging, cluster: eu-1, node: node-a }\n",
    );

    let mut c = Conn::open(nginx.port);
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/ok", Some("acme")).status, 200);
    }
    for _ in 0..7 {
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
    }
    for _ in 0..5 {
        assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
    }
    nginx.wait_for_log_lines(32);
    let (acme, globex) = (pseudonym("acme"), pseudonym("globex"));

    let prometheus = Prometheus::start(agent.metrics_port);
    let query = "sum by (tenant, status_code, environment, cluster, node) \
(burnwatch_http_requests_total{service=\"shop\"})";
    let want: BTreeMap<(String, String), f64> = [
        ((acme.clone(), "200".to_string()), 20.0),
        ((acme.clone(), "500".to_string()), 7.0),
        ((globex.clone(), "200".to_string()), 5.0),
    ]
    .into();
    let mut last = Vec::new();
    let got = wait_for(Duration::from_secs(45), || {
        last = prometheus.samples(query);
        let got: BTreeMap<(String, String), f64> = last
            .iter()
            .map(|(l, v)| ((l["tenant"].clone(), l["status_code"].clone()), *v))
            .collect();
        (got == want).then_some(())
    });
    assert!(
        got.is_some(),
        "Prometheus answered {last:?}, want {want:?}\nprometheus log:\n{}\nagent log:\n{}",
        prometheus.log(),
        agent.log()
    );
    for (labels, _) in &last {
        assert_eq!(labels["environment"], "staging");
        assert_eq!(labels["cluster"], "eu-1");
        assert_eq!(labels["node"], "node-a");
    }
    // The SLO counter the cluster-wide rules sum, through PromQL too.
    let bad = prometheus.samples(&format!(
        "burnwatch_slo_events_total{{slo=\"shop-availability\", tenant=\"{acme}\", outcome=\"bad\"}}"
    ));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].1, 7.0);
    // Self-metrics made it too.
    for m in [
        "burnwatch_scrape_duration_seconds",
        "burnwatch_evaluation_duration_seconds",
        "burnwatch_poll_duration_seconds",
    ] {
        assert_eq!(prometheus.samples(m).len(), 1, "{m}");
    }
    let entries = prometheus.samples("burnwatch_map_entries{map=\"COUNTS\"}");
    assert!(
        entries.first().is_some_and(|(_, v)| *v >= 3.0),
        "{entries:?}"
    );

    // Raw tenant ids never leave the node.
    let url = format!("http://127.0.0.1:{}/metrics", agent.metrics_port);
    let text = curl(&[&url]).expect("scrape");
    assert!(text.contains(&acme), "{text}");
    assert!(!text.contains("acme") && !text.contains("globex"), "{text}");

    // Classic text format without an Accept header, and it lints clean.
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE burnwatch_http_requests_total counter"));
    burnwatch_e2e::peers::promtool_check(&text);
    // OpenMetrics when asked for.
    let om = curl(&[
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0",
        &url,
    ])
    .unwrap();
    assert!(
        om.ends_with("# EOF\n"),
        "{}",
        &om[om.len().saturating_sub(200)..]
    );
    assert!(om.contains("# TYPE burnwatch_http_requests counter"));

    // gzip when the scraper accepts it (Prometheus does; the real
    // Prometheus above already scraped through it): curl decodes the body
    // and shows the header it came with.
    let gz = curl(&["--compressed", "-D", "-", &url]).unwrap();
    let (head, body) = gz.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );
    assert!(body.contains("# TYPE burnwatch_http_requests_total counter"));
    assert!(body.contains(&acme));
}
