//! The API's connection loop: HTTP/1.1 with hyper (over TLS with rustls when
//! `api.tls` is set), bounded so that clients of the metrics port, friendly
//! or not, can neither take the agent's memory nor lock the scraper out.
//!
//! Hand-rolled instead of `axum::serve`, which sets no timer (so hyper's
//! header read timeout never fires), no write timeout and no connection
//! cap: one slowloris client could hold sockets and buffers forever. Here:
//! - accepting never waits. At most [`Limits::connections`] connections are
//!   open at once, and at most [`Limits::per_client`] from one client (an
//!   IPv4 address, or an IPv6 /64). A connection over either budget closes
//!   the oldest *idle* connection within it (one with no request in flight:
//!   a fresh one that has sent nothing or part of a request head, a
//!   keep-alive one between requests, one in its TLS handshake), as nginx
//!   drains its "reusable" connections; over the total budget, first one of
//!   the client holding the most connections. When the total budget is all
//!   busy (slow readers of large answers), that client's oldest connection
//!   goes if it holds more than one connection more than the newcomer; only
//!   otherwise is the new one refused (closed at once). So a thousand idle
//!   sockets, even from the scraper's own address, cost the scraper
//!   nothing: its connection displaces one of them;
//! - a request head (and a TLS handshake) must arrive within
//!   [`Limits::header_timeout`] of the connection waiting for it, which also
//!   closes idle keep-alive connections and bounds slowloris clients;
//! - a response write that makes no progress for [`Limits::write_stall`]
//!   (a scraper that stopped reading) ends the connection and frees its
//!   response;
//! - request heads are capped at [`Limits::max_head_bytes`], so an idle
//!   connection holds at most that buffer (hyper's, plus rustls' records).
//!
//! With a bearer token (`api.auth`), every route but `/healthz` and
//! `/readyz` needs it; a wrong or missing one is answered 401 with a JSON
//! error before the router sees the request. Evictions, refusals, timeouts,
//! failed handshakes and 401s are counted in [`SelfStats::api`].
//!
//! `/metrics` adds its own cap on scrapes in flight (see `super::metrics`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, warn};

use crate::export::SelfStats;

/// How much of the agent one client, and all of them, can hold, and for
/// how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub per_client: usize,
    pub header_timeout: Duration,
    pub write_stall: Duration,
    pub max_head_bytes: usize,
}

/// Two Prometheus replicas, kubelet probes and a few `burnwatch top` need a
/// handful of connections. An idle connection costs ~18 KiB (hyper's read
/// and write buffers, 8 KiB each, the task, the timers), ~29 KiB once it
/// has sent part of a head: 256 of them stay under 8 MiB. One client
/// address gets an eighth of them, so a flood from one host evicts its own
/// connections, not the other clients' keep-alive ones.
pub const LIMITS: Limits = Limits {
    connections: 256,
    per_client: 32,
    // Prometheus sends its request at once; 10 s is slack for a loaded node.
    header_timeout: Duration::from_secs(10),
    // A scraper reading at all (even over a slow link) makes progress
    // within seconds; its own scrape_timeout defaults to 10 s.
    write_stall: Duration::from_secs(20),
    // The API takes only GETs with short query strings.
    max_head_bytes: 16 << 10,
};

/// What the port asks of its clients: a bearer token, TLS; both optional.
#[derive(Clone, Default)]
pub struct Security {
    pub token: Option<Arc<FileBacked<Vec<u8>>>>,
    pub tls: Option<Arc<FileBacked<Arc<rustls::ServerConfig>>>>,
}

/// A value loaded from files and loaded again when one of them changes
/// (checked at most once a second, when the value is used): a rotated
/// Kubernetes Secret (a new `..data` symlink target) or a renewed
/// certificate takes effect without a restart. A file that no longer loads
/// leaves the last good value in place, with a warning.
pub struct FileBacked<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    cached: Mutex<Cached<T>>,
}

struct Cached<T> {
    value: Arc<T>,
    stamps: Vec<Option<(SystemTime, u64, u64)>>,
    checked: Instant,
}

/// How often a [`FileBacked`] value looks at its files.
const RECHECK: Duration = Duration::from_secs(1);

