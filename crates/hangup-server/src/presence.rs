//! The presence store: every session, when it started, when its peer was last heard
//! from, when and why it ended — in SQLite under the server's data directory (SPEC §4).
//!
//! ```text
//!  tokio tasks ── PresenceRecorder::{session_started, seen, session_ended}
//!                        │  lock, merge into one entry per session, unlock
//!                        ▼
//!                 Mutex<Pending>  (≤ one entry per session in play)
//!                        │  every ~100 ms, or when woken
//!                        ▼
//!                 writer thread ── one transaction ──▶ <data_dir>/presence.sqlite3
//! ```
//!
//! Connection handling never waits for the disk: the recorder methods only merge an
//! event into the pending map under a mutex held for a map lookup, and a dedicated writer
//! thread owns the store's read-write SQLite connection. Nothing queues per event: a
//! thousand heartbeats of one session are one pending entry, so the memory waiting
//! for the disk is bounded by the sessions alive plus those ended since the last
//! flush, however slow the disk is. If a write fails the entries are merged back and
//! retried; they stay bounded the same way.
//!
//! Crash recovery: every row names its owner (boot id, pid and the process start
//! time, so a reused pid is not mistaken for the old server). [`PresenceStore::open`]
//! closes every open session whose owner is no longer running with cause
//! [`Cause::Shutdown`] and the restart time, and leaves alone the sessions of other
//! live servers sharing the data directory.
//!
//! ```
//! use std::time::SystemTime;
//! use hangup_server::presence::{query, PresenceFilter, PresenceStore};
//! use hangup::Cause;
//!
//! # fn main() -> Result<(), hangup_server::presence::PresenceError> {
//! # let dir = std::env::temp_dir().join(format!("hangup-presence-doc-{}", std::process::id()));
//! let (store, _recovery) = PresenceStore::open(&dir)?;
//! let recorder = store.recorder(); // clone it into every connection task
//! recorder.session_started(7, "sensor-1", "127.0.0.1:40000".parse().unwrap(), SystemTime::now());
//! recorder.seen(7, SystemTime::now());
//! recorder.session_ended(7, SystemTime::now(), Cause::PeerClosed);
//! store.close()?; // flushes what is pending
//!
//! let rows = query(&dir, &PresenceFilter { device: Some("sensor-1".into()), ..Default::default() })?;
//! assert_eq!(rows[0].cause, Some(Cause::PeerClosed));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangup_core::Cause;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Serialize, Serializer};

/// The data directory `hangup serve` and `hangup presence` use unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./hangup-data";

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "presence.sqlite3";

/// The schema this code writes; stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// How often the writer commits what is pending when nobody asks it to sooner.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Pending entries at which a recorder wakes the writer early, so a storm of new
/// sessions is written in steady batches instead of one large one every interval.
const WAKE_AT_PENDING: usize = 4096;

/// How long a connection waits for another server's write lock on the shared file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache for the writer, KiB (its default is 2 000). The kernel's page
/// cache holds the database file anyway, so a page the writer lacks costs one `pread`
/// of memory the kernel already has; at 15 000 sessions the default cache filled up
/// and was a seventh of the server's memory per session.
const PAGE_CACHE_KIB: i64 = 256;

/// Attempts at the final flush in [`PresenceStore::close`] before giving up.
const CLOSE_ATTEMPTS: u32 = 3;

/// Why the presence store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The data directory could not be created.
    #[error("could not create the data directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The data directory exists but this process cannot write there (a read-only
    /// filesystem, or permissions).
    #[error(
        "the data directory {} is not writable ({source}); the server records sessions there: \
         make it writable or choose another with --data-dir",
        path.display()
    )]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// There is no presence database where a reader looked for one.
    #[error("no presence database at {}", path.display())]
    NotFound {
        /// The database file that does not exist.
        path: PathBuf,
    },
    /// SQLite failed while opening, migrating, recovering or reading the database.
    #[error("presence database {}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer hangup with a schema this one cannot read.
    #[error(
        "presence database {} has schema version {found}; this hangup knows up to {SCHEMA_VERSION}",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// A stored row could not be decoded (a value outside what this code writes).
    #[error("presence database {}: bad row for session {session}: {reason}", path.display())]
    BadRow {
        /// The database file.
        path: PathBuf,
        /// The session column of the row.
        session: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The writer could not commit pending sessions; they are still pending (or, after
    /// [`PresenceStore::close`], lost — the count says how many).
    #[error("could not write {pending} pending presence entries: {message}")]
    Write {
        /// Entries that were not written.
        pending: usize,
        /// SQLite's error for the last attempt.
        message: String,
    },
    /// The writer thread could not be started.
    #[error("could not start the presence writer thread")]
    Spawn(#[source] io::Error),
    /// The writer thread panicked; what it had pending is lost.
    #[error("the presence writer thread panicked")]
    WriterPanicked,
}

/// What [`PresenceStore::open`] found left over from servers that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Sessions that were still open, owned by a process that is gone, and are now
    /// closed with cause [`Cause::Shutdown`] and `ended_at` = [`Recovery::at`].
    pub closed_sessions: u64,
    /// The restart time written as their `ended_at`.
    pub at: SystemTime,
}

/// Counters of the recorder and writer, for benchmarks and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PresenceStats {
    /// Entries waiting for the writer now (at most one per session).
    pub pending: usize,
    /// The most entries ever waiting at once.
    pub max_pending: usize,
    /// Rows inserted or updated, over all committed batches.
    pub rows_written: u64,
    /// Transactions committed.
    pub batches: u64,
    /// How long the last committed transaction took, in microseconds.
    pub last_batch_micros: u64,
    /// The longest committed transaction, in microseconds.
    pub max_batch_micros: u64,
    /// Transactions that failed and whose entries were kept for the next try.
    pub failed_batches: u64,
    /// `seen`/`session_ended` for a session the database does not have open (never
    /// started, or already ended); dropped.
    pub orphan_updates: u64,
    /// `session_started` for a session id already in the database; the second start is
    /// not recorded (session ids must be unique across restarts and servers).
    pub duplicate_sessions: u64,
    /// Events recorded after [`PresenceStore::close`]; dropped.
    pub dropped_after_close: u64,
}

