//! The verifier's own statistics for every program of the eBPF object:
//! processed instructions against the kernel's 1,000,000 budget, peak
//! states, and verification time. The test suite fails when a program
//! creeps past [`BUDGET`], `burnwatch verifier` prints the table, and the
//! bench records it.
//!
//! Written by hand because aya 0.14 only asks the kernel for a verifier log
//! when a load fails (its first attempt passes no log buffer), so a program
//! that verifies leaves no statistics behind. This module repeats the two
//! steps of aya's loader that shape the instructions (map and call
//! relocation, with `aya-obj`, over the maps aya itself created) and loads
//! each program once more with `BPF_LOG_STATS`: the kernel then reports
//! `processed N insns ... peak_states P` and `verification time T usec`
//! for programs that pass too. The processed count is checked against
//! the kernel's `verified_insns` of the same program loaded by aya.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::EbpfLoader;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};

use super::features::bpf_fd;

/// The kernel's limit on processed instructions per program.
pub const KERNEL_LIMIT: u64 = 1_000_000;
/// What a program may use of [`KERNEL_LIMIT`]: a fifth. The same build of
/// the same program took 8% more on a rebuilt kernel of the same version
/// (fc-v595 -> fc-v1300) and crossed the limit; a margin of 5x absorbs
/// that kind of drift across the kernels the agent meets.
pub const BUDGET: u64 = KERNEL_LIMIT / 5;
/// All programs together verify in less than this (wall time), so the agent
/// attaches within seconds of its start.
pub const TOTAL_TIME_BUDGET: Duration = Duration::from_secs(3);

/// `BPF_LOG_STATS`: only the statistics lines, not the per-instruction log.
const BPF_LOG_STATS: u32 = 4;

/// One program's verification, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierStats {
    pub program: String,
    /// `processed N insns`: instructions the verifier walked, over every path.
    pub processed_insns: u64,
    pub peak_states: u64,
    pub total_states: u64,
    pub max_states_per_insn: u64,
    /// The kernel's own `verification time`.
    pub verification_time: Duration,
    /// Instructions in the program as loaded (after relocation).
    pub insns: usize,
    /// The load's error, if the verifier rejected it (the numbers are then
    /// those of the rejected attempt).
    pub rejected: Option<String>,
}

impl VerifierStats {
    /// Share of [`KERNEL_LIMIT`] used, in percent.
    pub fn percent_of_limit(&self) -> f64 {
        self.processed_insns as f64 * 100.0 / KERNEL_LIMIT as f64
    }

    pub fn within_budget(&self) -> bool {
        self.rejected.is_none() && self.processed_insns <= BUDGET
    }
}

/// The program types of the object's programs, by section kind. Only the
/// kinds this agent uses.
fn prog_type(section: &aya_obj::ProgramSection) -> Result<(bpf_prog_type, Option<u32>)> {
    use aya_obj::ProgramSection as S;
    match section {
        S::TracePoint => Ok((bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT, None)),
        S::RawTracePoint => Ok((bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT, None)),
        S::BtfTracePoint => Ok((
            bpf_prog_type::BPF_PROG_TYPE_TRACING,
            Some(aya_obj::generated::bpf_attach_type::BPF_TRACE_RAW_TP as u32),
        )),
        other => bail!("verifier statistics: section kind {other:?} is not handled"),
    }
}

/// The BTF tracepoint a `tp_btf` program of the object is verified for
/// (the tail-called ones: the one they are called from).
fn btf_target(program: &str) -> Option<&'static str> {
    use burnwatch_common::programs::{BTF, CaptureMode, SOCKET_TAIL_TARGET};
    let mode = CaptureMode::Socket;
    mode.hooks()
        .iter()
        .find(|h| h.0 == BTF && h.2 == program)
        .map(|h| h.1)
        .or_else(|| {
            mode.tail_called()
                .iter()
                .any(|t| t.1 == program)
                .then_some(SOCKET_TAIL_TARGET)
        })
}

