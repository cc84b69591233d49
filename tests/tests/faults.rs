//! Exporter faults: a Prometheus scraping every 100 ms while traffic flows.
//! The agent keeps counting exactly, never panics, and its memory stays
//! bounded and flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burnwatch_e2e::agent::{Agent, config, counts_of};
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
