//! Engine-level behaviour: calendar resets, gate, series lifecycle, scale.

use std::time::Instant;

use super::budget::{BudgetStatus, Risk, Verdict};
use super::spec::SloConfig;
use super::window::Window;
use super::{Engine, SloId, SloSet};

fn set(yaml: &str) -> SloSet {
    let config: SloConfig = serde_saphyr::from_str(yaml).expect("yaml");
    config.validate().expect("valid")
}

fn unix(text: &str) -> u64 {
    let ts: jiff::Timestamp = text.parse().expect("timestamp");
    u64::try_from(ts.as_second()).expect("after 1970")
}

#[test]
fn calendar_month_resets_at_local_midnight() {
    let slos = set(
        "slos:
  - { name: paris, service: s, objective: 99.9, calendar: month, timezone: Europe/Paris, sli: { availability: {} } }
  - { name: utc, service: s, objective: 99.9, calendar: month, sli: { availability: {} } }
",
    );
    let mut engine = Engine::new(slos);
    let (paris, utc) = (SloId(0), SloId(1));
    // March 31st, 20:00 to 22:00 UTC (22:00 to midnight in Paris, CEST).
    let start = unix("2025-03-31T20:00:00Z");
    let boundary = unix("2025-03-31T22:00:00Z");
    for now in start..boundary {
        for slo in [paris, utc] {
            engine.record(now, slo, "acme", 99, 1).expect("known slo");
        }
        engine.evaluate(now);
    }
    let before = engine
        .snapshot(boundary - 1, paris, "acme")
        .expect("series");
    assert_eq!(before.period_start, unix("2025-02-28T23:00:00Z"));
    assert_eq!(before.period.bad, 7_200.0);
    assert!(before.budget_consumed > 0.0);

    engine.evaluate(boundary);
    let after = engine.snapshot(boundary, paris, "acme").expect("series");
    assert_eq!(
        after.period_start, boundary,
        "April starts at 22:00 UTC in Paris"
    );
    assert_eq!(after.period.bad + after.period.good, 0.0);
    assert_eq!(after.budget_remaining, 1.0);
    assert_eq!(after.period.secs, 30 * 86_400);
    // Fixed windows are not calendar-bound: the last hour still shows the errors.
    assert_eq!(after.window(Window::H1).bad, 3_599.0);

    let utc_after = engine.snapshot(boundary, utc, "acme").expect("series");
    assert_eq!(utc_after.period_start, unix("2025-03-01T00:00:00Z"));
    assert_eq!(utc_after.period.bad, 7_200.0, "still March in UTC");

    // The next record goes into April's fresh budget.
    engine
        .record(boundary + 1, paris, "acme", 10, 0)
        .expect("known slo");
    let april = engine
        .snapshot(boundary + 1, paris, "acme")
        .expect("series");
    assert_eq!((april.period.good, april.period.bad), (10.0, 0.0));
}

#[test]
fn gate_follows_budget_and_alerts() {
    let slos = set(
        "slos:\n  - { name: a, service: s, objective: 99.9, window: 30d, sli: { availability: {} } }\n",
    );
    let mut engine = Engine::new(slos);
    let slo = SloId(0);
    let t0 = 1_000_000_000;
    let mut now = t0;
    for _ in 0..3_600 {
        now += 1;
        engine.record(now, slo, "acme", 1_000, 0).expect("known");
        engine.evaluate(now);
    }
    let healthy = engine.gate(now, slo, "acme", Risk::High).expect("known");
    assert_eq!(
        (healthy.verdict, healthy.status),
        (Verdict::Approve, BudgetStatus::Healthy)
    );
    assert_eq!(healthy.budget_remaining, 1.0);
    assert!(!healthy.low_traffic);

    // Full outage. The 14.4x page fires within a minute; after 0.1 % * 30 d = 43.2 min
    // of it the projected period budget is gone.
    for _ in 0..(45 * 60) {
        now += 1;
        engine.record(now, slo, "acme", 0, 1_000).expect("known");
        engine.evaluate(now);
    }
    let snap = engine.snapshot(now, slo, "acme").expect("series");
    assert_eq!(snap.firing.map(|f| f.tier.long), Some(Window::H1));
    assert!(snap.budget_consumed > 1.0, "{}", snap.budget_consumed);
    assert_eq!(snap.status, BudgetStatus::Exhausted);
    assert_eq!(snap.time_to_exhaustion_secs, Some(0.0));
    let low = engine.gate(now, slo, "acme", Risk::Low).expect("known");
    assert_eq!(low.verdict, Verdict::Block);
    let json = serde_json::to_string(&low).expect("json");
    assert!(json.contains("\"verdict\":\"block\""), "{json}");

    // A tenant without data cannot be judged: the gate fails closed.
    let fresh = engine.gate(now, slo, "nobody", Risk::Low).expect("known");
    assert_eq!(fresh.verdict, Verdict::Defer);
    assert!(
        fresh.reason.contains("no traffic recorded"),
        "{}",
        fresh.reason
    );
    assert!(engine.gate(now, SloId(9), "acme", Risk::High).is_err());
    assert!(engine.record(now, SloId(9), "acme", 1, 1).is_err());
}