/// Loads every program of `object` with the verifier's statistics and
/// returns them, in the object's order of names. Maps are created (and
/// dropped at the end); nothing is attached or pinned. The socket path's
/// programs are left out on a kernel without its tracepoints (they never
/// load there: the agent runs the syscall path).
pub fn measure(object: &[u8]) -> Result<Vec<VerifierStats>> {
    // aya creates the maps (and their BTF) exactly as the agent does.
    let ebpf = EbpfLoader::new()
        .load(object)
        .context("loading the eBPF object")?;
    let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let features = aya::features();
    let btf_fd = match features.btf() {
        Some(btf_features) => match obj
            .fixup_and_sanitize_btf(btf_features)
            .context("preparing the object's BTF")?
        {
            Some(btf) => Some(load_btf(&btf.to_bytes())?),
            None => None,
        },
        None => None,
    };
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let map_objs: Vec<(String, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(n, m)| (n.clone(), m.clone()))
        .collect();
    let mut fds = Vec::new();
    for (name, _) in &map_objs {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} was not created"))?;
        fds.push(map_fd(map)?);
    }
    obj.relocate_maps(
        map_objs
            .iter()
            .zip(&fds)
            .map(|((name, m), fd)| (name.as_str(), *fd, m)),
        &text_sections,
    )?;
    obj.relocate_calls(&text_sections)?;
    obj.sanitize_functions(features);

    let vmlinux = aya::Btf::from_sys_fs().ok();
    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let program = &obj.programs[name];
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| anyhow!("program {name}: no function"))?;
        let (ty, attach) = prog_type(&program.section)?;
        let attach_btf_id = if ty == bpf_prog_type::BPF_PROG_TYPE_TRACING {
            let target = btf_target(name)
                .ok_or_else(|| anyhow!("program {name}: no BTF tracepoint in the hook tables"))?;
            let vmlinux = match &vmlinux {
                Some(btf) => btf,
                None => continue,
            };
            match vmlinux.id_by_type_name_kind(
                &format!("btf_trace_{target}"),
                aya_obj::btf::BtfKind::Typedef,
            ) {
                Ok(id) => Some(id),
                // Not on this kernel (before 6.4): the syscall path runs.
                Err(_) => continue,
            }
        } else {
            None
        };
        out.push(load_with_stats(
            name,
            ty,
            attach,
            attach_btf_id,
            program,
            function,
            btf_fd.as_ref(),
        )?);
    }
    Ok(out)
}

