//! Read-only view of one series for exporters and the HTTP API.
//!
//! A snapshot borrows names from the engine and holds fixed-size arrays, so iterating all
//! series every second allocates nothing.
//!
//! ## Budget accounting
//! * `covered_secs`: seconds of the current period the engine has data for
//!   (`now - max(period start, first record) + 1`).
//! * `expected_events = events in period * period length / covered_secs`: the period's
//!   traffic at the observed rate. Equal to the period's events once a rolling window is
//!   fully covered; for a calendar month it projects month-to-date traffic to the whole
//!   month, so the budget is the month's budget, not "month so far".
//! * `allowed_bad = (1 - objective) * expected_events`; `budget_consumed = bad in period /
//!   allowed_bad`; `budget_remaining = 1 - budget_consumed` (negative when overspent).
//! * Per window, `budget_consumed = bad in window / allowed_bad`: the share of the
//!   period's budget that window's bad events spent (the Workbook's `burn * window /
//!   period` when traffic is steady).
//! * `time_to_exhaustion_secs = (allowed_bad - bad in period) / (bad events per second over
//!   the last hour)`. Under steady traffic that is `budget_remaining * period / burn_1h`.
//!   The 1h window is the long window of the fastest page: it follows a live incident
//!   within minutes while 5m would swing with every blip and 6h+ would lag. Old bad events
//!   leaving a rolling window are ignored, so the estimate is conservative. `None` when no
//!   bad event happened in the last hour, 0 when already exhausted.
//! * `low_traffic`: `allowed_bad < 1`, i.e. at the observed rate the whole period allows
//!   less than one bad event, so a single error exhausts the budget.

use serde::Serialize;

use super::alert::FiringAlert;
use super::budget::{BudgetPolicy, BudgetStatus};
use super::period::PeriodBounds;
use super::series::Series;
use super::slo::{Slo, SloId};
use super::window::{Counts, Window};

/// Counts and rates over one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowStats<'a> {
    /// `5m` ... `3d`, or the period label (`30d`, `month (UTC)`).
    pub window: &'a str,
    pub secs: u64,
    /// Interpolated counts (see `window.rs`), hence `f64`.
    pub good: f64,
    pub bad: f64,
    /// good / (good + bad); `None` without events.
    pub sli: Option<f64>,
    pub burn_rate: f64,
    /// Share of the period's error budget spent by this window's bad events.
    pub budget_consumed: f64,
}

/// Everything exporters need about one (SLO, tenant) series at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSnapshot<'a> {
    pub slo: SloId,
    pub slo_name: &'a str,
    pub service: &'a str,
    pub tenant: &'a str,
    /// Percent (tenant override applied).
    pub objective: f64,
    /// Indexed like [`Window::ALL`]: 5m, 30m, 1h, 2h, 6h, 1d, 3d.
    pub windows: [WindowStats<'a>; 7],
    /// The SLO period (rolling window or current calendar month).
    pub period: WindowStats<'a>,
    pub period_start: u64,
    pub covered_secs: u64,
    pub expected_events: f64,
    pub allowed_bad: f64,
    pub budget_consumed: f64,
    pub budget_remaining: f64,
    pub time_to_exhaustion_secs: Option<f64>,
    pub firing: Option<FiringAlert>,
    pub status: BudgetStatus,
    pub low_traffic: bool,
}

impl<'a> SeriesSnapshot<'a> {
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn window(&self, window: Window) -> &WindowStats<'a> {
        &self.windows[window.index()]
    }

    pub(crate) fn build(
        slo: &'a Slo,
        series: &'a Series,
        bounds: PeriodBounds,
        policy: &BudgetPolicy,
        now: u64,
    ) -> Self {
        let allowed_ratio = series.allowed_error_ratio;
        let period_counts = series.buffers.period(now, bounds);
        let covered_secs = now
            .saturating_add(1)
            .saturating_sub(bounds.start.max(series.period_since))
            .clamp(1, bounds.len.max(1));
        let expected_events = period_counts.total() * bounds.len as f64 / covered_secs as f64;
        let allowed_bad = allowed_ratio * expected_events;
        let share = |bad: f64| {
            if allowed_bad > 0.0 {
                bad / allowed_bad
            } else {
                0.0
            }
        };
        let stats = |label: &'a str, secs: u64, c: Counts| WindowStats {
            window: label,
            secs,
            good: c.good,
            bad: c.bad,
            sli: c.sli(),
            burn_rate: c.burn_rate(allowed_ratio),
            budget_consumed: share(c.bad),
        };
        let windows =
            Window::ALL.map(|w| stats(w.label(), w.secs(), series.buffers.window(now, w)));
        let budget_consumed = share(period_counts.bad);

        let bad_last_hour = windows[Window::H1.index()].bad;
        let hour_secs = Window::H1.secs().min(
            now.saturating_add(1)
                .saturating_sub(series.tracked_since)
                .max(1),
        );
        let time_to_exhaustion_secs = if allowed_bad - period_counts.bad <= 0.0 {
            Some(0.0)
        } else if bad_last_hour > 0.0 {
            Some((allowed_bad - period_counts.bad) / (bad_last_hour / hour_secs as f64))
        } else {
            None
        };

        let firing = series.alert.and_then(|state| {
            slo.tiers
                .get(usize::from(state.tier))
                .map(|tier| FiringAlert {
                    tier: *tier,
                    since: state.tier_since,
                    firing_since: state.firing_since,
                })
        });
        Self {
            slo: slo.id,
            slo_name: &slo.name,
            service: &slo.service,
            tenant: &series.tenant,
            objective: series.objective,
            windows,
            period: stats(&slo.period_label, bounds.len, period_counts),
            period_start: bounds.start,
            covered_secs,
            expected_events,
            allowed_bad,
            budget_consumed,
            budget_remaining: 1.0 - budget_consumed,
            time_to_exhaustion_secs,
            status: policy.status(budget_consumed, firing.map(|f| f.tier.severity)),
            firing,
            low_traffic: allowed_bad < 1.0,
        }
    }
}
