//! Progress of long operations on stderr (stdout stays clean for `--json`).
//!
//! Hand-written rather than indicatif: indicatif draws nothing when stderr is not a
//! terminal, and long simulations run in CI logs as often as in terminals. Here a
//! terminal gets one line rewritten in place, a log gets a line every 5 s.
//!
//! Runs shorter than a second print nothing. `BURNWATCH_PROGRESS_AFTER_MS` changes that
//! delay (0 reports from the first step), so a test sees progress however fast the
//! machine is.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
    /// Nothing is printed before this much wall time has passed: short runs stay quiet.
    quiet_for: Duration,
    printed: bool,
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        Progress {
            what,
            started: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            quiet_for: std::env::var("BURNWATCH_PROGRESS_AFTER_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(Duration::from_secs(1), Duration::from_millis),
            printed: false,
        }
    }

    /// `done` of `total` units; `detail` is appended (e.g. alerts so far).
    pub fn update(&mut self, done: u64, total: u64, unit: impl Fn(u64) -> String, detail: &str) {
        let elapsed = self.started.elapsed();
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if elapsed < self.quiet_for || self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let share = done as f64 / total.max(1) as f64;
        let left = if share > 0.0 {
            elapsed.as_secs_f64() * (1.0 - share) / share
        } else {
            0.0
        };
        let line = format!(
            "{}: {} of {} ({:.0}%), {:.0} s elapsed, ~{:.0} s left{detail}",
            self.what,
            unit(done),
            unit(total),
            share * 100.0,
            elapsed.as_secs_f64(),
            left
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        self.printed = true;
    }

    /// Ends the line (terminal) and reports the total time, if anything was shown.
    pub fn finish(&self) {
        if self.printed {
            let mut err = std::io::stderr().lock();
            if self.tty {
                let _ = write!(err, "\r\x1b[2K");
            }
            let _ = writeln!(
                err,
                "{}: done in {:.1} s",
                self.what,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
