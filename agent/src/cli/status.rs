//! `burnwatch status`: one look at a running agent: every (SLO, tenant) sorted by burn.

use std::fmt::Write as _;

use anyhow::Result;

use super::client::Client;
use super::table::{self, BURN_WINDOWS, clean};
use crate::api::types::{SlosResponse, sort_by_burn};

pub const AFTER_HELP: &str = "\
Rows are sorted by burn: paging series first, then ticketing, then by the burn rate over
1h. BURN columns are burn rates (1 = spending the budget exactly over the SLO period;
14.4 over 1h and 5m pages for a 30-day SLO). EXHAUSTED IN extrapolates the last hour's
error rate; '-' when the last hour had no bad event.

Examples:
  burnwatch status                                 # agent on this node, port 9464
  burnwatch status --agent http://10.0.3.7:9464
  burnwatch status --json | jq '.series[] | select(.firing) | .tenant'";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub api: super::client::AgentArgs,
    /// Print the agent's JSON (`/v1/slos`) for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let mut data = Client::connect(&args.api)?.slos()?;
    sort_by_burn(&mut data.series);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print!("{}", render(&data));
    }
    Ok(())
}

pub fn render(data: &SlosResponse) -> String {
    let mut out = String::new();
    let paging = data
        .series
        .iter()
        .filter(|s| s.severity_rank() == 0)
        .count();
    let _ = writeln!(
        out,
        "node {}: {} SLOs, {} series, {paging} paging, {} probes attached",
        clean(&data.node, 64),
        data.slos.len(),
        data.series.len(),
        data.probes_attached.len()
    );
    if data.series.is_empty() {
        let _ = writeln!(out, "no (slo, tenant) has traffic yet");
        return out;
    }
    let slo_w = data
        .series
        .iter()
        .map(|s| s.slo.chars().count())
        .max()
        .unwrap_or(3)
        .clamp(3, 32);
    let tenant_w = data
        .series
        .iter()
        .map(|s| s.tenant.chars().count())
        .max()
        .unwrap_or(6)
        .clamp(6, 24);
    let _ = write!(
        out,
        "{:<slo_w$}  {:<tenant_w$}  {:>7}  {:<9}",
        "SLO", "TENANT", "BUDGET", "STATUS"
    );
    for w in BURN_WINDOWS {
        let _ = write!(out, " {:>7}", format!("BURN{w}"));
    }
    let _ = writeln!(out, "  {:<18} {:>9} {:>12}", "ALERT", "FOR", "EXHAUSTED IN");
    for s in &data.series {
        let _ = write!(
            out,
            "{:<slo_w$}  {:<tenant_w$}  {:>7}  {:<9}",
            clean(&s.slo, slo_w),
            clean(&s.tenant, tenant_w),
            table::budget(s),
            clean(&s.status, 9)
        );
        for w in BURN_WINDOWS {
            let _ = write!(out, " {:>7}", table::burn(s.burn(w)));
        }
        let _ = writeln!(
            out,
            "  {:<18} {:>9} {:>12}",
            table::alert(s),
            table::since(s, data.now),
            table::exhaustion(s)
        );
    }
    out
}
