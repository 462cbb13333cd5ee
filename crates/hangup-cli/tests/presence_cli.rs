//! `hangup presence` on a store written through the library: the table, `--json`,
//! `--online`, `--device`, `--limit`, exit statuses and the missing-data-dir error.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{hangup_bin, poll_until, PATIENCE};
use hangup::Cause;
use hangup_server::presence::PresenceStore;
use serde_json::Value;

/// A data directory under the system temp dir, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let path =
            std::env::temp_dir().join(format!("hangup-presence-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        DataDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 2024-05-01T10:00:00Z plus `secs`.
fn may_first(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_714_557_600 + secs)
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], port))
}

/// Three sessions: `sensor-a` connected twice (both ended), `sensor-b` is online
/// (recorded by this test process, which is running while the CLI reads).
fn populate(dir: &Path) -> SystemTime {
    let (store, _) = PresenceStore::open(dir).unwrap();
    let recorder = store.recorder();
    recorder.session_started(0x1, "sensor-a", peer(1111), may_first(0));
    recorder.seen(0x1, may_first(30));
    recorder.session_ended(0x1, may_first(45), Cause::PeerClosed);
    recorder.session_started(0x2, "sensor-a", peer(2222), may_first(60));
    recorder.seen(0x2, may_first(90));
    recorder.session_ended(0x2, may_first(135), Cause::HeartbeatMissed);
    let b_connected = SystemTime::now() - Duration::from_secs(90);
    recorder.session_started(0xbeef, "sensor-b", peer(3333), b_connected);
    recorder.seen(0xbeef, b_connected + Duration::from_secs(60));
    store.close().unwrap();
    b_connected
}

