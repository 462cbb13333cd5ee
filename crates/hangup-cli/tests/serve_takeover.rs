//! Takeover over real loopback sockets (SPEC §4): a device's new `HELLO` evicts its
//! old connection at once — `KICKED takeover`, then a clean EOF, its job cancelled —
//! and leaves no ghost socket; racing with the old connection's own close, exactly
//! one session stays live and the presence store ends the old one exactly once.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{hello, poll_until, presence_rows, LineClient, TestServer, ENDLESS_JOB, PATIENCE};
use hangup_core::Cause;
use hangup_inspect::TcpState;

/// Server-side sockets of the connection from `client` (local port = the server's,
/// peer = the client's address) that are still ESTABLISHED or CLOSE_WAIT.
fn server_sockets_left(server: SocketAddr, client: SocketAddr) -> Vec<TcpState> {
    let snapshot = hangup_inspect::collect().expect("sock_diag dump");
    snapshot
        .sockets
        .iter()
        .filter(|s| s.local.port() == server.port() && s.peer == client)
        .filter(|s| matches!(s.state, TcpState::Established | TcpState::CloseWait))
        .map(|s| s.state)
        .collect()
}

#[test]
fn takeover_kicks_the_old_connection_cancels_its_job_and_leaves_no_ghost() {
    let mut server = TestServer::start(&[]);
    let (mut old, old_session) = hello(server.addr(), "phone-7", "heartbeat=30");
    let old_peer = old.local_addr();
    old.send(ENDLESS_JOB);
    assert_eq!(old.reply(), "ACCEPTED 1");
    server.expect_event("job_started", old_peer);

    let (mut new, new_session) = hello(server.addr(), "phone-7", "heartbeat=30");
    let new_peer = new.local_addr();
    assert_ne!(old_session, new_session);

    // The old connection: KICKED, then EOF (read returns 0), not a reset.
    assert_eq!(old.reply(), "KICKED takeover");
    match old.bytes_to_eof() {
        Ok(rest) => assert!(
            rest.iter().all(|&b| b == b'#' || b == b'\n'),
            "unexpected bytes after KICKED: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(kind) => panic!("the old connection ended with {kind:?}, not EOF"),
    }

    let cancelled = server.expect_job_event("job_cancelled", old_peer, 1);
    assert_eq!(cancelled["cause"], "takeover", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let taken = server.expect_event("session_taken_over", new_peer);
    assert_eq!(taken["device"], "phone-7", "{taken}");
    assert_eq!(taken["old_session"], old_session.as_str(), "{taken}");
    assert_eq!(taken["session"], new_session.as_str(), "{taken}");
    let closed = server.expect_event("connection_closed", old_peer);
    assert_eq!(closed["cause"], "takeover", "{closed}");

    // The old client closes too: no server socket of its connection may be left.
    drop(old);
    let cleared = poll_until(PATIENCE, Duration::from_millis(20), || {
        server_sockets_left(server.addr(), old_peer)
            .is_empty()
            .then_some(())
    });
    assert!(
        cleared.is_some(),
        "ghost: server sockets of {old_peer} left: {:?}",
        server_sockets_left(server.addr(), old_peer)
    );
    // The new connection is the live one.
    new.assert_alive("new-owner");
    new.send("STATUS");
    let status = new.reply();
    assert!(status.contains(" sessions=1 "), "{status}");
    server.assert_no_panic();
}

/// How the old client goes away in a race round.
#[derive(Debug, Clone, Copy)]
enum OldEnd {
    /// close(): FIN.
    Close,
    /// SO_LINGER 0: RST.
    Reset,
}

#[test]
fn takeover_racing_the_old_connections_close_leaves_exactly_one_session() {
    let mut server = TestServer::start(&[]);
    let data_dir = server.data_dir().expect("harness data dir").to_owned();
    let addr = server.addr();
    let rounds = 50;
    let started = Instant::now();
    // Every old session id and device, and the live new connections.
    let mut old_sessions: Vec<(String, String)> = Vec::new();
    let mut new_clients: Vec<(String, String, LineClient)> = Vec::new();
    for round in 0..rounds {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the race loop took too long (round {round})"
        );
        let device = format!("racer-{round}");
        let end = if round % 2 == 0 {
            OldEnd::Close
        } else {
            OldEnd::Reset
        };
        let (old, old_session) = hello(addr, &device, "heartbeat=30");
        // The new connection is established before the race, so that only the
        // HELLO and the old close race each other.
        let mut new = LineClient::connect(addr);
        let barrier = Arc::new(Barrier::new(2));
        let closer = {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                match end {
                    OldEnd::Close => drop(old),
                    OldEnd::Reset => old.reset(),
                }
            })
        };
        barrier.wait();
        new.send(&format!("HELLO {device} heartbeat=30"));
        closer.join().expect("the closer thread");
        let welcome = new.reply();
        let new_session = common::welcome_session(&welcome);
        old_sessions.push((device.clone(), old_session));
        new_clients.push((device, new_session, new));
    }

    // Exactly one live session per device: the new connection's.
    let expected: HashMap<&str, &str> = new_clients
        .iter()
        .map(|(d, s, _)| (d.as_str(), s.as_str()))
        .collect();
    let settled = poll_until(PATIENCE, Duration::from_millis(50), || {
        let sessions = server.admin_get("/sessions").json();
        let rows = sessions.as_array().expect("an array").clone();
        let live: HashMap<String, String> = rows
            .iter()
            .map(|r| {
                (
                    r["device"].as_str().unwrap().to_owned(),
                    r["session"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let exact = rows.len() == rounds
            && expected
                .iter()
                .all(|(d, s)| live.get(*d).map(String::as_str) == Some(*s));
        exact.then_some(())
    });
    assert!(
        settled.is_some(),
        "the live sessions are not exactly the new ones: {}",
        server.admin_get("/sessions").body
    );
    let (_, _, first) = &mut new_clients[0];
    first.send("STATUS");
    let status = first.reply();
    assert!(status.contains(&format!(" sessions={rounds} ")), "{status}");

    // The presence store: each old session ended exactly once, by takeover or by its
    // own close; each new one is open.
    let complete = poll_until(PATIENCE, Duration::from_millis(50), || {
        let rows = presence_rows(&data_dir);
        let ended_olds = old_sessions
            .iter()
            .filter(|(_, s)| rows.iter().any(|r| &r.session == s && r.ended_at.is_some()))
            .count();
        (ended_olds == rounds && rows.len() == 2 * rounds).then_some(rows)
    });
    let rows = complete.unwrap_or_else(|| {
        panic!(
            "presence rows never settled: {:#?}",
            presence_rows(&data_dir)
        )
    });
    for (device, session) in &old_sessions {
        let mine: Vec<_> = rows.iter().filter(|r| &r.session == session).collect();
        assert_eq!(mine.len(), 1, "{device}: rows {mine:#?}");
        let cause = mine[0].cause;
        assert!(
            matches!(
                cause,
                Some(Cause::Takeover | Cause::PeerClosed | Cause::PeerReset)
            ),
            "{device}: old session ended with {cause:?}"
        );
        assert_eq!(mine[0].device, *device);
    }
    for (device, session, _) in &new_clients {
        let mine: Vec<_> = rows.iter().filter(|r| &r.session == session).collect();
        assert_eq!(mine.len(), 1, "{device}: rows {mine:#?}");
        assert_eq!(mine[0].ended_at, None, "{device}: {mine:#?}");
    }

    // Every new connection still works, and the server did not panic.
    for (device, _, client) in &mut new_clients {
        client.assert_alive(device);
    }
    server.assert_no_panic();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}; {}", server.stderr_text());
    server.assert_no_panic();
    // The new connections saw GOAWAY and a clean end.
    for (device, _, client) in &mut new_clients {
        let lines = client.lines_to_eof();
        assert_eq!(lines, ["GOAWAY shutdown"], "{device}");
    }
}

/// Twenty connections say HELLO for one device at once: whichever order the server
/// takes them in, one session is live at the end, every other one was kicked, and the
/// presence store ended each of those once, as `takeover`.
#[test]
fn a_storm_of_hellos_for_one_device_leaves_one_live_session() {
    let server = TestServer::start(&[]);
    let data_dir = server.data_dir().unwrap().to_owned();
    let addr = server.addr();
    let contenders = 20;
    let barrier = Arc::new(Barrier::new(contenders));
    let threads: Vec<_> = (0..contenders)
        .map(|_| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut client = LineClient::connect(addr);
                barrier.wait();
                client.send("HELLO contested heartbeat=30");
                let session = common::welcome_session(&client.reply());
                (client, session)
            })
        })
        .collect();
    let mut clients: Vec<(LineClient, String)> = threads
        .into_iter()
        .map(|t| t.join().expect("a contender"))
        .collect();

    let live = poll_until(PATIENCE, Duration::from_millis(20), || {
        let sessions = server.admin_get("/sessions").json();
        let rows = sessions.as_array().unwrap().clone();
        (rows.len() == 1).then(|| rows[0]["session"].as_str().unwrap().to_owned())
    })
    .unwrap_or_else(|| {
        panic!(
            "not one live session: {}",
            server.admin_get("/sessions").body
        )
    });
    let mut kicked = 0;
    for (client, session) in &mut clients {
        if *session == live {
            client.assert_alive("winner");
        } else {
            assert_eq!(client.reply(), "KICKED takeover", "session {session}");
            assert!(client.bytes_to_eof().is_ok(), "session {session}: not EOF");
            kicked += 1;
        }
    }
    assert_eq!(kicked, contenders - 1);

    let rows = poll_until(PATIENCE, Duration::from_millis(20), || {
        let rows = presence_rows(&data_dir);
        let ended = rows.iter().filter(|r| r.ended_at.is_some()).count();
        (rows.len() == contenders && ended == contenders - 1).then_some(rows)
    })
    .unwrap_or_else(|| panic!("presence: {:#?}", presence_rows(&data_dir)));
    for row in rows {
        if row.session == live {
            assert_eq!(row.cause, None, "{row:?}");
        } else {
            assert_eq!(row.cause, Some(Cause::Takeover), "{row:?}");
        }
    }
    server.assert_no_panic();
}

/// The evicted client never closes its socket (a device that forgot it): the server
/// still lets go of its side — no ESTABLISHED or CLOSE_WAIT socket is left to it.
#[test]
fn an_old_client_that_lingers_after_kicked_leaves_no_ghost_either() {
    let server = TestServer::start(&[]);
    let (mut old, _) = hello(server.addr(), "forgetful", "heartbeat=30");
    let old_peer = old.local_addr();
    let (mut new, _) = hello(server.addr(), "forgetful", "heartbeat=30");
    assert_eq!(old.reply(), "KICKED takeover");
    assert_eq!(old.read_line(), None, "EOF after KICKED");
    // `old` stays open: its side is in CLOSE_WAIT, the server's must not linger.
    let cleared = poll_until(PATIENCE, Duration::from_millis(20), || {
        server_sockets_left(server.addr(), old_peer)
            .is_empty()
            .then_some(())
    });
    assert!(
        cleared.is_some(),
        "ghost: {:?}",
        server_sockets_left(server.addr(), old_peer)
    );
    new.assert_alive("new");
    drop(old);
}
