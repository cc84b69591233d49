//! Runs the engine on a virtual clock to see what a traffic scenario does to alerts and
//! budgets ("would this SLO have paged?", "how long until the budget is gone?").
//!
//! The clock advances in 1 s steps; each step records one second of every tenant's
//! traffic into every SLO and runs a full `evaluate`, exactly as the agent does, so the
//! timeline is what production would show. No evaluation is skipped: `record` and
//! `evaluate` are O(1) per series (running window sums), which keeps 31 simulated days
//! of a few series to a few seconds.
//!
//! Traffic model per phase: `rate` requests per second, a fraction `error_ratio` of them
//! failing with status 500 (bad for an availability SLO whose `bad_status` matches 500),
//! and every request taking `latency_ms` (bad for a latency SLO when above its threshold;
//! 0 when omitted). Fractional rates are spread deterministically by carrying the
//! remainder from one second to the next, so averages are exact.
//!
//! ```yaml
//! start: 2025-03-31T20:00:00Z   # or unix seconds; default 2024-01-01T00:00:00Z
//! phases:                       # per tenant in sequence, tenants in parallel
//!   - { tenant: acme, rate: 100, error_ratio: 0, duration: 3d }
//!   - { tenant: acme, rate: 100, error_ratio: 1, duration: 10m }
//!   - { tenant: beta, rate: 5, latency_ms: 450, duration: 2h }
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Engine;
use super::alert::{AlertTier, TransitionKind};
use super::budget::BudgetStatus;
use super::duration::HumanDuration;
use super::slo::{Sli, SloSet};

/// 2024-01-01T00:00:00Z.
pub const DEFAULT_START: u64 = 1_704_067_200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub start: Option<StartTime>,
    /// Total simulated time; default: until the last tenant's phases end.
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    pub phases: Vec<Phase>,
}

/// Unix seconds or an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StartTime {
    Unix(u64),
    Timestamp(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub tenant: String,
    /// Requests per second (may be fractional).
    pub rate: f64,
    /// Share of requests that fail, 0..=1.
    #[serde(default)]
    pub error_ratio: f64,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    pub duration: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScenarioError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// One stretch of time during which a tier was the reported alert of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertSpan {
    pub slo: String,
    pub tenant: String,
    pub tier: AlertTier,
    /// Seconds since the scenario start.
    pub fired_at: u64,
    /// `None` if still reported at the end.
    pub resolved_at: Option<u64>,
    /// How the span started and ended (`fired`/`escalated`/`deescalated`, `resolved`...).
    pub began_by: TransitionKind,
    pub ended_by: Option<TransitionKind>,
}

/// One transition, timed from the scenario start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimTransition {
    pub at: u64,
    pub slo: String,
    pub tenant: String,
    pub kind: TransitionKind,
    pub tier: AlertTier,
    pub long_burn: f64,
    pub short_burn: f64,
}

/// Budget state of a series when the scenario ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesOutcome {
    pub slo: String,
    pub tenant: String,
    pub budget_remaining: f64,
    pub status: BudgetStatus,
    pub firing: Option<AlertTier>,
    pub period_good: f64,
    pub period_bad: f64,
    pub low_traffic: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub start: u64,
    pub duration_secs: u64,
    pub alerts: Vec<AlertSpan>,
    pub transitions: Vec<SimTransition>,
    pub series: Vec<SeriesOutcome>,
}

/// One tenant's phases and its fractional-event carry.
struct TenantPlan<'a> {
    name: &'a str,
    phases: Vec<&'a Phase>,
    current: usize,
    /// Offset (seconds) at which the current phase ends.
    phase_end: u64,
    carry_requests: f64,
    carry_errors: f64,
}

/// Runs `scenario` against `slos`; see the module docs.
#[cfg_attr(not(test), allow(dead_code))] // the CLI reports progress
pub fn simulate(slos: &SloSet, scenario: &Scenario) -> Result<SimReport, ScenarioError> {
    simulate_with_progress(slos, scenario, |_, _, _| {})
}

/// Simulated seconds between two progress calls.
const PROGRESS_EVERY_SECS: u64 = 3_600;