/// Which sessions [`query`] (and the cluster's [`crate::cluster::query`]) returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceFilter {
    /// Only this device's sessions.
    pub device: Option<String>,
    /// Only sessions that are online (see the rows' `online`): here, not ended and
    /// recorded by a server that is still running; in the cluster, the device's owner
    /// in Redis with its node's lease alive.
    pub online_only: bool,
    /// At most this many rows (the newest).
    pub limit: Option<usize>,
}

/// One session as stored, newest first from [`query`].
///
/// In JSON, times are RFC 3339 strings in UTC with milliseconds, `ended_at` and
/// `cause` are `null` while the session is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// The session id: 16 lowercase hex digits.
    pub session: String,
    /// The device id from `HELLO`.
    pub device: String,
    /// The peer's address, as recorded.
    pub peer: String,
    /// True when the session has not ended and the server that recorded it is still
    /// running. An open session of a server that died is not online: the next start of
    /// a server on this data directory closes it with cause `shutdown`.
    pub online: bool,
    /// When the session started.
    #[serde(serialize_with = "rfc3339_millis")]
    pub connected_at: SystemTime,
    /// When the peer was last heard from (`connected_at` until its first heartbeat).
    #[serde(serialize_with = "rfc3339_millis")]
    pub last_seen: SystemTime,
    /// When the session ended; `None` while open.
    #[serde(serialize_with = "optional_rfc3339_millis")]
    pub ended_at: Option<SystemTime>,
    /// Why it ended; `None` while open.
    pub cause: Option<Cause>,
    /// The pid of the server process that recorded the session.
    pub server_pid: u32,
}

pub(crate) fn rfc3339_millis<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

pub(crate) fn optional_rfc3339_millis<S: Serializer>(
    time: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339_millis(time, s),
        None => s.serialize_none(),
    }
}

/// The session id as stored: 16 lowercase hex digits, so text order is numeric order.
pub fn session_key(session: u64) -> String {
    format!("{session:016x}")
}

/// Unix milliseconds; times before 1970 are negative.
fn unix_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn from_unix_millis(millis: i64) -> SystemTime {
    if millis >= 0 {
        UNIX_EPOCH + Duration::from_millis(millis.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(millis.unsigned_abs())
    }
}

/// The SQL that creates schema version 1 from an empty database.
const SCHEMA_V1: &str = "
CREATE TABLE sessions (
    session      TEXT PRIMARY KEY NOT NULL,  -- 16 lowercase hex digits
    device       TEXT NOT NULL,
    peer         TEXT NOT NULL,
    connected_at INTEGER NOT NULL,           -- Unix milliseconds
    last_seen    INTEGER NOT NULL,           -- Unix milliseconds
    ended_at     INTEGER,                    -- Unix milliseconds; NULL while open
    cause        TEXT,                       -- hangup_core::Cause name; NULL while open
    owner_boot   TEXT NOT NULL,              -- /proc/sys/kernel/random/boot_id
    owner_pid    INTEGER NOT NULL,
    owner_start  INTEGER NOT NULL,           -- /proc/<pid>/stat field 22 (clock ticks)
    CHECK ((ended_at IS NULL) = (cause IS NULL))
) WITHOUT ROWID;
CREATE INDEX sessions_by_device ON sessions (device, connected_at);
CREATE INDEX sessions_by_connected ON sessions (connected_at);
CREATE INDEX sessions_open ON sessions (owner_boot, owner_pid, owner_start)
    WHERE ended_at IS NULL;
";

/// The SQL that brings schema version 1 to version 2: an open session's heartbeats go
/// to a narrow table of their own, folded into `sessions.last_seen` when the session
/// ends (or by recovery) and then deleted. Rewriting a 30-byte row there instead of
/// the session's wide one touches a fifth of the pages per batch of heartbeats.
const SCHEMA_V2: &str = "
CREATE TABLE heartbeats (
    session   TEXT PRIMARY KEY NOT NULL,     -- an open session of `sessions`
    last_seen INTEGER NOT NULL               -- Unix milliseconds
) WITHOUT ROWID;
CREATE VIEW sessions_now AS
    SELECT s.session, s.device, s.peer, s.connected_at,
           CASE WHEN s.ended_at IS NULL AND h.last_seen > s.last_seen
                THEN h.last_seen ELSE s.last_seen END AS last_seen,
           s.ended_at, s.cause, s.owner_boot, s.owner_pid, s.owner_start
    FROM sessions s LEFT JOIN heartbeats h ON h.session = s.session;
";

/// How often the writer drops heartbeat rows whose session has ended (a heartbeat that
/// raced a takeover's end); the end of a session drops its own row at once.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The process that writes rows: enough to tell later whether it is still running.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Owner {
    boot: String,
    pid: u32,
    start: u64,
}

