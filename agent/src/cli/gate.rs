//! `burnwatch gate`: the release gate for CI pipelines. Exit status 0 approves.

use std::process::ExitCode;

use super::client::Client;
use super::table::clean;

pub const AFTER_HELP: &str = "\
Exit status: 0 approve, 2 review (a human should look), 3 defer (an alert is firing:
retry once it resolves), 4 block (budget exhausted or frozen), 1 the agent could not
answer (unreachable, unknown SLO). The reason is printed either way.

Examples:
  burnwatch gate --slo shop-availability --tenant acme --risk high
  # in a pipeline, before deploying:
  burnwatch gate --agent http://$NODE_IP:9464 --slo checkout --tenant \"$TENANT\" --risk medium \\
    || { echo 'release held by the error budget'; exit 1; }";

#[derive(clap::Args)]
pub struct Args {
    /// SLO name (as in the config).
    #[arg(long)]
    pub slo: String,
    /// Tenant whose budget decides.
    #[arg(long)]
    pub tenant: String,
    /// How risky the change is.
    #[arg(long, value_parser = ["low", "medium", "high"], default_value = "medium")]
    pub risk: String,
    #[command(flatten)]
    pub api: super::client::AgentArgs,
}

pub fn run(args: &Args) -> ExitCode {
    match Client::connect(&args.api).and_then(|c| c.gate(&args.slo, &args.tenant, &args.risk)) {
        Ok(answer) => {
            println!("{}: {}", answer.verdict, clean(&answer.reason, 400));
            ExitCode::from(match answer.verdict.as_str() {
                "approve" => 0,
                "review" => 2,
                "defer" => 3,
                _ => 4,
            })
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
