//! Text shared by `status` and `top`: the columns of a series row.

use crate::api::types::SeriesStatus;
use crate::engine::duration::HumanDuration;

/// Burn-rate windows shown as columns.
pub const BURN_WINDOWS: [&str; 6] = ["5m", "30m", "1h", "6h", "1d", "3d"];

/// Tenant names come from HTTP traffic: drop control characters (no terminal escapes
/// from a hostile `X-Tenant-ID`) and cut long names.
pub fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

pub fn burn(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn budget(s: &SeriesStatus) -> String {
    format!("{:.1}%", s.budget_remaining * 100.0)
}

/// `page 14.4x 1h/5m` or `-`.
pub fn alert(s: &SeriesStatus) -> String {
    s.firing.as_ref().map_or_else(
        || "-".to_owned(),
        |f| {
            format!(
                "{} {}x {}/{}",
                f.tier.severity,
                burn(f.tier.threshold)
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
                f.tier.long,
                f.tier.short
            )
        },
    )
}

/// How long the alert has fired: `3m12s`.
pub fn since(s: &SeriesStatus, now: u64) -> String {
    s.firing.as_ref().map_or_else(
        || "-".to_owned(),
        |f| HumanDuration::from_secs(now.saturating_sub(f.since)).to_string(),
    )
}

pub fn exhaustion(s: &SeriesStatus) -> String {
    match s.time_to_exhaustion_secs {
        None => "-".to_owned(),
        Some(t) if t <= 0.0 => "exhausted".to_owned(),
        Some(t) => HumanDuration::from_secs(t.round() as u64).to_string(),
    }
}
