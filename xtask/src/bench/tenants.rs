//! Agent CPU and RSS against request rate and tenant count: for each
//! tenant count a fresh agent (two SLOs on the service, so the engine holds
//! 2 x N series), a warm-up that makes every tenant exist, then rounds of
//! 1k, 10k and saturation requests per second.

use std::fmt::Write as _;

use anyhow::Result;

use super::procs::{Agent, Cost, Nginx, gauge};
use super::report::{Headline, Section, Spread};
use super::{Ctx, two_slo_config};

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    rps: f64,
    cpu_ns_per_req: f64,
    bpf_ns_per_req: f64,
    bpf_net_ns_per_req: f64,
    cpu_percent: f64,
    rss_kib: u64,
}

fn rate_name(rate: u64) -> String {
    if rate == 0 {
        "saturation".into()
    } else {
        format!("{rate} req/s")
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let nginx = Nginx::start(false)?;
    let rates: Vec<u64> = ctx
        .plan
        .fixed_rates
        .iter()
        .copied()
        .chain(std::iter::once(0))
        .collect();
    let mut md = String::new();
    let mut headlines = Vec::new();
    writeln!(
        md,
        "## Agent CPU and memory by request rate and tenant count\n"
    )?;
    writeln!(
        md,
        "Method: same nginx and core layout as above. For each tenant count N a fresh agent with two SLOs on the \
service (availability and latency: 2 x N engine series) and `tenant.max_per_service: 100000`; a saturation \
warm-up sends every one of the N tenants at least once, then {rounds} round(s) of each load: {loads}, {secs} s \
each, `cargo xtask loadgen` cycling the N tenants in `X-Tenant-ID`. Agent CPU over the run (userspace \
and its own syscalls, e.g. map reads) divided by requests; BPF time over the run divided by requests, added \
separately (in parentheses: less the idle background of the second before); CPU % is of one core. RSS is VmRSS after the run; peak is VmHWM over the agent's life. \
Median (min..max) over rounds.\n",
        rounds = ctx.plan.matrix_rounds,
        loads = rates
            .iter()
            .map(|r| rate_name(*r))
            .collect::<Vec<_>>()
            .join(", "),
        secs = ctx.plan.run_secs,
    )?;
    writeln!(
        md,
        "| tenants | load | req/s | agent userspace ns/req | BPF ns/req (less idle background) | total ns/req | agent CPU % of a core | RSS KiB |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    let mut notes = String::new();
    for &tenants in &ctx.plan.tenant_counts {
        eprintln!("tenants {tenants}: warm-up");
        let agent = Agent::start(&ctx.bin, &two_slo_config(nginx.port, 100_000))?;
        // Touch every tenant once, at saturation.
        let warm = ctx
            .clients
            .load_n(nginx.port, 0, 120.0, tenants, "/", u64::from(tenants))?;
        agent.settle();
        let mut cells: Vec<Vec<Cell>> = vec![Vec::new(); rates.len()];
        for round in 0..ctx.plan.matrix_rounds {
            for (i, &rate) in rates.iter().enumerate() {
                eprintln!(
                    "tenants {tenants}: {} round {}/{}",
                    rate_name(rate),
                    round + 1,
                    ctx.plan.matrix_rounds
                );
                let idle = agent.idle()?;
                let r0 = agent.snapshot()?;
                let l = ctx
                    .clients
                    .load(nginx.port, rate, ctx.plan.run_secs, tenants, "/")?;
                let r1 = agent.snapshot()?;
                let cost = Cost::of(idle, (r0, r1), l.requests);
                cells[i].push(Cell {
                    rps: l.rps,
                    cpu_ns_per_req: cost.cpu_ns_per_req,
                    bpf_ns_per_req: cost.bpf_ns_per_req,
                    bpf_net_ns_per_req: cost.bpf_net_ns_per_req,
                    cpu_percent: cost.cpu_percent,
                    rss_kib: agent.rss_kib()?.0,
                });
            }
        }
        let st = agent.stats()?;
        let metrics = agent.get("/metrics")?;
        let series = gauge(&metrics, "burnwatch_slo_series");
        let (_, hwm) = agent.rss_kib()?;
        for (i, &rate) in rates.iter().enumerate() {
            let c = &cells[i];
            let col = |f: fn(&Cell) -> f64| Spread::of(&c.iter().map(f).collect::<Vec<_>>());
            let total = col(|c| c.cpu_ns_per_req + c.bpf_ns_per_req);
            writeln!(
                md,
                "| {tenants} | {} | {} | {} | {} ({}) | {} | {} | {} |",
                rate_name(rate),
                col(|c| c.rps).show(0),
                col(|c| c.cpu_ns_per_req).show(0),
                col(|c| c.bpf_ns_per_req).show(0),
                col(|c| c.bpf_net_ns_per_req).show(0),
                total.show(0),
                col(|c| c.cpu_percent).show(1),
                col(|c| c.rss_kib as f64).show(0),
            )?;
            if rate == 10_000 && tenants == 1_000 {
                headlines.push(Headline::new(
                    &format!(
                        "agent CPU per request, BPF + userspace ({}, {tenants} tenants, 2 SLOs)",
                        rate_name(rate)
                    ),
                    format!("{} ns", total.show(0)),
                    "< 1500 ns (Coroot ~20 us, DeepFlow ~11 us)",
                    Some(total.median < 1500.0),
                ));
            }
        }
        let dropped: u64 = st.dropped.iter().map(|d| d.1).sum();
        writeln!(
            notes,
            "- {tenants} tenants: warm-up sent {} requests at {:.0} req/s; the engine then held {series:.0} \
(slo, tenant) series; peak RSS {hwm} KiB ({:.1} MiB); dropped events {dropped} ({}); tenants folded into \
`__overflow__`: {}",
            warm.requests,
            warm.rps,
            hwm as f64 / 1024.0,
            st.dropped
                .iter()
                .filter(|d| d.1 > 0)
                .map(|d| format!("{} {}", d.0, d.1))
                .collect::<Vec<_>>()
                .join(", "),
            st.tenant_overflow
        )?;
        headlines.push(Headline::new(
            &format!("agent peak RSS with {tenants} tenants x 2 SLOs"),
            format!("{:.1} MiB", hwm as f64 / 1024.0),
            "",
            None,
        ));
    }
    writeln!(md, "\n{notes}")?;
    Ok(Section {
        markdown: md,
        headlines,
    })
}