fn map_fd(map: &aya::maps::Map) -> Result<i32> {
    use aya::maps::Map as M;
    let data = match map {
        M::Array(d)
        | M::HashMap(d)
        | M::LruHashMap(d)
        | M::PerCpuArray(d)
        | M::PerCpuHashMap(d)
        | M::ProgramArray(d)
        | M::RingBuf(d)
        | M::SkStorage(d)
        | M::PerfEventArray(d)
        | M::PerCpuLruHashMap(d) => d,
        other => bail!("map kind {other:?} is not handled"),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

fn load_btf(bytes: &[u8]) -> Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the union's BTF_LOAD member.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = bytes.as_ptr() as u64;
    u.btf_size = bytes.len() as u32;
    bpf_fd(bpf_cmd::BPF_BTF_LOAD, &mut attr).context("loading the object's BTF")
}

fn load_with_stats(
    name: &str,
    ty: bpf_prog_type,
    expected_attach_type: Option<u32>,
    attach_btf_id: Option<u32>,
    program: &aya_obj::Program,
    function: &aya_obj::Function,
    btf_fd: Option<&OwnedFd>,
) -> Result<VerifierStats> {
    let mut log = vec![0u8; 1 << 26];
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the union's PROG_LOAD member.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = ty as u32;
    u.insns = function.instructions.as_ptr() as u64;
    u.insn_cnt = function.instructions.len() as u32;
    u.license = program.license.as_ptr() as u64;
    if let Some(t) = expected_attach_type {
        u.expected_attach_type = t;
    }
    if let Some(id) = attach_btf_id {
        u.attach_btf_id = id;
    }
    for (dst, src) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    if let Some(btf) = btf_fd {
        u.prog_btf_fd = btf.as_raw_fd() as u32;
        if function.func_info_rec_size > 0 {
            u.func_info = func_info.as_ptr() as u64;
            u.func_info_cnt = function.func_info.func_info.len() as u32;
            u.func_info_rec_size = function.func_info_rec_size as u32;
        }
        if function.line_info_rec_size > 0 {
            u.line_info = line_info.as_ptr() as u64;
            u.line_info_cnt = function.line_info.line_info.len() as u32;
            u.line_info_rec_size = function.line_info_rec_size as u32;
        }
    }
    // BURNWATCH_VERIFIER_LOG: the verifier's own trace (level 1) too, and
    // the end of it printed for a refused program: where it refused.
    let trace = std::env::var_os("BURNWATCH_VERIFIER_LOG").is_some();
    u.log_level = BPF_LOG_STATS | u32::from(trace);
    u.log_buf = log.as_mut_ptr() as u64;
    u.log_size = log.len() as u32;
    let started = Instant::now();
    let result = bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let wall = started.elapsed();
    let text =
        String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
    let mut stats = parse_log(&text).unwrap_or_else(|| VerifierStats {
        program: String::new(),
        processed_insns: 0,
        peak_states: 0,
        total_states: 0,
        max_states_per_insn: 0,
        verification_time: wall,
        insns: 0,
        rejected: None,
    });
    stats.program = name.to_string();
    stats.insns = function.instructions.len();
    match result {
        Ok(fd) => {
            // The kernel's own count for this very load, where it keeps one.
            if let Some(info) = super::program_stats::prog_info(&fd)
                && info.verified_insns != 0
                && u64::from(info.verified_insns) != stats.processed_insns
            {
                bail!(
                    "program {name}: the verifier log says {} processed instructions, \
                     bpf_prog_info says {}",
                    stats.processed_insns,
                    info.verified_insns
                );
            }
        }
        Err(e) => {
            if trace {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {name}: end of the verifier's log ---\n{}",
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
            stats.rejected = Some(format!("{e}: {}", reason(&text)));
        }
    }
    Ok(stats)
}

/// Why the verifier refused, from its log: the first and last lines that
/// are not statistics or notes every load prints (`reg type unsupported for
/// arg#0`, printed for a program's context argument by older kernels). The
/// last is the refusal itself; the first says where it started.
pub fn reason(log: &str) -> String {
    let noise = |l: &str| {
        l.starts_with("processed ")
            || l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("reg type unsupported for arg#0")
            || l.starts_with("func#")
    };
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !noise(l))
        .collect();
    match lines.as_slice() {
        [] => "no verifier output".to_string(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first} ... {last}"),
    }
}

/// Reads the statistics lines of a verifier log:
/// `processed 1234 insns (limit 1000000) max_states_per_insn 4 total_states
/// 100 peak_states 90 mark_read 12` and `verification time 567 usec`.
pub fn parse_log(log: &str) -> Option<VerifierStats> {
    let after = |line: &str, word: &str| -> Option<u64> {
        let mut it = line.split_whitespace();
        while let Some(w) = it.next() {
            if w == word {
                return it.next()?.parse().ok();
            }
        }
        None
    };
    let processed = log.lines().rev().find(|l| l.starts_with("processed "))?;
    let time = log
        .lines()
        .rev()
        .find(|l| l.starts_with("verification time "))
        .and_then(|l| after(l, "time"))
        .unwrap_or(0);
    Some(VerifierStats {
        program: String::new(),
        processed_insns: after(processed, "processed")?,
        max_states_per_insn: after(processed, "max_states_per_insn").unwrap_or(0),
        total_states: after(processed, "total_states").unwrap_or(0),
        peak_states: after(processed, "peak_states").unwrap_or(0),
        verification_time: Duration::from_micros(time),
        insns: 0,
        rejected: None,
    })
}

/// All programs' verification time together.
pub fn total_time(stats: &[VerifierStats]) -> Duration {
    stats.iter().map(|v| v.verification_time).sum()
}

/// What is over budget, one line each: programs refused or past
/// [`BUDGET`], and the total time past [`TOTAL_TIME_BUDGET`].
pub fn over_budget(stats: &[VerifierStats]) -> Vec<String> {
    let mut failed = Vec::new();
    for s in stats {
        if let Some(why) = &s.rejected {
            failed.push(format!("{} rejected: {why}", s.program));
        } else if !s.within_budget() {
            failed.push(format!(
                "{} processed {} instructions, over the budget of {BUDGET}",
                s.program, s.processed_insns
            ));
        }
    }
    let total = total_time(stats);
    if total > TOTAL_TIME_BUDGET {
        failed.push(format!(
            "all programs took {:.2} s to verify, over {} s",
            total.as_secs_f64(),
            TOTAL_TIME_BUDGET.as_secs()
        ));
    }
    failed
}

/// The table the test prints and the bench records (Markdown).
pub fn table(stats: &[VerifierStats]) -> String {
    let mut s = String::from(
        "| program | processed insns | % of 1M limit | peak states | total states | max states/insn | verification time | insns |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for v in stats {
        s.push_str(&format!(
            "| {}{} | {} | {:.1}% | {} | {} | {} | {:.0} ms | {} |\n",
            v.program,
            if v.rejected.is_some() {
                " (rejected)"
            } else {
                ""
            },
            v.processed_insns,
            v.percent_of_limit(),
            v.peak_states,
            v.total_states,
            v.max_states_per_insn,
            v.verification_time.as_secs_f64() * 1000.0,
            v.insns,
        ));
    }
    let total = total_time(stats);
    s.push_str(&format!(
        "\nAll programs: {:.2} s of verification (budget {} s); budget per program {} processed instructions ({}% of the limit).\n",
        total.as_secs_f64(),
        TOTAL_TIME_BUDGET.as_secs(),
        BUDGET,
        BUDGET * 100 / KERNEL_LIMIT,
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stats_lines() {
        let log = "func#0 @0\nprocessed 1000001 insns (limit 1000000) max_states_per_insn 153 \
                   total_states 42311 peak_states 9000 mark_read 12\nverification time 10217700 usec\n\
                   stack depth 96+0\n";
        let s = parse_log(log).unwrap();
        assert_eq!(s.processed_insns, 1_000_001);
        assert_eq!(s.max_states_per_insn, 153);
        assert_eq!(s.total_states, 42311);
        assert_eq!(s.peak_states, 9000);
        assert_eq!(s.verification_time, Duration::from_micros(10_217_700));
        assert!(parse_log("no stats here").is_none());
    }

    #[test]
    fn over_budget_names_refusals_overruns_and_the_total() {
        let stat = |program: &str, processed: u64, ms: u64, rejected: Option<&str>| VerifierStats {
            program: program.into(),
            processed_insns: processed,
            peak_states: 0,
            total_states: 0,
            max_states_per_insn: 0,
            verification_time: Duration::from_millis(ms),
            insns: 0,
            rejected: rejected.map(Into::into),
        };
        assert!(over_budget(&[stat("a", BUDGET, 100, None)]).is_empty());
        let failed = over_budget(&[
            stat("a", BUDGET + 1, 100, None),
            stat("b", 10, 100, Some("too large")),
            stat("c", 10, 3000, None),
        ]);
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed[0].starts_with("a processed"), "{failed:?}");
        assert!(failed[1].starts_with("b rejected: too large"), "{failed:?}");
        assert!(
            failed[2].starts_with("all programs took 3.20 s"),
            "{failed:?}"
        );
    }

    #[test]
    fn reason_is_first_and_last_line() {
        assert_eq!(reason("a\n\nb\nc\n"), "a ... c");
        assert_eq!(
            reason(
                "reg type unsupported for arg#0 function sys_enter_write#37\n\
                 R2 min value is negative, either use unsigned or 'var &= const'\n\
                 processed 2968 insns (limit 1000000)\nverification time 9 usec\n"
            ),
            "R2 min value is negative, either use unsigned or 'var &= const'"
        );
        assert_eq!(reason("only\n"), "only");
        assert_eq!(reason(""), "no verifier output");
    }
}
