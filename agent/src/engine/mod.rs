//! SLO engine: turns per-tenant good/bad request counts into SLIs, error-budget burn
//! rates, multiwindow multi-burn-rate alerts and release-gate decisions.
//!
//! Its input comes from [`requests`] (the kernel's counts as labelled series) and its
//! state is shared with exporters through [`state::AgentState`].
//!
//! Data flow, once per second:
//! 1. the caller classifies requests (see [`slo::Sli`]) and calls [`Engine::record`] with
//!    good/bad deltas per (SLO, tenant);
//! 2. [`Engine::evaluate`] advances every series to `now`, runs the alert state machines
//!    and returns the [`AlertTransition`]s;
//! 3. exporters read [`Engine::snapshots`], the HTTP API calls [`Engine::gate`];
//! 4. now and then [`checkpoint::StateStore::save`] persists the buffers.
//!
//! Submodules, one job each: `duration` (parsing `30d`), `status` (HTTP status classes),
//! `spec` (config types), `slo` (validated config), `period` (rolling/calendar periods),
//! `window` (windows and their error bounds), `ring` (bucket rings), `series` (one
//! series' rings), `alert` (tiers and state machine), `budget` (status and gate),
//! `snapshot` (exporter view), `codec` + `checkpoint` (durable state), `simulate`.

pub mod admission;
pub mod alert;
pub mod bench;
pub mod budget;
pub mod checkpoint;
pub mod client_requests;
mod codec;
pub mod duration;
pub mod history;
pub mod period;
pub mod reload;
pub mod requests;
mod ring;
mod series;
pub mod simulate;
pub mod slo;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod status;
pub mod window;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod workbook_tests;

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

// The facade the agent imports from. `allow`: in a binary crate, re-exports the agent
// does not use (yet) would otherwise be warnings.
#[allow(unused_imports)]
pub use alert::{AlertTier, AlertTransition, FiringAlert, Severity, TransitionKind};
#[allow(unused_imports)]
pub use budget::{BudgetPolicy, BudgetStatus, GateDecision, Risk, Verdict};
#[allow(unused_imports)]
pub use checkpoint::{KernelCursor, RestoreOutcome, RestoreReport, StateStore};
#[allow(unused_imports)]
pub use slo::{ConfigErrors, FieldError, Sli, Slo, SloId, SloSet};
#[allow(unused_imports)]
pub use snapshot::{SeriesSnapshot, WindowStats};
#[allow(unused_imports)]
pub use spec::SloConfig;
#[allow(unused_imports)]
pub use window::{Counts, Window};

use period::{Period, PeriodBounds};
use series::Series;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error("unknown SLO id {}", .0.0)]
    UnknownSlo(SloId),
}

/// Per-SLO bookkeeping: tenant index and the cached current calendar period.
#[derive(Debug, Default)]
struct SloIndex {
    tenants: HashMap<Arc<str>, usize>,
    /// Current calendar month (rolling periods are computed on the fly).
    month: Option<PeriodBounds>,
}

/// The SLO engine. `record`/`evaluate` take `&mut self` (one writer); readers need only
/// `&self`, so the agent can share it behind an `RwLock` or own it in one task.
#[derive(Debug)]
pub struct Engine {
    slos: SloSet,
    index: Vec<SloIndex>,
    series: Vec<Series>,
}

impl Engine {
    pub fn new(slos: SloSet) -> Self {
        let index = slos.iter().map(|_| SloIndex::default()).collect();
        Self {
            slos,
            index,
            series: Vec::new(),
        }
    }

    pub fn slos(&self) -> &SloSet {
        &self.slos
    }

    pub fn slo_id(&self, name: &str) -> Option<SloId> {
        self.slos.id_of(name)
    }

    /// Number of live (SLO, tenant) series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Approximate memory held by all series, for the agent's self-metrics.
    pub fn approx_memory_bytes(&self) -> usize {
        // The walk over all series only reads their inline part (each ring's slot
        // width), like every evaluation does.
        self.series.capacity() * std::mem::size_of::<Series>()
            + self.series.len() * (Series::BYTES - std::mem::size_of::<Series>())
            + self.series.iter().map(Series::widened_bytes).sum::<usize>()
    }

