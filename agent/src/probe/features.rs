//! What this kernel lets the agent do, measured at start rather than read
//! off a version number: distribution kernels backport, strip configs and
//! refuse things for their own reasons (this project's machines run a 6.18
//! that loads `tp_btf` programs but refuses fentry with EPERM, has no
//! kprobes, and on which bpftool calls the `tracing` program type missing).
//!
//! Each fact is the kernel's own answer to the smallest request that needs
//! it: a program of a few hand-assembled instructions loaded with
//! `bpf(BPF_PROG_LOAD)` and, where attaching is the question, attached and
//! detached at once. Nothing outlives [`probe`]: every descriptor is owned
//! and closing a link detaches its program.
//!
//! Written against the raw syscall because aya 0.14 has no way to load a
//! `tp_btf` program outside an object file, and its helper probe refuses
//! the `tracing` program type.

// Until preflight calls `probe()` (the agent is a binary: unused items are
// dead code). Remove once it does.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use aya_obj::generated::{
    BPF_ALU64, BPF_CALL, BPF_DW, BPF_EXIT, BPF_F_NO_PREALLOC, BPF_IMM, BPF_JEQ, BPF_JMP, BPF_K,
    BPF_LD, BPF_LDX, BPF_MEM, BPF_MOV, BPF_PSEUDO_FUNC, BPF_PSEUDO_MAP_FD,
    BPF_SK_STORAGE_GET_F_CREATE, bpf_attach_type, bpf_attr, bpf_cmd, bpf_func_id, bpf_func_info,
    bpf_insn, bpf_map_type, bpf_prog_type,
};

use super::btf::{Btf, TypeKind};
use super::preflight::BTF_PATH;

/// The tracepoints the socket-layer capture path hooks (kernel 6.4+).
pub const SOCKET_TRACEPOINTS: [&str; 2] = ["sock_recv_length", "sock_send_length"];
/// A tracepoint whose first argument is also a `struct sock *`, older than
/// the socket ones: `tp_btf` and sk storage are measured on it when the
/// socket tracepoints are missing, so an older kernel still says whether
/// the program type works.
const FALLBACK_TRACEPOINT: &str = "tcp_destroy_sock";
/// fentry's target: any traceable kernel function would do; this one is
/// on the send path, where an fentry fast path would hook.
const FENTRY_TARGET: &str = "tcp_sendmsg";

const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// The kernel's "not supported" (internal, but returned to userspace by
/// BPF trampolines that cannot attach); libc has no name for it.
const ENOTSUPP: i32 = 524;

/// One measured fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub available: bool,
    /// What was found, or why not (the errno's name, the verifier's
    /// complaint); empty when a plain "yes" says it all.
    pub detail: String,
    /// The errno of the refused call, when a call was refused.
    pub errno: Option<i32>,
}

impl Fact {
    pub fn yes(detail: impl Into<String>) -> Fact {
        Fact {
            available: true,
            detail: detail.into(),
            errno: None,
        }
    }

    pub fn no(detail: impl Into<String>) -> Fact {
        Fact {
            available: false,
            detail: detail.into(),
            errno: None,
        }
    }

