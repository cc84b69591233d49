//! The agent's HTTP server: `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for probes. One port, one server.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::engine::AgentState;
use crate::export::prometheus;

#[derive(Clone)]
struct Ctx {
    registry: Arc<Registry>,
    state: Arc<RwLock<AgentState>>,
}

pub fn router(state: Arc<RwLock<AgentState>>) -> Router {
    let ctx = Ctx {
        registry: Arc::new(prometheus::registry(state.clone())),
        state,
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(ctx)
}

/// Binds `listen` (fails fast with a clear error when the port is taken).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

pub async fn serve(listener: TcpListener, router: Router) -> Result<()> {
    axum::serve(listener, router).await.context("HTTP server")
}

async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    match prometheus::encode(&ctx.registry) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// Ready once the first kernel read has completed.
async fn ready(State(ctx): State<Ctx>) -> impl IntoResponse {
    let polls = ctx.state.read().map(|s| s.polls).unwrap_or(0);
    if polls > 0 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
