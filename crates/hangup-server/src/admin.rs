//! The admin endpoint (SPEC §5): `/metrics` (Prometheus text), `/connections` and
//! `/sessions` (JSON), `/healthz`.
//!
//! Bounded whatever its clients do: at most [`ADMIN_MAX_CONNECTIONS`] at once (past it a
//! connection is closed at accept), one request per connection, the request head within
//! [`ADMIN_HEADER_TIMEOUT`] and the whole exchange within [`ADMIN_CONNECTION_TIMEOUT`].
//! On shutdown it stops accepting and waits for the requests in flight at most
//! [`ADMIN_SHUTDOWN_GRACE`], so a half-sent request never holds the server up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;

/// Admin connections served at once; the descriptors they may use are reserved apart
/// from the line protocol's (see `Server::bind`).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin connection may live, request and response included.
pub const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for admin requests in flight.
pub const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves until `stop` is cancelled, then for at most [`ADMIN_SHUTDOWN_GRACE`].
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
    stop: CancellationToken,
) {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/connections", get(connections))
        .route("/sessions", get(sessions))
        .route("/healthz", get(healthz))
        .with_state(shared.clone());
    if let Some(token) = token {
        router = router.layer(axum::middleware::from_fn(move |request, next| {
            require_bearer(token.clone(), request, next)
        }));
    }
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    let cancel_in_flight = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors: wait rather than spin; the line protocol's
                // descriptors are not ours to take.
                tracing::debug!(error = %err, "admin accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.admin_refused.inc();
            tracing::debug!(peer = %peer, "admin connection refused: at the limit");
            drop(stream);
            continue;
        };
        let service = service.clone();
        let cancel = cancel_in_flight.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_one(stream, peer, service, cancel).await;
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(ADMIN_SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        cancel_in_flight.cancel();
        connections.wait().await;
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    cancel: CancellationToken,
) {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = tokio::time::timeout(ADMIN_CONNECTION_TIMEOUT, connection) => match result {
            Ok(Err(err)) => tracing::debug!(peer = %peer, error = %err, "admin connection"),
            Err(_elapsed) => tracing::debug!(peer = %peer, "admin connection timed out"),
            Ok(Ok(())) => {}
        },
        // Shutdown's grace is over: drop the connection.
        () = cancel.cancelled() => {}
    }
}

/// `Authorization: Bearer <token>` or 401.
async fn require_bearer(token: Arc<str>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()));
    if ok {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin endpoint: send Authorization: Bearer <the --admin-token file's content>\n",
        )
            .into_response()
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    // Each I/O thread lists its own connections (TCP_INFO for each, on the thread
    // that owns the socket).
    Json(shared.reactors.connections().await)
}

async fn sessions(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut rows = shared.reactors.sessions().await;
    if let Some(cluster) = &shared.cluster {
        for row in &mut rows {
            row.node = Some(cluster.node.to_string());
        }
    }
    Json(rows)
}

/// 200 while serving; 503 once shutdown began, so that balancers stop sending clients.
async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // Cluster mode adds a line; a node without Redis still serves (local takeover
    // only), so it stays 200 and the balancer keeps it.
    let cluster = shared
        .cluster
        .as_ref()
        .map(|c| c.health_line())
        .unwrap_or_default();
    if shared.draining.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("draining\n{cluster}"),
        )
    } else {
        (StatusCode::OK, format!("ok\n{cluster}"))
    }
}
