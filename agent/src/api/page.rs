//! The status page at `/`: one HTML page, its CSS and JS, embedded in the binary
//! (`include_str!`) so the agent serves it with no external assets. The page reads the
//! JSON API (`/v1/slos`, `/v1/slos/{slo}/tenants/{tenant}`) and draws the burn-rate
//! sparklines as inline SVG in the browser.

use axum::{Router, http::header, response::IntoResponse, routing::get};

const INDEX_HTML: &str = include_str!("page/index.html");
const STATUS_CSS: &str = include_str!("page/status.css");
const STATUS_JS: &str = include_str!("page/status.js");

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/status.css",
            get(|| asset("text/css; charset=utf-8", STATUS_CSS)),
        )
        .route(
            "/status.js",
            get(|| asset("text/javascript; charset=utf-8", STATUS_JS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Everything is same-origin; the page never loads anything else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
