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
//! Then an empty program on every hook of each capture path at once (the
//! syscall path: every tracepoint of `TRACEPOINTS`; the socket path: a
//! `tp_btf` program on each BTF tracepoint of `SOCKET_HOOKS`, `empty` on
//! its classic one): its BPF time per request at the fixed rates, and at
//! saturation the throughput and nginx CPU ratios without programs, with
//! the syscall path's and with the socket path's, interleaved: the floor
//! under the agent's own ratio on each path, from hooking it at all.
//!
//! Loaded with raw `bpf(2)` bytecode rather than through aya and an ELF
//! object: a few programs of 2 to 10 instructions, and xtask stays free of
//! the eBPF build.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burnwatch_common::programs::{BTF, CaptureMode, SOCKET_HOOKS, TRACEPOINTS};

use super::overhead;
use super::procs::{Nginx, WRK_CONNECTIONS, program_fd_stats, set_bpf_stats, sh};
use super::report::{Headline, Section, Spread};
use super::{
    Ctx, TENANTS_OVERHEAD, VMLINUX_BTF, agent_modes, arm_order, path_name, socket_path_note,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
/// `BPF_PROG_TYPE_TRACING` with expected attach type `BPF_TRACE_RAW_TP`:
/// a `tp_btf` program, typed by the tracepoint's BTF prototype.
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
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

/// `insns` as a classic tracepoint program (attached through perf events).
fn load_program(insns: &[Insn]) -> Result<OwnedFd> {
    load_typed(insns, BPF_PROG_TYPE_TRACEPOINT, 0, 0)
}

/// `insns` as a program of `prog_type`, with `expected_attach_type` and
/// `attach_btf_id` (a type id in vmlinux BTF; 0 for none).
fn load_typed(
    insns: &[Insn],
    prog_type: u32,
    expected_attach_type: u32,
    attach_btf_id: u32,
) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt; insns; license; log_level, log_size; log_buf;
    // (kern_version, prog_flags; prog_name[16]); prog_ifindex,
    // expected_attach_type @68; ...; line_info_cnt, attach_btf_id @108
    // (attach_btf_obj_fd @112 stays 0: vmlinux).
    attr[0] = u64::from(prog_type) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    attr[8] = u64::from(expected_attach_type) << 32;
    attr[13] = u64::from(attach_btf_id) << 32;
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "loading a floor program: {e}; verifier: {}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}

/// The BTF type ids of typedefs `btf_trace_<name>` (what a `tp_btf`
/// program on tracepoint `name` is verified against), in `names`' order.
///
/// From `bpftool btf dump` (Debian's bpftool, which `cargo xtask setup`
/// installs) rather than a parser of the BTF blob here: walking the type
/// section means knowing every kind's trailing record, which new kernels
/// extend, and the agent's own reader is not a dependency of xtask.
fn btf_trace_ids(names: &[&str]) -> Result<Vec<u32>> {
    let dump = sh("bpftool", &["btf", "dump", "file", VMLINUX_BTF])
        .context("bpftool btf dump (install Debian's bpftool)")?;
    let ids = typedef_ids(&dump);
    names
        .iter()
        .map(|name| {
            let typedef = format!("btf_trace_{name}");
            ids.get(typedef.as_str())
                .copied()
                .with_context(|| format!("no typedef {typedef} in {VMLINUX_BTF}"))
        })
        .collect()
}

/// Every `TYPEDEF` of a `bpftool btf dump` (lines such as `[38218] TYPEDEF
/// 'btf_trace_sock_recv_length' type_id=38215`), by name.
fn typedef_ids(dump: &str) -> std::collections::HashMap<&str, u32> {
    dump.lines()
        .filter_map(|l| {
            let (id, rest) = l.strip_prefix('[')?.split_once(']')?;
            let (name, _) = rest.strip_prefix(" TYPEDEF '")?.split_once('\'')?;
            Some((name, id.parse().ok()?))
        })
        .collect()
}

/// `prog` (a `tp_btf` program) attached to the tracepoint it was verified
/// for, until the returned link is closed: `BPF_RAW_TRACEPOINT_OPEN` with
/// no name (the tracepoint comes from the program's `attach_btf_id`).
fn raw_tracepoint_open(prog: &OwnedFd) -> Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // name (0 for tp_btf); prog_fd.
    attr[1] = u64::from(prog.as_raw_fd() as u32);
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr).context("BPF_RAW_TRACEPOINT_OPEN of a tp_btf program")
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