/// [`simulate`], calling `progress(simulated secs, total secs, transitions so far)`
/// every simulated hour (a 31-day scenario takes seconds of wall time).
pub fn simulate_with_progress(
    slos: &SloSet,
    scenario: &Scenario,
    mut progress: impl FnMut(u64, u64, usize),
) -> Result<SimReport, ScenarioError> {
    let start = resolve_start(scenario.start.as_ref())?;
    let mut plans: Vec<TenantPlan<'_>> = Vec::new();
    for (i, phase) in scenario.phases.iter().enumerate() {
        validate_phase(i, phase)?;
        match plans.iter_mut().find(|p| p.name == phase.tenant) {
            Some(plan) => plan.phases.push(phase),
            None => plans.push(TenantPlan {
                name: &phase.tenant,
                phases: vec![phase],
                current: 0,
                phase_end: phase.duration.as_secs(),
                carry_requests: 0.0,
                carry_errors: 0.0,
            }),
        }
    }
    let natural_end = plans
        .iter()
        .map(|p| p.phases.iter().map(|ph| ph.duration.as_secs()).sum::<u64>())
        .max()
        .unwrap_or(0);
    let duration_secs = scenario
        .duration
        .map_or(natural_end, HumanDuration::as_secs);

    // How each SLO classifies one simulated request: (errors bad?, latency threshold).
    let classify: Vec<(bool, Option<Duration>)> = slos
        .iter()
        .map(|slo| match &slo.sli {
            Sli::Availability { .. } => (!slo.sli.is_good_status(500), None),
            Sli::Latency { threshold } => (false, Some(*threshold)),
        })
        .collect();
    let ids: Vec<_> = slos.iter().map(|s| s.id).collect();

    let mut engine = Engine::new(slos.clone());
    let mut report = SimReport {
        start,
        duration_secs,
        alerts: Vec::new(),
        transitions: Vec::new(),
        series: Vec::new(),
    };
    for offset in 1..=duration_secs {
        let now = start + offset;
        for plan in &mut plans {
            let Some((requests, errors, latency_ms)) = plan.second(offset - 1) else {
                continue;
            };
            if requests == 0 {
                continue;
            }
            for (&id, &(errors_bad, threshold)) in ids.iter().zip(&classify) {
                let bad = match threshold {
                    Some(t) if latency_ms.is_some_and(|ms| ms > t.as_secs_f64() * 1_000.0) => {
                        requests
                    }
                    Some(_) => 0,
                    None if errors_bad => errors,
                    None => 0,
                };
                // Ids come from the same set, so record cannot fail.
                let _ = engine.record(now, id, plan.name, requests - bad, bad);
            }
        }
        for t in engine.evaluate(now) {
            report.note(offset, &t);
        }
        if offset.is_multiple_of(PROGRESS_EVERY_SECS) {
            progress(offset, duration_secs, report.transitions.len());
        }
    }
    let end = start + duration_secs;
    for snap in engine.snapshots(end) {
        report.series.push(SeriesOutcome {
            slo: snap.slo_name.to_owned(),
            tenant: snap.tenant.to_owned(),
            budget_remaining: snap.budget_remaining,
            status: snap.status,
            firing: snap.firing.map(|f| f.tier),
            period_good: snap.period.good,
            period_bad: snap.period.bad,
            low_traffic: snap.low_traffic,
        });
    }
    report
        .series
        .sort_by(|a, b| (&a.slo, &a.tenant).cmp(&(&b.slo, &b.tenant)));
    report.transitions.sort_by_key(|t| t.at);
    report.alerts.sort_by_key(|a| a.fired_at);
    Ok(report)
}

impl TenantPlan<'_> {
    /// Requests, errors and latency for the second starting at `offset`; `None` once
    /// the tenant's phases are over.
    fn second(&mut self, offset: u64) -> Option<(u64, u64, Option<f64>)> {
        while offset >= self.phase_end {
            self.current += 1;
            let phase = self.phases.get(self.current)?;
            self.phase_end += phase.duration.as_secs();
        }
        let phase = self.phases.get(self.current)?;
        self.carry_requests += phase.rate;
        self.carry_errors += phase.rate * phase.error_ratio;
        let requests = self.carry_requests.floor();
        let errors = self.carry_errors.floor().min(requests);
        self.carry_requests -= requests;
        self.carry_errors -= errors;
        Some((requests as u64, errors as u64, phase.latency_ms))
    }
}

