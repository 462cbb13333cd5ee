//! A client sends FIN while its job is pending, under each `--on-half-close` policy
//! (SPEC §3): `probe` tells a half-close (`shutdown(SHUT_WR)`, as `nc -N` does) from a
//! real close by the RST a closed socket answers a `#` line with; `cancel` treats FIN as
//! a hangup; `finish` never cancels on FIN.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{chain_hex, poll_until, LineClient, TestServer, ENDLESS_JOB, PATIENCE};

const ROUNDS: u64 = 200_000;

/// Sends `JOB 200000`, half-closes, and returns every line up to the server's EOF.
fn half_close_after_job(server: &mut TestServer) -> (std::net::SocketAddr, Vec<String>) {
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client.send(&format!("JOB {ROUNDS}"));
    client.shutdown_write();
    (peer, client.lines_to_eof())
}

#[test]
fn probe_lets_a_half_closed_client_get_its_result() {
    let mut server = TestServer::start(&[]);
    let (peer, lines) = half_close_after_job(&mut server);
    let done = format!("DONE 1 {}", chain_hex("hangup", ROUNDS));
    assert_eq!(lines, ["ACCEPTED 1", "#", done.as_str()]);

    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_closed", "{closed}");
    assert_eq!(server.events_for("job_done", peer).len(), 1);
    assert!(server.events_for("job_cancelled", peer).is_empty());
}

#[test]
fn cancel_treats_fin_as_a_hangup() {
    let mut server = TestServer::start(&["--on-half-close", "cancel"]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client.send(&format!("JOB {ROUNDS}"));
    client.shutdown_write();
    // The server drops its queued replies and closes at once; depending on what it had
    // read, that ends in FIN or RST. Either way no DONE may come.
    let received = client.bytes_to_eof().unwrap_or_default();
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("DONE"), "got {text:?}");

    let cancelled = server.expect_event("job_cancelled", peer);
    assert_eq!(cancelled["cause"], "peer_closed", "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_closed", "{closed}");
    assert!(server.events_for("job_done", peer).is_empty());
}

#[test]
fn finish_sends_the_result_without_probing() {
    let mut server = TestServer::start(&["--on-half-close", "finish"]);
    let (peer, lines) = half_close_after_job(&mut server);
    let done = format!("DONE 1 {}", chain_hex("hangup", ROUNDS));
    assert_eq!(lines, ["ACCEPTED 1", done.as_str()]);

    server.expect_event("connection_closed", peer);
    assert!(server.events_for("job_cancelled", peer).is_empty());
}

/// Under `probe`, a client that half-closes and then closes for real is a hangup: the
/// probe (or reply) it leaves unread makes its kernel answer with RST, and since the FIN
/// came first the cause is `peer_closed`.
///
/// The client waits until the probe has arrived before closing: a socket that closes
/// after its FIN *and* after reading everything sends nothing more, and no server can
/// tell that from a half-close until it next writes.
#[test]
fn probe_cancels_a_client_that_closes_after_half_closing() {
    let mut server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client.send(ENDLESS_JOB);
    client.shutdown_write();
    let expected = b"ACCEPTED 1\n#\n".len();
    let mut buf = [0u8; 64];
    let arrived = poll_until(PATIENCE, Duration::from_millis(5), || {
        let queued = client.stream.peek(&mut buf).expect("peek");
        (queued >= expected).then_some(queued)
    });
    assert!(arrived.is_some(), "no ACCEPTED and probe from the server");
    assert_eq!(&buf[..expected], b"ACCEPTED 1\n#\n");
    drop(client); // unread data: RST

    let cancelled = server.expect_event("job_cancelled", peer);
    assert_eq!(cancelled["cause"], "peer_closed", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_closed", "{closed}");
}
