//! The state the poll loop writes once per second and the exporters and the
//! HTTP API read: request series, connection events, and the SLO engine.

use std::collections::HashMap;
use std::sync::Arc;

use burnwatch_common::maps::counter;

use super::client_requests::ClientTable;
use super::requests::{ConnEventTable, RequestTable};
use super::{Engine, Sli, SloId, SloSet};

/// Everything exporters read, refreshed once per second by the poll loop.
pub struct AgentState {
    pub requests: RequestTable,
    /// Requests of watched clients to their upstreams.
    pub clients: ClientTable,
    pub conn_events: ConnEventTable,
    /// The capture's own counters (`burnwatch_common::maps::counter`).
    pub capture_counters: [u64; counter::COUNT as usize],
    /// Probes attached, e.g. `tracepoint:syscalls:sys_exit_read`.
    pub probes: Vec<String>,
    /// Latency bucket upper bounds in seconds (the last bucket is +Inf).
    pub latency_bounds_s: Vec<f64>,
    /// Completed kernel reads; 0 until the first one.
    pub polls: u64,
    /// Per eBPF program: (name, runs, run time ns), when the kernel keeps
    /// BPF statistics (`kernel.bpf_stats_enabled=1`).
    pub bpf_stats: Vec<(&'static str, u64, u64)>,
    pub engine: Engine,
    /// Cumulative (good, bad) per (SLO, tenant) fed to the engine so far.
    pub slo_events: HashMap<(SloId, Arc<str>), (u64, u64)>,
    /// Unix seconds of the last evaluation.
    pub now: u64,
    /// Burn-rate history for the status page (bounded, see `history.rs`).
    pub history: super::history::BurnHistory,
}

impl AgentState {
    pub fn new(
        max_tenants_per_service: u32,
        probes: Vec<String>,
        latency_bounds_s: Vec<f64>,
        slos: SloSet,
    ) -> Self {
        AgentState {
            requests: RequestTable::new(max_tenants_per_service),
            clients: ClientTable::default(),
            conn_events: ConnEventTable::default(),
            capture_counters: [0; counter::COUNT as usize],
            probes,
            latency_bounds_s,
            polls: 0,
            bpf_stats: Vec::new(),
            engine: Engine::new(slos),
            slo_events: HashMap::new(),
            now: 0,
            history: Default::default(),
        }
    }

    /// Classifies every request series against every SLO of its service and
    /// feeds the engine the (good, bad) counts that are new since the last
    /// call. Work is per series, not per request.
    pub fn feed_engine(&mut self, now: u64) {
        let mut totals: HashMap<(SloId, Arc<str>), (u64, u64)> = HashMap::new();
        for slo in self.engine.slos().iter() {
            for s in &self.requests.series {
                if *s.labels.service != *slo.service {
                    continue;
                }
                let (good, bad) = match &slo.sli {
                    Sli::Availability { .. } => {
                        if slo.sli.is_good_status(s.labels.status) {
                            (s.stats.count, 0)
                        } else {
                            (0, s.stats.count)
                        }
                    }
                    Sli::Latency { threshold, .. } => {
                        // Unanswered requests are not fast; answered ones are
                        // good when their bucket's bound is within the
                        // threshold (the threshold is a bucket bound).
                        if s.labels.status == 0 {
                            (0, s.stats.count)
                        } else {
                            let limit = threshold.as_secs_f64() + 1e-9;
                            let good: u64 = s
                                .stats
                                .buckets
                                .iter()
                                .zip(self.latency_bounds_s.iter())
                                .filter(|(_, b)| **b <= limit)
                                .map(|(n, _)| *n)
                                .sum();
                            (good, s.stats.count - good.min(s.stats.count))
                        }
                    }
                };
                let t = totals
                    .entry((slo.id, s.labels.tenant.clone()))
                    .or_insert((0, 0));
                t.0 += good;
                t.1 += bad;
            }
        }
        for (key, (good, bad)) in totals {
            let prev = self.slo_events.entry(key.clone()).or_insert((0, 0));
            // Cumulative counters only grow; a smaller value means the kernel
            // maps were recreated, so the whole value is new.
            let dg = if good >= prev.0 { good - prev.0 } else { good };
            let db = if bad >= prev.1 { bad - prev.1 } else { bad };
            *prev = (good, bad);
            if dg + db > 0 {
                let _ = self.engine.record(now, key.0, &key.1, dg, db);
            }
        }
        self.now = now;
    }
}