    fn refused(step: &str, r: &Refused) -> Fact {
        Fact {
            available: false,
            detail: format!("{step} refused: {r}"),
            errno: r.error.raw_os_error(),
        }
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.available { "yes" } else { "no" })?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Everything [`probe`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeatures {
    /// A BTF-typed raw tracepoint program (`tracing` type, raw tracepoint
    /// attach) on `sock_recv_length` loads and attaches.
    pub tp_btf: Fact,
    /// Such a program may call `bpf_sk_storage_get(.., sk, NULL, F_CREATE)`
    /// on the tracepoint's `sk`.
    pub sk_storage_from_tp_btf: Fact,
    /// An fentry program on a kernel function loads and attaches.
    pub fentry: Fact,
    /// kprobes can be created (`kprobe_events` or the kprobe perf PMU).
    pub kprobes: Fact,
    /// `sock:sock_recv_length` and `sock:sock_send_length` exist.
    pub socket_tracepoints: Fact,
    /// A tracepoint program may call `bpf_loop` with a callback (the
    /// parser takes one step per iteration).
    pub bpf_loop: Fact,
}

impl KernelFeatures {
    /// One plain line for the agent's start-up log.
    pub fn log_line(&self) -> String {
        format!(
            "kernel features: tp_btf {}; sk_storage from tp_btf {}; fentry {}; kprobes {}; \
             socket tracepoints {}; bpf_loop {}",
            self.tp_btf,
            self.sk_storage_from_tp_btf,
            self.fentry,
            self.kprobes,
            self.socket_tracepoints,
            self.bpf_loop,
        )
    }

    /// Whether the socket-layer capture (`tp_btf` on the socket
    /// tracepoints, per-socket state in sk storage) can run here.
    pub fn capture_path_available(&self) -> bool {
        self.tp_btf.available
            && self.sk_storage_from_tp_btf.available
            && self.socket_tracepoints.available
    }
}

/// Measures every fact on the running kernel. Needs the privileges the
/// agent runs with (CAP_BPF and CAP_PERFMON, or root); without them the
/// loads are refused and the facts say so. Takes tens of milliseconds,
/// most of it reading the kernel's BTF.
pub fn probe() -> KernelFeatures {
    let btf = Btf::from_file(Path::new(BTF_PATH)).map_err(|e| format!("no kernel BTF: {e:#}"));
    let bpf_loop = bpf_loop();
    let kprobes = kprobes();
    let btf = match btf {
        Ok(btf) => btf,
        Err(why) => {
            return KernelFeatures {
                tp_btf: Fact::no(why.clone()),
                sk_storage_from_tp_btf: Fact::no(why.clone()),
                fentry: Fact::no(why.clone()),
                kprobes,
                socket_tracepoints: Fact::no(why),
                bpf_loop,
            };
        }
    };
    let socket_tracepoints = socket_tracepoints(&btf);
    // The capture's own tracepoint when there is one.
    let target = [SOCKET_TRACEPOINTS[0], FALLBACK_TRACEPOINT]
        .into_iter()
        .find_map(|tp| {
            Some((
                tp,
                btf.type_id(&format!("btf_trace_{tp}"), TypeKind::Typedef)?,
            ))
        });
    let (tp_btf, sk_storage_from_tp_btf) = match target {
        Some((name, id)) => {
            let on = |fact: Fact| -> Fact {
                if name == SOCKET_TRACEPOINTS[0] {
                    return fact;
                }
                let detail = if fact.detail.is_empty() {
                    format!("on {name}")
                } else {
                    format!("on {name}: {}", fact.detail)
                };
                Fact { detail, ..fact }
            };
            (on(tp_btf(id)), on(sk_storage_from_tp_btf(id)))
        }
        None => {
            let why = format!(
                "no btf_trace_{} or btf_trace_{FALLBACK_TRACEPOINT} in kernel BTF",
                SOCKET_TRACEPOINTS[0]
            );
            (Fact::no(why.clone()), Fact::no(why))
        }
    };
    let fentry = match btf.type_id(FENTRY_TARGET, TypeKind::Func) {
        Some(id) => fentry(id),
        None => Fact::no(format!("no function {FENTRY_TARGET} in kernel BTF")),
    };
    KernelFeatures {
        tp_btf,
        sk_storage_from_tp_btf,
        fentry,
        kprobes,
        socket_tracepoints,
        bpf_loop,
    }
}

fn socket_tracepoints(btf: &Btf) -> Fact {
    let missing: Vec<&str> = SOCKET_TRACEPOINTS
        .into_iter()
        .filter(|tp| {
            btf.type_id(&format!("btf_trace_{tp}"), TypeKind::Typedef)
                .is_none()
        })
        .collect();
    if missing.is_empty() {
        Fact::yes(SOCKET_TRACEPOINTS.join(", "))
    } else {
        Fact::no(format!("missing {} (kernel 6.4+)", missing.join(", ")))
    }
}

/// Loads `r0 = 0; exit` as a `tp_btf` program and attaches it. It runs on
/// every socket read while attached: a few microseconds here.
fn tp_btf(btf_id: u32) -> Fact {
    load_and_attach(bpf_attach_type::BPF_TRACE_RAW_TP, btf_id)
}

/// Loads `r0 = 0; exit` as a tracing program of `attach_type` on the BTF
/// type `btf_id`, and attaches it (detached again at once).
fn load_and_attach(attach_type: bpf_attach_type, btf_id: u32) -> Fact {
    let prog = match load(&Program {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
        expected_attach_type: Some(attach_type),
        attach_btf_id: btf_id,
        insns: &return_zero(),
        funcs: None,
    }) {
        Ok(fd) => fd,
        Err(r) => return Fact::refused("load", &r),
    };
    match attach_btf(&prog) {
        Ok(_link) => Fact::yes(""),
        Err(e) => Fact::refused("attach", &Refused::new(e)),
    }
}

/// Loads a `tp_btf` program that gets (creating it) the sk storage of its
/// `sk` argument. The verifier accepting it is the fact; nothing attaches.
fn sk_storage_from_tp_btf(btf_id: u32) -> Fact {
    let map = match sk_storage_map() {
        Ok(fd) => fd,
        Err((step, e)) => return Fact::refused(step, &Refused::new(e)),
    };
    match load(&Program {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
        expected_attach_type: Some(bpf_attach_type::BPF_TRACE_RAW_TP),
        attach_btf_id: btf_id,
        insns: &sk_storage_insns(&map),
        funcs: None,
    }) {
        Ok(_prog) => Fact::yes(""),
        Err(r) => Fact::refused("load", &r),
    }
}

/// `bpf_sk_storage_get(map, ctx[0], NULL, F_CREATE)` unless `ctx[0]` is NULL.
fn sk_storage_insns(map: &OwnedFd) -> [bpf_insn; 9] {
    let [map_lo, map_hi] = ld_imm64(1, BPF_PSEUDO_MAP_FD as u8, map.as_raw_fd());
    [
        // A tp_btf context is the tracepoint's arguments, a u64 each; the
        // first is `struct sock *sk`.
        ldx_dw(2, 1, 0),
        // The verifier may type the argument as maybe-NULL: to `r0 = 0`.
        jeq_imm(2, 0, 5),
        map_lo,
        map_hi,
        mov64_imm(3, 0), // no initial value
        mov64_imm(4, BPF_SK_STORAGE_GET_F_CREATE as i32),
        call(bpf_func_id::BPF_FUNC_sk_storage_get),
        mov64_imm(0, 0),
        exit(),
    ]
}

/// An sk storage map: the kernel requires BTF for its key (a 32-bit int)
/// and value, so a two-type BTF blob is loaded first.
fn sk_storage_map() -> Result<OwnedFd, (&'static str, io::Error)> {
    let btf = load_btf(&int_btf()).map_err(|e| ("BTF load", e))?;
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the union's MAP_CREATE member.
    let u = unsafe { &mut attr.__bindgen_anon_1 };
    u.map_type = bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as u32;
    u.key_size = 4;
    u.value_size = 8;
    u.max_entries = 0; // sized by the sockets, not up front
    u.map_flags = BPF_F_NO_PREALLOC;
    u.btf_fd = btf.as_raw_fd() as u32;
    u.btf_key_type_id = 1;
    u.btf_value_type_id = 2;
    bpf_fd(bpf_cmd::BPF_MAP_CREATE, &mut attr).map_err(|e| ("map create", e))
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_FUNC: u32 = 12;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_INT_SIGNED: u32 = 1;

/// A BTF blob of two types: 1 `int` (4 bytes, signed), 2 `u64`.
fn int_btf() -> Vec<u8> {
    btf_blob(
        &[
            1, // "int"
            BTF_KIND_INT << 24,
            4,
            (BTF_INT_SIGNED << 24) | 32,
            5, // "u64"
            BTF_KIND_INT << 24,
            8,
            64,
        ],
        b"\0int\0u64\0",
    )
}

/// The BTF of [`bpf_loop`]'s program: 1 `int`, 2 `int (void)`, 3 the
/// function `main` and 4 the function `cb`, both static, of that type.
fn loop_btf() -> Vec<u8> {
    btf_blob(
        &[
            1, // "int"
            BTF_KIND_INT << 24,
            4,
            (BTF_INT_SIGNED << 24) | 32,
            0,
            BTF_KIND_FUNC_PROTO << 24,
            1,
            5, // "main"
            BTF_KIND_FUNC << 24,
            2,
            10, // "cb"
            BTF_KIND_FUNC << 24,
            2,
        ],
        b"\0int\0main\0cb\0",
    )
}

/// A BTF blob: the header, then `types` (as u32 words) and `strings`.
fn btf_blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
    let types_len = (types.len() * 4) as u32;
    let mut blob = Vec::new();
    blob.extend_from_slice(&0xeb9f_u16.to_le_bytes()); // magic
    blob.extend_from_slice(&[1, 0]); // version, flags
    for word in [
        24, // header length
        0,  // type section offset
        types_len,
        types_len, // string section offset
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    for word in types {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob.extend_from_slice(strings);
    blob
}

/// Loads `r0 = 0; exit` as fentry on `btf_id` and attaches it. The
/// trampoline, and so the refusal, may come at either step.
fn fentry(btf_id: u32) -> Fact {
    load_and_attach(bpf_attach_type::BPF_TRACE_FENTRY, btf_id)
}

/// Whether kprobes can be created: through tracefs's `kprobe_events`
/// (CONFIG_KPROBE_EVENTS) or the perf kprobe PMU (what aya tries first).
fn kprobes() -> Fact {
    let tracefs = TRACEFS_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("available_events").exists());
    let events = tracefs.is_some_and(|d| d.join("kprobe_events").exists());
    let pmu = Path::new(KPROBE_PMU).exists();
    match (events, pmu) {
        (true, true) => Fact::yes("kprobe_events, kprobe PMU"),
        (true, false) => Fact::yes("kprobe_events"),
        (false, true) => Fact::yes("kprobe PMU"),
        (false, false) if tracefs.is_none() => {
            Fact::no("no kprobe PMU; kprobe_events unknown: tracefs not mounted")
        }
        (false, false) => Fact::no("no kprobe_events, no kprobe PMU"),
    }
}

/// Loads a tracepoint program (the agent's program type) that runs
/// `bpf_loop(1, callback, NULL, 0)`: the helper is known and a callback
/// subprogram accepted, as the parser needs. The kernel takes a function
/// reference only from a program that has BTF for its functions.
fn bpf_loop() -> Fact {
    let btf = match load_btf(&loop_btf()) {
        Ok(fd) => fd,
        Err(e) => return Fact::refused("BTF load", &Refused::new(e)),
    };
    let func_info = [
        bpf_func_info {
            insn_off: 0,
            type_id: 3,
        },
        bpf_func_info {
            insn_off: 8,
            type_id: 4,
        },
    ];
    // A function reference counts from the instruction after the load
    // (index 1): the callback is at 8.
    let [cb_lo, cb_hi] = ld_imm64(2, BPF_PSEUDO_FUNC as u8, 8 - 2);
    let insns = [
        mov64_imm(1, 1),
        cb_lo,
        cb_hi,
        mov64_imm(3, 0),
        mov64_imm(4, 0),
        call(bpf_func_id::BPF_FUNC_loop),
        mov64_imm(0, 0),
        exit(),
        // The callback: 0 = go on (once is all there is).
        mov64_imm(0, 0),
        exit(),
    ];
    match load(&Program {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT,
        expected_attach_type: None,
        attach_btf_id: 0,
        insns: &insns,
        funcs: Some((&btf, &func_info)),
    }) {
        Ok(_prog) => Fact::yes(""),
        Err(r) => Fact::refused("load", &r),
    }
}

struct Program<'a> {
    prog_type: bpf_prog_type,
    expected_attach_type: Option<bpf_attach_type>,
    /// A type id in vmlinux BTF; 0 for none.
    attach_btf_id: u32,
    insns: &'a [bpf_insn],
    /// The program's BTF and where its functions start, for programs with
    /// subprograms.
    funcs: Option<(&'a OwnedFd, &'a [bpf_func_info])>,
}

/// A refused call: the errno and, for a load, what the verifier said.
struct Refused {
    error: io::Error,
    verifier: Option<String>,
}

impl Refused {
    fn new(error: io::Error) -> Refused {
        Refused {
            error,
            verifier: None,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&errno_name(&self.error))?;
        if let Some(v) = &self.verifier {
            write!(f, ", verifier: {v}")?;
        }
        Ok(())
    }
}

const LICENSE: &[u8] = b"GPL\0";

/// Loads `p`; on a refusal loads it again with the verifier's log (only
/// then: a successful load with a log too small for it fails with ENOSPC).
fn load(p: &Program) -> Result<OwnedFd, Refused> {
    let attempt = |log: Option<&mut [u8]>| {
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing plain integers into the union's PROG_LOAD member.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        u.prog_type = p.prog_type as u32;
        if let Some(t) = p.expected_attach_type {
            u.expected_attach_type = t as u32;
        }
        u.attach_btf_id = p.attach_btf_id;
        u.insns = p.insns.as_ptr() as u64;
        u.insn_cnt = p.insns.len() as u32;
        u.license = LICENSE.as_ptr() as u64;
        for (dst, src) in u.prog_name.iter_mut().zip(b"bw_feature_probe") {
            *dst = *src as libc::c_char;
        }
        *u.prog_name.last_mut().expect("16 bytes") = 0;
        if let Some((btf, funcs)) = p.funcs {
            u.prog_btf_fd = btf.as_raw_fd() as u32;
            u.func_info = funcs.as_ptr() as u64;
            u.func_info_cnt = funcs.len() as u32;
            u.func_info_rec_size = std::mem::size_of::<bpf_func_info>() as u32;
        }
        if let Some(log) = log {
            u.log_level = 1;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = log.len() as u32;
        }
        bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    let error = match attempt(None) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; 64 * 1024];
    // The second attempt's result is the same refusal (or, should the
    // kernel change its mind, a descriptor to drop): only its log counts.
    let _ = attempt(Some(&mut log));
    let text =
        String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
    Err(Refused {
        error,
        verifier: verifier_reason(&text),
    })
}

/// Attaches a `tracing` program to its BTF target (name NULL: the target
/// is the program's `attach_btf_id`). Closing the link detaches it.
fn attach_btf(prog: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.raw_tracepoint.name = 0;
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

fn load_btf(blob: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the union's BTF_LOAD member.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = blob.as_ptr() as u64;
    u.btf_size = blob.len() as u32;
    bpf_fd(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

/// A `bpf(2)` command that returns a new descriptor.
pub(super) fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised bpf_attr of the size passed;
    // every pointer in it refers to memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// The verifier's complaint: the last line before its statistics.
fn verifier_reason(log: &str) -> Option<String> {
    log.lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .map(str::to_string)
}

/// The errno's symbolic name, as kernel sources and docs spell it.
fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ESRCH) => "ESRCH",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EFAULT) => "EFAULT",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(ENOTSUPP) => "ENOTSUPP",
        Some(n) => return format!("errno {n}"),
        None => return e.to_string(),
    };
    name.to_string()
}

fn insn(code: u32, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    bpf_insn {
        code: code as u8,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
        off,
        imm,
    }
}

fn mov64_imm(dst: u8, imm: i32) -> bpf_insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
}

