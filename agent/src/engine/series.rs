//! The counts kept for one (SLO, tenant) pair.
//!
//! Ring headers (running sums, newest-bucket position) are inline, slot arrays are on the
//! heap (see `ring.rs` for why). Sizes of the slot arrays:
//!
//! | ring          | counter         | slots | bytes       |
//! |---------------|-----------------|-------|-------------|
//! | 10 s          | u32             | 31    | 248         |
//! | 1 min         | u32             | 61    | 488         |
//! | 5 min         | u32             | 73    | 584         |
//! | 1 h           | u32             | 73    | 584         |
//! | period / 120  | u32, u64 if big | 121   | 968 (1936)  |
//!
//! plus 424 bytes of headers and sums inline: 3,296 bytes per series (asserted in
//! tests, heap included; the engine's `Vec` of series adds up to 2x growth slack on the
//! inline part). A series whose period ring widened (see [`PeriodRing`]) holds 968 bytes
//! more. The `u32` rings saturate rather than wrap (see `ring.rs`); the period ring never
//! saturates below `u64::MAX`.
//! Idle series are dropped by the engine once nothing they hold is inside any window,
//! so a tenant that stopped sending costs nothing after its period has passed.

use std::sync::Arc;

use super::alert::AlertState;
use super::period::{PERIOD_BUCKETS, Period, PeriodBounds};
use super::ring::Ring;
use super::slo::{Slo, SloId};
use super::window::{Counts, Window};

pub(crate) type Ring10s = Ring<u32, 31, 1>;
pub(crate) type Ring1m = Ring<u32, 61, 2>;
pub(crate) type Ring5m = Ring<u32, 73, 2>;
pub(crate) type Ring1h = Ring<u32, 73, 2>;
pub(crate) type NarrowPeriodRing = Ring<u32, { PERIOD_SLOTS }, 1>;
pub(crate) type WidePeriodRing = Ring<u64, { PERIOD_SLOTS }, 1>;

/// Slots of the rolling-period ring: its 120 buckets plus the partially counted one.
pub(crate) const PERIOD_SLOTS: usize = PERIOD_BUCKETS as usize + 1;

/// (bucket width in seconds, window spans in buckets) of the fixed rings.
pub(crate) const LAYOUT_10S: (u32, [u16; 1]) = (10, [30]); // 5m
pub(crate) const LAYOUT_1M: (u32, [u16; 2]) = (60, [30, 60]); // 30m, 1h
pub(crate) const LAYOUT_5M: (u32, [u16; 2]) = (300, [24, 72]); // 2h, 6h
pub(crate) const LAYOUT_1H: (u32, [u16; 2]) = (3_600, [24, 72]); // 1d, 3d
pub(crate) const PERIOD_SPANS: [u16; 1] = [PERIOD_BUCKETS as u16];

/// Events of the current calendar month. Nothing expires inside a month, so two counters
/// replace a ring; they are reset when the month changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MonthCounts {
    /// Start of the month these counts belong to.
    pub start: u64,
    pub good: u64,
    pub bad: u64,
}

/// The rolling-period ring. It starts with `u32` slots and switches to `u64` slots, for
/// this series only, the first time an add would push one of its buckets past
/// `u32::MAX`: with 6 h buckets (30d period) that is about 200 k req/s for one tenant on
/// one node, which a busy ingress node can reach, and the period's budget must never
/// undercount. Saturating like the fixed rings would silently lose events; always using
/// `u64` would cost every series 968 bytes that almost none of them needs.
///
/// Once wide, a ring stays wide (narrowing back when the big buckets expire would save
/// little and could flip back and forth); a checkpoint restore picks the width from the
/// stored values again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PeriodRing {
    Narrow(NarrowPeriodRing),
    Wide(WidePeriodRing),
}

impl PeriodRing {
    pub fn new(width: u32, now: u64) -> Self {
        PeriodRing::Narrow(Ring::new(width, PERIOD_SPANS, now))
    }

    pub fn width(&self) -> u32 {
        match self {
            PeriodRing::Narrow(ring) => ring.width(),
            PeriodRing::Wide(ring) => ring.width(),
        }
    }

    #[inline]
    pub fn advance(&mut self, now: u64) {
        match self {
            PeriodRing::Narrow(ring) => ring.advance(now),
            PeriodRing::Wide(ring) => ring.advance(now),
        }
    }

    #[inline]
    pub fn add(&mut self, now: u64, good: u64, bad: u64) {
        match self {
            PeriodRing::Narrow(ring) => {
                if !ring.try_add(now, good, bad) {
                    self.widen_and_add(now, good, bad);
                }
            }
            PeriodRing::Wide(ring) => ring.add(now, good, bad),
        }
    }

    /// The one allocation of a series after its creation (a new slot array), at most
    /// once in its lifetime.
    #[cold]
    fn widen_and_add(&mut self, now: u64, good: u64, bad: u64) {
        if let PeriodRing::Narrow(ring) = self {
            let mut wide: WidePeriodRing = ring.widen();
            wide.add(now, good, bad);
            *self = PeriodRing::Wide(wide);
        }
    }

