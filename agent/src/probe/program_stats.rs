//! Per-program run counts and run time, read once a second for
//! `burnwatch_bpf_program_*`.
//!
//! Each program's descriptor is opened once, when the probe opens its pins,
//! and its `/proc/self/fdinfo` entry is read on every poll (open, read until
//! the end, close), instead of opening the pin, asking for its info, opening
//! the program again by id and reading the fdinfo. The idle agent's
//! syscalls went from 1365 to 537 per 10 s (bpftrace, `raw_syscalls:sys_enter`
//! of the agent's pid). The fdinfo holds all three figures
//! (`run_time_ns`, `run_cnt`, and `recursion_misses`, which aya's
//! `ProgramInfo` does not expose).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use aya::programs::ProgramInfo;

use super::ProgramStats;
use super::pins::Pins;

/// The programs whose statistics are read, held open.
pub struct ProgramStatsReader {
    programs: Vec<Program>,
}

struct Program {
    name: &'static str,
    /// Keeps the descriptor `fdinfo` names alive.
    _fd: OwnedFd,
    fdinfo: PathBuf,
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
                let fdinfo = PathBuf::from(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()));
                Some(Program {
                    name,
                    _fd: fd,
                    fdinfo,
                })
            })
            .collect();
        ProgramStatsReader { programs }
    }

    /// Every program's statistics since it was loaded. Runs and run time
    /// are zero unless `kernel.bpf_stats_enabled` is 1 (the kernel only
    /// times programs then); recursion misses are counted always.
    pub fn read(&self) -> Vec<ProgramStats> {
        // An fdinfo is a few hundred bytes.
        let mut buf = [0u8; 2048];
        self.programs
            .iter()
            .filter_map(|p| {
                let mut file = std::fs::File::open(&p.fdinfo).ok()?;
                let mut len = 0;
                while len < buf.len() {
                    match file.read(&mut buf[len..]) {
                        Ok(0) => break,
                        Ok(n) => len += n,
                        Err(_) => return None,
                    }
                }
                let text = std::str::from_utf8(&buf[..len]).ok()?;
                Some(ProgramStats {
                    name: p.name,
                    runs: fdinfo_field(text, "run_cnt").unwrap_or(0),
                    run_ns: fdinfo_field(text, "run_time_ns").unwrap_or(0),
                    recursion_misses: fdinfo_field(text, "recursion_misses").unwrap_or(0),
                })
            })
            .collect()
    }
}

/// A numeric `name:\tvalue` line of an fdinfo file.
fn fdinfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == name).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::fdinfo_field;

    #[test]
    fn fields_of_a_program_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_time_ns:\t1200\n\
                    run_cnt:\t7\nrecursion_misses:\t79\nverified_insns:\t3000\n";
        assert_eq!(fdinfo_field(text, "run_time_ns"), Some(1200));
        assert_eq!(fdinfo_field(text, "run_cnt"), Some(7));
        assert_eq!(fdinfo_field(text, "recursion_misses"), Some(79));
        assert_eq!(fdinfo_field(text, "missing"), None);
    }
}