/// Runs `hangup presence <args>`; killed and failed if it does not exit in time.
fn presence(args: &[&str]) -> Output {
    let mut child = Command::new(hangup_bin())
        .arg("presence")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hangup presence");
    if poll_until(PATIENCE, Duration::from_millis(10), || {
        child.try_wait().unwrap()
    })
    .is_none()
    {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`hangup presence {}` did not exit", args.join(" "));
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn expect_code(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// The table's rows (header first), split on runs of two or more spaces.
fn table(output: &Output) -> Vec<Vec<String>> {
    stdout(output)
        .lines()
        .take_while(|line| !line.is_empty())
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn table_lists_every_session_newest_first() {
    let dir = DataDir::new("table");
    populate(dir.path());
    let output = presence(&["--data-dir", dir.arg()]);
    expect_code(&output, 0);
    let rows = table(&output);
    assert_eq!(
        rows[0],
        [
            "DEVICE",
            "SESSION",
            "PEER",
            "STATE",
            "CONNECTED_AT",
            "LAST_SEEN",
            "ENDED_AT",
            "CAUSE",
            "DURATION"
        ]
    );
    assert_eq!(rows.len(), 4, "{}", stdout(&output));
    let b = &rows[1];
    assert_eq!(
        b[..4],
        ["sensor-b", "000000000000beef", "192.0.2.7:3333", "online"]
    );
    assert_eq!(b[6..8], ["-", "-"]);
    assert!(
        b[8].starts_with("1m3") || b[8].starts_with("1m2"),
        "about 90 s so far: {b:?}"
    );
    assert_eq!(
        rows[2],
        [
            "sensor-a",
            "0000000000000002",
            "192.0.2.7:2222",
            "offline",
            "2024-05-01T10:01:00Z",
            "2024-05-01T10:01:30Z",
            "2024-05-01T10:02:15Z",
            "heartbeat_missed",
            "1m15s"
        ]
    );
    assert_eq!(
        rows[3],
        [
            "sensor-a",
            "0000000000000001",
            "192.0.2.7:1111",
            "offline",
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:30Z",
            "2024-05-01T10:00:45Z",
            "peer_closed",
            "45.0s"
        ]
    );
}

#[test]
fn json_is_an_array_of_session_rows() {
    let dir = DataDir::new("json");
    let b_connected = populate(dir.path());
    let output = presence(&["--data-dir", dir.arg(), "--json"]);
    expect_code(&output, 0);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    let sessions: Vec<&str> = rows
        .iter()
        .map(|r| r["session"].as_str().unwrap())
        .collect();
    assert_eq!(
        sessions,
        ["000000000000beef", "0000000000000002", "0000000000000001"]
    );
    let b = &rows[0];
    assert_eq!(b["device"], "sensor-b");
    assert_eq!(b["online"], true);
    assert_eq!(b["ended_at"], Value::Null);
    assert_eq!(b["cause"], Value::Null);
    assert_eq!(
        b["connected_at"],
        humantime::format_rfc3339_millis(b_connected).to_string()
    );
    assert_eq!(b["server_pid"], std::process::id());
    let a = &rows[1];
    assert_eq!(a["peer"], "192.0.2.7:2222");
    assert_eq!(a["online"], false);
    assert_eq!(a["connected_at"], "2024-05-01T10:01:00.000Z");
    assert_eq!(a["last_seen"], "2024-05-01T10:01:30.000Z");
    assert_eq!(a["ended_at"], "2024-05-01T10:02:15.000Z");
    assert_eq!(a["cause"], "heartbeat_missed");
}

#[test]
fn online_device_and_limit_filter() {
    let dir = DataDir::new("filters");
    populate(dir.path());
    let sessions = |args: &[&str]| -> (Option<i32>, Vec<String>, String) {
        let mut all = vec!["--data-dir", dir.arg(), "--json"];
        all.extend_from_slice(args);
        let output = presence(&all);
        let rows: Vec<Value> = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", stdout(&output)));
        let sessions = rows
            .iter()
            .map(|row| {
                row["session"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('0')
                    .to_owned()
            })
            .collect();
        (output.status.code(), sessions, stderr(&output))
    };
    assert_eq!(sessions(&["--online"]).1, ["beef"]);
    assert_eq!(sessions(&["--device", "sensor-a"]).1, ["2", "1"]);
    assert_eq!(sessions(&["--device", "sensor-a", "--limit", "1"]).1, ["2"]);
    assert_eq!(sessions(&["--limit", "2"]).1, ["beef", "2"]);
    assert_eq!(sessions(&["--device", "sensor-b", "--online"]).1, ["beef"]);

    // A device that is known but offline: exit 1, and when and why it dropped.
    let (code, rows, stderr) = sessions(&["--device", "sensor-a", "--online"]);
    assert_eq!((code, rows.len()), (Some(1), 0), "{stderr}");
    assert!(stderr.contains("sensor-a is not online"), "{stderr}");
    assert!(stderr.contains("2024-05-01T10:02:15Z"), "{stderr}");
    assert!(stderr.contains("heartbeat_missed"), "{stderr}");
}

#[test]
fn an_unknown_device_was_never_seen() {
    let dir = DataDir::new("unknown");
    populate(dir.path());
    let output = presence(&["--data-dir", dir.arg(), "--device", "nobody"]);
    expect_code(&output, 1);
    assert_eq!(stdout(&output), "");
    let stderr = stderr(&output);
    assert!(stderr.contains("device nobody was never seen"), "{stderr}");
    assert!(stderr.contains(dir.arg()), "{stderr}");
}

#[test]
fn a_missing_data_dir_is_named_with_the_serve_flag() {
    let dir = DataDir::new("missing");
    let output = presence(&["--data-dir", dir.arg()]);
    expect_code(&output, 2);
    let message = stderr(&output);
    assert!(
        message.contains(&format!("{}/presence.sqlite3", dir.arg())),
        "{message}"
    );
    assert!(
        message.contains(&format!("hangup serve --data-dir {}", dir.arg())),
        "{message}"
    );
    assert!(
        !dir.path().exists(),
        "reading must not create the data directory"
    );

    let output = presence(&["--data-dir", dir.arg(), "--limit", "0"]);
    expect_code(&output, 2);
    assert!(stderr(&output).contains("--limit 0"), "{}", stderr(&output));
}
