//! Binary encoding of one series for the checkpoint store.
//!
//! Little-endian, fixed layout (the store's format version covers changes to it).
//! Bucket counters are LEB128 varints: most buckets of most tenants are zero or small,
//! so a series takes ~0.4-1.5 KiB on disk instead of its ~3 KiB in memory.
//!
//! ```text
//! u64 tracked_since, u64 period_since, u64 last_event
//! u8  alert (0 none, 1 some) [u8 severity, u8 long window, u8 short window,
//!                             u64 tier_since, u64 firing_since]
//! ring 10s, 1m, 5m, 1h: u64 head, then varint good, varint bad per slot
//! u8  period kind: 0 rolling [u32 width, u64 head, 121 x (varint good, varint bad)]
//!                  1 calendar [u64 month start, u64 good, u64 bad]
//! ```
//!
//! Counter width is not part of the layout: every bucket counter is a varint, whether the
//! ring in memory holds good-only `u16` slots or `u16`, `u32` or `u64` pairs. So when the
//! 1 h ring went from `u64` to saturating `u32` slots, the period ring to `u32` slots that
//! widen on demand, then every ring to `u16` slots that widen on demand, and then to
//! good-only `u16` slots (no bad counters until a bad event), the layout, and with it
//! the store's format version, stayed the same: a good-only slot is written as a good
//! count and a bad count of 0. A decoded ring gets the narrowest form that holds its
//! stored counters (good-only when every bad counter is 0), whatever form it had when
//! saved (a ring that widened for a burst or for a bad event comes back narrow once
//! those have left it). A record written before these
//! changes decodes as it always did, except that a 1 h bucket above `u32::MAX` saturates
//! (exactly what the live ring now does with such a bucket) instead of making the whole
//! file unusable. An older agent reads records written by this one (after a rollback),
//! since their values always fit its slots (`u32` for the fixed rings, `u64` at most for
//! the period ring).
//!
//! Alert tiers are stored by shape (severity and windows), not by index, so a restore
//! into a config with different tiers maps them or drops the alert. The per-SLO objective
//! is not stored: it comes from the current config.

use thiserror::Error;

use super::alert::Severity;
use super::ring::{Counter, Geometry, Ring};
use super::series::{
    Layout1h, Layout1m, Layout5m, Layout10s, MonthCounts, PeriodBuffer, PeriodLayout, Ring1h,
    Ring1m, Ring5m, Ring10s, Series,
};
use super::slo::Slo;
use super::window::Window;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum CodecError {
    #[error("series record truncated at byte {0}")]
    Truncated(usize),
    #[error("series record has invalid {what} {value} at byte {at}")]
    Invalid {
        what: &'static str,
        value: u64,
        at: usize,
    },
    #[error("series record has {0} unexpected trailing bytes")]
    Trailing(usize),
}

/// An alert state as stored: by tier shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredAlert {
    pub severity: Severity,
    pub long: Window,
    pub short: Window,
    pub tier_since: u64,
    pub firing_since: u64,
}

/// A decoded series, not yet matched against the current config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredSeries {
    pub tracked_since: u64,
    pub period_since: u64,
    pub last_event: u64,
    pub alert: Option<StoredAlert>,
    pub s10: Ring10s,
    pub m1: Ring1m,
    pub m5: Ring5m,
    pub h1: Ring1h,
    pub period: PeriodBuffer,
}

