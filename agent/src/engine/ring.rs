//! A ring of fixed-width time buckets with O(1) sliding-window sums.
//!
//! Buckets are aligned to absolute time (`bucket = unix_secs / width`), so two rings with
//! the same width always agree on bucket boundaries, and a ring restored after a restart
//! only has to be advanced to "now": the buckets of the gap are cleared, i.e. the gap
//! reads as "no data".
//!
//! For each window the ring serves it keeps a running sum of the `k + 1` newest buckets
//! (`k = window / width`). Advancing by one bucket subtracts the bucket that leaves the
//! window and clears the reused slot; recording adds to the newest bucket and to every
//! running sum. Reading a window is then one subtraction: the running sum minus the part
//! of the oldest bucket that lies before the window start (see `window()`), so evaluating
//! a series costs the same whether the ring has 31 or 121 slots.
//!
//! Counters: every ring starts with `u16` slots and widens, for this ring of this series
//! only, the first time an add would push one of its buckets past `u16::MAX`. Most
//! series are small tenants whose buckets never get there, and `u16` slots halve the
//! bulk of a series' memory. The thresholds, for one tenant on one node:
//!
//! | ring          | `u16` overflows above | `u32` overflows above           |
//! |---------------|-----------------------|---------------------------------|
//! | 10 s          | 6,553 req/s           | 429 M req/s                     |
//! | 1 min         | 1,092 req/s           | 71.6 M req/s                    |
//! | 5 min         | 218 req/s             | 14.3 M req/s                    |
//! | 1 h           | 18.2 req/s            | 1.19 M req/s                    |
//! | period (6 h)  | 3.0 req/s (30d)       | 199 k req/s (30d)               |
//!
//! The 10 s, 1 min, 5 min and 1 h rings widen `u16` -> `u32` and then saturate at
//! `u32::MAX` (far beyond what one node's agent sees for one tenant): saturating slots
//! absorb what fits and the running sums only ever add what a slot actually absorbed, so
//! sums and slots stay consistent even then. The period ring widens `u16` -> `u32` ->
//! `u64` and never saturates below `u64::MAX`: a period's budget must never undercount,
//! and a busy ingress node can pass 200 k req/s for one tenant. A ring that widened
//! stays wide (narrowing back when the big buckets expire would save little and could
//! flip back and forth); a checkpoint restore picks the narrowest width that holds the
//! stored values ([`Ring::from_parts`]). Widening, one new slot array, is the only
//! allocation of a series after its creation; it happens at most twice per ring.
//!
//! Recording costs one branch on the slot width. Reading a window never looks at the
//! slots (see [`Ring`]), so it does not depend on the width at all.

use std::fmt::Debug;

use super::window::Counts;

/// A bucket counter type (`u16`, `u32` or `u64`).
pub(crate) trait Counter: Copy + Default + PartialEq + Debug + 'static {
    const MAX: u64;
    fn get(self) -> u64;
    fn saturating_from(value: u64) -> Self;
}

macro_rules! counter {
    ($($t:ty),*) => {$(
        impl Counter for $t {
            const MAX: u64 = <$t>::MAX as u64;
            #[inline]
            fn get(self) -> u64 {
                u64::from(self)
            }
            #[inline]
            fn saturating_from(value: u64) -> Self {
                <$t>::try_from(value).unwrap_or(<$t>::MAX)
            }
        }
    )*};
}
counter!(u16, u32, u64);

/// Bucket width and window spans of a ring. The fixed rings use zero-sized types (both
/// are constants, so the header stores neither); the period ring stores its width.
pub(crate) trait Geometry<const W: usize>: Copy + Debug + PartialEq + 'static {
    /// Length of each window in buckets; each must be in `1..N`.
    const SPANS: [u16; W];
    /// Bucket width in seconds, > 0.
    fn width(self) -> u32;
}

const GOOD: usize = 0;
const BAD: usize = 1;

