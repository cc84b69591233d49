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
//! Slots: every ring starts *good-only*, one `u16` per bucket holding its good count,
//! its bad count implicitly 0 ([`SlotForm::Good16`]). The first add with a bad event, or
//! one that would push a bucket's good count past `u16::MAX`, widens this ring of this
//! series only to `[good, bad]` pairs of the narrowest counter type that holds the
//! values (`u16`, `u32`, or for the period ring `u64`); later adds widen the pairs
//! further the same way, the first time a bucket would pass what they hold.
//!
//! Why good-only first: an SLO is mostly good (99.9% for a typical objective), and a
//! healthy tenant never sends a bad event into most of its rings, so their bad column
//! is all zeros, yet it was half of the slot memory. A new series carries no bad column
//! at all (718 bytes of slots instead of 1,436, see `series.rs`); a ring pays for its
//! bad counters from its first bad event on. Why `u16`: most series are small tenants
//! whose buckets never get past `u16::MAX`, and `u16` halves memory again against `u32`.
//! The `u16` thresholds (good-only or pairs alike), for one tenant on one node:
//!
//! | ring          | `u16` overflows above | `u32` overflows above           |
//! |---------------|-----------------------|---------------------------------|
//! | 10 s          | 6,553 req/s           | 429 M req/s                     |
//! | 1 min         | 1,092 req/s           | 71.6 M req/s                    |
//! | 5 min         | 218 req/s             | 14.3 M req/s                    |
//! | 1 h           | 18.2 req/s            | 1.19 M req/s                    |
//! | period (6 h)  | 3.0 req/s (30d)       | 199 k req/s (30d)               |
//!
//! The forms, narrowest first, and the bytes per slot:
//!
//! | form              | holds                                   | bytes |
//! |-------------------|-----------------------------------------|-------|
//! | good-only `u16`   | good <= `u16::MAX`, bad = 0             | 2     |
//! | `u16` pairs       | good and bad <= `u16::MAX`              | 4     |
//! | `u32` pairs       | good and bad <= `u32::MAX`              | 8     |
//! | `u64` pairs       | anything (period ring only)             | 16    |
//!
//! A ring can skip forms (good-only -> `u32` pairs when the first bad event, or a good
//! count, needs `u32` at once). The 10 s, 1 min, 5 min and 1 h rings widen up to `u32`
//! pairs and then saturate at `u32::MAX` (far beyond what one node's agent sees for one
//! tenant): saturating slots absorb what fits and the running sums only ever add what a
//! slot actually absorbed, so sums and slots stay consistent even then. The period ring
//! widens up to `u64` pairs and never saturates below `u64::MAX`: a period's budget must
//! never undercount, and a busy ingress node can pass 200 k req/s for one tenant. A ring
//! that widened stays wide (narrowing back when the big buckets, or the bad events,
//! expire would save little and could flip back and forth); a checkpoint restore picks
//! the narrowest form that holds the stored values ([`Ring::from_parts`]), good-only
//! when every stored bad count is 0. Widening, one new slot array, is the only
//! allocation of a series after its creation; it happens at most three times per ring
//! (twice for the fixed rings).
//!
//! Recording costs one branch on the slot form. Reading a window never looks at the
//! slots (see [`Ring`]), so it does not depend on the form at all.

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

/// One bucket's `[good, bad]` counts, stored in one of the slot forms.
trait Slot: Copy + Default + Debug + 'static {
    /// Largest count this form holds in a counter.
    const MAX: u64;
    /// `[good, bad]`.
    fn counts(self) -> [u64; 2];
    /// True when this form stores `counts` exactly.
    fn holds(counts: [u64; 2]) -> bool;
    /// `counts` with each counter saturated at [`Slot::MAX`]. Only called with a bad
    /// count a form can store (0 for good-only slots): widening and restoring pick a
    /// form that [`Slot::holds`] the counts, and only pairs saturate.
    fn saturating_from(counts: [u64; 2]) -> Self;
}

