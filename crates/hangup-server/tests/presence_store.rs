//! The presence store on real SQLite files in temporary directories: round trips,
//! filters, coalescing under load, disk errors, and crash recovery against a real
//! child process that is SIGKILLed (this test binary re-executed as the "server").
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangup::Cause;
use hangup_server::presence::{query, PresenceError, PresenceFilter, PresenceStore, SessionRow};

/// Set in the environment of the re-executed child: the data directory it records in.
const CHILD_DIR_ENV: &str = "HANGUP_PRESENCE_TEST_CHILD_DIR";
/// The child's sessions: 1 and 2 stay open, 3 ends with `peer_closed`.
const CHILD_DEVICE: &str = "child-device";
/// The file the child creates once its sessions are on disk.
const CHILD_READY: &str = "child-ready";
/// The bound for anything that should happen at once.
const PATIENCE: Duration = Duration::from_secs(30);

/// A directory under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "hangup-presence-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A time with whole milliseconds, as the store keeps them.
fn at_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// `time` truncated to the store's millisecond resolution.
fn truncated(time: SystemTime) -> SystemTime {
    at_millis(time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64)
}

fn all(dir: &Path) -> Vec<SessionRow> {
    query(dir, &PresenceFilter::default()).unwrap()
}

fn find(rows: &[SessionRow], session: u64) -> &SessionRow {
    let key = format!("{session:016x}");
    rows.iter()
        .find(|row| row.session == key)
        .unwrap_or_else(|| panic!("session {key} not stored; rows: {rows:#?}"))
}

#[test]
fn start_seen_end_round_trip() {
    let dir = TempDir::new("round-trip");
    let (store, recovery) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(recovery.closed_sessions, 0);
    let recorder = store.recorder();
    recorder.session_started(0xabc, "sensor-1", peer(4000), at_millis(1_000_000));
    recorder.seen(0xabc, at_millis(1_030_000));
    recorder.seen(0xabc, at_millis(1_060_500));
    recorder.session_ended(0xabc, at_millis(1_070_000), Cause::HeartbeatMissed);
    recorder.session_started(u64::MAX, "sensor-2", peer(4001), at_millis(2_000_000));
    recorder.seen(u64::MAX, at_millis(2_000_250));
    store.flush().unwrap();

    // Readable while the writer's connection is open (WAL).
    let rows = all(dir.path());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[0].session, "ffffffffffffffff", "newest first");
    assert_eq!(rows[0].device, "sensor-2");
    assert_eq!(rows[0].peer, "127.0.0.1:4001");
    assert!(rows[0].online, "open and recorded by this running process");
    assert_eq!(rows[0].connected_at, at_millis(2_000_000));
    assert_eq!(rows[0].last_seen, at_millis(2_000_250));
    assert_eq!(rows[0].ended_at, None);
    assert_eq!(rows[0].cause, None);
    assert_eq!(rows[0].server_pid, std::process::id());

    let ended = &rows[1];
    assert_eq!(ended.session, "0000000000000abc");
    assert_eq!(ended.device, "sensor-1");
    assert!(!ended.online);
    assert_eq!(ended.connected_at, at_millis(1_000_000));
    assert_eq!(ended.last_seen, at_millis(1_060_500));
    assert_eq!(ended.ended_at, Some(at_millis(1_070_000)));
    assert_eq!(ended.cause, Some(Cause::HeartbeatMissed));

    // Later heartbeats and a second end do not rewrite an ended session.
    recorder.seen(0xabc, at_millis(1_090_000));
    recorder.session_ended(0xabc, at_millis(1_100_000), Cause::Idle);
    recorder.seen(u64::MAX, at_millis(2_005_000));
    recorder.session_ended(u64::MAX, at_millis(2_006_000), Cause::PeerReset);
    store.close().unwrap();

    let rows = all(dir.path());
    let ended = find(&rows, 0xabc);
    assert_eq!(ended.last_seen, at_millis(1_060_500));
    assert_eq!(ended.cause, Some(Cause::HeartbeatMissed));
    let second = find(&rows, u64::MAX);
    assert_eq!(second.last_seen, at_millis(2_005_000));
    assert_eq!(second.ended_at, Some(at_millis(2_006_000)));
    assert_eq!(second.cause, Some(Cause::PeerReset));
    assert!(!second.online);

    let stats = recorder.stats();
    assert_eq!(stats.pending, 0);
    assert!(stats.rows_written >= 3, "{stats:?}");
    // The late seen and end of 0xabc found no open session to update: one orphan if
    // they were merged into one pending entry, two if a batch came between them.
    assert!((1..=2).contains(&stats.orphan_updates), "{stats:?}");

    let json = serde_json::to_value(second).unwrap();
    assert_eq!(json["session"], "ffffffffffffffff");
    assert_eq!(json["connected_at"], "1970-01-01T00:33:20.000Z");
    assert_eq!(json["ended_at"], "1970-01-01T00:33:26.000Z");
    assert_eq!(json["cause"], "peer_reset");
    assert_eq!(json["online"], false);
}

