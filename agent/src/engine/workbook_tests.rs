//! The SRE Workbook's numbers for a 99.9 % SLO over 30 days, reproduced with the
//! simulator (steady traffic, 1 s steps, a full `evaluate` every second).
//!
//! Every scenario first runs 3 days of clean traffic so that *all* alert windows are
//! full (the longest is 3d). With only 1 h of history the 6h window would hold 1 h of
//! data and the 6h/30m page would fire first (after ~22 s at 100 % errors), which is
//! correct engine behaviour for a young series but not the Workbook's setting.

use super::SloSet;
use super::alert::{Severity, TransitionKind};
use super::simulate::{Scenario, SimReport, SimTransition, simulate};
use super::spec::SloConfig;
use super::window::Window;

const WARMUP: u64 = 3 * 86_400;

pub(crate) fn slo_set(window: &str, extra: &str) -> SloSet {
    let yaml = format!(
        "slos:\n  - {{ name: shop, service: shop, objective: 99.9, window: {window}, sli: {{ availability: {{}} }} }}\n{extra}"
    );
    let config: SloConfig = serde_saphyr::from_str(&yaml).expect("config parses");
    config.validate().expect("config valid")
}

/// Runs `phases` (rate, error ratio, duration) for tenant `acme` after the clean warmup.
fn run(slos: &SloSet, phases: &[(f64, f64, &str)]) -> SimReport {
    let mut yaml =
        String::from("phases:\n  - { tenant: acme, rate: 100, error_ratio: 0, duration: 3d }\n");
    for (rate, errors, duration) in phases {
        yaml.push_str(&format!(
            "  - {{ tenant: acme, rate: {rate}, error_ratio: {errors}, duration: {duration} }}\n"
        ));
    }
    let scenario: Scenario = serde_saphyr::from_str(&yaml).expect("scenario parses");
    simulate(slos, &scenario).expect("scenario valid")
}

fn transitions(report: &SimReport) -> Vec<(u64, TransitionKind, Window, Severity)> {
    report
        .transitions
        .iter()
        .map(|t: &SimTransition| (t.at, t.kind, t.tier.long, t.tier.severity))
        .collect()
}

#[test]
fn full_outage_pages_after_52_seconds() {
    let report = run(&slo_set("30d", ""), &[(100.0, 1.0, "5m")]);
    let first = &report.transitions[0];
    assert_eq!(first.kind, TransitionKind::Fired);
    assert_eq!(
        (first.tier.long, first.tier.short),
        (Window::H1, Window::M5)
    );
    assert!((first.tier.threshold - 14.4).abs() < 1e-9);
    // 14.4 * 0.1 % * 3600 s = 51.84 s of errors; the first whole second past it is 52.
    let after = first.at - WARMUP;
    println!("100% errors: paged after {after} s (Workbook: 51.84 s)");
    assert!((51..=53).contains(&after), "fired after {after} s");
    assert_eq!(after, 52);
    assert!(
        first.long_burn > 14.4 && first.long_burn < 14.5,
        "{}",
        first.long_burn
    );
}

#[test]
fn ten_percent_errors_page_after_8_64_minutes() {
    let report = run(&slo_set("30d", ""), &[(100.0, 0.1, "20m")]);
    let first = &report.transitions[0];
    assert_eq!(
        (first.kind, first.tier.long),
        (TransitionKind::Fired, Window::H1)
    );
    // 14.4 * 0.001 / 0.1 * 3600 s = 518.4 s = 8.64 min.
    let after = first.at - WARMUP;
    println!("10% errors: paged after {after} s (Workbook: 518.4 s)");
    assert!((516..=521).contains(&after), "fired after {after} s");
}

#[test]
fn below_1_44_percent_never_reaches_the_fast_page() {
    let report = run(&slo_set("30d", ""), &[(100.0, 0.014, "6h")]);
    assert!(
        report.transitions.iter().all(|t| t.tier.long != Window::H1),
        "{:#?}",
        report.transitions
    );
    // The slower page does catch it: 6h burn 14 > 6 after 6 * 21600 / 14 = 9257 s.
    let first = &report.transitions[0];
    assert_eq!(
        (first.tier.long, first.tier.severity),
        (Window::H6, Severity::Page)
    );
    let after = first.at - WARMUP;
    assert!((9_250..=9_265).contains(&after), "{after}");
}

#[test]
fn page_resolves_one_short_window_after_errors_stop() {
    // 60 s of errors: enough for the 14.4x page, too little for any other tier.
    let report = run(
        &slo_set("30d", ""),
        &[(100.0, 1.0, "60s"), (100.0, 0.0, "15m")],
    );
    let t = transitions(&report);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!((t[0].1, t[0].2), (TransitionKind::Fired, Window::H1));
    assert_eq!((t[1].1, t[1].2), (TransitionKind::Resolved, Window::H1));
    let errors_stopped = WARMUP + 60;
    let after = t[1].0 - errors_stopped;
    println!("page resolved {after} s after errors stopped (5m window: ~296 s)");
    // The 5m burn falls to 14.4 when 4.32 s of errors remain in the window: ~295.7 s.
    assert!(
        (270..=330).contains(&after),
        "resolved {after} s after errors stopped"
    );
    let span = &report.alerts[0];
    assert_eq!((span.fired_at, span.resolved_at), (t[0].0, Some(t[1].0)));
}

