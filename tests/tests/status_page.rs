//! The status page at `/`, loaded in a real headless Chromium (Debian's `chromium`,
//! driven by playwright-core from tests/browser) on a phone-sized viewport, against a
//! real agent watching real nginx while traffic flows: acme fails (pages), globex is
//! healthy. The screenshot is kept as target/test-artifacts/status_page.png.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root, workspace_root};
use serde_json::Value;

fn browser_dir() -> std::path::PathBuf {
    let dir = workspace_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing in {}: run `cargo xtask setup` (npm ci there)",
        dir.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `cargo xtask setup` (Debian package chromium)"
    );
    dir
}

#[test]
fn status_page_shows_tenants_budgets_alerts_and_sparklines_in_chromium() {
    require_root();
    let browser = browser_dir();
    let nginx = Nginx::start();
    let agent = Agent::start(&format!(
        "services:\n  - name: shop\n    match:\n      port: {}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n    window: 30d\n",
        nginx.port
    ));

    // Live traffic for the whole test: acme fails, globex succeeds.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, port) = (stop.clone(), nginx.port);
        std::thread::spawn(move || {
            let mut c = Conn::open(port);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
                assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
                sent += 2;
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(2500)); // two polls: both tenants seen

    let artifacts = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status_page.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://127.0.0.1:{}/", agent.metrics_port);
    let out = Command::new("node")
        .current_dir(&browser)
        .arg("status_page.mjs")
        .arg(&url)
        .arg(&screenshot)
        .output()
        .expect("node is missing: run `cargo xtask setup` (Debian package nodejs)");
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().expect("traffic thread");
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    println!("{sent} requests sent; the page showed: {seen:#}");

    assert_eq!(seen["errors"], serde_json::json!([]), "no script errors");
    let origin = format!("http://127.0.0.1:{}/", agent.metrics_port);
    for r in seen["requests"].as_array().expect("requests") {
        let r = r.as_str().unwrap_or_default();
        assert!(
            r.starts_with(&origin),
            "external request {r}: no external assets"
        );
    }
    assert!(
        seen["page_width"].as_f64() <= seen["viewport_width"].as_f64(),
        "no horizontal scrolling on a phone: {seen}"
    );
    assert!(
        seen["meta"]
            .as_str()
            .is_some_and(|m| m.starts_with("node "))
    );
    assert!(
        seen["summary"]
            .as_str()
            .is_some_and(|s| s.contains("1 paging")),
        "{seen}"
    );

    let cards = seen["cards"].as_array().expect("cards");
    assert_eq!(cards.len(), 2, "{seen}");
    let (acme, globex) = (&cards[0], &cards[1]);
    assert_eq!(acme["tenant"], "acme", "the burning tenant first");
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(acme["slo"], "shop-availability");
    assert_eq!(acme["badge"], "PAGE");
    let alert = acme["alert"].as_str().expect("acme's alert is shown");
    assert!(alert.starts_with("page 14.4x over 1h/5m since "), "{alert}");
    assert_eq!(globex["alert"], Value::Null);
    assert_eq!(globex["budget"], "budget left 100.0%");
    assert_eq!(globex["bar_width"], "100%"); // as Chromium normalizes "100.0%"
    let acme_budget: f64 = acme["budget"]
        .as_str()
        .and_then(|b| b.strip_prefix("budget left "))
        .and_then(|b| b.trim_end_matches('%').parse().ok())
        .expect("acme's budget number");
    assert!(acme_budget < 100.0 && acme_budget > 90.0, "{acme_budget}");
    let acme_bar: f64 = acme["bar_width"]
        .as_str()
        .and_then(|w| w.trim_end_matches('%').parse().ok())
        .expect("acme's bar width");
    assert!(
        (acme_bar - acme_budget).abs() < 0.1,
        "bar {acme_bar}% vs {acme_budget}%"
    );

    // Sparklines: 5m, 30m, 1h, 6h, each an SVG with data, threshold lines drawn.
    for card in [acme, globex] {
        let sparks = card["sparklines"].as_array().expect("sparklines");
        let windows: Vec<&str> = sparks.iter().filter_map(|s| s["window"].as_str()).collect();
        assert_eq!(windows, ["5m", "30m", "1h", "6h"], "{card}");
        for s in sparks {
            assert!(s["points"].as_u64() >= Some(1), "{s}");
            assert!(
                s["path"].as_str().is_some_and(|d| d.starts_with('M')),
                "{s}"
            );
            assert!(s["threshold"].as_bool() == Some(true), "{s}");
            assert!(s["rendered_width"].as_f64() > Some(100.0), "{s}");
        }
    }
    // 100% errors burn at 1000x; the chart's label carries the number.
    let acme_5m = acme["sparklines"][0]["label"].as_str().expect("label");
    let burn: f64 = acme_5m
        .strip_prefix("5m burn ")
        .and_then(|b| b.parse().ok())
        .expect("a number");
    assert!((900.0..=1100.0).contains(&burn), "{acme_5m}");
    let globex_5m = globex["sparklines"][0]["label"].as_str().expect("label");
    assert_eq!(globex_5m, "5m burn 0.00");

    let slos = seen["slos"].as_array().expect("slos");
    assert!(
        slos.iter().any(|s| s
            .as_str()
            .is_some_and(|s| s.contains("shop-availability")
                && s.contains("page: burn > 14.4x over 1h and 5m"))),
        "{seen}"
    );
    let probes = seen["probes"].as_array().expect("probes");
    assert!(
        !probes.is_empty()
            && probes.iter().all(|p| p
                .as_str()
                .is_some_and(|p| p.starts_with("tracepoint:") || p.starts_with("tp_btf:"))),
        "{seen}"
    );
    let png = std::fs::metadata(&screenshot).expect("screenshot written");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
}
