//! The bridge's own HTTP listener (`http.listen`, off by default): `GET /healthz` for
//! watchdogs and container health checks, `GET /metrics` for Prometheus. Read-only, no
//! secrets: it reports counters and the reasons of an unhealthy state, nothing else.

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use metrics::{endpoint_label, CommandCounts, Metrics, PollStats, RequestCounts};

/// Binds `addr` (so a taken port fails the start, naming the key) and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("http.listen: cannot listen on {addr}"))?;
    info!(%addr, "HTTP listener: /healthz and /metrics");
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(metrics);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            warn!(error = %err, "HTTP listener stopped");
        }
    }))
}

/// 200 `{"status":"ok",…}` while healthy; 503 with the reasons otherwise.
async fn healthz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let (reasons, body) = metrics.health();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}