impl SimReport {
    fn note(&mut self, offset: u64, t: &super::AlertTransition) {
        let (slo, tenant) = (t.slo_name.to_string(), t.tenant.to_string());
        self.transitions.push(SimTransition {
            at: offset,
            slo: slo.clone(),
            tenant: tenant.clone(),
            kind: t.kind,
            tier: t.tier,
            long_burn: t.long_burn,
            short_burn: t.short_burn,
        });
        // Close the open span of this series, then open a new one unless resolved.
        if let Some(open) = self
            .alerts
            .iter_mut()
            .rev()
            .find(|a| a.slo == slo && a.tenant == tenant && a.resolved_at.is_none())
        {
            open.resolved_at = Some(offset);
            open.ended_by = Some(t.kind);
        }
        if t.kind != TransitionKind::Resolved {
            self.alerts.push(AlertSpan {
                slo,
                tenant,
                tier: t.tier,
                fired_at: offset,
                resolved_at: None,
                began_by: t.kind,
                ended_by: None,
            });
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Two plain-text tables: the alert timeline and the budgets at the end.
    pub fn to_text(&self) -> String {
        let at = |s: u64| format!("+{}", HumanDuration::from_secs(s));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "simulated {} from unix {}\n\nALERTS",
            HumanDuration::from_secs(self.duration_secs),
            self.start
        );
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<22} {:>12} {:>12}  how",
            "slo", "tenant", "tier", "fired", "resolved"
        );
        if self.alerts.is_empty() {
            let _ = writeln!(out, "(none)");
        }
        for a in &self.alerts {
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:<22} {:>12} {:>12}  {:?} -> {}",
                a.slo,
                a.tenant,
                a.tier.to_string(),
                at(a.fired_at),
                a.resolved_at.map_or_else(|| "-".to_owned(), at),
                a.began_by,
                a.ended_by
                    .map_or_else(|| "still firing".to_owned(), |k| format!("{k:?}")),
            );
        }
        let _ = writeln!(out, "\nBUDGET AT END");
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:>10} {:<10} {:>14} {:>10}",
            "slo", "tenant", "remaining", "status", "good", "bad"
        );
        for s in &self.series {
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:>9.1}% {:<10} {:>14.0} {:>10.0}{}",
                s.slo,
                s.tenant,
                s.budget_remaining * 100.0,
                format!("{:?}", s.status).to_lowercase(),
                s.period_good,
                s.period_bad,
                if s.low_traffic { "  (low traffic)" } else { "" }
            );
        }
        out
    }
}

fn resolve_start(start: Option<&StartTime>) -> Result<u64, ScenarioError> {
    match start {
        None => Ok(DEFAULT_START),
        Some(StartTime::Unix(secs)) => Ok(*secs),
        Some(StartTime::Timestamp(text)) => text
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|ts| u64::try_from(ts.as_second()).ok())
            .ok_or_else(|| ScenarioError::Invalid {
                path: "start".into(),
                message: format!(
                    "expected unix seconds or an RFC 3339 time after 1970, got {text:?}"
                ),
            }),
    }
}

