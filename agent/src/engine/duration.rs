//! Human-written durations for the SLO file: `30d`, `7d`, `1h`, `5m`, `300ms`, `2s`, `1h30m`.
//!
//! Why no crate: `humantime` is the usual choice, but it is not on the agent's dependency
//! list, and it accepts units whose length is not fixed (months, years). An SLO window must
//! have an exact length, and the grammar needed here (integer + one of six fixed units,
//! optionally repeated) is a few dozen lines.
//!
//! Grammar: one or more `<digits><unit>` groups, no spaces inside, units `ms`, `s`, `m`, `h`,
//! `d` (86 400 s), `w` (7 d). The value is held in whole milliseconds.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a duration string was rejected. Every variant quotes the input so a serde error
/// raised from inside a config file still says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration, expected e.g. \"30d\" or \"300ms\"")]
    Empty,
    #[error("invalid duration {input:?}: expected a number at position {at}")]
    ExpectedNumber { input: String, at: usize },
    #[error("invalid duration {input:?}: missing unit after {number} (use ms, s, m, h, d or w)")]
    MissingUnit { input: String, number: u64 },
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use ms, s, m, h, d or w)")]
    UnknownUnit { input: String, unit: String },
    #[error("invalid duration {input:?}: too large")]
    Overflow { input: String },
}

/// Parses a duration such as `30d`, `300ms` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let input = text.trim();
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut total_ms: u64 = 0;
    while pos < bytes.len() {
        let number_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if number_start == pos {
            return Err(DurationError::ExpectedNumber {
                input: input.to_owned(),
                at: pos,
            });
        }
        let overflow = || DurationError::Overflow {
            input: input.to_owned(),
        };
        let number: u64 = input[number_start..pos].parse().map_err(|_| overflow())?;
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit_ms: u64 = match &input[unit_start..pos] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                    number,
                });
            }
            unit => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let part = number.checked_mul(unit_ms).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A duration written in the config file. Serializes back to its canonical text
/// (`1h30m`, `30d`), which also keeps config fingerprints independent of spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub const fn as_duration(self) -> Duration {
        self.0
    }
    /// Whole seconds, rounding sub-second parts down.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
    /// True when the value is a whole number of seconds.
    pub const fn is_whole_secs(self) -> bool {
        self.0.subsec_nanos() == 0
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = DurationError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        parse_duration(&text).map(HumanDuration)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text).map(HumanDuration)
    }
}

impl From<HumanDuration> for String {
    fn from(value: HumanDuration) -> String {
        value.to_string()
    }
}

impl fmt::Display for HumanDuration {
    /// Canonical form: largest units first, days as the largest unit (`7d`, not `1w`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, len) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= len {
                write!(f, "{}{unit}", ms / len)?;
                ms %= len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn parses_compound() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1_500)));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("30"),
            Err(DurationError::MissingUnit { number: 30, .. })
        ));
        assert!(matches!(
            parse_duration("30x"),
            Err(DurationError::UnknownUnit { ref unit, .. }) if unit == "x"
        ));
        assert!(matches!(
            parse_duration("d"),
            Err(DurationError::ExpectedNumber { at: 0, .. })
        ));
        assert!(parse_duration("1.5h").is_err());
        assert!(matches!(
            parse_duration("1h 30m"),
            Err(DurationError::UnknownUnit { .. }) | Err(DurationError::ExpectedNumber { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("999999999999999w"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn displays_canonically() {
        for (text, canon) in [
            ("30d", "30d"),
            ("1w", "7d"),
            ("90m", "1h30m"),
            ("300ms", "300ms"),
            ("0ms", "0s"),
        ] {
            let d: HumanDuration = text.parse().expect("valid");
            assert_eq!(d.to_string(), canon);
        }
    }

    #[test]
    fn deserializes_from_json_string() {
        let d: HumanDuration = serde_json::from_str("\"5m\"").expect("valid");
        assert_eq!(d.as_secs(), 300);
        let err = serde_json::from_str::<HumanDuration>("\"5q\"").expect_err("invalid");
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }
}
