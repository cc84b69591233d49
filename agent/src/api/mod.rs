//! The agent's HTTP server: `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for probes, the JSON API (`/v1/...`, types in [`types`]) and
//! the status page at `/`. One port, one server.

mod page;
mod server;
pub mod types;
pub mod views;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{
        Path, Query, Request, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::engine::Risk;
use crate::engine::state::AgentState;
use crate::export::{SelfStats, prometheus};

#[derive(Clone)]
struct Ctx {
    registry: Arc<Registry>,
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
    /// The node's host name, shown by the status page and the CLI.
    node: Arc<str>,
    /// Scrapes in flight, from encoding to the last byte sent.
    scrapes: Arc<tokio::sync::Semaphore>,
}

/// Scrapes served at once. Each holds its compressed exposition (2 MiB at
/// 10,000 tenants x 2 SLOs) until the scraper has read it; beyond this,
/// `/metrics` answers 503 at once, as node_exporter does past its
/// `--web.max-requests`. Two Prometheus replicas and a person with curl fit.
const MAX_SCRAPES_IN_FLIGHT: usize = 8;

/// `labels`: the config's `exporters.labels`, added to every series.
pub fn router(
    state: Arc<RwLock<AgentState>>,
    stats: Arc<SelfStats>,
    labels: Vec<(&'static str, String)>,
) -> Router {
    let ctx = Ctx {
        registry: Arc::new(prometheus::registry(state.clone(), stats.clone(), labels)),
        state,
        stats,
        node: Arc::from(node_name()),
        scrapes: Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES_IN_FLIGHT)),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/gate", get(gate))
        .route("/v1/slos", get(slos))
        .route("/v1/slos/{slo}/tenants/{tenant}", get(series_detail))
        .merge(page::routes())
        .route("/v1/slo", get(slo_series))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_errors_under_v1))
        .with_state(ctx)
}

/// Is `path` the JSON API's?
fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// A JSON error (`{"error": "..."}`) with `status`.
fn json_error(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(types::ApiError {
            error: error.into(),
        }),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if is_v1(uri.path()) {
        json_error(
            StatusCode::NOT_FOUND,
            format!("no such API route: {}", uri.path()),
        )
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    let text = format!("method not allowed on {}: the API takes GET", uri.path());
    if is_v1(uri.path()) {
        json_error(StatusCode::METHOD_NOT_ALLOWED, text)
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, text + "\n").into_response()
    }
}

/// Every error answer under `/v1` is JSON, whoever produced it (an
/// extractor's rejection, a fallback, a handler): a plain-text error body
/// becomes the `error` string. Bodies are small (errors), read up to 64 KiB.
async fn json_errors_under_v1(req: Request, next: Next) -> Response {
    if !is_v1(req.uri().path()) {
        return next.run(req).await;
    }
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let text = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    json_error(status, text)
}

/// A query string that does not fit: 400 with what is wrong, in JSON.
fn bad_query(e: &QueryRejection) -> Response {
    json_error(StatusCode::BAD_REQUEST, e.body_text())
}

/// Binds `listen` (fails fast with a clear error when the port is taken).
/// Raises the soft open-file limit to the hard one first: the API holds up
/// to [`server::LIMITS`]`.connections` sockets beside the kernel maps'
/// descriptors, more than the usual soft limit of 1024 leaves room for.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    raise_nofile_limit();
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct of the process's own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    "cannot raise the open-file limit from {old}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Serves the API with the connection limits of [`server::LIMITS`] and the
/// config's `api` section (token, TLS; both read again when their files
/// change).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stats: Arc<SelfStats>,
    api: crate::config::api::Api,
) -> Result<()> {
    server::serve(listener, router, stats, server::LIMITS, security(&api)?)
        .await
        .context("HTTP server")
}

/// The server's view of `api`: the token and the TLS config, loaded now
/// (the config was validated: an error here is a file changed since).
fn security(api: &crate::config::api::Api) -> Result<server::Security> {
    use crate::config::api;
    let token = match &api.auth {
        Some(a) => {
            let path = a.bearer_token_file.clone();
            Some(Arc::new(
                server::FileBacked::new(
                    "api.auth.bearer_token_file",
                    vec![path.clone()],
                    move || api::read_token(&path),
                )
                .map_err(|e| anyhow::anyhow!("api.auth.bearer_token_file: {e}"))?,
            ))
        }
        None => None,
    };
    let tls = match &api.tls {
        Some(t) => {
            let files = vec![t.cert_file.clone(), t.key_file.clone()];
            let t = t.clone();
            Some(Arc::new(
                server::FileBacked::new("api.tls", files, move || {
                    api::load_tls(&t).map_err(|(field, m)| format!("{field}: {m}"))
                })
                .map_err(|e| anyhow::anyhow!("api.tls: {e}"))?,
            ))
        }
        None => None,
    };
    Ok(server::Security { token, tls })
}

