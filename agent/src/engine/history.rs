//! Burn-rate history per (SLO, tenant) for the status page's sparklines and the
//! `/v1/slos/{slo}/tenants/{tenant}` API.
//!
//! ## Bound
//! One point every [`STEP_SECS`] (5 min) for the last [`SLOTS`] steps (6 h), for the
//! [`WINDOWS`] the paging tiers read (5m, 30m, 1h, 6h), each burn rate stored as a
//! log-quantized `u16` (see [`encode`]). That is `72 x 4 x 2 = 576` bytes of points per
//! series, held only by series that burned budget in the last 6 h (see
//! [`SeriesHistory`]), plus a fixed header and the map entry: 10,000 series that all
//! burned take about 6.1 MiB, 10,000 that never did well under 1 MiB (both measured by
//! `approx_memory_bytes` in the unit tests below), whatever the traffic. The map's keys
//! are the engine's own tenant names (shared `Arc`s), not copies. Series exist only
//! where the engine has one, and the engine's tenants are capped per service, so
//! hostile tenant names cannot grow this without bound.
//!
//! ## Sampling
//! [`BurnHistory::update`] runs every poll but samples at most every [`SAMPLE_SECS`],
//! and at once at the first poll of a step: each sample overwrites the point of the
//! current 5-minute step, so a step holds the burn rates seen at its end, the current
//! step always has a point, and a new series has a point within a poll. Entries
//! whose series the engine dropped are removed at the next sample.

use std::collections::HashMap;
use std::sync::Arc;

use super::window::Window;
use super::{Engine, SloId};

/// Seconds between two points.
pub const STEP_SECS: u64 = 300;
/// Points kept: 6 hours.
pub const SLOTS: usize = 72;
/// Windows whose burn rates are kept (the page tiers' long and short windows).
pub const WINDOWS: [Window; 4] = [Window::M5, Window::M30, Window::H1, Window::H6];
/// Minimum seconds between two samples.
pub const SAMPLE_SECS: u64 = 10;

/// Quantization scale: `ln(1 + burn) * SCALE`. A burn of 1,000,000 (objective 99.9999 %,
/// total outage) encodes to about 56,600 < `u16::MAX`. One step is `1/4096` in
/// `ln(1 + burn)`: about 0.00024 of burn near 0 and a relative 0.024 % above burn 1,
/// far finer than a sparkline's pixels and than the alert thresholds need.
const SCALE: f64 = 4_096.0;
/// "No point": the series did not exist during that step.
const EMPTY: u16 = u16::MAX;

/// Log quantization of a burn rate. Hand-written: a half-float (`half` crate) tops out
/// at 65,504 and keeps 3 significant digits across the range, while burn rates span
/// 0..10^6 and only need a constant relative precision.
pub fn encode(burn: f64) -> u16 {
    if !burn.is_finite() || burn <= 0.0 {
        return 0;
    }
    ((burn.ln_1p() * SCALE).round()).min(f64::from(EMPTY - 1)) as u16
}

pub fn decode(v: u16) -> Option<f64> {
    (v != EMPTY).then(|| (f64::from(v) / SCALE).exp_m1())
}

/// One series' ring of points.
///
/// Sparse: most series never burn (a healthy tenant's burn rate is 0 in every window),
/// so the ring is only allocated at the first non-zero point and released again once
/// every point it holds is 0 (or empty). Without a ring, the steps from `zero_since` to
/// `newest_step` read as burn 0 and older ones as "no point". At 10,000 tenants x 2
/// SLOs that is ~13 MiB of rings the agent does not hold when nothing burns.
#[derive(Debug, Clone)]
pub struct SeriesHistory {
    /// Step number (`unix / STEP_SECS`) of the newest point written.
    newest_step: u64,
    /// Without `points`: first step of the run of zero points ending at `newest_step`.
    zero_since: u64,
    /// `points[step % SLOTS][window]`, while some point in the last [`SLOTS`] steps is
    /// not 0.
    points: Option<Box<Points>>,
    /// Sample generation that last saw the series (for removal).
    seen: u64,
}

type Points = [[u16; WINDOWS.len()]; SLOTS];

impl SeriesHistory {
    fn new(step: u64) -> Self {
        SeriesHistory {
            newest_step: step,
            zero_since: step,
            points: None,
            seen: 0,
        }
    }

    /// The stored point of `step`, which must be within the ring's span.
    fn raw(&self, step: u64) -> [u16; WINDOWS.len()] {
        match &self.points {
            Some(points) => points[(step % SLOTS as u64) as usize],
            None if step >= self.zero_since => [0; WINDOWS.len()],
            None => [EMPTY; WINDOWS.len()],
        }
    }

