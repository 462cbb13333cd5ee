//! Plain hyper / hyper-util: wrap each accepted stream, then give each request the
//! connection's [`RequestHangup`](super::RequestHangup).
//!
//! ```no_run
//! use std::time::Duration;
//! use hangup::http::OnFin;
//! use hangup::LivenessPolicy;
//! use hyper::server::conn::http1;
//! use hyper::service::service_fn;
//!
//! # async fn run() -> std::io::Result<()> {
//! let policy = LivenessPolicy::from_dead_after(Duration::from_secs(30));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let (io, connection) = hangup::http::hyper::wrap(stream, &policy, OnFin::Cancel)?;
//!     tokio::spawn(async move {
//!         let service = service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
//!             let hangup = connection.request();
//!             async move {
//!                 let token = hangup.token();
//!                 let sum = tokio::task::spawn_blocking(move || {
//!                     (0..1_000_000_000u64).take_while(|_| !token.is_cancelled()).sum::<u64>()
//!                 });
//!                 let body = format!("{}\n", sum.await.unwrap());
//!                 Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
//!             }
//!         });
//!         let _ = http1::Builder::new().serve_connection(io, service).await;
//!     });
//! }
//! # }
//! ```

use std::io;

use hangup_core::LivenessPolicy;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Connection, OnFin, WatchedStream};

/// Applies `policy` to an accepted stream and wraps it for hyper: the I/O to serve, and
/// the connection whose [`Connection::request`] each request takes.
pub fn wrap(
    stream: TcpStream,
    policy: &LivenessPolicy,
    on_fin: OnFin,
) -> io::Result<(TokioIo<WatchedStream>, Connection)> {
    let stream = WatchedStream::new(stream, policy, on_fin)?;
    let connection = stream.connection().clone();
    Ok((TokioIo::new(stream), connection))
}
