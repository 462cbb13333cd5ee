//! Know, fast and for sure, when the other end of a TCP connection is gone, and stop
//! spending work on it.
//!
//! Rust's networking stack has no "peer is gone" signal: a server computing a reply
//! learns that its client left only when it writes, and a crashed peer looks alive for
//! hours with Linux defaults. This crate gives any tokio program that signal:
//!
//! - [`apply_policy`]: keepalive and TCP_USER_TIMEOUT derived from one budget,
//!   dead-after D ([`LivenessPolicy`]), so silent deaths are caught within D;
//! - [`PeerWatch`]: FIN, RST and kernel errors of a socket, told apart, without reading
//!   a byte and without disturbing whoever owns and reads the socket;
//! - [`HalfClose`]: what a FIN means for your protocol — probe with bytes it tolerates,
//!   cancel, or finish — so a client that only half-closed keeps its answer;
//! - [`PeerWatch::cancel_on_hangup`]: a [`CancellationToken`] that fires on hangup,
//!   to hand to CPU work;
//! - [`tcp_info`]: the kernel's view (rtt, unacked, retransmits);
//! - [`client::SessionClient`]: a reconnecting session client (`HELLO` on every
//!   connect, the granted heartbeat, backoff with jitter, `GOAWAY` and takeover), with
//!   the line protocol's codec both ways ([`Command`], [`Reply`]).
//!
//! ```text
//!   your server ──apply_policy──▶ socket options (keepalive, user timeout)
//!        │
//!        ├── PeerWatch::new(&stream) ── private epoll: RDHUP/ERR/HUP only ──▶ Cause
//!        │        └── cancel_on_hangup(token, HalfClose, work) ──▶ token fires
//!        └── hangup_core (sans-IO): policy derivation, protocol codec, timers
//! ```
//!
//! What it does not do: it never reads your data, never decides for you what a FIN
//! means (you choose a [`HalfClose`]), and has no server of its own: the `hangup serve`
//! application (driver, admin endpoint, metrics, presence store) is the separate
//! `hangup-server` crate.
//!
//! A complete example, on loopback: the client hangs up while the server computes, and
//! the computation stops; a client that only half-closed would have kept its answer.
//!
//! ```
//! use std::time::Duration;
//! use hangup::{apply_policy, CancellationToken, Cause, HalfClose, LivenessPolicy, PeerWatch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
//! let (stream, _) = listener.accept().await?;
//! apply_policy(&stream, &LivenessPolicy::from_dead_after(Duration::from_secs(30)))?;
//!
//! let token = CancellationToken::new();
//! let work = tokio::task::spawn_blocking({
//!     let token = token.clone();
//!     move || {
//!         let mut rounds = 0u64;
//!         while !token.is_cancelled() {
//!             rounds += 1; // stands for a slice of real work
//!             std::thread::sleep(Duration::from_micros(50));
//!         }
//!         rounds
//!     }
//! });
//! drop(client); // the client hangs up: FIN, then RST in answer to the probe
//! let mut watch = PeerWatch::new(&stream)?;
//! let (_rounds, cause) = watch.cancel_on_hangup(&token, &HalfClose::probe(b"\n"), work).await;
//! assert_eq!(cause, Some(Cause::PeerClosed));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod client;
pub mod events;
#[cfg(feature = "http")]
pub mod http;
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
pub use watch::{peer_gone, HalfClose, PeerGone, PeerState, PeerWatch};

// For `emit!`, so that its callers need no `tracing` dependency of their own.
#[doc(hidden)]
pub use tracing as __tracing;