    fn write(&mut self, step: u64, burns: [u16; WINDOWS.len()]) {
        if step < self.newest_step && self.newest_step - step >= SLOTS as u64 {
            return; // older than the ring (clock went back a lot)
        }
        let all_zero = burns == [0; WINDOWS.len()];
        if self.points.is_none() {
            if all_zero {
                if step > self.newest_step + 1 {
                    // Steps skipped (agent busy, clock jump) have no point.
                    self.zero_since = step;
                }
                self.newest_step = self.newest_step.max(step);
                self.zero_since = self.zero_since.min(step);
                return;
            }
            // The first burn: materialise the ring as the zeros it stood for.
            let mut points = Box::new([[EMPTY; WINDOWS.len()]; SLOTS]);
            let oldest = self.newest_step.saturating_sub(SLOTS as u64 - 1);
            for s in self.zero_since.max(oldest)..=self.newest_step {
                points[(s % SLOTS as u64) as usize] = [0; WINDOWS.len()];
            }
            self.points = Some(points);
        }
        let Some(points) = self.points.as_mut() else {
            return;
        };
        if step > self.newest_step {
            // Steps skipped (agent busy, clock jump) have no point; clear them, at most a
            // full ring.
            let gap = (step - self.newest_step).min(SLOTS as u64);
            for s in (step - gap + 1)..step {
                points[(s % SLOTS as u64) as usize] = [EMPTY; WINDOWS.len()];
            }
            self.newest_step = step;
        }
        points[(step % SLOTS as u64) as usize] = burns;
        if all_zero {
            self.release_if_all_zero();
        }
    }

    /// Drops the ring when it holds no burn: the newest run of zero points becomes
    /// `zero_since..=newest_step` (an empty step before it ends the run).
    fn release_if_all_zero(&mut self) {
        let Some(points) = &self.points else { return };
        if points.iter().flatten().any(|&v| v != 0 && v != EMPTY) {
            return;
        }
        let oldest = self.newest_step.saturating_sub(SLOTS as u64 - 1);
        let mut since = self.newest_step;
        while since > oldest && points[((since - 1) % SLOTS as u64) as usize][0] != EMPTY {
            since -= 1;
        }
        self.zero_since = since;
        self.points = None;
    }

    /// The points of a series without any sample yet: all empty.
    pub fn empty_points(now: u64) -> Vec<(u64, [Option<f64>; WINDOWS.len()])> {
        let mut none = SeriesHistory::new(0);
        none.zero_since = u64::MAX;
        none.points(now)
    }

    /// Points oldest first as (step start unix seconds, burn per [`WINDOWS`]), ending at
    /// the step of `now`; steps without data are `None`.
    pub fn points(&self, now: u64) -> Vec<(u64, [Option<f64>; WINDOWS.len()])> {
        let now_step = now / STEP_SECS;
        let first = now_step.saturating_sub(SLOTS as u64 - 1);
        (first..=now_step)
            .map(|step| {
                let in_ring = step <= self.newest_step && self.newest_step - step < SLOTS as u64;
                let raw = if in_ring {
                    self.raw(step)
                } else {
                    [EMPTY; WINDOWS.len()]
                };
                (step * STEP_SECS, raw.map(decode))
            })
            .collect()
    }
}

/// Every series' history: one map per SLO (indexed by `SloId`), keyed by tenant.
#[derive(Debug, Default)]
pub struct BurnHistory {
    slos: Vec<HashMap<Arc<str>, SeriesHistory>>,
    last_sample: u64,
    generation: u64,
}

impl BurnHistory {
    /// Samples the engine's burn rates at `now` (at most every [`SAMPLE_SECS`], except
    /// at a new series or a new step).
    pub fn update(&mut self, engine: &Engine, now: u64) {
        // A series the engine created since the last sample is sampled at once, so
        // the page shows it within a poll; so is the first poll of a new step, so the
        // newest point is never missing for the first seconds of a step.
        let new_series = engine.series_count() != self.len();
        let new_step = now / STEP_SECS != self.last_sample / STEP_SECS;
        if self.last_sample != 0 && now < self.last_sample + SAMPLE_SECS && !new_series && !new_step
        {
            return;
        }
        self.last_sample = now;
        self.generation += 1;
        let step = now / STEP_SECS;
        for snap in engine.snapshots(now) {
            let burns = WINDOWS.map(|w| encode(snap.windows[w.index()].burn_rate));
            let slo = snap.slo.index();
            if self.slos.len() <= slo {
                self.slos.resize_with(slo + 1, HashMap::new);
            }
            let tenants = &mut self.slos[slo];
            let history = match tenants.get_mut(snap.tenant) {
                Some(h) => h,
                None => {
                    // Share the engine's name rather than copying it.
                    let name = engine
                        .tenant_name(snap.slo, snap.tenant)
                        .unwrap_or_else(|| Arc::from(snap.tenant));
                    tenants
                        .entry(name)
                        .or_insert_with(|| SeriesHistory::new(step))
                }
            };
            history.write(step, burns);
            history.seen = self.generation;
        }
        let generation = self.generation;
        for tenants in &mut self.slos {
            tenants.retain(|_, h| h.seen == generation);
        }
    }

