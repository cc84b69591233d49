//! The counts kept for one (SLO, tenant) pair.
//!
//! Ring headers (running sums, newest-bucket position, slot form) are inline, slot
//! arrays are on the heap (see `ring.rs` for why). Every ring starts good-only (one
//! `u16` good count per bucket, no bad column: most series of a healthy service never
//! see a bad event in most rings) and widens on its own to `[good, bad]` pairs at its
//! first bad event, or the first time one of its buckets passes `u16::MAX` (see
//! `ring.rs` for the rates at which that happens: e.g. 6,553 req/s for one tenant fills
//! a 10 s bucket, 18 req/s a 1 h bucket). Sizes of the slot arrays:
//!
//! | ring          | forms                          | slots | bytes                   |
//! |---------------|--------------------------------|-------|-------------------------|
//! | 10 s          | good u16, u16, u32 pairs       | 31    | 62 (124, 248)           |
//! | 1 min         | good u16, u16, u32 pairs       | 61    | 122 (244, 488)          |
//! | 5 min         | good u16, u16, u32 pairs       | 73    | 146 (292, 584)          |
//! | 1 h           | good u16, u16, u32 pairs       | 73    | 146 (292, 584)          |
//! | period / 120  | good u16, u16, u32, u64 pairs  | 121   | 242 (484, 968, 1936)    |
//!
//! plus 424 bytes of headers and sums inline: 1,142 bytes per new series, i.e. one
//! whose rings have seen no bad event and no bucket past `u16::MAX` (asserted in tests,
//! heap included; the engine's `Vec` of series adds up to 2x growth slack on the inline
//! part); 1,860 once a bad event has reached every ring while they all stay within
//! `u16` (what every new series cost before the good-only form), 3,296 with every ring
//! at `u32` pairs, 968 more with the period ring at `u64`. A tenant at a steady 20
//! req/s, say, widens only its 1 h and period rings: 2,306 bytes without bad events,
//! 2,636 with. The fixed rings saturate at `u32::MAX` rather than wrap (see `ring.rs`);
//! the period ring never saturates below `u64::MAX`.
//! Idle series are dropped by the engine once nothing they hold is inside any window,
//! so a tenant that stopped sending costs nothing after its period has passed.

use std::sync::Arc;

use super::alert::AlertState;
use super::period::{PERIOD_BUCKETS, Period, PeriodBounds};
use super::ring::{Geometry, Ring};
use super::slo::{Slo, SloId};
use super::window::{Counts, Window};

/// A fixed ring's geometry: bucket width and window spans are constants, so its header
/// stores neither.
macro_rules! fixed_layout {
    ($(#[$doc:meta])* $name:ident: $width:literal s, $spans:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub(crate) struct $name;

        impl Geometry<{ $spans.len() }> for $name {
            const SPANS: [u16; $spans.len()] = $spans;
            #[inline]
            fn width(self) -> u32 {
                $width
            }
        }
    };
}

fixed_layout!(
    /// 10 s buckets serving 5m.
    Layout10s: 10 s, [30]
);
fixed_layout!(
    /// 1 min buckets serving 30m and 1h.
    Layout1m: 60 s, [30, 60]
);
fixed_layout!(
    /// 5 min buckets serving 2h and 6h.
    Layout5m: 300 s, [24, 72]
);
fixed_layout!(
    /// 1 h buckets serving 1d and 3d.
    Layout1h: 3_600 s, [24, 72]
);

/// The rolling-period ring's geometry: `period / 120` second buckets, one window of 120
/// buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeriodLayout {
    width: u32,
}

impl PeriodLayout {
    /// `width` is clamped to at least 1 s.
    pub fn new(width: u32) -> Self {
        Self {
            width: width.max(1),
        }
    }
}

impl Geometry<1> for PeriodLayout {
    const SPANS: [u16; 1] = [PERIOD_BUCKETS as u16];
    #[inline]
    fn width(self) -> u32 {
        self.width
    }
}