impl Owner {
    fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            boot: process::boot_id(),
            pid,
            start: process::start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this owner is a running process other than us. Our own pid counts as
    /// gone: a store opened again in this process replaces the earlier one.
    fn is_alive_other(&self, me: &Owner) -> bool {
        if self.pid == me.pid || self.boot != me.boot {
            return false;
        }
        process::start_time(self.pid) == Some(self.start)
    }

    /// Whether the process that recorded a row is still running (ourselves included).
    fn is_running(&self, me: &Owner) -> bool {
        *self == *me || self.is_alive_other(me)
    }
}

/// Process identity from procfs, with a fallback for systems without it.
mod process {
    /// The kernel's id for this boot: pids and start times only compare within one.
    #[cfg(target_os = "linux")]
    pub(super) fn boot_id() -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default()
    }

    /// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22);
    /// `None` if there is no such process or it is a zombie (dead, not yet reaped).
    #[cfg(target_os = "linux")]
    pub(super) fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may itself contain spaces
        // and parentheses; the fields after its last `)` start at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        // Field 3 was `state`; field 22 is 18 further on.
        fields.nth(18)?.parse().ok()
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn boot_id() -> String {
        String::new()
    }

    /// Without procfs a pid is all we can check: `kill(pid, 0)` says whether it exists.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn start_time(pid: u32) -> Option<u64> {
        let pid = libc::pid_t::try_from(pid).ok()?;
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let exists = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        exists.then_some(0)
    }
}

/// What is known about one session and not yet on disk: its start, its latest
/// heartbeat and its end, merged, whatever order they arrived in.
#[derive(Debug, Clone, Default)]
struct PendingEntry {
    /// Boxed: most entries are a heartbeat's `last_seen` alone, and a map of them per
    /// batch is 48-byte buckets instead of 96.
    start: Option<Box<Start>>,
    last_seen: Option<i64>,
    end: Option<(i64, Cause)>,
}

#[derive(Debug, Clone)]
struct Start {
    device: String,
    peer: String,
    connected_at: i64,
}

impl PendingEntry {
    /// Folds `newer` (recorded after `self`) into `self`.
    fn merge(&mut self, newer: PendingEntry) {
        if self.start.is_none() {
            self.start = newer.start;
        }
        self.last_seen = self.last_seen.max(newer.last_seen);
        if self.end.is_none() {
            self.end = newer.end;
        }
    }
}

/// Everything shared between the recorders and the writer, behind one mutex.
#[derive(Debug, Default)]
struct Pending {
    entries: HashMap<u64, PendingEntry>,
    stats: PresenceStats,
    /// Set by `close`: the writer flushes once more and exits; recorders drop events.
    closing: bool,
    /// Flushes asked for by [`PresenceStore::flush`] / completed by the writer.
    flush_requested: u64,
    flush_completed: u64,
    /// The last write error, for a waiting `flush`; cleared by a successful batch.
    last_error: Option<String>,
}

impl Pending {
    fn note_len(&mut self) {
        self.stats.pending = self.entries.len();
        self.stats.max_pending = self.stats.max_pending.max(self.entries.len());
    }
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer (flush request, close, many pending entries).
    wake_writer: Condvar,
    /// Wakes `flush` callers when a batch committed or failed.
    batch_done: Condvar,
    /// `flush_completed`, for async waiters ([`PresenceRecorder::session_started_durably`]).
    committed: tokio::sync::watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            wake_writer: Condvar::new(),
            batch_done: Condvar::new(),
            committed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves plain data behind; keep recording.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The presence store: owns the SQLite writer thread. Hand out
/// [`PresenceStore::recorder`]s to connection tasks; call [`PresenceStore::close`] at
/// shutdown so that everything recorded reaches the disk.
pub struct PresenceStore {
    shared: Arc<Shared>,
    path: PathBuf,
    writer: Option<JoinHandle<Result<(), PresenceError>>>,
}

impl fmt::Debug for PresenceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceStore")
            .field("path", &self.path)
            .field("pending", &self.shared.lock().entries.len())
            .finish_non_exhaustive()
    }
}

