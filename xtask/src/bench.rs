//! `cargo xtask bench`: the agent's overhead on a real server, measured.
//!
//! nginx (one worker, pinned to CPU 0) on loopback under wrk (pinned to
//! CPU 1), alternating runs without and with the agent, so drift hits both
//! equally. With the agent: BPF time per request from the kernel's own
//! program statistics (`kernel.bpf_stats_enabled=1`, read back from the
//! agent's `burnwatch_bpf_program_run_seconds_total`), agent userspace CPU
//! from /proc, RSS. Results go to BENCHMARKS.md.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const ROUNDS: usize = 3;
const RUN_SECS: u32 = 8;
const CONNECTIONS: u32 = 16;

struct WrkResult {
    rps: f64,
    requests: u64,
    p50_us: f64,
    p99_us: f64,
}

/// Per eBPF program: (name, runs, ns).
type ProgramStats = Vec<(String, u64, u64)>;

struct AgentRun {
    wrk: WrkResult,
    /// Per program, over the run.
    programs: ProgramStats,
    bpf_ns: u64,
    bpf_runs: u64,
    agent_cpu_ns: u64,
    counted: u64,
    rss_kib: u64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_duration_us(s: &str) -> Option<f64> {
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mul)
}

fn run_wrk(port: u16) -> Result<WrkResult> {
    let url = format!("http://127.0.0.1:{port}/");
    let out = sh(
        "taskset",
        &[
            "-c",
            "1",
            "wrk",
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{RUN_SECS}s"),
            "--latency",
            "-H",
            "X-Tenant-ID: bench",
            &url,
        ],
    )?;
    let mut r = WrkResult {
        rps: 0.0,
        requests: 0,
        p50_us: 0.0,
        p99_us: 0.0,
    };
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse()?,
            ["50%", v] => r.p50_us = parse_duration_us(v).unwrap_or(0.0),
            ["99%", v] => r.p99_us = parse_duration_us(v).unwrap_or(0.0),
            [n, "requests", "in", ..] => r.requests = n.parse()?,
            _ => {}
        }
    }
    if r.requests == 0 {
        bail!("could not parse wrk output:\n{out}");
    }
    Ok(r)
}

