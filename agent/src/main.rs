//! `burnwatch`: the node agent and its command line.
//!
//! Data flows one way, one folder per stage:
//! `config` -> `probe` (kernel maps) -> `attribution` (names) -> `engine`
//! (series, SLOs) -> `export` / `api` (Prometheus, HTTP).

mod api;
mod attribution;
mod config;
mod engine;
mod export;
mod probe;
mod reload;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "burnwatch",
    version,
    about = "Per-tenant HTTP SLIs and error-budget burn rates from the traffic the kernel already sees.",
    long_about = "burnwatch watches HTTP/1.x servers on this node with eBPF (no application \
change, no sidecar), counts good and bad requests per tenant in kernel maps, and serves them \
as Prometheus metrics.\n\nStart with `burnwatch run` (as root): it watches every HTTP server \
on the node and serves metrics on 0.0.0.0:9464/metrics."
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `burnwatch=debug`.
    #[arg(long, global = true, env = "BURNWATCH_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the eBPF programs and serve metrics (needs root
    /// or CAP_BPF + CAP_PERFMON).
    Run {
        /// Config file (YAML). Without it: every HTTP/1.x server on the node,
        /// tenant from the X-Tenant-ID header, metrics on 0.0.0.0:9464.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// On SIGTERM/SIGINT, remove the pinned programs and maps too, leaving
        /// nothing attached. Without it they stay pinned and keep counting, so
        /// a restarted or upgraded agent loses no request.
        #[arg(long)]
        cleanup: bool,
    },
    /// Remove everything the agent pinned in bpffs (maps, programs, links):
    /// the programs detach once no running agent holds them. Stop the agent
    /// first.
    Uninstall {
        /// Config file whose `state.bpffs_dir` to clean.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Pin directory to clean (overrides the config's).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
    },
    /// Check a config file and print the effective config.
    Check {
        /// Config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Measure the SLO engine at scale (used by `cargo xtask bench`).
    #[command(hide = true)]
    BenchEngine {
        #[arg(long, default_value_t = 100_000)]
        series: usize,
    },
    /// Run the SLO engine on a virtual clock over a traffic scenario and
    /// print the alert timeline and the budget left: check alert policy
    /// against the math before production does.
    Simulate {
        /// Config file with the SLOs (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Scenario (YAML): phases of {tenant, rate, error_ratio, latency_ms, duration}.
        #[arg(long, short)]
        scenario: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run { config, cleanup } => run::run(config.as_deref(), cleanup),
        Command::Uninstall { config, bpffs_dir } => uninstall(config.as_deref(), bpffs_dir),
        Command::Check { config } => check(&config),
        Command::BenchEngine { series } => engine::bench::run(series),
        Command::Simulate {
            config,
            scenario,
            json,
        } => simulate(&config, &scenario, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let c = config::Config::load(path)?;
    println!("{}: ok", path.display());
    if c.services.is_empty() {
        println!("services: every HTTP/1.x server on the node, named <comm>:<port>");
    }
    for s in &c.services {
        println!(
            "service {}: server side, local TCP port {}",
            s.name,
            s.matcher.port.unwrap_or(0)
        );
    }
    println!(
        "tenant: header {} (case-insensitive), {:?} when absent",
        c.tenant.header, c.tenant.missing
    );
    println!(
        "prometheus: http://{}/metrics",
        c.exporters.prometheus.listen
    );
    Ok(())
}

fn uninstall(config: Option<&std::path::Path>, bpffs_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let root = match (bpffs_dir, config) {
        (Some(dir), _) => dir,
        (None, Some(path)) => config::Config::load(path)?.state.bpffs_dir,
        (None, None) => config::default_bpffs_dir(),
    };
    let removed = probe::pins::uninstall(&root)?;
    if removed.is_empty() {
        println!("{}: nothing pinned", root.display());
    }
    for dir in removed {
        println!("removed {}", dir.display());
    }
    Ok(())
}

fn simulate(
    config: &std::path::Path,
    scenario: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let c = config::Config::load(config)?;
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let scenario: engine::simulate::Scenario = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", scenario.display()))?;
    let report = engine::simulate::simulate(&c.slo_set(), &scenario)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
