//! The verifier's cost of every eBPF program on this kernel: processed
//! instructions against the 1,000,000 limit, peak states and verification
//! time, as `burnwatch verifier` measures them (the test suite fails past
//! the budget; this records the figures beside the machine and kernel).

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::Ctx;
use super::procs::sh;
use super::report::{Headline, Section};

pub fn run(ctx: &Ctx) -> Result<Section> {
    eprintln!("verifier: burnwatch verifier");
    let out = std::process::Command::new(&ctx.bin)
        .arg("verifier")
        .output()
        .context("running burnwatch verifier")?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let verdict = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut md = String::new();
    writeln!(md, "## Verifier cost per program\n")?;
    writeln!(
        md,
        "Method: `burnwatch verifier` loads every program of the agent's eBPF object once with the verifier's \
statistics (`BPF_LOG_STATS`), on kernel {}, and reports the kernel's own figures. Budget: a fifth of the 1,000,000 \
processed-instruction limit per program, 3 s for all of them (the suite's `verifier_budget` test fails past it).\n",
        sh("uname", &["-r"])?.trim()
    )?;
    md.push_str(&table);
    writeln!(md)?;
    let worst = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| program"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Some((
                cells.get(1)?.to_string(),
                cells.get(2)?.parse::<u64>().ok()?,
            ))
        })
        .max_by_key(|(_, n)| *n);
    let (program, processed) = worst.context("burnwatch verifier printed no table")?;
    if !out.status.success() {
        writeln!(md, "```\n{verdict}\n```\n")?;
    }
    Ok(Section {
        markdown: md,
        headlines: vec![Headline::new(
            "largest verifier cost (processed instructions)",
            format!("{processed} ({program})"),
            "<= 200,000 (20% of the 1M limit)",
            Some(out.status.success()),
        )],
    })
}
