//! `cargo xtask bench`: every figure of the benchmark suite, one command,
//! written to BENCHMARKS.md with the machine, kernel and method.
//!
//! Phases (each its own module): the verifier's cost of every program
//! ([`verifier`]); overhead on nginx without the agent, with it on the
//! socket path and with it on the syscall path, interleaved ([`overhead`]);
//! what the agent costs a process it does not watch, on either path
//! ([`unwatched`]); what an eBPF program that does nothing costs per run at
//! each of those loads, and on every hook of each path ([`floor`]); agent
//! CPU and RSS by rate and tenant count ([`tenants`]); `/metrics` at 10,000
//! tenants x 2 SLOs ([`scrape`]); detection time against the simulator's
//! floor ([`detection`]); zero loss against nginx's access log ([`loss`]);
//! the SLO engine at 100,000 series (`burnwatch bench-engine`). `--quick`
//! runs all of them, shorter, as a smoke test (about 8 minutes instead of
//! about 40, on this 2-core machine).

mod detection;
mod floor;
mod fuzz;
pub mod loadgen;
mod loss;
mod overhead;
mod procs;
mod report;
mod scrape;
mod tenants;
mod unwatched;
mod verifier;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burnwatch_common::programs::CaptureMode;

use procs::{Agent, Clients, cpu_steal, foreign_pins, loadavg, other_agents, sh, steal_percent};
use report::{Headline, Section};

/// Tenants cycled by the fixed-rate overhead runs.
pub const TENANTS_OVERHEAD: u32 = 10;

/// How long and how often each phase runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Interleaved rounds (no agent, then the agent on each capture path)
    /// of the overhead and unwatched phases, and of the floor's saturation
    /// runs.
    pub rounds: usize,
    /// Seconds per measured run.
    pub run_secs: f64,
    pub fixed_rates: Vec<u64>,
    pub tenant_counts: Vec<u32>,
    pub matrix_rounds: usize,
    pub scrape_secs: f64,
    pub detection_rounds: usize,
    pub loss_secs: f64,
    pub engine_series: usize,
    /// Seconds of libFuzzer on the parser.
    pub fuzz_secs: u64,
    /// Seconds each unwatched workload runs without the agent (its size is
    /// calibrated to it once, then fixed for every arm).
    pub unwatched_secs: f64,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        let base = Plan {
            quick,
            rounds: 7,
            run_secs: 8.0,
            fixed_rates: vec![1_000, 10_000],
            tenant_counts: vec![10, 1_000, 100_000],
            matrix_rounds: 3,
            scrape_secs: 90.0,
            detection_rounds: 3,
            loss_secs: 10.0,
            engine_series: 100_000,
            fuzz_secs: 180,
            unwatched_secs: 3.0,
        };
        if quick {
            Plan {
                rounds: 1,
                run_secs: 3.0,
                matrix_rounds: 1,
                scrape_secs: 8.0,
                detection_rounds: 1,
                loss_secs: 3.0,
                fuzz_secs: 20,
                unwatched_secs: 1.0,
                ..base
            }
        } else {
            base
        }
    }
}

/// What every phase needs.
pub struct Ctx {
    /// The workspace.
    pub root: PathBuf,
    /// The release agent binary.
    pub bin: PathBuf,
    pub clients: Clients,
    pub plan: Plan,
}

/// An agent config watching `port` as service `bench`, tenants from
/// `X-Tenant-ID` (up to `max_tenants`), with two SLOs: availability 99.9%
/// and latency 99% under 100 ms (30-day periods, default alert tiers).
pub fn two_slo_config(port: u16, max_tenants: u32) -> String {
    format!(
        "services:\n  - name: bench\n    match:\n      port: {port}\n\
tenant:\n  max_per_service: {max_tenants}\n\
slos:\n  - name: availability\n    service: bench\n    objective: 99.9\n  - name: latency\n    service: bench\n    objective: 99\n    \
sli:\n      latency:\n        threshold: 100ms\n"
    )
}

