//! Exporter faults: a Prometheus scraping every 100 ms while traffic flows,
//! and clients of the metrics port that stall or say nothing. The agent
//! keeps counting exactly, never panics, and its memory stays bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burnwatch_e2e::agent::{Agent, config, config_with_tenant, counts_of};
use burnwatch_e2e::client::{Conn, get_status};
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::{assert_same_counts, require_root};

/// How long the scraping lasts.
const SCRAPE_FOR: Duration = Duration::from_secs(12);
/// RSS bound (KiB) and how much it may grow between the first and the last
/// quarter of the run (a leak per scrape would show: 120 scrapes).
const RSS_BOUND_KIB: u64 = 96 * 1024;
const RSS_GROWTH_KIB: u64 = 4 * 1024;

#[test]
fn scraping_every_100ms_under_traffic() {
    require_root();
    let nginx = Nginx::start();
    let mut agent = Agent::start(&config(&[("shop", nginx.port)]));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, port) = (stop.clone(), nginx.port);
        std::thread::spawn(move || {
            let mut c = Conn::open(port);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tenant = format!("t{}", n % 50);
                let path = if n.is_multiple_of(9) { "/error" } else { "/ok" };
                c.request("GET", path, Some(&tenant));
                n += 1;
                // Under nginx's keepalive_requests (100,000) for the run.
                std::thread::sleep(Duration::from_micros(500));
            }
            n
        })
    };

    let start = Instant::now();
    let (mut scrapes, mut failed) = (0u64, 0u64);
    let mut rss = Vec::new();
    while start.elapsed() < SCRAPE_FOR {
        let t = Instant::now();
        match get_status(agent.metrics_port, "/metrics") {
            Some(200) => scrapes += 1,
            _ => failed += 1,
        }
        rss.push(agent.rss_kib());
        assert!(!agent.exited(), "agent died:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    nginx.wait_for_log_lines(sent as usize);

    assert_eq!(failed, 0, "{failed} of {} scrapes failed", scrapes + failed);
    let quarter = rss.len() / 4;
    let early = *rss[..quarter].iter().max().unwrap();
    let late = *rss[rss.len() - quarter..].iter().max().unwrap();
    let peak = *rss.iter().max().unwrap();
    eprintln!(
        "faults: {scrapes} scrapes in {:.1} s, {sent} requests; RSS first quarter {early} KiB, \
         last quarter {late} KiB, peak {peak} KiB",
        SCRAPE_FOR.as_secs_f64()
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS {peak} KiB over {RSS_BOUND_KIB}"
    );
    assert!(
        late <= early + RSS_GROWTH_KIB,
        "RSS grew from {early} to {late} KiB over {scrapes} scrapes"
    );
    let e = agent.settle_and_scrape();
    assert_same_counts(
        "requests while scraped every 100 ms",
        &counts_of(&e, "shop"),
        &nginx.counts("unknown"),
        &agent,
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// Clients of the metrics port that ask for `/metrics` and never read it,
/// and more connections than the agent serves at once that never send a
/// request: the agent refuses scrapes over its in-flight cap (503), closes
/// silent and stalled connections (10 s header timeout, 20 s write stall,
/// `agent/src/api/server.rs`), answers again once they are gone, keeps its
/// memory bounded, and keeps counting.
#[test]
fn api_clients_that_stall_or_say_nothing_are_bounded() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&config_with_tenant(
        &[("shop", nginx.port)],
        "  header: X-Tenant-ID\n  missing: unknown\n  max_per_service: 10000\n",
    ));
    // 10,000 tenants: a plain-text exposition (17 MB) several times the
    // socket buffers (4 MiB) of a scraper that does not read.
    let mut c = Conn::open(nginx.port);
    for n in 0..TENANTS {
        c.request("GET", "/ok", Some(&format!("t{n}")));
    }
    drop(c);
    let text = agent.settle_and_scrape();
    let base = agent.rss_kib();
    let port = agent.metrics_port;

    let stalled: Vec<TcpStream> = (0..SCRAPES_IN_FLIGHT)
        .map(|_| {
            let mut s = connect_with_small_receive_buffer(port);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // Encoding takes a moment; the slots stay taken while nobody reads.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        get_status(port, "/metrics"),
        Some(503),
        "a scrape over the in-flight cap is refused"
    );
    assert_eq!(
        get_status(port, "/healthz"),
        Some(200),
        "probes are not scrapes"
    );

    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..SILENT_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut peak = agent.rss_kib();
    // Silent clients make room for newer connections (the oldest idle one
    // is closed), so probes are answered at once; /metrics once a stalled
    // scraper's write times out and frees its in-flight slot.
    let mut healthz = None;
    while started.elapsed() < Duration::from_secs(60) {
        peak = peak.max(agent.rss_kib());
        if get_status(port, "/metrics") == Some(200) {
            break;
        }
        if healthz.is_none() && get_status(port, "/healthz") == Some(200) {
            healthz = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let free_again = started.elapsed();
    eprintln!(
        "faults: {} stalled scrapers of a {} byte exposition, {} silent connections; \
         /healthz after {healthz:?}, /metrics after {free_again:?}; RSS {base} KiB before, peak {peak} KiB",
        stalled.len(),
        text.text.len(),
        silent.len()
    );
    assert!(
        free_again < Duration::from_secs(45),
        "/metrics was not answered again within {free_again:?}"
    );
    assert!(
        peak < base + 32 * 1024,
        "RSS rose from {base} to {peak} KiB under stalled and silent clients"
    );
    // Every silent and stalled connection is closed and counted: timed out
    // (10 s of silence, or a stalled write), or evicted as idle to make room
    // for a newer connection (the per-client and total budgets).
    let rejected = |reason| {
        agent
            .scrape()
            .sum("burnwatch_api_rejected_total", &[("reason", reason)])
    };
    assert!(rejected("scrapes_in_flight") >= 1.0);
    let all = (SILENT_CONNECTIONS + SCRAPES_IN_FLIGHT) as f64;
    let closed = || rejected("timeout") + rejected("idle_evicted");
    let t = Instant::now();
    while closed() < all && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        closed() >= all,
        "closed and counted: {} timed out + {} evicted of {all}",
        rejected("timeout"),
        rejected("idle_evicted")
    );
    // The stalled scrapers were cut off well before the end of their answer.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got += n;
        }
        assert!(
            got < text.text.len() / 2,
            "a stalled scraper still got {got} of {} bytes",
            text.text.len()
        );
    }
    drop(silent);
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    assert_same_counts(
        "requests before the API was abused",
        &counts_of(&agent.settle_and_scrape(), "shop"),
        &nginx.counts("unknown"),
        &agent,
    );
}

const TENANTS: usize = 10_000;
/// The agent's `/metrics` in-flight cap (`MAX_SCRAPES_IN_FLIGHT`).
const SCRAPES_IN_FLIGHT: usize = 8;
/// More than the agent's connection cap (128) less the stalled scrapers.
const SILENT_CONNECTIONS: usize = 200;

/// A loopback connection whose receive buffer is set small before the
/// handshake, so a peer writing to it stalls after a few KiB.
fn connect_with_small_receive_buffer(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}
