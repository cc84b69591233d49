//! What the agent costs a process it does not watch: interleaved rounds of
//! pipe and file I/O (dd, no socket) without the agent, with it on the
//! socket path and with it on the syscall path. On the socket path no
//! program runs for such a process; on the syscall path every read and
//! write it makes runs the agent's programs (which find no connection and
//! return), and every syscall takes the kernel's traced path.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burnwatch_common::programs::CaptureMode;

use super::procs::{CLIENT_CPU, SERVER_CPU, TempDir, free_port, other_agents, set_bpf_stats};
use super::report::{Headline, Section, Spread};
use super::{Ctx, agent_modes, arm_order, path_name, socket_path_note, start_agent};

/// Bytes per `dd` block: small, so the run is mostly syscalls (what the
/// agent's hooks could slow down), not copying.
const BLOCK: u64 = 512;
/// The file read through `dd`, in MiB: small enough to stay in the page
/// cache, read as many times as the calibration asks.
const FILE_MIB: u64 = 64;
/// Blocks through the pipe in the calibration run.
const CALIBRATION_BLOCKS: u64 = 200_000;

/// One run of a workload.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    /// Wall time, seconds.
    wall_s: f64,
    /// CPU time of the workload's processes (user + system, from
    /// `getrusage(RUSAGE_CHILDREN)` around it), seconds.
    cpu_s: f64,
}

/// The workloads, sized once (by a calibration run without the agent) and
/// then the same in every arm.
struct Workloads {
    /// Blocks through the pipe.
    pipe_blocks: u64,
    /// Reads of the whole file.
    file_reads: u64,
    /// The file read.
    file: std::path::PathBuf,
    /// Holds the file; removed on drop.
    _dir: TempDir,
}

/// How the tables name a workload (by index: pipe, file).
const WORKLOADS: [&str; 2] = ["pipe (dd | dd)", "cached file (dd)"];

impl Workloads {
    /// Writes the file, then sizes both workloads to `secs` each.
    fn calibrate(secs: f64) -> Result<Workloads> {
        let dir = TempDir::new("unwatched");
        let file = dir.0.join("data");
        let mut of = std::ffi::OsString::from("of=");
        of.push(&file);
        run_timed(
            Command::new("dd")
                .args(["if=/dev/zero", "bs=1M", "status=none"])
                .arg(format!("count={FILE_MIB}"))
                .arg(of),
        )
        .context("writing the unwatched phase's file")?;
        let mut w = Workloads {
            pipe_blocks: CALIBRATION_BLOCKS,
            file_reads: 1,
            file,
            _dir: dir,
        };
        // Warm-up (the first file read also fills the page cache), then
        // the runs the sizes come from.
        let _ = w.file_run()?;
        let _ = w.pipe_run()?;
        let pipe = w.pipe_run()?.wall_s.max(1e-3);
        let file = w.file_run()?.wall_s.max(1e-3);
        w.pipe_blocks = ((CALIBRATION_BLOCKS as f64 * secs / pipe) as u64).max(1_000);
        w.file_reads = ((secs / file).round() as u64).max(1);
        Ok(w)
    }

    /// Workload `i` (of [`WORKLOADS`]) once.
    fn run(&self, i: usize) -> Result<Measure> {
        match i {
            0 => self.pipe_run(),
            _ => self.file_run(),
        }
    }

    /// `pipe_blocks` blocks from /dev/zero through a pipe to /dev/null: a
    /// writer `dd` on CPU 0 (a read and a write per block), a reader `dd`
    /// on CPU 1 (the same).
    fn pipe_run(&self) -> Result<Measure> {
        run_shell(&format!(
            "taskset -c {SERVER_CPU} dd if=/dev/zero bs={BLOCK} count={} status=none | \
taskset -c {CLIENT_CPU} dd of=/dev/null bs={BLOCK} status=none",
            self.pipe_blocks
        ))
    }

    /// The cached file read `file_reads` times to /dev/null by `dd`, one
    /// after the other, on CPU 0.
    fn file_run(&self) -> Result<Measure> {
        let script = format!(
            "for i in $(seq \"$1\"); do dd if=\"$2\" of=/dev/null bs={BLOCK} status=none; done"
        );
        run_timed(
            Command::new("taskset")
                .args(["-c", SERVER_CPU, "sh", "-c", &script, "sh"])
                .arg(self.file_reads.to_string())
                .arg(&self.file),
        )
    }
}

