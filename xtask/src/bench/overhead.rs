//! Overhead on nginx: interleaved rounds without the agent, with it on the
//! socket path and with it on the syscall path, each at saturation (wrk)
//! and at fixed rates (our open-loop generator). Throughput ratio, latency
//! deltas, BPF time and agent CPU per request, for each path.

use std::fmt::Write as _;

use anyhow::Result;
use burnwatch_common::programs::CaptureMode;

use super::procs::{
    Agent, AgentStats, Cost, Nginx, WRK_CONNECTIONS, other_agents, program_delta, set_bpf_stats,
};
use super::report::{Headline, Section, Spread};
use super::{
    Ctx, TENANTS_OVERHEAD, agent_modes, arm_order, path_name, socket_path_note, start_agent,
};

/// One measured load in one arm of a round.
#[derive(Debug, Clone, Default)]
pub(super) struct Run {
    pub(super) rps: f64,
    pub(super) requests: u64,
    p50_us: f64,
    p99_us: f64,
    /// Fixed rates: requests sent over 1 ms behind schedule.
    late: u64,
    /// nginx's worker CPU time during the run / requests.
    pub(super) server_ns_per_req: f64,
    /// Counted by the agent = served (with the agent only).
    exact: bool,
    /// Saturation, with the agent: the same load again with the kernel
    /// timing the programs (`cost` and `programs` come from it), as req/s.
    timed_rps: Option<f64>,
    /// Requests of the run `programs` were read over.
    programs_requests: u64,
    /// With the agent only.
    cost: Cost,
    counted: u64,
    rss_kib: u64,
    programs: Vec<(String, u64, u64)>,
}

/// Loads of a round: saturation (wrk), then each fixed rate.
fn loads(ctx: &Ctx) -> Vec<Option<u64>> {
    std::iter::once(None)
        .chain(ctx.plan.fixed_rates.iter().map(|r| Some(*r)))
        .collect()
}

/// How the tables name a load.
fn load_name(load: Option<u64>) -> String {
    match load {
        None => format!("saturation (wrk -t1 -c{WRK_CONNECTIONS})"),
        Some(r) => format!("{r} req/s (fixed rate)"),
    }
}

/// One run of `load` (None: wrk at saturation) for the overhead phase's
/// length, with nginx's worker CPU per request over it.
pub(super) fn drive(ctx: &Ctx, nginx: &Nginx, load: Option<u64>) -> Result<Run> {
    let cpu0 = nginx.worker_cpu_ns()?;
    let mut run = drive_load(ctx, nginx, load)?;
    let cpu1 = nginx.worker_cpu_ns()?;
    run.server_ns_per_req = cpu1.saturating_sub(cpu0) as f64 / run.requests.max(1) as f64;
    Ok(run)
}

/// One run of `load`: wrk at saturation, `cargo xtask loadgen` at a
/// fixed rate.
fn drive_load(ctx: &Ctx, nginx: &Nginx, load: Option<u64>) -> Result<Run> {
    let secs = ctx.plan.run_secs;
    Ok(match load {
        None => {
            let w = ctx.clients.wrk(nginx.port, secs)?;
            Run {
                rps: w.rps,
                requests: w.requests,
                p50_us: w.p50_us,
                p99_us: w.p99_us,
                ..Run::default()
            }
        }
        Some(rate) => {
            let l = ctx
                .clients
                .load(nginx.port, rate, secs, TENANTS_OVERHEAD, "/")?;
            Run {
                rps: l.rps,
                requests: l.requests,
                p50_us: l.p50_us,
                p99_us: l.p99_us,
                late: l.late,
                ..Run::default()
            }
        }
    })
}

/// One run of `load` with `agent` running: its cost from the agent's
/// snapshots around the run (with the idle second before it), what it
/// counted against what was served, and its per-program totals; with the
/// agent's stats after the run, the next run's `before`.
fn measured(
    ctx: &Ctx,
    nginx: &Nginx,
    agent: &Agent,
    load: Option<u64>,
    before: &AgentStats,
) -> Result<(Run, AgentStats)> {
    let idle = agent.idle()?;
    let r0 = agent.snapshot()?;
    let mut run = drive(ctx, nginx, load)?;
    let r1 = agent.snapshot()?;
    run.cost = Cost::of(idle, (r0, r1), run.requests);
    agent.settle();
    let after = agent.stats()?;
    run.counted = after.counted.saturating_sub(before.counted);
    // wrk reports completed requests; each connection may have one more
    // in flight that nginx answered (and the agent counted). Our
    // generator finishes every request it sends: exact.
    let slack = if load.is_none() {
        u64::from(WRK_CONNECTIONS)
    } else {
        0
    };
    run.exact = run.counted >= run.requests && run.counted <= run.requests + slack;
    run.programs = program_delta(&before.programs, &after.programs);
    run.programs_requests = run.requests;
    run.rss_kib = agent.rss_kib()?.0;
    Ok((run, after))
}

