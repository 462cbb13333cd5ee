//! The sans-IO core of hangup: everything about "is the peer still there?" that can be
//! decided without touching a socket or reading a clock.
//!
//! ```text
//!            ┌──────────────── hangup-core (this crate) ────────────────┐
//!  D ───────▶│ policy: keepalive, user timeout, write/partial timeouts  │
//!  bytes ───▶│ protocol: bounded line decoder, commands, replies        │──▶ replies, job starts,
//!  FIN/RST ─▶│ connection: jobs, half-close policy, timers, causes      │    cancellations, Close
//!  HELLO ───▶│ session: registry + takeover, heartbeats, device tokens  │
//!  now ─────▶│ job: the SHA-256 chain, cancellable between slices       │
//!            └──────────────────────────────────────────────────────────┘
//!                 driven by the tokio layer in the `hangup` crate
//! ```
//!
//! Features (both default): `job` (the SHA-256 chain, sha2) and `auth` (device tokens,
//! hmac). The embeddable `hangup` library turns both off.
//!
//! What it does not do: sockets, epoll, threads, clocks. Time is passed in as `now`,
//! so every timer is testable on virtual time.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use hangup_core::{Connection, ConnectionConfig, Event, LivenessPolicy, StatusCounts};
//!
//! let policy = LivenessPolicy::from_dead_after(Duration::from_secs(2));
//! let now = Instant::now();
//! let mut conn = Connection::new(ConnectionConfig::new(&policy), now);
//! conn.handle_bytes(now, b"JOB 3\n", &StatusCounts::default);
//! assert_eq!(conn.poll_transmit(), b"ACCEPTED 1\n");
//! assert!(matches!(conn.poll_event(), Some(Event::StartJob { id: 1, rounds: 3, .. })));
//! ```
#![warn(missing_docs)]

#[cfg(feature = "auth")]
mod auth;
mod cause;
mod connection;
mod duration;
#[cfg(feature = "job")]
mod job;
mod policy;
mod protocol;
mod session;
mod timer;

#[cfg(feature = "auth")]
pub use auth::{authorize, device_token, verify_token};
pub use cause::{
    classify_ended_state, classify_readiness, Cause, UnknownCause, TCP_STATE_CLOSE,
    TCP_STATE_CLOSE_WAIT,
};
pub use connection::{
    Acknowledgements, CloseMode, Connection, ConnectionConfig, Event, Interest, QueueBudget,
    DEFAULT_MAX_ROUNDS,
};
pub use duration::{format_duration, parse_duration, DurationError};
#[cfg(feature = "job")]
pub use job::{run_chain, HashChain, ROUNDS_PER_SLICE};
pub use policy::{
    derive_user_timeout, derive_write_timeout, AutoDuration, HalfClosePolicy, Keepalive,
    KeepaliveSetting, KeepaliveTimers, LivenessPolicy, LivenessSettings, PolicyError,
    DEFAULT_DEAD_AFTER, DERIVED_KEEPALIVE_PROBES, FIRST_RETRANSMISSION_ALLOWANCE,
};
pub use protocol::{
    parse_line, valid_device_id, Command, ErrorCode, Frame, JobId, Line, LineDecoder, ParseError,
    Reply, ReplyParseError, StatusCounts, TooLong, DEFAULT_PORT, DEFAULT_SEED, MAX_LINE,
    MAX_SEED_LEN,
};
pub use session::{
    Heartbeat, HeartbeatAction, HeartbeatClock, SessionId, DEFAULT_HEARTBEAT, MAX_HEARTBEAT,
    MIN_HEARTBEAT,
};
#[cfg(feature = "registry")]
pub use session::{Opened, SessionRegistry, SessionSlot};
