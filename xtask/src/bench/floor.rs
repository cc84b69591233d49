//! The cost of running an eBPF program at all, by request rate: the floor
//! under the agent's BPF time per request.
//!
//! Three programs that do no work, each attached alone to the load
//! generator's send syscalls (`sys_enter_write` for wrk, `sys_enter_sendto`
//! for `cargo xtask loadgen`, one run per request), timed by the kernel
//! (`kernel.bpf_stats_enabled`) at each load of the overhead phase:
//! - `empty`: `r0 = 0; exit`;
//! - `one lookup`: one `bpf_map_lookup_elem` (a miss) in an LRU hash map of
//!   65,536 entries keyed by pid/tgid, the shape of the agent's `CONNS`,
//!   then exit: what a syscall of a connection the agent ignores cost
//!   before the `IGNORED` cache;
//! - `one array lookup`: a lookup in a 2,048-entry array of u64 (the shape
//!   of `IGNORED`, which the verifier inlines to an address computation),
//!   then exit: the least such a syscall costs now.
//!
//! Then `empty` on every tracepoint the agent attaches to at once: its BPF
//! time per request at the fixed rates, and at saturation the throughput
//! and nginx CPU ratios with and without it: the floor under the agent's
//! own ratio, from tracing the syscalls at all.
//!
//! Loaded with raw `bpf(2)` bytecode rather than through aya and an ELF
//! object: three programs of 2 to 10 instructions, and xtask stays free of
//! the eBPF build.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burnwatch_common::programs::TRACEPOINTS;

use super::overhead;
use super::procs::{Nginx, WRK_CONNECTIONS, program_fd_stats, set_bpf_stats, sh};
use super::report::{Headline, Section, Spread};
use super::{Ctx, TENANTS_OVERHEAD};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)` and `_IO('$', 0)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// Entries of the `one lookup` map, as `CONNS_MAX`.
const LOOKUP_MAP_ENTRIES: u32 = 65_536;
/// Entries of the `one array lookup` map, as `ignored_cache::SLOTS`.
const ARRAY_MAP_ENTRIES: u32 = 2_048;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `r0 = 0; exit`.
fn empty_program() -> Vec<Insn> {
    vec![insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)]
}

