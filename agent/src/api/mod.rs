//! The agent's HTTP server: `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for probes. One port, one server.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::engine::Risk;
use crate::engine::state::AgentState;
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
        .route("/v1/gate", get(gate))
        .route("/v1/slo", get(slo_series))
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
async fn gate(State(ctx): State<Ctx>, Query(q): Query<GateQuery>) -> impl IntoResponse {
    let st = ctx.state.read().unwrap_or_else(|e| e.into_inner());
    let Some(id) = st.engine.slo_id(&q.slo) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no SLO named {:?}", q.slo)})),
        )
            .into_response();
    };
    match st.engine.gate(st.now, id, &q.tenant, q.risk) {
        Ok(d) => Json(d).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct SeriesQuery {
    slo: String,
    tenant: String,
}

/// One (SLO, tenant) series as the engine holds it: windows' good and bad
/// counts, burn rates, budget. `GET /v1/slo?slo=S&tenant=T` -> JSON.
async fn slo_series(State(ctx): State<Ctx>, Query(q): Query<SeriesQuery>) -> impl IntoResponse {
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
