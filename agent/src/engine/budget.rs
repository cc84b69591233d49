//! Error-budget status and the release gate.
//!
//! ## Status rules
//! `consumed` is the share of the period's error budget already spent (see
//! [`SeriesSnapshot`](super::snapshot::SeriesSnapshot)); the firing alert is the one the
//! alert state machine reports. The first matching row wins:
//!
//! | status      | when                                                        |
//! |-------------|-------------------------------------------------------------|
//! | `exhausted` | consumed >= `exhausted_consumed` (default 1.0)              |
//! | `critical`  | consumed >= `freeze_consumed` (0.9), or a **page** is firing |
//! | `warning`   | consumed >= `warn_consumed` (0.5)                           |
//! | `attention` | consumed >= `attention_consumed` (0.25), or a **ticket** is firing |
//! | `healthy`   | otherwise                                                   |
//!
//! ## Gate decision table
//! The verdict is the strictest of two lookups, one on the budget spent, one on the
//! alert firing. `defer` means "not now, retry when the condition clears by itself"
//! (an incident is under way); `block` means "not until the budget recovers" (or a human
//! overrides).
//!
//! | budget spent (by `consumed` only) | low     | medium  | high    |
//! |-----------------------------------|---------|---------|---------|
//! | below attention                   | approve | approve | approve |
//! | attention (>= 25 %)               | approve | approve | review  |
//! | warning (>= 50 %)                 | approve | review  | review  |
//! | critical / freeze (>= 90 %)       | defer   | defer   | block   |
//! | exhausted (>= 100 %)              | block   | block   | block   |
//!
//! | alert firing | low     | medium  | high    |
//! |--------------|---------|---------|---------|
//! | none         | approve | approve | approve |
//! | ticket       | approve | approve | review  |
//! | page         | defer   | defer   | defer   |

use serde::{Deserialize, Serialize};

use super::alert::Severity;

/// Consumption thresholds (shares of the period's budget, 1.0 = all of it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetPolicy {
    pub attention_consumed: f64,
    pub warn_consumed: f64,
    /// The change freeze threshold.
    pub freeze_consumed: f64,
    pub exhausted_consumed: f64,
    /// The gate's least verdict for a tenant it cannot judge: one folded
    /// into `__overflow__` (its own counts are not kept), one with no
    /// traffic recorded, or one with so little traffic that a single error
    /// moves its budget a lot. `defer` by default: the gate fails closed.
    pub unjudged: Verdict,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            attention_consumed: 0.25,
            warn_consumed: 0.5,
            freeze_consumed: 0.9,
            exhausted_consumed: 1.0,
            unjudged: Verdict::Defer,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetStatus {
    Healthy,
    Attention,
    Warning,
    Critical,
    Exhausted,
}

impl BudgetPolicy {
    /// Status from consumption alone (the left column of the gate's first table).
    pub fn level(&self, consumed: f64) -> BudgetStatus {
        if consumed >= self.exhausted_consumed {
            BudgetStatus::Exhausted
        } else if consumed >= self.freeze_consumed {
            BudgetStatus::Critical
        } else if consumed >= self.warn_consumed {
            BudgetStatus::Warning
        } else if consumed >= self.attention_consumed {
            BudgetStatus::Attention
        } else {
            BudgetStatus::Healthy
        }
    }

    /// Reported status: consumption level raised by the firing alert (module docs).
    pub fn status(&self, consumed: f64, firing: Option<Severity>) -> BudgetStatus {
        let by_alert = match firing {
            Some(Severity::Page) => BudgetStatus::Critical,
            Some(Severity::Ticket) => BudgetStatus::Attention,
            None => BudgetStatus::Healthy,
        };
        self.level(consumed).max(by_alert)
    }
}

/// How risky the change asking for the gate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

/// Ordered from most to least permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Review,
    Defer,
    Block,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Review => "review",
            Verdict::Defer => "defer",
            Verdict::Block => "block",
        }
    }
}

/// Answer of `Engine::gate`, serialized as-is by the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateDecision {
    pub verdict: Verdict,
    pub reason: String,
    /// 1 - consumed; negative when overspent.
    pub budget_remaining: f64,
    pub status: BudgetStatus,
    pub firing: Option<Severity>,
    /// Fewer than one bad event allowed over the period at the observed rate: a single
    /// error moves the status a lot.
    pub low_traffic: bool,
}

/// First table of the module docs.
pub fn verdict_for_budget(level: BudgetStatus, risk: Risk) -> Verdict {
    use BudgetStatus as S;
    use Verdict as V;
    match (level, risk) {
        (S::Healthy, _) => V::Approve,
        (S::Attention, Risk::High) => V::Review,
        (S::Attention, _) => V::Approve,
        (S::Warning, Risk::Low) => V::Approve,
        (S::Warning, _) => V::Review,
        (S::Critical, Risk::High) => V::Block,
        (S::Critical, _) => V::Defer,
        (S::Exhausted, _) => V::Block,
    }
}