/// One integer the database answers `sql` with, read straight from the file.
fn scalar(dir: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(dir.join("presence.sqlite3"))
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

/// Rows in the narrow heartbeats table.
fn heartbeat_rows(dir: &Path) -> i64 {
    scalar(dir, "SELECT count(*) FROM heartbeats")
}

#[test]
fn heartbeats_land_apart_and_the_end_folds_them_into_the_session() {
    let dir = TempDir::new("heartbeats");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let recorder = store.recorder();
    recorder.session_started(7, "meter-1", peer(4100), at_millis(5_000_000));
    store.flush().unwrap();
    // A later batch: the heartbeat goes to its own table, the session's row is as
    // written, and readers see the heartbeat.
    recorder.seen(7, at_millis(5_030_000));
    store.flush().unwrap();
    assert_eq!(heartbeat_rows(dir.path()), 1);
    let stored = scalar(dir.path(), "SELECT last_seen FROM sessions");
    assert_eq!(
        stored, 5_000_000,
        "the wide row is not rewritten per heartbeat"
    );
    assert_eq!(find(&all(dir.path()), 7).last_seen, at_millis(5_030_000));
    // An older heartbeat arriving late does not move it back.
    recorder.seen(7, at_millis(5_020_000));
    store.flush().unwrap();
    assert_eq!(find(&all(dir.path()), 7).last_seen, at_millis(5_030_000));

    // The end, in a batch of its own: the heartbeat is folded in and its row dropped.
    recorder.session_ended(7, at_millis(5_040_000), Cause::PeerClosed);
    store.flush().unwrap();
    assert_eq!(heartbeat_rows(dir.path()), 0);
    let ended = find(&all(dir.path()), 7).clone();
    assert_eq!(ended.last_seen, at_millis(5_030_000));
    assert_eq!(ended.ended_at, Some(at_millis(5_040_000)));

    // A heartbeat after the end (a takeover's race) never shows on the ended session,
    // and its row is dropped by the next sweep (here: reopening the store).
    recorder.seen(7, at_millis(5_090_000));
    store.close().unwrap();
    assert_eq!(find(&all(dir.path()), 7).last_seen, at_millis(5_030_000));
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(heartbeat_rows(dir.path()), 0);
    store.close().unwrap();
}

#[test]
fn a_version_one_database_is_migrated_with_its_sessions() {
    let dir = TempDir::new("migrate-v1");
    std::fs::create_dir_all(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("presence.sqlite3")).unwrap();
    conn.execute_batch(
        "CREATE TABLE sessions (
            session TEXT PRIMARY KEY NOT NULL, device TEXT NOT NULL, peer TEXT NOT NULL,
            connected_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, ended_at INTEGER,
            cause TEXT, owner_boot TEXT NOT NULL, owner_pid INTEGER NOT NULL,
            owner_start INTEGER NOT NULL, CHECK ((ended_at IS NULL) = (cause IS NULL))
        ) WITHOUT ROWID;
        CREATE INDEX sessions_by_device ON sessions (device, connected_at);
        CREATE INDEX sessions_by_connected ON sessions (connected_at);
        CREATE INDEX sessions_open ON sessions (owner_boot, owner_pid, owner_start)
            WHERE ended_at IS NULL;
        INSERT INTO sessions VALUES ('0000000000000001', 'old-device', '127.0.0.1:1',
            1000, 2000, 3000, 'peer_closed', 'boot', 1, 1);
        PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    store.close().unwrap();
    assert_eq!(scalar(dir.path(), "PRAGMA user_version"), 2);
    let old = find(&all(dir.path()), 1).clone();
    assert_eq!(old.device, "old-device");
    assert_eq!(old.last_seen, at_millis(2000));
    assert_eq!(old.cause, Some(Cause::PeerClosed));
    assert_eq!(heartbeat_rows(dir.path()), 0);
}

#[test]
fn filters_by_device_online_and_limit() {
    let dir = TempDir::new("filters");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let recorder = store.recorder();
    // Sessions 1..=6 start one second apart; even ones end; devices alternate a/b/c.
    for session in 1..=6u64 {
        let device = ["a", "b", "c"][(session % 3) as usize];
        recorder.session_started(session, device, peer(5000), at_millis(session * 1000));
        if session % 2 == 0 {
            recorder.session_ended(session, at_millis(session * 1000 + 500), Cause::Local);
        }
    }
    store.close().unwrap();

    let sessions = |filter: PresenceFilter| -> Vec<String> {
        query(dir.path(), &filter)
            .unwrap()
            .into_iter()
            .map(|row| row.session.trim_start_matches('0').to_owned())
            .collect()
    };
    assert_eq!(
        sessions(PresenceFilter::default()),
        ["6", "5", "4", "3", "2", "1"]
    );
    let device = |name: &str| PresenceFilter {
        device: Some(name.into()),
        ..PresenceFilter::default()
    };
    assert_eq!(sessions(device("a")), ["6", "3"]);
    assert_eq!(sessions(device("b")), ["4", "1"]);
    assert!(sessions(device("nobody")).is_empty());
    let online = PresenceFilter {
        online_only: true,
        ..PresenceFilter::default()
    };
    assert_eq!(sessions(online.clone()), ["5", "3", "1"]);
    assert_eq!(
        sessions(PresenceFilter {
            limit: Some(2),
            ..online.clone()
        }),
        ["5", "3"]
    );
    assert_eq!(
        sessions(PresenceFilter {
            device: Some("a".into()),
            ..online
        }),
        ["3"]
    );
    assert_eq!(
        sessions(PresenceFilter {
            limit: Some(4),
            ..PresenceFilter::default()
        }),
        ["6", "5", "4", "3"]
    );
    assert!(sessions(PresenceFilter {
        limit: Some(0),
        ..PresenceFilter::default()
    })
    .is_empty());
}

#[test]
fn a_session_ended_before_its_start_was_flushed_is_one_complete_row() {
    let dir = TempDir::new("ended-early");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let recorder = store.recorder();
    recorder.session_started(1, "quick", peer(6000), at_millis(10_000));
    recorder.seen(1, at_millis(10_400));
    recorder.session_ended(1, at_millis(10_500), Cause::PeerClosed);
    // Events of one session may reach the recorder out of order from different tasks.
    recorder.session_ended(2, at_millis(20_900), Cause::Takeover);
    recorder.seen(2, at_millis(20_700));
    recorder.session_started(2, "reordered", peer(6001), at_millis(20_000));
    assert_eq!(
        recorder.stats().pending,
        2,
        "one pending entry per session, not per event"
    );
    store.close().unwrap();

    let rows = all(dir.path());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let quick = find(&rows, 1);
    assert_eq!(
        (quick.device.as_str(), quick.peer.as_str()),
        ("quick", "127.0.0.1:6000")
    );
    assert_eq!(quick.connected_at, at_millis(10_000));
    assert_eq!(quick.last_seen, at_millis(10_400));
    assert_eq!(quick.ended_at, Some(at_millis(10_500)));
    assert_eq!(quick.cause, Some(Cause::PeerClosed));
    let reordered = find(&rows, 2);
    assert_eq!(reordered.device, "reordered");
    assert_eq!(reordered.connected_at, at_millis(20_000));
    assert_eq!(reordered.last_seen, at_millis(20_700));
    assert_eq!(reordered.ended_at, Some(at_millis(20_900)));
    assert_eq!(reordered.cause, Some(Cause::Takeover));
}

#[test]
fn heartbeats_of_one_session_never_queue_up() {
    let dir = TempDir::new("heartbeats");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let recorder = store.recorder();
    recorder.session_started(9, "chatty", peer(7000), at_millis(1));
    for i in 0..300_000u64 {
        recorder.seen(9, at_millis(2 + i));
    }
    let stats = recorder.stats();
    assert!(stats.max_pending <= 1, "{stats:?}");
    store.close().unwrap();
    assert_eq!(all(dir.path())[0].last_seen, at_millis(300_001));
}

#[test]
fn fifty_thousand_short_sessions_stay_bounded_and_all_land() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 12_500;
    const SESSIONS: u64 = THREADS * PER_THREAD;
    let dir = TempDir::new("many");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let recorder = store.recorder();
            thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for n in 0..PER_THREAD {
                    let session = (thread_index << 32) | n;
                    let t = 1_000_000 + n * 10;
                    let call = Instant::now();
                    recorder.session_started(
                        session,
                        &format!("dev-{session}"),
                        peer(1),
                        at_millis(t),
                    );
                    recorder.seen(session, at_millis(t + 1));
                    recorder.seen(session, at_millis(t + 2));
                    recorder.seen(session, at_millis(t + 3));
                    recorder.session_ended(session, at_millis(t + 4), Cause::PeerClosed);
                    slowest = slowest.max(call.elapsed());
                }
                slowest
            })
        })
        .collect();
    let slowest_events = workers
        .into_iter()
        .map(|worker| worker.join().unwrap())
        .max()
        .unwrap();
    let recorded_in = started.elapsed();
    let stats = store.recorder().stats();
    store.close().unwrap();

    // 250 000 events; what waits for the disk is at most one entry per session in play.
    assert!(
        stats.max_pending as u64 <= SESSIONS,
        "max_pending {} > {SESSIONS} sessions: {stats:?}",
        stats.max_pending
    );
    let rows = all(dir.path());
    assert_eq!(rows.len() as u64, SESSIONS);
    assert!(rows
        .iter()
        .all(|row| row.cause == Some(Cause::PeerClosed) && row.ended_at.is_some()));
    let last = find(&rows, (3 << 32) | (PER_THREAD - 1));
    let t = 1_000_000 + (PER_THREAD - 1) * 10;
    assert_eq!(last.last_seen, at_millis(t + 3));
    assert_eq!(last.ended_at, Some(at_millis(t + 4)));
    println!(
        "{SESSIONS} sessions recorded in {recorded_in:?} (slowest 5-event burst {slowest_events:?}); \
         stats at the end of recording: {stats:?}"
    );
}

