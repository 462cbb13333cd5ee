//! The admin endpoint (SPEC §5): `/metrics` (Prometheus text), `/connections` and
//! `/sessions` (JSON), `/healthz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serves until `stop` is cancelled.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/connections", get(connections))
        .route("/sessions", get(sessions))
        .route("/healthz", get(healthz))
        .with_state(shared);
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(err) = result {
        tracing::warn!(error = %err, "admin endpoint failed");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

async fn connections(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // TCP_INFO for every socket: a syscall each, kept off the async threads.
    let rows = tokio::task::spawn_blocking(move || shared.live.connections()).await;
    match rows {
        Ok(rows) => Json(rows).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn sessions(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.live.sessions())
}

/// 200 while serving; 503 once shutdown began, so that balancers stop sending clients.
async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}
