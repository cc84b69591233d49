//! Detection time on real traffic: steady good requests through nginx, then
//! a total outage (nginx answers 500), timed from the first failing request
//! to the alert, against the floor the engine's own simulator computes for
//! exactly that traffic.
//!
//! The SLO is short on purpose so the floor is seconds, not minutes: 99%
//! over a 1 h rolling period, one page tier at burn rate 14.4 over 30m/5m,
//! on a fresh agent whose windows hold only the scenario's few seconds of
//! good traffic. With `G` good requests before the outage at `R` req/s, the
//! Workbook's condition (error ratio over the long window above
//! `k = 14.4 x (1 - 0.99) = 0.144`) holds after `k·G / (R·(1 - k))` seconds
//! of outage; the simulator evaluates once a second, as the agent does.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Ctx;
use super::procs::{Agent, CLIENT_CPU, Nginx, unix_ns};
use super::report::{Headline, Section, Spread};

const RATE: u64 = 1_000;
const GOOD_SECS: f64 = 10.0;
const OUTAGE_SECS: f64 = 12.0;
const OBJECTIVE: f64 = 99.0;
const BURN: f64 = 14.4;

fn config(port: u16) -> String {
    format!(
        "services:\n  - name: bench\n    match:\n      port: {port}\n\
slos:\n  - name: avail\n    service: bench\n    objective: {OBJECTIVE}\n    window: 1h\n\
alerting:\n  min_events: 10\n  tiers:\n    - {{ severity: page, long_window: 30m, short_window: 5m, burn_rate: {BURN} }}\n"
    )
}

struct Round {
    /// Seconds from the first failing request to the alert in /metrics.
    metrics_s: f64,
    /// Same, to the agent's "SLO alert fired" log line.
    log_s: Option<f64>,
    /// The simulator's floor for this round's traffic.
    floor_s: f64,
    /// The continuous Workbook floor (no 1 s evaluation steps).
    exact_floor_s: f64,
    good: u64,
}

