//! Exporters: how the agent's numbers leave the node.
//!
//! One file per sink: `prometheus` (the `/metrics` exposition), `otlp`
//! (metrics and alert events to an OpenTelemetry collector), `alertmanager`
//! (alerts pushed to Alertmanager's v2 API), `rules` (Prometheus rules that
//! compute the SLOs cluster-wide).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use anyhow::Result;

use crate::attribution::tenant_hash::TenantHasher;
use crate::config::Config;

use crate::engine::state::AgentState;
use crate::engine::{AlertTransition, TransitionKind};

/// Help text of `burnwatch_capability`, shared by the Prometheus and OTLP
/// encoders.
pub const CAPABILITY_HELP: &str = "Whether each capability of the capture runs on this kernel (1) or not (0): \
     core (requests and status lines), then the optional ones (pipelined_responses, client_requests, \
     sendfile_bodies, open_at_close, descriptor_reuse, tcp_resets); a program the kernel refuses turns its \
     capability off, and the agent logs what is not counted. Last, socket_capture: 1 when the socket-layer \
     capture path runs (only socket I/O runs a program), 0 when the syscall-tracepoint path does (kernels \
     before 6.4, or capture.mode: syscalls).";

pub mod alertmanager;
pub mod otlp;
pub mod prometheus;
pub mod rules;

/// `tenant.hash`: the hasher, and the config with its per-tenant SLO
/// overrides keyed by pseudonym (the engine only ever sees pseudonyms).
pub fn tenant_hashing(mut config: Config) -> Result<(Config, Option<TenantHasher>)> {
    let (Some(_), Some(file)) = (&config.tenant.hash, &config.tenant.hash_key_file) else {
        return Ok((config, None));
    };
    let key = crate::config::export::read_hash_key(file).map_err(anyhow::Error::msg)?;
    let hasher = TenantHasher::new(&key);
    for slo in &mut config.slos {
        slo.tenants = std::mem::take(&mut slo.tenants)
            .into_iter()
            .map(|(t, spec)| (hasher.pseudonym(&t).to_string(), spec))
            .collect();
    }
    Ok((config, Some(hasher)))
}

/// One alert state change, self-contained for the push exporters.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub kind: TransitionKind,
    pub slo: String,
    pub service: String,
    pub tenant: String,
    pub severity: &'static str,
    pub previous_severity: Option<&'static str>,
    pub long_window: &'static str,
    pub short_window: &'static str,
    pub long_burn_rate: f64,
    pub short_burn_rate: f64,
    /// Burn rate both windows crossed.
    pub threshold: f64,
    /// Objective of this tenant, percent.
    pub objective: f64,
    /// Unix seconds.
    pub at: u64,
}

impl AlertEvent {
    pub fn kind_str(&self) -> &'static str {
        match self.kind {
            TransitionKind::Fired => "fired",
            TransitionKind::Resolved => "resolved",
            TransitionKind::Escalated => "escalated",
            TransitionKind::Deescalated => "deescalated",
        }
    }
}

/// The push exporters that follow alert transitions and metrics: OTLP and
/// Alertmanager, each an independent task with its own bounded queue, so a
/// slow or dead peer never slows the poll loop.
pub struct AlertSinks {
    otlp: Option<otlp::Handle>,
    alertmanager: Option<alertmanager::Handle>,
}

impl AlertSinks {
    pub fn start(
        config: &Config,
        state: &Arc<RwLock<AgentState>>,
        stats: &Arc<SelfStats>,
    ) -> Result<Self> {
        let labels = config.exporters.labels.pairs();
        Ok(AlertSinks {
            otlp: match &config.exporters.otlp {
                Some(c) => Some(otlp::start(
                    c,
                    labels.clone(),
                    state.clone(),
                    stats.clone(),
                )?),
                None => None,
            },
            alertmanager: match &config.exporters.alertmanager {
                Some(c) => Some(alertmanager::start(
                    c,
                    labels,
                    state.clone(),
                    stats.clone(),
                )?),
                None => None,
            },
        })
    }