#[test]
fn page_with_budget_left_defers_everything() {
    let slos = set(
        "slos:\n  - { name: a, service: s, objective: 99.9, window: 30d, sli: { availability: {} } }\n",
    );
    let mut engine = Engine::new(slos);
    let slo = SloId(0);
    // 10 days of clean traffic, then a short outage: a page, but little budget spent.
    let mut now = 1_000_000_000;
    for _ in 0..(10 * 86_400 / 60) {
        now += 60;
        engine.record(now, slo, "acme", 60_000, 0).expect("known");
    }
    for _ in 0..90 {
        now += 1;
        engine.record(now, slo, "acme", 0, 1_000).expect("known");
        engine.evaluate(now);
    }
    let snap = engine.snapshot(now, slo, "acme").expect("series");
    assert!(snap.firing.is_some());
    assert!(snap.budget_consumed < 0.25, "{}", snap.budget_consumed);
    assert_eq!(snap.status, BudgetStatus::Critical);
    for risk in [Risk::Low, Risk::Medium, Risk::High] {
        assert_eq!(
            engine.gate(now, slo, "acme", risk).expect("known").verdict,
            Verdict::Defer
        );
    }
    let tte = snap.time_to_exhaustion_secs.expect("burning");
    assert!(tte > 0.0 && tte < 30.0 * 86_400.0, "{tte}");
}

#[test]
fn per_tenant_objectives_apply() {
    let slos = set(
        "slos:\n  - { name: a, service: s, objective: 99.9, sli: { availability: {} }, tenants: { acme: { objective: 99.95 } } }\n",
    );
    let mut engine = Engine::new(slos);
    engine.record(100, SloId(0), "acme", 999, 1).expect("known");
    engine
        .record(100, SloId(0), "other", 999, 1)
        .expect("known");
    let acme = engine.snapshot(100, SloId(0), "acme").expect("acme");
    let other = engine.snapshot(100, SloId(0), "other").expect("other");
    assert_eq!(acme.objective, 99.95);
    assert!((acme.window(Window::M5).burn_rate - 2.0).abs() < 1e-9);
    assert!((other.window(Window::M5).burn_rate - 1.0).abs() < 1e-9);
}

#[test]
fn idle_series_are_dropped_after_their_period() {
    let slos = set(
        "slos:\n  - { name: a, service: s, objective: 99, window: 3d, sli: { availability: {} } }\n",
    );
    let mut engine = Engine::new(slos);
    engine
        .record(1_000, SloId(0), "gone", 10, 0)
        .expect("known");
    engine.record(1_000, SloId(0), "zero", 0, 0).expect("known");
    engine
        .record(1_000, SloId(0), "kept", 10, 0)
        .expect("known");
    assert_eq!(
        engine.series_count(),
        2,
        "zero deltas do not create a series"
    );
    let later = 1_000 + 3 * 86_400 + 3_600;
    engine
        .record(later, SloId(0), "kept", 10, 0)
        .expect("known");
    // Dropped once no window can hold its events: 3d + one 1h bucket after the last one.
    engine.evaluate(later - 1);
    assert_eq!(engine.series_count(), 2);
    engine.evaluate(later);
    assert_eq!(engine.series_count(), 1);
    assert!(engine.snapshot(later + 3_600, SloId(0), "gone").is_none());
    let kept = engine
        .snapshot(later + 3_600, SloId(0), "kept")
        .expect("kept");
    assert_eq!(kept.period.good, 10.0);
}

