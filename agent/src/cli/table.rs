//! Text shared by `status` and `top`: the columns of a series row.

use crate::api::types::SeriesStatus;
use crate::engine::duration::HumanDuration;

/// Burn-rate windows shown as columns.
pub const BURN_WINDOWS: [&str; 6] = ["5m", "30m", "1h", "6h", "1d", "3d"];

/// Tenant names come from HTTP traffic, and everything else from an agent over the
/// network: replace control characters (no terminal escapes from a hostile
/// `X-Tenant-ID`: ESC, CSI as U+009B, CR, backspace) and bidirectional overrides (no
/// text drawn out of order), and cut long names.
pub fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if unsafe_on_terminal(c) { '?' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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
            let text = format!(
                "{} {}x {}/{}",
                f.tier.severity,
                burn(f.tier.threshold)
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
                f.tier.long,
                f.tier.short
            );
            clean(&text, 32)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_leaves_no_terminal_control() {
        let hostile = "a\x1b[2J\x1b]0;title\x07\u{9b}31m\r\x08\u{202e}b\u{2066}";
        let out = clean(hostile, 64);
        assert_eq!(out, "a?[2J?]0;title??31m???b?");
        assert!(!out.chars().any(unsafe_on_terminal));
        assert_eq!(clean("tenant-with-a-long-name", 8), "tenant-…");
        assert_eq!(clean("<script>\"ünïcode\"", 64), "<script>\"ünïcode\"");
    }
}