    #[inline]
    pub fn window(&self, now: u64) -> Counts {
        match self {
            PeriodRing::Narrow(ring) => ring.window(now, 0),
            PeriodRing::Wide(ring) => ring.window(now, 0),
        }
    }

    /// Heap bytes behind this ring (the slot array).
    pub fn heap_bytes(&self) -> usize {
        match self {
            PeriodRing::Narrow(_) => NarrowPeriodRing::HEAP_BYTES,
            PeriodRing::Wide(_) => WidePeriodRing::HEAP_BYTES,
        }
    }
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
                PeriodBuffer::Rolling(PeriodRing::new(period.bucket_width(), now))
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
            PeriodBuffer::Rolling(ring) => ring.window(now),
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
            s10: Ring::new(LAYOUT_10S.0, LAYOUT_10S.1, now),
            m1: Ring::new(LAYOUT_1M.0, LAYOUT_1M.1, now),
            m5: Ring::new(LAYOUT_5M.0, LAYOUT_5M.1, now),
            h1: Ring::new(LAYOUT_1H.0, LAYOUT_1H.1, now),
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
    /// Memory of one series: inline part plus its slot arrays (the tenant name, shared
    /// with the index, and allocator overhead come on top).
    pub const BYTES: usize = std::mem::size_of::<Series>()
        + Ring10s::HEAP_BYTES
        + Ring1m::HEAP_BYTES
        + Ring5m::HEAP_BYTES
        + Ring1h::HEAP_BYTES
        + NarrowPeriodRing::HEAP_BYTES;

    /// Heap bytes beyond [`Series::BYTES`]: a widened period ring's larger slot array.
    pub fn widened_bytes(&self) -> usize {
        match &self.buffers.period {
            PeriodBuffer::Rolling(ring) => ring.heap_bytes() - NarrowPeriodRing::HEAP_BYTES,
            PeriodBuffer::Calendar(_) => 0,
        }
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
        let longest_fixed = Window::D3.secs() + u64::from(LAYOUT_1H.0);
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

    #[test]
    fn series_fits_in_3_25_kib() {
        let inline = std::mem::size_of::<Series>();
        let total = Series::BYTES;
        println!("series: {inline} bytes inline, {total} bytes with slot arrays");
        assert_eq!(total - inline, 248 + 488 + 584 + 584 + 968, "slot arrays");
        assert!(inline <= 424, "{inline}");
        assert!(total <= 3_328, "{total}");
    }

    /// The period ring widens instead of saturating: after any sequence of adds it holds
    /// exactly what a ring with `u64` slots from the start would hold.
    #[test]
    fn widened_period_ring_counts_like_a_u64_ring() {
        let width = 21_600; // 30d period
        let start = 1_700_000_000;
        let big = u64::from(u32::MAX);
        let mut ring = PeriodRing::new(width, start);
        let mut reference: WidePeriodRing = Ring::new(width, PERIOD_SPANS, start);
        // (seconds after start, good, bad)
        let adds = [
            (0, 1_000, 3),
            (60, big - 1_000, 0), // bucket's good is now exactly u32::MAX: still narrow
            (7_200, 0, 17),
            (21_600, big, 1), // next bucket: exactly u32::MAX again
            (21_601, 0, 0),
            (25_000, 1, 0), // same 6 h bucket, one past u32::MAX: widens here
            (50_000, 5, big),
            (100_000, big * 3, big + 7), // more than u32::MAX in a single add
            (200_000, 9, 9),
            (2_000_000, u64::MAX, 1), // saturates, like the u64 ring does
            (2_000_001, 5, 0),
            (40 * 86_400, 1, 1), // the big buckets have left the 30d window
        ];
        let mut widened_at = None;
        for (i, (dt, good, bad)) in adds.into_iter().enumerate() {
            let now = start + dt;
            ring.add(now, good, bad);
            reference.add(now, good, bad);
            if widened_at.is_none() && matches!(ring, PeriodRing::Wide(_)) {
                widened_at = Some(i);
            }
            for later in [now, now + 1, now + 3_600, now + 21_599, now + 30 * 86_400] {
                assert_eq!(
                    ring.window(later),
                    reference.window(later, 0),
                    "add {i}, read at +{}",
                    later - now
                );
            }
        }
        assert_eq!(widened_at, Some(5), "widens on the first add past u32::MAX");
        match &ring {
            PeriodRing::Wide(wide) => assert_eq!(wide, &reference),
            PeriodRing::Narrow(_) => panic!("should have widened"),
        }
    }

    #[test]
    fn widening_is_lossless() {
        let mut narrow: NarrowPeriodRing = Ring::new(600, PERIOD_SPANS, 0);
        let mut wide: WidePeriodRing = Ring::new(600, PERIOD_SPANS, 0);
        for t in (0..200_000).step_by(37) {
            narrow.add(t, t % 101, t % 7);
            wide.add(t, t % 101, t % 7);
        }
        assert_eq!(narrow.widen::<u64>(), wide);
    }

    #[test]
    fn allowed_ratio_is_exact_for_decimal_objectives() {
        assert_eq!(allowed_error_ratio(99.9), 0.001);
        assert_eq!(allowed_error_ratio(99.95), 0.0005);
        assert_eq!(allowed_error_ratio(99.0), 0.01);
    }
}
