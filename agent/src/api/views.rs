//! Builds the JSON API's types ([`super::types`]) from the engine's snapshots.

use crate::engine::alert::AlertTier;
use crate::engine::duration::HumanDuration;
use crate::engine::history::{self, SeriesHistory, WINDOWS};
use crate::engine::state::AgentState;
use crate::engine::status::{NO_RESPONSE, StatusClass};
use crate::engine::{SeriesSnapshot, Sli, Slo, SloSet};

use super::types::{
    Firing, History, HistoryPoint, SeriesDetail, SeriesStatus, SloInfo, SlosResponse, Tier,
    WindowBurn, WindowDetail, sort_by_burn,
};

/// `/v1/slos`.
pub fn slos(st: &AgentState, node: &str) -> SlosResponse {
    let slos = st.engine.slos();
    let mut series: Vec<SeriesStatus> = st
        .engine
        .snapshots(st.now)
        .map(|s| series_status(&s))
        .collect();
    sort_by_burn(&mut series);
    SlosResponse {
        now: st.now,
        node: node.to_owned(),
        probes_attached: st.probes.clone(),
        capabilities: st
            .capabilities
            .iter()
            .map(|(f, up)| (f.to_string(), *up))
            .collect(),
        slos: slo_infos(slos),
        series,
    }
}

/// `/v1/slos/{slo}/tenants/{tenant}`; `Err` says what is unknown.
pub fn detail(
    st: &AgentState,
    node: &str,
    slo_name: &str,
    tenant: &str,
) -> Result<SeriesDetail, String> {
    let slos = st.engine.slos();
    let id = slos
        .id_of(slo_name)
        .ok_or_else(|| format!("no SLO named {slo_name:?}"))?;
    let slo = slos
        .get(id)
        .ok_or_else(|| format!("no SLO named {slo_name:?}"))?;
    let snap = st
        .engine
        .snapshot(st.now, id, tenant)
        .ok_or_else(|| format!("no data for tenant {tenant:?} of SLO {slo_name:?}"))?;
    let points = st
        .history
        .get(id, tenant)
        .map_or_else(|| SeriesHistory::empty_points(st.now), |h| h.points(st.now))
        .into_iter()
        .map(|(at, burns)| HistoryPoint {
            at,
            burn: burns.to_vec(),
        })
        .collect();
    Ok(SeriesDetail {
        now: st.now,
        node: node.to_owned(),
        series: series_status(&snap),
        tiers: slo.tiers.iter().map(tier).collect(),
        windows: snap
            .windows
            .iter()
            .chain(std::iter::once(&snap.period))
            .map(|w| WindowDetail {
                window: w.window.to_owned(),
                secs: w.secs,
                good: w.good,
                bad: w.bad,
                sli: w.sli,
                burn_rate: w.burn_rate,
                budget_consumed: w.budget_consumed,
            })
            .collect(),
        history: History {
            step_secs: history::STEP_SECS,
            windows: WINDOWS.iter().map(|w| w.label().to_owned()).collect(),
            points,
        },
        probes_attached: st.probes.clone(),
    })
}

pub fn slo_infos(slos: &SloSet) -> Vec<SloInfo> {
    slos.iter()
        .map(|s| SloInfo {
            name: s.name.to_string(),
            service: s.service.clone(),
            objective: s.objective,
            period: s.period_label.clone(),
            sli: sli_text(s),
            tiers: s.tiers.iter().map(tier).collect(),
        })
        .collect()
}

pub fn tier(t: &AlertTier) -> Tier {
    Tier {
        severity: t.severity.as_str().to_owned(),
        long: t.long.label().to_owned(),
        short: t.short.label().to_owned(),
        threshold: t.threshold,
    }
}

fn series_status(s: &SeriesSnapshot<'_>) -> SeriesStatus {
    SeriesStatus {
        slo: s.slo_name.to_owned(),
        tenant: s.tenant.to_owned(),
        service: s.service.to_owned(),
        objective: s.objective,
        budget_remaining: s.budget_remaining,
        budget_consumed: s.budget_consumed,
        status: format!("{:?}", s.status).to_lowercase(),
        burn: s
            .windows
            .iter()
            .chain(std::iter::once(&s.period))
            .map(|w| WindowBurn {
                window: w.window.to_owned(),
                burn_rate: w.burn_rate,
            })
            .collect(),
        firing: s.firing.map(|f| Firing {
            tier: tier(&f.tier),
            since: f.since,
            firing_since: f.firing_since,
        }),
        time_to_exhaustion_secs: s.time_to_exhaustion_secs,
        low_traffic: s.low_traffic,
        period_good: s.period.good,
        period_bad: s.period.bad,
    }
}

/// `availability (bad: 5xx, 000)` or `latency <= 300ms`.
pub fn sli_text(slo: &Slo) -> String {
    match &slo.sli {
        Sli::Latency { threshold } => {
            let ms = u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX);
            format!("latency <= {}", HumanDuration::from_millis(ms))
        }
        Sli::Availability { .. } => {
            // The compiled set is a bitset; rebuild the shortest pattern list from it.
            let bad = |code: u16| !slo.sli.is_good_status(code);
            let mut patterns = Vec::new();
            for digit in 1..=9u16 {
                let class = digit * 100..digit * 100 + 100;
                if class.clone().all(bad) {
                    patterns.push(StatusClass::Class(digit as u8));
                } else {
                    patterns.extend(class.filter(|&c| bad(c)).map(StatusClass::Exact));
                }
            }
            if bad(NO_RESPONSE) {
                patterns.push(StatusClass::NoResponse);
            }
            let list: Vec<String> = patterns.iter().map(ToString::to_string).collect();
            format!("availability (bad: {})", list.join(", "))
        }
    }
}
