//! `burnwatch check`, `simulate` and `--help`, the real binary: good and bad configs,
//! the tier explanations computed from the engine's math, progress on long
//! simulations. No root needed.

use std::process::{Command, Output};

use burnwatch_e2e::agent::binary;

fn burnwatch(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run the burnwatch binary (cargo build --release)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

const GOOD: &str = "\
services:
  - name: shop
    match:
      port: 8080
tenant:
  header: X-Tenant-ID
slos:
  - name: shop-availability
    service: shop
    objective: 99.9
    window: 30d
    tenants:
      acme: { objective: 99.95 }
  - name: shop-latency
    service: shop
    objective: 99
    window: 7d
    sli:
      latency:
        threshold: 300ms
";

#[test]
fn check_summarizes_a_good_config_and_explains_each_tier() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "burnwatch.yaml", GOOD);
    let out = burnwatch(&["check", "--config", &config]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for want in [
        &format!("{config}: ok"),
        "shop                 server side: TCP port 8080",
        "from header X-Tenant-ID (case-insensitive); \"unknown\" when absent",
        "shop-availability: service shop, 99.9% good over rolling 30d, availability (bad: 5xx, 000)",
        "error budget: 0.1% of events, i.e. 43m12s of total outage per 30d",
        // The Workbook's numbers, from the engine's tier math:
        "page    burn > 14.4x over 1h and 5m (error ratio > 1.44%): pages when 2% of the 30-day budget burns within 1 hour; a total outage pages after 52 s and resolves about 5m after it ends",
        "page    burn > 6x over 6h and 30m (error ratio > 0.6%): pages when 5% of the 30-day budget burns within 6 hours",
        "ticket  burn > 3x over 1d and 2h (error ratio > 0.3%): opens a ticket when 10% of the 30-day budget burns within 1 day",
        "acme (99.95%): a total outage pages after 26 s",
        // A 7-day SLO rescales the thresholds (2% of 7 days in 1 hour = 3.36x).
        "shop-latency: service shop, 99% good over rolling 7d, latency <= 300ms",
        "page    burn > 3.36x over 1h and 5m (error ratio > 3.36%): pages when 2% of the 7-day budget burns within 1 hour; a total outage pages after 2m1s",
        "no alert fires while the long window holds fewer than 10 events",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn check_says_when_a_tier_can_never_fire() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "loose.yaml",
        "slos:\n  - { name: batch, service: jobs, objective: 90, window: 30d }\n",
    );
    let out = burnwatch(&["check", "--config", &config]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("burn > 14.4x over 1h and 5m (error ratio > 144%)")
            && stdout.contains("never fires: even a total outage burns at most 10x"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_field_of_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body, want) in [
        (
            "typo.yaml",
            "services:\n  - name: shop\n    match:\n      port: 8080\nslos:\n  - name: a\n    service: shop\n    objectve: 99.9\n",
            ":8:",
        ),
        (
            "objective.yaml",
            "services:\n  - name: shop\n    match:\n      port: 8080\nslos:\n  - name: a\n    service: shop\n    objective: 100\n",
            ":8: slos[0].objective: must be between 0 and 100 exclusive, got 100",
        ),
        (
            "service.yaml",
            "services:\n  - name: shop\n    match:\n      port: 8080\nslos:\n  - name: a\n    service: shoq\n    objective: 99\n",
            ":7: slos[0].service: no service named \"shoq\"",
        ),
    ] {
        let config = write(&dir, name, body);
        let out = burnwatch(&["check", "--config", &config]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{config}{want}")),
            "{name}: want {config}{want} in {stderr:?}"
        );
        assert!(out.stdout.is_empty(), "no summary for a bad config");
    }
    let out = burnwatch(&["check", "--config", "/nonexistent/burnwatch.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/burnwatch.yaml: cannot read"));
}

#[test]
fn every_operator_command_teaches_with_examples() {
    for cmd in ["check", "status", "top", "gate"] {
        let out = burnwatch(&[cmd, "--help"]);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{cmd} --help");
        assert!(
            help.contains("Examples:") && help.contains(&format!("burnwatch {cmd}")),
            "{cmd} --help has no examples:\n{help}"
        );
    }
    let out = burnwatch(&["gate", "--help"]);
    assert!(text(&out.stdout).contains("0 approve, 2 review"));
}

#[test]
fn long_simulations_report_progress_on_stderr_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "slo.yaml",
        "slos:\n  - { name: shop-availability, service: shop, objective: 99.9, window: 30d }\n",
    );
    // 60 simulated days x 2 tenants: about a second of CPU.
    let scenario = write(
        &dir,
        "scenario.yaml",
        "phases:\n  - { tenant: acme, rate: 100, error_ratio: 0.0005, duration: 60d }\n  - { tenant: beta, rate: 5, error_ratio: 0.0005, duration: 60d }\n",
    );
    // Progress waits 1 s before its first line; a fast machine simulates this in less,
    // so the test asks for progress from the first step.
    let out = Command::new(binary())
        .args([
            "simulate",
            "--json",
            "--config",
            &config,
            "--scenario",
            &scenario,
        ])
        .env("BURNWATCH_PROGRESS_AFTER_MS", "0")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let progress = stderr
        .lines()
        .find(|l| l.starts_with("simulating: ") && l.contains(" of 60d ("))
        .unwrap_or_else(|| panic!("no progress line in {stderr:?}"));
    assert!(
        progress.contains("elapsed") && progress.contains("left"),
        "{progress}"
    );
    assert!(stderr.contains("simulating: done in "), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout stays pure JSON");
    assert_eq!(report["duration_secs"], 60 * 86_400);
}

#[test]
fn top_without_a_terminal_says_what_to_use_instead() {
    let out = burnwatch(&["top", "--agent", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("top draws on a terminal; for scripts use `burnwatch status --json`"),
        "{}",
        text(&out.stderr)
    );
}
