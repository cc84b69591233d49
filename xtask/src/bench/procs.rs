//! The processes a benchmark drives: nginx, the agent, the load generators
//! (wrk and our own fixed-rate `loadgen`), each pinned to its core, and the
//! meters read off them (CPU time, RSS, the agent's own metrics).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::loadgen::LoadReport;

/// Core layout on the 2-core machine: the server owns CPU 0; the load
/// generator and the agent's userspace share CPU 1 (there is no third
/// core). eBPF programs run inside the syscalls that trigger them, so on
/// whichever core made the syscall.
pub const SERVER_CPU: &str = "0";
pub const CLIENT_CPU: &str = "1";
pub const AGENT_CPU: &str = "1";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn sh(program: &str, args: &[&str]) -> Result<String> {
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

pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A temporary directory removed on drop (xtask keeps its deps minimal).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "burnwatch-bench-{tag}-{}-{}",
            std::process::id(),
            unix_ns() % 1_000_000_000
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx with one worker on [`SERVER_CPU`], answering `200 ok` on `/`, or
/// `500` while the outage flag file exists (the detection scenario).
pub struct Nginx {
    pub port: u16,
    pub dir: TempDir,
}

impl Nginx {
    /// `access_log`: log `<status> <tenant>` per request (buffered), for the
    /// zero-loss check; off for the overhead runs.
    pub fn start(access_log: bool) -> Result<Nginx> {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.0.display();
        let log = if access_log {
            format!(
                "log_format tenants '$status $http_x_tenant_id';\n  access_log {d}/access.log tenants buffer=256k flush=1s;"
            )
        } else {
            "access_log off;".to_string()
        };
        // nginx's affinity is a bit mask, CPU 0 rightmost.
        let mask = format!("{:b}", 1u64 << SERVER_CPU.parse::<u32>().unwrap_or(0));
        let conf = format!(
            "worker_processes 1;\nworker_cpu_affinity {mask};\ndaemon on;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
events {{ worker_connections 4096; }}\n\
http {{\n  {log}\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 \"ok\\n\"; }}\n\
    location = /flaky {{ if (-f {d}/outage) {{ return 500 \"down\\n\"; }} return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf)?;
        sh(
            "nginx",
            &["-p", &d.to_string(), "-c", &path.display().to_string()],
        )?;
        let nginx = Nginx { port, dir };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// CPU time (ns) of nginx's one worker so far: its own work per
    /// request, plus the eBPF programs its syscalls run.
    pub fn worker_cpu_ns(&self) -> Result<u64> {
        let master = std::fs::read_to_string(self.dir.0.join("nginx.pid"))?;
        let master = master.trim();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))?;
        let worker = children
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow::anyhow!("nginx {master} has no worker"))?;
        // schedstat's first field: time on CPU in ns (stat's utime and
        // stime tick at 10 ms, too coarse for a run at 1,000 req/s).
        let sched = std::fs::read_to_string(format!("/proc/{worker}/schedstat"))?;
        sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{worker}/schedstat: {sched:?}"))
    }

    pub fn set_outage(&self, on: bool) -> Result<()> {
        let flag = self.dir.0.join("outage");
        if on {
            std::fs::write(flag, b"")?;
        } else {
            let _ = std::fs::remove_file(flag);
        }
        Ok(())
    }

    /// Access log lines as (status, tenant), after asking nginx to flush
    /// its buffer (USR1 reopens the log, which writes what is buffered).
    pub fn access_log(&self) -> Result<Vec<(String, String)>> {
        let pid = std::fs::read_to_string(self.dir.0.join("nginx.pid"))?;
        sh("kill", &["-USR1", pid.trim()])?;
        std::thread::sleep(Duration::from_millis(1500));
        let text = std::fs::read_to_string(self.dir.0.join("access.log"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect())
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

/// The agent's CPU time, precise to the nanosecond where a cgroup can hold
/// it (cgroup v1 cpuacct or cgroup v2 cpu.stat: every thread, including
/// ones that exited, e.g. tokio's checkpoint threads); otherwise utime +
/// stime from /proc/PID/stat (clock ticks, 10 ms).
enum CpuMeter {
    CgroupV1(PathBuf),
    CgroupV2(PathBuf),
    Proc(u32),
}

impl CpuMeter {
    fn attach(pid: u32) -> CpuMeter {
        let name = format!("burnwatch-bench-{pid}");
        let candidates = [
            ("/sys/fs/cgroup/cpuacct", "cpuacct.usage", true),
            ("/sys/fs/cgroup", "cgroup.controllers", false),
            ("/sys/fs/cgroup/unified", "cgroup.controllers", false),
        ];
        for (root, marker, v1) in candidates {
            let root = Path::new(root);
            if !root.join(marker).exists() {
                continue;
            }
            let dir = root.join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_err() {
                let _ = std::fs::remove_dir(&dir);
                continue;
            }
            return if v1 {
                CpuMeter::CgroupV1(dir)
            } else {
                CpuMeter::CgroupV2(dir)
            };
        }
        CpuMeter::Proc(pid)
    }

    fn describe(&self) -> &'static str {
        match self {
            CpuMeter::CgroupV1(_) => "cgroup v1 cpuacct.usage (ns, all threads)",
            CpuMeter::CgroupV2(_) => "cgroup v2 cpu.stat usage_usec (all threads)",
            CpuMeter::Proc(_) => "/proc/PID/stat utime+stime (10 ms ticks)",
        }
    }

    fn ns(&self) -> Result<u64> {
        match self {
            CpuMeter::CgroupV1(dir) => Ok(std::fs::read_to_string(dir.join("cpuacct.usage"))?
                .trim()
                .parse()?),
            CpuMeter::CgroupV2(dir) => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat"))?;
                let usec: u64 = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .context("usage_usec")?
                    .trim()
                    .parse()?;
                Ok(usec * 1_000)
            }
            CpuMeter::Proc(pid) => proc_cpu_ns(*pid),
        }
    }

    fn release(&self) {
        if let CpuMeter::CgroupV1(dir) | CpuMeter::CgroupV2(dir) = self {
            // Empty once the agent has exited.
            for _ in 0..20 {
                if std::fs::remove_dir(dir).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// utime + stime of a process (all threads, live and exited), in ns.
pub fn proc_cpu_ns(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz: u64 = sh("getconf", &["CLK_TCK"])?.trim().parse()?;
    Ok(ticks * 1_000_000_000 / hz)
}

/// Kernel-side totals the agent reports about itself.
#[derive(Debug, Clone, Default)]
pub struct AgentStats {
    pub bpf_ns: u64,
    pub bpf_runs: u64,
    /// `burnwatch_http_requests_total` of service `bench`, all tenants.
    pub counted: u64,
    /// Per program: (name, runs, ns).
    pub programs: Vec<(String, u64, u64)>,
    /// `burnwatch_dropped_events_total` by reason.
    pub dropped: Vec<(String, u64)>,
    pub tenant_overflow: u64,
}

/// The agent's cumulative CPU and BPF time at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub at: Instant,
    pub cpu_ns: u64,
    pub bpf_ns: u64,
    pub bpf_runs: u64,
}

/// Turns the kernel's timing of eBPF programs (`kernel.bpf_stats_enabled`)
/// on or off. On, every program run reads the clock twice: in this VM that
/// costs nginx's core about 300 ns per request (two runs), which users
/// never pay (the sysctl is off by default and the agent leaves it).
pub fn set_bpf_stats(on: bool) -> Result<()> {
    let v = if on { "1" } else { "0" };
    sh(
        "sysctl",
        &["-q", "-w", &format!("kernel.bpf_stats_enabled={v}")],
    )?;
    Ok(())
}

/// What a run cost per request, with the idle background beside it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// Agent CPU (userspace and its own syscalls) during the run / requests.
    pub cpu_ns_per_req: f64,
    /// BPF time during the run / requests (everything the programs ran for).
    pub bpf_ns_per_req: f64,
    /// The same, less the idle background rate times the run's length:
    /// what this traffic itself cost.
    pub bpf_net_ns_per_req: f64,
    pub bpf_runs_per_req: f64,
    /// Background BPF time per second, measured idle just before the run.
    pub bpf_idle_ns_per_s: f64,
    /// Agent CPU % of one core during the run.
    pub cpu_percent: f64,
}

impl Cost {
    /// `idle`: snapshots around an idle second; `run`: around the run.
    pub fn of(idle: (Snapshot, Snapshot), run: (Snapshot, Snapshot), requests: u64) -> Cost {
        let reqs = requests.max(1) as f64;
        let idle_s = (idle.1.at - idle.0.at).as_secs_f64();
        let run_s = (run.1.at - run.0.at).as_secs_f64();
        let bg = idle.1.bpf_ns.saturating_sub(idle.0.bpf_ns) as f64 / idle_s;
        let bpf = run.1.bpf_ns.saturating_sub(run.0.bpf_ns) as f64;
        let cpu = run.1.cpu_ns.saturating_sub(run.0.cpu_ns) as f64;
        Cost {
            cpu_ns_per_req: cpu / reqs,
            bpf_ns_per_req: bpf / reqs,
            bpf_net_ns_per_req: (bpf - bg * run_s).max(0.0) / reqs,
            bpf_runs_per_req: run.1.bpf_runs.saturating_sub(run.0.bpf_runs) as f64 / reqs,
            bpf_idle_ns_per_s: bg,
            cpu_percent: cpu / (run_s * 1e9) * 100.0,
        }
    }
}

pub struct Agent {
    child: Child,
    bin: std::path::PathBuf,
    pub metrics_port: u16,
    cpu: CpuMeter,
    pub dir: TempDir,
}

impl Agent {
    /// Starts the agent on [`AGENT_CPU`] with `body` (services, tenants,
    /// SLOs) plus a Prometheus listener and a private state directory, and
    /// waits until it is ready.
    pub fn start(bin: &Path, body: &str) -> Result<Agent> {
        let dir = TempDir::new("agent");
        let metrics_port = free_port();
        let cfg = dir.0.join("burnwatch.yaml");
        std::fs::write(
            &cfg,
            format!(
                "{body}exporters:\n  prometheus:\n    listen: 127.0.0.1:{metrics_port}\nstate:\n  dir: {}\n  bpffs_dir: {}\n",
                dir.0.join("state").display(),
                bpffs_dir(metrics_port).display(),
            ),
        )?;
        let log = std::fs::File::create(dir.0.join("agent.log"))?;
        let child = Command::new("taskset")
            .args(["-c", AGENT_CPU])
            .arg(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let cpu = CpuMeter::attach(child.id());
        let mut agent = Agent {
            child,
            bin: bin.to_path_buf(),
            metrics_port,
            cpu,
            dir,
        };
        let start = Instant::now();
        while agent.get("/readyz").is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!("agent exited with {status}:\n{}", agent.log());
            }
            if start.elapsed() > Duration::from_secs(90) {
                bail!("agent not ready in 90 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(agent)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    pub fn cpu_method(&self) -> &'static str {
        self.cpu.describe()
    }

    /// One GET on the agent's HTTP port with `headers` (each ending in
    /// CRLF): (raw response, seconds to the last byte).
    fn raw_get(&self, path: &str, headers: &str) -> Result<(Vec<u8>, f64)> {
        use std::io::{Read, Write};
        let start = Instant::now();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok((raw, start.elapsed().as_secs_f64()))
    }

    /// GET with `Accept-Encoding: gzip`, as Prometheus scrapes: (bytes on
    /// the wire after the header, seconds to the last byte).
    pub fn get_gzip_timed(&self, path: &str) -> Result<(usize, f64)> {
        let (raw, secs) = self.raw_get(path, "Accept-Encoding: gzip\r\n")?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no HTTP header")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") || !head.contains("content-encoding: gzip") {
            bail!("GET {path} with gzip: {head}");
        }
        Ok((raw.len() - end - 4, secs))
    }

    /// GET on the agent's HTTP port: (body, seconds to the last byte).
    pub fn get_timed(&self, path: &str) -> Result<(String, f64)> {
        let (raw, secs) = self.raw_get(path, "")?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)?
        } else {
            body.to_string()
        };
        Ok((body, secs))
    }

    pub fn get(&self, path: &str) -> Result<String> {
        Ok(self.get_timed(path)?.0)
    }

    pub fn stats(&self) -> Result<AgentStats> {
        Ok(parse_stats(&self.get("/metrics")?))
    }

    pub fn cpu_ns(&self) -> Result<u64> {
        self.cpu.ns()
    }

    /// The kernel's run time and run count (`kernel.bpf_stats_enabled`) of
    /// every eBPF program this agent holds, read at this instant from
    /// /proc/PID/fdinfo (the agent's own metrics lag up to a poll interval).
    pub fn bpf_totals(&self) -> Result<(u64, u64)> {
        // The agent holds no program fd (its pins keep the programs): open
        // each pinned program and read the kernel's totals from its fdinfo.
        let root = bpffs_dir(self.metrics_port);
        let (mut ns, mut runs, mut programs) = (0u64, 0u64, 0usize);
        for build in std::fs::read_dir(&root)
            .with_context(|| format!("agent pins at {}", root.display()))?
            .flatten()
        {
            let Ok(progs) = std::fs::read_dir(build.path().join("progs")) else {
                continue;
            };
            for prog in progs.flatten() {
                let (run_ns, run_cnt) = pinned_program_stats(&prog.path())?;
                ns += run_ns;
                runs += run_cnt;
                programs += 1;
            }
        }
        if programs == 0 {
            bail!(
                "agent {} pinned no eBPF program under {}",
                self.child.id(),
                root.display()
            );
        }
        Ok((ns, runs))
    }

    /// CPU and BPF totals now.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let (bpf_ns, bpf_runs) = self.bpf_totals()?;
        Ok(Snapshot {
            at: Instant::now(),
            cpu_ns: self.cpu_ns()?,
            bpf_ns,
            bpf_runs,
        })
    }

    /// An idle second before a measured run: the background rates (agent
    /// CPU of its once-a-second poll; BPF time of other processes' syscalls
    /// on the node) that [`Cost::of`] reports beside the run's own.
    pub fn idle(&self) -> Result<(Snapshot, Snapshot)> {
        let a = self.snapshot()?;
        std::thread::sleep(Duration::from_secs(1));
        Ok((a, self.snapshot()?))
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| name.to_string())?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .with_context(|| name.to_string())?
                .parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Waits for two poll intervals, so what the kernel counted is in the
    /// agent's metrics.
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(2200));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The agent pins its programs so they outlive it: remove them, or
        // the "without agent" runs would still have them attached.
        let _ = Command::new(&self.bin)
            .args(["uninstall", "--config"])
            .arg(self.dir.0.join("burnwatch.yaml"))
            .stdout(Stdio::null())
            .status();
        self.cpu.release();
    }
}

/// Where a bench agent pins its programs and maps: its own directory, so a
/// bench never touches the pins of an agent already running on the node.
fn bpffs_dir(metrics_port: u16) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sys/fs/bpf/burnwatch-bench-{metrics_port}"))
}

