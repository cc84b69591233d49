//! `burnwatch simulate`, the real binary: the SRE Workbook's numbers for a
//! 99.9% / 30-day SLO with steady traffic (100 req/s, 3 clean days first so
//! every window is full).

use burnwatch_e2e::agent::binary;

fn simulate(error_ratio: f64, outage: &str) -> serde_json_lite::Report {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slo.yaml");
    std::fs::write(
        &config,
        "slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n    window: 30d\n",
    )
    .unwrap();
    let scenario = dir.path().join("scenario.yaml");
    std::fs::write(
        &scenario,
        format!(
            "phases:\n  - {{ tenant: acme, rate: 100, error_ratio: 0, duration: 3d }}\n  - {{ tenant: acme, rate: 100, error_ratio: {error_ratio}, duration: {outage} }}\n  - {{ tenant: acme, rate: 100, error_ratio: 0, duration: 2h }}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["simulate", "--json", "--config"])
        .arg(&config)
        .arg("--scenario")
        .arg(&scenario)
        .output()
        .expect("run burnwatch simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json_lite::Report::parse(&String::from_utf8_lossy(&out.stdout))
}

const OUTAGE_START: i64 = 3 * 86_400;

#[test]
fn full_outage_pages_after_52_seconds_and_resolves_about_5_minutes_after() {
    let r = simulate(1.0, "10m");
    let page = r.alert("page", "1h").expect("a 1h/5m page");
    assert_eq!(
        page.0 - OUTAGE_START,
        52,
        "Workbook: 0.02 * 3600 / 1000 = 51.84 s"
    );
    let resolved = page.1.expect("resolved") - (OUTAGE_START + 600);
    assert!(
        (270..=330).contains(&resolved),
        "resolved {resolved} s after errors stopped"
    );
}

#[test]
fn ten_percent_errors_page_after_8_64_minutes() {
    let r = simulate(0.1, "20m");
    let page = r.alert("page", "1h").expect("a 1h/5m page");
    assert_eq!(page.0 - OUTAGE_START, 519, "Workbook: 518.4 s");
}

#[test]
fn errors_below_1_44_percent_never_page_at_14_4() {
    let r = simulate(0.014, "1h");
    assert!(r.alert("page", "1h").is_none(), "{:?}", r.alerts);
}

/// The few fields the tests read, parsed without a JSON dependency.
mod serde_json_lite {
    #[derive(Debug)]
    pub struct Report {
        /// (severity, long window, fired_at, resolved_at)
        pub alerts: Vec<(String, String, i64, Option<i64>)>,
    }

    fn field<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
        let i = obj.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = obj[i..].trim_start();
        let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"'))
    }

    impl Report {
        pub fn parse(json: &str) -> Report {
            let alerts_part = json
                .split("\"alerts\":")
                .nth(1)
                .and_then(|s| s.split("\"transitions\":").next())
                .unwrap_or("");
            let mut alerts = Vec::new();
            for obj in alerts_part.split("\"slo\":").skip(1) {
                let severity = field(obj, "severity").unwrap_or("").to_string();
                let long = field(obj, "long").unwrap_or("").to_string();
                let fired = field(obj, "fired_at")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(-1);
                let resolved = field(obj, "resolved_at").and_then(|v| v.parse().ok());
                alerts.push((severity, long, fired, resolved));
            }
            Report { alerts }
        }

        /// (fired_at, resolved_at) of the first alert of this tier.
        pub fn alert(&self, severity: &str, long: &str) -> Option<(i64, Option<i64>)> {
            self.alerts
                .iter()
                .find(|a| a.0 == severity && a.1 == long)
                .map(|a| (a.2, a.3))
        }
    }
}
