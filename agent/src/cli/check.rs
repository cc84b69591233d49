//! `burnwatch check`: validates a config (errors name file, line and field, see
//! `config`) and prints the effective config, with each alert tier explained in words
//! from the engine's own tier math (`engine::alert`): what share of the budget it
//! catches, which error ratio trips it, and how fast a total outage trips it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::api::views::sli_text;
use crate::config::{Config, TenantFrom};
use crate::engine::alert::{AlertTier, Severity};
use crate::engine::duration::HumanDuration;
use crate::engine::period::Period;
use crate::engine::{Slo, SloSet};

pub const AFTER_HELP: &str = "\
Exit status 0 when the config is valid, 1 otherwise (the error names file, line and field).

Examples:
  burnwatch check --config /etc/burnwatch/burnwatch.yaml
  burnwatch check -c burnwatch.yaml && systemctl restart burnwatch

Each alert tier is explained from the engine's own math, e.g. for 99.9% over 30 days:
  page    burn > 14.4x over 1h and 5m (error ratio > 1.44%): pages when 2% of the
          30-day budget burns within 1 hour; a total outage pages after 52 s ...";

pub fn run(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    print!("{}", summary(path, &config));
    Ok(())
}

/// The whole report `check` prints for a valid config.
pub fn summary(path: &Path, c: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok\n", path.display());
    let _ = writeln!(out, "services");
    if c.services.is_empty() {
        let _ = writeln!(
            out,
            "  every HTTP/1.x server on the node, named <comm>:<port>"
        );
    }
    for s in &c.services {
        let _ = writeln!(
            out,
            "  {:<20} server side: {}",
            s.name,
            s.matcher.describe()
        );
    }
    if !c.clients.is_empty() {
        let _ = writeln!(out, "clients");
    }
    for s in &c.clients {
        let _ = writeln!(
            out,
            "  {:<20} client side (port = the upstream's): {}",
            s.name,
            s.matcher.describe()
        );
    }
    let t = &c.tenant;
    let source = match t.from {
        TenantFrom::Header => format!("header {} (case-insensitive)", t.header),
        TenantFrom::Host => "first label of the Host header".to_owned(),
        TenantFrom::Path => format!(
            "path segment after {}",
            t.path_prefix.as_deref().unwrap_or("?")
        ),
        TenantFrom::None => "none: every request gets the missing label".to_owned(),
        TenantFrom::Namespace => "the Kubernetes namespace of the server's pod".to_owned(),
        TenantFrom::NamespaceLabel => format!(
            "label {} of the server pod's Kubernetes namespace",
            t.label.as_deref().unwrap_or("?")
        ),
    };
    let _ = writeln!(
        out,
        "tenant\n  from {source}; {:?} when absent; at most {} tenants per service, more count as {}",
        t.missing,
        t.max_per_service,
        crate::config::OVERFLOW_TENANT
    );
    let listen = c.exporters.prometheus.listen;
    let _ = writeln!(
        out,
        "http\n  metrics http://{listen}/metrics, status page http://{listen}/, API http://{listen}/v1/slos"
    );
    if let Some(o) = &c.exporters.otlp {
        let _ = writeln!(
            out,
            "otlp\n  {:?} to {} every {}",
            o.protocol, o.endpoint, o.interval
        );
    }
    if let Some(a) = &c.exporters.alertmanager {
        let _ = writeln!(out, "alertmanager\n  {}", a.url);
    }
    if c.tenant.hash.is_some() {
        let _ = writeln!(out, "tenant labels\n  HMAC-SHA256 pseudonyms");
    }
    let slos = c.slo_set();
    let _ = writeln!(out, "\nslos ({})", c.slos.len());
    if c.slos.is_empty() {
        let _ = writeln!(out, "  none: only request metrics are exported");
    }
    for (slo, spec) in slos.iter().zip(&c.slos) {
        write_slo(&mut out, &slos, slo, spec);
    }
    let p = &slos.policy;
    let _ = writeln!(
        out,
        "\nbudget policy\n  attention at {} of the budget spent, warning at {}, change freeze at {}, exhausted at {}",
        percent(p.attention_consumed),
        percent(p.warn_consumed),
        percent(p.freeze_consumed),
        percent(p.exhausted_consumed)
    );
    let _ = writeln!(
        out,
        "state\n  {} (checkpoint every {} s)",
        c.state.dir.display(),
        c.state.checkpoint_interval_secs
    );
    out
}