/// The fixed rings widen up to `u32` and saturate there; see `ring.rs`.
pub(crate) type Ring10s = Ring<u32, 31, 1, Layout10s>;
pub(crate) type Ring1m = Ring<u32, 61, 2, Layout1m>;
pub(crate) type Ring5m = Ring<u32, 73, 2, Layout5m>;
pub(crate) type Ring1h = Ring<u32, 73, 2, Layout1h>;
/// The rolling-period ring widens up to `u64` and never saturates below it: with 6 h
/// buckets (30d period) a bucket passes `u32::MAX` at about 200 k req/s for one tenant
/// on one node, which a busy ingress node can reach, and the period's budget must never
/// undercount.
pub(crate) type PeriodRing = Ring<u64, { PERIOD_SLOTS }, 1, PeriodLayout>;

/// Slots of the rolling-period ring: its 120 buckets plus the partially counted one.
pub(crate) const PERIOD_SLOTS: usize = PERIOD_BUCKETS as usize + 1;

/// Events of the current calendar month. Nothing expires inside a month, so two counters
/// replace a ring; they are reset when the month changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MonthCounts {
    /// Start of the month these counts belong to.
    pub start: u64,
    pub good: u64,
    pub bad: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PeriodBuffer {
    Rolling(PeriodRing),
    Calendar(MonthCounts),
}

impl PeriodBuffer {
    pub fn new(period: &Period, now: u64, bounds: PeriodBounds) -> Self {
        match period {
            Period::Rolling { .. } => {
                PeriodBuffer::Rolling(Ring::new(PeriodLayout::new(period.bucket_width()), now))
            }
            Period::CalendarMonth { .. } => PeriodBuffer::Calendar(MonthCounts {
                start: bounds.start,
                good: 0,
                bad: 0,
            }),
        }
    }

    fn advance(&mut self, now: u64, bounds: PeriodBounds) {
        match self {
            PeriodBuffer::Rolling(ring) => ring.advance(now),
            PeriodBuffer::Calendar(month) => {
                if bounds.start > month.start {
                    *month = MonthCounts {
                        start: bounds.start,
                        good: 0,
                        bad: 0,
                    };
                }
            }
        }
    }

    fn add(&mut self, now: u64, bounds: PeriodBounds, good: u64, bad: u64) {
        self.advance(now, bounds);
        match self {
            PeriodBuffer::Rolling(ring) => ring.add(now, good, bad),
            PeriodBuffer::Calendar(month) => {
                month.good = month.good.saturating_add(good);
                month.bad = month.bad.saturating_add(bad);
            }
        }
    }

    fn counts(&self, now: u64, bounds: PeriodBounds) -> Counts {
        match self {
            PeriodBuffer::Rolling(ring) => ring.window(now, 0),
            PeriodBuffer::Calendar(month) if month.start == bounds.start => Counts {
                good: month.good as f64,
                bad: month.bad as f64,
            },
            PeriodBuffer::Calendar(_) => Counts::default(),
        }
    }
}

/// All rings of one series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Buffers {
    pub s10: Ring10s,
    pub m1: Ring1m,
    pub m5: Ring5m,
    pub h1: Ring1h,
    pub period: PeriodBuffer,
}

impl Buffers {
    pub fn new(period: &Period, now: u64, bounds: PeriodBounds) -> Self {
        Self {
            s10: Ring::new(Layout10s, now),
            m1: Ring::new(Layout1m, now),
            m5: Ring::new(Layout5m, now),
            h1: Ring::new(Layout1h, now),
            period: PeriodBuffer::new(period, now, bounds),
        }
    }

    #[inline]
    pub fn add(&mut self, now: u64, bounds: PeriodBounds, good: u64, bad: u64) {
        self.s10.add(now, good, bad);
        self.m1.add(now, good, bad);
        self.m5.add(now, good, bad);
        self.h1.add(now, good, bad);
        self.period.add(now, bounds, good, bad);
    }

    #[inline]
    pub fn advance(&mut self, now: u64, bounds: PeriodBounds) {
        self.s10.advance(now);
        self.m1.advance(now);
        self.m5.advance(now);
        self.h1.advance(now);
        self.period.advance(now, bounds);
    }