fn validate_phase(i: usize, phase: &Phase) -> Result<(), ScenarioError> {
    let fail = |field: &str, message: String| {
        Err(ScenarioError::Invalid {
            path: format!("phases[{i}].{field}"),
            message,
        })
    };
    if phase.tenant.is_empty() {
        return fail("tenant", "must not be empty".into());
    }
    if !(phase.rate.is_finite() && phase.rate >= 0.0) {
        return fail("rate", format!("must be >= 0, got {}", phase.rate));
    }
    if !(0.0..=1.0).contains(&phase.error_ratio) {
        return fail(
            "error_ratio",
            format!("must be within 0..=1, got {}", phase.error_ratio),
        );
    }
    if let Some(ms) = phase.latency_ms
        && !(ms.is_finite() && ms >= 0.0)
    {
        return fail("latency_ms", format!("must be >= 0, got {ms}"));
    }
    if phase.duration.as_secs() == 0 || !phase.duration.is_whole_secs() {
        return fail(
            "duration",
            format!("must be whole seconds > 0, got {}", phase.duration),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spec::SloConfig;
    use std::time::Instant;

    fn slos() -> SloSet {
        let yaml = "slos:
  - { name: shop-availability, service: shop, objective: 99.9, window: 30d, sli: { availability: {} } }
  - { name: shop-latency, service: shop, objective: 99, window: 30d, sli: { latency: { threshold: 300ms } } }
";
        let config: SloConfig = serde_saphyr::from_str(yaml).expect("yaml");
        config.validate().expect("valid")
    }

    const SCENARIO: &str = "
start: 2025-03-01T00:00:00Z
phases:
  - { tenant: acme, rate: 50, error_ratio: 0, duration: 2h }
  - { tenant: acme, rate: 50, error_ratio: 1, duration: 3m }
  - { tenant: acme, rate: 50, error_ratio: 0, duration: 1h }
  - { tenant: beta, rate: 2.5, latency_ms: 120, duration: 1h }
  - { tenant: beta, rate: 2.5, latency_ms: 450, duration: 30m }
";

    #[test]
    fn runs_a_yaml_scenario_and_renders_it() {
        let scenario: Scenario = serde_saphyr::from_str(SCENARIO).expect("scenario");
        let report = simulate(&slos(), &scenario).expect("valid");
        assert_eq!(report.start, 1_740_787_200);
        assert_eq!(report.duration_secs, 2 * 3_600 + 180 + 3_600);
        // acme's outage pages on availability; beta's slow phase pages on latency.
        let pages: Vec<(&str, &str)> = report
            .alerts
            .iter()
            .filter(|a| a.began_by == TransitionKind::Fired)
            .map(|a| (a.slo.as_str(), a.tenant.as_str()))
            .collect();
        assert!(pages.contains(&("shop-availability", "acme")), "{pages:?}");
        assert!(pages.contains(&("shop-latency", "beta")), "{pages:?}");
        assert!(!pages.contains(&("shop-latency", "acme")), "fast responses");
        assert!(!pages.contains(&("shop-availability", "beta")), "no errors");
        let acme = report
            .series
            .iter()
            .find(|s| s.slo == "shop-availability" && s.tenant == "acme")
            .expect("acme");
        assert_eq!(acme.period_bad, 50.0 * 180.0);
        assert_eq!(acme.period_good, 50.0 * 3.0 * 3_600.0);
        // beta: 2.5 req/s spread exactly: 9000 + 4500 requests.
        let beta = report
            .series
            .iter()
            .find(|s| s.slo == "shop-latency" && s.tenant == "beta")
            .expect("beta");
        assert_eq!((beta.period_good, beta.period_bad), (9_000.0, 4_500.0));

        let text = report.to_text();
        println!("{text}");
        assert!(text.contains("ALERTS") && text.contains("BUDGET AT END"));
        assert!(text.contains("page 14.4x 1h/5m"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        let alerts = json["alerts"].as_array().expect("alerts array");
        assert!(alerts.iter().any(|a| a["tier"]["severity"] == "page"));
        assert!(json["series"].as_array().is_some_and(|s| s.len() == 4));
    }

    #[test]
    fn rejects_bad_phases() {
        for (yaml, path) in [
            (
                "phases: [{ tenant: a, rate: -1, duration: 1h }]",
                "phases[0].rate",
            ),
            (
                "phases: [{ tenant: a, rate: 1, error_ratio: 2, duration: 1h }]",
                "phases[0].error_ratio",
            ),
            (
                "phases: [{ tenant: a, rate: 1, duration: 500ms }]",
                "phases[0].duration",
            ),
            ("start: yesterday\nphases: []", "start"),
        ] {
            let scenario: Scenario = serde_saphyr::from_str(yaml).expect("parses");
            match simulate(&slos(), &scenario) {
                Err(ScenarioError::Invalid { path: p, .. }) => assert_eq!(p, path),
                Ok(_) => panic!("{yaml} accepted"),
            }
        }
        let unknown = serde_saphyr::from_str::<Scenario>(
            "phases: [{ tenant: a, rate: 1, duration: 1h, burst: 3 }]",
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn thirty_one_days_take_seconds() {
        let yaml = "
phases:
  - { tenant: acme, rate: 200, error_ratio: 0.0005, duration: 20d }
  - { tenant: acme, rate: 200, error_ratio: 0.02, duration: 2h }
  - { tenant: acme, rate: 200, error_ratio: 0.0005, duration: 10d22h }
  - { tenant: beta, rate: 3, error_ratio: 0.0005, latency_ms: 100, duration: 31d }
";
        let scenario: Scenario = serde_saphyr::from_str(yaml).expect("scenario");
        let started = Instant::now();
        let report = simulate(&slos(), &scenario).expect("valid");
        let took = started.elapsed();
        println!(
            "simulated 31 days x 4 series ({} steps) in {took:?}\n{}",
            report.duration_secs,
            report.to_text()
        );
        assert_eq!(report.duration_secs, 31 * 86_400);
        assert_eq!(report.series.len(), 4);
        assert!(report.alerts.iter().any(|a| a.tenant == "acme"));
    }
}