/// CPU time (user + system) of this process's waited-for children and
/// theirs, ns.
fn children_cpu_ns() -> u64 {
    // SAFETY: a zeroed `rusage` the call fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// `cmd` through `sh -c`, timed.
fn run_shell(cmd: &str) -> Result<Measure> {
    run_timed(Command::new("sh").args(["-c", cmd]))
}

/// `cmd` run to its end, timed: wall time, and the CPU of every process it
/// ran (a shell waits for its pipeline, so theirs is in its children's
/// time, and its in ours once we wait for it).
fn run_timed(cmd: &mut Command) -> Result<Measure> {
    let cpu0 = children_cpu_ns();
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    let wall_s = start.elapsed().as_secs_f64();
    let cpu1 = children_cpu_ns();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(Measure {
        wall_s,
        cpu_s: cpu1.saturating_sub(cpu0) as f64 / 1e9,
    })
}

/// Per round, time without / time with (the paired ratio: above 1 when
/// the run with the agent was faster).
fn ratios(without: &[Measure], with: &[Measure], f: fn(&Measure) -> f64) -> Spread {
    Spread::of(
        &without
            .iter()
            .zip(with)
            .map(|(b, w)| f(b) / f(w).max(1e-9))
            .collect::<Vec<_>>(),
    )
}

/// Median (min..max) of `f` over runs.
fn col(runs: &[Measure], f: fn(&Measure) -> f64) -> Spread {
    Spread::of(&runs.iter().map(f).collect::<Vec<_>>())
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    // As users run the agent: without the kernel timing each program run
    // (on the syscall path, every read and write of dd runs programs).
    set_bpf_stats(false)?;
    let result = measure(ctx);
    set_bpf_stats(true)?;
    result
}

/// The phase, with the kernel's per-run timing off.
fn measure(ctx: &Ctx) -> Result<Section> {
    eprintln!(
        "unwatched: sizing the workloads to {:.0} s each",
        ctx.plan.unwatched_secs
    );
    let work = Workloads::calibrate(ctx.plan.unwatched_secs)?;
    let modes = agent_modes();
    // Nothing listens there: the agent watches no process of this phase.
    let body = format!(
        "services:\n  - name: bench\n    match:\n      port: {}\n",
        free_port()
    );
    // [workload][round] without; [arm][workload][round] with.
    let mut base: Vec<Vec<Measure>> = vec![Vec::new(); WORKLOADS.len()];
    let mut with: Vec<Vec<Vec<Measure>>> = vec![vec![Vec::new(); WORKLOADS.len()]; modes.len()];
    let mut others = 0usize;
    for round in 0..ctx.plan.rounds {
        eprintln!(
            "unwatched round {}/{}: without agent",
            round + 1,
            ctx.plan.rounds
        );
        for (wi, runs) in base.iter_mut().enumerate() {
            runs.push(work.run(wi)?);
        }
        for ai in arm_order(modes.len(), round) {
            eprintln!(
                "unwatched round {}/{}: agent on the {}",
                round + 1,
                ctx.plan.rounds,
                path_name(modes[ai])
            );
            let agent = start_agent(ctx, &body, modes[ai])?;
            // Past its start-up (loading, verifying, attaching) before the
            // workloads run.
            agent.settle();
            others = others.max(other_agents(&[]).saturating_sub(1));
            for (wi, runs) in with[ai].iter_mut().enumerate() {
                runs.push(work.run(wi)?);
            }
        }
    }

    let mut md = String::new();
    writeln!(md, "## What the agent costs a process it does not watch\n")?;
    writeln!(
        md,
        "Method: processes that do file and pipe I/O and no networking, which no agent config can watch: \
{blocks} blocks of {BLOCK} bytes from /dev/zero through a pipe to /dev/null (`dd | dd`, the writer pinned \
to CPU 0, the reader to CPU 1: a read and a write syscall per block on each side), and a {FILE_MIB} MiB file \
in the page cache read {reads} times to /dev/null by `dd bs={BLOCK}` on CPU 0; each sized once, without the \
agent, to take about {secs:.0} s. Three arms: without the agent, with the agent on the socket path \
(`capture.mode: socket`: only socket I/O runs a program, so none of this does) and with it on the syscall \
path (`capture.mode: syscalls`: every read and write of the node runs the agent's programs, which find no \
connection and return, and attaching syscall tracepoints puts every syscall on the kernel's traced path). \
The agent watches a port nothing listens on, runs on CPU 1 as in the other phases (its once-a-second poll \
shares the core with the pipe's reader), and is started afresh for each arm and given 2.2 s to settle before \
the workloads. {rounds} rounds, each without the agent then with each path (their order alternating between \
rounds); `kernel.bpf_stats_enabled=0` as users run. Ratio: time without / time with, paired by round (1 = \
no cost; below 1, the agent slowed the process down). CPU: user + system time of the workload's processes \
(`getrusage(RUSAGE_CHILDREN)`). Figures: median (min..max) over rounds.\n",
        blocks = work.pipe_blocks,
        reads = work.file_reads,
        secs = ctx.plan.unwatched_secs,
        rounds = ctx.plan.rounds,
    )?;
    md.push_str(socket_path_note());
    if others > 0 {
        writeln!(
            md,
            "Other burnwatch agents were running on the node during this run (up to {others}): their programs ran \
on these processes' syscalls in every arm.\n"
        )?;
    }
    writeln!(
        md,
        "| workload | agent | seconds without / with | ratio (time without / with) | CPU seconds without / with | CPU ratio (without / with) |\n|---|---|---|---|---|---|"
    )?;
    // [arm]: (workload, ratio) for the headlines.
    let mut by_arm: Vec<Vec<(usize, Spread)>> = vec![Vec::new(); modes.len()];
    for (wi, name) in WORKLOADS.iter().enumerate() {
        let b = &base[wi];
        for (ai, &mode) in modes.iter().enumerate() {
            let w = &with[ai][wi];
            let ratio = ratios(b, w, |m| m.wall_s);
            writeln!(
                md,
                "| {name} | {} | {} / {} | {} | {} / {} | {} |",
                path_name(mode),
                col(b, |m| m.wall_s).show(2),
                col(w, |m| m.wall_s).show(2),
                ratio.show(3),
                col(b, |m| m.cpu_s).show(2),
                col(w, |m| m.cpu_s).show(2),
                ratios(b, w, |m| m.cpu_s).show(3),
            )?;
            by_arm[ai].push((wi, ratio));
        }
    }
    writeln!(md)?;
    for round in 0..ctx.plan.rounds {
        let mut line = format!("- round {}:", round + 1);
        for (wi, name) in WORKLOADS.iter().enumerate() {
            let b = &base[wi][round];
            write!(
                line,
                " {name}: without {:.2} s (CPU {:.2} s)",
                b.wall_s, b.cpu_s
            )?;
            for (ai, &mode) in modes.iter().enumerate() {
                let w = &with[ai][wi][round];
                write!(
                    line,
                    ", {} {:.2} s (CPU {:.2} s)",
                    path_name(mode),
                    w.wall_s,
                    w.cpu_s
                )?;
            }
            line.push(';');
        }
        writeln!(md, "{}", line.trim_end_matches(';'))?;
    }
    writeln!(md)?;

    let measure = |mode: CaptureMode| {
        format!(
            "unwatched processes' speed, time without / with the agent on the {} (dd through a pipe; dd reading a cached file)",
            path_name(mode)
        )
    };
    let mut headlines = Vec::new();
    if !modes.contains(&CaptureMode::Socket) {
        headlines.push(Headline::new(
            &measure(CaptureMode::Socket),
            "not measured: this kernel has no socket path".into(),
            ">= 0.99",
            None,
        ));
    }
    for (ai, &mode) in modes.iter().enumerate() {
        let result = by_arm[ai]
            .iter()
            .map(|(wi, r)| format!("{} {}", WORKLOADS[*wi], r.show(3)))
            .collect::<Vec<_>>()
            .join("; ");
        if mode == CaptureMode::Socket {
            let met = by_arm[ai].iter().all(|(_, r)| r.median >= 0.99);
            headlines.push(Headline::new(&measure(mode), result, ">= 0.99", Some(met)));
        } else {
            headlines.push(Headline::new(&measure(mode), result, "", None));
        }
    }
    Ok(Section {
        markdown: md,
        headlines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ratios are paired by round: time without over time with.
    #[test]
    fn ratios_are_paired_by_round() {
        let m = |wall_s| Measure { wall_s, cpu_s: 0.0 };
        let r = ratios(&[m(3.0), m(2.0)], &[m(3.0), m(4.0)], |m| m.wall_s);
        assert_eq!((r.min, r.max), (0.5, 1.0));
    }
}