/// `prog` attached to each tracepoint while this lives (perf events for
/// classic tracepoints, links for BTF ones).
struct Attached {
    _events: Vec<OwnedFd>,
}

impl Attached {
    /// Adds links or events held for as long as this.
    fn hold(&mut self, fds: impl IntoIterator<Item = OwnedFd>) {
        self._events.extend(fds);
    }
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
    let _attached = attach(prog, ids)?;
    timed_run(ctx, nginx, std::slice::from_ref(prog), load)
}

/// One run of `load` (None: wrk at saturation), with what the kernel timed
/// of `progs` (attached by the caller), summed, over it.
fn timed_run(ctx: &Ctx, nginx: &Nginx, progs: &[OwnedFd], load: Option<u64>) -> Result<Timed> {
    let secs = run_secs(ctx);
    let totals = || -> Result<(u64, u64)> {
        progs.iter().try_fold((0, 0), |(ns, runs), p| {
            let (n, r) = program_fd_stats(p)?;
            Ok((ns + n, runs + r))
        })
    };
    let (t0, r0) = totals()?;
    let requests = match load {
        None => ctx.clients.wrk(nginx.port, secs)?.requests,
        Some(rate) => {
            ctx.clients
                .load(nginx.port, rate, secs, TENANTS_OVERHEAD, "/")?
                .requests
        }
    };
    let (t1, r1) = totals()?;
    if r1 <= r0 {
        bail!("the floor program never ran (is kernel.bpf_stats_enabled on?)");
    }
    Ok(Timed {
        ns: t1 - t0,
        runs: r1 - r0,
        requests: requests.max(1),
    })
}

/// An empty program on every hook of one capture path at once, no agent:
/// what hooking that path costs before any of the agent's work.
struct PathFloor {
    mode: CaptureMode,
    /// `empty` as a classic tracepoint program, for the path's classic
    /// tracepoints (first in `progs`), and one empty `tp_btf` program per
    /// BTF tracepoint (each is verified against its own tracepoint's
    /// prototype, so one per hook).
    progs: Vec<OwnedFd>,
    /// Perf event ids of the classic tracepoints.
    ids: Vec<u64>,
    /// Per fixed rate, per round: BPF ns per request and runs per request.
    bpf_ns_per_request: Vec<Vec<f64>>,
    runs_per_request: Vec<Vec<f64>>,
    /// Per saturation round: req/s with / without (that round's run).
    throughput_ratio: Vec<f64>,
    /// Per saturation round: nginx's worker CPU ns per request, with.
    nginx_ns_with: Vec<f64>,
}

impl PathFloor {
    /// Loads the path's empty programs (`rates`: how many fixed rates the
    /// results are kept for).
    fn new(mode: CaptureMode, rates: usize) -> Result<PathFloor> {
        let hooks = mode.hooks();
        let ids = tracepoint_ids(
            hooks
                .iter()
                .filter(|h| h.0 != BTF)
                .map(|&(category, name, _)| (category, name)),
        )?;
        let btf_names: Vec<&str> = hooks.iter().filter(|h| h.0 == BTF).map(|h| h.1).collect();
        let mut progs = vec![load_program(&empty_program())?];
        for (name, id) in btf_names.iter().zip(btf_trace_ids(&btf_names)?) {
            progs.push(
                load_typed(
                    &empty_program(),
                    BPF_PROG_TYPE_TRACING,
                    BPF_TRACE_RAW_TP,
                    id,
                )
                .with_context(|| format!("tp_btf/{name}"))?,
            );
        }
        Ok(PathFloor {
            mode,
            progs,
            ids,
            bpf_ns_per_request: vec![Vec::new(); rates],
            runs_per_request: vec![Vec::new(); rates],
            throughput_ratio: Vec::new(),
            nginx_ns_with: Vec::new(),
        })
    }

    /// Every program on its hook, while the result lives.
    fn attach(&self) -> Result<Attached> {
        let mut attached = attach(&self.progs[0], &self.ids)?;
        for prog in &self.progs[1..] {
            attached.hold([raw_tracepoint_open(prog)?]);
        }
        Ok(attached)
    }
}

