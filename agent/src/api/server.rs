//! The API's connection loop: HTTP/1.1 with hyper, bounded so that clients
//! of the metrics port, friendly or not, cannot take the agent's memory.
//!
//! Hand-rolled instead of `axum::serve`, which sets no timer (so hyper's
//! header read timeout never fires), no write timeout and no connection
//! cap: one slowloris client could hold sockets and buffers forever. Here:
//! - at most [`Limits::connections`] connections are served at once; the
//!   next is accepted only when one ends (the kernel's listen backlog holds
//!   the rest, nothing queues in the agent);
//! - a request head must arrive within [`Limits::header_timeout`] of the
//!   connection waiting for it, which also closes idle keep-alive
//!   connections;
//! - a response write that makes no progress for [`Limits::write_stall`]
//!   (a scraper that stopped reading) ends the connection and frees its
//!   response;
//! - request heads are capped at [`Limits::max_head_bytes`].
//!
//! `/metrics` adds its own cap on scrapes in flight (see `super::metrics`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, warn};

use crate::export::SelfStats;

/// How much of the agent one client can hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub header_timeout: Duration,
    pub write_stall: Duration,
    pub max_head_bytes: usize,
}

/// Two Prometheus replicas, kubelet probes and a few `burnwatch top` need a
/// handful of connections; 128 leaves room for many more while bounding
/// the agent's memory for connections to a few MiB.
pub const LIMITS: Limits = Limits {
    connections: 128,
    // Prometheus sends its request at once; 10 s is slack for a loaded node.
    header_timeout: Duration::from_secs(10),
    // A scraper reading at all (even over a slow link) makes progress
    // within seconds; its own scrape_timeout defaults to 10 s.
    write_stall: Duration::from_secs(20),
    // The API takes only GETs with short query strings.
    max_head_bytes: 16 << 10,
};

/// Serves `router` on `listener` until the listener fails for good.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stats: Arc<SelfStats>,
    limits: Limits,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes);
    loop {
        let slot = slots.clone().acquire_owned().await?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning
                // (as axum::serve does), the error is the node's, not a client's.
                warn!("API server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(limits.write_stall));
        let io = TokioIo::new(Box::pin(io));
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(io, service);
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if timed_out(&e) {
                    stats.api.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                debug!("API connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// A header read timeout (hyper's own) or a stalled write (an I/O error of
/// kind `TimedOut` from the timeout stream).
fn timed_out(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    e.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn limits() -> Limits {
        Limits {
            connections: 2,
            header_timeout: Duration::from_millis(300),
            write_stall: Duration::from_millis(300),
            max_head_bytes: 8 << 10,
        }
    }

    /// A server with a small and a 64 MiB route on a runtime of its own
    /// thread; returns its address and stats.
    fn start(limits: Limits) -> (std::net::SocketAddr, Arc<SelfStats>) {
        let stats = Arc::new(SelfStats::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stats.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let router = Router::new()
                    .route("/small", get(|| async { "ok\n" }))
                    .route("/big", get(|| async { vec![b'x'; 64 << 20] }));
                serve(listener, router, s, limits).await.unwrap();
            });
        });
        (rx.recv().unwrap(), stats)
    }

    fn get_small(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    /// Reads until the server closes the connection; how long that took.
    fn time_to_close(mut c: TcpStream) -> Duration {
        let t = Instant::now();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return t.elapsed(),
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn silent_and_idle_connections_are_closed_after_the_header_timeout() {
        let (addr, stats) = start(limits());
        let silent = TcpStream::connect(addr).unwrap();
        let took = time_to_close(silent);
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // Half a request head: the same.
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /small HTTP/1.1\r\nHost:").unwrap();
        assert!(time_to_close(half) < Duration::from_secs(5));
        // A keep-alive connection after its answer: closed once idle.
        let mut kept = TcpStream::connect(addr).unwrap();
        kept.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(time_to_close(kept) < Duration::from_secs(5));
        assert!(stats.api.timed_out.load(Ordering::Relaxed) >= 2);
    }

    #[test]
    fn connections_over_the_cap_wait_for_a_free_slot() {
        let (addr, _) = start(Limits {
            header_timeout: Duration::from_secs(1),
            ..limits()
        });
        // Both slots taken by clients that say nothing.
        let a = TcpStream::connect(addr).unwrap();
        let b = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The third is answered only once the first two time out.
        let t = Instant::now();
        assert!(get_small(addr).ends_with("ok\n"));
        assert!(
            t.elapsed() >= Duration::from_millis(700),
            "{:?}",
            t.elapsed()
        );
        drop((a, b));
        // With slots free, at once.
        let t = Instant::now();
        assert!(get_small(addr).ends_with("ok\n"));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_reader_that_stops_reading_is_disconnected() {
        let (addr, stats) = start(limits());
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Read nothing for longer than the stall limit, then drain: the
        // answer ends long before its 64 MiB.
        std::thread::sleep(Duration::from_secs(2));
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        while let Ok(n @ 1..) = c.read(&mut buf) {
            got += n;
        }
        assert!(got < 32 << 20, "read {got} bytes of a stalled answer");
        assert!(stats.api.timed_out.load(Ordering::Relaxed) >= 1);
        // The server still answers.
        assert!(get_small(addr).ends_with("ok\n"));
    }

    #[test]
    fn oversized_request_heads_are_refused() {
        let (addr, _) = start(limits());
        let mut c = TcpStream::connect(addr).unwrap();
        let pad = "a".repeat(64 << 10);
        let _ = c.write_all(format!("GET /small HTTP/1.1\r\nX-Pad: {pad}\r\n\r\n").as_bytes());
        let mut out = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(!out.contains("ok\n"), "{out}");
        assert!(get_small(addr).ends_with("ok\n"));
    }
}