struct Nginx {
    dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (std only; xtask keeps no deps).
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("burnwatch-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Nginx {
    fn start(port: u16) -> Result<Nginx> {
        let dir = tempfile_dir::Dir::new("bench-nginx");
        let d = dir.0.display();
        let conf = format!(
            "worker_processes 1;\nworker_cpu_affinity 01;\ndaemon on;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
events {{ worker_connections 1024; }}\n\
http {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf)?;
        sh(
            "nginx",
            &["-p", &d.to_string(), "-c", &path.display().to_string()],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Nginx { dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.0.join("nginx.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

struct Agent {
    child: Child,
    metrics_port: u16,
    _dir: tempfile_dir::Dir,
}

impl Agent {
    fn start(bin: &Path, port: u16) -> Result<Agent> {
        let dir = tempfile_dir::Dir::new("bench-agent");
        let metrics_port = free_port();
        let cfg = dir.0.join("burnwatch.yaml");
        std::fs::write(
            &cfg,
            format!(
                "services:\n  - name: bench\n    match:\n      port: {port}\nexporters:\n  prometheus:\n    listen: 127.0.0.1:{metrics_port}\n"
            ),
        )?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let agent = Agent {
            child,
            metrics_port,
            _dir: dir,
        };
        let start = Instant::now();
        while agent.get("/readyz").is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("agent not ready in 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(agent)
    }

    fn get(&self, path: &str) -> Result<String> {
        sh(
            "curl",
            &[
                "-sf",
                &format!("http://127.0.0.1:{}{path}", self.metrics_port),
            ],
        )
    }

    /// (BPF ns, BPF runs, requests counted, per program (name, runs, ns))
    /// from the agent's own metrics.
    fn stats(&self) -> Result<(u64, u64, u64, ProgramStats)> {
        let text = self.get("/metrics")?;
        let (mut ns, mut runs, mut counted) = (0.0, 0.0, 0.0);
        let mut programs: ProgramStats = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let v: f64 = value.parse().unwrap_or(0.0);
            let program = name
                .split("program=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string();
            if name.starts_with("burnwatch_bpf_program_run_seconds_total") {
                ns += v * 1e9;
                match programs.iter_mut().find(|p| p.0 == program) {
                    Some(p) => p.2 = (v * 1e9) as u64,
                    None => programs.push((program, 0, (v * 1e9) as u64)),
                }
            } else if name.starts_with("burnwatch_bpf_program_runs_total") {
                runs += v;
                match programs.iter_mut().find(|p| p.0 == program) {
                    Some(p) => p.1 = v as u64,
                    None => programs.push((program, v as u64, 0)),
                }
            } else if name.starts_with("burnwatch_http_requests_total{service=\"bench\"") {
                counted += v;
            }
        }
        Ok((ns as u64, runs as u64, counted as u64, programs))
    }

    /// utime + stime of the agent process, in ns.
    fn cpu_ns(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = stat.rsplit_once(')').context("stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        let hz: u64 = sh("getconf", &["CLK_TCK"])?.trim().parse()?;
        Ok(ticks * 1_000_000_000 / hz)
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The agent pins its programs so they outlive it: remove them, or
        // the "without agent" runs would still have them attached. (xtask
        // runs from the workspace root.)
        let _ = Command::new("target/release/burnwatch")
            .args(["uninstall", "--config"])
            .arg(self._dir.0.join("burnwatch.yaml"))
            .stdout(Stdio::null())
            .status();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

pub fn bench(root: &Path) -> Result<()> {
    let bin = root.join("target/release/burnwatch");
    let port = free_port();
    let _nginx = Nginx::start(port)?;
    sh("sysctl", &["-q", "-w", "kernel.bpf_stats_enabled=1"])?;
    let mut base = Vec::new();
    let mut with = Vec::new();
    let result = (|| -> Result<()> {
        // Warm-up so the first measured run is not a cold one.
        run_wrk(port)?;
        for round in 0..ROUNDS {
            eprintln!("bench round {}/{ROUNDS}: without agent", round + 1);
            base.push(run_wrk(port)?);
            eprintln!("bench round {}/{ROUNDS}: with agent", round + 1);
            let agent = Agent::start(&bin, port)?;
            let (ns0, runs0, c0, p0) = agent.stats()?;
            let cpu0 = agent.cpu_ns()?;
            let wrk = run_wrk(port)?;
            // Two poll intervals so the last requests reach /metrics.
            std::thread::sleep(Duration::from_millis(2200));
            let (ns1, runs1, c1, p1) = agent.stats()?;
            let programs = p1
                .iter()
                .map(|(name, r, n)| {
                    let (r0, n0) = p0
                        .iter()
                        .find(|p| &p.0 == name)
                        .map(|p| (p.1, p.2))
                        .unwrap_or((0, 0));
                    (name.clone(), r - r0, n - n0)
                })
                .collect();
            with.push(AgentRun {
                wrk,
                programs,
                bpf_ns: ns1 - ns0,
                bpf_runs: runs1 - runs0,
                agent_cpu_ns: agent.cpu_ns()? - cpu0,
                counted: c1 - c0,
                rss_kib: agent.rss_kib()?,
            });
        }
        Ok(())
    })();
    let _ = sh("sysctl", &["-q", "-w", "kernel.bpf_stats_enabled=0"]);
    result?;

    let base_rps: Vec<f64> = base.iter().map(|r| r.rps).collect();
    let with_rps: Vec<f64> = with.iter().map(|r| r.wrk.rps).collect();
    let ratio = median(with_rps.clone()) / median(base_rps.clone());
    let p50_delta = median(with.iter().map(|r| r.wrk.p50_us).collect())
        - median(base.iter().map(|r| r.p50_us).collect());
    let p99_delta = median(with.iter().map(|r| r.wrk.p99_us).collect())
        - median(base.iter().map(|r| r.p99_us).collect());
    let bpf_per_req: Vec<f64> = with
        .iter()
        .map(|r| r.bpf_ns as f64 / r.wrk.requests as f64)
        .collect();
    let cpu_per_req: Vec<f64> = with
        .iter()
        .map(|r| r.agent_cpu_ns as f64 / r.wrk.requests as f64)
        .collect();
    let runs_per_req: Vec<f64> = with
        .iter()
        .map(|r| r.bpf_runs as f64 / r.wrk.requests as f64)
        .collect();
    // wrk reports completed requests; at the end of a run each connection
    // may have one more request in flight that nginx answered (and the agent
    // counted) but wrk did not wait for.
    let exact = with
        .iter()
        .all(|r| r.counted >= r.wrk.requests && r.counted <= r.wrk.requests + CONNECTIONS as u64);

    let machine = format!(
        "{} cores, {}, kernel {}",
        sh("nproc", &[])?.trim(),
        std::fs::read_to_string("/proc/cpuinfo")?
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown CPU")
            .trim(),
        sh("uname", &["-r"])?.trim()
    );
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Reproduce: `cargo xtask bench` (as root). Machine: {machine}.\n"
    )?;
    writeln!(md, "## Overhead on nginx (HTTP/1.1 keep-alive, loopback)\n")?;
    writeln!(
        md,
        "Method: nginx with one worker pinned to CPU 0, `wrk -t1 -c{CONNECTIONS} -d{RUN_SECS}s` pinned to CPU 1 \
(saturation), every request carrying `X-Tenant-ID`. {ROUNDS} rounds, each a run without the agent followed \
by a run with it (started fresh, config watching the nginx port). BPF time is the kernel's own accounting \
(`kernel.bpf_stats_enabled=1`) of all burnwatch programs, which run on every read/write/close on the node, \
the client's syscalls included, divided by requests. Agent CPU is the agent process's user+system time \
(/proc/PID/stat) over the run. Medians, with min..max over rounds.\n"
    )?;
    let (bmin, bmax) = spread(&base_rps);
    let (wmin, wmax) = spread(&with_rps);
    let (pmin, pmax) = spread(&bpf_per_req);
    let (cmin, cmax) = spread(&cpu_per_req);
    writeln!(md, "| metric | result | target |")?;
    writeln!(md, "|---|---|---|")?;
    writeln!(
        md,
        "| throughput without agent | {:.0} req/s ({bmin:.0}..{bmax:.0}) | |",
        median(base_rps.clone())
    )?;
    writeln!(
        md,
        "| throughput with agent | {:.0} req/s ({wmin:.0}..{wmax:.0}) | |",
        median(with_rps.clone())
    )?;
    writeln!(md, "| throughput ratio | {ratio:.3} | >= 0.97 |")?;
    writeln!(md, "| p50 latency delta | {p50_delta:+.1} us | |")?;
    writeln!(md, "| p99 latency delta | {p99_delta:+.1} us | |")?;
    writeln!(
        md,
        "| BPF time per request | {:.0} ns ({pmin:.0}..{pmax:.0}) | < 1000 ns |",
        median(bpf_per_req.clone())
    )?;
    writeln!(
        md,
        "| BPF program runs per request | {:.1} | |",
        median(runs_per_req)
    )?;
    writeln!(
        md,
        "| agent userspace CPU per request | {:.0} ns ({cmin:.0}..{cmax:.0}) | |",
        median(cpu_per_req.clone())
    )?;
    writeln!(
        md,
        "| agent total CPU per request (BPF + userspace) | {:.0} ns | < 1500 ns |",
        median(bpf_per_req) + median(cpu_per_req)
    )?;
    writeln!(
        md,
        "| agent RSS | {} KiB (max over rounds) | < 64 MiB |",
        with.iter().map(|r| r.rss_kib).max().unwrap_or(0)
    )?;
    writeln!(
        md,
        "| requests counted = requests wrk completed (+ at most one in flight per connection) | {} | exact |",
        if exact { "yes, every round" } else { "NO" }
    )?;
    writeln!(md)?;
    for (i, (b, w)) in base.iter().zip(&with).enumerate() {
        writeln!(
            md,
            "- round {}: without {:.0} req/s (p50 {:.0} us, p99 {:.0} us); with {:.0} req/s (p50 {:.0} us, p99 {:.0} us), \
{} requests sent, {} counted, BPF {:.0} ns/req",
            i + 1,
            b.rps,
            b.p50_us,
            b.p99_us,
            w.wrk.rps,
            w.wrk.p50_us,
            w.wrk.p99_us,
            w.wrk.requests,
            w.counted,
            w.bpf_ns as f64 / w.wrk.requests as f64
        )?;
    }
    if let Some(last) = with.last() {
        writeln!(
            md,
            "\nWhere the BPF time goes (last round; runs and time per request; nginx and wrk syscalls both):\n"
        )?;
        writeln!(md, "| program | runs / request | ns / run | ns / request |")?;
        writeln!(md, "|---|---|---|---|")?;
        let reqs = last.wrk.requests.max(1) as f64;
        for (name, runs, ns) in &last.programs {
            if *runs == 0 {
                continue;
            }
            writeln!(
                md,
                "| {name} | {:.2} | {:.0} | {:.0} |",
                *runs as f64 / reqs,
                *ns as f64 / *runs as f64,
                *ns as f64 / reqs
            )?;
        }
    }
    writeln!(md, "\n## SLO engine at 100,000 (slo, tenant) series\n")?;
    writeln!(
        md,
        "Method: `burnwatch bench-engine --series 100000` (release build): 100,000 series with an hour of \
per-minute traffic, then one evaluation (first: every window rolls), the next second's evaluation \
(steady state, what the agent does every second), one snapshot pass (what a scrape reads), a \
checkpoint save and a restore. One core.\n"
    )?;
    let out = sh(
        &bin.display().to_string(),
        &["bench-engine", "--series", "100000"],
    )?;
    writeln!(md, "| measure | value |\n|---|---|")?;
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            writeln!(md, "| {k} | {v} |")?;
        }
    }
    std::fs::write(root.join("BENCHMARKS.md"), &md)?;
    print!("{md}");
    Ok(())
}