pub(crate) fn encode(series: &Series, slo: &Slo, out: &mut Vec<u8>) {
    out.extend_from_slice(&series.tracked_since.to_le_bytes());
    out.extend_from_slice(&series.period_since.to_le_bytes());
    out.extend_from_slice(&series.last_event.to_le_bytes());
    match series
        .alert
        .and_then(|a| slo.tiers.get(usize::from(a.tier)).map(|t| (a, t)))
    {
        Some((state, tier)) => {
            out.push(1);
            out.push(match tier.severity {
                Severity::Page => 0,
                Severity::Ticket => 1,
            });
            out.push(tier.long.index() as u8);
            out.push(tier.short.index() as u8);
            out.extend_from_slice(&state.tier_since.to_le_bytes());
            out.extend_from_slice(&state.firing_since.to_le_bytes());
        }
        None => out.push(0),
    }
    let b = &series.buffers;
    encode_ring(&b.s10, out);
    encode_ring(&b.m1, out);
    encode_ring(&b.m5, out);
    encode_ring(&b.h1, out);
    match &b.period {
        PeriodBuffer::Rolling(ring) => {
            out.push(0);
            out.extend_from_slice(&ring.width().to_le_bytes());
            encode_ring(ring, out);
        }
        PeriodBuffer::Calendar(month) => {
            out.push(1);
            for v in [month.start, month.good, month.bad] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn encode_ring<M: Counter, const N: usize, const W: usize, G: Geometry<W>>(
    ring: &Ring<M, N, W, G>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&ring.head().to_le_bytes());
    ring.for_each_slot(|slot| {
        for counter in slot {
            put_varint(counter, out);
        }
    });
}

/// LEB128: 7 bits per byte, high bit set on all but the last byte.
fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn decode(bytes: &[u8]) -> Result<StoredSeries, CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let tracked_since = r.u64()?;
    let period_since = r.u64()?;
    let last_event = r.u64()?;
    let alert = match r.u8()? {
        0 => None,
        1 => {
            let severity = match r.u8()? {
                0 => Severity::Page,
                1 => Severity::Ticket,
                v => return Err(r.invalid("severity", v.into())),
            };
            let long = r.window()?;
            let short = r.window()?;
            Some(StoredAlert {
                severity,
                long,
                short,
                tier_since: r.u64()?,
                firing_since: r.u64()?,
            })
        }
        v => return Err(r.invalid("alert flag", v.into())),
    };
    let s10 = r.ring(Layout10s, Overflow::Reject)?;
    let m1 = r.ring(Layout1m, Overflow::Reject)?;
    let m5 = r.ring(Layout5m, Overflow::Reject)?;
    // Saturating: before the 1 h ring had `u32` slots, its buckets could legitimately
    // hold more (see the module doc).
    let h1 = r.ring(Layout1h, Overflow::Saturate)?;
    let period = match r.u8()? {
        0 => {
            let width = r.u32()?;
            if width == 0 {
                return Err(r.invalid("period bucket width", 0));
            }
            // Never overflows: the period ring holds any `u64`.
            PeriodBuffer::Rolling(r.ring(PeriodLayout::new(width), Overflow::Reject)?)
        }
        1 => PeriodBuffer::Calendar(MonthCounts {
            start: r.u64()?,
            good: r.u64()?,
            bad: r.u64()?,
        }),
        v => return Err(r.invalid("period kind", v.into())),
    };
    if r.pos != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - r.pos));
    }
    Ok(StoredSeries {
        tracked_since,
        period_since,
        last_event,
        alert,
        s10,
        m1,
        m5,
        h1,
        period,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const K: usize>(&mut self) -> Result<[u8; K], CodecError> {
        let end = self
            .pos
            .checked_add(K)
            .ok_or(CodecError::Truncated(self.pos))?;
        let chunk = self
            .bytes
            .get(self.pos..end)
            .and_then(|s| <[u8; K]>::try_from(s).ok())
            .ok_or(CodecError::Truncated(self.pos))?;
        self.pos = end;
        Ok(chunk)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn invalid(&self, what: &'static str, value: u64) -> CodecError {
        CodecError::Invalid {
            what,
            value,
            at: self.pos,
        }
    }
    fn window(&mut self) -> Result<Window, CodecError> {
        let v = self.u8()?;
        Window::ALL
            .get(usize::from(v))
            .copied()
            .ok_or_else(|| self.invalid("window", v.into()))
    }
    fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::Invalid {
            what: "varint",
            value,
            at: start,
        })
    }
    /// A ring as stored, with the narrowest slots that hold its counters (see
    /// [`Ring::from_parts`]). `overflow` says what a counter above the ring's widest
    /// slots means.
    fn ring<M: Counter, const N: usize, const W: usize, G: Geometry<W>>(
        &mut self,
        geometry: G,
        overflow: Overflow,
    ) -> Result<Ring<M, N, W, G>, CodecError> {
        let head = self.u64()?;
        let mut counts = [[0; 2]; N];
        for slot in &mut counts {
            for counter in slot {
                *counter = self.varint()?;
                if *counter > M::MAX && overflow == Overflow::Reject {
                    return Err(self.invalid("bucket counter", *counter));
                }
            }
        }
        Ok(Ring::from_parts(geometry, head, &counts))
    }
}

