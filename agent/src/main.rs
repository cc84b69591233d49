//! `burnwatch`: the node agent and its command line.
//!
//! Data flows one way, one folder per stage:
//! `config` -> `probe` (kernel maps) -> `attribution` (names) -> `engine`
//! (series, SLOs) -> `export` / `api` (Prometheus, HTTP).

mod api;
mod attribution;
mod cli;
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
    /// the programs detach. Stop the agent first: while an agent holds the
    /// pin root (its lock), uninstall refuses and names its pid.
    Uninstall {
        /// Config file whose `state.bpffs_dir` to clean.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Pin directory to clean (overrides the config's).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
        /// Wait up to this many seconds for the agent holding the pin root
        /// to exit (e.g. a cleanup job racing the agent's termination).
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        wait: u64,
        /// Remove the pins even though an agent holds the pin root (a hung
        /// one). A running agent notices at its next poll, logs it and
        /// pins again what it holds (its counts continue): to remove
        /// burnwatch, stop the agent.
        #[arg(long)]
        force: bool,
    },
    /// Load every eBPF program with the kernel verifier's statistics and
    /// print them (processed instructions against the 1M limit, peak
    /// states, verification time). Exits 1 when a program is rejected or
    /// uses more than a fifth of the limit. Loads nothing that stays: no
    /// attach, no pin.
    Verifier {
        /// Print the table only (Markdown), no verdict line.
        #[arg(long)]
        table_only: bool,
    },
    /// Check a config file and print the effective config: services, tenant
    /// rule, SLOs and what each alert tier means.
    #[command(after_help = cli::check::AFTER_HELP)]
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
    /// Print Prometheus recording and alerting rules that compute the SLOs'
    /// windows, burn rates, budget and alerts cluster-wide, per tenant, from
    /// every node's burnwatch_slo_events_total (Sloth's names and labels).
    Rules {
        /// Config file with the SLOs (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// `rules`: a Prometheus rule file; `prometheusrule`: a
        /// prometheus-operator PrometheusRule resource.
        #[arg(long, value_enum, default_value = "rules")]
        format: export::rules::Format,
        /// metadata.name of the PrometheusRule.
        #[arg(long, default_value = "burnwatch-slos")]
        name: String,
    },
    /// Ask a running agent for every (SLO, tenant): budget left, burn per
    /// window, firing alert, time to exhaustion; sorted by burn.
    #[command(after_help = cli::status::AFTER_HELP)]
    Status(cli::status::Args),
    /// Live terminal view of a running agent, refreshed every second (q quits).
    #[command(after_help = cli::top::AFTER_HELP)]
    Top(cli::top::Args),
    /// Release gate for CI: may a change of this risk ship for this tenant?
    /// Exit status 0 approves.
    #[command(after_help = cli::gate::AFTER_HELP)]
    Gate(cli::gate::Args),
}

/// glibc's malloc, left to itself, raises its mmap threshold after the first
/// large free and then serves every later scrape buffer (tens of MiB at
/// 10,000 tenants) from a heap arena it never gives back, one arena per
/// thread that ever encoded a scrape. A fixed threshold keeps big buffers
/// in their own mappings, returned to the kernel when freed; two arenas are
/// plenty for an agent whose work is a poll loop and a few HTTP handlers.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_malloc();
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
        Command::Uninstall {
            config,
            bpffs_dir,
            wait,
            force,
        } => uninstall(config.as_deref(), bpffs_dir, wait, force),
        Command::Verifier { table_only } => verifier(table_only),
        Command::Check { config } => cli::check::run(&config),
        Command::BenchEngine { series } => engine::bench::run(series),
        Command::Simulate {
            config,
            scenario,
            json,
        } => simulate(&config, &scenario, json),
        Command::Rules {
            config,
            format,
            name,
        } => config::Config::load(&config)
            .map_err(Into::into)
            // With tenant.hash, per-tenant overrides are matched by pseudonym.
            .and_then(export::tenant_hashing)
            .map(|(c, _)| print!("{}", export::rules::render(&c.slo_set(), format, &name))),
        Command::Status(args) => cli::status::run(&args),
        Command::Top(args) => cli::top::run(&args),
        Command::Gate(args) => return cli::gate::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn uninstall(
    config: Option<&std::path::Path>,
    bpffs_dir: Option<PathBuf>,
    wait: u64,
    force: bool,
) -> anyhow::Result<()> {
    use probe::lock::{PinRootLock, TryLock};
    let root = match (bpffs_dir, config) {
        (Some(dir), _) => dir,
        (None, Some(path)) => config::Config::load(path)?.state.bpffs_dir,
        (None, None) => config::default_bpffs_dir(),
    };
    // Removing the pins under a running agent takes its kernel side away:
    // only with the pin root's lock (held while removing, so no agent
    // starts on it meanwhile), or --force.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let _lock = loop {
        match PinRootLock::try_lock(&root)? {
            TryLock::Locked(lock) => break Some(lock),
            TryLock::Missing => break None,
            TryLock::Held(holder) if force => {
                eprintln!(
                    "warning: {}; removing its pins anyway (--force): a running agent pins \
                     them again at its next poll",
                    probe::lock::in_use(&root, holder)
                );
                break None;
            }
            TryLock::Held(holder) if std::time::Instant::now() >= deadline => {
                anyhow::bail!(
                    "not uninstalling: pin root {} is held by a running burnwatch agent ({holder}); \
                     stop the agent first (SIGTERM keeps the pins, then run uninstall; or run \
                     it with `run --cleanup`), wait for it with --wait SECONDS, or pass --force",
                    root.display()
                );
            }
            TryLock::Held(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
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

fn verifier(table_only: bool) -> anyhow::Result<()> {
    use probe::verifier;
    let stats = verifier::measure(probe::EBPF_OBJECT)?;
    print!("{}", verifier::table(&stats));
    if table_only {
        return Ok(());
    }
    let failed = verifier::over_budget(&stats);
    if !failed.is_empty() {
        anyhow::bail!("verifier budget exceeded:\n  - {}", failed.join("\n  - "));
    }
    println!("every program within budget");
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
    let mut progress = cli::progress::Progress::new("simulating");
    let report = engine::simulate::simulate_with_progress(
        &c.slo_set(),
        &scenario,
        |done, total, alerts| {
            let unit = |s| engine::duration::HumanDuration::from_secs(s).to_string();
            progress.update(done, total, unit, &format!(", {alerts} alert transitions"));
        },
    )?;
    progress.finish();
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
