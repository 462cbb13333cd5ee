//! `hangup client --device` against the real server (SPEC §6): it says HELLO and
//! heartbeats by itself while the user types nothing; it declares a frozen server
//! (SIGSTOP) dead after 1.5 heartbeats; on GOAWAY it reconnects and says HELLO again;
//! when another client takes its device over it exits with code 3.
#![cfg(target_os = "linux")]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{poll_until, ClientProcess, TestServer, PATIENCE};
use serde_json::Value;

/// H = 1 s: the client gives the server up after 1.5 s of inbound silence.
const DEAD_AFTER: Duration = Duration::from_millis(1500);

/// The server's `session_started` event for `device`.
fn session_started(server: &mut TestServer, device: &str) -> Value {
    server
        .wait_event(
            |e| e["event"] == "session_started" && e["device"] == device,
            PATIENCE,
        )
        .unwrap_or_else(|| {
            panic!(
                "no session_started for {device}; stderr:\n{}",
                server.stderr_text()
            )
        })
}

/// Resumes a stopped server when the test ends, however it ends.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        common::send_signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn the_client_heartbeats_and_declares_a_frozen_server_dead_after_one_and_a_half_heartbeats() {
    let mut server = TestServer::start(&[]);
    let addr = server.addr().to_string();
    let mut client =
        ClientProcess::start(&[&addr, "--device", "watcher", "--heartbeat", "1", "--once"]);
    let started = session_started(&mut server, "watcher");
    assert_eq!(started["heartbeat_ms"], 1000, "{started}");
    let peer = started["peer"].as_str().unwrap().to_owned();
    client
        .wait_event(PATIENCE, |e| e["event"] == "session_started")
        .expect("the client saw WELCOME");

    // No input for three budgets: only the client's own PINGs keep the session open.
    thread::sleep(3 * DEAD_AFTER);
    assert!(
        server
            .events_matching(|e| e["event"] == "connection_closed" && e["peer"] == peer.as_str())
            .is_empty(),
        "the server closed the session: {}",
        server.stderr_text()
    );
    assert!(client.is_running(), "{}", client.stderr());
    let sessions = server.admin_get("/sessions").json();
    let row = &sessions[0];
    assert_eq!(row["device"], "watcher", "{sessions}");
    let silent = row["last_inbound_ms_ago"].as_u64().unwrap();
    assert!(
        silent <= 1500,
        "the client's PINGs do not arrive: {sessions}"
    );

    // Freeze the server: the kernel still ACKs, but no PONG comes back.
    let _resume = Continue(server.pid());
    server.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let lost = client
        .wait_event(PATIENCE, |e| e["event"] == "connection_closed")
        .unwrap_or_else(|| panic!("the client never gave up: {}", client.stderr()));
    let detected = frozen.elapsed();
    assert_eq!(lost["cause"], "heartbeat_missed", "{lost}");
    // The last PONG came at most just before the freeze: detection within the budget,
    // with 10 % and a generous margin for a busy machine.
    let bound = DEAD_AFTER.mul_f64(1.1) + Duration::from_secs(1);
    assert!(
        detected <= bound,
        "detected {detected:?} after the freeze, bound {bound:?}"
    );
    let silent_ms = lost["silent_ms"].as_u64().unwrap();
    assert!(
        (1500..=bound.as_millis() as u64).contains(&silent_ms),
        "the client measured {silent_ms} ms of silence: {lost}"
    );
    let status = client.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", client.stderr());
    assert!(client.stderr().contains("heartbeat_missed"));
}

#[test]
fn on_goaway_the_client_reconnects_and_says_hello_again() {
    let mut server = TestServer::start(&[]);
    let listen = server.addr().to_string();
    let mut client = ClientProcess::start(&[&listen, "--device", "roamer", "--heartbeat", "5"]);
    let first = session_started(&mut server, "roamer");

    server.signal(libc::SIGTERM);
    client.wait_stdout("GOAWAY shutdown");
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}");
    let closed = client
        .wait_event(PATIENCE, |e| e["event"] == "connection_closed")
        .expect("the client logged the end");
    assert_eq!(closed["cause"], "shutdown", "{closed}");
    client.wait_stderr("reconnecting in", 1);
    assert!(client.is_running(), "{}", client.stderr());

    // A server on the same port: the client comes back and opens its session again.
    let mut restarted = TestServer::start_listening_on(&listen, &[], |_| {});
    let second = session_started(&mut restarted, "roamer");
    assert_ne!(first["session"], second["session"]);
    let reconnected = poll_until(PATIENCE, Duration::from_millis(10), || {
        (client.stdout().matches("WELCOME ").count() >= 2).then_some(())
    });
    assert!(reconnected.is_some(), "{}", client.stdout());
    client.type_line("PING back");
    client.wait_stdout("PONG back");
}

#[test]
fn a_second_client_with_the_same_device_makes_the_first_exit_with_code_3() {
    let mut server = TestServer::start(&[]);
    let addr = server.addr().to_string();
    let mut first = ClientProcess::start(&[&addr, "--device", "twin", "--heartbeat", "30"]);
    let first_started = session_started(&mut server, "twin");
    let mut second = ClientProcess::start(&[&addr, "--device", "twin", "--heartbeat", "30"]);

    let status = first.wait_exit();
    assert_eq!(status.code(), Some(3), "{}", first.stderr());
    assert!(
        first.stdout().contains("KICKED takeover"),
        "{}",
        first.stdout()
    );
    assert!(first.stderr().contains("KICKED"), "{}", first.stderr());
    let closed = first
        .wait_event(PATIENCE, |e| e["event"] == "connection_closed")
        .expect("the first client logged its end");
    assert_eq!(closed["cause"], "takeover", "{closed}");

    // The second client keeps the device, and stays.
    let taken = server
        .wait_event(|e| e["event"] == "session_taken_over", PATIENCE)
        .expect("session_taken_over");
    assert_eq!(taken["old_session"], first_started["session"], "{taken}");
    second.type_line("PING mine");
    second.wait_stdout("PONG mine");
    assert!(second.is_running(), "{}", second.stderr());
    let sessions = server.admin_get("/sessions").json();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    assert_eq!(sessions[0]["session"], taken["session"], "{sessions}");
}

#[test]
fn a_client_with_its_token_opens_a_session_on_a_server_with_a_secret() {
    let dir = common::TempDir::new("client-secret");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "client-secret\n").unwrap();
    let secret = secret.to_str().unwrap();
    let mut server = TestServer::start(&["--auth-secret", secret]);
    let addr = server.addr().to_string();
    let output = common::run_hangup(&["token", "badge-4", "--auth-secret", secret]);
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let mut client = ClientProcess::start(&[
        &addr,
        "--device",
        "badge-4",
        "--token",
        &token,
        "--heartbeat",
        "30",
    ]);
    session_started(&mut server, "badge-4");
    client.wait_stdout("WELCOME ");
    client.type_line("PING ok");
    client.wait_stdout("PONG ok");

    // Without the token the server says why, and the connection stays usable.
    let mut refused = ClientProcess::start(&[&addr, "--device", "badge-5", "--heartbeat", "30"]);
    refused.wait_stdout("ERR unauthorized");
    refused.type_line("PING still-here");
    refused.wait_stdout("PONG still-here");
    assert!(refused.is_running());
}