impl PresenceStore {
    /// Creates `data_dir` if needed, opens `<data_dir>/presence.sqlite3` (WAL,
    /// busy_timeout, schema migration via `PRAGMA user_version`), runs crash recovery,
    /// starts the writer.
    ///
    /// Recovery closes, with cause [`Cause::Shutdown`] and the time of this call, every
    /// open session recorded by a process that is no longer running (or by this very
    /// process, whose earlier store must be gone). Sessions of other live servers
    /// sharing `data_dir` stay open.
    ///
    /// Blocking: call it before serving, or from `spawn_blocking`.
    pub fn open(data_dir: &Path) -> Result<(PresenceStore, Recovery), PresenceError> {
        std::fs::create_dir_all(data_dir).map_err(|source| PresenceError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        check_writable(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let db_error = |source| PresenceError::Database {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(db_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        // WAL lets `hangup presence` read while the server writes. NORMAL sync is
        // durable across a process crash (kill -9); only a power loss can take the last
        // few batches, which is the trade the 100 ms batching already makes.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(db_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_error)?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(db_error)?;
        migrate(&mut conn, &path)?;

        let owner = Owner::current();
        let at = SystemTime::now();
        let closed_sessions = recover(&mut conn, &owner, at).map_err(db_error)?;
        if closed_sessions > 0 {
            tracing::info!(
                closed_sessions,
                path = %path.display(),
                "presence: closed sessions left open by servers that are gone (cause shutdown)"
            );
        }

        let shared = Arc::new(Shared::default());
        let writer = Writer {
            conn,
            owner,
            shared: shared.clone(),
            spare: HashMap::new(),
            swept: Instant::now(),
        };
        let writer = thread::Builder::new()
            .name("hangup-presence".into())
            .spawn(move || writer.run())
            .map_err(PresenceError::Spawn)?;
        Ok((
            PresenceStore {
                shared,
                path,
                writer: Some(writer),
            },
            Recovery {
                closed_sessions,
                at,
            },
        ))
    }

    /// A handle for connection tasks: cheap to clone, never touches the disk.
    pub fn recorder(&self) -> PresenceRecorder {
        PresenceRecorder {
            shared: self.shared.clone(),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks until everything recorded before this call is committed.
    ///
    /// Blocking: not for async tasks (use `spawn_blocking`). Returns the write error if
    /// the writer's attempt failed; the entries stay pending for its next try.
    pub fn flush(&self) -> Result<(), PresenceError> {
        let mut pending = self.shared.lock();
        pending.flush_requested += 1;
        let target = pending.flush_requested;
        let failures_before = pending.stats.failed_batches;
        self.shared.wake_writer.notify_one();
        while pending.flush_completed < target {
            if pending.stats.failed_batches > failures_before {
                return Err(PresenceError::Write {
                    pending: pending.entries.len(),
                    message: pending.last_error.clone().unwrap_or_default(),
                });
            }
            if self.writer.as_ref().is_none_or(|w| w.is_finished()) {
                return Err(PresenceError::WriterPanicked);
            }
            pending = self
                .shared
                .batch_done
                .wait_timeout(pending, FLUSH_INTERVAL)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        Ok(())
    }

    /// Flushes everything pending, stops and joins the writer thread.
    ///
    /// A failing final flush is tried a few times; if it still fails, the error says
    /// how many entries were lost. Events recorded after this are dropped (counted in
    /// [`PresenceStats::dropped_after_close`]).
    pub fn close(mut self) -> Result<(), PresenceError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), PresenceError> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_one();
        writer.join().map_err(|_| PresenceError::WriterPanicked)?
    }
}

impl Drop for PresenceStore {
    /// Like [`PresenceStore::close`], logging instead of returning the error.
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(error = %error, "presence: closing the store failed");
        }
    }
}

/// Records session events for the writer; what connection tasks hold.
///
/// Every method takes the store's mutex only to merge one entry into a hash map: no
/// I/O, no waiting for the writer, safe to call from async code.
#[derive(Clone)]
pub struct PresenceRecorder {
    shared: Arc<Shared>,
}

impl fmt::Debug for PresenceRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceRecorder")
            .field("pending", &self.shared.lock().entries.len())
            .finish()
    }
}

impl PresenceRecorder {
    /// A session began: `device` said `HELLO` from `peer` at `at`.
    ///
    /// Session ids must be unique across restarts and across the servers sharing a
    /// data directory (e.g. random): a second start for an id already stored is not
    /// recorded, and counted in [`PresenceStats::duplicate_sessions`].
    pub fn session_started(&self, session: u64, device: &str, peer: SocketAddr, at: SystemTime) {
        // Allocate before taking the lock.
        let entry = PendingEntry {
            start: Some(Box::new(Start {
                device: device.to_owned(),
                peer: peer.to_string(),
                connected_at: unix_millis(at),
            })),
            ..PendingEntry::default()
        };
        self.record(session, entry);
    }

