//! The parser the kernel runs, fuzzed for longer than the test suite does.
//!
//! `cargo xtask test` runs the property tests (512 cases per property);
//! this phase runs libFuzzer on `agent-common/fuzz`'s `parser` target
//! (`cargo xtask fuzz`) for minutes. For every input, that target checks two
//! things. First, the kernel-like walk (`RequestStream::walk_read`, the
//! per-step scans the eBPF programs call) and the byte-by-byte reference find
//! the same requests, tenants and responses. Second, no input panics or
//! breaks the stream's invariants.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::Ctx;
use super::report::{Headline, Section};

/// What libFuzzer reported at the end of a run.
#[derive(Debug, PartialEq)]
struct FuzzStats {
    runs: u64,
    seconds: u64,
    /// Code edges covered (`cov:`).
    coverage: u64,
    /// Inputs in the corpus (`corp:`).
    corpus: u64,
}

impl FuzzStats {
    /// From libFuzzer's output: the last status line (`#N ... cov: C ...
    /// corp: K/...`) and the closing `Done N runs in S second(s)`.
    fn parse(log: &str) -> Option<FuzzStats> {
        let field = |line: &str, name: &str| -> Option<u64> {
            let rest = line.split(name).nth(1)?;
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        let status = log
            .lines()
            .rev()
            .find(|l| l.starts_with('#') && l.contains("cov: "))?;
        let done = log.lines().rev().find(|l| l.starts_with("Done "))?;
        let mut words = done.split_whitespace();
        let runs = words.nth(1)?.parse().ok()?;
        let seconds = words.nth(2)?.parse().ok()?;
        Some(FuzzStats {
            runs,
            seconds,
            coverage: field(status, "cov:")?,
            corpus: field(status, "corp:")?,
        })
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let seconds = ctx.plan.fuzz_secs;
    eprintln!("fuzz: the HTTP parser for {seconds} s");
    let log = ctx.root.join("target/fuzz-artifacts/bench-parser.log");
    // A failing input fails the phase (and names where it is kept).
    crate::fuzz(&ctx.root, seconds, Some(&log))?;
    let text = std::fs::read_to_string(&log)?;
    let stats = FuzzStats::parse(&text)
        .with_context(|| format!("no libFuzzer summary in {}", log.display()))?;
    let mut md = String::new();
    writeln!(md, "## The parser under libFuzzer\n")?;
    writeln!(
        md,
        "Method: `cargo xtask fuzz --seconds {seconds}`: libFuzzer on `agent-common/fuzz`'s `parser` target, from the \
checked-in seed corpus plus what earlier runs on this machine kept (under `target/`). Each input is split into reads \
and fed to the request parser the way the kernel feeds it (the same per-step scans the eBPF programs call) and byte by \
byte; both must find the same requests and tenants, and the response framing the same status codes, with the \
stream's invariants checked after every event. The test suite runs the property tests on the same comparison, for \
seconds.\n"
    )?;
    writeln!(md, "| measure | value |\n|---|---|")?;
    writeln!(md, "| runs | {} |", stats.runs)?;
    writeln!(md, "| seconds | {} |", stats.seconds)?;
    writeln!(
        md,
        "| runs per second | {:.0} |",
        stats.runs as f64 / stats.seconds.max(1) as f64
    )?;
    writeln!(md, "| code edges covered | {} |", stats.coverage)?;
    writeln!(md, "| corpus inputs | {} |", stats.corpus)?;
    writeln!(md, "| failing inputs | 0 |\n")?;
    Ok(Section {
        markdown: md,
        headlines: vec![Headline::new(
            "parser fuzzing (libFuzzer: kernel-like walk vs byte-by-byte reference)",
            format!(
                "{} runs in {} s, {} edges, no failing input",
                stats.runs, stats.seconds, stats.coverage
            ),
            "no failing input",
            Some(true),
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_summary() {
        let log = "INFO: Seed: 1\n\
#2\tINITED cov: 120 ft: 130 corp: 12/1Kb exec/s: 0 rss: 40Mb\n\
#364491\tREDUCE cov: 595 ft: 2288 corp: 580/59Kb lim: 621 exec/s: 12149 rss: 441Mb L: 539/581 MS: 5 ChangeBit-\n\
###### Recommended dictionary. ######\n\
\"\\377\\377\" # Uses: 14\n\
Done 368042 runs in 31 second(s)\n";
        assert_eq!(
            FuzzStats::parse(log),
            Some(FuzzStats {
                runs: 368_042,
                seconds: 31,
                coverage: 595,
                corpus: 580,
            })
        );
        assert_eq!(FuzzStats::parse("#1 INITED cov: 3 corp: 1/1b\n"), None);
    }
}
