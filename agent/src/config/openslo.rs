//! Loading SLOs from OpenSLO v1 files (`openslo: [file, ...]` in the config).
//!
//! Supported: documents of `kind: SLI` and `kind: SLO` (several per file,
//! `---`-separated), an SLO's inline `indicator` or `indicatorRef`,
//! `ratioMetric` indicators, rolling (`isRolling: true`) or calendar-month
//! `timeWindow`s, `budgetingMethod: Occurrences`, and the first objective's
//! `target` (0..1) or `targetPercent`.
//!
//! burnwatch computes its SLIs in the kernel, not from queries, so the
//! metric source of the ratio's `good` or `bad` side must be
//! `type: burnwatch`, and its `spec` is burnwatch's own SLI spec:
//! `{availability: {bad_status: [5xx, "000"]}}` or
//! `{latency: {threshold: 300ms}}`. Other sources are rejected with the
//! document and field named, rather than silently ignored.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::engine::duration::parse_duration;
use crate::engine::spec::{CalendarUnit, SliSpec, SloSpec};

/// Reads an OpenSLO file into SLO specs. Errors: (field path, message),
/// the path starting with the document, e.g. `doc[2].spec.budgetingMethod`.
pub fn load(path: &Path) -> Result<Vec<SloSpec>, (String, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            String::new(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<SloSpec>, (String, String)> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text).map_err(|e| {
        (
            String::new(),
            e.to_string().lines().next().unwrap_or("").to_string(),
        )
    })?;
    let mut slis: HashMap<String, (usize, &Value)> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        check_api_version(i, d)?;
        if str_at(d, "kind") == Some("SLI") {
            let name = name_of(i, d)?;
            slis.insert(name, (i, d));
        }
    }
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        match str_at(d, "kind") {
            Some("SLO") => out.push(slo(i, d, &slis)?),
            Some("SLI") => {}
            Some(other) => {
                return Err((
                    format!("doc[{i}].kind"),
                    format!("{other:?} is not supported (SLO and SLI are)"),
                ));
            }
            None => return Err((format!("doc[{i}].kind"), "missing".into())),
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn check_api_version(i: usize, d: &Value) -> Result<(), (String, String)> {
    match str_at(d, "apiVersion") {
        Some("openslo/v1") => Ok(()),
        other => Err((
            format!("doc[{i}].apiVersion"),
            format!("expected openslo/v1, got {other:?}"),
        )),
    }
}

fn name_of(i: usize, d: &Value) -> Result<String, (String, String)> {
    d.get("metadata")
        .and_then(|m| str_at(m, "name"))
        .map(str::to_string)
        .ok_or_else(|| (format!("doc[{i}].metadata.name"), "missing".into()))
}

fn slo(
    i: usize,
    d: &Value,
    slis: &HashMap<String, (usize, &Value)>,
) -> Result<SloSpec, (String, String)> {
    let at = |f: &str| format!("doc[{i}].spec.{f}");
    let name = name_of(i, d)?;
    let spec = d
        .get("spec")
        .ok_or_else(|| (format!("doc[{i}].spec"), "missing".into()))?;
    let service = str_at(spec, "service")
        .ok_or_else(|| (at("service"), "missing".into()))?
        .to_string();
    match str_at(spec, "budgetingMethod") {
        Some("Occurrences") => {}
        other => {
            return Err((
                at("budgetingMethod"),
                format!("only Occurrences is supported, got {other:?}"),
            ));
        }
    }
    // The indicator: inline, or a reference to a kind: SLI document.
    let (sli_path, sli_spec) = if let Some(ind) = spec.get("indicator") {
        (at("indicator.spec"), ind.get("spec"))
    } else if let Some(r) = str_at(spec, "indicatorRef") {
        let (j, doc) = slis.get(r).ok_or_else(|| {
            (
                at("indicatorRef"),
                format!("no SLI named {r:?} in the file"),
            )
        })?;
        (format!("doc[{j}].spec"), doc.get("spec"))
    } else {
        return Err((at("indicator"), "needs indicator or indicatorRef".into()));
    };
    let sli = sli_from_ratio(&sli_path, sli_spec)?;

    let objective = spec
        .get("objectives")
        .and_then(Value::as_array)
        .and_then(|o| o.first())
        .ok_or_else(|| (at("objectives"), "needs at least one objective".into()))?;
    let objective = if let Some(t) = objective.get("target").and_then(Value::as_f64) {
        t * 100.0
    } else if let Some(p) = objective.get("targetPercent").and_then(Value::as_f64) {
        p
    } else {
        return Err((at("objectives[0].target"), "missing".into()));
    };

    let tw = spec
        .get("timeWindow")
        .and_then(Value::as_array)
        .and_then(|w| w.first())
        .ok_or_else(|| (at("timeWindow"), "needs one time window".into()))?;
    let duration =
        str_at(tw, "duration").ok_or_else(|| (at("timeWindow[0].duration"), "missing".into()))?;
    let rolling = tw
        .get("isRolling")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (window, calendar, timezone) = if rolling {
        let d = openslo_duration(duration).ok_or_else(|| {
            (
                at("timeWindow[0].duration"),
                format!("{duration:?} is not a duration"),
            )
        })?;
        (
            Some(
                d.try_into()
                    .map_err(|e| (at("timeWindow[0].duration"), format!("{e}")))?,
            ),
            None,
            None,
        )
    } else {
        if duration != "1M" {
            return Err((
                at("timeWindow[0].duration"),
                format!("calendar windows must be 1M (a month), got {duration:?}"),
            ));
        }
        let tz = tw
            .get("calendar")
            .and_then(|c| str_at(c, "timeZone"))
            .map(str::to_string);
        (None, Some(CalendarUnit::Month), tz)
    };
    Ok(SloSpec {
        name,
        service,
        objective,
        window,
        calendar,
        timezone,
        sli,
        tenants: Default::default(),
    })
}

/// `ratioMetric.{good|bad}.metricSource` of type burnwatch -> our SLI spec.
fn sli_from_ratio(path: &str, spec: Option<&Value>) -> Result<SliSpec, (String, String)> {
    let ratio = spec.and_then(|s| s.get("ratioMetric")).ok_or_else(|| {
        (
            format!("{path}.ratioMetric"),
            "missing (only ratioMetric is supported)".into(),
        )
    })?;
    let (side, metric) = match (ratio.get("good"), ratio.get("bad")) {
        (Some(g), _) => ("good", g),
        (None, Some(b)) => ("bad", b),
        (None, None) => {
            return Err((format!("{path}.ratioMetric"), "needs good or bad".into()));
        }
    };
    let at = format!("{path}.ratioMetric.{side}.metricSource");
    let source = metric
        .get("metricSource")
        .ok_or_else(|| (at.clone(), "missing".into()))?;
    match str_at(source, "type") {
        Some(t) if t.eq_ignore_ascii_case("burnwatch") => {}
        other => {
            return Err((
                format!("{at}.type"),
                format!("must be burnwatch (the agent measures SLIs itself), got {other:?}"),
            ));
        }
    }
    let spec = source.get("spec").cloned().unwrap_or(Value::Null);
    serde_json::from_value::<SliSpec>(spec).map_err(|e| (format!("{at}.spec"), e.to_string()))
}

/// OpenSLO durations: `Nm`, `Nh`, `Nd`, `Nw` (weeks).
fn openslo_duration(s: &str) -> Option<String> {
    if let Some(w) = s.strip_suffix('w') {
        let n: u64 = w.parse().ok()?;
        return Some(format!("{}d", n * 7));
    }
    parse_duration(s).ok().map(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: openslo/v1
kind: SLI
metadata:
  name: shop-errors
spec:
  ratioMetric:
    counter: true
    bad:
      metricSource:
        type: burnwatch
        spec:
          availability:
            bad_status: ["5xx", "429", "000"]
    total:
      metricSource:
        type: burnwatch
        spec: {}
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: shop-availability
spec:
  service: shop
  indicatorRef: shop-errors
  timeWindow:
    - duration: 4w
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - displayName: good
      target: 0.999
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: shop-latency
spec:
  service: shop
  indicator:
    metadata:
      name: fast
    spec:
      ratioMetric:
        good:
          metricSource:
            type: burnwatch
            spec:
              latency:
                threshold: 300ms
        total:
          metricSource:
            type: burnwatch
            spec: {}
  timeWindow:
    - duration: 1M
      isRolling: false
      calendar:
        startTime: "2026-01-01 00:00:00"
        timeZone: Europe/Paris
  budgetingMethod: Occurrences
  objectives:
    - targetPercent: 99
"#;

    #[test]
    fn loads_slos_with_refs_inline_indicators_and_calendars() {
        let slos = parse(FILE).unwrap();
        assert_eq!(slos.len(), 2);
        assert_eq!(slos[0].name, "shop-availability");
        assert_eq!(slos[0].service, "shop");
        assert!((slos[0].objective - 99.9).abs() < 1e-9);
        assert_eq!(slos[0].window.as_ref().unwrap().to_string(), "28d");
        match &slos[0].sli {
            SliSpec::Availability(a) => assert_eq!(a.bad_status.len(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(slos[1].calendar, Some(CalendarUnit::Month));
        assert_eq!(slos[1].timezone.as_deref(), Some("Europe/Paris"));
        assert!(matches!(slos[1].sli, SliSpec::Latency(_)));
        assert_eq!(slos[1].objective, 99.0);
        // The result is a valid engine config.
        let config = crate::engine::SloConfig {
            slos,
            ..Default::default()
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unsupported_parts_are_named() {
        let e = parse(&FILE.replace("Occurrences", "Timeslices")).unwrap_err();
        assert_eq!(e.0, "doc[1].spec.budgetingMethod");
        let e = parse(&FILE.replace("type: burnwatch", "type: Prometheus")).unwrap_err();
        assert_eq!(e.0, "doc[0].spec.ratioMetric.bad.metricSource.type");
        let e =
            parse(&FILE.replace("indicatorRef: shop-errors", "indicatorRef: nope")).unwrap_err();
        assert_eq!(e.0, "doc[1].spec.indicatorRef");
        let e = parse(&FILE.replace("openslo/v1\nkind: SLO", "openslo/v2\nkind: SLO")).unwrap_err();
        assert_eq!(e.0, "doc[1].apiVersion");
        let e = parse(&FILE.replace("duration: 1M", "duration: 2M")).unwrap_err();
        assert_eq!(e.0, "doc[2].spec.timeWindow[0].duration");
    }
}