    /// Like [`PresenceRecorder::session_started`], and resolves once the start is
    /// committed to disk: the writer is woken at once, and every start recorded
    /// meanwhile goes into the same transaction (group commit), so a storm of HELLOs
    /// costs one fsync-free SQLite commit per batch, not one per session.
    ///
    /// `false` if the store could not commit within `limit` (a failing or slow disk, or
    /// the store is closing); the start then stays pending like any other.
    pub async fn session_started_durably(
        &self,
        session: u64,
        device: &str,
        peer: SocketAddr,
        at: SystemTime,
        limit: std::time::Duration,
    ) -> bool {
        let mut committed = self.shared.committed.subscribe();
        self.session_started(session, device, peer, at);
        let target = {
            let mut pending = self.shared.lock();
            if pending.closing {
                return false;
            }
            pending.flush_requested += 1;
            pending.flush_requested
        };
        self.shared.wake_writer.notify_one();
        let done = committed.wait_for(|&completed| completed >= target);
        let committed_in_time = matches!(tokio::time::timeout(limit, done).await, Ok(Ok(_)));
        committed_in_time
    }

    /// The session's peer was heard from at `at`.
    ///
    /// Called at most about once per heartbeat per session; cheap, coalesced: only the
    /// latest time waits for the writer.
    pub fn seen(&self, session: u64, at: SystemTime) {
        self.record(
            session,
            PendingEntry {
                last_seen: Some(unix_millis(at)),
                ..PendingEntry::default()
            },
        );
    }

    /// The session ended at `at` because of `cause`. The first end of a session wins.
    pub fn session_ended(&self, session: u64, at: SystemTime, cause: Cause) {
        self.record(
            session,
            PendingEntry {
                end: Some((unix_millis(at), cause)),
                ..PendingEntry::default()
            },
        );
    }

    /// The counters so far.
    pub fn stats(&self) -> PresenceStats {
        let pending = self.shared.lock();
        let mut stats = pending.stats.clone();
        stats.pending = pending.entries.len();
        stats
    }

    fn record(&self, session: u64, entry: PendingEntry) {
        let mut pending = self.shared.lock();
        if pending.closing {
            pending.stats.dropped_after_close += 1;
            return;
        }
        match pending.entries.entry(session) {
            std::collections::hash_map::Entry::Occupied(mut older) => older.get_mut().merge(entry),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
        }
        pending.note_len();
        let wake = pending.entries.len() >= WAKE_AT_PENDING;
        drop(pending);
        if wake {
            self.shared.wake_writer.notify_one();
        }
    }
}

/// The thread that owns the read-write connection.
struct Writer {
    conn: Connection,
    owner: Owner,
    shared: Arc<Shared>,
    /// An empty map with the capacity of the last batch, swapped in for the one taken,
    /// so that recorders do not pay for regrowing it.
    spare: HashMap<u64, PendingEntry>,
    /// When the heartbeat rows of ended sessions were last dropped.
    swept: Instant,
}

impl Writer {
    /// Drops the heartbeat rows of sessions that ended; a failure waits for the next.
    fn sweep(&mut self) {
        self.swept = Instant::now();
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                let dropped = sweep_heartbeats(&tx)?;
                tx.commit()?;
                Ok(dropped)
            });
        match result {
            Ok(0) => {}
            Ok(dropped) => tracing::debug!(
                dropped,
                "presence: heartbeat rows of ended sessions dropped"
            ),
            Err(error) => {
                tracing::warn!(error = %error, "presence: sweeping heartbeat rows failed")
            }
        }
    }
}

/// What one batch changed.
#[derive(Debug, Default)]
struct BatchOutcome {
    rows_written: u64,
    orphan_updates: u64,
    duplicate_sessions: u64,
}