/// `[good, bad]` pairs.
impl<C: Counter> Slot for [C; 2] {
    const MAX: u64 = C::MAX;
    #[inline]
    fn counts(self) -> [u64; 2] {
        self.map(Counter::get)
    }
    #[inline]
    fn holds(counts: [u64; 2]) -> bool {
        counts[GOOD] <= C::MAX && counts[BAD] <= C::MAX
    }
    #[inline]
    fn saturating_from(counts: [u64; 2]) -> Self {
        counts.map(C::saturating_from)
    }
}

/// A good count; the bad count is 0 (the form cannot store any other).
#[derive(Debug, Clone, Copy, Default)]
#[repr(transparent)]
struct GoodOnly(u16);

impl Slot for GoodOnly {
    const MAX: u64 = u16::MAX as u64;
    #[inline]
    fn counts(self) -> [u64; 2] {
        [u64::from(self.0), 0]
    }
    #[inline]
    fn holds(counts: [u64; 2]) -> bool {
        counts[GOOD] <= Self::MAX && counts[BAD] == 0
    }
    #[inline]
    fn saturating_from(counts: [u64; 2]) -> Self {
        debug_assert_eq!(counts[BAD], 0, "a good-only slot cannot store bad events");
        GoodOnly(u16::saturating_from(counts[GOOD]))
    }
}

/// How a ring stores its buckets, narrowest first (the order of widening).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SlotForm {
    /// Good counts only, as `u16`; every bad count is 0.
    Good16,
    /// `[good, bad]` as `u16`.
    U16,
    /// `[good, bad]` as `u32`.
    U32,
    /// `[good, bad]` as `u64` (period ring only).
    U64,
}

impl SlotForm {
    /// The narrowest form whose slots hold `counts`.
    pub fn to_hold(counts: [u64; 2]) -> Self {
        if GoodOnly::holds(counts) {
            Self::Good16
        } else if <[u16; 2]>::holds(counts) {
            Self::U16
        } else if <[u32; 2]>::holds(counts) {
            Self::U32
        } else {
            Self::U64
        }
    }
}

/// The slot array, in its current form.
#[derive(Debug, Clone)]
enum Slots<const N: usize> {
    Good16(Box<[GoodOnly; N]>),
    U16(Box<[[u16; 2]; N]>),
    U32(Box<[[u32; 2]; N]>),
    U64(Box<[[u64; 2]; N]>),
}

