//! The state the poll loop writes once per second and the exporters and the
//! HTTP API read: request series, connection events, and the SLO engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use burnwatch_common::maps::counter;

use super::client_requests::ClientTable;
use super::requests::{ConnEventTable, RequestTable};
use super::{Engine, KernelCursor, Sli, SloId, SloSet};

/// A map keyed by (SLO, tenant), touched for every series every second:
/// foldhash rather than SipHash (SipHash was ~9% of the agent's CPU at
/// 100,000 tenants). Seeded per process; the tenants it holds are capped
/// per service (`tenant.max_per_service`).
pub type SloTenantMap<V> = HashMap<(SloId, Arc<str>), V, foldhash::fast::RandomState>;

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
    /// What the capture counts on this kernel: (feature, up), see
    /// `burnwatch_common::programs::CAPABILITIES`.
    pub capabilities: Vec<(&'static str, bool)>,
    /// Latency bucket upper bounds in seconds (the last bucket is +Inf).
    pub latency_bounds_s: Vec<f64>,
    /// Completed kernel reads; 0 until the first one.
    pub polls: u64,
    /// Per eBPF program: (name, runs, run time ns), when the kernel keeps
    /// BPF statistics (`kernel.bpf_stats_enabled=1`).
    pub bpf_stats: Vec<crate::probe::ProgramStats>,
    pub engine: Engine,
    /// Cumulative (good, bad) per (SLO, tenant) fed to the engine so far.
    pub slo_events: SloTenantMap<(u64, u64)>,
    /// Scratch of `feed_engine`: this poll's cumulative (good, bad) per
    /// (SLO, tenant). Kept between polls, empty, so it keeps its capacity:
    /// growing it from nothing every second was ~12% of the agent's CPU at
    /// 100,000 tenants (rehashing).
    feed_totals: SloTenantMap<(u64, u64)>,
    /// Unix seconds of the last evaluation.
    pub now: u64,
    /// Burn-rate history for the status page (bounded, see `history.rs`).
    pub history: super::history::BurnHistory,
    /// Generation of the kernel's cumulative counts (`Probe::counts_epoch`).
    pub counts_epoch: u64,
    /// SLOs whose next feed only records the kernel's totals as consumed:
    /// the counts predate them (pinned maps reused without a matching
    /// checkpoint, or an SLO added by a reload), feeding them would dump
    /// history into the current bucket.
    baseline: HashSet<SloId>,
    /// A checkpoint cursor of maps other than the current ones, kept for
    /// an upgrade handoff (`feed_handoff`).
    prior_cursor: Option<KernelCursor>,
    /// Why the kernel side is not sound, when it is not (pins removed or
    /// replaced, a link detached, the kernel config rewritten; see
    /// `probe::guard`): `/readyz` answers 503 with it. Set every poll.
    pub kernel_trouble: Option<String>,
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
            capabilities: Vec::new(),
            latency_bounds_s,
            polls: 0,
            bpf_stats: Vec::new(),
            engine: Engine::new(slos),
            slo_events: SloTenantMap::default(),
            feed_totals: SloTenantMap::default(),
            now: 0,
            history: Default::default(),
            counts_epoch: 0,
            baseline: HashSet::new(),
            prior_cursor: None,
            kernel_trouble: None,
        }
    }

    /// Applies a reloaded config's SLOs and request-table settings. SLOs with
    /// an unchanged definition keep their windows and consumed counts; new
    /// or changed ones start from the kernel's current totals (what they
    /// would have counted before the reload is not invented). Request
    /// series are rebuilt (they are re-read from the kernel every poll).
    pub fn reconfigure(
        &mut self,
        slos: SloSet,
        max_tenants_per_service: u32,
        forget_tenants: bool,
        relabel: bool,
        latency_bounds_s: Vec<f64>,
        now: u64,
    ) -> super::reload::ReloadReport {
        let report = self.engine.reconfigure(slos, now);
        if relabel {
            // Series may now carry other labels (a tenant admitted or
            // folded, another tenant rule, a service renamed): a label's
            // cumulative total is not comparable with its old one, and
            // feeding the difference would feed history again. The next
            // feed records the totals as consumed (the caller read the maps
            // just before the reload, so only the requests between that
            // read and the next are not fed).
            for slo in self.engine.slos().iter() {
                self.baseline.insert(slo.id);
            }
        }
        let old_events = std::mem::take(&mut self.slo_events);
        for ((id, tenant), v) in old_events {
            if let Some(new) = report.kept.get(&id) {
                self.slo_events.insert((*new, tenant), v);
            }
        }
        let kept: HashSet<SloId> = report.kept.values().copied().collect();
        for slo in self.engine.slos().iter() {
            if !kept.contains(&slo.id) {
                self.baseline.insert(slo.id);
            }
        }
        self.requests.reset(max_tenants_per_service, forget_tenants);
        self.clients = ClientTable::default();
        self.conn_events = ConnEventTable::default();
        self.latency_bounds_s = latency_bounds_s;
        report
    }

    /// The release gate for (`slo`, `tenant`): the engine's decision, or
    /// `budget_policy.unjudged` when the tenant is folded into
    /// `__overflow__` (whatever the engine holds under its name is old).
    pub fn gate(
        &self,
        slo: SloId,
        tenant: &str,
        risk: super::Risk,
    ) -> Result<super::budget::GateDecision, super::EngineError> {
        let service = self.engine.slos().get(slo).map(|s| s.service.clone());
        if let Some(service) = service
            && self.requests.is_folded(&service, tenant)
        {
            return Ok(self.engine.unjudged(&format!(
                "tenant folded into {} on service {service} (tenant.max_per_service reached): its budget is not tracked",
                crate::config::OVERFLOW_TENANT
            )));
        }
        self.engine.gate(self.now, slo, tenant, risk)
    }

    /// What the engine has consumed of the kernel's counts, for the
    /// checkpoint (saved atomically with the windows).
    pub fn kernel_cursor(&self) -> KernelCursor {
        let slos = self.engine.slos();
        KernelCursor {
            epoch: self.counts_epoch,
            consumed: self
                .slo_events
                .iter()
                .filter_map(|((id, tenant), (good, bad))| {
                    Some((
                        slos.get(*id)?.name.to_string(),
                        tenant.to_string(),
                        *good,
                        *bad,
                    ))
                })
                .collect(),
            slos: HashMap::new(),
            admitted: self.requests.admission.saved(),
        }
    }

    /// Picks up where a previous agent left off. `reused`: the kernel maps
    /// were pinned before this process started, so their counts include
    /// requests the restored windows already hold (up to `cursor`) and
    /// requests no window holds yet (after it). Fresh maps start at zero:
    /// everything in them is new.
    ///
    /// Every request the kernel counted ends up in the windows once:
    /// - a cursor of these very maps: what it says was consumed is not fed
    ///   again; the rest is fed at the first poll;
    /// - no cursor of these maps (the agent died before its first
    ///   checkpoint, the state file was lost, or the checkpoint is of maps
    ///   since replaced): the restored windows hold none of their counts,
    ///   so all of them are fed at the first poll (in the current second);
    /// - an SLO the cursor does not cover (added or redefined while the
    ///   agent was down) starts from the kernel's current totals, as one
    ///   added by a reload does: its definition did not exist for them.
    ///
    /// The tenants admitted under `tenant.max_per_service` are restored
    /// from any checkpoint (they are not tied to the maps).
    pub fn resume(&mut self, counts_epoch: u64, reused: bool, cursor: Option<KernelCursor>) {
        self.counts_epoch = counts_epoch;
        let cursor = cursor.and_then(|mut c| {
            self.requests
                .admission
                .restore(std::mem::take(&mut c.admitted));
            if reused && c.epoch == counts_epoch {
                Some(c)
            } else {
                self.prior_cursor = Some(c);
                None
            }
        });
        if let Some(cursor) = cursor {
            self.consume(cursor);
        }
    }

    /// Takes `cursor` (of the maps the next feed reads) as what the windows
    /// hold already: its counts are not fed again, and an SLO it does not
    /// cover (added or redefined since) starts from the totals it finds.
    fn consume(&mut self, cursor: KernelCursor) {
        for slo in self.engine.slos().iter() {
            if cursor.slos.get(&*slo.name) != Some(&slo.data_fingerprint) {
                self.baseline.insert(slo.id);
            }
        }
        for (name, tenant, good, bad) in cursor.consumed {
            let Some(id) = self.engine.slo_id(&name) else {
                continue;
            };
            if !self.baseline.contains(&id) {
                self.slo_events
                    .insert((id, Arc::from(tenant.as_str())), (good, bad));
            }
        }
    }

    /// Cumulative (good, bad) per (SLO, tenant) of the request series, into
    /// `totals`.
    fn slo_totals(&self, totals: &mut SloTenantMap<(u64, u64)>) {
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
    }

    /// Upgrade handoff: feeds the engine, once, what an older build's maps
    /// counted beyond the checkpoint cursor the old agent saved for them
    /// (`epoch`; all of it when the cursor is of other maps). The request
    /// table holds the old maps' final counts when this is called; the
    /// caller empties it after. See `probe::handoff`.
    pub fn feed_handoff(&mut self, epoch: u64, now: u64) {
        // The old maps' consumption, not the current maps': set aside.
        let current = std::mem::take(&mut self.slo_events);
        if let Some(cursor) = self.prior_cursor.take_if(|c| c.epoch == epoch) {
            self.consume(cursor);
        }
        self.feed_engine(now);
        self.slo_events = current;
    }

    /// Classifies every request series against every SLO of its service and
    /// feeds the engine the (good, bad) counts that are new since the last
    /// call. Work is per series, not per request.
    pub fn feed_engine(&mut self, now: u64) {
        let mut totals = std::mem::take(&mut self.feed_totals);
        self.slo_totals(&mut totals);
        for (key, (good, bad)) in totals.drain() {
            let prev = self.slo_events.entry(key.clone()).or_insert((0, 0));
            // The kernel's counters only grow while this process runs (its
            // maps are replaced only across restarts, see `resume`). A total
            // that shrinks lost series to another label (a pod became
            // known): nothing new to feed, and what it grows by from here is.
            let dg = good.saturating_sub(prev.0);
            let db = bad.saturating_sub(prev.1);
            *prev = (good, bad);
            if self.baseline.contains(&key.0) {
                continue;
            }
            if dg + db > 0 {
                let _ = self.engine.record_shared(now, key.0, &key.1, dg, db);
            }
        }
        self.feed_totals = totals;
        self.baseline.clear();
        self.now = now;
    }
}
