//! Direct push of the engine's alerts to Alertmanager's v2 API
//! (`POST /api/v2/alerts`), as Prometheus itself does: a page goes out
//! seconds after the burn crosses the line, instead of after scrape + rule
//! evaluation.
//!
//! The engine's state is the truth: on every transition (and every
//! `resend_interval`) the firing set is read from the engine's snapshots and
//! compared with what Alertmanager was last told. New alerts and changed
//! severities are sent at once, alerts that stopped are sent with `endsAt`
//! = now, and firing alerts are re-sent every `resend_interval` with
//! `endsAt` four intervals ahead (Prometheus' rule), so Alertmanager
//! resolves them by itself if this agent dies. A failed push keeps the old
//! view, so the next attempt re-sends the whole difference; memory is
//! bounded by the number of (SLO, tenant) series.
//!
//! Alerts carry `alertname` (the same as the `burnwatch rules` alert for
//! that SLO and severity), `slo`, `tenant`, `service`, `severity`, Sloth's
//! `sloth_*` labels and the config's `environment`/`cluster`/`node`: each
//! node reports what it sees, so a tenant burning on two nodes is two
//! alerts that Alertmanager groups by `alertname`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::SelfStats;
use super::rules::alert_name;
use crate::config::export::Alertmanager;
use crate::engine::state::AgentState;

/// One alert as the v2 API takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
}

pub struct Handle {
    changed: Arc<Notify>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Alert states changed: sync now.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub fn start(
    config: &Alertmanager,
    labels: Vec<(&'static str, String)>,
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
) -> Result<Handle> {
    let client = reqwest::Client::builder()
        .timeout(config.timeout.as_duration())
        .build()
        .context("building the Alertmanager HTTP client")?;
    let pusher = Pusher {
        client,
        url: format!("{}/api/v2/alerts", config.url.trim_end_matches('/')),
        resend: config.resend_interval.as_duration(),
        labels,
        state,
        stats,
        told: HashMap::new(),
    };
    let changed = Arc::new(Notify::new());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(pusher.run(changed.clone(), stopped));
    Ok(Handle {
        changed,
        stop,
        task,
    })
}

struct Pusher {
    client: reqwest::Client,
    url: String,
    resend: Duration,
    labels: Vec<(&'static str, String)>,
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
    /// What Alertmanager was last told is firing, per (SLO, tenant).
    told: HashMap<(String, String), PostableAlert>,
}

impl Pusher {
    async fn run(mut self, changed: Arc<Notify>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.resend);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sync(true).await,
                _ = changed.notified() => self.sync(false).await,
                _ = &mut stopped => break,
            }
        }
    }

    /// Sends what changed since the last successful push (and, when
    /// `resend_all`, every firing alert).
    async fn sync(&mut self, resend_all: bool) {
        let now = crate::run::unix_now();
        let ends_at = rfc3339(now + 4 * self.resend.as_secs().max(1));
        let current = self.firing(now, &ends_at);
        let mut payload = Vec::new();
        for (key, alert) in &current {
            match self.told.get(key) {
                Some(prev) if prev.labels == alert.labels => {
                    if resend_all || prev.annotations != alert.annotations {
                        payload.push(alert.clone());
                    }
                }
                Some(prev) => {
                    // The severity changed: a different alert; end the old one.
                    payload.push(resolved(prev, now));
                    payload.push(alert.clone());
                }
                None => payload.push(alert.clone()),
            }
        }
        for (key, prev) in &self.told {
            if !current.contains_key(key) {
                payload.push(resolved(prev, now));
            }
        }
        if payload.is_empty() {
            return;
        }
        match self.post(&payload).await {
            Ok(()) => {
                self.stats.alertmanager.sent.fetch_add(1, Ordering::Relaxed);
                debug!(alerts = payload.len(), "pushed alerts to Alertmanager");
                self.told = current;
            }
            Err(e) => {
                self.stats
                    .alertmanager
                    .failed
                    .fetch_add(1, Ordering::Relaxed);
                warn!(url = %self.url, "Alertmanager push failed (retried at the next change or resend): {e:#}");
            }
        }
    }

    async fn post(&self, alerts: &[PostableAlert]) -> Result<()> {
        let body = serde_json::to_vec(alerts)?;
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("{status}: {}", text.chars().take(200).collect::<String>());
        }
        Ok(())
    }

    /// The engine's firing alerts now, as v2 alerts.
    fn firing(&self, now: u64, ends_at: &str) -> HashMap<(String, String), PostableAlert> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::new();
        for snap in st.engine.snapshots(now) {
            let Some(f) = snap.firing else { continue };
            let tier = f.tier;
            let severity = tier.severity;
            let mut labels: BTreeMap<String, String> = self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            for (k, v) in [
                ("alertname", alert_name(snap.slo_name, severity)),
                ("slo", snap.slo_name.to_string()),
                ("tenant", snap.tenant.to_string()),
                ("service", snap.service.to_string()),
                ("severity", severity.as_str().to_string()),
                ("sloth_id", format!("{}-{}", snap.service, snap.slo_name)),
                ("sloth_service", snap.service.to_string()),
                ("sloth_slo", snap.slo_name.to_string()),
                ("source", "burnwatch-agent".to_string()),
            ] {
                labels.insert(k.to_string(), v);
            }
            let long = snap.windows[tier.long.index()].burn_rate;
            let short = snap.windows[tier.short.index()].burn_rate;
            let round = |x: f64| (x * 1000.0).round() / 1000.0;
            let annotations = BTreeMap::from([
                (
                    "summary".to_string(),
                    format!(
                        "SLO {} of service {}: tenant {} burns its error budget at {}x over {} and {}x over {} (threshold {}x).",
                        snap.slo_name,
                        snap.service,
                        snap.tenant,
                        round(long),
                        tier.long.label(),
                        round(short),
                        tier.short.label(),
                        round(tier.threshold)
                    ),
                ),
                ("long_window".to_string(), tier.long.label().to_string()),
                ("short_window".to_string(), tier.short.label().to_string()),
                ("threshold".to_string(), round(tier.threshold).to_string()),
                (
                    "budget_remaining".to_string(),
                    round(snap.budget_remaining).to_string(),
                ),
            ]);
            out.insert(
                (snap.slo_name.to_string(), snap.tenant.to_string()),
                PostableAlert {
                    labels,
                    annotations,
                    starts_at: rfc3339(f.since),
                    ends_at: ends_at.to_string(),
                },
            );
        }
        out
    }
}

fn resolved(prev: &PostableAlert, now: u64) -> PostableAlert {
    PostableAlert {
        ends_at: rfc3339(now),
        ..prev.clone()
    }
}

fn rfc3339(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn alerts_serialize_as_the_v2_api_expects() {
        let a = PostableAlert {
            labels: BTreeMap::from([("alertname".into(), "X".into())]),
            annotations: BTreeMap::new(),
            starts_at: rfc3339(0),
            ends_at: rfc3339(60),
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"labels":{"alertname":"X"},"annotations":{},"startsAt":"1970-01-01T00:00:00Z","endsAt":"1970-01-01T00:01:00Z"}"#
        );
    }
}
