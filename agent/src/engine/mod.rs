//! Turns the kernel's cumulative counts into labelled series, the state the
//! exporters and the API read. (The SLO windows, burn rates and alerts build
//! on these series.)

pub mod requests;

use burnwatch_common::maps::counter;

use requests::{ConnEventTable, RequestTable};

/// Everything exporters read, refreshed once per second by the poll loop.
pub struct AgentState {
    pub requests: RequestTable,
    pub conn_events: ConnEventTable,
    /// The capture's own counters (`burnwatch_common::maps::counter`).
    pub capture_counters: [u64; counter::COUNT as usize],
    /// Probes attached, e.g. `tracepoint:syscalls:sys_enter_read`.
    pub probes: Vec<String>,
    /// Latency bucket upper bounds in seconds (the last bucket is +Inf).
    pub latency_bounds_s: Vec<f64>,
    /// Completed kernel reads; 0 until the first one.
    pub polls: u64,
    /// Per eBPF program: (name, runs, run time ns), when the kernel keeps
    /// BPF statistics (`kernel.bpf_stats_enabled=1`).
    pub bpf_stats: Vec<(&'static str, u64, u64)>,
}

impl AgentState {
    pub fn new(
        max_tenants_per_service: u32,
        probes: Vec<String>,
        latency_bounds_s: Vec<f64>,
    ) -> Self {
        AgentState {
            requests: RequestTable::new(max_tenants_per_service),
            conn_events: ConnEventTable::default(),
            capture_counters: [0; counter::COUNT as usize],
            probes,
            latency_bounds_s,
            polls: 0,
            bpf_stats: Vec::new(),
        }
    }
}