/// One arm of a round with the agent: a freshly started agent on `mode`,
/// then every load. At saturation the load runs twice: with the kernel's
/// per-run timing off (throughput, latency, nginx CPU, as users run it),
/// then on (BPF time and agent CPU).
fn agent_arm(
    ctx: &Ctx,
    nginx: &Nginx,
    loads: &[Option<u64>],
    mode: CaptureMode,
) -> Result<(Vec<Run>, &'static str)> {
    let agent = start_agent(
        ctx,
        &format!(
            "services:\n  - name: bench\n    match:\n      port: {}\n",
            nginx.port
        ),
        mode,
    )?;
    agent.settle();
    let mut stats = agent.stats()?;
    let mut runs = Vec::new();
    for load in loads {
        if load.is_some() {
            let (r, after) = measured(ctx, nginx, &agent, *load, &stats)?;
            stats = after;
            runs.push(r);
            continue;
        }
        // Saturation: throughput and latency as users run the agent,
        // without the kernel timing each program run; then the same
        // load timed, for the BPF cost.
        set_bpf_stats(false)?;
        let plain = measured(ctx, nginx, &agent, *load, &stats);
        set_bpf_stats(true)?;
        let (plain, after) = plain?;
        let (timed, after) = measured(ctx, nginx, &agent, *load, &after)?;
        stats = after;
        runs.push(Run {
            cost: timed.cost,
            programs: timed.programs,
            programs_requests: timed.programs_requests,
            exact: plain.exact && timed.exact,
            timed_rps: Some(timed.rps),
            ..plain
        });
    }
    Ok((runs, agent.cpu_method()))
}

/// Per round, `f(without, with)` over that round's paired runs.
fn paired(b: &[Run], w: &[Run], f: impl Fn(&Run, &Run) -> f64) -> Spread {
    Spread::of(&b.iter().zip(w).map(|(b, w)| f(b, w)).collect::<Vec<_>>())
}

/// Median (min..max) of `f` over runs.
fn col(runs: &[Run], f: impl Fn(&Run) -> f64) -> Spread {
    Spread::of(&runs.iter().map(f).collect::<Vec<_>>())
}