/// What a stored bucket counter larger than a ring can hold means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Corruption: the record is unusable.
    Reject,
    /// A bucket written when the ring had wider slots: it saturates.
    Saturate,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::alert::AlertState;
    use crate::engine::ring::SlotForm;
    use crate::engine::series::PeriodRing;
    use crate::engine::spec::SloConfig;
    use std::sync::Arc;

    fn slo(yaml_period: &str) -> Slo {
        let yaml = format!(
            "slos:\n  - {{ name: a, service: s, objective: 99.9, {yaml_period} sli: {{ availability: {{}} }} }}\n"
        );
        let config: SloConfig = serde_saphyr::from_str(&yaml).expect("yaml");
        let set = config.validate().expect("valid");
        set.iter().next().expect("one slo").clone()
    }

    fn sample(slo: &Slo) -> Series {
        let now = 1_700_000_000;
        let bounds = slo.period.bounds(now);
        let mut s = Series::new(slo, Arc::from("acme"), now, bounds);
        for t in now..now + 5_000 {
            s.record(t, slo.period.bounds(t), 100, t % 3);
        }
        s.alert = Some(AlertState {
            tier: 1,
            tier_since: now + 10,
            firing_since: now + 5,
        });
        s
    }

    fn roundtrip(series: &Series, slo: &Slo) -> StoredSeries {
        let mut buf = Vec::new();
        encode(series, slo, &mut buf);
        decode(&buf).expect("decodes")
    }

    /// Slot forms of the rings (four with a calendar period, five with a rolling one).
    fn forms(rings: (&Ring10s, &Ring1m, &Ring5m, &Ring1h, &PeriodBuffer)) -> Vec<SlotForm> {
        let mut all = vec![
            rings.0.form(),
            rings.1.form(),
            rings.2.form(),
            rings.3.form(),
        ];
        if let PeriodBuffer::Rolling(ring) = rings.4 {
            all.push(ring.form());
        }
        all
    }

    fn stored_forms(s: &StoredSeries) -> Vec<SlotForm> {
        forms((&s.s10, &s.m1, &s.m5, &s.h1, &s.period))
    }

    fn live_forms(s: &Series) -> Vec<SlotForm> {
        let b = &s.buffers;
        forms((&b.s10, &b.m1, &b.m5, &b.h1, &b.period))
    }

    fn assert_same_counts(stored: &StoredSeries, series: &Series) {
        let b = &series.buffers;
        assert_eq!(stored.s10, b.s10);
        assert_eq!(stored.m1, b.m1);
        assert_eq!(stored.m5, b.m5);
        assert_eq!(stored.h1, b.h1);
        assert_eq!(stored.period, b.period);
    }

    #[test]
    fn roundtrip_rolling_and_calendar() {
        use SlotForm::{U16, U32};
        for period in ["window: 30d,", "calendar: month, timezone: Europe/Paris,"] {
            let slo = slo(period);
            let series = sample(&slo);
            let stored = roundtrip(&series, &slo);
            assert_eq!(stored.tracked_since, series.tracked_since);
            assert_eq!(stored.last_event, series.last_event);
            assert_same_counts(&stored, &series);
            // 100 req/s with bad events: the 1 h and 6 h buckets need u32 pairs, the
            // others u16 pairs.
            let mut expected = vec![U16, U16, U16, U32];
            if period.starts_with("window") {
                expected.push(U32);
            }
            assert_eq!(stored_forms(&stored), expected);
            assert_eq!(stored_forms(&stored), live_forms(&series));
            let alert = stored.alert.expect("alert kept");
            assert_eq!((alert.long, alert.short), (Window::H6, Window::M30));
            assert_eq!(
                (alert.tier_since, alert.firing_since),
                (1_700_000_010, 1_700_000_005)
            );
        }
    }

    /// Widened rings survive a save and restore exactly, at the width they need.
    #[test]
    fn roundtrip_widened_rings() {
        use SlotForm::{Good16, U16, U32, U64};
        let slo = slo("window: 30d,");
        let mut series = sample(&slo);
        assert_eq!(live_forms(&series), [U16, U16, U16, U32, U32]);

        // 70,000 events in one second: the 10 s, 1 min and 5 min buckets pass u16::MAX.
        let t = series.last_event + 1;
        series.record(t, slo.period.bounds(t), 70_000, 3);
        assert_eq!(live_forms(&series), [U32; 5]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [U32; 5]);

        // 5 billion more: the fixed rings saturate at u32::MAX, the period ring widens to
        // u64 and stays exact.
        series.record(t, slo.period.bounds(t), 5_000_000_000, 7);
        assert_eq!(live_forms(&series), [U32, U32, U32, U32, U64]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [U32, U32, U32, U32, U64]);
        let newest = (stored.s10.head() % 31) as usize;
        assert_eq!(stored.s10.slot(newest), [u64::from(u32::MAX), 10]);
        assert_eq!(
            series.buffers.period(t, slo.period.bounds(t)).good,
            100.0 * 5_000.0 + 70_000.0 + 5_000_000_000.0
        );
        let PeriodBuffer::Rolling(ring) = &stored.period else {
            panic!("rolling");
        };
        assert_eq!(
            ring.window(t, 0),
            series.buffers.period(t, slo.period.bounds(t))
        );

        // Once the burst, and every bad event, has left the 10 s and 1 min rings they
        // stay wide in memory (no flip-flopping), but a restore picks the narrowest form
        // again: good-only for those two, empty now.
        let later = t + 80 * 60;
        series.buffers.advance(later, slo.period.bounds(later));
        assert_eq!(live_forms(&series), [U32, U32, U32, U32, U64]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [Good16, Good16, U32, U32, U64]);
    }

    /// A series without bad events stays good-only through a save and restore (where
    /// its buckets fit `u16`); one bad event turns its rings into pairs, and a restore
    /// brings back good-only slots in the rings that event has left.
    #[test]
    fn roundtrip_good_only_series() {
        use SlotForm::{Good16, U16, U32};
        let slo = slo("window: 30d,");
        let now = 1_700_000_000;
        let mut series = Series::new(&slo, Arc::from("calm"), now, slo.period.bounds(now));
        assert_eq!(live_forms(&series), [Good16; 5]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [Good16; 5]);

        // 100 req/s, all good: the 1 h and 6 h buckets pass u16::MAX, u32 pairs.
        for t in now..now + 5_000 {
            series.record(t, slo.period.bounds(t), 100, 0);
        }
        assert_eq!(live_forms(&series), [Good16, Good16, Good16, U32, U32]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [Good16, Good16, Good16, U32, U32]);

        let t = now + 5_000;
        series.record(t, slo.period.bounds(t), 100, 1);
        assert_eq!(live_forms(&series), [U16, U16, U16, U32, U32]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [U16, U16, U16, U32, U32]);
        assert_eq!(stored.s10.window(t, 0).bad, 1.0);

        // 62 minutes later the bad event has left the 10 s and 1 min rings (not the
        // 5 min one, 6 h long).
        let later = t + 62 * 60;
        series.buffers.advance(later, slo.period.bounds(later));
        assert_eq!(live_forms(&series), [U16, U16, U16, U32, U32]);
        let stored = roundtrip(&series, &slo);
        assert_same_counts(&stored, &series);
        assert_eq!(stored_forms(&stored), [Good16, Good16, U16, U32, U32]);
    }

    /// A record as agents wrote it while the 1 h and period rings had `u64` slots: their
    /// own encoding path, `encode_ring` over rings that hold `u64` counts.
    fn u64_layout_record(
        rings: (&Ring10s, &Ring1m, &Ring5m),
        h1: &Ring<u64, 73, 2, Layout1h>,
        period: &PeriodRing,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [1_700_000_000u64, 1_700_000_000, 1_700_300_000] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(0); // no alert
        encode_ring(rings.0, &mut out);
        encode_ring(rings.1, &mut out);
        encode_ring(rings.2, &mut out);
        encode_ring(h1, &mut out);
        out.push(0); // rolling
        out.extend_from_slice(&period.width().to_le_bytes());
        encode_ring(period, &mut out);
        out
    }

    #[test]
    fn decodes_records_of_the_u64_layout() {
        use SlotForm::{U16, U32, U64};
        let start = 1_700_000_000;
        let mut s10 = Ring10s::new(Layout10s, start);
        let mut m1 = Ring1m::new(Layout1m, start);
        let mut m5 = Ring5m::new(Layout5m, start);
        let mut h1: Ring<u64, 73, 2, Layout1h> = Ring::new(Layout1h, start);
        let mut period = PeriodRing::new(PeriodLayout::new(21_600), start);
        let mut record = |t: u64, good: u64, bad: u64| {
            s10.add(t, good, bad);
            m1.add(t, good, bad);
            m5.add(t, good, bad);
            h1.add(t, good, bad);
            period.add(t, good, bad);
        };
        let end = start + 4 * 86_400;
        for t in (start..end).step_by(60) {
            record(t, 6_000, t % 13);
        }
        let reads = [end - 1, end, end + 3_599, end + 86_400];

        // Everything fits u32 (all real traffic below ~1.19 M req/s): same counts, at
        // the narrowest width that holds them.
        let old = u64_layout_record((&s10, &m1, &m5), &h1, &period);
        let stored = decode(&old).expect("decodes");
        assert_eq!((&stored.s10, &stored.m1, &stored.m5), (&s10, &m1, &m5));
        assert_eq!(stored_forms(&stored), [U16, U16, U16, U32, U32]);
        let PeriodBuffer::Rolling(ring) = &stored.period else {
            panic!("rolling period expected: {:?}", stored.period);
        };
        assert_eq!(ring.width(), 21_600);
        for now in reads {
            for which in 0..2 {
                assert_eq!(stored.h1.window(now, which), h1.window(now, which));
            }
            assert_eq!(ring.window(now, 0), period.window(now, 0));
        }

        // 5 billion events in the newest 1 h and 6 h buckets: the period ring comes back
        // wide and exact, the 1 h bucket saturates as the live ring would have.
        h1.add(end - 1, 5_000_000_000, 1);
        period.add(end - 1, 5_000_000_000, 1);
        let old = u64_layout_record((&s10, &m1, &m5), &h1, &period);
        let stored = decode(&old).expect("a big bucket is not corruption");
        assert_eq!(stored.period, PeriodBuffer::Rolling(period.clone()));
        assert_eq!(stored_forms(&stored), [U16, U16, U16, U32, U64]);
        let mut counts = [[0; 2]; 73];
        for (i, count) in counts.iter_mut().enumerate() {
            *count = h1.slot(i);
        }
        let saturated = Ring1h::from_parts(Layout1h, h1.head(), &counts);
        assert_eq!(stored.h1, saturated);
        let newest = (h1.head() % 73) as usize;
        assert_eq!(stored.h1.slot(newest)[0], u64::from(u32::MAX));
    }

    #[test]
    fn a_fixed_ring_counter_above_u32_is_corruption() {
        let start = 1_700_000_000;
        let mut wide: Ring<u64, 31, 1, Layout10s> = Ring::new(Layout10s, start);
        wide.add(start, u64::from(u32::MAX) + 1, 0);
        let mut buf = Vec::new();
        encode_ring(&wide, &mut buf);
        let mut r = Reader {
            bytes: &buf,
            pos: 0,
        };
        let ring: Result<Ring10s, _> = r.ring(Layout10s, Overflow::Reject);
        assert!(matches!(
            ring,
            Err(CodecError::Invalid {
                what: "bucket counter",
                ..
            })
        ));
    }

    #[test]
    fn varints_roundtrip() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(v, &mut buf);
            let mut r = Reader {
                bytes: &buf,
                pos: 0,
            };
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.pos, buf.len());
        }
        let too_long = [0xffu8; 11];
        let mut r = Reader {
            bytes: &too_long,
            pos: 0,
        };
        assert!(r.varint().is_err());
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let slo = slo("");
        let mut buf = Vec::new();
        encode(&sample(&slo), &slo, &mut buf);
        for cut in [0, 1, 24, 25, 100, buf.len() - 1] {
            assert!(
                matches!(decode(&buf[..cut]), Err(CodecError::Truncated(_))),
                "cut {cut}"
            );
        }
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(CodecError::Trailing(1)));
        let mut bad_flag = buf.clone();
        bad_flag[24] = 7;
        assert!(matches!(
            decode(&bad_flag),
            Err(CodecError::Invalid {
                what: "alert flag",
                ..
            })
        ));
    }
}