/// OpenMetrics when the scraper asks for it, the classic text format
/// otherwise; gzip when it accepts it (Prometheus does). Encoded on the
/// blocking pool: at 10,000 tenants a scrape is tens of megabytes of text
/// and must not stall the runtime's other tasks (OTLP, alert pushes).
///
/// The exposition is always encoded compressed (see [`encode_scrape`]); a
/// scraper that does not accept gzip (curl, a test) gets it inflated on the
/// fly, a chunk at a time. So no scrape ever holds the whole text: at
/// 10,000 tenants x 2 SLOs that text is 41 MiB, the compressed form 2 MiB,
/// and holding the text was most of the agent's memory peak.
async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> impl IntoResponse {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let openmetrics = prometheus::wants_openmetrics(header(header::ACCEPT));
    let gzip = header(header::ACCEPT_ENCODING).is_some_and(|v| v.contains("gzip"));
    let Ok(permit) = ctx.scrapes.clone().try_acquire_owned() else {
        ctx.stats
            .api
            .scrapes_refused
            .fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many scrapes in flight\n",
        )
            .into_response();
    };
    let encoded = tokio::task::spawn_blocking(move || encode_scrape(&ctx, openmetrics)).await;
    // Not awaited: the scraper need not wait for it.
    tokio::task::spawn_blocking(release_freed_memory);
    let Ok(Ok((content_type, compressed))) = encoded else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
    };
    let content_type = [(header::CONTENT_TYPE, content_type)];
    // The body holds the permit: it is released when the last byte is sent
    // or the connection ends, not when this handler returns.
    let hold = move |chunk| {
        let _ = &permit;
        chunk
    };
    if gzip {
        let encoding = [(header::CONTENT_ENCODING, "gzip")];
        let size = [(header::CONTENT_LENGTH, compressed.len().to_string())];
        let whole = futures::stream::once(std::future::ready(Ok::<_, std::io::Error>(
            bytes::Bytes::from(compressed),
        )));
        let body = axum::body::Body::from_stream(futures::StreamExt::map(whole, hold));
        (StatusCode::OK, content_type, encoding, size, body).into_response()
    } else {
        let chunks = futures::StreamExt::map(inflated_chunks(compressed), hold);
        (
            StatusCode::OK,
            content_type,
            axum::body::Body::from_stream(chunks),
        )
            .into_response()
    }
}

/// Gives the pages of freed heap memory back to the kernel. A scrape's
/// transient buffers (encoder, the previous scrape's compressed bytes) are
/// freed, but glibc keeps the pages: scraped every second, RSS crept 3-4 MiB
/// over 90 s while the live heap stayed flat (heaptrack, 10,000 tenants x 2
/// SLOs: 45.90 MB between scrapes at 30 s, 45.94 MB at 100 s). Once per
/// scrape, after its encoding: RSS by third of a 90 s run went from 56.8 /
/// 58.9 / 60.5 MiB to 55.3 / 55.6 / 55.9 MiB (`cargo xtask bench --only
/// scrape`).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One scrape's exposition, gzipped: (content type, bytes). The state's
/// read lock is held only while encoding (the collectors take it), never
/// while a scraper reads: a slow scraper cannot stall the engine's poll.
fn encode_scrape(ctx: &Ctx, openmetrics: bool) -> Result<(&'static str, Vec<u8>), std::io::Error> {
    let started = std::time::Instant::now();
    let content_type = if openmetrics {
        prometheus::CONTENT_TYPE
    } else {
        prometheus::CONTENT_TYPE_TEXT
    };
    // The fastest level: metrics text compresses ~20x even so, and the
    // scrape's CPU stays dominated by encoding, not compressing. Sized from
    // the last scrape: no doubling growth on the way. The encoder writes in
    // small pieces: buffer them before the deflater.
    let last = ctx.stats.scrape_bytes.load(Ordering::Relaxed) as usize;
    let z =
        flate2::write::GzEncoder::new(Vec::with_capacity(last / 16), flate2::Compression::fast());
    let mut w =
        prometheus::ScrapeWriter::new(std::io::BufWriter::with_capacity(64 << 10, z), !openmetrics);
    prometheus::encode_into(&ctx.registry, &mut w)?;
    let (buffered, written) = w.finish()?;
    let compressed = buffered
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish()?;
    ctx.stats.scrape_bytes.store(written, Ordering::Relaxed);
    ctx.stats
        .scrape_ns
        .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok((content_type, compressed))
}