    /// Applies a reloaded config's `exporters.otlp` and
    /// `exporters.alertmanager`. Everything is built first: on an error
    /// nothing changes. A running OTLP exporter is switched in place (its
    /// queue and delta state carry over); an Alertmanager pusher whose
    /// settings changed is replaced (the new one pushes the firing alerts
    /// at once). Stopped pushers flush in the background.
    pub fn reconfigure(
        &mut self,
        old: &Config,
        new: &Config,
        state: &Arc<RwLock<AgentState>>,
        stats: &Arc<SelfStats>,
    ) -> Result<bool> {
        let labels = new.exporters.labels.pairs();
        let labels_changed = old.exporters.labels != new.exporters.labels;
        let otlp_changed = labels_changed || old.exporters.otlp != new.exporters.otlp;
        let am_changed = labels_changed || old.exporters.alertmanager != new.exporters.alertmanager;
        if !otlp_changed && !am_changed {
            return Ok(false);
        }
        enum OtlpStep {
            Keep,
            Reconfigure(Box<otlp::Settings>),
            Start(otlp::Handle),
            Stop,
        }
        let otlp_step = match (&self.otlp, &new.exporters.otlp) {
            _ if !otlp_changed => OtlpStep::Keep,
            (Some(_), Some(c)) => OtlpStep::Reconfigure(Box::new(otlp::Settings::new(c, &labels)?)),
            (None, Some(c)) => OtlpStep::Start(otlp::start(
                c,
                labels.clone(),
                state.clone(),
                stats.clone(),
            )?),
            (Some(_), None) => OtlpStep::Stop,
            (None, None) => OtlpStep::Keep,
        };
        let am = match (&new.exporters.alertmanager, am_changed) {
            (Some(c), true) => match alertmanager::start(c, labels, state.clone(), stats.clone()) {
                Ok(h) => Some(Some(h)),
                Err(e) => {
                    if let OtlpStep::Start(h) = otlp_step {
                        tokio::spawn(h.shutdown());
                    }
                    return Err(e);
                }
            },
            (None, true) => Some(None),
            (_, false) => None,
        };
        match otlp_step {
            OtlpStep::Keep => {}
            OtlpStep::Reconfigure(settings) => {
                if let Some(h) = &self.otlp {
                    h.reconfigure(*settings);
                }
            }
            OtlpStep::Start(h) => self.otlp = Some(h),
            OtlpStep::Stop => {
                if let Some(h) = self.otlp.take() {
                    tokio::spawn(h.shutdown());
                }
            }
        }
        if let Some(am) = am
            && let Some(old) = std::mem::replace(&mut self.alertmanager, am)
        {
            tokio::spawn(old.shutdown());
        }
        Ok(true)
    }

    /// Hands the poll's transitions to the exporters (never blocks).
    pub fn send(&self, state: &RwLock<AgentState>, transitions: &[AlertTransition]) {
        if transitions.is_empty() {
            return;
        }
        if let Some(a) = &self.alertmanager {
            a.notify();
        }
        let Some(o) = &self.otlp else { return };
        let st = state.read().unwrap_or_else(|e| e.into_inner());
        for t in transitions {
            let Some(slo) = st.engine.slos().get(t.slo) else {
                continue;
            };
            o.send(AlertEvent {
                kind: t.kind,
                slo: t.slo_name.to_string(),
                service: slo.service.clone(),
                tenant: t.tenant.to_string(),
                severity: t.tier.severity.as_str(),
                previous_severity: t.previous_tier.map(|p| p.severity.as_str()),
                long_window: t.tier.long.label(),
                short_window: t.tier.short.label(),
                long_burn_rate: t.long_burn,
                short_burn_rate: t.short_burn,
                threshold: t.tier.threshold,
                objective: slo.objective_for(&t.tenant),
                at: t.at,
            });
        }
    }

    /// Last flush on shutdown (bounded by each exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(a) = self.alertmanager {
            a.shutdown().await;
        }
        if let Some(o) = self.otlp {
            o.shutdown().await;
        }
    }
}

/// The agent's own measurements, written by the stages that make them and
/// read by the `/metrics` exposition. Atomics: no lock on any hot path.
#[derive(Debug, Default)]
pub struct SelfStats {
    /// Time to encode the previous `/metrics` answer, and its size.
    pub scrape_ns: AtomicU64,
    pub scrape_bytes: AtomicU64,
    /// Time of the last kernel map read (whole poll), and of its SLO
    /// classification + evaluation part.
    pub poll_ns: AtomicU64,
    pub evaluation_ns: AtomicU64,
    /// Entries found in the kernel's COUNTS and CONN_EVENTS maps at the last
    /// poll.
    pub counts_entries: AtomicU64,
    pub conn_events_entries: AtomicU64,
    pub otlp_metrics: ExportCounters,
    pub otlp_logs: ExportCounters,
    pub alertmanager: ExportCounters,
    pub api: ApiCounters,
}

/// Clients of the API the agent turned away (`api/server.rs`).
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Connections closed because a request head did not arrive in time (or
    /// the connection sat idle) or a response write stalled.
    pub timed_out: AtomicU64,
    /// `/metrics` requests answered 503: too many scrapes in flight.
    pub scrapes_refused: AtomicU64,
    /// Idle connections closed to make room for a new one (the connection
    /// budget, or the client's, was full).
    pub evicted: AtomicU64,
    /// Connections closed at once: the budget was full of connections with
    /// a request in flight.
    pub refused: AtomicU64,
    /// Requests answered 401 (`api.auth`: no or a wrong token).
    pub unauthorized: AtomicU64,
    /// TLS handshakes that failed (`api.tls`).
    pub tls_failed: AtomicU64,
    /// Connections open now (a gauge).
    pub connections: AtomicU64,
}

/// What one push exporter did.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Requests the peer accepted.
    pub sent: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed: AtomicU64,
    /// Items given up on (queue full, or retries exhausted).
    pub dropped: AtomicU64,
}