impl Writer {
    fn run(mut self) -> Result<(), PresenceError> {
        let mut close_failures = 0;
        loop {
            let (mut batch, flush_target, closing) = {
                let mut pending = self.shared.lock();
                let deadline = Instant::now() + FLUSH_INTERVAL;
                loop {
                    let now = Instant::now();
                    let asked = pending.closing
                        || pending.flush_requested > pending.flush_completed
                        || pending.entries.len() >= WAKE_AT_PENDING;
                    if asked || now >= deadline {
                        break;
                    }
                    pending = self
                        .shared
                        .wake_writer
                        .wait_timeout(pending, deadline - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                std::mem::swap(&mut pending.entries, &mut self.spare);
                pending.note_len();
                let batch = std::mem::take(&mut self.spare);
                (batch, pending.flush_requested, pending.closing)
            };

            if self.swept.elapsed() >= SWEEP_INTERVAL {
                self.sweep();
            }
            let started = Instant::now();
            let result = if batch.is_empty() {
                Ok(BatchOutcome::default())
            } else {
                write_batch(&mut self.conn, &self.owner, &batch)
            };
            let elapsed = started.elapsed();

            let mut pending = self.shared.lock();
            match result {
                Ok(outcome) => {
                    if !batch.is_empty() {
                        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                        let stats = &mut pending.stats;
                        stats.batches += 1;
                        stats.rows_written += outcome.rows_written;
                        stats.orphan_updates += outcome.orphan_updates;
                        stats.duplicate_sessions += outcome.duplicate_sessions;
                        stats.last_batch_micros = micros;
                        stats.max_batch_micros = stats.max_batch_micros.max(micros);
                    }
                    pending.last_error = None;
                    pending.flush_completed = pending.flush_completed.max(flush_target);
                    let completed = pending.flush_completed;
                    let finished = closing && pending.entries.is_empty();
                    drop(pending);
                    self.shared.batch_done.notify_all();
                    self.shared.committed.send_replace(completed);
                    // Freeing a large batch's strings takes a while: not under the lock
                    // the recorders wait for. The spare keeps room for a batch like
                    // this one, not for the largest ever (the ramp-up's, one entry per
                    // session: tens of bytes per session held for nothing after it).
                    let written = batch.len();
                    batch.clear();
                    batch.shrink_to(written);
                    self.spare = batch;
                    if finished {
                        return Ok(());
                    }
                }
                Err(error) => {
                    let lost = batch.len();
                    tracing::warn!(
                        error = %error,
                        entries = lost,
                        "presence: write failed; the entries stay pending for the next try"
                    );
                    // Put the batch back under anything recorded meanwhile: batch
                    // entries are older, so they merge first.
                    for (session, newer) in pending.entries.drain() {
                        batch.entry(session).or_default().merge(newer);
                    }
                    std::mem::swap(&mut pending.entries, &mut batch);
                    pending.note_len();
                    pending.stats.failed_batches += 1;
                    pending.last_error = Some(error.to_string());
                    self.shared.batch_done.notify_all();
                    if closing {
                        close_failures += 1;
                        if close_failures >= CLOSE_ATTEMPTS {
                            return Err(PresenceError::Write {
                                pending: pending.entries.len(),
                                message: error.to_string(),
                            });
                        }
                    }
                    drop(pending);
                    // Do not hammer a failing disk: the next try is a full interval away
                    // (the wait above starts a fresh deadline).
                    thread::sleep(FLUSH_INTERVAL);
                }
            }
        }
    }
}

/// Writes one batch in one transaction.
fn write_batch(
    conn: &mut Connection,
    owner: &Owner,
    batch: &HashMap<u64, PendingEntry>,
) -> Result<BatchOutcome, rusqlite::Error> {
    let mut outcome = BatchOutcome::default();
    // IMMEDIATE takes the write lock up front, so another server sharing the file
    // makes us wait (busy_timeout) rather than fail halfway through.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO sessions (session, device, peer, connected_at, last_seen, ended_at,
                                   cause, owner_boot, owner_pid, owner_start)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (session) DO NOTHING",
        )?;
        let mut end = tx.prepare_cached(concat!(
            "UPDATE sessions SET ended_at = ?2, cause = ?3, last_seen = max(?4, ",
            folded_last_seen!(),
            ") WHERE session = ?1 AND ended_at IS NULL"
        ))?;
        let mut forget = tx.prepare_cached("DELETE FROM heartbeats WHERE session = ?1")?;
        // Only the narrow table: a heartbeat of a session that ended meanwhile (which
        // only a takeover's race makes) leaves a row the next sweep drops, and the
        // session's own row never shows it (`sessions_now` reads it for open ones).
        let mut seen = tx.prepare_cached(
            "INSERT INTO heartbeats (session, last_seen) VALUES (?1, ?2)
             ON CONFLICT (session) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
        )?;
        // In key order: the batch's rows then lie side by side in each B-tree (the
        // tables and indices are all ordered by session), so a page is read and
        // dirtied once per batch, not once per row. In hash order a storm of session
        // ends (a few thousand a batch, 100 000 in all) touched pages at random and
        // overflowed the page cache: SQLite spilled dirty pages to the WAL mid-batch
        // and read them back for the next row on the same page.
        let mut in_order: Vec<(&u64, &PendingEntry)> = batch.iter().collect();
        in_order.sort_unstable_by_key(|&(&session, _)| session);
        for (&session, entry) in in_order {
            let key = session_key(session);
            let changed = match (&entry.start, entry.end) {
                (Some(start), end) => {
                    let last_seen = entry
                        .last_seen
                        .map_or(start.connected_at, |seen| seen.max(start.connected_at));
                    let changed = insert.execute(params![
                        key,
                        start.device,
                        start.peer,
                        start.connected_at,
                        last_seen,
                        end.map(|(at, _)| at),
                        end.map(|(_, cause)| cause.as_str()),
                        owner.boot,
                        owner.pid,
                        // SQLite integers are signed; clock ticks fit with room to spare.
                        i64::try_from(owner.start).unwrap_or(i64::MAX),
                    ])?;
                    if changed == 0 {
                        tracing::warn!(
                            session = %key,
                            device = %start.device,
                            "presence: session id already recorded; this session is not stored"
                        );
                        outcome.duplicate_sessions += 1;
                    }
                    changed
                }
                (None, Some((at, cause))) => {
                    // Without a heartbeat in this batch, max(last_seen, NULL) is NULL in
                    // SQLite: pass the stored value's floor instead.
                    let changed = end.execute(params![
                        key,
                        at,
                        cause.as_str(),
                        entry.last_seen.unwrap_or(i64::MIN)
                    ])?;
                    forget.execute(params![key])?;
                    changed
                }
                (None, None) => match entry.last_seen {
                    Some(at) => seen.execute(params![key, at])?,
                    None => continue,
                },
            };
            if changed == 0 && entry.start.is_none() {
                tracing::debug!(session = %key, "presence: update for a session not open on disk");
                outcome.orphan_updates += 1;
            }
            outcome.rows_written += changed as u64;
        }
    }
    tx.commit()?;
    Ok(outcome)
}