/// The kernel BTF, where the socket path's tracepoints are described.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether this kernel has the socket path's tracepoints: the BTF typedef
/// `btf_trace_sock_recv_length` (kernel 6.4+), looked for by its name in
/// the BTF string section (NUL-delimited, so the match is exact).
pub fn socket_path_available() -> bool {
    const NEEDLE: &[u8] = b"\0btf_trace_sock_recv_length\0";
    std::fs::read(VMLINUX_BTF).is_ok_and(|btf| btf.windows(NEEDLE.len()).any(|w| w == NEEDLE))
}

/// The capture paths the agent arms run, in their order within a round:
/// the socket path first where the kernel has it (what `capture.mode:
/// auto` picks, so the one with the targets), then the syscall path.
pub fn agent_modes() -> Vec<CaptureMode> {
    let mut modes = Vec::new();
    if socket_path_available() {
        modes.push(CaptureMode::Socket);
    }
    modes.push(CaptureMode::Syscalls);
    modes
}

/// How a report names the arm of the agent on `mode`.
pub fn path_name(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Socket => "socket path",
        CaptureMode::Syscalls => "syscall path",
    }
}

/// The sentence a section prints when the kernel has no socket path (its
/// arm is skipped), or nothing.
pub fn socket_path_note() -> &'static str {
    if socket_path_available() {
        ""
    } else {
        "This kernel has no socket path (no `btf_trace_sock_recv_length` in its BTF: kernels before 6.4): the \
socket-path arm was skipped; the agent runs the syscall path here.\n\n"
    }
}

/// The order of `arms` interleaved arms in round `round`: reversed every
/// other round, so no arm always runs right after the baseline.
pub fn arm_order(arms: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..arms).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// A config body (services, tenants, SLOs) with `capture.mode` forced to
/// `mode` (the agent refuses to start when it cannot run that path).
pub fn with_capture(body: &str, mode: CaptureMode) -> String {
    format!("{body}capture:\n  mode: {}\n", mode.name())
}

/// Starts the agent on `body` with its capture forced to `mode`, and fails
/// unless it reports that path (`burnwatch_capability{feature=
/// "socket_capture"}`; agents without that series are taken at their word).
pub fn start_agent(ctx: &Ctx, body: &str, mode: CaptureMode) -> Result<Agent> {
    let agent = Agent::start(&ctx.bin, &with_capture(body, mode))?;
    let metrics = agent.get("/metrics")?;
    let socket = metrics.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series.starts_with("burnwatch_capability{")
            && procs::label(series, "feature") == Some("socket_capture"))
        .then(|| value.trim() == "1")
    });
    if let Some(socket) = socket
        && socket != (mode == CaptureMode::Socket)
    {
        bail!(
            "the agent started with capture.mode {} runs the {}",
            mode.name(),
            if socket {
                "socket path"
            } else {
                "syscall path"
            }
        );
    }
    Ok(agent)
}

fn machine() -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    Ok(format!(
        "{} cores ({cpu}), {:.0} GiB RAM, {os}, kernel {}; nginx {}; wrk {}",
        sh("nproc", &[])?.trim(),
        mem_kib as f64 / 1_048_576.0,
        sh("uname", &["-r"])?.trim(),
        String::from_utf8_lossy(
            &std::process::Command::new("nginx")
                .arg("-v")
                .output()?
                .stderr
        )
        .trim()
        .trim_start_matches("nginx version: "),
        std::process::Command::new("wrk")
            .arg("-v")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_default()
    ))
}

fn engine(ctx: &Ctx) -> Result<Section> {
    eprintln!("engine: bench-engine --series {}", ctx.plan.engine_series);
    let series = ctx.plan.engine_series.to_string();
    let out = sh(
        "taskset",
        &[
            "-c",
            procs::AGENT_CPU,
            &ctx.bin.display().to_string(),
            "bench-engine",
            "--series",
            &series,
        ],
    )?;
    let mut md = String::new();
    writeln!(md, "## SLO engine at {series} (slo, tenant) series\n")?;
    writeln!(
        md,
        "Method: `burnwatch bench-engine --series {series}` (release build, on one core): {series} series with an hour \
of per-minute traffic, then one evaluation (first: every window rolls), the next second's evaluation (steady \
state, what the agent does every second), one snapshot pass (what a scrape reads), a checkpoint save and a \
restore. One run.\n"
    )?;
    writeln!(md, "| measure | value |\n|---|---|")?;
    let mut steady = None;
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            writeln!(md, "| {k} | {v} |")?;
            if k == "evaluate_steady_ms" {
                steady = Some(v.to_string());
            }
        }
    }
    writeln!(md)?;
    Ok(Section {
        markdown: md,
        headlines: vec![Headline::new(
            &format!("SLO engine evaluation, {series} series (steady state, every second)"),
            format!(
                "{} ms",
                steady.context("bench-engine printed no evaluate_steady_ms")?
            ),
            "",
            None,
        )],
    })
}

