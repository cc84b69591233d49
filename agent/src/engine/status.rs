//! HTTP status classification for the availability SLI.
//!
//! The config lists which responses count as *bad* (`"5xx"`, `"4xx"`, `"429"`, `"000"`).
//! The caller classifies every response with [`BadStatusSet::is_bad`] before handing
//! good/bad deltas to the engine, so the check is a branch-free bitset lookup rather than a
//! scan over the configured patterns.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Status code the capture layer uses when no response was seen (timeout, reset).
/// Printed as `"000"`, like curl does.
pub const NO_RESPONSE: u16 = 0;

/// One entry of `bad_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StatusClass {
    /// `"5xx"`: every code whose first digit is this one (1..=9).
    Class(u8),
    /// `"429"`: exactly this code (100..=999).
    Exact(u16),
    /// `"000"`: no response at all.
    NoResponse,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid status pattern {0:?}: expected a class like \"5xx\", an exact code like \"429\", or \"000\" for no response"
)]
pub struct StatusClassError(pub String);

impl StatusClass {
    /// Does this pattern match `code`? Codes above 999 are not HTTP and match nothing.
    pub const fn matches(self, code: u16) -> bool {
        match self {
            StatusClass::Class(digit) => code >= 100 && code <= 999 && code / 100 == digit as u16,
            StatusClass::Exact(exact) => code == exact,
            StatusClass::NoResponse => code == NO_RESPONSE,
        }
    }
}

impl std::str::FromStr for StatusClass {
    type Err = StatusClassError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || StatusClassError(text.to_owned());
        let b = text.as_bytes();
        if b.len() != 3 {
            return Err(err());
        }
        if text == "000" {
            return Ok(StatusClass::NoResponse);
        }
        if !(b'1'..=b'9').contains(&b[0]) {
            return Err(err());
        }
        let first = b[0] - b'0';
        if b[1..].eq_ignore_ascii_case(b"xx") {
            return Ok(StatusClass::Class(first));
        }
        if b[1].is_ascii_digit() && b[2].is_ascii_digit() {
            let code =
                u16::from(first) * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
            return Ok(StatusClass::Exact(code));
        }
        Err(err())
    }
}

impl TryFrom<String> for StatusClass {
    type Error = StatusClassError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<StatusClass> for String {
    fn from(value: StatusClass) -> String {
        value.to_string()
    }
}

impl fmt::Display for StatusClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusClass::Class(digit) => write!(f, "{digit}xx"),
            StatusClass::Exact(code) => write!(f, "{code:03}"),
            StatusClass::NoResponse => f.write_str("000"),
        }
    }
}

/// The compiled `bad_status` list: one bit per code 0..=1023.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadStatusSet {
    bits: [u64; 16],
}

impl BadStatusSet {
    /// The default when `bad_status` is omitted: server errors and missing responses.
    pub const DEFAULT: [StatusClass; 2] = [StatusClass::Class(5), StatusClass::NoResponse];

    pub fn new(patterns: &[StatusClass]) -> Self {
        let mut bits = [0u64; 16];
        for code in 0u16..1000 {
            if patterns.iter().any(|p| p.matches(code)) {
                bits[usize::from(code / 64)] |= 1 << (code % 64);
            }
        }
        Self { bits }
    }

    /// True when a response with this status code spends error budget.
    #[inline]
    pub fn is_bad(&self, code: u16) -> bool {
        code < 1024 && self.bits[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_patterns() {
        assert_eq!("5xx".parse(), Ok(StatusClass::Class(5)));
        assert_eq!("4XX".parse(), Ok(StatusClass::Class(4)));
        assert_eq!("429".parse(), Ok(StatusClass::Exact(429)));
        assert_eq!("000".parse(), Ok(StatusClass::NoResponse));
        for bad in ["", "5x", "5xxx", "0xx", "x00", "4x9", "abc", "-12"] {
            assert!(bad.parse::<StatusClass>().is_err(), "{bad}");
        }
        assert_eq!(StatusClass::Exact(429).to_string(), "429");
        assert_eq!(StatusClass::NoResponse.to_string(), "000");
    }

    #[test]
    fn default_set_matches_5xx_and_no_response() {
        let set = BadStatusSet::new(&BadStatusSet::DEFAULT);
        assert!(set.is_bad(500) && set.is_bad(503) && set.is_bad(599));
        assert!(set.is_bad(NO_RESPONSE));
        assert!(!set.is_bad(200) && !set.is_bad(404) && !set.is_bad(429) && !set.is_bad(600));
        assert!(!set.is_bad(5000) && !set.is_bad(u16::MAX));
    }

    #[test]
    fn exact_and_class_combine() {
        let set = BadStatusSet::new(&[StatusClass::Class(5), StatusClass::Exact(429)]);
        assert!(set.is_bad(429) && set.is_bad(502));
        assert!(!set.is_bad(428) && !set.is_bad(0));
    }
}