/// The slot array, at its current counter width.
#[derive(Debug, Clone)]
enum Slots<const N: usize> {
    U16(Box<[[u16; 2]; N]>),
    U32(Box<[[u32; 2]; N]>),
    U64(Box<[[u64; 2]; N]>),
}

/// Runs `$body` with `$s` bound to the slot array at its actual width.
macro_rules! at_width {
    ($slots:expr, $s:ident => $body:expr) => {
        match $slots {
            Slots::U16($s) => $body,
            Slots::U32($s) => $body,
            Slots::U64($s) => $body,
        }
    };
}

/// Slot holding bucket `head - back` (`back < N`).
#[inline]
fn slot_index<const N: usize>(head: u64, back: u64) -> usize {
    let n = N as u64;
    ((head % n + n - back % n) % n) as usize
}

/// `N` slots of `geometry.width()` seconds serving `W` windows of `G::SPANS[i]` buckets
/// each (`SPANS[i] < N`, so the partially covered oldest bucket is still in the ring).
/// Counters start as `u16` and widen on demand up to `M` (see the module doc): `u32` for
/// the fixed rings, which saturate there, `u64` for the period ring.
///
/// Hot/cold split: the header (head, running sums, cached oldest bucket, slot width) is
/// stored inline in the series, the slot array behind a `Box`. Evaluating a series only
/// reads headers, so with all series' headers packed in one `Vec` the evaluator streams
/// through ~0.4 KiB per series instead of touching lines spread over the slot arrays
/// (measured ~2x faster at 100k series, where nothing fits in the CPU caches). The slots
/// are only touched when recording or when a bucket boundary passes.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct Ring<M: Counter, const N: usize, const W: usize, G: Geometry<W>> {
    /// Absolute index (`unix_secs / width`) of the newest bucket. Its first second,
    /// `head * width`, is recomputed (one multiplication) rather than stored: the hot
    /// paths still skip the division while `now` stays inside the newest bucket, and the
    /// header the evaluator streams through stays smaller.
    head: u64,
    geometry: G,
    /// Per window `i`: `[good, bad]` summed over buckets `head - SPANS[i] ..= head`.
    sums: [[u64; 2]; W],
    /// Per window `i`: copy of the slot of bucket `head - SPANS[i]` (the partially
    /// counted one). It only changes when `head` moves, and keeping it here means reading
    /// a window never touches the slot array: with 100k series that array is far outside
    /// the CPU caches and each slot read was a cache miss.
    oldest: [[M; 2]; W],
    /// `[good, bad]` per bucket; bucket `b` lives in slot `b % N`.
    slots: Slots<N>,
}

/// Equal when they hold the same counts, whatever the slot width.
impl<M: Counter, const N: usize, const W: usize, G: Geometry<W>> PartialEq for Ring<M, N, W, G> {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head
            && self.geometry == other.geometry
            && self.sums == other.sums
            && self.oldest == other.oldest
            && (0..N).all(|i| self.slot(i) == other.slot(i))
    }
}

impl<M: Counter, const N: usize, const W: usize, G: Geometry<W>> Ring<M, N, W, G> {
    /// Compile-time check of the layout constants.
    const VALID: () = {
        assert!(N >= 2 && M::MAX >= u32::MAX as u64);
        let mut i = 0;
        while i < W {
            assert!(G::SPANS[i] >= 1 && (G::SPANS[i] as usize) < N);
            i += 1;
        }
    };

    /// Heap bytes behind a ring that has not widened (its `u16` slot array).
    pub const NARROW_HEAP_BYTES: usize = std::mem::size_of::<[[u16; 2]; N]>();

    /// An empty ring (`u16` slots) whose newest bucket contains `now`.
    pub fn new(geometry: G, now: u64) -> Self {
        let () = Self::VALID;
        Self {
            head: now / u64::from(geometry.width()),
            geometry,
            sums: [[0; 2]; W],
            oldest: [[M::default(); 2]; W],
            slots: Slots::U16(Box::new([[0; 2]; N])),
        }
    }

