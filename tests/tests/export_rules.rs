//! `burnwatch rules` against the real promtool: the generated rule files
//! load (`promtool check rules`), and fed series from two nodes they fire
//! and resolve the multiwindow alerts at the times the engine's maths says
//! (`promtool test rules`). Also: every PromQL expression of the Grafana
//! dashboard parses.

use std::path::Path;
use std::process::Command;

use burnwatch_e2e::{agent::binary, workspace_root};

const CONFIG: &str = "slos:
  - name: shop-availability
    service: shop
    objective: 99.9
    window: 30d
alerting:
  min_events: 10
";

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): install Debian's `prometheus` (cargo xtask setup)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn rules(dir: &Path, format: &str) -> String {
    let config = dir.join("burnwatch.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(binary())
        .args(["rules", "--config"])
        .arg(&config)
        .args(["--format", format])
        .output()
        .expect("run burnwatch rules");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sloth(tenant: &str, window: &str) -> String {
    format!(
        "{{sloth_id=\"shop-shop-availability\", sloth_service=\"shop\", sloth_slo=\"shop-availability\", sloth_window=\"{window}\", tenant=\"{tenant}\"}}"
    )
}

/// Expected labels and annotations of a firing alert for acme.
fn alert(severity: &str, windows: &str) -> String {
    format!(
        "          - exp_labels:
              severity: {severity}
              sloth_severity: {severity}
              slo: shop-availability
              service: shop
              sloth_id: shop-shop-availability
              sloth_service: shop
              sloth_slo: shop-availability
              tenant: acme
            exp_annotations:
              title: \"({severity}) shop shop-availability SLO error budget burn rate is too fast for tenant acme.\"
              summary: \"SLO shop-availability of service shop: tenant acme burns its error budget too fast ({windows}).\"
"
    )
}

#[test]
fn generated_rules_fire_and_resolve_at_the_engines_times() {
    let dir = tempfile::tempdir().unwrap();
    let text = rules(dir.path(), "rules");
    std::fs::write(dir.path().join("rules.yaml"), &text).unwrap();
    let check = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(check.contains("SUCCESS"), "{check}");

    let crd = rules(dir.path(), "prometheusrule");
    assert!(crd.contains("kind: PrometheusRule"), "{crd}");

    // Per node (n1, n2, same traffic): acme sends 500 good events a minute,
    // then from minute 10 to 30 450 good + 50 bad (10% errors: burn rate
    // 100 for 99.9%), then 500 good again. globex is healthy. tiny sends 4
    // bad events on each node: 100% errors, 8 events cluster-wide, fewer
    // than min_events (10).
    let series = |tenant: &str, outcome: &str, values: &str| {
        ["n1", "n2"]
            .iter()
            .map(|node| {
                format!(
                    "      - series: 'burnwatch_slo_events_total{{slo=\"shop-availability\",tenant=\"{tenant}\",outcome=\"{outcome}\",instance=\"{node}\"}}'\n        values: '{values}'\n"
                )
            })
            .collect::<String>()
    };
    let mut input = String::new();
    input += &series("acme", "good", "0+500x10 5450+450x19 14500+500x99");
    input += &series("acme", "bad", "0x10 50+50x19 1000x99");
    input += &series("globex", "good", "0+1000x130");
    input += &series("globex", "bad", "0x130");
    input += &series("tiny", "good", "0x130");
    input += &series("tiny", "bad", "0 1 2 3 4x126");
    let page = "ShopAvailabilityBudgetBurnPage";
    let ticket = "ShopAvailabilityBudgetBurnTicket";
    let page_windows = "1h/5m > 14.4x, 6h/30m > 6x";
    let ticket_windows = "1d/2h > 3x, 3d/6h > 1x";
    let at = |minute: u32, name: &str, firing: &str| {
        format!(
            "      - eval_time: {minute}m\n        alertname: {name}\n        exp_alerts:\n{firing}"
        )
    };
    let none = "";
    let tests = format!(
        "rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{input}    promql_expr_test:
      - expr: round(1000 * slo:sli_error:ratio_rate5m{})
        eval_time: 20m
        exp_samples:
          - labels: '{}'
            value: 100
      - expr: slo:period_error_budget_remaining:ratio{{tenant=\"globex\"}}
        eval_time: 20m
        exp_samples:
          - labels: 'slo:period_error_budget_remaining:ratio{}'
            value: 1
    alert_rule_test:
{}{}{}{}{}{}{}",
        sloth("acme", "5m"),
        sloth("acme", "5m"),
        sloth("globex", "30d"),
        // Before the errors: nothing.
        at(9, page, none),
        // Both page windows above 14.4x within minutes; tiny never pages.
        at(15, page, &alert("page", page_windows)),
        at(30, page, &alert("page", page_windows)),
        // Errors stopped at 30m: the 5m window clears at once but the
        // 6h/30m tier (6x) holds until the 30m window's error ratio drops
        // under 0.6%, near minute 58.
        at(50, page, &alert("page", page_windows)),
        at(65, page, none),
        // The ticket tiers (1d/2h at 3x) still fire: 3% errors over 2h.
        at(65, ticket, &alert("ticket", ticket_windows)),
        at(9, ticket, none),
    );
    // `alert` writes the list items with 10 spaces; exp_alerts needs them
    // under the test item.
    std::fs::write(dir.path().join("tests.yaml"), tests).unwrap();
    let out = promtool(&["test", "rules", "tests.yaml"], dir.path());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboard_queries_parse() {
    let path = workspace_root().join("helm/burnwatch/dashboards/burnwatch-slo.json");
    let text = std::fs::read_to_string(&path).expect("dashboard JSON");
    // Pull every "expr" string out of the JSON (no JSON crate needed: the
    // values are JSON strings, decoded for the escapes they use).
    let mut exprs = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"expr\": \"") {
        rest = &rest[i + 9..];
        let mut expr = String::new();
        let mut chars = rest.char_indices();
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => expr.push('\n'),
                    Some((_, c)) => expr.push(c),
                    None => break,
                },
                '"' => {
                    rest = &rest[j + 1..];
                    break;
                }
                c => expr.push(c),
            }
        }
        exprs.push(expr);
    }
    assert!(exprs.len() >= 8, "found {} expressions", exprs.len());
    for needle in [
        "slo:period_error_budget_remaining:ratio",
        "slo:sli_error:ratio_rate",
        "ALERTS",
        "burnwatch_http_requests_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no panel uses {needle}"
        );
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$slo", ".*")
            .replace("$tenant", ".*")
            .replace("$service", ".*");
        rules += &format!("      - record: dashboard:panel{i}\n        expr: |\n");
        for line in e.lines() {
            rules += &format!("          {line}\n");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yaml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yaml"], dir.path());
}
