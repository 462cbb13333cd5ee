//! axum: a listener that applies the liveness policy and watches each connection, an
//! extractor with the request's hangup token, and per-route middleware that drops the
//! handler on hangup or lets it finish.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{middleware, routing::get, Router};
//! use hangup::http::axum::{drop_on_hangup, Hangup, HangupListener};
//! use hangup::http::Connection;
//! use hangup::LivenessPolicy;
//!
//! async fn report(hangup: Hangup) -> String {
//!     let token = hangup.token();
//!     let rows = tokio::task::spawn_blocking(move || {
//!         let mut rows = 0u64;
//!         while rows < 1_000_000_000 && !token.is_cancelled() {
//!             rows += 1; // a slice of real work
//!         }
//!         rows
//!     });
//!     format!("{} rows\n", rows.await.unwrap())
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new()
//!     .route("/report", get(report))
//!     .route("/stream", get(|| async { "…" }).layer(middleware::from_fn(drop_on_hangup)));
//! let policy = LivenessPolicy::from_dead_after(Duration::from_secs(30));
//! let listener = HangupListener::bind("127.0.0.1:3000", policy).await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<Connection>()).await
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use hangup_core::{Cause, LivenessPolicy};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio_util::sync::CancellationToken;

use super::{Connection, OnFin, RequestHangup, WatchedStream};

/// A TCP listener for `axum::serve`: applies the [`LivenessPolicy`] to every accepted
/// socket and wraps it in a [`WatchedStream`].
///
/// Serve with `into_make_service_with_connect_info::<hangup::http::Connection>()` so
/// that [`Hangup`] finds its connection.
#[derive(Debug)]
pub struct HangupListener {
    listener: TcpListener,
    policy: LivenessPolicy,
    on_fin: OnFin,
}

impl HangupListener {
    /// Binds `addr`.
    pub async fn bind(addr: impl ToSocketAddrs, policy: LivenessPolicy) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, policy))
    }

    /// Wraps a bound listener.
    pub fn new(listener: TcpListener, policy: LivenessPolicy) -> Self {
        Self {
            listener,
            policy,
            on_fin: OnFin::default(),
        }
    }

    /// What a client's FIN means (default [`OnFin::Cancel`]).
    pub fn on_fin(mut self, on_fin: OnFin) -> Self {
        self.on_fin = on_fin;
        self
    }
}

impl Listener for HangupListener {
    type Io = WatchedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: wait instead of spinning, as axum's own
                    // listener does.
                    tracing::warn!(target: crate::events::TARGET, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match WatchedStream::new(stream, &self.policy, self.on_fin) {
                Ok(stream) => return (stream, addr),
                // The peer is already gone (ENOTCONN) or the options were refused.
                Err(err) => {
                    tracing::debug!(target: crate::events::TARGET, error = %err, "connection dropped at accept")
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

impl Connected<IncomingStream<'_, HangupListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, HangupListener>) -> Self {
        stream.io().connection().clone()
    }
}

/// The extractor: the request's hangup token, which fires when the client hangs up
/// (FIN or RST, also with pipelined requests or an unread body buffered), when the
/// connection is closed, and when the handler future is dropped.
#[derive(Debug)]
pub struct Hangup(pub RequestHangup);

impl Hangup {
    /// A clone of the token, to hand to work.
    pub fn token(&self) -> CancellationToken {
        self.0.token()
    }

    /// Why the client went away, once it has.
    pub fn cause(&self) -> Option<Cause> {
        self.0.cause()
    }

    /// Resolves when the token fires.
    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }
}

/// [`Hangup`] was used without [`HangupListener`] and
/// `into_make_service_with_connect_info::<hangup::http::Connection>()`.
#[derive(Debug)]
pub struct MissingConnection;

impl IntoResponse for MissingConnection {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "hangup::http::axum::Hangup needs HangupListener and \
             into_make_service_with_connect_info::<hangup::http::Connection>()\n",
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Hangup {
    type Rejection = MissingConnection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ConnectInfo(connection) = parts
            .extensions
            .get::<ConnectInfo<Connection>>()
            .ok_or(MissingConnection)?;
        Ok(Hangup(connection.request()))
    }
}

/// The status a handler dropped on hangup answers with; nobody reads it (nginx's 499,
/// "client closed request", in the logs of whoever wraps this).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Route middleware (`middleware::from_fn(drop_on_hangup)`): the handler future is
/// dropped the moment the client hangs up, also when hyper would not notice (pipelined
/// bytes, unread body).
pub async fn drop_on_hangup(hangup: Hangup, request: Request, next: Next) -> Response {
    match hangup.0.run(next.run(request)).await {
        Ok(response) => response,
        Err(_cause) => StatusCode::from_u16(CLIENT_CLOSED_REQUEST)
            .unwrap_or(StatusCode::BAD_REQUEST)
            .into_response(),
    }
}

/// Route middleware (`middleware::from_fn(finish_detached)`): the handler runs in a
/// task of its own and finishes even if the client hangs up and hyper drops the
/// request (side effects complete; a [`Hangup`] token inside still fires).
pub async fn finish_detached(request: Request, next: Next) -> Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(_panicked) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
