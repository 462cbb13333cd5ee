//! Know, fast and for sure, when the other end of a TCP connection is gone, and stop
//! spending work on it.
//!
//! Rust's networking stack has no "peer is gone" signal: a server computing a reply
//! learns that its client left only when it writes, and a crashed peer looks alive for
//! hours with Linux defaults. This crate gives any tokio program that signal:
//!
//! - [`apply_policy`]: keepalive and TCP_USER_TIMEOUT derived from one budget,
//!   dead-after D ([`LivenessPolicy`]), so silent deaths are caught within D;
//! - [`peer_gone`]: await FIN or RST (EPOLLRDHUP/EPOLLERR readiness) without reading a
//!   byte of the peer's data, with its [`Cause`];
//! - [`cancel_on_hangup`]: a [`CancellationToken`](tokio_util::sync::CancellationToken)
//!   that fires on hangup, to hand to CPU work;
//! - [`tcp_info`]: the kernel's view (rtt, unacked, retransmits);
//! - [`client::SessionClient`]: a reconnecting session client (`HELLO` on every
//!   connect, the granted heartbeat, backoff with jitter, `GOAWAY` and takeover), with
//!   the line protocol's codec both ways ([`Command`], [`Reply`]).
//!
//! The `hangup serve` application (its driver, admin endpoint, metrics and presence
//! store) is the separate `hangup-server` crate.
//!
//! ```text
//!   your server ──apply_policy──▶ socket options (keepalive, user timeout)
//!        │
//!        ├── cancel_on_hangup(stream) ──▶ token ──▶ spawn_blocking(work checks token)
//!        │         └── peer_gone: tokio readiness, no data consumed
//!        └── hangup_core (sans-IO): policy derivation, protocol, timers
//! ```
//!
//! What it does not do: it never reads your data, and never decides for you what a
//! FIN means for your protocol (see [`peer_gone`] on half-close).
//!
//! A complete example, on loopback: the client hangs up while the server computes, and
//! the computation stops.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use hangup::{apply_policy, cancel_on_hangup, Cause, LivenessPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
//! let (server_side, _) = listener.accept().await?;
//! apply_policy(&server_side, &LivenessPolicy::from_dead_after(Duration::from_secs(30)))?;
//!
//! let hangup = cancel_on_hangup(Arc::new(server_side));
//! let token = hangup.token();
//! let work = tokio::task::spawn_blocking(move || {
//!     let mut rounds = 0u64;
//!     while !token.is_cancelled() {
//!         rounds += 1; // stands for a slice of real work
//!         std::thread::sleep(Duration::from_micros(50));
//!     }
//!     rounds
//! });
//! drop(client); // the client hangs up: FIN
//! work.await.unwrap();
//! assert_eq!(hangup.cause(), Some(Cause::PeerClosed));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod client;
pub mod events;
mod socket;
pub mod sys;
mod watch;

pub use hangup_core::{Cause, HalfClosePolicy, Keepalive, KeepaliveTimers, LivenessPolicy};
// The line protocol and the client's heartbeat, for users of [`client::SessionClient`]
// and for servers speaking the protocol themselves.
pub use hangup_core::{
    parse_line, Command, ErrorCode, Frame, Heartbeat, HeartbeatAction, HeartbeatClock, JobId,
    LineDecoder, ParseError, Reply, ReplyParseError, SessionId, StatusCounts, MAX_LINE,
};
pub use socket::{apply_policy, read_liveness, SocketLiveness};
pub use sys::{tcp_info, TcpInfo};
pub use tokio_util::sync::CancellationToken;
pub use watch::{cancel_on_hangup, peer_gone, HangupToken, PeerGone};