    /// Rebuilds a ring from stored counts (`counts[i]` is slot `i`), recomputing the
    /// running sums (stored sums are never trusted). The slots get the narrowest width
    /// that holds every count; counts above `M::MAX` saturate.
    pub fn from_parts(geometry: G, head: u64, counts: &[[u64; 2]; N]) -> Self {
        let mut ring = Self::new(geometry, 0);
        ring.head = head;
        let largest = counts.iter().flatten().copied().max().unwrap_or(0);
        ring.widen_to_hold(largest.min(M::MAX));
        at_width!(&mut ring.slots, s => {
            for (slot, count) in s.iter_mut().zip(counts) {
                *slot = count.map(Counter::saturating_from);
            }
        });
        for i in 0..W {
            let mut sum = [0u64; 2];
            for back in 0..=u64::from(G::SPANS[i]) {
                let slot = ring.slot(slot_index::<N>(head, back));
                sum[GOOD] = sum[GOOD].saturating_add(slot[GOOD]);
                sum[BAD] = sum[BAD].saturating_add(slot[BAD]);
            }
            ring.sums[i] = sum;
        }
        ring.refresh_oldest();
        ring
    }

    fn refresh_oldest(&mut self) {
        for i in 0..W {
            let back = u64::from(G::SPANS[i]);
            let slot = self.slot(slot_index::<N>(self.head, back));
            self.oldest[i] = slot.map(M::saturating_from);
        }
    }