#[test]
fn a_failed_write_keeps_its_entries_for_the_next_try() {
    let dir = TempDir::new("busy");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let recorder = store.recorder();
    // Another connection holds the write lock past the store's busy timeout.
    let mut blocker = rusqlite::Connection::open(store.path()).unwrap();
    let lock = blocker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    recorder.session_started(1, "patient", peer(8000), at_millis(1_000));
    recorder.seen(1, at_millis(2_000));
    let error = store.flush().expect_err("the write lock is held elsewhere");
    assert!(
        matches!(error, PresenceError::Write { pending: 1, .. }),
        "{error:?}"
    );
    // Recording goes on meanwhile and merges into the kept entry.
    recorder.session_ended(1, at_millis(3_000), Cause::Idle);
    let stats = recorder.stats();
    assert!(stats.failed_batches >= 1, "{stats:?}");
    assert_eq!(stats.pending, 1, "{stats:?}");
    lock.rollback().unwrap();

    store.flush().unwrap();
    let row = all(dir.path()).remove(0);
    assert_eq!(row.device, "patient");
    assert_eq!(row.last_seen, at_millis(2_000));
    assert_eq!(row.ended_at, Some(at_millis(3_000)));
    assert_eq!(row.cause, Some(Cause::Idle));
    store.close().unwrap();
}