    /// Counts over `window` ending at `now` (see the error table in `window.rs`).
    #[inline]
    pub fn window(&self, now: u64, window: Window) -> Counts {
        match window {
            Window::M5 => self.s10.window(now, 0),
            Window::M30 => self.m1.window(now, 0),
            Window::H1 => self.m1.window(now, 1),
            Window::H2 => self.m5.window(now, 0),
            Window::H6 => self.m5.window(now, 1),
            Window::D1 => self.h1.window(now, 0),
            Window::D3 => self.h1.window(now, 1),
        }
    }

    pub fn windows(&self, now: u64) -> [Counts; 7] {
        Window::ALL.map(|w| self.window(now, w))
    }

    pub fn period(&self, now: u64, bounds: PeriodBounds) -> Counts {
        self.period.counts(now, bounds)
    }
}

/// One (SLO, tenant) series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub slo: SloId,
    pub tenant: Arc<str>,
    /// Percent; the tenant override if any.
    pub objective: f64,
    /// 1 - objective, as a ratio.
    pub allowed_error_ratio: f64,
    /// First second the fixed windows have data for (since the engine, or its
    /// checkpoint, began).
    pub tracked_since: u64,
    /// First second the period buffer has data for (differs from `tracked_since` when a
    /// restore had to reset the period history).
    pub period_since: u64,
    /// Last second with a non-zero record.
    pub last_event: u64,
    pub alert: Option<AlertState>,
    pub buffers: Buffers,
}

/// `1 - objective / 100`, rounded to 9 decimals of the percentage so `99.9` gives exactly
/// the double nearest 0.001 (plain float subtraction gives 0.000999999999999943, which
/// would make a burn of exactly 14.4 compare as above 14.4).
pub(crate) fn allowed_error_ratio(objective_percent: f64) -> f64 {
    ((100.0 - objective_percent) * 1e9).round() / 1e11
}

impl Series {
    /// Memory of a new series, whose rings are all good-only: inline part plus its
    /// good-only `u16` slot arrays (the tenant name, shared with the index, and
    /// allocator overhead come on top).
    pub const BYTES: usize = std::mem::size_of::<Series>()
        + Ring10s::NEW_HEAP_BYTES
        + Ring1m::NEW_HEAP_BYTES
        + Ring5m::NEW_HEAP_BYTES
        + Ring1h::NEW_HEAP_BYTES
        + PeriodRing::NEW_HEAP_BYTES;

    /// Heap bytes beyond [`Series::BYTES`]: the larger slot arrays of rings that widened
    /// (a bad event, or a bucket past `u16::MAX`). Reads only the inline headers (each
    /// ring's slot form).
    pub fn widened_bytes(&self) -> usize {
        let b = &self.buffers;
        let period = match &b.period {
            PeriodBuffer::Rolling(ring) => ring.heap_bytes() - PeriodRing::NEW_HEAP_BYTES,
            PeriodBuffer::Calendar(_) => 0,
        };
        (b.s10.heap_bytes() - Ring10s::NEW_HEAP_BYTES)
            + (b.m1.heap_bytes() - Ring1m::NEW_HEAP_BYTES)
            + (b.m5.heap_bytes() - Ring5m::NEW_HEAP_BYTES)
            + (b.h1.heap_bytes() - Ring1h::NEW_HEAP_BYTES)
            + period
    }

    pub fn new(slo: &Slo, tenant: Arc<str>, now: u64, bounds: PeriodBounds) -> Self {
        let objective = slo.objective_for(&tenant);
        Self {
            slo: slo.id,
            tenant,
            objective,
            allowed_error_ratio: allowed_error_ratio(objective),
            tracked_since: now,
            period_since: now,
            last_event: now,
            alert: None,
            buffers: Buffers::new(&slo.period, now, bounds),
        }
    }

    #[inline]
    pub fn record(&mut self, now: u64, bounds: PeriodBounds, good: u64, bad: u64) {
        self.buffers.add(now, bounds, good, bad);
        if good > 0 || bad > 0 {
            self.last_event = self.last_event.max(now);
        }
    }

