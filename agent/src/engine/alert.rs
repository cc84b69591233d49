//! Multiwindow, multi-burn-rate alerting (Google SRE Workbook, "Alerting on SLOs").
//!
//! A tier fires when the burn rate over its long window *and* over its short window both
//! exceed its threshold, and the long window holds at least `min_events` events. The long
//! window makes the alert significant (enough budget spent), the short window makes it
//! reset quickly once the problem is fixed (the alert stops about one short window after
//! errors stop, instead of one long window).
//!
//! Default tiers, defined by the share of the period's budget they catch:
//!
//! | severity | long | short | budget share | threshold for 30d |
//! |----------|------|-------|--------------|-------------------|
//! | page     | 1h   | 5m    | 2 %          | 14.4              |
//! | page     | 6h   | 30m   | 5 %          | 6                 |
//! | ticket   | 1d   | 2h    | 10 %         | 3                 |
//! | ticket   | 3d   | 6h    | 10 %         | 1                 |
//!
//! For another period `P`: `threshold = share * P / long` (7d: 3.36, 1.4, 0.7, 0.233;
//! 28d: 13.44, 5.6, 2.8, 0.933). Burning at that rate for the whole long window spends
//! exactly `share` of the budget.
//!
//! One state machine per (SLO, tenant) tracks only the highest-priority firing tier:
//! a page outranks a ticket, and within a severity the higher threshold wins (the tier
//! list is kept sorted that way). Moving between tiers emits `Escalated`/`Deescalated`
//! rather than a second `Fired`, so a downstream pager sees one incident.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::slo::SloId;
use super::window::{Counts, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wake someone up.
    Page,
    /// Handle during working hours.
    Ticket,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// One alert tier, with the threshold already scaled to the SLO's period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AlertTier {
    pub severity: Severity,
    pub long: Window,
    pub short: Window,
    /// Burn rate both windows must exceed.
    pub threshold: f64,
}

impl fmt::Display for AlertTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x {}/{}",
            self.severity.as_str(),
            (self.threshold * 1_000.0).round() / 1_000.0,
            self.long.label(),
            self.short.label()
        )
    }
}

/// The Workbook tiers as (severity, long, short, budget share).
pub const DEFAULT_TIERS: [(Severity, Window, Window, f64); 4] = [
    (Severity::Page, Window::H1, Window::M5, 0.02),
    (Severity::Page, Window::H6, Window::M30, 0.05),
    (Severity::Ticket, Window::D1, Window::H2, 0.10),
    (Severity::Ticket, Window::D3, Window::H6, 0.10),
];

/// Burn-rate threshold that spends `budget_fraction` of the budget in one `long` window
/// of a `period_secs` period.
pub fn rescaled_threshold(budget_fraction: f64, period_secs: u64, long: Window) -> f64 {
    budget_fraction * (period_secs as f64 / long.secs() as f64)
}

/// Sorts tiers highest priority first: pages before tickets, then higher thresholds.
pub(crate) fn sort_by_priority(tiers: &mut [AlertTier]) {
    tiers.sort_by(|a, b| {
        a.severity
            .cmp(&b.severity)
            .then(b.threshold.total_cmp(&a.threshold))
    });
}

/// Index of the highest-priority tier whose condition holds, if any.
/// `windows` is indexed by [`Window::index`].
pub(crate) fn highest_firing(
    tiers: &[AlertTier],
    windows: &[Counts; 7],
    allowed_error_ratio: f64,
    min_events: u64,
) -> Option<usize> {
    tiers.iter().position(|tier| {
        let long = windows[tier.long.index()];
        let short = windows[tier.short.index()];
        long.total() >= min_events as f64
            && long.burn_rate(allowed_error_ratio) > tier.threshold
            && short.burn_rate(allowed_error_ratio) > tier.threshold
    })
}

/// Alert state of one series: which tier is reported and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlertState {
    /// Index into the SLO's (priority-sorted) tier list.
    pub tier: u8,
    /// When this tier became the reported one.
    pub tier_since: u64,
    /// When the series went from no alert to some alert.
    pub firing_since: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// No tier was firing; now one is.
    Fired,
    /// The reported tier stopped and no other tier is firing.
    Resolved,
    /// A higher-priority tier started firing.
    Escalated,
    /// The reported tier stopped but a lower-priority tier still fires.
    Deescalated,
}

/// One change of a series' alert state, emitted by `Engine::evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertTransition {
    pub slo: SloId,
    pub slo_name: Arc<str>,
    pub tenant: Arc<str>,
    pub kind: TransitionKind,
    /// The tier now reported; for `Resolved`, the tier that stopped.
    pub tier: AlertTier,
    /// The tier reported before an escalation or de-escalation.
    pub previous_tier: Option<AlertTier>,
    /// Burn rates of `tier`'s windows at `at`.
    pub long_burn: f64,
    pub short_burn: f64,
    /// Unix seconds.
    pub at: u64,
}