/// (run_time_ns, run_cnt) of a pinned eBPF program, as the kernel accounts
/// them with `kernel.bpf_stats_enabled=1`.
///
/// By hand: one `bpf(BPF_OBJ_GET)` call and an fdinfo read; a BPF crate for
/// this alone would add aya to xtask's build.
fn pinned_program_stats(path: &Path) -> Result<(u64, u64)> {
    use std::os::fd::FromRawFd;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // Explicit: the kernel rejects attrs whose bytes past the
        // command's last field are not zero.
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr outlives the call and is the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        bail!(
            "BPF_OBJ_GET {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a fresh fd the kernel just gave us; closed when dropped.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    program_fd_stats(&fd)
}

/// (run_time_ns, run_cnt) of the eBPF program behind descriptor `fd`, from
/// its fdinfo.
pub fn program_fd_stats(fd: &std::os::fd::OwnedFd) -> Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("run_time_ns:"), field("run_cnt:")))
}

fn dechunk(body: &str) -> Result<String> {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").context("chunk size")?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..n).context("short chunk")?);
        rest = after.get(n + 2..).context("chunk end")?;
    }
}

/// The label value `name="..."` in a series line.
/// Sum of the samples of gauge `name` in a text exposition (every label set).
pub fn gauge(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

pub fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    series
        .split(&format!("{name}=\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
}

pub fn parse_stats(text: &str) -> AgentStats {
    let mut st = AgentStats::default();
    let (mut ns, mut runs) = (0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        let program = label(name, "program").unwrap_or("").to_string();
        let entry = |programs: &mut Vec<(String, u64, u64)>| -> usize {
            match programs.iter().position(|p| p.0 == program) {
                Some(i) => i,
                None => {
                    programs.push((program.clone(), 0, 0));
                    programs.len() - 1
                }
            }
        };
        if name.starts_with("burnwatch_bpf_program_run_seconds_total") {
            ns += v * 1e9;
            let i = entry(&mut st.programs);
            st.programs[i].2 = (v * 1e9) as u64;
        } else if name.starts_with("burnwatch_bpf_program_runs_total") {
            runs += v;
            let i = entry(&mut st.programs);
            st.programs[i].1 = v as u64;
        } else if name.starts_with("burnwatch_http_requests_total{")
            && label(name, "service") == Some("bench")
        {
            st.counted += v as u64;
        } else if name.starts_with("burnwatch_dropped_events_total") {
            st.dropped
                .push((label(name, "reason").unwrap_or("").to_string(), v as u64));
        } else if name.starts_with("burnwatch_tenant_overflow_total") {
            st.tenant_overflow += v as u64;
        }
    }
    st.bpf_ns = ns as u64;
    st.bpf_runs = runs as u64;
    st
}

/// Per-program (name, runs, ns) of `after` minus `before`.
pub fn program_delta(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
) -> Vec<(String, u64, u64)> {
    after
        .iter()
        .map(|(name, r, n)| {
            let (r0, n0) = before
                .iter()
                .find(|p| &p.0 == name)
                .map(|p| (p.1, p.2))
                .unwrap_or((0, 0));
            (name.clone(), r.saturating_sub(r0), n.saturating_sub(n0))
        })
        .collect()
}

/// The load generators, each pinned to [`CLIENT_CPU`].
pub struct Clients {
    /// The release build of this xtask, whose `loadgen` subcommand is the
    /// fixed-rate generator (the debug build would be the bottleneck).
    pub xtask: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub const WRK_CONNECTIONS: u32 = 16;

impl Clients {
    pub fn wrk(&self, port: u16, secs: f64) -> Result<WrkResult> {
        let url = format!("http://127.0.0.1:{port}/");
        let out = sh(
            "taskset",
            &[
                "-c",
                CLIENT_CPU,
                "wrk",
                "-t1",
                &format!("-c{WRK_CONNECTIONS}"),
                &format!("-d{}s", secs.round().max(1.0)),
                "--latency",
                "-H",
                "X-Tenant-ID: bench",
                &url,
            ],
        )?;
        let mut r = WrkResult::default();
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

    /// Our fixed-rate generator (`rate` 0 = saturation).
    pub fn load(
        &self,
        port: u16,
        rate: u64,
        secs: f64,
        tenants: u32,
        path: &str,
    ) -> Result<LoadReport> {
        self.load_n(port, rate, secs, tenants, path, 0)
    }

    /// [`Clients::load`], stopping after `requests` (0: no limit).
    pub fn load_n(
        &self,
        port: u16,
        rate: u64,
        secs: f64,
        tenants: u32,
        path: &str,
        requests: u64,
    ) -> Result<LoadReport> {
        let out = sh(
            "taskset",
            &[
                "-c",
                CLIENT_CPU,
                &self.xtask.display().to_string(),
                "loadgen",
                "--port",
                &port.to_string(),
                "--rate",
                &rate.to_string(),
                "--connections",
                "16",
                "--duration",
                &secs.to_string(),
                "--tenants",
                &tenants.to_string(),
                "--path",
                path,
                "--requests",
                &requests.to_string(),
            ],
        )?;
        LoadReport::from_lines(&out)
    }
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

/// Other burnwatch agents running on the node (other engineers' tests):
/// their eBPF programs run on our traffic's syscalls too, in both arms.
pub fn other_agents(ours: &[u32]) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "burnwatch")
        })
        .count()
}

/// burnwatch pin sets with attached links outside the bench's own
/// directories (another agent, or one killed before it could unpin): their
/// programs run on every syscall of the bench, in both arms.
pub fn foreign_pins() -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let links = dir.join("links");
        if std::fs::read_dir(&links).is_ok_and(|mut d| d.next().is_some()) {
            out.push(dir.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("burnwatch") && !name.starts_with("burnwatch-bench-") {
            walk(&e.path(), 3, &mut out);
        }
    }
    out
}

/// (steal, total) jiffies of all CPUs since boot, from /proc/stat: on a
/// virtual machine, time the hypervisor gave to other guests. Steal makes
/// every figure of a run slower and noisier, whatever the agent does.
pub fn cpu_steal() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total = f.iter().take(8).sum();
    (f.get(7).copied().unwrap_or(0), total)
}