#[test]
fn long_outage_deescalates_to_the_slower_page_after_5_minutes() {
    let report = run(
        &slo_set("30d", ""),
        &[(100.0, 1.0, "10m"), (100.0, 0.0, "2h")],
    );
    let t = transitions(&report);
    // Only the highest tier is reported: the 6h/30m page became true at 130 s but
    // produced no transition while the 1h/5m page was firing.
    assert_eq!((t[0].1, t[0].2), (TransitionKind::Fired, Window::H1));
    assert_eq!(t[0].0 - WARMUP, 52);
    assert_eq!((t[1].1, t[1].2), (TransitionKind::Deescalated, Window::H6));
    let after = t[1].0 - (WARMUP + 600);
    assert!((270..=330).contains(&after), "{after}");
    // The 6h/30m page stops once the 30m burn drops below 6 (~29.8 min), leaving the
    // 1d/2h ticket, which stops when the 2h window has drained (~2 h), leaving the 3d/6h
    // ticket.
    let stop = WARMUP + 600;
    assert_eq!((t[2].1, t[2].2), (TransitionKind::Deescalated, Window::D1));
    assert!(
        (1_760..=1_800).contains(&(t[2].0 - stop)),
        "{}",
        t[2].0 - stop
    );
    assert_eq!((t[3].1, t[3].2), (TransitionKind::Deescalated, Window::D3));
    assert!(
        (7_150..=7_200).contains(&(t[3].0 - stop)),
        "{}",
        t[3].0 - stop
    );
    assert_eq!(t.len(), 4, "{t:?}");
}

#[test]
fn slow_burn_tickets_then_escalates_to_pages() {
    let report = run(
        &slo_set("30d", ""),
        &[
            (100.0, 0.005, "15h"),
            (100.0, 0.02, "1h"),
            (100.0, 0.0, "10m"),
        ],
    );
    let t = transitions(&report);
    // Burn 5: the 1d/2h and 3d/6h tickets both turn true after 51 840 s of errors;
    // only the higher one is reported.
    assert_eq!(
        (t[0].1, t[0].2, t[0].3),
        (TransitionKind::Fired, Window::D1, Severity::Ticket)
    );
    assert!(
        (51_830..=51_850).contains(&(t[0].0 - WARMUP)),
        "{}",
        t[0].0 - WARMUP
    );
    // Burn 20: the 6h page after ~1440 s, the 1h page after ~2256 s.
    let burn20 = WARMUP + 15 * 3_600;
    assert_eq!((t[1].1, t[1].2), (TransitionKind::Escalated, Window::H6));
    assert!(
        (1_400..=1_480).contains(&(t[1].0 - burn20)),
        "{}",
        t[1].0 - burn20
    );
    assert_eq!((t[2].1, t[2].2), (TransitionKind::Escalated, Window::H1));
    assert!(
        (2_220..=2_290).contains(&(t[2].0 - burn20)),
        "{}",
        t[2].0 - burn20
    );
    assert_eq!((t[3].1, t[3].2), (TransitionKind::Deescalated, Window::H6));
}

#[test]
fn rescaled_thresholds_for_7d_and_28d() {
    // 7d: 0.02 * 168 = 3.36 -> 12.1 s of full outage; 28d: 13.44 -> 48.4 s.
    for (window, threshold, fire_after) in [("7d", 3.36, 13), ("28d", 13.44, 49)] {
        let report = run(&slo_set(window, ""), &[(100.0, 1.0, "2m")]);
        let first = &report.transitions[0];
        assert!((first.tier.threshold - threshold).abs() < 1e-9, "{window}");
        assert_eq!(first.tier.long, Window::H1);
        assert_eq!(first.at - WARMUP, fire_after, "{window}");
    }
}

#[test]
fn min_events_suppresses_alerts_on_tiny_traffic() {
    // 6 requests per hour, all failing: the 1h window never holds 10 events.
    let tiny = |min_events: u64| {
        let slos = slo_set(
            "30d",
            &format!("alerting: {{ min_events: {min_events} }}\n"),
        );
        let yaml =
            "phases:\n  - { tenant: acme, rate: 0.001666667, error_ratio: 1, duration: 3h }\n";
        let scenario: Scenario = serde_saphyr::from_str(yaml).expect("scenario");
        simulate(&slos, &scenario).expect("valid")
    };
    let suppressed = tiny(10);
    assert!(
        suppressed
            .transitions
            .iter()
            .all(|t| t.tier.long != Window::H1),
        "{:#?}",
        suppressed.transitions
    );
    let loud = tiny(1);
    assert!(loud.transitions.iter().any(|t| t.tier.long == Window::H1));
}
