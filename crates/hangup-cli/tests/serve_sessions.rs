//! Sessions over real loopback sockets against the real `hangup serve` (SPEC §4): the
//! granted heartbeat is enforced (a silent session closes after 1.5 × H, one that
//! PINGs stays), and bad `HELLO`s get `ERR` without costing the connection.
#![cfg(target_os = "linux")]

mod common;

use std::io::ErrorKind;
use std::thread;
use std::time::{Duration, Instant};

use common::{hello, welcome_session, LineClient, TestServer};
use hangup_core::ErrorCode;

/// H = 1 s: dead after 1.5 s of inbound silence.
const DEAD_AFTER: Duration = Duration::from_millis(1500);

/// The latest a heartbeat close may come: the budget plus 10 %, plus a wide margin
/// for a machine shared with builds (a timer firing late, a busy scheduler).
fn latest_close() -> Duration {
    DEAD_AFTER.mul_f64(1.1) + Duration::from_secs(1)
}

#[test]
fn a_silent_session_is_closed_as_heartbeat_missed_after_one_and_a_half_heartbeats() {
    let mut server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    // The server's clock for the session starts when it reads this HELLO, i.e. after
    // `sent`: it cannot close before sent + 1.5 s.
    let sent = Instant::now();
    client.send("HELLO quiet-1 heartbeat=1");
    let welcome = client.reply();
    let welcomed = Instant::now();
    assert!(welcome.ends_with("heartbeat=1 dead-after=1.5"), "{welcome}");

    // Silence. The server resets the socket (nothing it holds will be read) or closes.
    match client.try_read_line() {
        Ok(None) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the silent session, got {other:?}"),
    }
    let closed_after_hello = sent.elapsed();
    let closed_after_welcome = welcomed.elapsed();
    assert!(
        closed_after_hello >= DEAD_AFTER,
        "closed {closed_after_hello:?} after HELLO, before the 1.5 s budget"
    );
    assert!(
        closed_after_welcome <= latest_close(),
        "closed {closed_after_welcome:?} after WELCOME; the budget is 1.5 s (bound {:?})",
        latest_close()
    );

    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "heartbeat_missed", "{closed}");
    let silent_ms = closed["silent_ms"].as_u64().expect("silent_ms");
    assert!(
        (1500..=latest_close().as_millis() as u64).contains(&silent_ms),
        "the server measured {silent_ms} ms of silence: {closed}"
    );
    server.assert_no_panic();
}

#[test]
fn a_session_that_pings_every_half_second_stays_open() {
    let mut server = TestServer::start(&[]);
    let (mut client, _) = hello(server.addr(), "chatty-1", "heartbeat=1");
    let peer = client.local_addr();
    // Three budgets' worth of time: a missed heartbeat would have closed it twice over.
    let until = Instant::now() + 3 * DEAD_AFTER;
    let mut n = 0;
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(500));
        client.assert_alive(&format!("beat-{n}"));
        n += 1;
    }
    assert!(
        server.events_for("connection_closed", peer).is_empty(),
        "the session was closed although it pinged"
    );
    client.send("STATUS");
    let status = client.reply();
    assert!(status.contains(" sessions=1 "), "{status}");
}

/// Any inbound line counts as life, not only PING (SPEC §4).
#[test]
fn comment_lines_also_keep_a_session_alive() {
    let mut server = TestServer::start(&[]);
    let (mut client, _) = hello(server.addr(), "commenter", "heartbeat=1");
    let peer = client.local_addr();
    let until = Instant::now() + 2 * DEAD_AFTER;
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(500));
        client.send("# still here");
    }
    client.assert_alive("after-comments");
    assert!(server.events_for("connection_closed", peer).is_empty());
}

