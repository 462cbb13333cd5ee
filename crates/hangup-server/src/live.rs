//! What the admin endpoint lists of the live connections (`/connections`, `/sessions`).
//!
//! There is no table of them beside the I/O threads' slabs: each thread answers for its
//! own connections when asked (reactor.rs), so that nothing on the data path is shared
//! and no connection pays for a second record of itself.

use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Serving.
    Open,
    /// `GOAWAY` was sent: finishing the jobs in flight.
    Draining,
    /// Closing (flushing replies, or cancelling a job first).
    Closing,
}

/// TCP_INFO figures of a live connection.
#[derive(Debug, Clone, Serialize)]
pub struct TcpFigures {
    /// Smoothed round-trip time, µs.
    pub rtt_us: u64,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Retransmissions of the current segment (the RTO backoff count).
    pub retransmits: u8,
    /// Retransmissions over the connection's life.
    pub total_retrans: u32,
    /// Keepalive probes sent and unanswered.
    pub probes: u8,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: u64,
}

/// One row of `/connections`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSnapshot {
    /// The server's connection number.
    pub id: u64,
    /// The peer's address.
    pub peer: String,
    /// The session's device, if the peer said HELLO.
    pub device: Option<String>,
    /// The session id, if any.
    pub session: Option<String>,
    /// Where the connection is in its life.
    pub state: ConnectionState,
    /// When it was accepted (RFC 3339).
    pub opened_at: String,
    /// Milliseconds since it was accepted.
    pub age_ms: u64,
    /// Milliseconds since the peer last sent bytes.
    pub last_inbound_ms_ago: u64,
    /// Jobs running on a worker.
    pub jobs_running: u32,
    /// Jobs waiting behind the running one.
    pub jobs_queued: u32,
    /// The kernel's view, if it could be read.
    pub tcp: Option<TcpFigures>,
}

/// One row of `/sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// The device.
    pub device: String,
    /// The session id.
    pub session: String,
    /// The connection carrying it.
    pub connection: u64,
    /// The peer's address.
    pub peer: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The granted heartbeat, seconds.
    pub heartbeat_s: f64,
    /// Milliseconds since the peer last sent bytes.
    pub last_inbound_ms_ago: u64,
    /// The cluster node serving it (cluster mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A poisoned lock only means a panic elsewhere; the table itself stays consistent
/// (every update is a single insert, remove or store).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
