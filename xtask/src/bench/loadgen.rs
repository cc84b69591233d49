//! A fixed-rate HTTP/1.1 load generator whose requests cycle through N
//! tenant ids (`X-Tenant-ID: t-0 .. t-<N-1>`), run as `cargo xtask loadgen`
//! (the bench starts it under `taskset`, so it gets its own core).
//!
//! Written by hand because nothing installable does both things the bench
//! needs: wrk2 (fixed rate) is not packaged by Debian; wrk varies headers
//! through Lua but has no rate control; hey (`-q`), h2load (`--rps`) and oha
//! (`-q`) hold a rate but send one fixed header set, so they cannot make
//! 100,000 tenants. std only: one blocking keep-alive connection per thread
//! is plenty at the rates measured here (up to ~10^5 req/s on loopback).
//!
//! Open loop, like wrk2: connection `i` of `C` sends its `k`-th request at
//! `start + (k * C + i) / rate`, and latency is measured from that scheduled
//! time, so a server stall shows up as latency for every request it delayed
//! (no coordinated omission). Latencies therefore include the generator's
//! timer slack (tens of microseconds), equally with and without the agent.
//! `--rate 0` sends as fast as the server answers (saturation); latency is
//! then measured from the actual send.
//!
//! Every request is answered before the run ends (a thread finishes its
//! in-flight request), so `requests` is exactly what the server served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Server port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// Requests per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Keep-alive connections (one thread each).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Run time in seconds (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Distinct tenant ids, cycled in order.
    #[arg(long, default_value_t = 10)]
    pub tenants: u32,
    /// Request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Stop after this many requests in all (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    pub requests: u64,
}

/// What one run did. Printed as `key=value` lines by `cargo xtask loadgen`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_other: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Requests sent more than 1 ms after their scheduled time: the
    /// generator (or the server) could not keep the rate.
    pub late: u64,
    /// Unix time (ns) at which the first request answered with a non-2xx
    /// status was sent (its scheduled time at a fixed rate); 0 if none.
    pub first_failure_unix_ns: u128,
}

impl LoadReport {
    pub fn to_lines(&self) -> String {
        format!(
            "requests={}\nstatus_2xx={}\nstatus_other={}\nrps={:.1}\np50_us={:.1}\np90_us={:.1}\np99_us={:.1}\nmax_us={:.1}\nlate={}\nfirst_failure_unix_ns={}\n",
            self.requests,
            self.status_2xx,
            self.status_other,
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us,
            self.late,
            self.first_failure_unix_ns
        )
    }

    pub fn from_lines(text: &str) -> Result<LoadReport> {
        let mut r = LoadReport::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "requests" => r.requests = v.parse()?,
                "status_2xx" => r.status_2xx = v.parse()?,
                "status_other" => r.status_other = v.parse()?,
                "rps" => r.rps = v.parse()?,
                "p50_us" => r.p50_us = v.parse()?,
                "p90_us" => r.p90_us = v.parse()?,
                "p99_us" => r.p99_us = v.parse()?,
                "max_us" => r.max_us = v.parse()?,
                "late" => r.late = v.parse()?,
                "first_failure_unix_ns" => r.first_failure_unix_ns = v.parse()?,
                _ => {}
            }
        }
        if r.requests == 0 {
            bail!("load generator served no request:\n{text}");
        }
        Ok(r)
    }
}

#[derive(Default)]
struct ConnResult {
    latencies_us: Vec<u32>,
    status_2xx: u64,
    status_other: u64,
    late: u64,
    first_failure: Option<SystemTime>,
}

