//! The validated, compiled SLO set the engine runs on.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::alert::{self, AlertTier, DEFAULT_TIERS};
use super::budget::BudgetPolicy;
use super::period::Period;
use super::spec::{SliSpec, SloConfig, SloSpec, TierSpec};
use super::status::BadStatusSet;
use super::window::Window;

/// Index of an SLO in its [`SloSet`] (stable for the life of one engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SloId(pub u32);

impl SloId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Path in the config, e.g. `slos[1].objective`.
    pub path: String,
    pub message: String,
}

/// All invalid fields of a config, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// How the caller turns a request into good/bad.
#[derive(Debug, Clone, PartialEq)]
pub enum Sli {
    Availability { bad_status: BadStatusSet },
    Latency { threshold: Duration },
}

impl Sli {
    /// Availability SLI: is a response with this status good? (Always true for latency SLOs.)
    pub fn is_good_status(&self, code: u16) -> bool {
        match self {
            Sli::Availability { bad_status } => !bad_status.is_bad(code),
            Sli::Latency { .. } => true,
        }
    }
    /// Latency SLI: is a request that took `latency` good? (Always true for availability.)
    #[cfg_attr(not(test), allow(dead_code))] // per-request classification, used by the simulator tests
    pub fn is_good_latency(&self, latency: Duration) -> bool {
        match self {
            Sli::Availability { .. } => true,
            Sli::Latency { threshold } => latency <= *threshold,
        }
    }
}

/// One compiled SLO.
#[derive(Debug, Clone)]
pub struct Slo {
    pub id: SloId,
    pub name: Arc<str>,
    pub service: String,
    /// Percent, strictly between 0 and 100.
    pub objective: f64,
    pub sli: Sli,
    pub period: Period,
    /// `period.label()`, kept so snapshots can borrow it.
    pub period_label: String,
    /// Priority-sorted, thresholds scaled to `period`.
    pub tiers: Vec<AlertTier>,
    tenant_objectives: BTreeMap<String, f64>,
    /// Hash of what gives stored counts their meaning (name, service, SLI). If it changes,
    /// checkpointed counts of this SLO are discarded.
    pub(crate) data_fingerprint: u64,
}

impl Slo {
    /// Objective for a tenant: its override, else the SLO's.
    pub fn objective_for(&self, tenant: &str) -> f64 {
        self.tenant_objectives
            .get(tenant)
            .copied()
            .unwrap_or(self.objective)
    }

    /// Per-tenant objective overrides (percent), for the rule generator.
    pub fn tenant_objectives(&self) -> &BTreeMap<String, f64> {
        &self.tenant_objectives
    }
}

/// The validated SLO config.
#[derive(Debug, Clone)]
pub struct SloSet {
    slos: Vec<Slo>,
    pub min_events: u64,
    pub policy: BudgetPolicy,
    /// Hash of the whole SLO config (reported on restore when it changed).
    pub fingerprint: u64,
}

impl SloSet {
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn len(&self) -> usize {
        self.slos.len()
    }
    #[allow(dead_code)] // pairs with len() (clippy::len_without_is_empty)
    pub fn is_empty(&self) -> bool {
        self.slos.is_empty()
    }
    pub fn get(&self, id: SloId) -> Option<&Slo> {
        self.slos.get(id.index())
    }
    pub fn iter(&self) -> impl Iterator<Item = &Slo> {
        self.slos.iter()
    }
    pub fn id_of(&self, name: &str) -> Option<SloId> {
        self.slos.iter().find(|s| &*s.name == name).map(|s| s.id)
    }

