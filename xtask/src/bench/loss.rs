//! Zero requests lost under load: after a saturation run, the agent's
//! counts equal nginx's access log, in total and per (tenant, status).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;

use super::Ctx;
use super::procs::{Agent, Nginx, label};
use super::report::{Headline, Section};

const TENANTS: u32 = 1_000;

pub fn run(ctx: &Ctx) -> Result<Section> {
    let nginx = Nginx::start(true)?;
    let agent = Agent::start(
        &ctx.bin,
        &format!(
            "services:\n  - name: bench\n    match:\n      port: {}\ntenant:\n  max_per_service: 100000\n",
            nginx.port
        ),
    )?;
    agent.settle();
    let before = agent.stats()?;
    eprintln!("zero loss: saturation with {TENANTS} tenants");
    let load = ctx
        .clients
        .load(nginx.port, 0, ctx.plan.loss_secs, TENANTS, "/")?;
    agent.settle();
    let log = nginx.access_log()?;
    let metrics = agent.get("/metrics")?;
    let after = super::procs::parse_stats(&metrics);
    let mut from_log: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (status, tenant) in &log {
        *from_log
            .entry((tenant.clone(), status.clone()))
            .or_default() += 1;
    }
    let mut from_agent: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("burnwatch_http_requests_total{"))
    {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        if label(series, "service") != Some("bench") {
            continue;
        }
        let key = (
            label(series, "tenant").unwrap_or("").to_string(),
            ["status_code", "code", "status"]
                .iter()
                .find_map(|n| label(series, n))
                .unwrap_or("")
                .to_string(),
        );
        *from_agent.entry(key).or_default() += v.parse::<f64>().unwrap_or(0.0) as u64;
    }
    let counted = after.counted - before.counted;
    let mismatched: Vec<String> = from_log
        .keys()
        .chain(from_agent.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| from_log.get(*k) != from_agent.get(*k))
        .take(5)
        .map(|k| {
            format!(
                "{}/{}: log {} agent {}",
                k.0,
                k.1,
                from_log.get(k).copied().unwrap_or(0),
                from_agent.get(k).copied().unwrap_or(0)
            )
        })
        .collect();
    let dropped: u64 = after.dropped.iter().map(|d| d.1).sum::<u64>()
        - before.dropped.iter().map(|d| d.1).sum::<u64>();
    let exact = load.requests == log.len() as u64
        && counted == load.requests
        && mismatched.is_empty()
        && dropped == 0;

    let mut md = String::new();
    writeln!(md, "## Zero requests lost under load\n")?;
    writeln!(
        md,
        "Method: a fresh agent; nginx with its access log on (`$status $http_x_tenant_id`, buffered, flushed before \
reading); `cargo xtask loadgen` at saturation for {} s cycling {TENANTS} tenants (it finishes every request \
it sends, so its count is exact). Compared: requests the generator completed, access log lines, the agent's \
`burnwatch_http_requests_total` (total and per tenant and status), and `burnwatch_dropped_events_total`.\n",
        ctx.plan.loss_secs
    )?;
    writeln!(md, "| measure | value |\n|---|---|")?;
    writeln!(
        md,
        "| requests completed by the generator | {} ({:.0} req/s) |",
        load.requests, load.rps
    )?;
    writeln!(md, "| nginx access log lines | {} |", log.len())?;
    writeln!(md, "| counted by the agent | {counted} |")?;
    writeln!(
        md,
        "| (tenant, status) pairs: log / agent / differing | {} / {} / {} |",
        from_log.len(),
        from_agent.len(),
        if mismatched.is_empty() {
            "0".to_string()
        } else {
            mismatched.join("; ")
        }
    )?;
    writeln!(md, "| dropped events during the run | {dropped} |")?;
    writeln!(
        md,
        "| verdict | {} |\n",
        if exact { "exact" } else { "**counts differ**" }
    )?;
    Ok(Section {
        markdown: md,
        headlines: vec![Headline::new(
            "requests lost at saturation (agent vs nginx access log, per tenant and status)",
            format!(
                "{} of {} ({} dropped events)",
                load.requests.abs_diff(counted),
                load.requests,
                dropped
            ),
            "0",
            Some(exact),
        )],
    })
}