    /// Adds `good`/`bad` events observed for `tenant` since the previous call.
    ///
    /// `now` should not go backwards; if it does (clock step), the events are added to
    /// the newest bucket. A tenant's series is created on its first non-zero record (the
    /// only allocation: the tenant name and the index entry).
    pub fn record(
        &mut self,
        now: u64,
        slo: SloId,
        tenant: &str,
        good: u64,
        bad: u64,
    ) -> Result<(), EngineError> {
        self.record_with(now, slo, tenant, || Arc::from(tenant), good, bad)
    }

    /// [`Engine::record`] with the caller's own `Arc` of the tenant name, which a new
    /// series shares instead of copying the name (the agent's request table already
    /// holds one per tenant: at 10,000 tenants x 2 SLOs that is 20,000 allocations
    /// fewer).
    pub fn record_shared(
        &mut self,
        now: u64,
        slo: SloId,
        tenant: &Arc<str>,
        good: u64,
        bad: u64,
    ) -> Result<(), EngineError> {
        self.record_with(now, slo, tenant, || tenant.clone(), good, bad)
    }

    fn record_with(
        &mut self,
        now: u64,
        slo: SloId,
        tenant: &str,
        name: impl FnOnce() -> Arc<str>,
        good: u64,
        bad: u64,
    ) -> Result<(), EngineError> {
        let Some(def) = self.slos.get(slo) else {
            return Err(EngineError::UnknownSlo(slo));
        };
        let bounds = current_bounds(&mut self.index[slo.index()], &def.period, now);
        let position = match self.index[slo.index()].tenants.get(tenant) {
            Some(&i) => i,
            None if good == 0 && bad == 0 => return Ok(()),
            None => {
                let name = name();
                self.series
                    .push(Series::new(def, name.clone(), now, bounds));
                let i = self.series.len() - 1;
                self.index[slo.index()].tenants.insert(name, i);
                i
            }
        };
        self.series[position].record(now, bounds, good, bad);
        Ok(())
    }

    /// Advances all series to `now`, updates alert states and returns the changes.
    /// Allocates only when there are transitions. Series with nothing left in any window
    /// and no alert are dropped.
    pub fn evaluate(&mut self, now: u64) -> Vec<AlertTransition> {
        let mut transitions = Vec::new();
        let min_events = self.slos.min_events;
        for (slo, index) in self.slos.iter().zip(&mut self.index) {
            current_bounds(index, &slo.period, now);
        }
        let mut i = self.series.len();
        while i > 0 {
            i -= 1;
            let series = &mut self.series[i];
            let (Some(slo), Some(index)) = (
                self.slos.get(series.slo),
                self.index.get(series.slo.index()),
            ) else {
                continue;
            };
            let bounds = bounds_in(index, &slo.period, now);
            series.buffers.advance(now, bounds);
            let windows = series.buffers.windows(now);
            let firing =
                alert::highest_firing(&slo.tiers, &windows, series.allowed_error_ratio, min_events);
            if let Some((kind, tier, previous)) = alert::step(&mut series.alert, firing, now)
                && let Some(tier) = slo.tiers.get(tier).copied()
            {
                transitions.push(AlertTransition {
                    slo: slo.id,
                    slo_name: slo.name.clone(),
                    tenant: series.tenant.clone(),
                    kind,
                    tier,
                    previous_tier: previous.and_then(|p| slo.tiers.get(p).copied()),
                    long_burn: windows[tier.long.index()].burn_rate(series.allowed_error_ratio),
                    short_burn: windows[tier.short.index()].burn_rate(series.allowed_error_ratio),
                    at: now,
                });
            }
            if series.alert.is_none() && series.is_expired(now, &slo.period, bounds) {
                self.remove_series(i);
            }
        }
        transitions
    }

    /// Snapshot of every series at `now`, without allocating.
    pub fn snapshots(&self, now: u64) -> impl Iterator<Item = SeriesSnapshot<'_>> + '_ {
        self.series
            .iter()
            .filter_map(move |s| self.snapshot_of(s, now))
    }