/// Runs the suite; `only` (phase keys) runs a subset and prints it without
/// touching BENCHMARKS.md. Runs in the release build of xtask (see
/// `main.rs`): its `loadgen` must not be the bottleneck, and parsing a
/// 100,000-tenant `/metrics` in a debug build takes minutes.
pub fn bench(root: &Path, quick: bool, only: &[String]) -> Result<()> {
    let plan = Plan::new(quick);
    let ctx = Ctx {
        root: root.to_path_buf(),
        bin: root.join("target/release/burnwatch"),
        clients: Clients {
            xtask: root.join("target/release/xtask"),
        },
        plan,
    };
    let started = std::time::Instant::now();
    let pinned = foreign_pins();
    if !pinned.is_empty() {
        bail!(
            "another burnwatch's programs are attached (pins: {}): they would run on every syscall of both \
arms. Stop that agent, or remove its pins (`burnwatch uninstall --bpffs-dir DIR`, or rm -r the directory).",
            pinned
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let load_before = loadavg();
    let steal_before = cpu_steal();
    let others_before = other_agents(&[]);
    sh("sysctl", &["-q", "-w", "kernel.bpf_stats_enabled=1"])?;
    // A phase that fails is reported in its place; the others still run.
    type Phase = fn(&Ctx) -> Result<Section>;
    let phases: [(&str, &str, Phase); 10] = [
        ("verifier", "verifier cost", verifier::run),
        ("overhead", "overhead", overhead::run),
        ("unwatched", "unwatched processes", unwatched::run),
        ("floor", "floor", floor::run),
        ("tenants", "CPU and RSS by rate and tenants", tenants::run),
        ("scrape", "/metrics scrape", scrape::run),
        ("detection", "detection time", detection::run),
        ("loss", "zero loss", loss::run),
        ("engine", "SLO engine", engine),
        // Last: it keeps a core busy and measures nothing about the agent's cost.
        ("fuzz", "parser fuzzing", fuzz::run),
    ];
    if let Some(bad) = only.iter().find(|o| !phases.iter().any(|p| p.0 == *o)) {
        anyhow::bail!(
            "unknown phase {bad:?}; phases: {}",
            phases.map(|p| p.0).join(", ")
        );
    }
    let mut failed = Vec::new();
    let sections: Vec<Section> = phases
        .iter()
        .filter(|(key, ..)| only.is_empty() || only.iter().any(|o| o == key))
        .map(|(_, name, phase)| {
            phase(&ctx).unwrap_or_else(|e| {
                eprintln!("bench phase {name} failed: {e:#}");
                failed.push(*name);
                Section {
                    markdown: format!("## {name}: FAILED\n\n```\n{e:#}\n```\n\n"),
                    headlines: vec![Headline::new(name, "FAILED".into(), "", Some(false))],
                }
            })
        })
        .collect();
    let _ = sh("sysctl", &["-q", "-w", "kernel.bpf_stats_enabled=0"]);
    let load_after = loadavg();
    let steal = steal_percent(steal_before, cpu_steal());
    let others_after = other_agents(&[]);

    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Reproduce: `cargo xtask bench` as root (about 40 minutes; `cargo xtask bench --quick` is an 8-minute smoke \
run with one round per figure). It starts its own nginx, agents and load generators on free loopback ports, and \
rewrites this file.\n"
    )?;
    writeln!(md, "Machine: {}.\n", machine()?)?;
    writeln!(
        md,
        "This run: {}{:.0} s; load average {load_before:.2} before, {load_after:.2} after; CPU time stolen by the \
hypervisor during the run {steal:.1}%; other burnwatch agents on the node {others_before} before, {others_after} after.\n",
        if ctx.plan.quick { "`--quick`, " } else { "" },
        started.elapsed().as_secs_f64()
    )?;
    // The bench itself keeps about one core busy; a load average after the
    // run above the core count means something else competed with it.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if load_after > cores || others_before + others_after > 0 || steal > 2.0 {
        writeln!(
            md,
            "> Something else ran on this machine during the run (load average above the core count, CPU steal above \
2%, or other burnwatch agents): treat these figures as noisy upper bounds and re-run `cargo xtask bench` on a quiet machine \
before quoting them.\n"
        )?;
    } else {
        writeln!(
            md,
            "> Nothing else ran during this run (the load average before includes the bench's own build).\n"
        )?;
    }
    writeln!(
        md,
        "Core layout (2 cores): nginx's worker on CPU 0; the load generator (wrk or `cargo xtask loadgen`) on CPU 1; \
the agent's userspace on CPU 1 as well (no third core; it shares with the client, not the server). eBPF \
programs run in the context of the syscalls they trace, on whichever core made them. They trace every \
process on the node (on the socket path, every socket send and receive; on the syscall path, every read and \
write syscall), so BPF time also includes other processes' I/O during a run (background).\n"
    )?;
    writeln!(md, "## Summary\n")?;
    writeln!(
        md,
        "| measure | result | target / peers | met |\n|---|---|---|---|"
    )?;
    for h in sections.iter().flat_map(|s| &s.headlines) {
        writeln!(
            md,
            "| {} | {} | {} | {} |",
            h.measure, h.result, h.target, h.met
        )?;
    }
    writeln!(
        md,
        "\nPeers, as they publish it: Coroot about 20 us of agent CPU per request (200m CPU at 10k req/s), DeepFlow \
about 11 us (90k req/s per core), Beyla about 500 ns of eBPF time per request.\n"
    )?;
    for s in &sections {
        md.push_str(&s.markdown);
    }
    if only.is_empty() {
        std::fs::write(root.join("BENCHMARKS.md"), &md)?;
    }
    print!("{md}");
    if !failed.is_empty() {
        anyhow::bail!("bench phases failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The configs the bench writes are YAML the agent accepts: checked by
    /// shape here (the agent itself validates them at start-up).
    #[test]
    fn two_slo_config_is_indented_yaml() {
        let c = super::two_slo_config(8080, 100);
        assert!(c.contains("\nslos:\n  - name: availability\n"), "{c}");
        assert!(
            c.contains("\n  - name: latency\n    service: bench\n"),
            "{c}"
        );
        assert!(
            c.contains("\n    sli:\n      latency:\n        threshold: 100ms\n"),
            "{c}"
        );
    }

    /// The capture block follows the body at the top level, as the agent's
    /// `capture: {mode: ...}` reads it.
    #[test]
    fn capture_mode_is_a_top_level_block() {
        use burnwatch_common::programs::CaptureMode;
        let c = super::with_capture(&super::two_slo_config(8080, 10), CaptureMode::Syscalls);
        assert!(c.ends_with("\ncapture:\n  mode: syscalls\n"), "{c}");
        let c = super::with_capture("", CaptureMode::Socket);
        assert_eq!(c, "capture:\n  mode: socket\n");
    }

    /// Every agent arm runs once a round; the order alternates.
    #[test]
    fn arm_order_alternates() {
        assert_eq!(super::arm_order(2, 0), vec![0, 1]);
        assert_eq!(super::arm_order(2, 1), vec![1, 0]);
        assert_eq!(super::arm_order(1, 1), vec![0]);
    }

    /// Seven paired rounds by default (the throughput target is on their
    /// median), one with `--quick`.
    #[test]
    fn seven_rounds_one_quick() {
        assert_eq!(super::Plan::new(false).rounds, 7);
        assert_eq!(super::Plan::new(true).rounds, 1);
    }
}