#[test]
fn query_names_a_missing_database_and_refuses_a_newer_schema() {
    let dir = TempDir::new("missing");
    match query(dir.path(), &PresenceFilter::default()) {
        Err(error @ PresenceError::NotFound { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains("presence.sqlite3"), "{message}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        !dir.path().exists(),
        "a read-only query must not create anything"
    );

    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let path = store.path().to_owned();
    store.close().unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        PresenceStore::open(dir.path()),
        Err(PresenceError::NewerSchema { found: 99, .. })
    ));
    assert!(matches!(
        query(dir.path(), &PresenceFilter::default()),
        Err(PresenceError::NewerSchema { found: 99, .. })
    ));
}

#[test]
fn reopening_in_the_same_process_closes_its_earlier_sessions() {
    let dir = TempDir::new("same-process");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    store
        .recorder()
        .session_started(1, "left-open", peer(1), at_millis(5_000));
    store.close().unwrap();
    assert!(all(dir.path())[0].online);

    let (store, recovery) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(recovery.closed_sessions, 1);
    let row = all(dir.path()).remove(0);
    assert_eq!(row.cause, Some(Cause::Shutdown));
    assert_eq!(row.ended_at, Some(truncated(recovery.at)));
    assert!(!row.online);
    store.close().unwrap();
}