/// `*(u64 *)(r10 - 8) = bpf_get_current_pid_tgid() [& mask]; bpf_map_lookup_elem(map, r10 - 8); r0 = 0; exit`.
fn lookup_program(map_fd: i32, mask: Option<i32>) -> Vec<Insn> {
    let mut insns = vec![insn(0x85, 0, 0, 0, 14)]; // call bpf_get_current_pid_tgid
    if let Some(mask) = mask {
        insns.push(insn(0x57, 0, 0, 0, mask)); // r0 &= mask
    }
    insns.extend([
        insn(0x7b, 10, 0, -8, 0),    // *(u64 *)(r10 - 8) = r0
        insn(0x18, 1, 1, 0, map_fd), // r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
        insn(0, 0, 0, 0, 0),
        insn(0xbf, 2, 10, 0, 0), // r2 = r10
        insn(0x07, 2, 0, 0, -8), // r2 += -8
        insn(0x85, 0, 0, 0, 1),  // call bpf_map_lookup_elem
        insn(0xb7, 0, 0, 0, 0),  // r0 = 0
        insn(0x95, 0, 0, 0, 0),  // exit
    ]);
    insns
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` prefix of 128 bytes with
    // the command's fields set.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel returned.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn create_lookup_map() -> Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // map_type, key_size; value_size, max_entries.
    attr[0] = u64::from(BPF_MAP_TYPE_LRU_HASH) | (8u64 << 32);
    attr[1] = 64 | (u64::from(LOOKUP_MAP_ENTRIES) << 32);
    bpf(BPF_MAP_CREATE, &mut attr).context("creating the floor's LRU hash map")
}

/// The `one array lookup` map: u32 keys, u64 values. The program's key is
/// the thread id modulo the entries (a slot, as `IGNORED`'s hash picks).
fn create_array_map() -> Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_MAP_TYPE_ARRAY) | (4u64 << 32);
    attr[1] = 8 | (u64::from(ARRAY_MAP_ENTRIES) << 32);
    bpf(BPF_MAP_CREATE, &mut attr).context("creating the floor's array map")
}

fn load_program(insns: &[Insn]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt; insns; license; log_level, log_size; log_buf.
    attr[0] = u64::from(BPF_PROG_TYPE_TRACEPOINT) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "loading a floor program: {e}; verifier: {}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}

/// The tracepoints the floor programs attach to: the load generators'
/// sends (wrk writes, `cargo xtask loadgen` sends).
const SEND_TRACEPOINTS: [(&str, &str); 2] = [
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_sendto"),
];

/// The ids of tracepoints `CATEGORY/NAME` (tracefs, mounted by the agent's
/// earlier runs or here).
fn tracepoint_ids<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Vec<u64>> {
    let roots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    let root = match roots.iter().find(|r| Path::new(r).join("events").is_dir()) {
        Some(r) => r,
        None => {
            sh("mount", &["-t", "tracefs", "nodev", roots[0]])?;
            roots[0]
        }
    };
    names
        .into_iter()
        .map(|(category, name)| {
            let p = Path::new(root)
                .join("events")
                .join(category)
                .join(name)
                .join("id");
            let id = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
            id.trim()
                .parse()
                .with_context(|| format!("{}", p.display()))
        })
        .collect()
}

/// `prog` attached to each tracepoint while this lives.
struct Attached {
    _events: Vec<OwnedFd>,
}

/// `prog` attached to the tracepoints of ids `ids`.
fn attach(prog: &OwnedFd, ids: &[u64]) -> Result<Attached> {
    let mut events = Vec::new();
    for &id in ids {
        let mut attr = [0u64; 16];
        // type, size (PERF_ATTR_SIZE_VER0); config; sample_period.
        attr[0] = u64::from(PERF_TYPE_TRACEPOINT) | (64u64 << 32);
        attr[1] = id;
        attr[2] = 1;
        // SAFETY: a zeroed perf_event_attr of the size given; all CPUs of
        // every process (pid -1, cpu 0: a tracepoint's programs run on
        // every CPU whichever CPU the event is opened on).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                -1i32,
                0i32,
                -1i32,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!(
                "perf_event_open(tracepoint {id}): {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: a new descriptor the kernel returned.
        let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: ioctls on the perf event with a program descriptor.
        unsafe {
            if libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0
                || libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0
            {
                bail!(
                    "attaching to tracepoint {id}: {}",
                    io::Error::last_os_error()
                );
            }
        }
        events.push(event);
    }
    Ok(Attached { _events: events })
}

/// Seconds per measured run: half the overhead phase's, at least 3.
fn run_secs(ctx: &Ctx) -> f64 {
    (ctx.plan.run_secs / 2.0).max(3.0)
}

/// What the kernel timed of one program over one run.
struct Timed {
    ns: u64,
    runs: u64,
    /// Requests the load generator completed.
    requests: u64,
}

impl Timed {
    fn ns_per_run(&self) -> f64 {
        self.ns as f64 / self.runs as f64
    }
}

/// `prog`, attached to tracepoints `ids`, timed over one run of `load`
/// (None: wrk at saturation).
fn measure(
    ctx: &Ctx,
    nginx: &Nginx,
    prog: &OwnedFd,
    ids: &[u64],
    load: Option<u64>,
) -> Result<Timed> {
    let secs = run_secs(ctx);
    let _attached = attach(prog, ids)?;
    let (t0, r0) = program_fd_stats(prog)?;
    let requests = match load {
        None => ctx.clients.wrk(nginx.port, secs)?.requests,
        Some(rate) => {
            ctx.clients
                .load(nginx.port, rate, secs, TENANTS_OVERHEAD, "/")?
                .requests
        }
    };
    let (t1, r1) = program_fd_stats(prog)?;
    if r1 <= r0 {
        bail!("the floor program never ran (is kernel.bpf_stats_enabled on?)");
    }
    Ok(Timed {
        ns: t1 - t0,
        runs: r1 - r0,
        requests: requests.max(1),
    })
}

/// The empty program on every tracepoint the agent attaches to
/// (`burnwatch_common::programs::TRACEPOINTS`), no agent: what tracing the
/// agent's syscalls costs before any of its work.
struct TracingFloor {
    /// Per fixed rate, per round: BPF ns per request and runs per request.
    bpf_ns_per_request: Vec<Vec<f64>>,
    runs_per_request: Vec<Vec<f64>>,
    /// Per saturation round: req/s with / without.
    throughput_ratio: Vec<f64>,
    /// Per saturation round: nginx's worker CPU ns per request, without
    /// and with.
    nginx_ns_without: Vec<f64>,
    nginx_ns_with: Vec<f64>,
}

impl TracingFloor {
    /// `rounds` runs at each fixed rate (timed), then the overhead phase's
    /// number of saturation rounds (untimed), with `empty` on every
    /// tracepoint of the agent.
    fn measure(ctx: &Ctx, nginx: &Nginx, empty: &OwnedFd, rounds: usize) -> Result<TracingFloor> {
        let ids = tracepoint_ids(
            TRACEPOINTS
                .iter()
                .map(|&(category, name, _)| (category, name)),
        )?;
        let rates = &ctx.plan.fixed_rates;
        let mut floor = TracingFloor {
            bpf_ns_per_request: vec![Vec::new(); rates.len()],
            runs_per_request: vec![Vec::new(); rates.len()],
            throughput_ratio: Vec::new(),
            nginx_ns_without: Vec::new(),
            nginx_ns_with: Vec::new(),
        };
        for round in 0..rounds {
            eprintln!(
                "floor: the agent's tracepoints, round {}/{rounds}",
                round + 1
            );
            for (ri, &rate) in rates.iter().enumerate() {
                let t = measure(ctx, nginx, empty, &ids, Some(rate))?;
                let requests = t.requests as f64;
                floor.bpf_ns_per_request[ri].push(t.ns as f64 / requests);
                floor.runs_per_request[ri].push(t.runs as f64 / requests);
            }
        }
        // Throughput as users run: the kernel's per-run timing off (it
        // costs nginx's core two clock reads per run).
        set_bpf_stats(false)?;
        let saturation = (|| {
            for round in 0..ctx.plan.rounds {
                eprintln!(
                    "floor: saturation with and without the empty programs, round {}/{}",
                    round + 1,
                    ctx.plan.rounds
                );
                let without = overhead::drive(ctx, nginx, None)?;
                let _attached = attach(empty, &ids)?;
                let with = overhead::drive(ctx, nginx, None)?;
                floor.throughput_ratio.push(with.rps / without.rps);
                floor.nginx_ns_without.push(without.server_ns_per_req);
                floor.nginx_ns_with.push(with.server_ns_per_req);
            }
            Ok::<_, anyhow::Error>(())
        })();
        set_bpf_stats(true)?;
        saturation?;
        Ok(floor)
    }

    /// Appends its subsection to `md` and its summary lines to `headlines`.
    fn report(
        &self,
        ctx: &Ctx,
        rounds: usize,
        md: &mut String,
        headlines: &mut Vec<Headline>,
    ) -> Result<()> {
        writeln!(
            md,
            "\n### The empty program on every tracepoint the agent uses\n\n\
Method: no agent; the `empty` program attached at once to each of the agent's {n} tracepoints \
(`burnwatch_common::programs::TRACEPOINTS`: the read and write syscalls, accept, connect, close and the TCP \
state changes), so every syscall the agent would trace runs a program that does nothing. At the fixed rates \
({rounds} rounds of {secs:.0} s): its BPF time per request, the least the agent's BPF time per request can \
be. At saturation ({sat} interleaved rounds of {run:.0} s, wrk without then with the programs, \
`kernel.bpf_stats_enabled=0` as users run): the throughput ratio and nginx's CPU per request (its worker's \
time on CPU, which includes the tracepoints' own cost outside the programs: attaching any syscall tracepoint \
puts every syscall of every process on the kernel's traced, slower path, which BPF time does not show), the \
most the agent's ratio can be.\n",
            n = TRACEPOINTS.len(),
            secs = run_secs(ctx),
            sat = ctx.plan.rounds,
            run = ctx.plan.run_secs,
        )?;
        writeln!(
            md,
            "| load | BPF ns per request | program runs per request |\n|---|---|---|"
        )?;
        for (ri, rate) in ctx.plan.fixed_rates.iter().enumerate() {
            writeln!(
                md,
                "| {rate} req/s | {} | {} |",
                Spread::of(&self.bpf_ns_per_request[ri]).show(0),
                Spread::of(&self.runs_per_request[ri]).show(1)
            )?;
        }
        let ratio = Spread::of(&self.throughput_ratio);
        let cpu_ratio: Vec<f64> = self
            .nginx_ns_without
            .iter()
            .zip(&self.nginx_ns_with)
            .map(|(without, with)| without / with)
            .collect();
        let cpu_ratio = Spread::of(&cpu_ratio);
        writeln!(
            md,
            "\nAt saturation: throughput ratio with / without {}; nginx CPU per request without / with {} / {} \
ns (ratio {}).",
            ratio.show(3),
            Spread::of(&self.nginx_ns_without).show(0),
            Spread::of(&self.nginx_ns_with).show(0),
            cpu_ratio.show(3),
        )?;
        headlines.push(Headline::new(
            "floor of the throughput ratio and of nginx's CPU ratio (saturation): an empty program on each of the agent's tracepoints, no agent",
            format!("{}; nginx CPU {}", ratio.show(3), cpu_ratio.show(3)),
            "",
            None,
        ));
        if let Some(ri) = ctx.plan.fixed_rates.iter().position(|&r| r == 1_000) {
            headlines.push(Headline::new(
                "floor of BPF time per request (1000 req/s): the same empty programs",
                format!(
                    "{} ns in {} runs",
                    Spread::of(&self.bpf_ns_per_request[ri]).show(0),
                    Spread::of(&self.runs_per_request[ri]).show(1)
                ),
                "",
                None,
            ));
        }
        Ok(())
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    set_bpf_stats(true)?;
    let map = create_lookup_map()?;
    let array = create_array_map()?;
    let programs = [
        ("empty (2 instructions)", load_program(&empty_program())?),
        (
            "one lookup (a miss in a 65,536-entry LRU hash)",
            load_program(&lookup_program(map.as_raw_fd(), None))?,
        ),
        (
            "one array lookup (a 2,048-entry array)",
            load_program(&lookup_program(
                array.as_raw_fd(),
                Some(ARRAY_MAP_ENTRIES as i32 - 1),
            ))?,
        ),
    ];
    let ids = tracepoint_ids(SEND_TRACEPOINTS)?;
    let nginx = Nginx::start(false)?;
    ctx.clients.wrk(nginx.port, 2.0)?;
    let loads: Vec<Option<u64>> = ctx
        .plan
        .fixed_rates
        .iter()
        .map(|r| Some(*r))
        .chain(std::iter::once(None))
        .collect();
    let rounds = ctx.plan.rounds.min(3);
    // [program][load][round], rounds interleaved so drift hits all alike.
    let mut ns = vec![vec![Vec::new(); loads.len()]; programs.len()];
    for round in 0..rounds {
        eprintln!("floor round {}/{rounds}", round + 1);
        for (li, load) in loads.iter().enumerate() {
            for (pi, (_, prog)) in programs.iter().enumerate() {
                ns[pi][li].push(measure(ctx, &nginx, prog, &ids, *load)?.ns_per_run());
            }
        }
    }
    let tracing = TracingFloor::measure(ctx, &nginx, &programs[0].1, rounds)?;

    let load_name = |l: &Option<u64>| match l {
        Some(r) => format!("{r} req/s"),
        None => format!("saturation (wrk -t1 -c{WRK_CONNECTIONS})"),
    };
    let mut md = String::new();
    writeln!(
        md,
        "## The floor: what any eBPF program costs per run, by rate\n"
    )?;
    writeln!(
        md,
        "Method: no agent. Three programs that do no work, loaded as raw bytecode, each attached alone to \
`sys_enter_write` and `sys_enter_sendto` (the load generator's sends: one run per request), timed by the \
kernel (`kernel.bpf_stats_enabled=1`): `empty` is `r0 = 0; exit`; `one lookup` looks up the caller's pid/tgid \
in a 65,536-entry LRU hash map (a miss) and exits, what a syscall on a connection the agent ignores cost \
before its `IGNORED` cache; `one array lookup` looks it up in a 2,048-entry array instead (the shape of \
`IGNORED`; the verifier inlines array lookups), what such a syscall costs at least now. Same nginx, loads and cores as the overhead phase, {secs:.0} s per run, \
{rounds} interleaved rounds; median (min..max) ns per run. At low rates everything a run touches (its code, \
the map's buckets, their page-table entries) has left the caches between requests: the same cost the agent's \
programs pay (\"Where the BPF time goes\" above), and the same slowdown nginx's own work shows there (its \
CPU per request in the overhead table).\n",
        secs = run_secs(ctx),
    )?;
    write!(md, "| program |")?;
    for l in &loads {
        write!(md, " {} |", load_name(l))?;
    }
    writeln!(md)?;
    writeln!(md, "|---|{}", "---|".repeat(loads.len()))?;
    let mut headlines = Vec::new();
    for (pi, (name, _)) in programs.iter().enumerate() {
        write!(md, "| {name} |")?;
        for runs in &ns[pi] {
            write!(md, " {} |", Spread::of(runs).show(0))?;
        }
        writeln!(md)?;
    }
    if let Some(li) = loads.iter().position(|l| *l == Some(1_000)) {
        let empty = Spread::of(&ns[0][li]);
        let lookup = Spread::of(&ns[1][li]);
        headlines.push(Headline::new(
            "floor at 1000 req/s: ns per run of an empty program / of one map lookup (no agent)",
            format!("{} / {} ns", empty.show(0), lookup.show(0)),
            "",
            None,
        ));
        writeln!(
            md,
            "\nAt 1000 req/s the agent's programs run about 4 times per request (two syscalls on each side of \
the connection): 4 empty programs cost {:.0} ns per request, 4 single lookups {:.0} ns, before any of the \
work the agent does.",
            4.0 * empty.median,
            4.0 * lookup.median
        )?;
    }
    tracing.report(ctx, rounds, &mut md, &mut headlines)?;
    writeln!(md)?;
    Ok(Section {
        markdown: md,
        headlines,
    })
}