/// Unix ns of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS.fffffffZ`
/// (tracing's log format), ANSI colour codes tolerated.
fn parse_rfc3339_ns(s: &str) -> Option<u128> {
    let s: String = {
        // Strip ESC [ ... m sequences.
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let ts = s.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    let frac_ns: u128 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(secs as u128 * 1_000_000_000 + frac_ns)
}

/// First second (from the scenario start) at which the simulator fires.
fn simulated_fire(ctx: &Ctx, dir: &std::path::Path, port: u16, good_secs: u64) -> Result<u64> {
    let cfg = dir.join("sim-config.yaml");
    std::fs::write(&cfg, config(port))?;
    let scenario = dir.join("scenario.yaml");
    std::fs::write(
        &scenario,
        format!(
            "phases:\n  - {{ tenant: t-0, rate: {RATE}, error_ratio: 0, duration: {good_secs}s }}\n  - {{ tenant: t-0, rate: {RATE}, error_ratio: 1, duration: 60s }}\n"
        ),
    )?;
    let out = super::procs::sh(
        &ctx.bin.display().to_string(),
        &[
            "simulate",
            "--config",
            &cfg.display().to_string(),
            "--scenario",
            &scenario.display().to_string(),
            "--json",
        ],
    )?;
    // "fired_at": N in the first alert span.
    let at = out
        .split("\"fired_at\":")
        .nth(1)
        .and_then(|s| s.split([',', '\n']).next())
        .context("simulator reported no alert")?
        .trim()
        .parse()?;
    Ok(at)
}

fn round(ctx: &Ctx, nginx: &Nginx) -> Result<Round> {
    nginx.set_outage(false)?;
    let agent = Agent::start(&ctx.bin, &config(nginx.port))?;
    agent.settle();
    let generator = std::process::Command::new("taskset")
        .args(["-c", CLIENT_CPU])
        .arg(&ctx.clients.xtask)
        .args([
            "loadgen",
            "--port",
            &nginx.port.to_string(),
            "--rate",
            &RATE.to_string(),
            "--duration",
            &(GOOD_SECS + OUTAGE_SECS).to_string(),
            "--tenants",
            "1",
            "--path",
            "/flaky",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(GOOD_SECS));
    nginx.set_outage(true)?;
    let mut alert_ns = None;
    while start.elapsed().as_secs_f64() < GOOD_SECS + OUTAGE_SECS {
        let body = agent.get("/metrics")?;
        if body
            .lines()
            .any(|l| l.starts_with("burnwatch_slo_alert_firing{") && l.ends_with(" 1"))
        {
            alert_ns = Some(unix_ns());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = generator.wait_with_output()?;
    nginx.set_outage(false)?;
    let load = super::loadgen::LoadReport::from_lines(&String::from_utf8_lossy(&out.stdout))?;
    let Some(alert_ns) = alert_ns else {
        bail!(
            "no alert within {OUTAGE_SECS} s of the outage; agent log:\n{}",
            agent.log()
        );
    };
    if load.first_failure_unix_ns == 0 {
        bail!("the load generator saw no failing request");
    }
    let first = load.first_failure_unix_ns;
    let log_ns = agent
        .log()
        .lines()
        .find(|l| l.contains("SLO alert fired"))
        .and_then(parse_rfc3339_ns);
    // Good traffic the windows held, in whole seconds at RATE (the agent's
    // windows started with it: a fresh agent saw nothing before).
    let good = load.status_2xx;
    let good_secs = (good as f64 / RATE as f64).round() as u64;
    let fired_at = simulated_fire(ctx, &agent.dir.0, nginx.port, good_secs)?;
    let k = BURN * (1.0 - OBJECTIVE / 100.0);
    Ok(Round {
        metrics_s: (alert_ns as f64 - first as f64) / 1e9,
        log_s: log_ns.map(|l| (l as f64 - first as f64) / 1e9),
        floor_s: fired_at.saturating_sub(good_secs) as f64,
        exact_floor_s: k * good as f64 / (RATE as f64 * (1.0 - k)),
        good,
    })
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let nginx = Nginx::start(false)?;
    let mut rounds = Vec::new();
    for i in 0..ctx.plan.detection_rounds {
        eprintln!("detection round {}/{}", i + 1, ctx.plan.detection_rounds);
        rounds.push(round(ctx, &nginx)?);
    }
    let metrics = Spread::of(&rounds.iter().map(|r| r.metrics_s).collect::<Vec<_>>());
    let logs: Vec<f64> = rounds.iter().filter_map(|r| r.log_s).collect();
    let log = Spread::of(&logs);
    let floor = Spread::of(&rounds.iter().map(|r| r.floor_s).collect::<Vec<_>>());
    let exact = Spread::of(&rounds.iter().map(|r| r.exact_floor_s).collect::<Vec<_>>());
    let over = Spread::of(
        &rounds
            .iter()
            .map(|r| r.metrics_s - r.floor_s)
            .collect::<Vec<_>>(),
    );
    let mut md = String::new();
    writeln!(md, "## Detection time: first failing request to alert\n")?;
    writeln!(
        md,
        "Scenario: a fresh agent; {RATE} req/s of good traffic (one tenant) through nginx for {GOOD_SECS} s, then a \
total outage (nginx answers 500 to every request). SLO: availability {OBJECTIVE}% over a **1 h** rolling period, \
one page tier at burn rate {BURN} over 30m/5m windows (`alerting.tiers`), `min_events: 10`: a short-period SLO \
so the floor is seconds, not minutes (with the default 30-day tiers and a full hour of history the page tier's \
floor is 14.4 x 0.1% x 1 h = 52 s for a 99.9% SLO). Measured from the scheduled send time of the first request \
answered 500 (the load generator's own record) to the first `/metrics` fetch (every 50 ms) showing \
`burnwatch_slo_alert_firing` = 1, and to the timestamp of the agent's `SLO alert fired` log line. Floor: \
`burnwatch simulate` on the same traffic (the good requests the run actually served, then 100% errors), \
which evaluates once a second as the agent does; the continuous Workbook floor, `k·G / (R·(1−k))` with \
k = {BURN} x {:.2} = {:.3}, is given too. Median (min..max) over {} round(s).\n",
        1.0 - OBJECTIVE / 100.0,
        BURN * (1.0 - OBJECTIVE / 100.0),
        rounds.len()
    )?;
    writeln!(md, "| measure | seconds |\n|---|---|")?;
    writeln!(md, "| detection, to `/metrics` | {} |", metrics.show(2))?;
    writeln!(md, "| detection, to the log line | {} |", log.show(2))?;
    writeln!(md, "| floor (simulator, 1 s steps) | {} |", floor.show(2))?;
    writeln!(md, "| floor (continuous formula) | {} |", exact.show(2))?;
    writeln!(md, "| detection minus floor | {} |", over.show(2))?;
    writeln!(md)?;
    for (i, r) in rounds.iter().enumerate() {
        writeln!(
            md,
            "- round {}: {} good requests before the outage; alert in /metrics after {:.2} s, log line after {}; floor {:.0} s (continuous {:.2} s)",
            i + 1,
            r.good,
            r.metrics_s,
            r.log_s.map(|s| format!("{s:.2} s")).unwrap_or("-".into()),
            r.floor_s,
            r.exact_floor_s
        )?;
    }
    writeln!(md)?;
    Ok(Section {
        markdown: md,
        headlines: vec![Headline::new(
            "detection time minus the floor (outage through nginx, short-period SLO)",
            format!(
                "{} s (detection {} s, floor {} s)",
                over.show(2),
                metrics.show(2),
                floor.show(0)
            ),
            "<= 2 s",
            Some(over.median <= 2.0),
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(
            parse_rfc3339_ns("2024-01-01T00:00:01.500000Z  INFO x"),
            Some(1_704_067_201_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("\u{1b}[2m2024-03-01T12:00:00.000001Z\u{1b}[0m INFO"),
            Some(1_709_294_400_000_001_000)
        );
    }
}