/// Brings the schema to [`SCHEMA_VERSION`].
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), PresenceError> {
    let db_error = |source| PresenceError::Database {
        path: path.to_owned(),
        source,
    };
    // IMMEDIATE: two servers starting on a fresh directory must not both create.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db_error)?;
    match version {
        0 | 1 => {
            if version == 0 {
                tx.execute_batch(SCHEMA_V1).map_err(db_error)?;
            }
            tx.execute_batch(SCHEMA_V2).map_err(db_error)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(db_error)?;
        }
        SCHEMA_VERSION => {}
        found => {
            return Err(PresenceError::NewerSchema {
                path: path.to_owned(),
                found,
            })
        }
    }
    tx.commit().map_err(db_error)
}

/// Closes the open sessions of owners that are gone; returns how many.
fn recover(conn: &mut Connection, me: &Owner, at: SystemTime) -> Result<u64, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let owners: Vec<Owner> = {
        let mut statement = tx.prepare(
            "SELECT DISTINCT owner_boot, owner_pid, owner_start FROM sessions
             WHERE ended_at IS NULL",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(Owner {
                boot: row.get(0)?,
                pid: row.get(1)?,
                start: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut closed = 0;
    for owner in owners.iter().filter(|owner| !owner.is_alive_other(me)) {
        closed += tx.execute(
            concat!(
                "UPDATE sessions SET ended_at = ?1, cause = ?2, last_seen = ",
                folded_last_seen!(),
                " WHERE ended_at IS NULL AND owner_boot = ?3 AND owner_pid = ?4
                   AND owner_start = ?5"
            ),
            params![
                unix_millis(at),
                Cause::Shutdown.as_str(),
                owner.boot,
                owner.pid,
                i64::try_from(owner.start).unwrap_or(i64::MAX),
            ],
        )? as u64;
    }
    sweep_heartbeats(&tx)?;
    tx.commit()?;
    Ok(closed)
}

/// The SQL of a session row's `last_seen` with its heartbeat row folded in (the later of
/// the two), for the statements that end a session: its row then keeps the time for good.
macro_rules! folded_last_seen {
    () => {
        "max(last_seen, coalesce(
             (SELECT h.last_seen FROM heartbeats h WHERE h.session = sessions.session),
             last_seen))"
    };
}
use folded_last_seen;

/// Drops the heartbeat rows whose session is not open (any more).
fn sweep_heartbeats(tx: &rusqlite::Transaction<'_>) -> Result<usize, rusqlite::Error> {
    tx.execute(
        "DELETE FROM heartbeats WHERE NOT EXISTS (
             SELECT 1 FROM sessions s
             WHERE s.session = heartbeats.session AND s.ended_at IS NULL)",
        [],
    )
}

