//! The table of live connections the admin endpoint lists (`/connections`, `/sessions`).
//!
//! Each connection's driver owns an `Arc<LiveConnection>` and updates it with relaxed
//! atomic stores (no lock on the data path); the table's lock is taken only when a
//! connection opens or closes, and while the admin endpoint reads it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hangup_core::SessionId;
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

impl ConnectionState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Open,
            1 => Self::Draining,
            _ => Self::Closing,
        }
    }
}

/// A session as the live table knows it.
#[derive(Debug, Clone)]
pub(crate) struct LiveSession {
    pub device: Box<str>,
    pub id: SessionId,
    pub heartbeat: Duration,
    pub started_at: SystemTime,
}

#[derive(Debug)]
pub(crate) struct LiveConnection {
    pub id: u64,
    pub peer: SocketAddr,
    /// The socket; valid while the connection is in the table (it is removed under the
    /// table's lock before the socket is closed).
    fd: RawFd,
    opened_at: SystemTime,
    opened: Instant,
    /// Milliseconds after `opened` of the last inbound bytes.
    last_inbound_ms: AtomicU64,
    jobs_running: AtomicU32,
    jobs_queued: AtomicU32,
    state: AtomicU8,
    session: Mutex<Option<LiveSession>>,
}

impl LiveConnection {
    pub fn new(id: u64, peer: SocketAddr, fd: RawFd, opened: Instant) -> Self {
        Self {
            id,
            peer,
            fd,
            opened_at: SystemTime::now(),
            opened,
            last_inbound_ms: AtomicU64::new(0),
            jobs_running: AtomicU32::new(0),
            jobs_queued: AtomicU32::new(0),
            state: AtomicU8::new(0),
            session: Mutex::new(None),
        }
    }

    pub fn saw_inbound(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.opened).as_millis() as u64;
        self.last_inbound_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_jobs(&self, running: u64, queued: u64) {
        self.jobs_running.store(running as u32, Ordering::Relaxed);
        self.jobs_queued.store(queued as u32, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: ConnectionState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn set_session(&self, session: Option<LiveSession>) {
        *lock(&self.session) = session;
    }

    /// When the connection was accepted.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// How long the peer has been silent (to the millisecond).
    pub fn silent_for(&self, now: Instant) -> Duration {
        let last =
            self.opened + Duration::from_millis(self.last_inbound_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
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

#[derive(Debug, Default)]
pub(crate) struct LiveTable {
    conns: Mutex<HashMap<u64, Arc<LiveConnection>>>,
}

impl LiveTable {
    pub fn insert(&self, conn: Arc<LiveConnection>) {
        lock(&self.conns).insert(conn.id, conn);
    }

    /// Must be called before the connection's socket is closed.
    pub fn remove(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        let now = Instant::now();
        let conns = lock(&self.conns);
        let mut rows: Vec<_> = conns
            .values()
            .map(|conn| {
                let session = lock(&conn.session).clone();
                // SAFETY: the fd stays open while its connection is in the table, and
                // we hold the table's lock.
                let fd = unsafe { BorrowedFd::borrow_raw(conn.fd) };
                let tcp = hangup::tcp_info(&fd).ok().map(|info| TcpFigures {
                    rtt_us: info.rtt.as_micros() as u64,
                    unacked: info.unacked,
                    retransmits: info.retransmits,
                    total_retrans: info.total_retrans,
                    probes: info.probes,
                    last_data_recv_ms: info.last_data_recv.as_millis() as u64,
                });
                ConnectionSnapshot {
                    id: conn.id,
                    peer: conn.peer.to_string(),
                    device: session.as_ref().map(|s| s.device.to_string()),
                    session: session.as_ref().map(|s| s.id.to_string()),
                    state: ConnectionState::from_u8(conn.state.load(Ordering::Relaxed)),
                    opened_at: humantime::format_rfc3339_millis(conn.opened_at).to_string(),
                    age_ms: now.saturating_duration_since(conn.opened).as_millis() as u64,
                    last_inbound_ms_ago: conn.silent_for(now).as_millis() as u64,
                    jobs_running: conn.jobs_running.load(Ordering::Relaxed),
                    jobs_queued: conn.jobs_queued.load(Ordering::Relaxed),
                    tcp,
                }
            })
            .collect();
        drop(conns);
        rows.sort_by_key(|row| row.id);
        rows
    }

    pub fn sessions(&self) -> Vec<SessionSnapshot> {
        let now = Instant::now();
        let conns = lock(&self.conns);
        let mut rows: Vec<_> = conns
            .values()
            .filter_map(|conn| {
                let session = lock(&conn.session).clone()?;
                Some(SessionSnapshot {
                    device: session.device.to_string(),
                    session: session.id.to_string(),
                    connection: conn.id,
                    peer: conn.peer.to_string(),
                    started_at: humantime::format_rfc3339_millis(session.started_at).to_string(),
                    heartbeat_s: session.heartbeat.as_secs_f64(),
                    last_inbound_ms_ago: conn.silent_for(now).as_millis() as u64,
                    node: None,
                })
            })
            .collect();
        drop(conns);
        rows.sort_by(|a, b| a.device.cmp(&b.device));
        rows
    }
}

/// A poisoned lock only means a panic elsewhere; the table itself stays consistent
/// (every update is a single insert, remove or store).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
