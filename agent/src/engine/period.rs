//! The SLO period: rolling (`window: 30d`) or calendar month in a time zone.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Nominal period used to scale alert thresholds for calendar months. Month lengths vary
/// by +-7 %; keeping the Workbook's 30-day thresholds avoids alert thresholds that jump at
/// every month boundary.
pub const CALENDAR_NOMINAL_SECS: u64 = 30 * 86_400;

/// Buckets the rolling-period ring is split into; its width is `period / 120`
/// (6 h for 30d), which keeps the ring at 121 slots for any period length.
pub const PERIOD_BUCKETS: u64 = 120;

#[derive(Debug, Clone)]
pub enum Period {
    Rolling { secs: u64 },
    CalendarMonth { tz: TimeZone, tz_name: String },
}

/// The span of the current period: `[start, start + len)`, unix seconds.
/// For a rolling period that is the `len` seconds ending at `now` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodBounds {
    pub start: u64,
    pub len: u64,
}

impl PeriodBounds {
    pub fn end(self) -> u64 {
        self.start.saturating_add(self.len)
    }
    pub fn contains(self, t: u64) -> bool {
        t >= self.start && t < self.end()
    }
}

impl Period {
    /// Length that alert thresholds are scaled with.
    pub fn nominal_secs(&self) -> u64 {
        match self {
            Period::Rolling { secs } => *secs,
            Period::CalendarMonth { .. } => CALENDAR_NOMINAL_SECS,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Period::Rolling { secs } => {
                super::duration::HumanDuration::from_secs(*secs).to_string()
            }
            Period::CalendarMonth { tz_name, .. } => format!("month ({tz_name})"),
        }
    }

    /// Width of the rolling-period ring's buckets; 0 for calendar periods (no ring).
    pub fn bucket_width(&self) -> u32 {
        match self {
            Period::Rolling { secs } => u32::try_from(secs / PERIOD_BUCKETS).unwrap_or(u32::MAX),
            Period::CalendarMonth { .. } => 0,
        }
    }

    pub fn bounds(&self, now: u64) -> PeriodBounds {
        match self {
            Period::Rolling { secs } => PeriodBounds {
                start: now.saturating_add(1).saturating_sub(*secs),
                len: *secs,
            },
            Period::CalendarMonth { tz, .. } => month_bounds(tz, now).unwrap_or(PeriodBounds {
                // Only reachable beyond year 9999: fall back to a nominal rolling month.
                start: now.saturating_add(1).saturating_sub(CALENDAR_NOMINAL_SECS),
                len: CALENDAR_NOMINAL_SECS,
            }),
        }
    }
}

/// Start of the month containing `now` in `tz` (local midnight of day 1) and the length
/// up to the next month's start. DST is handled by the zone rules: e.g. Europe/Paris
/// months start at 23:00 UTC in winter and 22:00 UTC in summer.
fn month_bounds(tz: &TimeZone, now: u64) -> Option<PeriodBounds> {
    let ts = Timestamp::from_second(i64::try_from(now).ok()?).ok()?;
    let local = ts.to_zoned(tz.clone());
    let start = local.first_of_month().ok()?.start_of_day().ok()?;
    let next = start.checked_add(1.month()).ok()?.start_of_day().ok()?;
    let start_secs = u64::try_from(start.timestamp().as_second()).ok()?;
    let next_secs = u64::try_from(next.timestamp().as_second()).ok()?;
    (next_secs > start_secs && start_secs <= now).then(|| PeriodBounds {
        start: start_secs,
        len: next_secs - start_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(text: &str) -> u64 {
        let ts: Timestamp = text.parse().expect("timestamp");
        u64::try_from(ts.as_second()).expect("after 1970")
    }

    #[test]
    fn paris_month_starts_at_local_midnight() {
        let period = Period::CalendarMonth {
            tz: TimeZone::get("Europe/Paris").expect("zone"),
            tz_name: "Europe/Paris".into(),
        };
        // 2025-03-31 21:59:59Z is still March in Paris (CEST, UTC+2).
        let march = period.bounds(unix("2025-03-31T21:59:59Z"));
        assert_eq!(march.start, unix("2025-02-28T23:00:00Z")); // CET, UTC+1
        assert_eq!(march.end(), unix("2025-03-31T22:00:00Z"));
        assert_eq!(march.len, 31 * 86_400 - 3_600); // DST spring-forward month
        let april = period.bounds(unix("2025-03-31T22:00:00Z"));
        assert_eq!(april.start, unix("2025-03-31T22:00:00Z"));
        assert_eq!(april.len, 30 * 86_400);
    }

    #[test]
    fn utc_month() {
        let period = Period::CalendarMonth {
            tz: TimeZone::UTC,
            tz_name: "UTC".into(),
        };
        let feb = period.bounds(unix("2024-02-15T12:00:00Z"));
        assert_eq!(feb.start, unix("2024-02-01T00:00:00Z"));
        assert_eq!(feb.len, 29 * 86_400);
    }

    #[test]
    fn rolling_bounds_end_at_now() {
        let p = Period::Rolling { secs: 100 };
        assert_eq!(
            p.bounds(1_000),
            PeriodBounds {
                start: 901,
                len: 100
            }
        );
        assert_eq!(p.bounds(10).start, 0);
        assert_eq!(p.bucket_width(), 0); // 100 s / 120 rounds down; validation forbids it
        assert_eq!(Period::Rolling { secs: 30 * 86_400 }.bucket_width(), 21_600);
    }
}