/// The text of a gzipped exposition, in chunks of at most
/// [`INFLATE_CHUNK`] bytes, each inflated when the scraper is ready for it.
/// Inflated on the runtime's thread, not the blocking pool: a chunk is a
/// fraction of a millisecond of CPU, and a scraper that stops reading then
/// holds only the compressed bytes and the decoder, never a thread.
fn inflated_chunks(
    compressed: Vec<u8>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let text = flate2::read::GzDecoder::new(std::io::Cursor::new(compressed));
    futures::stream::unfold(Some(text), |text| async move {
        let mut text = text?;
        let mut chunk = bytes::BytesMut::zeroed(INFLATE_CHUNK);
        match std::io::Read::read(&mut text, &mut chunk) {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(chunk.freeze()), Some(text)))
            }
            // Ends the body after the error: the scraper sees a cut response.
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Bytes of text per chunk of a plain (not gzipped) scrape.
const INFLATE_CHUNK: usize = 64 << 10;

/// Ready once the first kernel read has completed.
async fn ready(State(ctx): State<Ctx>) -> impl IntoResponse {
    // Not ready either while the kernel side is not sound (probe::guard):
    // the reason is the body.
    let (polls, trouble) = ctx
        .state
        .read()
        .map(|s| (s.polls, s.kernel_trouble.clone()))
        .unwrap_or((0, None));
    match trouble {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        None if polls > 0 => (StatusCode::OK, "ready\n".to_string()),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string()),
    }
}

#[derive(serde::Deserialize)]
struct GateQuery {
    slo: String,
    tenant: String,
    #[serde(default = "default_risk")]
    risk: Risk,
}

fn default_risk() -> Risk {
    Risk::Medium
}

/// The release gate: may a change of this risk ship for this (slo, tenant)?
/// `GET /v1/gate?slo=S&tenant=T&risk=low|medium|high` -> JSON decision.
async fn gate(State(ctx): State<Ctx>, q: Result<Query<GateQuery>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(&e),
    };
    let st = ctx.state.read().unwrap_or_else(|e| e.into_inner());
    let Some(id) = st.engine.slo_id(&q.slo) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no SLO named {:?}", q.slo)})),
        )
            .into_response();
    };
    match st.gate(id, &q.tenant, q.risk) {
        Ok(d) => Json(d).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Every SLO and (SLO, tenant) series, sorted by burn.
async fn slos(State(ctx): State<Ctx>) -> impl IntoResponse {
    let st = ctx.state.read().unwrap_or_else(|e| e.into_inner());
    Json(views::slos(&st, &ctx.node))
}

/// One series with its windows and burn-rate history.
async fn series_detail(
    State(ctx): State<Ctx>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (slo, tenant) = match path {
        Ok(Path(p)) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let st = ctx.state.read().unwrap_or_else(|e| e.into_inner());
    match views::detail(&st, &ctx.node, &slo, &tenant) {
        Ok(d) => Json(d).into_response(),
        Err(error) => (StatusCode::NOT_FOUND, Json(types::ApiError { error })).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct SeriesQuery {
    slo: String,
    tenant: String,
}

/// One (SLO, tenant) series as the engine holds it: windows' good and bad
/// counts, burn rates, budget. `GET /v1/slo?slo=S&tenant=T` -> JSON.
async fn slo_series(
    State(ctx): State<Ctx>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(&e),
    };
    let st = ctx.state.read().unwrap_or_else(|e| e.into_inner());
    let snapshot = st
        .engine
        .slo_id(&q.slo)
        .and_then(|id| st.engine.snapshot(st.now, id, &q.tenant));
    match snapshot {
        Some(s) => Json(serde_json::to_value(&s).unwrap_or_default()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such SLO or no data for this tenant"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use futures::StreamExt as _;

    use super::*;

    /// A plain scrape's body is the whole text, in order, in chunks no
    /// larger than `INFLATE_CHUNK`, whatever the text's size.
    #[tokio::test]
    async fn inflated_chunks_give_back_the_whole_text() {
        for len in [
            0usize,
            1,
            INFLATE_CHUNK - 1,
            INFLATE_CHUNK,
            5 * INFLATE_CHUNK + 17,
        ] {
            let text: Vec<u8> = (0..len)
                .map(|i| b"burnwatch_http_requests_total 1\n"[i % 32])
                .collect();
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&text).unwrap();
            let chunks: Vec<_> = inflated_chunks(z.finish().unwrap()).collect().await;
            let mut back = Vec::new();
            for chunk in chunks {
                let chunk = chunk.unwrap();
                assert!(!chunk.is_empty() && chunk.len() <= INFLATE_CHUNK);
                back.extend_from_slice(&chunk);
            }
            assert_eq!(back, text, "{len} bytes");
        }
    }

    /// Bytes that are not gzip end the body with an error, not a panic.
    #[tokio::test]
    async fn corrupt_input_ends_the_body_with_an_error() {
        let chunks: Vec<_> = inflated_chunks(b"not gzip at all".to_vec()).collect().await;
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].is_err());
    }
}