/// The headline name of a load.
fn short_name(load: Option<u64>) -> String {
    match load {
        None => "saturation".to_string(),
        Some(r) => format!("{r} req/s"),
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let nginx = Nginx::start(false)?;
    let loads = loads(ctx);
    // The socket path first where this kernel has it: what `auto` runs,
    // so the arm with the targets.
    let modes = agent_modes();
    // [load][round]
    let mut base: Vec<Vec<Run>> = vec![Vec::new(); loads.len()];
    // [arm][load][round]
    let mut with: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); loads.len()]; modes.len()];
    let mut others = 0usize;
    // Warm-up so the first measured run is not a cold one.
    ctx.clients.wrk(nginx.port, 2.0)?;
    let mut cpu_method = "";
    for round in 0..ctx.plan.rounds {
        eprintln!(
            "overhead round {}/{}: without agent",
            round + 1,
            ctx.plan.rounds
        );
        for (i, load) in loads.iter().enumerate() {
            // Saturation is compared with the programs' timing off in every
            // arm; no other eBPF program should run, but if one did, every
            // arm would run it alike.
            set_bpf_stats(load.is_some())?;
            let run = drive(ctx, &nginx, *load);
            set_bpf_stats(true)?;
            base[i].push(run?);
        }
        for ai in arm_order(modes.len(), round) {
            eprintln!(
                "overhead round {}/{}: agent on the {}",
                round + 1,
                ctx.plan.rounds,
                path_name(modes[ai])
            );
            let (runs, method) = agent_arm(ctx, &nginx, &loads, modes[ai])?;
            cpu_method = method;
            others = others.max(other_agents(&[]).saturating_sub(1));
            for (i, r) in runs.into_iter().enumerate() {
                with[ai][i].push(r);
            }
        }
    }

    let mut md = String::new();
    let mut headlines = Vec::new();
    writeln!(md, "## Overhead on nginx (HTTP/1.1 keep-alive, loopback)\n")?;
    writeln!(
        md,
        "Method: nginx (one worker, `return 200`) pinned to CPU 0; the load generator pinned to CPU 1; the agent \
(userspace) pinned to CPU 1 too, as the machine has no third core. eBPF programs run inside the syscalls \
that trigger them, so on both cores (nginx's and the client's syscalls). Three arms: without the agent, the \
agent on the socket path (`capture.mode: socket`: BTF tracepoints on the socket layer, only socket I/O runs a \
program; what `auto` picks on this kernel) and the agent on the syscall path (`capture.mode: syscalls`: \
syscall tracepoints, every read and write of the node runs a program). {rounds} rounds, each a run of every \
load without the agent followed by the same runs with a freshly started agent on each path (the paths' order \
alternating between rounds), so drift hits every arm alike; each ratio is paired with its round's run \
without the agent. Loads: saturation with `wrk -t1 -c{WRK_CONNECTIONS}` (one tenant), then fixed rates of {rates} req/s \
with `cargo xtask loadgen` (open loop, 16 connections, {t} tenants cycling in `X-Tenant-ID`, latency from \
each request's scheduled send time, as wrk2 does; \"sent late\" counts requests the generator sent over 1 ms behind schedule, without / with). {secs} s per run. BPF time is the kernel's own \
accounting (`kernel.bpf_stats_enabled=1`) of the agent's programs (run_time_ns and run_cnt in the fdinfo of each program the agent pinned), \
over the run, divided by requests. That timing is itself a cost (two clock reads per program run, about 300 ns of nginx's \
core per request in this VM) which users never pay (the sysctl is off by default; the agent leaves it alone), so \
at saturation each arm runs the load twice with the agent: first with the timing off, for throughput, latency \
and nginx's CPU, then with it on, for BPF time and agent CPU (the ratio with timing on is given below the table). \
nginx CPU is its worker's time on CPU (`/proc/PID/schedstat`) over the run per request: its own work plus the programs its \
syscalls run, a steadier measure of the overhead than req/s on a VM with steal. The programs trace every process on the node, so the idle rate measured \
in the second before each run (other processes' I/O) is shown, and subtracted in the \"less idle \
background\" column. Agent CPU: {cpu_method}, over the run (it includes the once-a-second poll, whatever \
the rate). Figures: median (min..max) over rounds.\n",
        rounds = ctx.plan.rounds,
        rates = ctx
            .plan
            .fixed_rates
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        t = TENANTS_OVERHEAD,
        secs = ctx.plan.run_secs,
    )?;
    md.push_str(socket_path_note());
    if modes[0] != CaptureMode::Socket {
        writeln!(
            md,
            "The summary's targets apply to the syscall path here, the path the agent runs on this kernel.\n"
        )?;
    }
    if others > 0 {
        writeln!(
            md,
            "Other burnwatch agents were running on the node during this run (up to {others}, other engineers' tests): \
their eBPF programs ran on this traffic in every arm, and their syscalls ran ours.\n"
        )?;
    }
    writeln!(
        md,
        "| load | agent | req/s without | req/s with | ratio | nginx CPU ns/req without / with (ratio) | p50 without / with (us) | p99 without / with (us) | BPF ns/req | BPF ns/req less idle background | idle background BPF us/s | agent userspace ns/req | total ns/req | counted = served |"
    )?;
    writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    // [arm]: the saturation ratio with the kernel timing every run.
    let mut timed_ratio = vec![None; modes.len()];
    // [arm]: the per-request CPU of each load, for the other arms' line.
    let mut totals: Vec<Vec<String>> = vec![Vec::new(); modes.len()];
    for (i, load) in loads.iter().enumerate() {
        let b = &base[i];
        let name = short_name(*load);
        for (ai, &mode) in modes.iter().enumerate() {
            let w = &with[ai][i];
            let primary = ai == 0;
            let path = path_name(mode);
            // Ratio per round (paired), then the median of ratios.
            let ratio = paired(b, w, |b, w| w.rps / b.rps);
            let bpf = col(w, |r| r.cost.bpf_ns_per_req);
            let bpf_net = col(w, |r| r.cost.bpf_net_ns_per_req);
            let bg = col(w, |r| r.cost.bpf_idle_ns_per_s / 1e3);
            let cpu = col(w, |r| r.cost.cpu_ns_per_req);
            let total = col(w, |r| r.cost.cpu_ns_per_req + r.cost.bpf_ns_per_req);
            let p50d = paired(b, w, |b, w| w.p50_us - b.p50_us);
            let p99d = paired(b, w, |b, w| w.p99_us - b.p99_us);
            let exact = w.iter().all(|r| r.exact);
            let server_ratio = paired(b, w, |b, w| {
                b.server_ns_per_req / w.server_ns_per_req.max(1.0)
            });
            if load.is_none() {
                timed_ratio[ai] = Some(paired(b, w, |b, w| w.timed_rps.unwrap_or(w.rps) / b.rps));
            }
            writeln!(
                md,
                "| {} | {path} | {} | {} | {} | {} / {} ({}) | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                load_name(*load),
                col(b, |r| r.rps).show(0),
                col(w, |r| r.rps).show(0),
                ratio.show(3),
                col(b, |r| r.server_ns_per_req).show(0),
                col(w, |r| r.server_ns_per_req).show(0),
                server_ratio.show(3),
                col(b, |r| r.p50_us).show(0),
                col(w, |r| r.p50_us).show(0),
                col(b, |r| r.p99_us).show(0),
                col(w, |r| r.p99_us).show(0),
                bpf.show(0),
                bpf_net.show(0),
                bg.show(0),
                cpu.show(0),
                total.show(0),
                if exact { "yes, every round" } else { "**NO**" }
            )?;
            totals[ai].push(format!("{name} {} ns", total.show(0)));
            if !primary {
                if load.is_none() {
                    headlines.push(Headline::new(
                        &format!(
                            "throughput ratio with/without agent on the {path} (saturation, nginx; BPF timing off); nginx CPU ratio"
                        ),
                        format!("{}; nginx CPU {}", ratio.show(3), server_ratio.show(3)),
                        "",
                        None,
                    ));
                }
                continue;
            }
            if load.is_none() {
                headlines.push(Headline::new(
                    &format!(
                        "throughput ratio with/without agent (saturation, nginx; {path}; BPF timing off, as users run it)"
                    ),
                    ratio.show(3),
                    ">= 0.97",
                    Some(ratio.median >= 0.97),
                ));
                headlines.push(Headline::new(
                    &format!(
                        "nginx CPU per request, without / with agent (saturation; {path}; its ratio)"
                    ),
                    format!(
                        "{} / {} ns ({})",
                        col(b, |r| r.server_ns_per_req).show(0),
                        col(w, |r| r.server_ns_per_req).show(0),
                        server_ratio.show(3)
                    ),
                    "",
                    None,
                ));
                headlines.push(Headline::new(
                    &format!("BPF time per request (saturation; {path}; less idle background)"),
                    format!("{} ns ({} ns)", bpf.show(0), bpf_net.show(0)),
                    "< 1000 ns (Beyla ~500 ns)",
                    Some(bpf.median < 1000.0),
                ));
            }
            headlines.push(Headline::new(
                &format!("p50 / p99 latency delta ({name}; {path})"),
                format!("{} / {} us", p50d.show(0), p99d.show(0)),
                "",
                None,
            ));
            headlines.push(Headline::new(
                &format!(
                    "agent CPU per request, BPF + userspace ({name}, {}; {path})",
                    if load.is_none() {
                        "1 tenant".to_string()
                    } else {
                        format!("{TENANTS_OVERHEAD} tenants")
                    }
                ),
                format!("{} ns", total.show(0)),
                "< 1500 ns (Coroot ~20 us, DeepFlow ~11 us)",
                Some(total.median < 1500.0),
            ));
            headlines.push(Headline::new(
                &format!("requests counted = requests served ({name}; {path})"),
                if exact { "yes".into() } else { "NO".into() },
                "exact",
                Some(exact),
            ));
        }
    }
    // The other arms' per-request CPU, every load on one line each.
    for (ai, &mode) in modes.iter().enumerate().skip(1) {
        headlines.push(Headline::new(
            &format!(
                "agent CPU per request on the {}, BPF + userspace (by load)",
                path_name(mode)
            ),
            totals[ai].join("; "),
            "",
            None,
        ));
    }
    writeln!(md)?;
    let timed: Vec<String> = modes
        .iter()
        .zip(&timed_ratio)
        .filter_map(|(mode, t)| Some(format!("{} {}", path_name(*mode), t.as_ref()?.show(3))))
        .collect();
    if !timed.is_empty() {
        writeln!(
            md,
            "Throughput ratio at saturation with the kernel timing every program run (`kernel.bpf_stats_enabled=1`, \
the runs the BPF columns come from): {}.\n",
            timed.join("; ")
        )?;
    }
    for round in 0..ctx.plan.rounds {
        let mut line = format!("- round {}:", round + 1);
        for (i, load) in loads.iter().enumerate() {
            let b = &base[i][round];
            write!(
                line,
                " {}: without {:.0} req/s (p50 {:.0} us, p99 {:.0} us, nginx {:.0} ns/req, sent late {})",
                match load {
                    None => "saturation".to_string(),
                    Some(r) => format!("{r}/s"),
                },
                b.rps,
                b.p50_us,
                b.p99_us,
                b.server_ns_per_req,
                b.late,
            )?;
            for (ai, &mode) in modes.iter().enumerate() {
                let w = &with[ai][i][round];
                write!(
                    line,
                    ", {} {:.0} req/s (p50 {:.0} us, p99 {:.0} us, nginx {:.0} ns/req{}, {} served, {} counted, BPF {:.0} ns/req in {:.1} runs/req, RSS {} KiB, sent late {})",
                    path_name(mode),
                    w.rps,
                    w.p50_us,
                    w.p99_us,
                    w.server_ns_per_req,
                    w.timed_rps
                        .map(|t| format!("; timed: {t:.0} req/s"))
                        .unwrap_or_default(),
                    w.requests,
                    w.counted,
                    w.cost.bpf_ns_per_req,
                    w.cost.bpf_runs_per_req,
                    w.rss_kib,
                    w.late
                )?;
            }
            line.push(';');
        }
        writeln!(md, "{}", line.trim_end_matches(';'))?;
    }
    for (ai, &mode) in modes.iter().enumerate() {
        where_bpf_time_goes(&mut md, &loads, &with[ai], path_name(mode))?;
    }
    writeln!(md)?;
    Ok(Section {
        markdown: md,
        headlines,
    })
}