#[test]
fn low_traffic_flag() {
    let slos = set(
        "slos:\n  - { name: a, service: s, objective: 99.9, window: 30d, sli: { availability: {} } }\n",
    );
    let mut engine = Engine::new(slos);
    // One request per minute: ~43 200 per 30 days, 43 allowed bad: not low traffic.
    // One request per hour: 720 per period, 0.72 allowed bad: low traffic.
    let mut now = 0;
    for _ in 0..(5 * 24) {
        now += 60;
        engine.record(now, SloId(0), "steady", 1, 0).expect("known");
        now += 3_540;
        engine
            .record(now, SloId(0), "steady", 59, 0)
            .expect("known");
        engine.record(now, SloId(0), "sparse", 1, 0).expect("known");
    }
    assert!(
        !engine
            .snapshot(now, SloId(0), "steady")
            .expect("steady")
            .low_traffic
    );
    assert!(
        engine
            .snapshot(now, SloId(0), "sparse")
            .expect("sparse")
            .low_traffic
    );
    // The gate fails closed on low traffic, unless the policy says otherwise.
    let sparse = engine
        .gate(now, SloId(0), "sparse", Risk::Low)
        .expect("known");
    assert_eq!(sparse.verdict, Verdict::Defer, "{}", sparse.reason);
    let steady = engine
        .gate(now, SloId(0), "steady", Risk::Low)
        .expect("known");
    assert_eq!(steady.verdict, Verdict::Approve, "{}", steady.reason);
    let open = set(
        "budget_policy: { unjudged: approve }\nslos:\n  - { name: a, service: s, objective: 99.9, window: 30d, sli: { availability: {} } }\n",
    );
    let mut lenient = Engine::new(open);
    lenient
        .record(now, SloId(0), "sparse", 1, 0)
        .expect("known");
    assert_eq!(
        lenient
            .gate(now, SloId(0), "nobody", Risk::High)
            .expect("known")
            .verdict,
        Verdict::Approve
    );
}

#[test]
fn evaluate_100k_series() {
    let slos = set(
        "slos:\n  - { name: a, service: s, objective: 99.9, window: 30d, sli: { availability: {} } }\n",
    );
    let mut engine = Engine::new(slos);
    let now = 1_700_000_000;
    let tenants: Vec<String> = (0..100_000).map(|i| format!("tenant-{i}")).collect();
    for (i, tenant) in tenants.iter().enumerate() {
        engine
            .record(now, SloId(0), tenant, 100, (i % 7) as u64)
            .expect("known");
    }
    assert_eq!(engine.series_count(), 100_000);
    engine.evaluate(now);
    for tenant in &tenants {
        engine
            .record(now + 1, SloId(0), tenant, 100, 1)
            .expect("known");
    }
    let started = Instant::now();
    let transitions = engine.evaluate(now + 1);
    let evaluate = started.elapsed();
    // Steady state: a few more seconds, keep the fastest (the machine is shared).
    let mut steady = std::time::Duration::MAX;
    for t in now + 2..now + 7 {
        let started = Instant::now();
        let quiet = engine.evaluate(t);
        steady = steady.min(started.elapsed());
        assert!(quiet.is_empty());
    }
    let started = Instant::now();
    let mut burning = 0usize;
    for snap in engine.snapshots(now + 1) {
        burning += usize::from(snap.window(Window::M5).burn_rate > 1.0);
    }
    let export = started.elapsed();
    let record_started = Instant::now();
    for tenant in &tenants {
        engine
            .record(now + 7, SloId(0), tenant, 100, 0)
            .expect("known");
    }
    let record = record_started.elapsed();
    println!(
        "100k series: evaluate {evaluate:?} (with transitions), {steady:?} (steady), \
         snapshot pass {export:?}, record pass {record:?}, \
         {} transitions, {burning} burning, {} bytes per series",
        transitions.len(),
        super::series::Series::BYTES
    );
}

#[test]
fn shared_tenant_names_are_not_copied() {
    let mut e = Engine::new(set(
        "slos:\n  - { name: a, service: s, objective: 99.9 }\n  - { name: b, service: s, objective: 99 }\n",
    ));
    let (a, b) = (e.slo_id("a").expect("a"), e.slo_id("b").expect("b"));
    let tenant: std::sync::Arc<str> = std::sync::Arc::from("acme");
    e.record_shared(1_700_000_000, a, &tenant, 5, 1).expect("a");
    e.record_shared(1_700_000_000, b, &tenant, 6, 0).expect("b");
    for slo in [a, b] {
        let name = e.tenant_name(slo, "acme").expect("series");
        assert!(std::sync::Arc::ptr_eq(&name, &tenant));
    }
    // The caller's Arc, the two series and the two index entries.
    assert_eq!(std::sync::Arc::strong_count(&tenant), 5);
}
