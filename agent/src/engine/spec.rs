//! The SLO section of the agent config, as written by users.
//!
//! These types only describe; [`SloConfig::validate`] checks them and compiles them into
//! an [`SloSet`](super::slo::SloSet), the form the engine runs on. Every struct denies
//! unknown fields so a typo (`objectve:`) is an error rather than a silent default.
//!
//! The config loader can embed [`SloConfig`] under one key, or embed its three fields
//! (`slos`, `alerting`, `budget_policy`) at its own top level. It cannot use
//! `#[serde(flatten)]` for that, because serde does not support `flatten` together with
//! `deny_unknown_fields`.
//!
//! ```yaml
//! slos:
//!   - name: shop-availability
//!     service: shop
//!     objective: 99.9
//!     window: 30d            # or: calendar: month + timezone: Europe/Paris
//!     sli: { availability: { bad_status: ["5xx", "000"] } }
//!     tenants: { acme: { objective: 99.95 } }
//! alerting: { min_events: 10 }
//! budget_policy: { warn_consumed: 0.5, freeze_consumed: 0.9 }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::alert::Severity;
use super::budget::BudgetPolicy;
use super::duration::HumanDuration;
use super::slo::{ConfigErrors, SloSet};
use super::status::{BadStatusSet, StatusClass};

/// The whole SLO part of the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    #[serde(default)]
    pub slos: Vec<SloSpec>,
    #[serde(default)]
    pub alerting: AlertingSpec,
    #[serde(default)]
    pub budget_policy: BudgetPolicy,
}

impl SloConfig {
    /// Checks every field and compiles the config. All problems are reported at once,
    /// each naming its field, e.g. `slos[1].objective: must be between 0 and 100
    /// exclusive, got 100`.
    pub fn validate(&self) -> Result<SloSet, ConfigErrors> {
        SloSet::compile(self)
    }
}

/// One SLO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    pub name: String,
    pub service: String,
    /// Target percentage of good events, strictly between 0 and 100.
    pub objective: f64,
    /// Rolling period length (whole hours). Defaults to 30d when neither `window` nor
    /// `calendar` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<HumanDuration>,
    /// Calendar period instead of a rolling one; the budget resets at each boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<CalendarUnit>,
    /// IANA zone the calendar boundaries are computed in. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Default: availability, with 5xx and 000 (no response) bad.
    #[serde(default)]
    pub sli: SliSpec,
    /// Per-tenant objective overrides.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalendarUnit {
    Month,
}

/// What makes an event good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliSpec {
    Availability(AvailabilitySpec),
    Latency(LatencySpec),
}

impl Default for SliSpec {
    fn default() -> Self {
        SliSpec::Availability(AvailabilitySpec::default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilitySpec {
    /// Responses that count as bad. Default `["5xx", "000"]`.
    #[serde(default = "default_bad_status")]
    pub bad_status: Vec<StatusClass>,
}

impl Default for AvailabilitySpec {
    fn default() -> Self {
        Self {
            bad_status: default_bad_status(),
        }
    }
}

fn default_bad_status() -> Vec<StatusClass> {
    BadStatusSet::DEFAULT.to_vec()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// Requests slower than this are bad. The caller classifies; the engine only sees
    /// good/bad counts.
    pub threshold: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub objective: f64,
}

/// Alert policy shared by all SLOs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingSpec {
    /// No tier fires while its long window holds fewer events than this. Default 10.
    #[serde(default = "default_min_events")]
    pub min_events: u64,
    /// Replaces the default multiwindow multi-burn-rate tiers when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierSpec>>,
}

impl Default for AlertingSpec {
    fn default() -> Self {
        Self {
            min_events: default_min_events(),
            tiers: None,
        }
    }
}

fn default_min_events() -> u64 {
    10
}

/// One alert tier. Give exactly one of `budget_fraction` (rescaled to each SLO's period:
/// `threshold = budget_fraction * period / long_window`) or `burn_rate` (fixed).
/// Windows must be among 5m, 30m, 1h, 2h, 6h, 1d, 3d: the ones the buffers keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub severity: Severity,
    pub long_window: HumanDuration,
    pub short_window: HumanDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIEF_YAML: &str = r#"
slos:
  - name: shop-availability
    service: shop
    objective: 99.9
    window: 30d
    sli:
      availability:
        bad_status: ["5xx"]
    tenants:
      acme: { objective: 99.95 }
  - name: shop-latency
    service: shop
    objective: 99
    sli:
      latency:
        threshold: 300ms
alerting:
  min_events: 10
budget_policy:
  warn_consumed: 0.5
  freeze_consumed: 0.9
"#;

    #[test]
    fn parses_the_documented_example() {
        let config: SloConfig = serde_saphyr::from_str(BRIEF_YAML).expect("parses");
        assert_eq!(config.slos.len(), 2);
        assert_eq!(
            config.slos[0].window.map(|w| w.as_secs()),
            Some(30 * 86_400)
        );
        assert_eq!(
            config.slos[0].sli,
            SliSpec::Availability(AvailabilitySpec {
                bad_status: vec![StatusClass::Class(5)]
            })
        );
        assert_eq!(config.slos[0].tenants["acme"].objective, 99.95);
        assert_eq!(
            config.slos[1].sli,
            SliSpec::Latency(LatencySpec {
                threshold: HumanDuration::from_millis(300)
            })
        );
        assert_eq!(config.alerting.min_events, 10);
        assert_eq!(config.budget_policy.freeze_consumed, 0.9);
        let set = config.validate().expect("valid");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn defaults_apply() {
        let yaml = "slos:\n  - { name: a, service: s, objective: 99, sli: { availability: {} } }\n";
        let config: SloConfig = serde_saphyr::from_str(yaml).expect("parses");
        assert_eq!(
            config.slos[0].sli,
            SliSpec::Availability(AvailabilitySpec::default())
        );
        assert_eq!(config.alerting, AlertingSpec::default());
        assert_eq!(config.budget_policy, BudgetPolicy::default());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for yaml in [
            "slos:\n  - { name: a, service: s, objectve: 99, sli: { availability: {} } }\n",
            "slos:\n  - { name: a, service: s, objective: 99, sli: { availability: { bad: [] } } }\n",
            "slos:\n  - { name: a, service: s, objective: 99, sli: { throughput: {} } }\n",
            "alerting: { min_event: 3 }\n",
            "budget_policy: { warn: 0.3 }\n",
            "nope: 1\n",
        ] {
            assert!(serde_saphyr::from_str::<SloConfig>(yaml).is_err(), "{yaml}");
        }
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        let yaml = "slos:\n  - { name: a, service: s, objective: 99, window: 30x, sli: { availability: {} } }\n";
        let err = serde_saphyr::from_str::<SloConfig>(yaml).expect_err("bad duration");
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let yaml = "slos:\n  - { name: a, service: s, objective: 99, sli: { availability: { bad_status: [\"5x\"] } } }\n";
        let err = serde_saphyr::from_str::<SloConfig>(yaml).expect_err("bad status");
        assert!(err.to_string().contains("invalid status pattern"), "{err}");
    }
}