/// The last round of each load of one arm (`with`: [load][round]): per
/// program, runs per request and ns per run (the cold cost of a run at low
/// rates shows here).
fn where_bpf_time_goes(
    md: &mut String,
    loads: &[Option<u64>],
    with: &[Vec<Run>],
    path: &str,
) -> Result<()> {
    let lasts: Vec<&Run> = with.iter().filter_map(|w| w.last()).collect();
    if lasts.len() != loads.len() || lasts.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "\nWhere the BPF time goes on the {path} (last round of each load, from the agent's per-program metrics \
over the run and the 2.2 s settle after it; the server's and the load generator's syscalls both; runs per \
request, ns per run):\n"
    )?;
    write!(md, "| program |")?;
    for load in loads {
        write!(md, " {} |", load_name(*load))?;
    }
    writeln!(md)?;
    writeln!(md, "|---|{}", "---|".repeat(loads.len()))?;
    let mut programs: Vec<(String, u64)> = lasts[0]
        .programs
        .iter()
        .map(|p| (p.0.clone(), p.2))
        .collect();
    programs.sort_by_key(|p| std::cmp::Reverse(p.1));
    let cell = |run: &Run, runs: u64, ns: u64| -> String {
        if runs == 0 {
            return "-".into();
        }
        let reqs = run.programs_requests.max(1) as f64;
        format!(
            "{:.2} x {:.0} ns",
            runs as f64 / reqs,
            ns as f64 / runs as f64
        )
    };
    for (name, _) in &programs {
        let cells: Vec<String> = lasts
            .iter()
            .map(|run| {
                run.programs
                    .iter()
                    .find(|p| p.0 == *name)
                    .map_or("-".into(), |p| cell(run, p.1, p.2))
            })
            .collect();
        if cells.iter().all(|c| c == "-") {
            continue;
        }
        writeln!(md, "| {name} | {} |", cells.join(" | "))?;
    }
    let all: Vec<String> = lasts
        .iter()
        .map(|run| {
            let (runs, ns) = run
                .programs
                .iter()
                .fold((0, 0), |(r, n), p| (r + p.1, n + p.2));
            format!(
                "{} = {:.0} ns/req",
                cell(run, runs, ns),
                ns as f64 / run.programs_requests.max(1) as f64
            )
        })
        .collect();
    writeln!(md, "| all | {} |", all.join(" | "))?;
    Ok(())
}