/// The alert currently reported for a series (snapshot view).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FiringAlert {
    pub tier: AlertTier,
    /// When this tier became the reported one (its fired-at time).
    pub since: u64,
    /// When the series started alerting at any tier.
    pub firing_since: u64,
}

/// A state change: kind, tier index now reported (or resolved), previous tier index.
pub(crate) type Change = (TransitionKind, usize, Option<usize>);

/// Advances the state machine to the tier that fires now. Returns the change, if any.
pub(crate) fn step(
    state: &mut Option<AlertState>,
    firing: Option<usize>,
    now: u64,
) -> Option<Change> {
    let tier_u8 = |i: usize| u8::try_from(i).unwrap_or(u8::MAX);
    match (*state, firing) {
        (None, None) => None,
        (None, Some(new)) => {
            *state = Some(AlertState {
                tier: tier_u8(new),
                tier_since: now,
                firing_since: now,
            });
            Some((TransitionKind::Fired, new, None))
        }
        (Some(old), None) => {
            *state = None;
            Some((TransitionKind::Resolved, usize::from(old.tier), None))
        }
        (Some(old), Some(new)) => {
            let old_tier = usize::from(old.tier);
            if new == old_tier {
                return None;
            }
            *state = Some(AlertState {
                tier: tier_u8(new),
                tier_since: now,
                firing_since: old.firing_since,
            });
            let kind = if new < old_tier {
                TransitionKind::Escalated
            } else {
                TransitionKind::Deescalated
            };
            Some((kind, new, Some(old_tier)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_tiers(period_secs: u64) -> Vec<AlertTier> {
        let mut tiers: Vec<AlertTier> = DEFAULT_TIERS
            .iter()
            .map(|&(severity, long, short, share)| AlertTier {
                severity,
                long,
                short,
                threshold: rescaled_threshold(share, period_secs, long),
            })
            .collect();
        sort_by_priority(&mut tiers);
        tiers
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn thirty_days_gives_the_workbook_thresholds() {
        let t: Vec<f64> = default_tiers(30 * 86_400)
            .iter()
            .map(|t| t.threshold)
            .collect();
        assert!(close(t[0], 14.4) && close(t[1], 6.0) && close(t[2], 3.0) && close(t[3], 1.0));
    }

    #[test]
    fn seven_and_twenty_eight_days_rescale() {
        let t: Vec<f64> = default_tiers(7 * 86_400)
            .iter()
            .map(|t| t.threshold)
            .collect();
        assert!(close(t[0], 3.36) && close(t[1], 1.4) && close(t[2], 0.7));
        assert!(close(t[3], 0.7 / 3.0));
        let t: Vec<f64> = default_tiers(28 * 86_400)
            .iter()
            .map(|t| t.threshold)
            .collect();
        assert!(close(t[0], 13.44) && close(t[1], 5.6) && close(t[2], 2.8));
        assert!(close(t[3], 2.8 / 3.0));
    }

    #[test]
    fn priority_puts_pages_first_then_higher_thresholds() {
        let tiers = default_tiers(30 * 86_400);
        assert_eq!(tiers[0].long, Window::H1);
        assert_eq!(tiers[1].long, Window::H6);
        assert_eq!(tiers[2].severity, Severity::Ticket);
        assert_eq!(tiers[2].long, Window::D1);
        assert_eq!(tiers[0].to_string(), "page 14.4x 1h/5m");
    }

    #[test]
    fn condition_needs_both_windows_and_min_events() {
        let tiers = default_tiers(30 * 86_400);
        let mut windows = [Counts {
            good: 1_000.0,
            bad: 0.0,
        }; 7];
        let burning = Counts {
            good: 980.0,
            bad: 20.0,
        }; // burn 20
        windows[Window::H1.index()] = burning;
        assert_eq!(highest_firing(&tiers, &windows, 0.001, 10), None);
        windows[Window::M5.index()] = burning;
        assert_eq!(highest_firing(&tiers, &windows, 0.001, 10), Some(0));
        assert_eq!(highest_firing(&tiers, &windows, 0.001, 1_001), None);
    }

    #[test]
    fn state_machine_reports_only_changes() {
        let mut state = None;
        assert_eq!(step(&mut state, None, 1), None);
        assert_eq!(
            step(&mut state, Some(2), 2),
            Some((TransitionKind::Fired, 2, None))
        );
        assert_eq!(step(&mut state, Some(2), 3), None);
        assert_eq!(
            step(&mut state, Some(0), 4),
            Some((TransitionKind::Escalated, 0, Some(2)))
        );
        assert_eq!(
            step(&mut state, Some(1), 5),
            Some((TransitionKind::Deescalated, 1, Some(0)))
        );
        assert_eq!(
            state,
            Some(AlertState {
                tier: 1,
                tier_since: 5,
                firing_since: 2
            })
        );
        assert_eq!(
            step(&mut state, None, 6),
            Some((TransitionKind::Resolved, 1, None))
        );
        assert_eq!(state, None);
    }
}