/// The "server" of the recovery tests, run in a child process: records sessions of
/// [`CHILD_DEVICE`], flushes, says it is ready, then waits to be killed. In a normal
/// test run (no [`CHILD_DIR_ENV`]) it does nothing.
#[test]
fn recovery_child_records_then_waits_to_be_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (store, _) = PresenceStore::open(&dir).unwrap();
    let recorder = store.recorder();
    for session in 1..=3u64 {
        recorder.session_started(session, CHILD_DEVICE, peer(9000), at_millis(session * 1000));
        recorder.seen(session, at_millis(session * 1000 + 100));
    }
    recorder.session_ended(3, at_millis(3_500), Cause::PeerClosed);
    store.flush().unwrap();
    std::fs::write(dir.join(CHILD_READY), b"").unwrap();
    // Bounded, in case the parent died without killing us.
    thread::sleep(PATIENCE * 2);
    std::process::exit(3);
}

/// A child "server" process, SIGKILLed (and reaped) on drop at the latest.
struct ChildServer(Child);

impl ChildServer {
    /// Starts the child on `dir` and waits until its sessions are on disk.
    fn start(dir: &Path) -> ChildServer {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "recovery_child_records_then_waits_to_be_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = ChildServer(child);
        let deadline = Instant::now() + PATIENCE;
        while !dir.join(CHILD_READY).exists() {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("the child exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the child was not ready in {PATIENCE:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
        child
    }

    /// SIGKILL: no destructor, no final flush, like `kill -9` of a server.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn recovery_closes_the_open_sessions_of_a_killed_server() {
    let dir = TempDir::new("killed");
    let child = ChildServer::start(dir.path());
    let child_pid = child.pid();
    let before = all(dir.path());
    assert_eq!(before.len(), 3);
    assert!(find(&before, 1).online && find(&before, 2).online);
    assert_eq!(find(&before, 1).server_pid, child_pid);
    child.kill();

    // Killed but not yet recovered: open rows, but not online any more.
    let stale = all(dir.path());
    assert!(stale.iter().all(|row| !row.online), "{stale:#?}");
    assert!(query(
        dir.path(),
        &PresenceFilter {
            online_only: true,
            ..PresenceFilter::default()
        }
    )
    .unwrap()
    .is_empty());

    let (store, recovery) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(recovery.closed_sessions, 2, "{recovery:?}");
    let rows = all(dir.path());
    assert_eq!(rows.len(), 3, "no session lost: {rows:#?}");
    for session in [1, 2] {
        let row = find(&rows, session);
        assert_eq!(row.cause, Some(Cause::Shutdown), "{row:?}");
        assert_eq!(row.ended_at, Some(truncated(recovery.at)), "{row:?}");
        assert_eq!(row.connected_at, at_millis(session * 1000));
        assert_eq!(row.last_seen, at_millis(session * 1000 + 100));
        assert!(!row.online);
    }
    let ended = find(&rows, 3);
    assert_eq!(ended.cause, Some(Cause::PeerClosed));
    assert_eq!(ended.ended_at, Some(at_millis(3_500)));
    store.close().unwrap();

    // Recovery is done once: a further restart has nothing left to close.
    let (store, recovery) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(recovery.closed_sessions, 0);
    store.close().unwrap();
}

#[test]
fn recovery_leaves_the_sessions_of_a_live_server_alone() {
    let dir = TempDir::new("shared");
    let child = ChildServer::start(dir.path());

    // A second server on the same data directory while the first still runs.
    let (store, recovery) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(recovery.closed_sessions, 0, "{recovery:?}");
    store
        .recorder()
        .session_started(100, "parent-device", peer(1), at_millis(50_000));
    store.flush().unwrap();
    let rows = all(dir.path());
    assert_eq!(rows.len(), 4);
    for session in [1, 2, 100] {
        let row = find(&rows, session);
        assert!(row.online && row.ended_at.is_none(), "{row:?}");
    }
    store.close().unwrap();

    // Once the first server is gone, the next start closes its sessions — and those
    // of this process, whose store was closed without ending them.
    child.kill();
    let (store, recovery) = PresenceStore::open(dir.path()).unwrap();
    assert_eq!(recovery.closed_sessions, 3, "{recovery:?}");
    let rows = all(dir.path());
    for session in [1, 2, 100] {
        assert_eq!(find(&rows, session).cause, Some(Cause::Shutdown));
    }
    assert_eq!(find(&rows, 3).cause, Some(Cause::PeerClosed));
    store.close().unwrap();
}

/// A start recorded durably is on disk when the call resolves (another reader sees it
/// with no flush), and concurrent durable starts share batches.
#[test]
fn a_durable_start_is_committed_when_it_resolves_and_starts_share_batches() {
    let dir = TempDir::new("durable");
    let (store, _) = PresenceStore::open(dir.path()).unwrap();
    let recorder = store.recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let durable = recorder
            .session_started_durably(1, "durable-1", peer(1), at_millis(1_000), PATIENCE)
            .await;
        assert!(durable);
        let rows = query(dir.path(), &PresenceFilter::default()).unwrap();
        assert_eq!(
            rows.len(),
            1,
            "committed before the call resolved: {rows:?}"
        );
        assert_eq!(rows[0].device, "durable-1");

        let before = recorder.stats().batches;
        let starts: Vec<_> = (2..202u64)
            .map(|id| {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    recorder
                        .session_started_durably(
                            id,
                            &format!("d-{id}"),
                            peer(2),
                            at_millis(2_000),
                            PATIENCE,
                        )
                        .await
                })
            })
            .collect();
        for start in starts {
            assert!(start.await.unwrap());
        }
        let batches = recorder.stats().batches - before;
        assert_eq!(
            query(dir.path(), &PresenceFilter::default()).unwrap().len(),
            201
        );
        assert!(
            batches < 200,
            "{batches} batches for 200 starts: no group commit"
        );
        eprintln!("200 durable starts in {batches} batches");
    });
    store.close().unwrap();
}