    /// Validates and compiles (see [`SloConfig::validate`]).
    pub fn compile(config: &SloConfig) -> Result<SloSet, ConfigErrors> {
        let mut errors = Errors::default();
        let tier_defs = compile_tier_defs(config.alerting.tiers.as_deref(), &mut errors);
        let longest_alert_window = tier_defs.iter().map(|t| t.long.secs()).max().unwrap_or(0);

        let policy = config.budget_policy;
        let levels = [
            ("attention_consumed", policy.attention_consumed),
            ("warn_consumed", policy.warn_consumed),
            ("freeze_consumed", policy.freeze_consumed),
            ("exhausted_consumed", policy.exhausted_consumed),
        ];
        for (i, (field, value)) in levels.iter().enumerate() {
            let path = format!("budget_policy.{field}");
            if !value.is_finite() || *value <= 0.0 {
                errors.push(path, format!("must be a positive number, got {value}"));
            } else if let Some((prev_field, prev)) = i.checked_sub(1).map(|p| levels[p])
                && *value < prev
            {
                errors.push(
                    path,
                    format!("must be >= {prev_field} ({prev}), got {value}"),
                );
            }
        }

        let mut names = HashSet::new();
        let mut slos = Vec::with_capacity(config.slos.len());
        for (i, spec) in config.slos.iter().enumerate() {
            let at = |field: &str| format!("slos[{i}].{field}");
            if spec.name.trim().is_empty() {
                errors.push(at("name"), "must not be empty".into());
            } else if !names.insert(spec.name.as_str()) {
                errors.push(at("name"), format!("duplicate SLO name {:?}", spec.name));
            }
            if spec.service.trim().is_empty() {
                errors.push(at("service"), "must not be empty".into());
            }
            check_objective(spec.objective, at("objective"), &mut errors);
            for (tenant, t) in &spec.tenants {
                if tenant.is_empty() {
                    errors.push(at("tenants"), "tenant name must not be empty".into());
                }
                check_objective(
                    t.objective,
                    at(&format!("tenants.{tenant}.objective")),
                    &mut errors,
                );
            }
            let sli = compile_sli(spec, &at, &mut errors);
            let period = compile_period(spec, longest_alert_window, &at, &mut errors);
            let (Some(sli), Some(period)) = (sli, period) else {
                continue;
            };
            let mut tiers: Vec<AlertTier> = tier_defs
                .iter()
                .map(|def| AlertTier {
                    severity: def.severity,
                    long: def.long,
                    short: def.short,
                    threshold: match def.threshold {
                        Threshold::BudgetFraction(f) => {
                            alert::rescaled_threshold(f, period.nominal_secs(), def.long)
                        }
                        Threshold::BurnRate(b) => b,
                    },
                })
                .collect();
            alert::sort_by_priority(&mut tiers);
            slos.push(Slo {
                id: SloId(u32::try_from(slos.len()).unwrap_or(u32::MAX)),
                name: Arc::from(spec.name.as_str()),
                service: spec.service.clone(),
                objective: spec.objective,
                sli,
                period_label: period.label(),
                period,
                tiers,
                tenant_objectives: spec
                    .tenants
                    .iter()
                    .map(|(k, v)| (k.clone(), v.objective))
                    .collect(),
                data_fingerprint: data_fingerprint(spec),
            });
        }
        if slos.len() > u32::MAX as usize {
            errors.push("slos".into(), "too many SLOs".into());
        }
        errors.finish()?;
        Ok(SloSet {
            slos,
            min_events: config.alerting.min_events,
            policy,
            fingerprint: fnv1a(&serde_json::to_vec(config).unwrap_or_default()),
        })
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: String, message: String) {
        self.0.push(FieldError { path, message });
    }
    fn finish(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

fn check_objective(objective: f64, path: String, errors: &mut Errors) {
    if !(objective.is_finite() && objective > 0.0 && objective < 100.0) {
        errors.push(
            path,
            format!("must be between 0 and 100 exclusive, got {objective}"),
        );
    }
}

fn compile_sli(spec: &SloSpec, at: &dyn Fn(&str) -> String, errors: &mut Errors) -> Option<Sli> {
    match &spec.sli {
        SliSpec::Availability(a) => {
            if a.bad_status.is_empty() {
                errors.push(
                    at("sli.availability.bad_status"),
                    "must list at least one status pattern".into(),
                );
                return None;
            }
            Some(Sli::Availability {
                bad_status: BadStatusSet::new(&a.bad_status),
            })
        }
        SliSpec::Latency(l) => {
            if l.threshold.as_duration().is_zero() {
                errors.push(at("sli.latency.threshold"), "must be greater than 0".into());
                return None;
            }
            Some(Sli::Latency {
                threshold: l.threshold.as_duration(),
            })
        }
    }
}

fn compile_period(
    spec: &SloSpec,
    longest_alert_window: u64,
    at: &dyn Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<Period> {
    match (spec.window, spec.calendar) {
        (Some(_), Some(_)) => {
            errors.push(
                at("calendar"),
                "give either window (rolling) or calendar, not both".into(),
            );
            None
        }
        (window, None) => {
            if spec.timezone.is_some() {
                errors.push(
                    at("timezone"),
                    "only applies to calendar periods (calendar: month)".into(),
                );
            }
            let window = window.unwrap_or(super::duration::HumanDuration::from_secs(30 * 86_400));
            let secs = window.as_secs();
            if !window.is_whole_secs() || secs % 3_600 != 0 || secs == 0 {
                errors.push(
                    at("window"),
                    format!("must be a whole number of hours, got {window}"),
                );
                return None;
            }
            if secs < longest_alert_window {
                errors.push(
                    at("window"),
                    format!(
                        "must be at least the longest alert window ({}), got {window}",
                        super::duration::HumanDuration::from_secs(longest_alert_window)
                    ),
                );
                return None;
            }
            if secs / super::period::PERIOD_BUCKETS > u64::from(u32::MAX) {
                errors.push(at("window"), format!("too long, got {window}"));
                return None;
            }
            Some(Period::Rolling { secs })
        }
        (None, Some(_month)) => {
            let name = spec.timezone.clone().unwrap_or_else(|| "UTC".to_owned());
            match jiff::tz::TimeZone::get(&name) {
                Ok(tz) => Some(Period::CalendarMonth { tz, tz_name: name }),
                Err(e) => {
                    errors.push(at("timezone"), format!("unknown time zone {name:?}: {e}"));
                    None
                }
            }
        }
    }
}

enum Threshold {
    BudgetFraction(f64),
    BurnRate(f64),
}

struct TierDef {
    severity: alert::Severity,
    long: Window,
    short: Window,
    threshold: Threshold,
}

fn compile_tier_defs(specs: Option<&[TierSpec]>, errors: &mut Errors) -> Vec<TierDef> {
    let Some(specs) = specs else {
        return DEFAULT_TIERS
            .iter()
            .map(|&(severity, long, short, share)| TierDef {
                severity,
                long,
                short,
                threshold: Threshold::BudgetFraction(share),
            })
            .collect();
    };
    if specs.is_empty() {
        errors.push(
            "alerting.tiers".into(),
            "must list at least one tier (omit it for the defaults)".into(),
        );
    }
    if specs.len() > usize::from(u8::MAX) {
        errors.push("alerting.tiers".into(), "at most 255 tiers".into());
    }
    let mut defs = Vec::new();
    for (i, t) in specs.iter().enumerate() {
        let at = |field: &str| format!("alerting.tiers[{i}].{field}");
        let window = |field: &str, d: super::duration::HumanDuration, errors: &mut Errors| {
            let w = d
                .is_whole_secs()
                .then(|| Window::from_secs(d.as_secs()))
                .flatten();
            if w.is_none() {
                errors.push(
                    at(field),
                    format!("must be one of {}, got {d}", Window::supported_list()),
                );
            }
            w
        };
        let long = window("long_window", t.long_window, errors);
        let short = window("short_window", t.short_window, errors);
        if let (Some(l), Some(s)) = (long, short)
            && s >= l
        {
            errors.push(
                at("short_window"),
                format!(
                    "must be shorter than long_window ({}), got {}",
                    l.label(),
                    s.label()
                ),
            );
        }
        let threshold = match (t.budget_fraction, t.burn_rate) {
            (Some(f), None) if f.is_finite() && f > 0.0 && f <= 1.0 => {
                Some(Threshold::BudgetFraction(f))
            }
            (Some(f), None) => {
                errors.push(at("budget_fraction"), format!("must be in (0, 1], got {f}"));
                None
            }
            (None, Some(b)) if b.is_finite() && b > 0.0 => Some(Threshold::BurnRate(b)),
            (None, Some(b)) => {
                errors.push(
                    at("burn_rate"),
                    format!("must be a positive number, got {b}"),
                );
                None
            }
            (Some(_), Some(_)) => {
                errors.push(
                    at("burn_rate"),
                    "give either budget_fraction or burn_rate, not both".into(),
                );
                None
            }
            (None, None) => {
                errors.push(
                    at("budget_fraction"),
                    "give budget_fraction or burn_rate".into(),
                );
                None
            }
        };
        if let (Some(long), Some(short), Some(threshold)) = (long, short, threshold) {
            defs.push(TierDef {
                severity: t.severity,
                long,
                short,
                threshold,
            });
        }
    }
    defs
}

/// FNV-1a, 64 bit: a stable hash (std's `DefaultHasher` may change between Rust
/// releases, which would make every checkpoint look incompatible after an upgrade).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn data_fingerprint(spec: &SloSpec) -> u64 {
    let identity = (&spec.name, &spec.service, &spec.sli);
    fnv1a(&serde_json::to_vec(&identity).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> SloConfig {
        serde_saphyr::from_str(yaml).expect("yaml parses")
    }

    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml).validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn objective_errors_name_the_field() {
        let errs = errors(
            "slos:\n  - { name: a, service: s, objective: 99, sli: { availability: {} } }\n  - { name: b, service: s, objective: 100, sli: { availability: {} } }\n",
        );
        assert_eq!(
            errs,
            ["slos[1].objective: must be between 0 and 100 exclusive, got 100"]
        );
        let errs = errors(
            "slos:\n  - { name: a, service: s, objective: 99, sli: { availability: {} }, tenants: { acme: { objective: 0 } } }\n",
        );
        assert_eq!(
            errs,
            ["slos[0].tenants.acme.objective: must be between 0 and 100 exclusive, got 0"]
        );
    }

    #[test]
    fn reports_every_problem() {
        let errs = errors(
            r#"
slos:
  - { name: "", service: "", objective: -1, window: 90m, sli: { latency: { threshold: 0s } } }
  - { name: x, service: s, objective: 99, window: 1d, sli: { availability: { bad_status: [] } } }
  - { name: x, service: s, objective: 99, calendar: month, timezone: Mars/Olympus, sli: { availability: {} } }
  - { name: y, service: s, objective: 99, window: 7d, calendar: month, sli: { availability: {} } }
  - { name: z, service: s, objective: 99, timezone: UTC, sli: { availability: {} } }
alerting:
  tiers:
    - { severity: page, long_window: 15m, short_window: 5m, budget_fraction: 0.02 }
    - { severity: page, long_window: 1h, short_window: 6h, burn_rate: 2 }
    - { severity: ticket, long_window: 1d, short_window: 2h }
    - { severity: ticket, long_window: 3d, short_window: 6h, budget_fraction: 2 }
budget_policy: { warn_consumed: 0.95 }
"#,
        );
        let expected = [
            "alerting.tiers[0].long_window: must be one of 5m, 30m, 1h, 2h, 6h, 1d, 3d, got 15m",
            "alerting.tiers[1].short_window: must be shorter than long_window (1h), got 6h",
            "alerting.tiers[2].budget_fraction: give budget_fraction or burn_rate",
            "alerting.tiers[3].budget_fraction: must be in (0, 1], got 2",
            "budget_policy.freeze_consumed: must be >= warn_consumed (0.95), got 0.9",
            "slos[0].name: must not be empty",
            "slos[0].service: must not be empty",
            "slos[0].objective: must be between 0 and 100 exclusive, got -1",
            "slos[0].sli.latency.threshold: must be greater than 0",
            "slos[0].window: must be a whole number of hours, got 1h30m",
            "slos[1].sli.availability.bad_status: must list at least one status pattern",
            "slos[2].name: duplicate SLO name \"x\"",
        ];
        for (got, want) in errs.iter().zip(expected) {
            assert_eq!(got, want);
        }
        assert!(
            errs[12].starts_with("slos[2].timezone: unknown time zone \"Mars/Olympus\""),
            "{}",
            errs[12]
        );
        assert_eq!(
            errs[13],
            "slos[3].calendar: give either window (rolling) or calendar, not both"
        );
        assert_eq!(
            errs[14],
            "slos[4].timezone: only applies to calendar periods (calendar: month)"
        );
        assert_eq!(errs.len(), 15, "{errs:#?}");
    }

    #[test]
    fn window_must_cover_longest_alert_window() {
        let errs = errors(
            "slos:\n  - { name: a, service: s, objective: 99, window: 1d, sli: { availability: {} } }\n",
        );
        assert_eq!(
            errs,
            ["slos[0].window: must be at least the longest alert window (3d), got 1d"]
        );
    }

    #[test]
    fn compiles_tiers_periods_and_tenants() {
        let set = parse(
            r#"
slos:
  - { name: a, service: s, objective: 99.9, window: 7d, sli: { availability: {} }, tenants: { acme: { objective: 99.95 } } }
  - { name: b, service: s, objective: 99, calendar: month, timezone: Europe/Paris, sli: { latency: { threshold: 300ms } } }
"#,
        )
        .validate()
        .expect("valid");
        let a = set.get(SloId(0)).expect("a");
        assert!((a.tiers[0].threshold - 3.36).abs() < 1e-9);
        assert_eq!(a.objective_for("acme"), 99.95);
        assert_eq!(a.objective_for("other"), 99.9);
        assert_eq!(a.period_label, "7d");
        assert!(a.sli.is_good_status(404) && !a.sli.is_good_status(0));
        let b = set.get(SloId(1)).expect("b");
        assert!(
            (b.tiers[0].threshold - 14.4).abs() < 1e-9,
            "calendar uses 30d nominal"
        );
        assert_eq!(b.period_label, "month (Europe/Paris)");
        assert!(b.sli.is_good_latency(Duration::from_millis(300)));
        assert!(!b.sli.is_good_latency(Duration::from_millis(301)));
        assert_eq!(set.id_of("b"), Some(SloId(1)));
    }

    #[test]
    fn fingerprints_track_meaning() {
        let base =
            "slos:\n  - { name: a, service: s, objective: 99.9, sli: { availability: {} } }\n";
        let objective =
            "slos:\n  - { name: a, service: s, objective: 99.5, sli: { availability: {} } }\n";
        let sli = "slos:\n  - { name: a, service: s, objective: 99.9, sli: { availability: { bad_status: [5xx, 4xx] } } }\n";
        let fp = |y: &str| {
            let set = parse(y).validate().expect("valid");
            (
                set.fingerprint,
                set.get(SloId(0)).expect("a").data_fingerprint,
            )
        };
        let (b_all, b_data) = fp(base);
        let (o_all, o_data) = fp(objective);
        let (s_all, s_data) = fp(sli);
        assert_ne!(b_all, o_all);
        assert_eq!(
            b_data, o_data,
            "objective change keeps the counts meaningful"
        );
        assert_ne!(b_all, s_all);
        assert_ne!(b_data, s_data, "SLI change invalidates the counts");
    }
}
