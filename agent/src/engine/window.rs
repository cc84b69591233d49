//! The fixed set of sliding windows the engine measures, and how each is stored.
//!
//! Every window is a *ratio of sums*: `bad events / all events` over the window, never an
//! average of per-bucket ratios (that would give a quiet minute the same weight as a busy
//! one). Counts live in multi-resolution rings ([`super::ring::Ring`]); each window is read
//! from the finest ring that still covers it:
//!
//! | window | ring (bucket x slots) | worst-case error (share of one bucket)  | steady traffic |
//! |--------|-----------------------|-----------------------------------------|----------------|
//! | 5m     | 10 s x 31             | 10 s / 5 m   = 3.3 % of the window      | exact          |
//! | 30m    | 1 min x 61            | 1 min / 30 m = 3.3 %                    | exact          |
//! | 1h     | 1 min x 61            | 1 min / 1 h  = 1.7 %                    | exact          |
//! | 2h     | 5 min x 73            | 5 min / 2 h  = 4.2 %                    | exact          |
//! | 6h     | 5 min x 73            | 5 min / 6 h  = 1.4 %                    | exact          |
//! | 1d     | 1 h x 73              | 1 h / 1 d    = 4.2 %                    | exact          |
//! | 3d     | 1 h x 73              | 1 h / 3 d    = 1.4 %                    | exact          |
//! | period | period/120 x 121      | 1/120        = 0.83 % (6 h for 30d)     | exact          |
//! | month  | two counters          | 0 (reset at the month boundary)         | exact          |
//!
//! How the error arises: a window of length `L = k·w` ending at second `now` covers the
//! `k` newest buckets in full (the newest one only up to `now`) plus part of the bucket
//! `k` places back. That oldest bucket is counted with the weight of the share of its
//! seconds that fall inside the window. If its events were spread evenly (steady traffic,
//! one record per second) this is exact; in the worst case all of its events sit on the
//! wrong side of the window edge, and the window is off by at most that one bucket's events,
//! i.e. by at most `w / L` of the window's traffic at a steady rate. The ring holds `k + 1`
//! slots for the largest window it serves so the partial bucket is never already
//! overwritten (the brief's 30/60/72/72 slots would silently drop it and make the window
//! up to one bucket *short* even for steady traffic).

use serde::Serialize;

/// A sliding window used by alert tiers and reported to exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    M5,
    M30,
    H1,
    H2,
    H6,
    D1,
    D3,
}

impl Window {
    /// All windows, shortest first; `index()` is the position in this array.
    pub const ALL: [Window; 7] = [
        Window::M5,
        Window::M30,
        Window::H1,
        Window::H2,
        Window::H6,
        Window::D1,
        Window::D3,
    ];

    pub const fn secs(self) -> u64 {
        match self {
            Window::M5 => 300,
            Window::M30 => 1_800,
            Window::H1 => 3_600,
            Window::H2 => 7_200,
            Window::H6 => 21_600,
            Window::D1 => 86_400,
            Window::D3 => 259_200,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Window::M5 => "5m",
            Window::M30 => "30m",
            Window::H1 => "1h",
            Window::H2 => "2h",
            Window::H6 => "6h",
            Window::D1 => "1d",
            Window::D3 => "3d",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    /// The window with exactly this length, if the engine keeps one.
    pub fn from_secs(secs: u64) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.secs() == secs)
    }

    /// Human list of the supported windows, for error messages.
    pub fn supported_list() -> String {
        Window::ALL.map(Window::label).join(", ")
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// Good and bad event counts over some window. `f64` because the oldest bucket of a
/// window is counted with a fractional weight (see the module table); the sums themselves
/// are kept as integers and are exact up to 2^53 events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub good: f64,
    pub bad: f64,
}

impl Counts {
    pub fn total(self) -> f64 {
        self.good + self.bad
    }

    /// SLI = good / total; `None` without events.
    pub fn sli(self) -> Option<f64> {
        let total = self.total();
        (total > 0.0).then(|| self.good / total)
    }

    /// Burn rate = observed error ratio / allowed error ratio (1 - objective).
    /// A burn of 1 spends exactly the budget over the SLO period; 0 without events.
    pub fn burn_rate(self, allowed_error_ratio: f64) -> f64 {
        let total = self.total();
        if total <= 0.0 || allowed_error_ratio <= 0.0 {
            0.0
        } else {
            (self.bad / total) / allowed_error_ratio
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_lookup_roundtrip() {
        for w in Window::ALL {
            assert_eq!(Window::from_secs(w.secs()), Some(w));
            assert_eq!(Window::ALL[w.index()], w);
        }
        assert_eq!(Window::from_secs(900), None);
        assert_eq!(Window::supported_list(), "5m, 30m, 1h, 2h, 6h, 1d, 3d");
    }

    #[test]
    fn burn_rate_is_ratio_over_allowed() {
        let c = Counts {
            good: 990.0,
            bad: 10.0,
        };
        assert!((c.burn_rate(0.001) - 10.0).abs() < 1e-9);
        assert_eq!(Counts::default().burn_rate(0.001), 0.0);
        assert_eq!(Counts::default().sli(), None);
    }
}
