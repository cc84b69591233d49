//! Startup checks: say plainly what the kernel or the process lacks before
//! anything fails in an obscure way, and fix what can be fixed (mounting
//! tracefs when it is missing).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use tracing::{info, warn};

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

use burnwatch_common::programs::{BTF, CaptureMode, capability_of};

/// Runs every check and chooses the capture path: `forced`
/// (`capture.mode`), or the socket path where this kernel runs it and the
/// syscall path elsewhere. The error lists everything that is missing at
/// once.
pub fn run(forced: Option<CaptureMode>) -> Result<CaptureMode> {
    let mut missing = Vec::new();

    match effective_caps() {
        Some(caps) => {
            let has = |c: u32| caps & (1u64 << c) != 0;
            if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
                missing.push(
                    "privileges: run as root, or grant CAP_BPF and CAP_PERFMON \
                     (CAP_SYS_ADMIN on kernels older than 5.8)"
                        .to_string(),
                );
            }
        }
        None => warn!("could not read capabilities from /proc/self/status"),
    }

    if !Path::new(BTF_PATH).exists() {
        missing.push(format!(
            "kernel BTF: {BTF_PATH} is missing (a kernel built with CONFIG_DEBUG_INFO_BTF=y is required)"
        ));
    }

    let tracefs = match ensure_tracefs() {
        Ok(p) => Some(p),
        Err(e) => {
            missing.push(format!("tracefs: {e:#}"));
            None
        }
    };

    // Measured, not read off the version: what this kernel loads and
    // attaches (tp_btf, socket storage, fentry, kprobes, the socket
    // tracepoints, bpf_loop), in one line of the log. After tracefs is
    // mounted: the kprobe fact reads it.
    let features = super::features::probe();
    info!("{}", features.log_line());
    let socket_why_not = socket_path_why_not(&features);
    let mode = match (forced, &socket_why_not) {
        (Some(CaptureMode::Socket), Some(why)) => {
            missing.push(format!(
                "capture.mode is socket, and this kernel cannot run the socket path: {why}"
            ));
            CaptureMode::Socket
        }
        (Some(mode), _) => mode,
        (None, None) => CaptureMode::Socket,
        (None, Some(_)) => CaptureMode::Syscalls,
    };
    match (forced, &socket_why_not) {
        (Some(_), _) => info!(mode = mode.name(), "capture path forced by capture.mode"),
        (None, None) => info!(
            mode = mode.name(),
            "capture path: the socket layer's tracepoints (only socket I/O runs a program)"
        ),
        (None, Some(why)) => info!(
            mode = mode.name(),
            "capture path: syscall tracepoints, as the socket path cannot run here: {why}"
        ),
    }

    if let Some(tracefs) = &tracefs {
        for (cat, name, program) in mode.hooks() {
            if *cat == BTF {
                continue; // checked by the feature probe above
            }
            let p = tracefs.join("events").join(cat).join(name);
            if p.exists() {
                continue;
            }
            let what = format!(
                "tracepoint {cat}:{name} not found under {} (CONFIG_FTRACE_SYSCALLS?)",
                tracefs.join("events").display()
            );
            match capability_of(program) {
                Some(c) if !c.is_core() => warn!(
                    "{what}: capability {} will be down, {}",
                    c.feature, c.without
                ),
                _ => missing.push(what),
            }
        }
    }

    match aya::sys::is_program_supported(aya::programs::ProgramType::TracePoint) {
        Ok(true) => {}
        Ok(false) => missing.push("program type tracepoint is not supported by this kernel".into()),
        Err(e) => warn!("could not probe the tracepoint program type: {e}"),
    }

    if !features.bpf_loop.available {
        missing.push(format!(
            "the bpf_loop helper (Linux 5.17+), which the parser runs in: {}",
            features.bpf_loop
        ));
    }

    if !missing.is_empty() {
        bail!(
            "this node cannot run burnwatch:\n  - {}",
            missing.join("\n  - ")
        );
    }
    let tracefs = tracefs.expect("checked above");
    info!(tracefs = %tracefs.display(), btf = BTF_PATH, "kernel checks passed");
    Ok(mode)
}

/// Why the socket path cannot run on this kernel, `None` when it can: the
/// BTF tracepoints on the socket layer with socket storage (6.4+), and the
/// x86_64 register layout its programs read the syscall's arguments from.
pub fn socket_path_why_not(features: &super::features::KernelFeatures) -> Option<String> {
    if !features.capture_path_available() {
        return Some(format!(
            "socket tracepoints {}; tp_btf {}; sk_storage from tp_btf {}",
            features.socket_tracepoints, features.tp_btf, features.sk_storage_from_tp_btf
        ));
    }
    use burnwatch_common::offsets::{
        X86_64_REGS_CS, X86_64_REGS_IP, X86_64_REGS_ORIG_AX, X86_64_SYSCALL_ARG_REGS,
    };
    let btf = match super::btf::Btf::from_file(Path::new(BTF_PATH)) {
        Ok(btf) => btf,
        Err(e) => return Some(format!("kernel BTF: {e:#}")),
    };
    let at = |m: &str| btf.member_offset("pt_regs", m).ok();
    let layout = [
        at("di"),
        at("si"),
        at("dx"),
        at("r10"),
        at("orig_ax"),
        at("ip"),
        at("cs"),
    ];
    let want = [
        Some(X86_64_SYSCALL_ARG_REGS[0]),
        Some(X86_64_SYSCALL_ARG_REGS[1]),
        Some(X86_64_SYSCALL_ARG_REGS[2]),
        Some(X86_64_SYSCALL_ARG_REGS[3]),
        Some(X86_64_REGS_ORIG_AX),
        Some(X86_64_REGS_IP),
        Some(X86_64_REGS_CS),
    ];
    if !cfg!(target_arch = "x86_64") || layout != want {
        return Some(format!(
            "its programs read x86_64 syscall registers; this kernel's struct pt_regs is not that layout ({layout:?})"
        ));
    }
    None
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when no mount exists
/// (many machines boot without it; tracepoint attach needs it).
fn ensure_tracefs() -> Result<PathBuf> {
    for p in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    mount("tracefs", TRACEFS, "tracefs")?;
    info!("mounted tracefs at {TRACEFS}");
    if Path::new(TRACEFS).join("events").is_dir() {
        Ok(PathBuf::from(TRACEFS))
    } else {
        bail!("mounted tracefs at {TRACEFS} but it has no events/ directory")
    }
}

/// mount(2) without a dependency on the `mount` binary (the image has no shell).
pub fn mount(source: &str, target: &str, fstype: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src, tgt, fs) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "mount -t {fstype} {source} {target} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