impl<T> FileBacked<T> {
    /// Loads the value now (an error is the caller's: the agent does not
    /// start on a file it cannot use).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = stamps(&paths);
        let value = Arc::new(load()?);
        Ok(FileBacked {
            what,
            paths,
            load: Box::new(load),
            cached: Mutex::new(Cached {
                value,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, loaded again first if a file changed.
    pub fn get(&self) -> Arc<T> {
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.checked.elapsed() >= RECHECK {
            c.checked = Instant::now();
            let now = stamps(&self.paths);
            if now != c.stamps {
                c.stamps = now;
                match (self.load)() {
                    Ok(v) => {
                        c.value = Arc::new(v);
                        tracing::info!("API: {} changed, loaded again", self.what);
                    }
                    Err(e) => warn!(
                        "API: {} changed but cannot be used, keeping the last one: {e}",
                        self.what
                    ),
                }
            }
        }
        c.value.clone()
    }
}

/// (modification time, size, inode) of each path, following symlinks.
fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

/// Serves `router` on `listener` until the listener fails for good.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stats: Arc<SelfStats>,
    limits: Limits,
    security: Security,
) -> Result<()> {
    let registry = Arc::new(Registry::new(limits, stats.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes);
    let service = TowerToHyperService::new(router);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning
                // (as axum::serve does), the error is the node's, not a client's.
                warn!("API server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((conn, evicted)) = registry.admit(client_of(peer.ip())) else {
            // Every connection of this client (or of all) has a request in
            // flight: this one waits for nothing, it is closed now.
            stats.api.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(limits.write_stall));
        let io = Box::pin(io);
        let svc = Svc {
            inner: service.clone(),
            registry: registry.clone(),
            id: conn.id,
            token: security.token.clone(),
            stats: stats.clone(),
        };
        let http = http.clone();
        let tls = security.tls.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let work = async {
                match tls {
                    None => serve_http(io, &http, svc, &stats).await,
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get().as_ref().clone());
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await
                        {
                            Ok(Ok(io)) => serve_http(io, &http, svc, &stats).await,
                            Ok(Err(e)) => {
                                stats.api.tls_failed.fetch_add(1, Ordering::Relaxed);
                                debug!("API connection: TLS handshake failed: {e}");
                            }
                            Err(_) => {
                                stats.api.timed_out.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            };
            tokio::select! {
                () = work => {}
                // Evicted while idle: dropping the connection closes it.
                _ = evicted => debug!("API connection evicted to make room"),
            }
            drop(conn);
        });
    }
}

/// One connection's HTTP/1.1 exchange, counted when it ends on a timeout.
async fn serve_http<I>(
    io: I,
    http: &hyper::server::conn::http1::Builder,
    svc: Svc,
    stats: &SelfStats,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = http.serve_connection(TokioIo::new(io), svc).await {
        if timed_out(&e) {
            stats.api.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        debug!("API connection ended: {e}");
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

/// Whose budget a connection counts against: an IPv4 address (IPv4-mapped
/// IPv6 included), or an IPv6 /64 (one host commonly holds a whole /64).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The open connections: which client each belongs to and whether it has
/// a request in flight, so an over-budget accept can close the oldest idle.
struct Registry {
    limits: Limits,
    stats: Arc<SelfStats>,
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    by_id: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
    next_id: u64,
    /// Orders idle connections: the smallest `idle_since` is the oldest.
    clock: u64,
}

struct Entry {
    client: IpAddr,
    /// Requests in flight (0 or 1 on HTTP/1.1).
    busy: u32,
    idle_since: u64,
    /// Tells the connection's task to close it.
    evict: Option<oneshot::Sender<()>>,
}

impl Registry {
    fn new(limits: Limits, stats: Arc<SelfStats>) -> Self {
        Registry {
            limits,
            stats,
            conns: Mutex::new(Conns::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a connection of `client`, made by evicting idle ones if need
    /// be; `None` when every connection in the full budget is busy.
    fn admit(self: &Arc<Self>, client: IpAddr) -> Option<(ConnGuard, oneshot::Receiver<()>)> {
        let mut c = self.lock();
        if c.per_client.get(&client).copied().unwrap_or(0) >= self.limits.per_client.max(1) {
            if !c.evict_oldest_idle(Some(client)) {
                return None;
            }
            self.stats.api.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if c.by_id.len() >= self.limits.connections.max(1) {
            if !c.make_room_for(client) {
                return None;
            }
            self.stats.api.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        let id = c.next_id;
        c.next_id += 1;
        c.clock += 1;
        let idle_since = c.clock;
        c.by_id.insert(
            id,
            Entry {
                client,
                busy: 0,
                idle_since,
                evict: Some(tx),
            },
        );
        *c.per_client.entry(client).or_insert(0) += 1;
        self.stats
            .api
            .connections
            .store(c.by_id.len() as u64, Ordering::Relaxed);
        Some((
            ConnGuard {
                registry: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// Marks connection `id` busy until the returned guard is dropped.
    fn busy(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(e) = self.lock().by_id.get_mut(&id) {
            e.busy += 1;
        }
        Busy {
            registry: self.clone(),
            id,
        }
    }
}

impl Conns {
    /// Room in a full budget for a connection of `newcomer`, taken from the
    /// client holding the most connections (a flood pays for itself, not
    /// the scraper with its one connection): that client's oldest idle
    /// connection, else the oldest idle one of anybody, else, when that
    /// client holds more than one connection more than the newcomer, its
    /// oldest busy one (a reader too slow to ever finish: only a stalled
    /// write times out). False when none of these exists.
    fn make_room_for(&mut self, newcomer: IpAddr) -> bool {
        let mine = self.per_client.get(&newcomer).copied().unwrap_or(0);
        let Some((&heavy, &held)) = self.per_client.iter().max_by_key(|(_, n)| **n) else {
            return false;
        };
        if self.evict_oldest_idle(Some(heavy)) || self.evict_oldest_idle(None) {
            return true;
        }
        held > mine + 1 && self.evict_oldest(Some(heavy), true)
    }

    /// Closes the connection idle the longest (of `only` this client, if
    /// given); false when there is none.
    fn evict_oldest_idle(&mut self, only: Option<IpAddr>) -> bool {
        self.evict_oldest(only, false)
    }

    /// Closes the oldest connection (of `only` this client, if given) that
    /// is idle, or of any state when `busy_too`; false when there is none.
    fn evict_oldest(&mut self, only: Option<IpAddr>, busy_too: bool) -> bool {
        let victim = self
            .by_id
            .iter()
            .filter(|(_, e)| (busy_too || e.busy == 0) && only.is_none_or(|c| e.client == c))
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(mut e) = self.remove(id)
            && let Some(tx) = e.evict.take()
        {
            let _ = tx.send(());
        }
        true
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.by_id.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&e.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&e.client);
            }
        }
        Some(e)
    }
}

/// An admitted connection: leaves the registry when its task ends (unless
/// it was evicted, which removed it already).
struct ConnGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.registry.lock();
        c.remove(self.id);
        self.registry
            .stats
            .api
            .connections
            .store(c.by_id.len() as u64, Ordering::Relaxed);
    }
}

/// A request in flight on a connection: from its head being read to the
/// last byte of its response handed to the connection (the guard rides in
/// the response body).
struct Busy {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut c = self.registry.lock();
        c.clock += 1;
        let now = c.clock;
        if let Some(e) = c.by_id.get_mut(&self.id) {
            e.busy = e.busy.saturating_sub(1);
            if e.busy == 0 {
                e.idle_since = now;
            }
        }
    }
}

/// A response body that keeps its connection marked busy until it is sent.
struct GuardedBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router behind the connection bookkeeping and the token check.
#[derive(Clone)]
struct Svc {
    inner: TowerToHyperService<Router>,
    registry: Arc<Registry>,
    id: u64,
    token: Option<Arc<FileBacked<Vec<u8>>>>,
    stats: Arc<SelfStats>,
}

type SvcFuture = Pin<Box<dyn Future<Output = Result<Response<GuardedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = SvcFuture;

    fn call(&self, req: Request<Incoming>) -> SvcFuture {
        let busy = self.registry.busy(self.id);
        if let Some(token) = &self.token
            && !is_probe(req.uri().path())
            && !authorized(req.headers(), &token.get())
        {
            self.stats.api.unauthorized.fetch_add(1, Ordering::Relaxed);
            let response = unauthorized().map(|inner| GuardedBody { inner, _busy: busy });
            return Box::pin(std::future::ready(Ok(response)));
        }
        let future = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let response = match future.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| GuardedBody { inner, _busy: busy }))
        })
    }
}

/// The kubelet's probes, which carry no credentials.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Does the request carry `token`: `Authorization: Bearer <token>`, or Basic
/// with the token as the password (any user name; browsers ask for it on
/// the status page)? Compared in constant time, digests of equal length so
/// the token's length does not show either.
pub fn authorized(headers: &HeaderMap, token: &[u8]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
    else {
        return false;
    };
    let presented = match split_scheme(value) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer") => rest.to_vec(),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"basic") => {
            let Some(decoded) = base64_decode(rest) else {
                return false;
            };
            match decoded.iter().position(|b| *b == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            }
        }
        _ => return false,
    };
    let a = Sha256::digest(&presented);
    let b = Sha256::digest(token);
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// `Scheme credentials` -> (scheme, credentials without surrounding spaces).
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = value.iter().position(|b| *b == b' ')?;
    let rest = value[i..].trim_ascii();
    (!rest.is_empty()).then_some((&value[..i], rest))
}

/// Standard base64 with padding (RFC 4648), as Basic credentials use it.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) || s.len() > 8192 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (n, chunk) in s.chunks(4).enumerate() {
        let last = n == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = acc << 6 | value(c)?;
        }
        acc <<= 6 * pad as u32;
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// 401 with a JSON error, inviting Bearer (Prometheus, the CLI) or Basic (a
/// browser on the status page).
fn unauthorized() -> Response<axum::body::Body> {
    let body = serde_json::json!({
        "error": "unauthorized: this agent requires `Authorization: Bearer <token>` (api.auth)"
    });
    let mut r = Response::new(axum::body::Body::from(body.to_string()));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"burnwatch\", Basic realm=\"burnwatch\""),
    );
    r
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
            per_client: 2,
            header_timeout: Duration::from_millis(300),
            write_stall: Duration::from_millis(300),
            max_head_bytes: 8 << 10,
        }
    }

    /// A server with a small and a 64 MiB route on a runtime of its own
    /// thread; returns its address and stats.
    fn start(limits: Limits) -> (std::net::SocketAddr, Arc<SelfStats>) {
        start_secured(limits, Security::default())
    }

    fn start_secured(limits: Limits, security: Security) -> (std::net::SocketAddr, Arc<SelfStats>) {
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
                    .route("/big", get(|| async { vec![b'x'; 64 << 20] }))
                    .route(
                        "/slow",
                        get(|| async {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            "slow\n"
                        }),
                    )
                    .route("/healthz", get(|| async { "ok\n" }));
                serve(listener, router, s, limits, security).await.unwrap();
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

    /// Is the connection closed by the server within `within`?
    fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        c.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        matches!(c.read(&mut buf), Ok(0))
            || matches!(c.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_idle_connection_at_once() {
        let (addr, stats) = start(Limits {
            header_timeout: Duration::from_secs(30),
            ..limits()
        });
        // Both slots taken by clients that say nothing (one half a head).
        let mut a = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut b = TcpStream::connect(addr).unwrap();
        b.write_all(b"GET /small HTTP/1.1\r\nHo").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The third is answered long before any timeout: the oldest idle
        // connection (a) made room, b is still open.
        let t = Instant::now();
        assert!(get_small(addr).ends_with("ok\n"));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(closed_within(&mut a, Duration::from_secs(5)));
        assert!(!closed_within(&mut b, Duration::from_millis(200)));
        assert!(stats.api.evicted.load(Ordering::Relaxed) >= 1);
        // Many more: each evicts one; the open count stays at the cap.
        let held: Vec<_> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        assert!(get_small(addr).ends_with("ok\n"));
        assert!(stats.api.connections.load(Ordering::Relaxed) <= 2);
        drop(held);
    }

    #[test]
    fn connections_with_a_request_in_flight_are_not_evicted() {
        let (addr, stats) = start(Limits {
            connections: 1,
            per_client: 1,
            ..limits()
        });
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The only slot is busy: a new connection is closed, not queued.
        let mut other = TcpStream::connect(addr).unwrap();
        let _ = other.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        other
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = other.read_to_string(&mut out);
        assert!(!out.contains("ok\n"), "{out}");
        assert!(stats.api.refused.load(Ordering::Relaxed) >= 1);
        // The slow request completes.
        let mut out = String::new();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("slow\n"), "{out}");
        // And the slot is free again.
        assert!(get_small(addr).ends_with("ok\n"));
    }

    /// A TCP connection to `addr` from the source address `src`.
    fn connect_from(src: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
        use std::os::fd::FromRawFd;
        let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let std::net::SocketAddr::V4(dst) = addr else {
            panic!("IPv4 only")
        };
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket/bind/connect calls on a descriptor we own,
        // with valid sockaddr_in structs.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let a = sin(src, 0);
            assert_eq!(
                libc::bind(fd, &a as *const _ as *const libc::sockaddr, len),
                0
            );
            let d = sin(dst.ip().octets(), dst.port());
            assert_eq!(
                libc::connect(fd, &d as *const _ as *const libc::sockaddr, len),
                0
            );
            TcpStream::from_raw_fd(fd)
        }
    }

    #[test]
    fn a_full_budget_makes_room_from_the_client_holding_the_most() {
        let (addr, stats) = start(Limits {
            connections: 3,
            per_client: 10,
            header_timeout: Duration::from_secs(30),
            ..limits()
        });
        // The scraper's keep-alive connection, idle between scrapes.
        let mut scraper = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // A flood from another address, every connection busy (a request in
        // flight that the client reads slowly, or not yet).
        let flood: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut c = connect_from([127, 0, 0, 2], addr);
                c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // A new flood connection: the heaviest client has no idle one, the
        // scraper's idle one is the only idle one: it goes (idle first).
        let mut more = connect_from([127, 0, 0, 2], addr);
        assert!(closed_within(&mut scraper, Duration::from_secs(5)));
        more.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Now the flood holds all three, all busy: the scraper's new
        // connection is answered at once, its room taken from the flood.
        let t = Instant::now();
        assert!(get_small(addr).ends_with("ok\n"));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(stats.api.evicted.load(Ordering::Relaxed) >= 2);
        drop(flood);
    }

    #[test]
    fn the_per_client_budget_evicts_within_the_client() {
        let (addr, stats) = start(Limits {
            connections: 100,
            per_client: 1,
            header_timeout: Duration::from_secs(30),
            ..limits()
        });
        let mut a = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(get_small(addr).ends_with("ok\n"));
        assert!(closed_within(&mut a, Duration::from_secs(5)));
        assert_eq!(stats.api.evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn clients_are_ipv4_addresses_or_ipv6_slash_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(client_of(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    }

    fn token_file(token: &str) -> (tempfile::NamedTempFile, Arc<FileBacked<Vec<u8>>>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), token).unwrap();
        let p = f.path().to_path_buf();
        let backed = FileBacked::new("token", vec![p.clone()], move || {
            crate::config::api::read_token(&p)
        })
        .unwrap();
        (f, Arc::new(backed))
    }

    fn get_with(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_token_guards_every_route_but_the_probes() {
        let (file, token) = token_file("s3cret-token\n");
        let (addr, stats) = start_secured(
            limits(),
            Security {
                token: Some(token),
                tls: None,
            },
        );
        let denied = get_with(addr, "/small", None);
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        assert!(
            denied.contains("application/json") && denied.contains("\"error\""),
            "{denied}"
        );
        assert!(
            denied
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{denied}"
        );
        for wrong in [
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "Basic Zm9vOmJhcg==",
            "s3cret-token",
        ] {
            assert!(
                get_with(addr, "/small", Some(wrong)).starts_with("HTTP/1.1 401"),
                "{wrong}"
            );
        }
        assert!(get_with(addr, "/small", Some("Bearer s3cret-token")).ends_with("ok\n"));
        assert!(get_with(addr, "/small", Some("bearer  s3cret-token")).ends_with("ok\n"));
        // Basic, any user: "me:s3cret-token".
        assert!(get_with(addr, "/small", Some("Basic bWU6czNjcmV0LXRva2Vu")).ends_with("ok\n"));
        assert!(get_with(addr, "/healthz", None).ends_with("ok\n"));
        assert!(stats.api.unauthorized.load(Ordering::Relaxed) >= 5);
        // A rotated token takes over (checked at most once a second).
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(file.path(), "rotated-token-of-another-length").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(get_with(addr, "/small", Some("Bearer s3cret-token")).starts_with("HTTP/1.1 401"));
        assert!(
            get_with(
                addr,
                "/small",
                Some("Bearer rotated-token-of-another-length")
            )
            .ends_with("ok\n")
        );
    }

    #[test]
    fn base64_decodes_basic_credentials() {
        assert_eq!(base64_decode(b"Zm9vOmJhcg==").unwrap(), b"foo:bar");
        assert_eq!(base64_decode(b"Zm9vOmJhcmI=").unwrap(), b"foo:barb");
        assert_eq!(base64_decode(b"Zm9vOmJhcmJh").unwrap(), b"foo:barba");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"Zm9=vOmJ").is_none());
        assert!(base64_decode(b"Zm9").is_none());
        assert!(base64_decode(b"Zm9v!mJh").is_none());
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