/// The floor of each capture path (the socket path where this kernel has
/// it, and the syscall path), measured in the same interleaved rounds.
struct TracingFloor {
    paths: Vec<PathFloor>,
    /// Per saturation round: nginx's worker CPU ns per request without
    /// any program.
    nginx_ns_without: Vec<f64>,
}

impl TracingFloor {
    /// `rounds` runs at each fixed rate (timed) with each path's programs,
    /// then the overhead phase's number of saturation rounds (untimed),
    /// each without programs then with each path's, the paths' order
    /// alternating between rounds.
    fn measure(ctx: &Ctx, nginx: &Nginx, rounds: usize) -> Result<TracingFloor> {
        let rates = &ctx.plan.fixed_rates;
        let mut paths = agent_modes()
            .into_iter()
            .map(|mode| PathFloor::new(mode, rates.len()))
            .collect::<Result<Vec<_>>>()?;
        for round in 0..rounds {
            eprintln!(
                "floor: every hook of each capture path, round {}/{rounds}",
                round + 1
            );
            for (ri, &rate) in rates.iter().enumerate() {
                for pi in arm_order(paths.len(), round) {
                    let path = &mut paths[pi];
                    let attached = path.attach()?;
                    let t = timed_run(ctx, nginx, &path.progs, Some(rate));
                    drop(attached);
                    let t = t?;
                    let requests = t.requests as f64;
                    path.bpf_ns_per_request[ri].push(t.ns as f64 / requests);
                    path.runs_per_request[ri].push(t.runs as f64 / requests);
                }
            }
        }
        let mut nginx_ns_without = Vec::new();
        // Throughput as users run: the kernel's per-run timing off (it
        // costs nginx's core two clock reads per run).
        set_bpf_stats(false)?;
        let saturation = (|| {
            for round in 0..ctx.plan.rounds {
                eprintln!(
                    "floor: saturation without programs and with each path's empty programs, round {}/{}",
                    round + 1,
                    ctx.plan.rounds
                );
                let without = overhead::drive(ctx, nginx, None)?;
                nginx_ns_without.push(without.server_ns_per_req);
                for pi in arm_order(paths.len(), round) {
                    let path = &mut paths[pi];
                    let _attached = path.attach()?;
                    let with = overhead::drive(ctx, nginx, None)?;
                    path.throughput_ratio.push(with.rps / without.rps);
                    path.nginx_ns_with.push(with.server_ns_per_req);
                }
            }
            Ok::<_, anyhow::Error>(())
        })();
        set_bpf_stats(true)?;
        saturation?;
        Ok(TracingFloor {
            paths,
            nginx_ns_without,
        })
    }