/// Percent of CPU time stolen between two [`cpu_steal`] readings.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    100.0 * after.0.saturating_sub(before.0) as f64 / total as f64
}

/// The 1-minute load average, to record how busy the machine was.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_percent_of_two_readings() {
        assert_eq!(steal_percent((10, 1000), (60, 2000)), 5.0);
        assert_eq!(steal_percent((10, 1000), (10, 1000)), 0.0);
        let (steal, total) = cpu_steal();
        assert!(total > 0 && steal <= total);
    }

    #[test]
    fn parses_the_agents_self_metrics() {
        let text = "# HELP x\nburnwatch_bpf_program_runs_total{program=\"sys_enter_read\"} 10\n\
burnwatch_bpf_program_run_seconds_total{program=\"sys_enter_read\"} 0.000002\n\
burnwatch_http_requests_total{service=\"bench\",tenant=\"t-1\",method=\"GET\",status=\"200\"} 7\n\
burnwatch_http_requests_total{service=\"other\",tenant=\"t-1\",method=\"GET\",status=\"200\"} 5\n\
burnwatch_dropped_events_total{reason=\"counts_map_full\"} 3\n";
        let st = parse_stats(text);
        assert_eq!(st.bpf_runs, 10);
        assert_eq!(st.bpf_ns, 2_000);
        assert_eq!(st.counted, 7);
        assert_eq!(st.programs, vec![("sys_enter_read".into(), 10, 2_000)]);
        assert_eq!(st.dropped, vec![("counts_map_full".into(), 3)]);
    }

    #[test]
    fn dechunks_http_bodies() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
