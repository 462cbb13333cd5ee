//! The presence store as the real server fills it (SPEC §4): one row per session with
//! why it ended — `peer_closed`, `takeover`, `heartbeat_missed` — and after a `kill -9`
//! the restarted server on the same `--data-dir` ends the orphaned sessions with cause
//! `shutdown` at the restart time. Read through `hangup_server::presence::query` and through
//! `hangup presence --json`.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, SystemTime};

use common::{hello, presence_rows, run_hangup, wait_presence_row, TempDir, TestServer, PATIENCE};
use hangup_core::Cause;
use serde_json::Value;

#[test]
fn rows_record_peer_closed_takeover_and_heartbeat_missed() {
    let mut server = TestServer::start(&[]);
    let dir = server.data_dir().unwrap().to_owned();
    let before = SystemTime::now();

    // A normal close.
    let (client, closed_session) = hello(server.addr(), "closer", "heartbeat=30");
    let peer = client.local_addr();
    let row = wait_presence_row(&dir, &closed_session, |_| true);
    assert_eq!(row.device, "closer");
    assert_eq!(row.peer, peer.to_string());
    assert!(row.online, "{row:?}");
    assert_eq!((row.ended_at, row.cause), (None, None));
    assert_eq!(row.server_pid, server.pid());
    drop(client);
    server.expect_event("connection_closed", peer);
    let row = wait_presence_row(&dir, &closed_session, |r| r.ended_at.is_some());
    assert_eq!(row.cause, Some(Cause::PeerClosed), "{row:?}");
    assert!(!row.online);

    // A takeover.
    let (old, old_session) = hello(server.addr(), "mover", "heartbeat=30");
    let (new, new_session) = hello(server.addr(), "mover", "heartbeat=30");
    let row = wait_presence_row(&dir, &old_session, |r| r.ended_at.is_some());
    assert_eq!(row.cause, Some(Cause::Takeover), "{row:?}");
    let row = wait_presence_row(&dir, &new_session, |_| true);
    assert!(row.online && row.ended_at.is_none(), "{row:?}");

    // A missed heartbeat (H = 1 s: gone after 1.5 s of silence).
    let (quiet, quiet_session) = hello(server.addr(), "sleeper", "heartbeat=1");
    let quiet_peer = quiet.local_addr();
    let closed = server.expect_event("connection_closed", quiet_peer);
    assert_eq!(closed["cause"], "heartbeat_missed", "{closed}");
    let row = wait_presence_row(&dir, &quiet_session, |r| r.ended_at.is_some());
    assert_eq!(row.cause, Some(Cause::HeartbeatMissed), "{row:?}");

    // Times are sane: connected after the test began, ended after connecting.
    for row in presence_rows(&dir) {
        assert!(
            row.connected_at >= before - Duration::from_secs(1),
            "{row:?}"
        );
        assert!(row.last_seen >= row.connected_at, "{row:?}");
        if let Some(ended) = row.ended_at {
            assert!(ended >= row.connected_at, "{row:?}");
        }
    }

    // The CLI reads the same rows while the server runs.
    let output = run_hangup(&["presence", "--json", "--data-dir", dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    let rows = json.as_array().expect("an array");
    assert_eq!(rows.len(), 4, "{json:#}");
    let cause_of = |session: &str| {
        rows.iter()
            .find(|r| r["session"] == session)
            .map(|r| r["cause"].clone())
            .unwrap_or_else(|| panic!("no row {session}: {json:#}"))
    };
    assert_eq!(cause_of(&closed_session), "peer_closed");
    assert_eq!(cause_of(&old_session), "takeover");
    assert_eq!(cause_of(&quiet_session), "heartbeat_missed");
    assert_eq!(cause_of(&new_session), Value::Null);
    drop((old, new));
}

/// A session that keeps talking has its `last_seen` moved forward while it is open (at
/// most every 5 s, so the store is not written per PING), and its end records the
/// exact last time it was heard from.
#[test]
fn last_seen_follows_a_pinging_session() {
    let server = TestServer::start(&[]);
    let dir = server.data_dir().unwrap().to_owned();
    let (mut client, session) = hello(server.addr(), "talker", "heartbeat=1");
    let first = wait_presence_row(&dir, &session, |_| true);
    for n in 0..12 {
        std::thread::sleep(Duration::from_millis(500));
        client.assert_alive(&format!("beat-{n}"));
    }
    let last_beat = SystemTime::now();
    let open = wait_presence_row(&dir, &session, |r| {
        r.last_seen >= first.connected_at + Duration::from_secs(5)
    });
    assert!(open.online && open.ended_at.is_none(), "{open:?}");
    drop(client);
    let ended = wait_presence_row(&dir, &session, |r| r.ended_at.is_some());
    // The last beat was read after 6 s of beats; the row says so to the millisecond
    // (the margin is for the two clocks' readings, not for a throttle).
    assert!(
        ended.last_seen + Duration::from_millis(600) >= last_beat
            && ended.last_seen <= ended.ended_at.unwrap(),
        "{ended:?}, last beat at {last_beat:?}"
    );
}

#[test]
fn after_kill_9_a_restart_on_the_same_data_dir_ends_open_sessions_as_shutdown() {
    let data = TempDir::new("crash");
    let data_arg = data.path().to_str().unwrap().to_owned();
    let mut server = TestServer::start(&["--data-dir", &data_arg]);
    let (a, a_session) = hello(server.addr(), "survivor-a", "heartbeat=30");
    let (b, b_session) = hello(server.addr(), "survivor-b", "heartbeat=30");
    // Both recorded as open before the crash.
    for session in [&a_session, &b_session] {
        let row = wait_presence_row(data.path(), session, |_| true);
        assert!(row.online, "{row:?}");
    }
    server.kill(); // SIGKILL: nothing is flushed or closed by the server
    drop((a, b));
    // Open but not online: their server is gone.
    for row in presence_rows(data.path()) {
        assert_eq!(row.ended_at, None, "{row:?}");
        assert!(
            !row.online,
            "a dead server's session is not online: {row:?}"
        );
    }

    let restart_began = SystemTime::now();
    let mut restarted = TestServer::start(&["--data-dir", &data_arg]);
    let restarted_at = SystemTime::now();
    let recovered = restarted
        .wait_event(|e| e["event"] == "presence_recovered", PATIENCE)
        .expect("a presence_recovered event");
    assert_eq!(recovered["closed_sessions"], 2, "{recovered}");
    for session in [&a_session, &b_session] {
        let row = wait_presence_row(data.path(), session, |r| r.ended_at.is_some());
        assert_eq!(row.cause, Some(Cause::Shutdown), "{row:?}");
        let ended = row.ended_at.unwrap();
        // "The restart time": between starting the new process and its `listening`
        // (a second of slack for the store's millisecond rounding and clock reads).
        assert!(
            ended + Duration::from_secs(1) >= restart_began && ended <= restarted_at,
            "ended at {ended:?}, restart between {restart_began:?} and {restarted_at:?}"
        );
    }

    // The restarted server records new sessions next to the old rows.
    let (_c, c_session) = hello(restarted.addr(), "survivor-a", "heartbeat=30");
    let row = wait_presence_row(data.path(), &c_session, |_| true);
    assert!(row.online && row.ended_at.is_none(), "{row:?}");
    assert_eq!(row.server_pid, restarted.pid());
    assert_eq!(presence_rows(data.path()).len(), 3);

    // `hangup presence --device` tells when and why the device dropped.
    let output = run_hangup(&[
        "presence",
        "--json",
        "--device",
        "survivor-b",
        "--data-dir",
        &data_arg,
    ]);
    assert!(output.status.success());
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json:#}");
    assert_eq!(json[0]["cause"], "shutdown", "{json:#}");
    assert_eq!(json[0]["online"], false, "{json:#}");
}

/// A clean SIGTERM also ends every open session with cause `shutdown`, and the rows are
/// on disk when the server exits.
#[test]
fn sigterm_ends_open_sessions_as_shutdown_before_exit() {
    let mut server = TestServer::start(&[]);
    let dir = server.data_dir().unwrap().to_owned();
    let (mut client, session) = hello(server.addr(), "graceful", "heartbeat=30");
    server.signal(libc::SIGTERM);
    assert_eq!(client.lines_to_eof(), ["GOAWAY shutdown"]);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}");
    // No polling: the store was flushed before exit.
    let rows = presence_rows(&dir);
    let row = rows.iter().find(|r| r.session == session).expect("the row");
    assert_eq!(row.cause, Some(Cause::Shutdown), "{row:?}");
}