    /// Appends its subsection to `md` and its summary lines to `headlines`.
    fn report(
        &self,
        ctx: &Ctx,
        rounds: usize,
        md: &mut String,
        headlines: &mut Vec<Headline>,
    ) -> Result<()> {
        let btf_hooks: Vec<String> = SOCKET_HOOKS
            .iter()
            .filter(|h| h.0 == BTF)
            .map(|h| format!("`{}`", h.1))
            .collect();
        writeln!(
            md,
            "\n### An empty program on every hook of each capture path\n\n\
Method: no agent. Syscall path: the `empty` program attached at once to each of the agent's {n} syscall-path \
tracepoints (`burnwatch_common::programs::TRACEPOINTS`: the read and write syscalls, accept, connect, close \
and the TCP state changes), so every syscall the agent would trace runs a program that does nothing. Socket \
path: an empty `tp_btf` program (`BPF_PROG_TYPE_TRACING`, verified against the tracepoint's BTF prototype \
`btf_trace_<name>`, attached with `BPF_RAW_TRACEPOINT_OPEN`) on each of its BTF tracepoints ({btf}) and \
`empty` on `tcp:tcp_send_reset` (`SOCKET_HOOKS`), so every socket send and receive of the node runs one. At \
the fixed rates ({rounds} rounds of {secs:.0} s, the paths interleaved): BPF time per request, the least the \
agent's BPF time per request can be on that path. At saturation ({sat} interleaved rounds of {run:.0} s, wrk \
without programs, then with each path's (their order alternating between rounds), \
`kernel.bpf_stats_enabled=0` as users run): the throughput ratio and nginx's CPU per request, each paired \
with its round's run without programs (nginx's CPU is its worker's time on CPU, which includes the hooks' \
own cost outside the programs: attaching any syscall tracepoint puts every syscall of every process on the \
kernel's traced, slower path, which BPF time does not show; a BTF tracepoint costs only the calls that reach \
it), the most the agent's ratio can be on that path.\n",
            n = TRACEPOINTS.len(),
            btf = btf_hooks.join(", "),
            secs = run_secs(ctx),
            sat = ctx.plan.rounds,
            run = ctx.plan.run_secs,
        )?;
        md.push_str(socket_path_note());
        write!(md, "| load |")?;
        for path in &self.paths {
            let name = path_name(path.mode);
            write!(
                md,
                " {name}: BPF ns per request | {name}: program runs per request |"
            )?;
        }
        writeln!(md, "\n|---|{}", "---|---|".repeat(self.paths.len()))?;
        for (ri, rate) in ctx.plan.fixed_rates.iter().enumerate() {
            write!(md, "| {rate} req/s |")?;
            for path in &self.paths {
                write!(
                    md,
                    " {} | {} |",
                    Spread::of(&path.bpf_ns_per_request[ri]).show(0),
                    Spread::of(&path.runs_per_request[ri]).show(1)
                )?;
            }
            writeln!(md)?;
        }
        writeln!(
            md,
            "\nAt saturation:\n\n| programs | throughput ratio with / without | nginx CPU ns per request | nginx CPU ratio without / with |\n|---|---|---|---|"
        )?;
        writeln!(
            md,
            "| none | 1 | {} | 1 |",
            Spread::of(&self.nginx_ns_without).show(0)
        )?;
        for path in &self.paths {
            let name = path_name(path.mode);
            let ratio = Spread::of(&path.throughput_ratio);
            let cpu_ratio: Vec<f64> = self
                .nginx_ns_without
                .iter()
                .zip(&path.nginx_ns_with)
                .map(|(without, with)| without / with)
                .collect();
            let cpu_ratio = Spread::of(&cpu_ratio);
            writeln!(
                md,
                "| empty, every hook of the {name} | {} | {} | {} |",
                ratio.show(3),
                Spread::of(&path.nginx_ns_with).show(0),
                cpu_ratio.show(3),
            )?;
            headlines.push(Headline::new(
                &format!(
                    "floor of the throughput ratio and of nginx's CPU ratio (saturation): an empty program on each of the agent's hooks, no agent; {name}"
                ),
                format!("{}; nginx CPU {}", ratio.show(3), cpu_ratio.show(3)),
                "",
                None,
            ));
        }
        if let Some(ri) = ctx.plan.fixed_rates.iter().position(|&r| r == 1_000) {
            for path in &self.paths {
                headlines.push(Headline::new(
                    &format!(
                        "floor of BPF time per request (1000 req/s): the same empty programs; {}",
                        path_name(path.mode)
                    ),
                    format!(
                        "{} ns in {} runs",
                        Spread::of(&path.bpf_ns_per_request[ri]).show(0),
                        Spread::of(&path.runs_per_request[ri]).show(1)
                    ),
                    "",
                    None,
                ));
            }
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
    let tracing = TracingFloor::measure(ctx, &nginx, rounds)?;

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

#[cfg(test)]
mod tests {
    /// The typedef ids come from bpftool's dump lines, and only typedefs.
    #[test]
    fn typedef_ids_from_a_bpftool_dump() {
        let dump = "[38204] TYPEDEF 'btf_trace_inet_sock_set_state' type_id=38205\n\
[38205] PTR '(anon)' type_id=38206\n\
[38218] TYPEDEF 'btf_trace_sock_recv_length' type_id=38215\n\
[38219] STRUCT 'btf_trace_x' size=8 vlen=1\n\
\t'a' type_id=1 bits_offset=0\n";
        let ids = super::typedef_ids(dump);
        assert_eq!(ids.get("btf_trace_sock_recv_length"), Some(&38218));
        assert_eq!(ids.get("btf_trace_inet_sock_set_state"), Some(&38204));
        assert_eq!(ids.get("btf_trace_x"), None);
        assert_eq!(ids.len(), 2);
    }
}