fn write_slo(out: &mut String, set: &SloSet, slo: &Slo, spec: &crate::engine::spec::SloSpec) {
    let allowed = 1.0 - slo.objective / 100.0;
    let period_secs = slo.period.nominal_secs();
    let period = match &slo.period {
        Period::Rolling { secs } => format!("rolling {}", HumanDuration::from_secs(*secs)),
        Period::CalendarMonth { .. } => format!("calendar {}", slo.period_label),
    };
    let _ = writeln!(
        out,
        "  {}: service {}, {}% good over {period}, {}",
        slo.name,
        slo.service,
        slo.objective,
        sli_text(slo)
    );
    let _ = writeln!(
        out,
        "    error budget: {} of events, i.e. {} of total outage per {}",
        percent(allowed),
        outage_time(allowed * period_secs as f64),
        period_noun(&slo.period)
    );
    if !spec.tenants.is_empty() {
        let list: Vec<String> = spec
            .tenants
            .iter()
            .map(|(t, o)| format!("{t} {}%", o.objective))
            .collect();
        let _ = writeln!(out, "    tenant objectives: {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "    alerts (burn rate = error ratio / {}; 1x spends the budget in exactly one period):",
        percent(allowed)
    );
    for tier in &slo.tiers {
        let f = TierFacts::of(tier, allowed, period_secs);
        let verb = match tier.severity {
            Severity::Page => "pages",
            Severity::Ticket => "opens a ticket",
        };
        let mut line = format!(
            "      {:<7} burn > {}x over {} and {} (error ratio > {}): {verb} when {} of the {} budget burns within {}",
            tier.severity.as_str(),
            number(tier.threshold),
            tier.long.label(),
            tier.short.label(),
            percent(f.error_ratio),
            percent(f.budget_fraction),
            period_adjective(&slo.period),
            window_words(tier.long.secs()),
        );
        match f.outage_detect_secs {
            Some(secs) => {
                let what = match tier.severity {
                    Severity::Page => "pages",
                    Severity::Ticket => "tickets",
                };
                let _ = write!(
                    line,
                    "; a total outage {what} after {}",
                    outage_time(first_second(secs))
                );
                if let Some(reset) = f.reset_secs {
                    let _ = write!(line, " and resolves about {} after it ends", about(reset));
                }
            }
            None => {
                let _ = write!(
                    line,
                    "; never fires: even a total outage burns at most {}x",
                    number(1.0 / allowed)
                );
            }
        }
        let _ = writeln!(out, "{line}");
        let what = match tier.severity {
            Severity::Page => "pages",
            Severity::Ticket => "tickets",
        };
        for (tenant, o) in &spec.tenants {
            let f = TierFacts::of(tier, 1.0 - o.objective / 100.0, period_secs);
            if let Some(secs) = f.outage_detect_secs {
                let _ = writeln!(
                    out,
                    "              {tenant} ({}%): a total outage {what} after {}",
                    o.objective,
                    outage_time(first_second(secs))
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "    no alert fires while the long window holds fewer than {} events",
        set.min_events
    );
}

/// What a tier means, derived from its threshold the way the engine applies it
/// (`alert::highest_firing`: burn over both windows above the threshold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierFacts {
    /// Share of the period's budget spent by burning at the threshold for one long
    /// window: `threshold * long / period` (the inverse of `alert::rescaled_threshold`).
    pub budget_fraction: f64,
    /// Error ratio at which the burn reaches the threshold: `threshold * allowed`.
    pub error_ratio: f64,
    /// Seconds of 100 % errors after steady clean traffic until both windows exceed the
    /// threshold: the long window's bad share `t / long` must pass `error_ratio`, so
    /// `t = error_ratio * long` (the short window, shorter, passes first). `None` when
    /// `error_ratio >= 1`: no error ratio can reach the threshold.
    pub outage_detect_secs: Option<f64>,
    /// Seconds after a total outage (at least one short window long) ends until the
    /// short window's bad share `(short - t) / short` drops to `error_ratio`:
    /// `t = short * (1 - error_ratio)`.
    pub reset_secs: Option<f64>,
}

impl TierFacts {
    pub fn of(tier: &AlertTier, allowed_error_ratio: f64, period_secs: u64) -> Self {
        let error_ratio = tier.threshold * allowed_error_ratio;
        let reachable = error_ratio < 1.0;
        TierFacts {
            budget_fraction: tier.threshold * tier.long.secs() as f64 / period_secs as f64,
            error_ratio,
            outage_detect_secs: reachable.then(|| error_ratio * tier.long.secs() as f64),
            reset_secs: reachable.then(|| tier.short.secs() as f64 * (1.0 - error_ratio)),
        }
    }
}

/// The engine fires when the burn is strictly above the threshold, evaluated once per
/// second: the first whole second past `secs`.
fn first_second(secs: f64) -> f64 {
    secs.floor() + 1.0
}

/// `2%`, `0.1%`, `1.44%`, `0.05%`.
fn percent(ratio: f64) -> String {
    format!("{}%", number(ratio * 100.0))
}

/// At most 3 significant decimals, trailing zeros dropped: `14.4`, `6`, `0.233`.
fn number(x: f64) -> String {
    let s = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// `52 s` below two minutes, then `43m12s`, `2h9m36s`.
fn outage_time(secs: f64) -> String {
    let secs = secs.round().max(0.0) as u64;
    if secs < 120 {
        format!("{secs} s")
    } else {
        HumanDuration::from_secs(secs).to_string()
    }
}

/// `5m` for 295.7 s: rounded to a minute above two minutes.
fn about(secs: f64) -> String {
    if secs < 120.0 {
        format!("{} s", secs.round())
    } else {
        HumanDuration::from_secs(((secs / 60.0).round() * 60.0) as u64).to_string()
    }
}

fn window_words(secs: u64) -> String {
    let (n, unit) = if secs.is_multiple_of(86_400) {
        (secs / 86_400, "day")
    } else if secs.is_multiple_of(3_600) {
        (secs / 3_600, "hour")
    } else {
        (secs / 60, "minute")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `30-day`, `36-hour`, `month's` (thresholds of calendar months scale with 30 days).
fn period_adjective(period: &Period) -> String {
    match period {
        Period::Rolling { secs } if secs.is_multiple_of(86_400) => format!("{}-day", secs / 86_400),
        Period::Rolling { secs } => format!("{}-hour", secs / 3_600),
        Period::CalendarMonth { .. } => "month's".to_owned(),
    }
}

fn period_noun(period: &Period) -> String {
    match period {
        Period::Rolling { secs } => HumanDuration::from_secs(*secs).to_string(),
        Period::CalendarMonth { .. } => "month".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::simulate::{Scenario, simulate};

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, Path::new("test.yaml")).expect("valid")
    }

    #[test]
    fn workbook_words_for_99_9_over_30_days() {
        let c = config("slos:\n  - { name: shop, service: shop, objective: 99.9, window: 30d }\n");
        let text = summary(Path::new("test.yaml"), &c);
        println!("{text}");
        assert!(text.contains(
            "page    burn > 14.4x over 1h and 5m (error ratio > 1.44%): pages when 2% of the 30-day budget burns within 1 hour; a total outage pages after 52 s and resolves about 5m after it ends"
        ), "{text}");
        assert!(text.contains("5% of the 30-day budget burns within 6 hours"));
        assert!(text.contains("ticket  burn > 1x over 3d and 6h"));
        assert!(text.contains("43m12s of total outage per 30d"), "{text}");
    }

    #[test]
    fn unreachable_tiers_say_so() {
        let c = config("slos:\n  - { name: s, service: s, objective: 90, window: 30d }\n");
        let text = summary(Path::new("test.yaml"), &c);
        assert!(
            text.contains("never fires: even a total outage burns at most 10x"),
            "{text}"
        );
    }

    /// The words come from a formula; the simulator runs the real engine. They agree on
    /// when a total outage trips each of the two page tiers (one tier configured at a
    /// time, since only the highest firing tier is reported).
    #[test]
    fn outage_detection_matches_the_simulator() {
        for (tier, warmup) in [
            (
                "{ severity: page, long_window: 1h, short_window: 5m, budget_fraction: 0.02 }",
                "1h",
            ),
            (
                "{ severity: page, long_window: 6h, short_window: 30m, budget_fraction: 0.05 }",
                "6h",
            ),
        ] {
            let c = config(&format!(
                "slos:\n  - {{ name: s, service: s, objective: 99.9, window: 30d }}\nalerting:\n  tiers: [{tier}]\n"
            ));
            let slos = c.slo_set();
            let slo = slos.iter().next().expect("slo");
            let facts = TierFacts::of(&slo.tiers[0], 0.001, slo.period.nominal_secs());
            let scenario: Scenario = serde_saphyr::from_str(&format!(
                "phases:\n  - {{ tenant: a, rate: 100, duration: {warmup} }}\n  - {{ tenant: a, rate: 100, error_ratio: 1, duration: 1h }}\n"
            ))
            .expect("scenario");
            let report = simulate(&slos, &scenario).expect("runs");
            let warmup_secs = slo.tiers[0].long.secs();
            let fired = report.alerts.first().expect("fires").fired_at - warmup_secs;
            let predicted = first_second(facts.outage_detect_secs.expect("reachable")) as u64;
            assert!(
                fired.abs_diff(predicted) <= 1,
                "{tier}: simulator {fired} s, words {predicted} s"
            );
        }
    }
}
