//! The Prometheus exposition, encoded straight from the agent's state at
//! scrape time (a `prometheus-client` custom collector): the kernel's
//! counters are already cumulative, so there is nothing to increment and no
//! per-request work in userspace.

use std::fmt;
use std::sync::{Arc, RwLock};

use burnwatch_common::maps::{conn_event, counter};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::budget::BudgetStatus;
use crate::engine::state::AgentState;
use crate::engine::window::Window;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct StateCollector {
    state: Arc<RwLock<AgentState>>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

/// A registry with every burnwatch metric family.
pub fn registry(state: Arc<RwLock<AgentState>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StateCollector { state }));
    r
}

/// Encodes the registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());

        let mut m = enc.encode_descriptor(
            "burnwatch_build",
            "Build information about the running agent.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        let mut m = enc.encode_descriptor(
            "burnwatch_http_requests",
            "HTTP requests seen by the kernel, by service, tenant, method and status code (000: no response).",
            None,
            MetricType::Counter,
        )?;
        let mut status = String::with_capacity(3);
        for s in &state.requests.series {
            status.clear();
            use std::fmt::Write;
            write!(status, "{:03}", s.labels.status)?;
            let labels = [
                ("service", &*s.labels.service),
                ("tenant", &*s.labels.tenant),
                ("method", s.labels.method),
                ("status_code", status.as_str()),
            ];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&s.stats.count, None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_http_client_requests",
            "HTTP requests watched clients made, by client, upstream (ip:port), tenant, method and status code (000: no response).",
            None,
            MetricType::Counter,
        )?;
        for (l, n) in &state.clients.series {
            status.clear();
            use std::fmt::Write;
            write!(status, "{:03}", l.status)?;
            let labels = [
                ("service", &*l.service),
                ("upstream", &*l.upstream),
                ("tenant", &*l.tenant),
                ("method", l.method),
                ("status_code", status.as_str()),
            ];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_http_request_duration_seconds",
            "Time from the first byte of a request read to the first byte of its response written.",
            None,
            MetricType::Histogram,
        )?;
        let bounds = &state.latency_bounds_s;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(bounds.len() + 1);
        for l in &state.requests.latency {
            buckets.clear();
            for (i, n) in l.buckets.iter().enumerate() {
                let bound = bounds.get(i).copied().unwrap_or(f64::MAX);
                buckets.push((bound, *n));
            }
            let labels = [("service", &*l.service), ("tenant", &*l.tenant)];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                l.sum_ns as f64 / 1e9,
                l.count,
                &buckets,
                None,
            )?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_dropped_events",
            "Events the capture lost before attributing them (a full kernel map, an unreadable buffer): counts may be low by this much.",
            None,
            MetricType::Counter,
        )?;
        for (i, name) in counter::NAMES.iter().enumerate() {
            m.encode_family(&[("reason", *name)])?
                .encode_counter::<NoLabelSet, _, u64>(&state.capture_counters[i], None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_capture_anomalies",
            "What the capture could not see or match, per service: how complete each SLI is.",
            None,
            MetricType::Counter,
        )?;
        for (service, kind, n) in &state.conn_events.series {
            if let Some(name) = conn_event::anomaly_name(*kind) {
                m.encode_family(&[("service", &**service), ("kind", name)])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_tcp_failures",
            "TCP failures the application never reports: resets and refusals on the service's port, connections closed with requests unanswered.",
            None,
            MetricType::Counter,
        )?;
        for (service, kind, n) in &state.conn_events.series {
            if let Some(name) = conn_event::failure_name(*kind) {
                m.encode_family(&[("service", &**service), ("kind", name)])?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_tenant_overflow",
            "Distinct tenants counted under tenant=\"__overflow__\" because the service reached tenant.max_per_service.",
            None,
            MetricType::Counter,
        )?;
        for (service, n) in state.requests.tenant_overflow() {
            m.encode_family(&[("service", &**service)])?
                .encode_counter::<NoLabelSet, _, u64>(&(n as u64), None)?;
        }

        encode_slos(&state, &mut enc)?;

        let mut m = enc.encode_descriptor(
            "burnwatch_bpf_program_runs",
            "Runs of each eBPF program (counted while kernel.bpf_stats_enabled=1).",
            None,
            MetricType::Counter,
        )?;
        for (name, runs, _) in &state.bpf_stats {
            m.encode_family(&[("program", *name)])?
                .encode_counter::<NoLabelSet, _, u64>(runs, None)?;
        }
        let mut m = enc.encode_descriptor(
            "burnwatch_bpf_program_run_seconds",
            "Time spent in each eBPF program (counted while kernel.bpf_stats_enabled=1).",
            None,
            MetricType::Counter,
        )?;
        for (name, _, ns) in &state.bpf_stats {
            m.encode_family(&[("program", *name)])?
                .encode_counter::<NoLabelSet, _, f64>(&(*ns as f64 / 1e9), None)?;
        }

        let mut m = enc.encode_descriptor(
            "burnwatch_probes_attached",
            "eBPF programs attached on this node.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(state.probes.len() as i64))?;
        Ok(())
    }
}

const STATUSES: [(BudgetStatus, &str); 5] = [
    (BudgetStatus::Healthy, "healthy"),
    (BudgetStatus::Attention, "attention"),
    (BudgetStatus::Warning, "warning"),
    (BudgetStatus::Critical, "critical"),
    (BudgetStatus::Exhausted, "exhausted"),
];

/// The SLO families, from the engine's snapshots at the last evaluation.
fn encode_slos(state: &AgentState, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let now = state.now;
    let engine = &state.engine;

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_series",
        "Active (slo, tenant) series in the SLO engine.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(engine.series_count() as i64))?;
    let mut m = enc.encode_descriptor(
        "burnwatch_slo_engine_memory_bytes",
        "Approximate memory held by the SLO engine's windows.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(engine.approx_memory_bytes() as i64))?;

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_objective_ratio",
        "The SLO's objective as a ratio (0.999 for 99.9%).",
        None,
        MetricType::Gauge,
    )?;
    for slo in engine.slos().iter() {
        m.encode_family(&[("slo", &*slo.name)])?
            .encode_gauge(&(slo.objective / 100.0))?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_events",
        "Events classified by the SLO's SLI since the agent started, by outcome.",
        None,
        MetricType::Counter,
    )?;
    for ((id, tenant), (good, bad)) in &state.slo_events {
        let Some(slo) = engine.slos().get(*id) else {
            continue;
        };
        for (outcome, n) in [("good", good), ("bad", bad)] {
            m.encode_family(&[
                ("slo", &*slo.name),
                ("tenant", &**tenant),
                ("outcome", outcome),
            ])?
            .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_burn_rate",
        "Error-budget burn rate over each window (1 = spending exactly the budget over the period).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        for (w, stats) in Window::ALL.iter().zip(snap.windows.iter()) {
            m.encode_family(&[
                ("slo", snap.slo_name),
                ("tenant", snap.tenant),
                ("window", w.label()),
            ])?
            .encode_gauge(&stats.burn_rate)?;
        }
        m.encode_family(&[
            ("slo", snap.slo_name),
            ("tenant", snap.tenant),
            ("window", "period"),
        ])?
        .encode_gauge(&snap.period.burn_rate)?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_error_budget_remaining_ratio",
        "Share of the period's error budget left (negative when overspent).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        m.encode_family(&[("slo", snap.slo_name), ("tenant", snap.tenant)])?
            .encode_gauge(&snap.budget_remaining)?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_time_to_exhaustion_seconds",
        "Time until the error budget is spent at the last hour's burn rate (absent when not burning).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        if let Some(t) = snap.time_to_exhaustion_secs {
            m.encode_family(&[("slo", snap.slo_name), ("tenant", snap.tenant)])?
                .encode_gauge(&t)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_alert_firing",
        "1 for the highest multiwindow burn-rate alert tier firing for the (slo, tenant).",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        if let Some(f) = &snap.firing {
            m.encode_family(&[
                ("slo", snap.slo_name),
                ("tenant", snap.tenant),
                ("severity", f.tier.severity.as_str()),
                ("long_window", f.tier.long.label()),
                ("short_window", f.tier.short.label()),
            ])?
            .encode_gauge(&1i64)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_low_traffic",
        "1 when the whole period's error budget is less than one event at the observed rate: one failure spends it all, alerts are unreliable.",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        m.encode_family(&[("slo", snap.slo_name), ("tenant", snap.tenant)])?
            .encode_gauge(&i64::from(snap.low_traffic))?;
    }

    let mut m = enc.encode_descriptor(
        "burnwatch_slo_budget_status",
        "Budget policy status of the (slo, tenant), as a state set: the current status is 1, the others 0.",
        None,
        MetricType::Gauge,
    )?;
    for snap in engine.snapshots(now) {
        for (status, name) in STATUSES {
            m.encode_family(&[
                ("slo", snap.slo_name),
                ("tenant", snap.tenant),
                ("status", name),
            ])?
            .encode_gauge(&i64::from(snap.status == status))?;
        }
    }
    Ok(())
}