    /// Snapshot of one series; `None` if the tenant has no data for this SLO.
    pub fn snapshot(&self, now: u64, slo: SloId, tenant: &str) -> Option<SeriesSnapshot<'_>> {
        let position = *self.index.get(slo.index())?.tenants.get(tenant)?;
        self.snapshot_of(self.series.get(position)?, now)
    }

    /// The engine's own `Arc` of `tenant`'s name for `slo` (the one its index and series
    /// share), so per-series state kept elsewhere can share it instead of copying the
    /// name. `None` if the tenant has no series for this SLO.
    pub fn tenant_name(&self, slo: SloId, tenant: &str) -> Option<Arc<str>> {
        let (name, _) = self.index.get(slo.index())?.tenants.get_key_value(tenant)?;
        Some(Arc::clone(name))
    }

    /// Release gate for a change to `slo` as seen by `tenant` (see `budget.rs` for the
    /// decision table). A tenant the gate cannot judge (no data, or low traffic) gets at
    /// least `budget_policy.unjudged` (defer by default: the gate fails closed).
    pub fn gate(
        &self,
        now: u64,
        slo: SloId,
        tenant: &str,
        risk: Risk,
    ) -> Result<GateDecision, EngineError> {
        if self.slos.get(slo).is_none() {
            return Err(EngineError::UnknownSlo(slo));
        }
        let Some(snap) = self.snapshot(now, slo, tenant) else {
            return Ok(
                self.unjudged("no traffic recorded for this tenant: its budget cannot be judged")
            );
        };
        Ok(budget::decide(
            &self.slos.policy,
            snap.budget_consumed,
            snap.firing.map(|f| f.tier.severity),
            snap.low_traffic,
            risk,
        ))
    }

    /// The gate's answer for a tenant whose own counts are not kept or not
    /// there (`why`): `budget_policy.unjudged`, full budget reported.
    pub fn unjudged(&self, why: &str) -> GateDecision {
        let policy = &self.slos.policy;
        let verdict = policy.unjudged;
        GateDecision {
            verdict,
            reason: format!("{why}; {} (budget_policy.unjudged)", verdict.as_str()),
            budget_remaining: 1.0,
            status: policy.status(0.0, None),
            firing: None,
            low_traffic: false,
        }
    }

    fn snapshot_of<'a>(&'a self, series: &'a Series, now: u64) -> Option<SeriesSnapshot<'a>> {
        let slo = self.slos.get(series.slo)?;
        let bounds = bounds_in(self.index.get(series.slo.index())?, &slo.period, now);
        Some(SeriesSnapshot::build(
            slo,
            series,
            bounds,
            &self.slos.policy,
            now,
        ))
    }

    fn remove_series(&mut self, i: usize) {
        let removed = self.series.swap_remove(i);
        if let Some(index) = self.index.get_mut(removed.slo.index()) {
            index.tenants.remove(&removed.tenant);
        }
        if let Some(moved) = self.series.get(i)
            && let Some(slot) = self
                .index
                .get_mut(moved.slo.index())
                .and_then(|index| index.tenants.get_mut(&moved.tenant))
        {
            *slot = i;
        }
    }

    // ---- checkpoint support -------------------------------------------------------

    pub(crate) fn all_series(&self) -> &[Series] {
        &self.series
    }

    /// Inserts a restored series, replacing a live one for the same (SLO, tenant).
    pub(crate) fn put_series(&mut self, series: Series) {
        let Some(index) = self.index.get_mut(series.slo.index()) else {
            return;
        };
        match index.tenants.get(&series.tenant) {
            Some(&i) => self.series[i] = series,
            None => {
                index
                    .tenants
                    .insert(series.tenant.clone(), self.series.len());
                self.series.push(series);
            }
        }
    }

    /// Current period bounds of an SLO at `now` (calendar months cached).
    pub(crate) fn bounds(&mut self, slo: SloId, now: u64) -> Option<PeriodBounds> {
        let def = self.slos.get(slo)?;
        Some(current_bounds(
            self.index.get_mut(slo.index())?,
            &def.period,
            now,
        ))
    }
}

/// Period bounds at `now`, refreshing the cached calendar month when `now` left it.
fn current_bounds(index: &mut SloIndex, period: &Period, now: u64) -> PeriodBounds {
    match period {
        Period::Rolling { .. } => period.bounds(now),
        Period::CalendarMonth { .. } => match index.month {
            Some(month) if month.contains(now) => month,
            _ => {
                let month = period.bounds(now);
                index.month = Some(month);
                month
            }
        },
    }
}

/// Read-only variant: uses the cache when it covers `now`, computes otherwise.
fn bounds_in(index: &SloIndex, period: &Period, now: u64) -> PeriodBounds {
    match (period, index.month) {
        (Period::CalendarMonth { .. }, Some(month)) if month.contains(now) => month,
        _ => period.bounds(now),
    }
}