    /// True when no window (fixed or period) can still contain any of this series'
    /// events, so dropping it loses nothing.
    pub fn is_expired(&self, now: u64, period: &Period, bounds: PeriodBounds) -> bool {
        let longest_fixed = Window::D3.secs() + u64::from(Layout1h.width());
        let idle = now.saturating_sub(self.last_event);
        let period_empty = match period {
            Period::Rolling { secs } => idle >= secs + u64::from(period.bucket_width()),
            Period::CalendarMonth { .. } => self.last_event < bounds.start,
        };
        idle >= longest_fixed && period_empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::ring::SlotForm;

    fn new_series(period: &Period, now: u64) -> Series {
        Series {
            slo: SloId(0),
            tenant: Arc::from("t"),
            objective: 99.9,
            allowed_error_ratio: 0.001,
            tracked_since: now,
            period_since: now,
            last_event: now,
            alert: None,
            buffers: Buffers::new(period, now, period.bounds(now)),
        }
    }

    fn forms(series: &Series) -> [SlotForm; 5] {
        let b = &series.buffers;
        let PeriodBuffer::Rolling(period) = &b.period else {
            panic!("rolling period expected");
        };
        [
            b.s10.form(),
            b.m1.form(),
            b.m5.form(),
            b.h1.form(),
            period.form(),
        ]
    }

    #[test]
    fn new_series_fits_in_1_2_kib_and_one_bad_event_costs_1_9_kib() {
        let inline = std::mem::size_of::<Series>();
        let total = Series::BYTES;
        println!("series: {inline} bytes inline, {total} bytes with slot arrays");
        assert_eq!(
            total - inline,
            62 + 122 + 146 + 146 + 242,
            "good-only slot arrays"
        );
        assert!(inline <= 424, "{inline}");
        assert_eq!(total, 1_142);

        let period = Period::Rolling { secs: 30 * 86_400 };
        let now = 1_699_999_200;
        let mut series = new_series(&period, now);
        series.record(now, period.bounds(now), 5_000, 0);
        assert_eq!(forms(&series), [SlotForm::Good16; 5]);
        assert_eq!(series.widened_bytes(), 0, "good events only");
        // One bad event reaches every ring: `u16` pairs everywhere, what every new
        // series cost before the good-only form.
        series.record(now + 1, period.bounds(now + 1), 5_000, 1);
        assert_eq!(forms(&series), [SlotForm::U16; 5]);
        assert_eq!(
            series.widened_bytes(),
            124 + 244 + 292 + 292 + 484 - (total - inline)
        );
        assert_eq!(total + series.widened_bytes(), 1_860);
    }

    #[test]
    fn widened_bytes_follow_each_ring() {
        use SlotForm::{Good16, U16, U32};
        let period = Period::Rolling { secs: 30 * 86_400 };
        let now = 1_699_999_200; // an hour boundary, inside one 6 h bucket
        let mut series = new_series(&period, now);
        assert_eq!(series.widened_bytes(), 0);
        // 20 req/s for an hour, all good: the 1 h and 6 h buckets pass u16::MAX and
        // those rings widen to u32 pairs, nothing else widens.
        for t in now..now + 3_600 {
            series.record(t, period.bounds(t), 20, 0);
        }
        assert_eq!(forms(&series), [Good16, Good16, Good16, U32, U32]);
        assert_eq!(series.widened_bytes(), (584 - 146) + (968 - 242));
        assert_eq!(Series::BYTES + series.widened_bytes(), 2_306);
        // A bad event: the good-only rings turn to u16 pairs, the others are wide
        // enough already.
        let t = now + 3_600;
        series.record(t, period.bounds(t), 20, 1);
        assert_eq!(forms(&series), [U16, U16, U16, U32, U32]);
        assert_eq!(Series::BYTES + series.widened_bytes(), 2_636);
    }

    #[test]
    fn allowed_ratio_is_exact_for_decimal_objectives() {
        assert_eq!(allowed_error_ratio(99.9), 0.001);
        assert_eq!(allowed_error_ratio(99.95), 0.0005);
        assert_eq!(allowed_error_ratio(99.0), 0.01);
    }
}
