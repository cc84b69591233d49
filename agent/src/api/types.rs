//! The JSON API's types, shared by the agent (which serializes them) and the CLI's
//! `status`, `top` and `gate` (which deserialize them), so both sides cannot drift.
//!
//! Plain data only: strings for enums (`"page"`, `"healthy"`, `"5m"`), unix seconds
//! for instants, ratios (1.0 = 100 %) for budgets.

use serde::{Deserialize, Serialize};

/// `GET /v1/slos`: every SLO and every (SLO, tenant) series the engine holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlosResponse {
    /// Unix seconds of the engine's last evaluation.
    pub now: u64,
    /// The node this agent runs on.
    pub node: String,
    /// Probes attached on this node, e.g. `tracepoint:syscalls:sys_enter_read`.
    pub probes_attached: Vec<String>,
    /// What the capture counts on this kernel: feature -> up (see
    /// `burnwatch_capability`). Absent from agents before it existed.
    #[serde(default)]
    pub capabilities: std::collections::BTreeMap<String, bool>,
    pub slos: Vec<SloInfo>,
    /// Sorted by burn: see [`sort_by_burn`].
    pub series: Vec<SeriesStatus>,
}

/// One configured SLO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloInfo {
    pub name: String,
    pub service: String,
    /// Percent.
    pub objective: f64,
    /// `30d`, `month (UTC)`.
    pub period: String,
    /// `availability (bad: 5xx, 000)` or `latency <= 300ms`.
    pub sli: String,
    /// Highest priority first.
    pub tiers: Vec<Tier>,
}

/// One alert tier: fires when the burn rate over both windows exceeds `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tier {
    /// `page` or `ticket`.
    pub severity: String,
    pub long: String,
    pub short: String,
    pub threshold: f64,
}

/// Burn rate over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowBurn {
    /// `5m` ... `3d`, then the period (`30d`).
    pub window: String,
    pub burn_rate: f64,
}

/// The alert a series reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub tier: Tier,
    /// When this tier became the reported one (unix seconds).
    pub since: u64,
    /// When the series started alerting at any tier.
    pub firing_since: u64,
}

/// One (SLO, tenant) now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesStatus {
    pub slo: String,
    pub tenant: String,
    pub service: String,
    /// Percent, tenant override applied.
    pub objective: f64,
    /// 1 - consumed; negative when overspent.
    pub budget_remaining: f64,
    pub budget_consumed: f64,
    /// healthy, attention, warning, critical, exhausted.
    pub status: String,
    /// 5m, 30m, 1h, 2h, 6h, 1d, 3d, then the period.
    pub burn: Vec<WindowBurn>,
    pub firing: Option<Firing>,
    /// At the last hour's error rate; `None` without bad events in the last hour.
    pub time_to_exhaustion_secs: Option<f64>,
    /// The whole period allows less than one bad event at the observed rate.
    pub low_traffic: bool,
    pub period_good: f64,
    pub period_bad: f64,
}

impl SeriesStatus {
    /// Burn rate over `window` (`"1h"`), 0 when absent.
    pub fn burn(&self, window: &str) -> f64 {
        self.burn
            .iter()
            .find(|b| b.window == window)
            .map_or(0.0, |b| b.burn_rate)
    }

    /// 0 for a page, 1 for a ticket, 2 when nothing fires.
    pub fn severity_rank(&self) -> u8 {
        match self.firing.as_ref().map(|f| f.tier.severity.as_str()) {
            Some("page") => 0,
            Some(_) => 1,
            None => 2,
        }
    }
}

/// Sorted by burn, most urgent first: series paging, then ticketing, then the rest;
/// within each, the highest burn rate over 1h (the fast page's long window: follows a
/// live incident within minutes without swinging on every blip), then over 5m.
pub fn sort_by_burn(series: &mut [SeriesStatus]) {
    series.sort_by(|a, b| {
        a.severity_rank()
            .cmp(&b.severity_rank())
            .then(b.burn("1h").total_cmp(&a.burn("1h")))
            .then(b.burn("5m").total_cmp(&a.burn("5m")))
            .then_with(|| (&a.slo, &a.tenant).cmp(&(&b.slo, &b.tenant)))
    });
}

/// `GET /v1/slos/{slo}/tenants/{tenant}`: one series in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesDetail {
    pub now: u64,
    pub node: String,
    pub series: SeriesStatus,
    pub tiers: Vec<Tier>,
    pub windows: Vec<WindowDetail>,
    pub history: History,
    pub probes_attached: Vec<String>,
}

/// Counts and rates over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowDetail {
    pub window: String,
    pub secs: u64,
    pub good: f64,
    pub bad: f64,
    pub sli: Option<f64>,
    pub burn_rate: f64,
    /// Share of the period's budget this window's bad events spent.
    pub budget_consumed: f64,
}

/// Burn-rate history for sparklines: one point per `step_secs`, oldest first, the last
/// one the current step. `burn[i]` is over `windows[i]`; `None` where the series had no
/// data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub step_secs: u64,
    pub windows: Vec<String>,
    pub points: Vec<HistoryPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Start of the step, unix seconds.
    pub at: u64,
    pub burn: Vec<Option<f64>>,
}

/// `GET /v1/gate`: the release gate's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateAnswer {
    /// approve, review, defer, block.
    pub verdict: String,
    pub reason: String,
    pub budget_remaining: f64,
    pub status: String,
    pub firing: Option<String>,
    pub low_traffic: bool,
}

/// Any API error: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(tenant: &str, severity: Option<&str>, burn_1h: f64) -> SeriesStatus {
        SeriesStatus {
            slo: "s".into(),
            tenant: tenant.into(),
            service: "svc".into(),
            objective: 99.9,
            budget_remaining: 1.0,
            budget_consumed: 0.0,
            status: "healthy".into(),
            burn: vec![WindowBurn {
                window: "1h".into(),
                burn_rate: burn_1h,
            }],
            firing: severity.map(|s| Firing {
                tier: Tier {
                    severity: s.into(),
                    long: "1h".into(),
                    short: "5m".into(),
                    threshold: 14.4,
                },
                since: 0,
                firing_since: 0,
            }),
            time_to_exhaustion_secs: None,
            low_traffic: false,
            period_good: 0.0,
            period_bad: 0.0,
        }
    }

    #[test]
    fn pages_first_then_tickets_then_by_burn() {
        let mut v = vec![
            series("calm", None, 0.1),
            series("hot", None, 50.0),
            series("ticket", Some("ticket"), 2.0),
            series("page", Some("page"), 20.0),
        ];
        sort_by_burn(&mut v);
        let order: Vec<&str> = v.iter().map(|s| s.tenant.as_str()).collect();
        assert_eq!(order, ["page", "ticket", "hot", "calm"]);
    }

    #[test]
    fn gate_answer_reads_the_engine_decision() {
        let d = crate::engine::budget::decide(
            &Default::default(),
            0.95,
            None,
            false,
            crate::engine::Risk::High,
        );
        let json = serde_json::to_string(&d).expect("json");
        let answer: GateAnswer = serde_json::from_str(&json).expect("same shape");
        assert_eq!(answer.verdict, "block");
        assert_eq!(answer.status, "critical");
    }
}