    pub fn width(&self) -> u32 {
        self.geometry.width()
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// `[good, bad]` of slot `i` (`i < N`).
    pub fn slot(&self, i: usize) -> [u64; 2] {
        at_width!(&self.slots, s => s[i].map(Counter::get))
    }

    /// Calls `f` with `[good, bad]` of every slot, in slot order.
    pub fn for_each_slot(&self, mut f: impl FnMut([u64; 2])) {
        at_width!(&self.slots, s => s.iter().for_each(|slot| f(slot.map(Counter::get))))
    }

    /// Bits per counter in the slot array right now: 16, 32 or 64.
    pub fn counter_bits(&self) -> u32 {
        match self.slots {
            Slots::U16(_) => 16,
            Slots::U32(_) => 32,
            Slots::U64(_) => 64,
        }
    }

    /// Heap bytes behind this ring (the slot array at its current width).
    pub fn heap_bytes(&self) -> usize {
        Self::NARROW_HEAP_BYTES * self.counter_bits() as usize / 16
    }

    /// First second of the newest bucket.
    #[inline]
    fn head_start(&self) -> u64 {
        self.head.saturating_mul(u64::from(self.geometry.width()))
    }

    /// Moves the newest bucket forward to the one containing `now`, expiring what leaves
    /// each window. Time going backwards (clock step) leaves the ring unchanged: later
    /// records then land in the newest bucket.
    #[inline]
    pub fn advance(&mut self, now: u64) {
        let width = u64::from(self.geometry.width());
        if now < self.head_start().saturating_add(width) {
            return;
        }
        self.advance_slow(now);
    }

    #[cold]
    fn advance_slow(&mut self, now: u64) {
        let target = now / u64::from(self.geometry.width());
        if target <= self.head {
            return;
        }
        let gap = target - self.head;
        if gap >= N as u64 {
            // Everything expired. The slots keep their width (see the module doc).
            at_width!(&mut self.slots, s => s.fill(Default::default()));
            self.sums = [[0; 2]; W];
            self.oldest = [[M::default(); 2]; W];
            self.head = target;
            return;
        }
        let Self {
            head, sums, slots, ..
        } = self;
        at_width!(slots, s => expire::<_, N, W>(s, head, sums, G::SPANS, gap));
        self.refresh_oldest();
    }

    /// Adds events observed at `now` (advancing first). If a counter of the newest
    /// bucket would pass what the slots hold, the ring first widens to the narrowest
    /// width that holds it, up to `M` (where it saturates).
    #[inline]
    pub fn add(&mut self, now: u64, good: u64, bad: u64) {
        self.advance(now);
        if !self.add_to_newest(good, bad) {
            self.widen_and_add(good, bad);
        }
    }

    /// Adds to the newest bucket, unless that needs wider slots (then `false`, nothing
    /// changed).
    #[inline]
    fn add_to_newest(&mut self, good: u64, bad: u64) -> bool {
        let newest = slot_index::<N>(self.head, 0);
        let sums = &mut self.sums;
        at_width!(&mut self.slots, s => add_to::<_, M, W>(&mut s[newest], sums, good, bad))
    }

    #[cold]
    #[inline(never)]
    fn widen_and_add(&mut self, good: u64, bad: u64) {
        let newest = self.slot(slot_index::<N>(self.head, 0));
        let needed = newest[GOOD]
            .saturating_add(good)
            .max(newest[BAD].saturating_add(bad));
        self.widen_to_hold(needed.min(M::MAX));
        let added = self.add_to_newest(good, bad);
        debug_assert!(added, "widened ring must take the add");
    }

    /// Widens the slots (never narrows) to the narrowest width that holds `value`.
    /// Lossless: every slot keeps its value, sums and cached oldest buckets are untouched.
    fn widen_to_hold(&mut self, value: u64) {
        let wider = match &self.slots {
            Slots::U16(s) if value > u64::from(u32::MAX) => Slots::U64(widened(s)),
            Slots::U16(s) if value > u64::from(u16::MAX) => Slots::U32(widened(s)),
            Slots::U32(s) if value > u64::from(u32::MAX) => Slots::U64(widened(s)),
            _ => return,
        };
        self.slots = wider;
    }

    /// Events in window `which` (length `L = SPANS[which] * width`) ending at second
    /// `now` inclusive, i.e. seconds `now - L + 1 ..= now`.
    ///
    /// With `now = cur * w + r`, the window is buckets `cur - k + 1 ..= cur` in full plus
    /// the last `w - 1 - r` seconds of bucket `cur - k`. The running sum holds buckets
    /// `cur - k ..= cur`, so the result is `sum - slot[cur - k] * (r + 1) / w`.
    ///
    /// Works read-only on a ring that has not been advanced to `now` yet (the buckets
    /// after `head` are empty; the ones that would have expired are subtracted in a loop
    /// bounded by `k`), so exporters can read without `&mut`.
    #[inline]
    pub fn window(&self, now: u64, which: usize) -> Counts {
        let w = u64::from(self.geometry.width());
        let k = u64::from(G::SPANS[which]);
        let head_start = self.head_start();
        let (gap, into_bucket) = if now >= head_start && now - head_start < w {
            (0, now - head_start) // current ring: no division
        } else {
            let cur = (now / w).max(self.head);
            (cur - self.head, now.saturating_sub(cur * w).min(w - 1))
        };
        if gap > k {
            return Counts::default();
        }
        let mut sum = self.sums[which];
        let oldest = if gap == 0 {
            self.oldest[which].map(Counter::get)
        } else {
            self.stale_window(&mut sum, k, gap)
        };
        let cut = (into_bucket + 1) as f64 / w as f64;
        Counts {
            good: sum[GOOD] as f64 - oldest[GOOD] as f64 * cut,
            bad: sum[BAD] as f64 - oldest[BAD] as f64 * cut,
        }
    }

    /// For a read `gap` buckets after `head`: removes from `sum` the buckets `head - k ..
    /// cur - k - 1`, which are in the running sum but have left the window, and returns
    /// the window's oldest bucket.
    fn stale_window(&self, sum: &mut [u64; 2], k: u64, gap: u64) -> [u64; 2] {
        for j in 0..gap {
            let expired = self.slot(slot_index::<N>(self.head, k - j));
            sum[GOOD] = sum[GOOD].saturating_sub(expired[GOOD]);
            sum[BAD] = sum[BAD].saturating_sub(expired[BAD]);
        }
        self.slot(slot_index::<N>(self.head, k - gap))
    }
}

/// The slot array with each counter converted to the wider type `D`.
fn widened<C: Counter, D: Counter + From<C>, const N: usize>(
    slots: &[[C; 2]; N],
) -> Box<[[D; 2]; N]> {
    Box::new(slots.map(|slot| slot.map(D::from)))
}

/// Advances `head` by `gap < N` buckets: subtracts what leaves each window from its
/// running sum and clears the reused slots.
fn expire<C: Counter, const N: usize, const W: usize>(
    slots: &mut [[C; 2]; N],
    head: &mut u64,
    sums: &mut [[u64; 2]; W],
    spans: [u16; W],
    gap: u64,
) {
    for _ in 0..gap {
        for (sum, &k) in sums.iter_mut().zip(&spans) {
            let leaving = slots[slot_index::<N>(*head, u64::from(k))];
            sum[GOOD] = sum[GOOD].saturating_sub(leaving[GOOD].get());
            sum[BAD] = sum[BAD].saturating_sub(leaving[BAD].get());
        }
        *head += 1;
        slots[slot_index::<N>(*head, 0)] = Default::default();
    }
}

/// Adds `good`/`bad` to one slot of counter type `C` in a ring that widens up to `M`,
/// and what the slot absorbed to every running sum. Returns `false`, changing nothing,
/// when a counter would pass `C::MAX` while `C` is narrower than `M`; at `M` it
/// saturates.
#[inline]
fn add_to<C: Counter, M: Counter, const W: usize>(
    slot: &mut [C; 2],
    sums: &mut [[u64; 2]; W],
    good: u64,
    bad: u64,
) -> bool {
    let new_good = slot[GOOD].get().saturating_add(good);
    let new_bad = slot[BAD].get().saturating_add(bad);
    if C::MAX < M::MAX && (new_good > C::MAX || new_bad > C::MAX) {
        return false;
    }
    for (kind, delta, new) in [(GOOD, good, new_good), (BAD, bad, new_bad)] {
        if delta == 0 {
            continue;
        }
        let old = slot[kind].get();
        let stored = C::saturating_from(new);
        let absorbed = stored.get() - old;
        slot[kind] = stored;
        for sum in sums.iter_mut() {
            sum[kind] = sum[kind].saturating_add(absorbed);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::series::{Layout1m, Layout10s, PERIOD_SLOTS, PeriodLayout};

    type TenSec = Ring<u32, 31, 1, Layout10s>;
    type Period = Ring<u64, { PERIOD_SLOTS }, 1, PeriodLayout>;

    /// Brute-force reference: events recorded per second, summed over the window.
    fn exact(events: &[(u64, u64, u64)], now: u64, len: u64) -> (f64, f64) {
        events
            .iter()
            .filter(|(t, _, _)| *t <= now && *t + len > now)
            .fold((0.0, 0.0), |(g, b), (_, eg, eb)| {
                (g + *eg as f64, b + *eb as f64)
            })
    }

    #[test]
    fn steady_traffic_is_exact_at_every_offset() {
        // Traffic starts on a bucket boundary: a first bucket only partly filled is not
        // "steady" and is covered by the one-bucket bound instead.
        let start = 1_000_020;
        let mut ring: Ring<u32, 61, 2, Layout1m> = Ring::new(Layout1m, start);
        let mut events = Vec::new();
        for t in start..start + 3 * 3_600 {
            ring.add(t, 9, 1);
            events.push((t, 9, 1));
            if t % 7 == 0 {
                for (i, len) in [(0, 1_800), (1, 3_600)] {
                    let got = ring.window(t, i);
                    let (g, b) = exact(&events, t, len);
                    assert!(
                        (got.good - g).abs() < 1e-6,
                        "t={t} len={len} {got:?} vs {g}"
                    );
                    assert!((got.bad - b).abs() < 1e-6, "t={t} len={len} {got:?} vs {b}");
                }
            }
        }
    }

    #[test]
    fn bursty_traffic_error_is_within_one_bucket() {
        let mut ring = TenSec::new(Layout10s, 0);
        let mut events = Vec::new();
        for t in 0..2_000u64 {
            let good = (t * 7919) % 13; // deterministic, uneven
            let bad = u64::from(t % 17 == 0) * 5;
            ring.add(t, good, bad);
            events.push((t, good, bad));
            let got = ring.window(t, 0);
            let (g, b) = exact(&events, t, 300);
            // One 10 s bucket holds at most 10 * (12 + 5) events.
            assert!((got.good - g).abs() <= 120.0 && (got.bad - b).abs() <= 50.0);
        }
    }

    #[test]
    fn stale_read_equals_advanced_read() {
        let mut ring = TenSec::new(Layout10s, 500);
        for t in 500..800 {
            ring.add(t, 3, 1);
        }
        for later in [800, 805, 850, 900, 1_000, 1_098, 1_099, 1_100, 5_000] {
            let stale = ring.window(later, 0);
            let mut advanced = ring.clone();
            advanced.advance(later);
            assert_eq!(stale, advanced.window(later, 0), "now={later}");
        }
        let mut gone = ring.clone();
        gone.advance(10_000);
        assert_eq!(gone.window(10_000, 0), Counts::default());
    }

    #[test]
    fn clock_going_back_keeps_data_in_newest_bucket() {
        let mut ring = TenSec::new(Layout10s, 1_000);
        ring.add(1_000, 1, 0);
        ring.add(990, 1, 0);
        assert_eq!(ring.head(), 100);
        assert_eq!(ring.window(1_009, 0).good, 2.0);
    }

    #[test]
    fn fixed_rings_widen_once_then_saturate_and_sums_stay_consistent() {
        let mut ring = TenSec::new(Layout10s, 0);
        assert_eq!((ring.counter_bits(), ring.heap_bytes()), (16, 124));
        ring.add(0, u64::MAX, 0);
        ring.add(1, 5, 0);
        assert_eq!((ring.counter_bits(), ring.heap_bytes()), (32, 248));
        assert_eq!(ring.slot(0), [u64::from(u32::MAX), 0]);
        let rebuilt = TenSec::from_parts(Layout10s, ring.head(), &slots_of(&ring));
        assert_eq!(rebuilt, ring);
        assert_eq!(rebuilt.counter_bits(), 32);
        ring.advance(10_000);
        assert_eq!(ring.window(10_000, 0), Counts::default());
        assert_eq!(ring.counter_bits(), 32, "a widened ring stays wide");
    }

    #[test]
    fn from_parts_recomputes_sums() {
        let mut ring = Period::new(PeriodLayout::new(21_600), 1_700_000_000);
        for t in (1_700_000_000..1_700_000_000 + 40 * 86_400).step_by(600) {
            ring.add(t, 100, 2);
        }
        assert_eq!(ring.counter_bits(), 16, "3,600 events per bucket");
        let rebuilt = Ring::from_parts(PeriodLayout::new(21_600), ring.head(), &slots_of(&ring));
        assert_eq!(rebuilt, ring);
    }

    #[test]
    fn from_parts_picks_the_narrowest_width_and_saturates_above_the_ring_max() {
        let mut counts = [[0u64; 2]; 31];
        let narrowest = |counts: &[[u64; 2]; 31]| {
            let period_like: Ring<u64, 31, 1, Layout10s> = Ring::from_parts(Layout10s, 7, counts);
            (
                TenSec::from_parts(Layout10s, 7, counts).counter_bits(),
                period_like.counter_bits(),
            )
        };
        assert_eq!(narrowest(&counts), (16, 16));
        counts[3] = [u64::from(u16::MAX), 1];
        assert_eq!(narrowest(&counts), (16, 16));
        counts[5] = [0, u64::from(u16::MAX) + 1];
        assert_eq!(narrowest(&counts), (32, 32));
        counts[9] = [u64::from(u32::MAX) + 1, 0];
        assert_eq!(narrowest(&counts), (32, 64));
        let saturated = TenSec::from_parts(Layout10s, 7, &counts);
        assert_eq!(saturated.slot(9), [u64::from(u32::MAX), 0]);
    }

    fn slots_of<M: Counter, const N: usize, const W: usize, G: Geometry<W>>(
        ring: &Ring<M, N, W, G>,
    ) -> [[u64; 2]; N] {
        let mut all = [[0; 2]; N];
        let mut i = 0;
        ring.for_each_slot(|slot| {
            all[i] = slot;
            i += 1;
        });
        all
    }

    /// What a ring must hold: every bucket's count in a `u64`, capped at `cap` (the
    /// ring's widest counter), and window reads computed from those buckets.
    struct Reference {
        width: u64,
        cap: u64,
        head: u64,
        buckets: BTreeMap<u64, [u64; 2]>,
        largest: u64,
    }

    impl Reference {
        fn add(&mut self, now: u64, good: u64, bad: u64) {
            self.head = self.head.max(now / self.width);
            let bucket = self.buckets.entry(self.head).or_default();
            bucket[0] = bucket[0].saturating_add(good).min(self.cap);
            bucket[1] = bucket[1].saturating_add(bad).min(self.cap);
            self.largest = self.largest.max(bucket[0]).max(bucket[1]);
        }
        fn bucket(&self, b: u64) -> [u64; 2] {
            self.buckets.get(&b).copied().unwrap_or_default()
        }
        /// Same arithmetic as `Ring::window` (integer sum, then one fractional
        /// bucket), so results compare exactly.
        fn window(&self, now: u64, k: u64) -> Counts {
            let cur = (now / self.width).max(self.head);
            let into = now.saturating_sub(cur * self.width).min(self.width - 1);
            let mut sum = [0u64; 2];
            for b in cur.saturating_sub(k)..=cur {
                let count = self.bucket(b);
                sum[0] += count[0];
                sum[1] += count[1];
            }
            let oldest = if cur >= k {
                self.bucket(cur - k)
            } else {
                [0; 2]
            };
            let cut = (into + 1) as f64 / self.width as f64;
            Counts {
                good: sum[0] as f64 - oldest[0] as f64 * cut,
                bad: sum[1] as f64 - oldest[1] as f64 * cut,
            }
        }
        /// Counter width a ring holding these buckets must have.
        fn bits(&self) -> u32 {
            match self.largest {
                v if v <= u64::from(u16::MAX) => 16,
                v if v <= u64::from(u32::MAX) => 32,
                _ => 64,
            }
        }
    }

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random adds and advances, with deltas around the `u16` and `u32` limits: the ring
    /// widens exactly when a bucket first passes what its slots hold, and at every step
    /// its slots and windows equal the `u64` reference (capped at `u32::MAX` for the fixed
    /// rings, which saturate there).
    fn matches_reference<M: Counter, const N: usize, const W: usize, G: Geometry<W>>(
        geometry: G,
        seed: u64,
    ) -> u32 {
        let width = u64::from(geometry.width());
        let start = 1_700_000_000 / width * width + width / 3;
        let mut ring: Ring<M, N, W, G> = Ring::new(geometry, start);
        let mut reference = Reference {
            width,
            cap: M::MAX,
            head: start / width,
            buckets: BTreeMap::new(),
            largest: 0,
        };
        let mut rng = Rng(seed);
        let mut now = start;
        let mut widest = 16;
        for step in 0..20_000 {
            now += match rng.below(100) {
                0..=59 => 0,
                60..=89 => rng.below(width),
                90..=98 => rng.below(width * 8),
                _ => rng.below(width * N as u64 * 2),
            };
            let mut delta = || match rng.below(100) {
                0..=49 => rng.below(50),
                50..=79 => rng.below(3_000),
                80..=94 => rng.below(40_000),
                95..=98 => rng.below(2_000_000_000),
                _ => u64::from(u32::MAX) - rng.below(3),
            };
            let (good, bad) = (delta(), delta());
            let before = ring.counter_bits();
            ring.add(now, good, bad);
            reference.add(now, good, bad);
            assert_eq!(ring.counter_bits(), reference.bits(), "step {step}");
            if ring.counter_bits() != before {
                // Only the add that first overflowed the newest bucket widens.
                let newest = reference.bucket(reference.head);
                assert!(newest[0].max(newest[1]) > u64::MAX >> (64 - before));
            }
            widest = widest.max(ring.counter_bits());
            for back in 0..N as u64 {
                let b = reference.head - back;
                assert_eq!(
                    ring.slot(slot_index::<N>(ring.head(), back)),
                    reference.bucket(b),
                    "step {step}, bucket -{back}"
                );
            }
            for later in [now, now + 1, now + width - 1, now + 5 * width] {
                for (i, &k) in G::SPANS.iter().enumerate() {
                    assert_eq!(
                        ring.window(later, i),
                        reference.window(later, u64::from(k)),
                        "step {step}, window {i}, read at +{}",
                        later - now
                    );
                }
            }
            if step % 1_000 == 0 {
                let rebuilt = Ring::from_parts(geometry, ring.head(), &slots_of(&ring));
                assert_eq!(rebuilt, ring, "step {step}");
            }
        }
        widest
    }

    #[test]
    fn fixed_ring_widens_to_u32_then_saturates_like_a_capped_u64_ring() {
        for seed in [1, 0x9E37_79B9_7F4A_7C15, 42] {
            let widest = matches_reference::<u32, 61, 2, Layout1m>(Layout1m, seed);
            assert_eq!(widest, 32, "seed {seed}");
            let widest = matches_reference::<u32, 31, 1, Layout10s>(Layout10s, seed);
            assert_eq!(widest, 32, "seed {seed}");
        }
    }

    #[test]
    fn period_ring_widens_to_u64_and_counts_like_a_u64_ring() {
        for seed in [7, 0xDEAD_BEEF, 1_234_567] {
            let widest = matches_reference::<u64, PERIOD_SLOTS, 1, PeriodLayout>(
                PeriodLayout::new(600),
                seed,
            );
            assert_eq!(widest, 64, "seed {seed}");
        }
    }

    #[test]
    fn widening_steps_through_u32_at_the_u16_and_u32_limits() {
        let width = 21_600;
        let start = 1_700_000_000 / width * width;
        let mut ring = Period::new(PeriodLayout::new(21_600), start);
        let u16_max = u64::from(u16::MAX);
        let u32_max = u64::from(u32::MAX);
        let steps = [
            (0, u16_max - 1, 0, 16),
            (60, 1, u16_max, 16), // exactly u16::MAX in both counters: still narrow
            (61, 0, 1, 32),       // one past: widens
            (21_600, u32_max, 0, 32), // next bucket, exactly u32::MAX: no further
            (21_601, 1, 0, 64),   // one past u32::MAX
            (21_602, u64::MAX, 0, 64), // saturates at u64::MAX only
        ];
        for (dt, good, bad, bits) in steps {
            ring.add(start + dt, good, bad);
            assert_eq!(ring.counter_bits(), bits, "at +{dt}");
        }
        // The running sum saturates too.
        assert_eq!(ring.window(start + 21_602, 0).good, u64::MAX as f64);
    }
}