fn ldx_dw(dst: u8, src: u8, off: i16) -> bpf_insn {
    insn(BPF_LDX | BPF_MEM | BPF_DW, dst, src, off, 0)
}

/// `if dst == imm goto +off`
fn jeq_imm(dst: u8, imm: i32, off: i16) -> bpf_insn {
    insn(BPF_JMP | BPF_JEQ | BPF_K, dst, 0, off, imm)
}

/// The two halves of a 64-bit load; `src` says what `imm` means (a map
/// descriptor, a function).
fn ld_imm64(dst: u8, src: u8, imm: i32) -> [bpf_insn; 2] {
    [
        insn(BPF_LD | BPF_DW | BPF_IMM, dst, src, 0, imm),
        insn(0, 0, 0, 0, 0),
    ]
}

fn call(helper: bpf_func_id) -> bpf_insn {
    insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper as i32)
}

fn exit() -> bpf_insn {
    insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}

fn return_zero() -> [bpf_insn; 2] {
    [mov64_imm(0, 0), exit()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features_of_this_machine() -> KernelFeatures {
        KernelFeatures {
            tp_btf: Fact::yes(""),
            sk_storage_from_tp_btf: Fact::yes(""),
            fentry: Fact {
                errno: Some(libc::EPERM),
                ..Fact::no("load refused: EPERM")
            },
            kprobes: Fact::no("no kprobe_events, no kprobe PMU"),
            socket_tracepoints: Fact::yes("sock_recv_length, sock_send_length"),
            bpf_loop: Fact::yes(""),
        }
    }

    #[test]
    fn features_log_line_is_one_plain_line() {
        let line = features_of_this_machine().log_line();
        assert_eq!(
            line,
            "kernel features: tp_btf yes; sk_storage from tp_btf yes; fentry no (load \
             refused: EPERM); kprobes no (no kprobe_events, no kprobe PMU); socket tracepoints \
             yes (sock_recv_length, sock_send_length); bpf_loop yes"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn features_capture_path_needs_tp_btf_sk_storage_and_the_tracepoints() {
        let mut f = features_of_this_machine();
        assert!(
            f.capture_path_available(),
            "fentry and kprobes are not needed"
        );
        f.socket_tracepoints = Fact::no("missing sock_recv_length, sock_send_length (kernel 6.4+)");
        assert!(!f.capture_path_available());
        let mut f = features_of_this_machine();
        f.sk_storage_from_tp_btf = Fact::no("load refused: EACCES");
        assert!(!f.capture_path_available());
        let mut f = features_of_this_machine();
        f.tp_btf = Fact::no("attach refused: ENOTSUPP");
        assert!(!f.capture_path_available());
    }

    #[test]
    fn features_refusals_name_the_errno_and_the_verifier() {
        let r = Refused {
            error: io::Error::from_raw_os_error(libc::EACCES),
            verifier: verifier_reason(
                "0: (85) call unknown#181\ninvalid func unknown#181\n\
                 processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 \
                 peak_states 0 mark_read 0\n",
            ),
        };
        let f = Fact::refused("load", &r);
        assert_eq!(
            f.to_string(),
            "no (load refused: EACCES, verifier: invalid func unknown#181)"
        );
        assert_eq!(f.errno, Some(libc::EACCES));
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(ENOTSUPP)),
            "ENOTSUPP"
        );
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(4095)),
            "errno 4095"
        );
        assert_eq!(verifier_reason(""), None);
    }

    #[test]
    fn features_probe_btf_blobs_parse() {
        // The reader the agent uses for vmlinux: the blobs are well formed
        // and the func_info ids point at the functions.
        assert!(Btf::parse(&int_btf()).is_ok());
        let btf = Btf::parse(&loop_btf()).unwrap();
        assert_eq!(btf.type_id("main", TypeKind::Func), Some(3));
        assert_eq!(btf.type_id("cb", TypeKind::Func), Some(4));
    }

    /// The sk storage probe can say no: the same instructions in an
    /// untyped raw tracepoint program (whose `sk` the verifier cannot
    /// type) are refused, on any kernel.
    #[test]
    fn features_sk_storage_probe_is_refused_without_btf_types() {
        let Ok(map) = sk_storage_map() else {
            println!("no sk storage map here (not root, or before 5.2): nothing to compare");
            return;
        };
        let refused = load(&Program {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT,
            expected_attach_type: None,
            attach_btf_id: 0,
            insns: &sk_storage_insns(&map),
            funcs: None,
        })
        .expect_err("a raw_tp program may not call bpf_sk_storage_get");
        println!("raw_tp: {refused}");
        assert_eq!(refused.error.raw_os_error(), Some(libc::EINVAL));
    }

    /// Runs every probe on this kernel. The facts the capture path needs
    /// are asserted where the kernel has the socket tracepoints (6.4+);
    /// fentry and kprobes vary by kernel build and are only printed.
    #[test]
    fn features_probe_this_kernel() {
        let f = probe();
        println!("{}", f.log_line());
        let has_socket_tracepoints = Btf::from_file(Path::new(BTF_PATH))
            .ok()
            .and_then(|b| b.type_id("btf_trace_sock_recv_length", TypeKind::Typedef))
            .is_some();
        if !has_socket_tracepoints {
            println!("no btf_trace_sock_recv_length: kernel before 6.4, nothing asserted");
            return;
        }
        assert!(f.tp_btf.available, "{}", f.log_line());
        assert!(f.sk_storage_from_tp_btf.available, "{}", f.log_line());
        assert!(f.socket_tracepoints.available, "{}", f.log_line());
        assert!(f.bpf_loop.available, "{}", f.log_line());
        assert!(f.capture_path_available());
        if !f.fentry.available {
            assert!(f.fentry.errno.is_some(), "a refusal carries its errno");
        }
    }
}