pub fn run(args: &LoadArgs) -> Result<LoadReport> {
    if args.connections == 0 || args.tenants == 0 {
        bail!("--connections and --tenants must be at least 1");
    }
    let duration = Duration::from_secs_f64(args.duration);
    // Requests are prepared up front: no formatting in the send loop.
    let requests: Vec<Vec<u8>> = (0..args.tenants)
        .map(|t| {
            format!(
                "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tenant-ID: t-{t}\r\n\r\n",
                args.path
            )
            .into_bytes()
        })
        .collect();
    let mut streams = Vec::new();
    for _ in 0..args.connections {
        let s = TcpStream::connect(("127.0.0.1", args.port))
            .with_context(|| format!("connecting to 127.0.0.1:{}", args.port))?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    let wall_start = SystemTime::now();
    let start = Instant::now();
    let results: Vec<Result<ConnResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                let requests = &requests;
                scope.spawn(move || {
                    connection(
                        stream, i as u64, args, requests, start, wall_start, duration,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread panicked"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut report = LoadReport::default();
    let mut first_failure: Option<SystemTime> = None;
    for r in results {
        let r = r?;
        all.extend_from_slice(&r.latencies_us);
        report.status_2xx += r.status_2xx;
        report.status_other += r.status_other;
        report.late += r.late;
        first_failure = match (first_failure, r.first_failure) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    all.sort_unstable();
    report.requests = all.len() as u64;
    report.rps = report.requests as f64 / elapsed;
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i])
    };
    report.p50_us = pct(0.50);
    report.p90_us = pct(0.90);
    report.p99_us = pct(0.99);
    report.max_us = all.last().copied().map(f64::from).unwrap_or(0.0);
    report.first_failure_unix_ns = first_failure
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(report)
}

fn connection(
    stream: TcpStream,
    index: u64,
    args: &LoadArgs,
    requests: &[Vec<u8>],
    start: Instant,
    wall_start: SystemTime,
    duration: Duration,
) -> Result<ConnResult> {
    let conns = u64::from(args.connections);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut out = ConnResult::default();
    let mut line = String::with_capacity(256);
    let mut body = vec![0u8; 4096];
    for k in 0u64.. {
        let seq = k * conns + index;
        let scheduled = if args.rate == 0 {
            start.elapsed()
        } else {
            Duration::from_nanos((seq as u128 * 1_000_000_000 / args.rate as u128) as u64)
        };
        if scheduled >= duration || (args.requests > 0 && seq >= args.requests) {
            break;
        }
        let now = start.elapsed();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        } else if now - scheduled > Duration::from_millis(1) {
            out.late += 1;
        }
        writer.write_all(&requests[(seq % requests.len() as u64) as usize])?;
        // Status line, headers (Content-Length), body.
        line.clear();
        reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut content_length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("server closed the connection");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse()?;
            }
        }
        let mut left = content_length;
        while left > 0 {
            let n = left.min(body.len());
            reader.read_exact(&mut body[..n])?;
            left -= n;
        }
        let latency = start.elapsed().saturating_sub(scheduled);
        out.latencies_us
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        if (200..300).contains(&status) {
            out.status_2xx += 1;
        } else {
            out.status_other += 1;
            if out.first_failure.is_none() {
                out.first_failure = Some(wall_start + scheduled);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A real (tiny) keep-alive HTTP server on loopback: answers every
    /// request with 200, or 500 when its path is /fail.
    fn server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    let mut line = String::new();
                    let mut fail = false;
                    while r.read_line(&mut line).unwrap_or(0) > 0 {
                        if line.starts_with("GET /fail") {
                            fail = true;
                        }
                        if line == "\r\n" {
                            let resp: &[u8] = if fail {
                                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nfail\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                            };
                            if w.write_all(resp).is_err() {
                                return;
                            }
                            fail = false;
                        }
                        line.clear();
                    }
                });
            }
        });
        port
    }

    #[test]
    fn holds_the_rate_and_counts_every_answer() {
        let port = server();
        let args = LoadArgs {
            port,
            rate: 2_000,
            connections: 4,
            duration: 1.0,
            tenants: 7,
            path: "/".into(),
            requests: 0,
        };
        let r = run(&args).unwrap();
        // Exactly the scheduled requests: seq < rate * duration.
        assert_eq!(r.requests, 2_000);
        assert_eq!(r.status_2xx, 2_000);
        assert_eq!(r.first_failure_unix_ns, 0);
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
        let parsed = LoadReport::from_lines(&r.to_lines()).unwrap();
        assert_eq!(parsed.requests, r.requests);
        assert_eq!(parsed.status_2xx, r.status_2xx);
    }

    #[test]
    fn stops_after_the_requested_count() {
        let port = server();
        let args = LoadArgs {
            port,
            rate: 0,
            connections: 3,
            duration: 30.0,
            tenants: 1_000,
            path: "/".into(),
            requests: 1_000,
        };
        assert_eq!(run(&args).unwrap().requests, 1_000);
    }

    #[test]
    fn reports_when_failures_started() {
        let port = server();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let args = LoadArgs {
            port,
            rate: 500,
            connections: 2,
            duration: 0.2,
            tenants: 1,
            path: "/fail".into(),
            requests: 0,
        };
        let r = run(&args).unwrap();
        assert_eq!(r.status_other, 100);
        assert!(r.first_failure_unix_ns >= before);
    }
}
