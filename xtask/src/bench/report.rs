//! Medians with spread, and the pieces of BENCHMARKS.md.

use std::fmt;

/// Median of several runs with their min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }

    /// `median (min..max)` with `decimals` digits, or just the value for one run.
    pub fn show(&self, decimals: usize) -> String {
        if self.n <= 1 {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}..{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(0))
    }
}

/// One line of the summary table at the top of BENCHMARKS.md.
pub struct Headline {
    pub measure: String,
    pub result: String,
    pub target: String,
    /// `yes`, `no`, or empty when there is no target.
    pub met: String,
}

impl Headline {
    pub fn new(measure: &str, result: String, target: &str, met: Option<bool>) -> Headline {
        Headline {
            measure: measure.to_string(),
            result,
            target: target.to_string(),
            met: match met {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None => String::new(),
            },
        }
    }
}

/// What a benchmark phase contributes: its section and its summary lines.
#[derive(Default)]
pub struct Section {
    pub markdown: String,
    pub headlines: Vec<Headline>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert_eq!(s.show(1), "2.0 (1.0..3.0)");
        assert_eq!(Spread::of(&[4.0]).show(0), "4");
    }
}