/// Reads sessions, newest first. Opens the database read-only, so it is safe to run
/// while servers write; fails with [`PresenceError::NotFound`] naming the path if
/// there is no database in `data_dir`.
pub fn query(data_dir: &Path, filter: &PresenceFilter) -> Result<Vec<SessionRow>, PresenceError> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.is_file() {
        return Err(PresenceError::NotFound { path });
    }
    let db_error = |source| PresenceError::Database {
        path: path.clone(),
        source,
    };
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
    let version: Option<i64> = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .optional()
        .map_err(db_error)?;
    match version.unwrap_or(0) {
        SCHEMA_VERSION => {}
        // Created but not yet migrated by a server starting right now: nothing to show.
        0 => return Ok(Vec::new()),
        found => return Err(PresenceError::NewerSchema { path, found }),
    }

    // Whether a row is online needs a process check, so `--online` filters after the
    // query; the limit must then wait until after that filter too.
    let sql_limit = match (filter.online_only, filter.limit) {
        (false, Some(limit)) => i64::try_from(limit).unwrap_or(i64::MAX),
        _ => -1,
    };
    // Spelled out per filter rather than `(?1 IS NULL OR device = ?1)`, which keeps
    // SQLite from using the device index on a large history.
    let device_clause = match filter.device {
        Some(_) => "device = ?1",
        None => "?1 IS NULL",
    };
    let open_clause = if filter.online_only {
        "AND ended_at IS NULL"
    } else {
        ""
    };
    let mut statement = conn
        .prepare(&format!(
            "SELECT session, device, peer, connected_at, last_seen, ended_at, cause,
                    owner_boot, owner_pid, owner_start
             FROM sessions_now
             WHERE {device_clause} {open_clause}
             ORDER BY connected_at DESC, session DESC
             LIMIT ?2"
        ))
        .map_err(db_error)?;
    let me = Owner::current();
    let mut owners_running: HashMap<Owner, bool> = HashMap::new();
    let mut rows = statement
        .query(params![filter.device, sql_limit])
        .map_err(db_error)?;
    let mut sessions = Vec::new();
    while let Some(row) = rows.next().map_err(db_error)? {
        let raw = (|| -> rusqlite::Result<_> {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, Option<String>>(6)?,
                Owner {
                    boot: row.get(7)?,
                    pid: row.get(8)?,
                    start: u64::try_from(row.get::<_, i64>(9)?).unwrap_or(0),
                },
            ))
        })()
        .map_err(db_error)?;
        let (session, device, peer, connected_at, last_seen, ended_at, cause, owner) = raw;
        let cause = cause
            .map(|name| name.parse::<Cause>())
            .transpose()
            .map_err(|error| PresenceError::BadRow {
                path: path.clone(),
                session: session.clone(),
                reason: error.to_string(),
            })?;
        let online = ended_at.is_none()
            && *owners_running
                .entry(owner.clone())
                .or_insert_with(|| owner.is_running(&me));
        if filter.online_only && !online {
            continue;
        }
        sessions.push(SessionRow {
            session,
            device,
            peer,
            online,
            connected_at: from_unix_millis(connected_at),
            last_seen: from_unix_millis(last_seen),
            ended_at: ended_at.map(from_unix_millis),
            cause,
            server_pid: owner.pid,
        });
        if filter.limit.is_some_and(|limit| sessions.len() >= limit) {
            break;
        }
    }
    Ok(sessions)
}

/// SQLite says only "unable to open database file" when it cannot write its files:
/// ask the kernel first, so the error names the directory and the reason.
fn check_writable(dir: &Path) -> Result<(), PresenceError> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Ok(()); // a NUL in the path: let SQLite report it
    };
    // SAFETY: a valid NUL-terminated path; access reads it and nothing else.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        return Ok(());
    }
    Err(PresenceError::NotWritable {
        path: dir.to_owned(),
        source: io::Error::last_os_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_first_start_latest_seen_first_end() {
        let start = |device: &str| {
            Box::new(Start {
                device: device.into(),
                peer: "127.0.0.1:1".into(),
                connected_at: 1,
            })
        };
        let mut entry = PendingEntry {
            start: Some(start("a")),
            last_seen: Some(5),
            end: None,
        };
        entry.merge(PendingEntry {
            start: Some(start("b")),
            last_seen: Some(3),
            end: Some((9, Cause::Idle)),
        });
        entry.merge(PendingEntry {
            start: None,
            last_seen: Some(7),
            end: Some((10, Cause::Timeout)),
        });
        assert_eq!(entry.start.unwrap().device, "a");
        assert_eq!(entry.last_seen, Some(7));
        assert_eq!(entry.end, Some((9, Cause::Idle)));
    }

    #[test]
    fn times_round_trip_through_millis() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_unix_millis(unix_millis(time)), time);
        let before = UNIX_EPOCH - Duration::from_millis(42);
        assert_eq!(unix_millis(before), -42);
        assert_eq!(from_unix_millis(-42), before);
    }

    #[test]
    fn session_keys_are_sixteen_lowercase_hex_digits() {
        assert_eq!(session_key(0xAB), "00000000000000ab");
        assert_eq!(session_key(u64::MAX), "ffffffffffffffff");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_process_is_seen_running_and_a_bogus_start_time_is_not() {
        let me = Owner::current();
        assert!(me.start > 0, "no start time read from /proc/self/stat");
        assert!(me.is_running(&me));
        assert!(
            !me.is_alive_other(&me),
            "our own pid never counts as another owner"
        );
        let parent = std::os::unix::process::parent_id();
        let other = Owner {
            pid: parent,
            start: process::start_time(parent).unwrap(),
            boot: me.boot.clone(),
        };
        assert!(other.is_alive_other(&me));
        let reused_pid = Owner {
            start: other.start + 1,
            ..other.clone()
        };
        assert!(!reused_pid.is_alive_other(&me));
        let other_boot = Owner {
            boot: "another boot".into(),
            ..other
        };
        assert!(!other_boot.is_alive_other(&me));
    }
}