    pub fn get(&self, slo: SloId, tenant: &str) -> Option<&SeriesHistory> {
        self.slos.get(slo.index())?.get(tenant)
    }

    pub fn len(&self) -> usize {
        self.slos.iter().map(HashMap::len).sum()
    }

    /// Approximate heap held: map slots (key, value, control byte) and the boxed points
    /// of the series that burned in the last 6 h. The tenant names are the engine's
    /// (shared `Arc`s), not counted here.
    #[cfg_attr(not(test), allow(dead_code))] // the memory bound's test
    pub fn approx_memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Arc<str>, SeriesHistory)>() + 1;
        let points = std::mem::size_of::<Points>();
        self.slos
            .iter()
            .map(|tenants| {
                tenants.capacity() * slot
                    + tenants.values().filter(|h| h.points.is_some()).count() * points
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spec::SloConfig;

    fn engine() -> Engine {
        let yaml = "slos:\n  - { name: a, service: s, objective: 99.9, window: 30d }\n";
        let config: SloConfig = serde_saphyr::from_str(yaml).expect("yaml");
        Engine::new(config.validate().expect("valid"))
    }

    #[test]
    fn quantization_keeps_relative_precision() {
        for burn in [0.001, 0.5, 1.0, 14.4, 1_000.0, 1_000_000.0] {
            let back = decode(encode(burn)).expect("a point");
            let tolerance = (burn * 3e-4).max(2.5e-4);
            assert!((back - burn).abs() <= tolerance, "{burn} -> {back}");
        }
        assert_eq!(decode(encode(0.0)), Some(0.0));
        assert_eq!(decode(EMPTY), None);
    }

    #[test]
    fn keeps_six_hours_of_five_minute_points() {
        let mut e = engine();
        let id = e.slo_id("a").expect("slo");
        let mut h = BurnHistory::default();
        let start = 1_700_000_100;
        // 7 hours: good traffic, then 100% errors for the last 10 minutes.
        for now in (start..start + 7 * 3_600).step_by(10) {
            let bad = if now >= start + 7 * 3_600 - 600 {
                10
            } else {
                0
            };
            e.record(now, id, "acme", 10 - bad, bad).expect("record");
            e.evaluate(now);
            h.update(&e, now);
        }
        let now = start + 7 * 3_600 - 10;
        let points = h.get(id, "acme").expect("history").points(now);
        assert_eq!(points.len(), SLOTS);
        assert!(points.iter().all(|(_, p)| p[0].is_some()), "6 h covered");
        assert_eq!(points[SLOTS - 1].0, now / STEP_SECS * STEP_SECS);
        let last_5m = points[SLOTS - 1].1[0].expect("point");
        assert!((last_5m - 1_000.0).abs() < 1.0, "{last_5m}");
        assert_eq!(points[0].1[0], Some(0.0));
    }

    #[test]
    fn ten_thousand_series_fit_in_a_few_mib() {
        let mut e = engine();
        let id = e.slo_id("a").expect("slo");
        let mut h = BurnHistory::default();
        let now = 1_700_000_000;
        for t in 0..10_000 {
            e.record(now, id, &format!("tenant-{t:05}"), 1, 0)
                .expect("record");
        }
        h.update(&e, now);
        assert_eq!(h.len(), 10_000);
        let healthy = h.approx_memory_bytes();
        println!("history of 10,000 series that never burned: {healthy} bytes");
        assert!(healthy < 1 << 20, "{healthy} bytes");
        // Every series burns: each holds its ring.
        for t in 0..10_000 {
            e.record(now + 1, id, &format!("tenant-{t:05}"), 0, 1)
                .expect("record");
        }
        e.evaluate(now + 1);
        h.update(&e, now + SAMPLE_SECS);
        let burning = h.approx_memory_bytes();
        println!("history of 10,000 series that all burned: {burning} bytes");
        assert!(burning > 10_000 * size_of::<Points>(), "{burning} bytes");
        assert!(burning < 8 << 20, "{burning} bytes");
    }

    #[test]
    fn rings_exist_only_while_something_burned() {
        let mut h = SeriesHistory::new(100);
        let zero = [0; WINDOWS.len()];
        for step in 100..110 {
            h.write(step, zero);
        }
        assert!(h.points.is_none());
        let now = 109 * STEP_SECS;
        let points = h.points(now);
        // Steps before the series: no point; since its first sample: burn 0.
        assert_eq!(points[SLOTS - 11].1[0], None);
        assert!(points[SLOTS - 10..].iter().all(|(_, p)| p[0] == Some(0.0)));
        // A burn materialises the ring with the same zeros behind it.
        let burn = [encode(2.0), 0, 0, 0];
        h.write(110, burn);
        assert!(h.points.is_some());
        let points = h.points(now + STEP_SECS);
        assert_eq!(points[SLOTS - 12].1[0], None);
        assert!(
            points[SLOTS - 11..SLOTS - 1]
                .iter()
                .all(|(_, p)| p[0] == Some(0.0))
        );
        assert!((points[SLOTS - 1].1[0].expect("point") - 2.0).abs() < 1e-3);
        // A gap (no sample for two steps), then zeros until the burn leaves the ring.
        for step in 113..(110 + SLOTS as u64) {
            h.write(step, zero);
        }
        assert!(h.points.is_some(), "the burn is still in the ring");
        let before = h.points((110 + SLOTS as u64) * STEP_SECS);
        h.write(110 + SLOTS as u64, zero);
        assert!(h.points.is_none(), "released once the burn left");
        let after = h.points((110 + SLOTS as u64) * STEP_SECS);
        // Released ring reads as it did: zeros after the gap, nothing in the gap.
        assert_eq!(before.len(), after.len());
        assert_eq!(after[SLOTS - 1].1[0], Some(0.0));
        let gap_at = after.iter().position(|(t, _)| *t == 112 * STEP_SECS);
        if let Some(i) = gap_at {
            assert_eq!(after[i].1[0], None);
        }
        assert!(
            after
                .iter()
                .filter(|(t, _)| *t >= 113 * STEP_SECS)
                .all(|(_, p)| p[0] == Some(0.0))
        );
        assert_eq!(&before[..SLOTS - 1], &after[..SLOTS - 1]);
        assert_eq!(before[SLOTS - 1].1[0], None);
    }

    #[test]
    fn a_new_step_gets_its_point_at_its_first_update() {
        let mut e = engine();
        let id = e.slo_id("a").expect("slo");
        let mut h = BurnHistory::default();
        // 3 s before a step boundary, then 2 s after it: less than SAMPLE_SECS apart,
        // and no new series at the second update.
        let before = 1_000 * STEP_SECS - 3;
        e.record(before, id, "acme", 1, 0).expect("record");
        e.evaluate(before);
        h.update(&e, before);
        assert_eq!(
            h.len(),
            e.series_count(),
            "no series is new at the next update"
        );
        let after = 1_000 * STEP_SECS + 2;
        e.record(after, id, "acme", 1, 0).expect("record");
        e.evaluate(after);
        h.update(&e, after);
        let points = h.get(id, "acme").expect("history").points(after);
        assert_eq!(points[SLOTS - 1].0, 1_000 * STEP_SECS);
        assert_eq!(
            points[SLOTS - 1].1[0],
            Some(0.0),
            "the new step has its point"
        );
        assert_eq!(
            points[SLOTS - 2].1[0],
            Some(0.0),
            "the old step kept its point"
        );
    }

    #[test]
    fn tenant_names_are_shared_with_the_engine() {
        let mut e = engine();
        let id = e.slo_id("a").expect("slo");
        let mut h = BurnHistory::default();
        e.record(1_700_000_000, id, "acme", 1, 0).expect("record");
        h.update(&e, 1_700_000_000);
        let (key, _) = h.slos[id.index()].get_key_value("acme").expect("history");
        let engines = e.tenant_name(id, "acme").expect("engine's name");
        assert!(Arc::ptr_eq(key, &engines));
    }

    #[test]
    fn dropped_series_are_forgotten() {
        let mut e = engine();
        let id = e.slo_id("a").expect("slo");
        let mut h = BurnHistory::default();
        let now = 1_700_000_000;
        e.record(now, id, "gone", 1, 0).expect("record");
        h.update(&e, now);
        assert_eq!(h.len(), 1);
        let e2 = engine();
        h.update(&e2, now + SAMPLE_SECS);
        assert_eq!(h.len(), 0);
    }
}