#[test]
fn bad_hellos_get_err_and_the_connection_stays_usable() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let too_long = "d".repeat(129);
    let cases = [
        ("HELLO", "ERR bad-request"),
        ("HELLO bad/device", "ERR bad-request"),
        ("HELLO dév", "ERR bad-request"),
        ("HELLO sp ace heartbeat=1", "ERR bad-request"),
        (&*format!("HELLO {too_long}"), "ERR bad-request"),
        ("HELLO ok-device heartbeat=soon", "ERR bad-request"),
        ("HELLO ok-device heartbeat=-1", "ERR bad-request"),
        ("HELLO ok-device heartbeat=1.5", "ERR bad-request"),
    ];
    for (i, (line, expected)) in cases.iter().enumerate() {
        client.send(line);
        let reply = client.reply();
        assert!(
            reply.starts_with(expected),
            "`{line}` should get `{expected} …`, got `{reply}`"
        );
        client.assert_alive(&format!("after-bad-hello-{i}"));
    }
    // 128 characters of the whole charset is a device id.
    let longest = format!("Az09._:-{}", "x".repeat(120));
    client.send(&format!("HELLO {longest} heartbeat=5"));
    welcome_session(&client.reply());
    client.assert_alive("with-session");
}

#[test]
fn hello_twice_on_one_connection_is_refused_and_the_session_stays() {
    let mut server = TestServer::start(&[]);
    let (mut client, session) = hello(server.addr(), "twice", "heartbeat=5");
    let peer = client.local_addr();
    client.send("HELLO twice heartbeat=5");
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::BadRequest),
        "{reply}"
    );
    client.send("HELLO other-device");
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::BadRequest),
        "{reply}"
    );
    client.assert_alive("after-second-hello");
    // The log reaches the test through a pipe: the first start may still be on its way.
    server.expect_event("session_started", peer);
    assert_eq!(server.events_for("session_started", peer).len(), 1);
    let sessions = server.admin_get("/sessions").json();
    let rows = sessions.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{sessions}");
    assert_eq!(rows[0]["session"], session.as_str(), "{sessions}");
    assert_eq!(rows[0]["device"], "twice", "{sessions}");
}

#[test]
fn heartbeats_outside_one_second_to_an_hour_are_clamped_and_say_so() {
    let server = TestServer::start(&[]);
    let cases = [
        ("heartbeat=0", "heartbeat=1 dead-after=1.5 clamped-from=0"),
        (
            "heartbeat=100000",
            "heartbeat=3600 dead-after=5400 clamped-from=100000",
        ),
        (
            "heartbeat=18446744073709551615",
            "heartbeat=3600 dead-after=5400 clamped-from=18446744073709551615",
        ),
        ("heartbeat=1", "heartbeat=1 dead-after=1.5"),
        ("heartbeat=3600", "heartbeat=3600 dead-after=5400"),
        ("", "heartbeat=30 dead-after=45"),
    ];
    for (i, (proposal, granted)) in cases.iter().enumerate() {
        let mut client = LineClient::connect(server.addr());
        client.send(format!("HELLO clamp-{i} {proposal}").trim_end());
        let welcome = client.reply();
        let session = welcome_session(&welcome);
        assert_eq!(welcome, format!("WELCOME {session} {granted}"));
    }
}

/// SPEC §3: more PINGs than the session's rate (10 a second, bursts of 20) get
/// `ERR rate-limited` and the connection is closed, with FIN.
#[test]
fn a_ping_flood_in_a_session_is_rate_limited_then_closed() {
    let mut server = TestServer::start(&[]);
    let (mut client, _) = hello(server.addr(), "flooder", "heartbeat=5");
    let peer = client.local_addr();
    client.send_raw("PING flood\n".repeat(200).as_bytes());
    let lines = client.lines_to_eof();
    let pongs = lines.iter().filter(|l| *l == "PONG flood").count();
    let last = lines.last().expect("some replies");
    assert_eq!(
        common::err_code(last),
        Some(ErrorCode::RateLimited),
        "{lines:?}"
    );
    assert!(
        (1..200).contains(&pongs),
        "{pongs} PONGs before the limit: {lines:?}"
    );
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "protocol_error", "{closed}");

    // Anonymous connections are not rate limited (back-pressure bounds them).
    let mut anonymous = LineClient::connect(server.addr());
    anonymous.send_raw("PING a\n".repeat(200).as_bytes());
    for _ in 0..200 {
        assert_eq!(anonymous.reply(), "PONG a");
    }
    anonymous.assert_alive("anonymous-after-flood");
}