/// Runs `$body` with `$s` bound to the slot array in its actual form.
macro_rules! at_width {
    ($slots:expr, $s:ident => $body:expr) => {
        match $slots {
            Slots::Good16($s) => $body,
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
/// Slots start good-only and widen on demand to `[good, bad]` pairs up to `M` (see the
/// module doc): `u32` for the fixed rings, which saturate there, `u64` for the period
/// ring.
///
/// Hot/cold split: the header (head, running sums, cached oldest bucket, slot form) is
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

/// Equal when they hold the same counts, whatever the slot form.
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

    /// Heap bytes behind a new ring (its good-only slot array): what a ring costs until
    /// its first bad event or `u16` overflow.
    pub const NEW_HEAP_BYTES: usize = std::mem::size_of::<[GoodOnly; N]>();

    /// An empty ring (good-only slots) whose newest bucket contains `now`.
    pub fn new(geometry: G, now: u64) -> Self {
        let () = Self::VALID;
        Self {
            head: now / u64::from(geometry.width()),
            geometry,
            sums: [[0; 2]; W],
            oldest: [[M::default(); 2]; W],
            slots: Slots::Good16(Box::new([GoodOnly::default(); N])),
        }
    }

    /// Rebuilds a ring from stored counts (`counts[i]` is slot `i`), recomputing the
    /// running sums (stored sums are never trusted). The slots get the narrowest form
    /// that holds every count (good-only when every bad count is 0); counts above
    /// `M::MAX` saturate.
    pub fn from_parts(geometry: G, head: u64, counts: &[[u64; 2]; N]) -> Self {
        let mut ring = Self::new(geometry, 0);
        ring.head = head;
        let mut largest = [0u64; 2];
        for count in counts {
            largest = [largest[GOOD].max(count[GOOD]), largest[BAD].max(count[BAD])];
        }
        ring.widen_to_hold(largest);
        at_width!(&mut ring.slots, s => {
            for (slot, &count) in s.iter_mut().zip(counts) {
                *slot = Slot::saturating_from(count);
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
        at_width!(&self.slots, s => s[i].counts())
    }

    /// Calls `f` with `[good, bad]` of every slot, in slot order.
    pub fn for_each_slot(&self, mut f: impl FnMut([u64; 2])) {
        at_width!(&self.slots, s => s.iter().for_each(|slot| f(slot.counts())))
    }

    /// How the slot array stores its counts right now.
    pub fn form(&self) -> SlotForm {
        match self.slots {
            Slots::Good16(_) => SlotForm::Good16,
            Slots::U16(_) => SlotForm::U16,
            Slots::U32(_) => SlotForm::U32,
            Slots::U64(_) => SlotForm::U64,
        }
    }

    /// Heap bytes behind this ring (the slot array in its current form).
    pub fn heap_bytes(&self) -> usize {
        at_width!(&self.slots, s => std::mem::size_of_val::<[_; N]>(s))
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
            // Everything expired. The slots keep their form (see the module doc).
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

    /// Adds events observed at `now` (advancing first). If the newest bucket's counts
    /// would no longer fit the slots (a first bad event in good-only slots, or a counter
    /// past what they hold), the ring first widens to the narrowest form that holds
    /// them, up to `M` pairs (where it saturates).
    #[inline]
    pub fn add(&mut self, now: u64, good: u64, bad: u64) {
        self.advance(now);
        if !self.add_to_newest(good, bad) {
            self.widen_and_add(good, bad);
        }
    }

    /// Adds to the newest bucket, unless that needs a wider form (then `false`, nothing
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
        self.widen_to_hold([
            newest[GOOD].saturating_add(good),
            newest[BAD].saturating_add(bad),
        ]);
        let added = self.add_to_newest(good, bad);
        debug_assert!(added, "widened ring must take the add");
    }

    /// Widens the slots (never narrows) to the narrowest form that holds `counts`, each
    /// capped at `M::MAX`. Lossless: every slot keeps its counts (each form holds all
    /// counts of the narrower ones), sums and cached oldest buckets are untouched.
    fn widen_to_hold(&mut self, counts: [u64; 2]) {
        let target = SlotForm::to_hold(counts.map(|c| c.min(M::MAX)));
        if target <= self.form() {
            return;
        }
        self.slots = at_width!(&self.slots, s => match target {
            SlotForm::Good16 => return, // never wider than the current form
            SlotForm::U16 => Slots::U16(widened(s)),
            SlotForm::U32 => Slots::U32(widened(s)),
            SlotForm::U64 => Slots::U64(widened(s)),
        });
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

/// The slot array in the wider form `D`: every slot keeps its counts.
fn widened<S: Slot, D: Slot, const N: usize>(slots: &[S; N]) -> Box<[D; N]> {
    Box::new(slots.map(|slot| {
        let counts = slot.counts();
        debug_assert!(D::holds(counts), "widening must be lossless");
        D::saturating_from(counts)
    }))
}

/// Advances `head` by `gap < N` buckets: subtracts what leaves each window from its
/// running sum and clears the reused slots.
fn expire<S: Slot, const N: usize, const W: usize>(
    slots: &mut [S; N],
    head: &mut u64,
    sums: &mut [[u64; 2]; W],
    spans: [u16; W],
    gap: u64,
) {
    for _ in 0..gap {
        for (sum, &k) in sums.iter_mut().zip(&spans) {
            let leaving = slots[slot_index::<N>(*head, u64::from(k))].counts();
            sum[GOOD] = sum[GOOD].saturating_sub(leaving[GOOD]);
            sum[BAD] = sum[BAD].saturating_sub(leaving[BAD]);
        }
        *head += 1;
        slots[slot_index::<N>(*head, 0)] = Default::default();
    }
}

/// Adds `good`/`bad` to one slot of form `S` in a ring that widens up to `M` pairs, and
/// what the slot absorbed to every running sum. Returns `false`, changing nothing, when
/// `S` cannot hold the new counts while it is narrower than `M` pairs (a good-only slot
/// holds no bad event at all); at `M` pairs it saturates.
#[inline]
fn add_to<S: Slot, M: Counter, const W: usize>(
    slot: &mut S,
    sums: &mut [[u64; 2]; W],
    good: u64,
    bad: u64,
) -> bool {
    let old = slot.counts();
    let new = [old[GOOD].saturating_add(good), old[BAD].saturating_add(bad)];
    if S::MAX < M::MAX && !S::holds(new) {
        return false;
    }
    let stored = S::saturating_from(new);
    let now = stored.counts();
    *slot = stored;
    for kind in [GOOD, BAD] {
        let absorbed = now[kind] - old[kind];
        if absorbed == 0 {
            continue;
        }
        for sum in sums.iter_mut() {
            sum[kind] = sum[kind].saturating_add(absorbed);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

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
        assert_eq!((ring.form(), ring.heap_bytes()), (SlotForm::Good16, 62));
        ring.add(0, u64::MAX, 0);
        ring.add(1, 5, 0);
        assert_eq!((ring.form(), ring.heap_bytes()), (SlotForm::U32, 248));
        assert_eq!(ring.slot(0), [u64::from(u32::MAX), 0]);
        let rebuilt = TenSec::from_parts(Layout10s, ring.head(), &slots_of(&ring));
        assert_eq!(rebuilt, ring);
        assert_eq!(rebuilt.form(), SlotForm::U32);
        ring.advance(10_000);
        assert_eq!(ring.window(10_000, 0), Counts::default());
        assert_eq!(ring.form(), SlotForm::U32, "a widened ring stays wide");
    }

    #[test]
    fn good_only_ring_holds_u16_max_good_then_widens_to_u32_pairs() {
        let u16_max = u64::from(u16::MAX);
        let mut ring = TenSec::new(Layout10s, 0);
        ring.add(0, u16_max - 1, 0);
        ring.add(1, 1, 0);
        ring.add(2, 0, 0);
        assert_eq!((ring.form(), ring.heap_bytes()), (SlotForm::Good16, 62));
        assert_eq!(ring.slot(0), [u16_max, 0]);
        // One more good event than a `u16` holds: no bad event yet, but the narrowest
        // pair form that holds it.
        ring.add(3, 1, 0);
        assert_eq!((ring.form(), ring.heap_bytes()), (SlotForm::U32, 248));
        assert_eq!(ring.slot(0), [u16_max + 1, 0]);
        assert_eq!(ring.window(9, 0).good, (u16_max + 1) as f64);
        assert_eq!(ring.window(9, 0).bad, 0.0);
    }

    /// A first bad event turns good-only slots into `u16` pairs: every good count stays,
    /// sums and cached oldest buckets are untouched (reads before and after differ only
    /// by the new event).
    #[test]
    fn first_bad_event_widens_good_only_slots_to_u16_pairs_losslessly() {
        let u16_max = u64::from(u16::MAX);
        let mut ring: Ring<u32, 61, 2, Layout1m> = Ring::new(Layout1m, 0);
        for t in (0..3_600).step_by(20) {
            ring.add(t, t % 7 + 1, 0);
        }
        ring.add(3_540, u16_max - ring.slot(59)[0], 0);
        assert_eq!(ring.slot(59)[0], u16_max);
        assert_eq!(ring.form(), SlotForm::Good16);
        let before_slots = slots_of(&ring);
        let reads = |ring: &Ring<u32, 61, 2, Layout1m>| {
            [3_599, 3_600, 3_650, 5_000].map(|t| [ring.window(t, 0), ring.window(t, 1)])
        };
        let before = reads(&ring);

        ring.add(3_599, 0, 1);
        assert_eq!((ring.form(), ring.heap_bytes()), (SlotForm::U16, 244));
        let mut expected = before_slots;
        expected[59][1] = 1;
        assert_eq!(slots_of(&ring), expected);
        let after = reads(&ring);
        for (b, a) in before.iter().flatten().zip(after.iter().flatten()) {
            assert_eq!(a.good, b.good);
        }
        // The bad event is in the newest bucket: fully inside every read up to the
        // window's end.
        assert_eq!(after[0][0].bad, 1.0);
        assert_eq!(after[0][1].bad, 1.0);
        assert_eq!(
            ring,
            Ring::from_parts(Layout1m, ring.head(), &slots_of(&ring))
        );
    }

    #[test]
    fn first_bad_event_too_big_for_u16_widens_straight_to_u32_or_u64_pairs() {
        let u16_max = u64::from(u16::MAX);
        let u32_max = u64::from(u32::MAX);
        let good_only = || {
            let mut ring = TenSec::new(Layout10s, 0);
            ring.add(0, 7, 0);
            ring
        };
        let mut ring = good_only();
        ring.add(1, 0, u16_max + 1);
        assert_eq!(
            (ring.form(), ring.slot(0)),
            (SlotForm::U32, [7, u16_max + 1])
        );
        // A fixed ring saturates at u32 pairs, even on its first bad event.
        let mut ring = good_only();
        ring.add(1, 0, u64::MAX);
        assert_eq!((ring.form(), ring.slot(0)), (SlotForm::U32, [7, u32_max]));
        assert_eq!(ring.window(1, 0).bad, u32_max as f64);

        let width = 21_600;
        let start = 1_700_000_000 / width * width;
        let period = || {
            let mut ring = Period::new(PeriodLayout::new(21_600), start);
            ring.add(start, 7, 0);
            ring
        };
        for (bad, form) in [
            (1, SlotForm::U16),
            (u16_max, SlotForm::U16),
            (u16_max + 1, SlotForm::U32),
            (u32_max, SlotForm::U32),
            (u32_max + 1, SlotForm::U64),
            (u64::MAX, SlotForm::U64),
        ] {
            let mut ring = period();
            assert_eq!(ring.form(), SlotForm::Good16);
            ring.add(start + 1, 0, bad);
            assert_eq!(ring.form(), form, "bad {bad}");
            let newest = slot_index::<PERIOD_SLOTS>(ring.head(), 0);
            assert_eq!(ring.slot(newest), [7, bad]);
            assert_eq!(ring.window(start + 1, 0).bad, bad as f64);
        }
    }

    #[test]
    fn from_parts_recomputes_sums() {
        let mut ring = Period::new(PeriodLayout::new(21_600), 1_700_000_000);
        for t in (1_700_000_000..1_700_000_000 + 40 * 86_400).step_by(600) {
            ring.add(t, 100, 2);
        }
        assert_eq!(ring.form(), SlotForm::U16, "3,600 events per bucket");
        let rebuilt = Ring::from_parts(PeriodLayout::new(21_600), ring.head(), &slots_of(&ring));
        assert_eq!(rebuilt, ring);
    }

    #[test]
    fn from_parts_picks_the_narrowest_form_and_saturates_above_the_ring_max() {
        use SlotForm::{Good16, U16, U32, U64};
        let mut counts = [[0u64; 2]; 31];
        let narrowest = |counts: &[[u64; 2]; 31]| {
            let period_like: Ring<u64, 31, 1, Layout10s> = Ring::from_parts(Layout10s, 7, counts);
            let fixed = TenSec::from_parts(Layout10s, 7, counts);
            assert_eq!(slots_of(&period_like), *counts, "no saturation below u64");
            (fixed.form(), period_like.form())
        };
        assert_eq!(narrowest(&counts), (Good16, Good16));
        counts[3] = [u64::from(u16::MAX), 0];
        assert_eq!(narrowest(&counts), (Good16, Good16));
        counts[4] = [0, 1];
        assert_eq!(narrowest(&counts), (U16, U16));
        counts[4] = [0, 0];
        counts[30] = [u64::from(u16::MAX) + 1, 0];
        assert_eq!(narrowest(&counts), (U32, U32), "good past u16, no bad");
        counts[30] = [0, 0];
        counts[3] = [u64::from(u16::MAX), 1];
        assert_eq!(narrowest(&counts), (U16, U16));
        counts[5] = [0, u64::from(u16::MAX) + 1];
        assert_eq!(narrowest(&counts), (U32, U32));
        counts[5] = [0, 0];
        counts[9] = [u64::from(u32::MAX) + 1, 0];
        let fixed = TenSec::from_parts(Layout10s, 7, &counts);
        assert_eq!(fixed.form(), U32);
        assert_eq!(fixed.slot(9), [u64::from(u32::MAX), 0], "saturated");
        assert_eq!(fixed.slot(3), [u64::from(u16::MAX), 1]);
        let period_like: Ring<u64, 31, 1, Layout10s> = Ring::from_parts(Layout10s, 7, &counts);
        assert_eq!(period_like.form(), U64);
        counts[3] = [0, 0];
        let period_like: Ring<u64, 31, 1, Layout10s> = Ring::from_parts(Layout10s, 7, &counts);
        assert_eq!(period_like.form(), U64, "good past u32, no bad");
        assert_eq!(slots_of(&period_like), counts);
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
        /// Largest good and largest bad count any bucket ever had.
        largest: [u64; 2],
    }

    impl Reference {
        fn add(&mut self, now: u64, good: u64, bad: u64) {
            self.head = self.head.max(now / self.width);
            let bucket = self.buckets.entry(self.head).or_default();
            bucket[0] = bucket[0].saturating_add(good).min(self.cap);
            bucket[1] = bucket[1].saturating_add(bad).min(self.cap);
            self.largest = [
                self.largest[0].max(bucket[0]),
                self.largest[1].max(bucket[1]),
            ];
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
            for count in self
                .buckets
                .range(cur.saturating_sub(k)..=cur)
                .map(|(_, c)| c)
            {
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
        /// Form a ring that has held these buckets must have: it never narrows, so
        /// the narrowest form holding every bucket it ever had.
        fn form(&self) -> SlotForm {
            let [good, bad] = self.largest;
            if bad == 0 && good <= u64::from(u16::MAX) {
                SlotForm::Good16
            } else {
                match good.max(bad) {
                    v if v <= u64::from(u16::MAX) => SlotForm::U16,
                    v if v <= u64::from(u32::MAX) => SlotForm::U32,
                    _ => SlotForm::U64,
                }
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

    const STEPS: u64 = 20_000;

    /// How a randomized run feeds the ring.
    #[derive(Debug, Clone, Copy)]
    struct Run {
        seed: u64,
        steps: u64,
        /// Before this step every delta is below 50 (the ring stays `u16`).
        calm_until: u64,
        /// Before this step every add is good-only; at it comes the first bad event.
        first_bad: u64,
        /// Size of the first bad event: `Some(class)` (see [`first_bad_size`]), or `None`
        /// for a random class.
        first_bad_class: Option<u64>,
    }

    /// A first bad count of class `class`: 1, up to `u16::MAX`, past `u16::MAX` up to
    /// `u32::MAX`, past `u32::MAX` (the ring's form must hold it at once: good-only ->
    /// `u16`, `u32` or `u64` pairs; fixed rings saturate at `u32`).
    fn first_bad_size(class: u64, rng: &mut Rng) -> u64 {
        let (u16_max, u32_max) = (u64::from(u16::MAX), u64::from(u32::MAX));
        match class % 4 {
            0 => 1,
            1 => 1 + rng.below(u16_max),
            2 => u16_max + 1 + rng.below(u32_max - u16_max),
            _ => u32_max + 1 + rng.below(3),
        }
    }

    /// What a run did to the ring's form.
    #[derive(Debug)]
    struct Forms {
        widest: SlotForm,
        /// Forms just before and just after the first bad event.
        first_bad: Option<(SlotForm, SlotForm)>,
    }

    /// Random adds and advances, with deltas around the `u16` and `u32` limits: the ring
    /// starts good-only, widens exactly when a bucket first holds what its form cannot
    /// (a first bad event, or a count past its counters), and at every step its newest
    /// slot and windows equal the `u64` reference (capped at `u32::MAX` for the fixed
    /// rings, which saturate there), all its slots too every 16 steps and whenever the
    /// form changes; a restore from its slots gives the same ring in the narrowest form
    /// that holds them.
    fn matches_reference<M: Counter, const N: usize, const W: usize, G: Geometry<W>>(
        geometry: G,
        run: Run,
    ) -> Forms {
        let width = u64::from(geometry.width());
        let start = 1_700_000_000 / width * width + width / 3;
        let mut ring: Ring<M, N, W, G> = Ring::new(geometry, start);
        let mut reference = Reference {
            width,
            cap: M::MAX,
            head: start / width,
            buckets: BTreeMap::new(),
            largest: [0; 2],
        };
        let mut rng = Rng(run.seed);
        let mut now = start;
        let mut forms = Forms {
            widest: ring.form(),
            first_bad: None,
        };
        for step in 0..run.steps {
            now += match rng.below(100) {
                0..=59 => 0,
                60..=89 => rng.below(width),
                90..=98 => rng.below(width * 8),
                _ => rng.below(width * N as u64 * 2),
            };
            let calm = step < run.calm_until;
            let delta = |rng: &mut Rng| match rng.below(100) {
                _ if calm => rng.below(50),
                0..=49 => rng.below(50),
                50..=79 => rng.below(3_000),
                80..=94 => rng.below(40_000),
                95..=98 => rng.below(2_000_000_000),
                _ => u64::from(u32::MAX) - rng.below(3),
            };
            let good = delta(&mut rng);
            let bad = match step.cmp(&run.first_bad) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => delta(&mut rng),
                std::cmp::Ordering::Equal => {
                    let class = run.first_bad_class.unwrap_or_else(|| rng.below(4));
                    first_bad_size(class, &mut rng)
                }
            };
            let before = ring.form();
            ring.add(now, good, bad);
            reference.add(now, good, bad);
            assert_eq!(ring.form(), reference.form(), "step {step}, {run:?}");
            if ring.form() != before {
                // Only the add whose newest bucket first needs a wider form widens.
                let newest = reference.bucket(reference.head);
                assert!(SlotForm::to_hold(newest) > before, "step {step}, {run:?}");
            }
            if step == run.first_bad {
                assert!(bad > 0);
                forms.first_bad = Some((before, ring.form()));
            }
            forms.widest = forms.widest.max(ring.form());
            let all_slots = step % 16 == 0 || ring.form() != before || step == run.first_bad;
            for back in 0..if all_slots { N as u64 } else { 1 } {
                let b = reference.head - back;
                assert_eq!(
                    ring.slot(slot_index::<N>(ring.head(), back)),
                    reference.bucket(b),
                    "step {step}, bucket -{back}, {run:?}"
                );
            }
            for later in [now, now + 1, now + width - 1, now + 5 * width] {
                for (i, &k) in G::SPANS.iter().enumerate() {
                    assert_eq!(
                        ring.window(later, i),
                        reference.window(later, u64::from(k)),
                        "step {step}, window {i}, read at +{}, {run:?}",
                        later - now
                    );
                }
            }
            if step % 500 == 0 || step == run.first_bad {
                let slots = slots_of(&ring);
                let rebuilt = Ring::from_parts(geometry, ring.head(), &slots);
                assert_eq!(rebuilt, ring, "step {step}, {run:?}");
                let narrowest = slots.iter().map(|&s| SlotForm::to_hold(s)).max();
                assert_eq!(Some(rebuilt.form()), narrowest, "step {step}, {run:?}");
            }
        }
        forms
    }

    /// Runs of each seed: bad events from the first step (the ring leaves good-only at
    /// once), none at all (it widens to pairs on good counts alone), a first bad event
    /// at a random step after random traffic (the ring is often wide already), and one
    /// run per first-bad size class with a first bad event after calm traffic (the ring
    /// is still good-only then), followed by random traffic for 3,000 steps.
    fn runs(seeds: &[u64]) -> Vec<Run> {
        let mut all = Vec::new();
        for &seed in seeds {
            let mut rng = Rng(seed ^ 0x5DEE_CE66);
            let full = |calm_until, first_bad| Run {
                seed,
                steps: STEPS,
                calm_until,
                first_bad,
                first_bad_class: None,
            };
            let late_bad = rng.below(STEPS);
            all.extend([
                full(0, 0),
                full(0, STEPS),
                full(rng.below(late_bad + 1), late_bad),
            ]);
            for class in 0..4 {
                let first_bad = rng.below(5_000);
                all.push(Run {
                    seed: seed.wrapping_add(class),
                    steps: first_bad + 3_000,
                    calm_until: first_bad + 1,
                    first_bad,
                    first_bad_class: Some(class),
                });
            }
        }
        all
    }

    /// Checks every run with `check` and returns the widest form and the set of (form
    /// before, form after) of the first bad events.
    fn check_runs(
        seeds: &[u64],
        check: impl Fn(Run) -> Forms,
    ) -> (SlotForm, BTreeSet<(SlotForm, SlotForm)>) {
        let mut widest = SlotForm::Good16;
        let mut firsts = BTreeSet::new();
        for run in runs(seeds) {
            let forms = check(run);
            widest = widest.max(forms.widest);
            if run.first_bad < run.steps {
                firsts.insert(forms.first_bad.expect("a first bad event"));
            } else {
                // Widened on good counts alone, to pairs.
                assert_eq!(forms.first_bad, None);
                assert!(forms.widest >= SlotForm::U32, "{run:?}: {forms:?}");
            }
        }
        (widest, firsts)
    }

    #[test]
    fn fixed_ring_widens_to_u32_then_saturates_like_a_capped_u64_ring() {
        use SlotForm::{Good16, U16, U32};
        let seeds = [1, 0x9E37_79B9_7F4A_7C15, 42];
        let (widest, firsts) = check_runs(&seeds, |run| {
            matches_reference::<u32, 61, 2, Layout1m>(Layout1m, run)
        });
        assert_eq!(widest, U32);
        // First bad events met good-only and wide rings, and took good-only ones to
        // `u16` and straight to `u32` pairs.
        let expected = BTreeSet::from([(Good16, U16), (Good16, U32), (U32, U32)]);
        assert_eq!(firsts, expected);
        let (widest, firsts) = check_runs(&seeds, |run| {
            matches_reference::<u32, 31, 1, Layout10s>(Layout10s, run)
        });
        assert_eq!(widest, U32);
        assert_eq!(firsts, expected);
    }

    #[test]
    fn period_ring_widens_to_u64_and_counts_like_a_u64_ring() {
        use SlotForm::{Good16, U16, U32, U64};
        let (widest, firsts) = check_runs(&[7, 0xDEAD_BEEF, 1_234_567], |run| {
            matches_reference::<u64, PERIOD_SLOTS, 1, PeriodLayout>(PeriodLayout::new(600), run)
        });
        assert_eq!(widest, U64);
        for first in [(Good16, U16), (Good16, U32), (Good16, U64)] {
            assert!(firsts.contains(&first), "{first:?} in {firsts:?}");
        }
        assert!(
            firsts.iter().any(|&(before, _)| before >= U32),
            "a first bad event in a ring already wide: {firsts:?}"
        );
    }

    #[test]
    fn widening_steps_through_each_form_at_the_limits() {
        use SlotForm::{Good16, U16, U32, U64};
        let width = 21_600;
        let start = 1_700_000_000 / width * width;
        let mut ring = Period::new(PeriodLayout::new(21_600), start);
        let u16_max = u64::from(u16::MAX);
        let u32_max = u64::from(u32::MAX);
        let steps = [
            (0, u16_max - 1, 0, Good16, 242),
            (59, 1, 0, Good16, 242), // exactly u16::MAX good: still good-only
            (60, 0, u16_max, U16, 484), // first bad event, exactly u16::MAX: u16 pairs
            (61, 0, 1, U32, 968),    // one past: widens
            (21_600, u32_max, 0, U32, 968), // next bucket, exactly u32::MAX: no further
            (21_601, 1, 0, U64, 1_936), // one past u32::MAX
            (21_602, u64::MAX, 0, U64, 1_936), // saturates at u64::MAX only
        ];
        for (dt, good, bad, form, bytes) in steps {
            ring.add(start + dt, good, bad);
            assert_eq!((ring.form(), ring.heap_bytes()), (form, bytes), "at +{dt}");
        }
        // The running sum saturates too.
        assert_eq!(ring.window(start + 21_602, 0).good, u64::MAX as f64);
    }
}