/// Second table of the module docs.
pub fn verdict_for_alert(firing: Option<Severity>, risk: Risk) -> Verdict {
    match (firing, risk) {
        (Some(Severity::Page), _) => Verdict::Defer,
        (Some(Severity::Ticket), Risk::High) => Verdict::Review,
        _ => Verdict::Approve,
    }
}

/// Applies both tables and explains the result.
pub fn decide(
    policy: &BudgetPolicy,
    consumed: f64,
    firing: Option<Severity>,
    low_traffic: bool,
    risk: Risk,
) -> GateDecision {
    let level = policy.level(consumed);
    let by_budget = verdict_for_budget(level, risk);
    let by_alert = verdict_for_alert(firing, risk);
    let verdict = by_budget.max(by_alert);
    let risk_name = match risk {
        Risk::Low => "low",
        Risk::Medium => "medium",
        Risk::High => "high",
    };
    let spent = format!("{:.1}% of the error budget spent", consumed * 100.0);
    let mut reason = if verdict == Verdict::Approve {
        format!("{spent}; {risk_name}-risk change approved")
    } else if by_alert > by_budget {
        let alert = firing.map_or("no", Severity::as_str);
        format!("{alert} alert firing ({spent}): {risk_name}-risk change gets {verdict:?} until it resolves")
    } else {
        format!(
            "{spent} (status {level:?}): {risk_name}-risk change gets {verdict:?}"
        )
    }
    .to_lowercase();
    let mut verdict = verdict;
    if low_traffic {
        reason.push_str("; low traffic: less than one bad event allowed per period, the budget is very sensitive");
        if policy.unjudged > verdict {
            verdict = policy.unjudged;
            reason.push_str(&format!(" (budget_policy.unjudged: {})", verdict.as_str()));
        }
    }
    GateDecision {
        verdict,
        reason,
        budget_remaining: 1.0 - consumed,
        status: policy.status(consumed, firing),
        firing,
        low_traffic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        let p = BudgetPolicy::default();
        assert_eq!(p.status(0.0, None), BudgetStatus::Healthy);
        assert_eq!(p.status(0.25, None), BudgetStatus::Attention);
        assert_eq!(
            p.status(0.0, Some(Severity::Ticket)),
            BudgetStatus::Attention
        );
        assert_eq!(p.status(0.5, None), BudgetStatus::Warning);
        assert_eq!(p.status(0.5, Some(Severity::Ticket)), BudgetStatus::Warning);
        assert_eq!(p.status(0.9, None), BudgetStatus::Critical);
        assert_eq!(p.status(0.1, Some(Severity::Page)), BudgetStatus::Critical);
        assert_eq!(p.status(1.0, None), BudgetStatus::Exhausted);
        assert_eq!(p.status(1.7, Some(Severity::Page)), BudgetStatus::Exhausted);
    }

    /// The full decision table: (consumed, firing) x risk -> verdict.
    #[test]
    fn gate_decision_table() {
        use Verdict::*;
        let p = BudgetPolicy::default();
        let rows: [(f64, Option<Severity>, [Verdict; 3]); 10] = [
            (0.00, None, [Approve, Approve, Approve]),
            (0.30, None, [Approve, Approve, Review]),
            (0.60, None, [Approve, Review, Review]),
            (0.95, None, [Defer, Defer, Block]),
            (1.00, None, [Block, Block, Block]),
            (0.00, Some(Severity::Ticket), [Approve, Approve, Review]),
            (0.60, Some(Severity::Ticket), [Approve, Review, Review]),
            (0.00, Some(Severity::Page), [Defer, Defer, Defer]),
            (0.95, Some(Severity::Page), [Defer, Defer, Block]),
            (1.20, Some(Severity::Page), [Block, Block, Block]),
        ];
        for (consumed, firing, expected) in rows {
            for (risk, want) in [Risk::Low, Risk::Medium, Risk::High]
                .into_iter()
                .zip(expected)
            {
                let got = decide(&p, consumed, firing, false, risk);
                assert_eq!(
                    got.verdict, want,
                    "consumed={consumed} firing={firing:?} risk={risk:?}"
                );
                assert!((got.budget_remaining - (1.0 - consumed)).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn decision_serializes_for_the_api() {
        let d = decide(
            &BudgetPolicy::default(),
            0.95,
            Some(Severity::Page),
            true,
            Risk::High,
        );
        let json = serde_json::to_value(&d).expect("serializes");
        assert_eq!(json["verdict"], "block");
        assert_eq!(json["status"], "critical");
        assert_eq!(json["firing"], "page");
        assert!(
            json["reason"]
                .as_str()
                .is_some_and(|r| r.contains("low traffic"))
        );
    }
}
