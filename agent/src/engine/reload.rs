//! A new SLO set for a running engine (config reload): series of SLOs whose
//! meaning is unchanged keep their windows, budget and alert state.

use std::collections::HashMap;

use super::alert::AlertState;
use super::series::{PeriodBuffer, allowed_error_ratio};
use super::{Engine, SloId, SloSet};

/// What a reload did to the engine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Old SLO id -> new SLO id, for SLOs whose series were kept (same name,
    /// same service and SLI definition).
    pub kept: HashMap<SloId, SloId>,
    pub kept_series: usize,
    /// Series of SLOs removed or whose service or SLI changed.
    pub dropped_series: usize,
    /// Kept series whose period changed (e.g. 30d -> 28d): windows kept,
    /// period history restarted.
    pub reset_period_history: usize,
}

impl Engine {
    /// Replaces the SLO set, carrying over the series of every SLO with the
    /// same name and data fingerprint. Objectives and alert tiers come from
    /// the new definition (a firing alert stays firing if its tier still exists).
    pub fn reconfigure(&mut self, slos: SloSet, now: u64) -> ReloadReport {
        let old = std::mem::replace(self, Engine::new(slos));
        let mut report = ReloadReport::default();
        for old_slo in old.slos.iter() {
            if let Some(new) = self
                .slos
                .iter()
                .find(|s| s.name == old_slo.name && s.data_fingerprint == old_slo.data_fingerprint)
            {
                report.kept.insert(old_slo.id, new.id);
            }
        }
        for mut series in old.series {
            let (Some(&new_id), Some(old_slo)) =
                (report.kept.get(&series.slo), old.slos.get(series.slo))
            else {
                report.dropped_series += 1;
                continue;
            };
            let Some(slo) = self.slos.get(new_id).cloned() else {
                continue;
            };
            let Some(bounds) = self.bounds(new_id, now) else {
                continue;
            };
            // Period has no PartialEq; its Debug form spells out every field.
            if format!("{:?}", old_slo.period) != format!("{:?}", slo.period) {
                series.buffers.period = PeriodBuffer::new(&slo.period, now, bounds);
                series.period_since = now;
                report.reset_period_history += 1;
            }
            series.alert = series.alert.and_then(|a| {
                let was = old_slo.tiers.get(a.tier as usize)?;
                let tier = slo.tiers.iter().position(|t| {
                    t.severity == was.severity && t.long == was.long && t.short == was.short
                })?;
                Some(AlertState {
                    tier: u8::try_from(tier).ok()?,
                    ..a
                })
            });
            series.slo = new_id;
            series.objective = slo.objective_for(&series.tenant);
            series.allowed_error_ratio = allowed_error_ratio(series.objective);
            self.put_series(series);
            report.kept_series += 1;
        }
        report
    }
}
