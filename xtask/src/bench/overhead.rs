//! Overhead on nginx: interleaved rounds without and with the agent, each
//! at saturation (wrk) and at fixed rates (our open-loop generator).
//! Throughput ratio, latency deltas, BPF time and agent CPU per request.

use std::fmt::Write as _;

use anyhow::Result;

use super::procs::{
    Agent, AgentStats, Cost, Nginx, WRK_CONNECTIONS, other_agents, program_delta, set_bpf_stats,
};
use super::report::{Headline, Section, Spread};
use super::{Ctx, TENANTS_OVERHEAD};

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

pub fn run(ctx: &Ctx) -> Result<Section> {
    let nginx = Nginx::start(false)?;
    let loads = loads(ctx);
    // [load][round]
    let mut base: Vec<Vec<Run>> = vec![Vec::new(); loads.len()];
    let mut with: Vec<Vec<Run>> = vec![Vec::new(); loads.len()];
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
            // Saturation is compared with the programs' timing off in both
            // arms (below); no other eBPF program should run, but if one
            // did, both arms would run it alike.
            set_bpf_stats(load.is_some())?;
            let run = drive(ctx, &nginx, *load);
            set_bpf_stats(true)?;
            base[i].push(run?);
        }
        eprintln!(
            "overhead round {}/{}: with agent",
            round + 1,
            ctx.plan.rounds
        );
        let agent = Agent::start(
            &ctx.bin,
            &format!(
                "services:\n  - name: bench\n    match:\n      port: {}\n",
                nginx.port
            ),
        )?;
        cpu_method = agent.cpu_method();
        others = others.max(other_agents(&[]).saturating_sub(1));
        agent.settle();
        let mut stats = agent.stats()?;
        for (i, load) in loads.iter().enumerate() {
            if load.is_some() {
                let (r, after) = measured(ctx, &nginx, &agent, *load, &stats)?;
                stats = after;
                with[i].push(r);
                continue;
            }
            // Saturation: throughput and latency as users run the agent,
            // without the kernel timing each program run; then the same
            // load timed, for the BPF cost.
            set_bpf_stats(false)?;
            let plain = measured(ctx, &nginx, &agent, *load, &stats);
            set_bpf_stats(true)?;
            let (plain, after) = plain?;
            let (timed, after) = measured(ctx, &nginx, &agent, *load, &after)?;
            stats = after;
            with[i].push(Run {
                cost: timed.cost,
                programs: timed.programs,
                programs_requests: timed.programs_requests,
                exact: plain.exact && timed.exact,
                timed_rps: Some(timed.rps),
                ..plain
            });
        }
    }

    let mut md = String::new();
    let mut headlines = Vec::new();
    writeln!(md, "## Overhead on nginx (HTTP/1.1 keep-alive, loopback)\n")?;
    writeln!(
        md,
        "Method: nginx (one worker, `return 200`) pinned to CPU 0; the load generator pinned to CPU 1; the agent \
(userspace) pinned to CPU 1 too, as the machine has no third core. eBPF programs run inside the syscalls \
that trigger them, so on both cores (nginx's and the client's syscalls). {rounds} rounds, each a run of every \
load without the agent followed by the same runs with a freshly started agent, so drift hits both arms \
alike. Loads: saturation with `wrk -t1 -c{WRK_CONNECTIONS}` (one tenant), then fixed rates of {rates} req/s \
with `cargo xtask loadgen` (open loop, 16 connections, {t} tenants cycling in `X-Tenant-ID`, latency from \
each request's scheduled send time, as wrk2 does; \"sent late\" counts requests the generator sent over 1 ms behind schedule, without / with). {secs} s per run. BPF time is the kernel's own \
accounting (`kernel.bpf_stats_enabled=1`) of the agent's programs (run_time_ns and run_cnt in the fdinfo of each program the agent pinned), \
over the run, divided by requests. That timing is itself a cost (two clock reads per program run, about 300 ns of nginx's \
core per request in this VM) which users never pay (the sysctl is off by default; the agent leaves it alone), so \
at saturation each round runs the load twice with the agent: first with the timing off, for throughput, latency \
and nginx's CPU, then with it on, for BPF time and agent CPU (the ratio with timing on is given below the table). \
nginx CPU is its worker's time on CPU (`/proc/PID/schedstat`) over the run per request: its own work plus the programs its \
syscalls run, a steadier measure of the overhead than req/s on a VM with steal. The programs trace every process's syscalls, so the idle rate measured \
in the second before each run (other processes on the node) is shown, and subtracted in the \"less idle \
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
    if others > 0 {
        writeln!(
            md,
            "Other burnwatch agents were running on the node during this run (up to {others}, other engineers' tests): \
their eBPF programs ran on this traffic in both arms, and their syscalls ran ours.\n"
        )?;
    }
    writeln!(
        md,
        "| load | req/s without | req/s with | ratio | nginx CPU ns/req without / with (ratio) | p50 without / with (us) | p99 without / with (us) | BPF ns/req | BPF ns/req less idle background | idle background BPF us/s | agent userspace ns/req | total ns/req | counted = served |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    let mut timed_ratio = None;
    for (i, load) in loads.iter().enumerate() {
        let b = &base[i];
        let w = &with[i];
        let col = |runs: &[Run], f: fn(&Run) -> f64| -> Spread {
            Spread::of(&runs.iter().map(f).collect::<Vec<_>>())
        };
        let brps = col(b, |r| r.rps);
        let wrps = col(w, |r| r.rps);
        // Ratio per round (paired), then the median of ratios.
        let ratio = Spread::of(
            &b.iter()
                .zip(w)
                .map(|(b, w)| w.rps / b.rps)
                .collect::<Vec<_>>(),
        );
        let bpf = col(w, |r| r.cost.bpf_ns_per_req);
        let bpf_net = col(w, |r| r.cost.bpf_net_ns_per_req);
        let bg = col(w, |r| r.cost.bpf_idle_ns_per_s / 1e3);
        let cpu = col(w, |r| r.cost.cpu_ns_per_req);
        let total = col(w, |r| r.cost.cpu_ns_per_req + r.cost.bpf_ns_per_req);
        let p50d = Spread::of(
            &b.iter()
                .zip(w)
                .map(|(b, w)| w.p50_us - b.p50_us)
                .collect::<Vec<_>>(),
        );
        let p99d = Spread::of(
            &b.iter()
                .zip(w)
                .map(|(b, w)| w.p99_us - b.p99_us)
                .collect::<Vec<_>>(),
        );
        let exact = w.iter().all(|r| r.exact);
        let server_ratio = Spread::of(
            &b.iter()
                .zip(w)
                .map(|(b, w)| b.server_ns_per_req / w.server_ns_per_req.max(1.0))
                .collect::<Vec<_>>(),
        );
        if load.is_none() {
            timed_ratio = Some(Spread::of(
                &b.iter()
                    .zip(w)
                    .map(|(b, w)| w.timed_rps.unwrap_or(w.rps) / b.rps)
                    .collect::<Vec<_>>(),
            ));
        }
        writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} ({}) | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            load_name(*load),
            brps.show(0),
            wrps.show(0),
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
        let name = match load {
            None => "saturation".to_string(),
            Some(r) => format!("{r} req/s"),
        };
        if load.is_none() {
            headlines.push(Headline::new(
                "throughput ratio with/without agent (saturation, nginx; BPF timing off, as users run it)",
                ratio.show(3),
                ">= 0.97",
                Some(ratio.median >= 0.97),
            ));
            headlines.push(Headline::new(
                "nginx CPU per request, without / with agent (saturation; its ratio)",
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
                "BPF time per request (saturation; less idle background)",
                format!("{} ns ({} ns)", bpf.show(0), bpf_net.show(0)),
                "< 1000 ns (Beyla ~500 ns)",
                Some(bpf.median < 1000.0),
            ));
        }
        headlines.push(Headline::new(
            &format!("p50 / p99 latency delta ({name})"),
            format!("{} / {} us", p50d.show(0), p99d.show(0)),
            "",
            None,
        ));
        headlines.push(Headline::new(
            &format!(
                "agent CPU per request, BPF + userspace ({name}, {})",
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
            &format!("requests counted = requests served ({name})"),
            if exact { "yes".into() } else { "NO".into() },
            "exact",
            Some(exact),
        ));
    }
    writeln!(md)?;
    if let Some(t) = timed_ratio {
        writeln!(
            md,
            "Throughput ratio at saturation with the kernel timing every program run (`kernel.bpf_stats_enabled=1`, \
the runs the BPF columns come from): {}.\n",
            t.show(3)
        )?;
    }
    for round in 0..ctx.plan.rounds {
        let mut line = format!("- round {}:", round + 1);
        for (i, load) in loads.iter().enumerate() {
            let (b, w) = (&base[i][round], &with[i][round]);
            write!(
                line,
                " {}: without {:.0} req/s (p50 {:.0} us, p99 {:.0} us, nginx {:.0} ns/req), with {:.0} req/s (p50 {:.0} us, p99 {:.0} us, nginx {:.0} ns/req{}), {} served, {} counted, BPF {:.0} ns/req in {:.1} runs/req, RSS {} KiB, sent late {} / {};",
                match load {
                    None => "saturation".to_string(),
                    Some(r) => format!("{r}/s"),
                },
                b.rps,
                b.p50_us,
                b.p99_us,
                b.server_ns_per_req,
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
                b.late,
                w.late
            )?;
        }
        writeln!(md, "{}", line.trim_end_matches(';'))?;
    }
    // The last round of each load: per program, runs per request and ns
    // per run (the cold cost of a run at low rates shows here).
    let lasts: Vec<&Run> = with.iter().filter_map(|w| w.last()).collect();
    if lasts.len() == loads.len() && !lasts.is_empty() {
        writeln!(
            md,
            "\nWhere the BPF time goes (last round of each load, from the agent's per-program metrics over the run \
and the 2.2 s settle after it; the server's and the load generator's syscalls both; runs per request, ns per run):\n"
        )?;
        write!(md, "| program |")?;
        for load in &loads {
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
    }
    writeln!(md)?;
    Ok(Section {
        markdown: md,
        headlines,
    })
}
