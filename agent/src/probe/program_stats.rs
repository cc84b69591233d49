//! Per-program run counts and run time, read once a second for
//! `burnwatch_bpf_program_*`.
//!
//! Each program's descriptor is opened once, when the probe opens its pins,
//! and every poll asks the kernel for its `bpf_prog_info`
//! (`BPF_OBJ_GET_INFO_BY_FD`): one syscall per program. Written by hand
//! because aya 0.14's `ProgramInfo` exposes neither `run_time_ns`,
//! `run_cnt` nor `recursion_misses`. (Reading `/proc/self/fdinfo/<fd>`,
//! which holds them as text, cost an open, reads and a close per program:
//! ~17% of an idle agent's CPU, by `perf record -p`.)

use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::programs::ProgramInfo;
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

use super::ProgramStats;
use super::pins::Pins;

/// The programs whose statistics are read, held open.
pub struct ProgramStatsReader {
    programs: Vec<Program>,
}

struct Program {
    name: &'static str,
    fd: OwnedFd,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

impl ProgramStatsReader {
    /// Opens the pinned programs `names`; one that cannot be opened is left
    /// out of the statistics (it is reported missing where it is loaded).
    pub fn open(pins: &Pins, names: &[&'static str]) -> Self {
        let programs = names
            .iter()
            .filter_map(|&name| {
                let info = ProgramInfo::from_pin(pins.program(name)).ok()?;
                let fd = info.fd().ok()?.as_fd().try_clone_to_owned().ok()?;
                Some(Program { name, fd })
            })
            .collect();
        ProgramStatsReader { programs }
    }

    /// Every program's statistics since it was loaded. Runs and run time
    /// are zero unless `kernel.bpf_stats_enabled` is 1 (the kernel only
    /// times programs then); recursion misses are counted always.
    pub fn read(&self) -> Vec<ProgramStats> {
        self.programs
            .iter()
            .filter_map(|p| {
                let info = prog_info(&p.fd)?;
                Some(ProgramStats {
                    name: p.name,
                    runs: info.run_cnt,
                    run_ns: info.run_time_ns,
                    recursion_misses: info.recursion_misses,
                })
            })
            .collect()
    }
}

/// The kernel's `bpf_prog_info` of the program `fd`. Its pointer fields
/// are left zero, so the kernel fills in only the scalar ones.
pub(super) fn prog_info(fd: &OwnedFd) -> Option<bpf_prog_info> {
    // SAFETY: bpf_prog_info is plain integers; all zeroes is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: `attr` and `info` outlive the call; the kernel writes at
    // most `info_len` bytes into `info` and updates `attr.info_len`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut InfoAttr,
            size_of::<InfoAttr>() as u32,
        )
    };
    (ret == 0).then_some(info)
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    /// Not a BPF program: no info, no panic.
    #[test]
    fn a_descriptor_that_is_no_program_has_no_info() {
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(super::prog_info(&f).is_none());
    }
}
