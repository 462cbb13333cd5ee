//! A client hangs up while its job runs: the server cancels the running job and the
//! queued ones, and logs why (SPEC §3 "Hangup during a job"). Real kernel sockets on
//! loopback; the jobs are 10^10 rounds, so only a detected hangup can end them within
//! the test's bounds.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;

use common::{LineClient, TestServer, ENDLESS_JOB};
use serde_json::Value;

/// Starts an endless job on a fresh connection and waits until it runs.
fn client_with_running_job(server: &mut TestServer) -> LineClient {
    let mut client = LineClient::connect(server.addr());
    client.send(ENDLESS_JOB);
    assert_eq!(client.reply(), "ACCEPTED 1");
    server.expect_event("job_started", client.local_addr());
    client
}

/// The `job_cancelled` event of job `job` from `peer`.
fn cancelled_job(server: &mut TestServer, peer: SocketAddr, job: u64) -> Value {
    server.expect_job_event("job_cancelled", peer, job)
}

#[test]
fn fin_during_a_job_cancels_it_as_peer_closed() {
    let mut server = TestServer::start(&[]);
    let client = client_with_running_job(&mut server);
    let peer = client.local_addr();
    drop(client); // close(): FIN

    let cancelled = cancelled_job(&mut server, peer, 1);
    assert_eq!(cancelled["cause"], "peer_closed", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_closed", "{closed}");
    assert!(server.events_for("job_done", peer).is_empty());
}

#[test]
fn rst_during_a_job_cancels_it_as_peer_reset() {
    let mut server = TestServer::start(&[]);
    let client = client_with_running_job(&mut server);
    let peer = client.local_addr();
    client.reset(); // SO_LINGER 0: RST

    let cancelled = cancelled_job(&mut server, peer, 1);
    assert_eq!(cancelled["cause"], "peer_reset", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_reset", "{closed}");
}

/// The FIN comes after 1 MB of pipelined comment lines (which get no replies): the
/// hangup is noticed although the server may still have input queued.
#[test]
fn fin_after_a_megabyte_of_pipelined_lines_cancels_the_job() {
    let mut server = TestServer::start(&[]);
    let mut client = client_with_running_job(&mut server);
    let peer = client.local_addr();
    let line = format!("# filler {}\n", "x".repeat(54)); // 64 bytes
    let filler = line.repeat((1 << 20) / line.len());
    assert_eq!(filler.len(), 1 << 20);
    client.send_raw(filler.as_bytes());
    drop(client);

    let cancelled = cancelled_job(&mut server, peer, 1);
    assert_eq!(cancelled["cause"], "peer_closed", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_closed", "{closed}");
}

#[test]
fn queued_jobs_are_cancelled_with_the_running_one() {
    let mut server = TestServer::start(&[]);
    let mut client = client_with_running_job(&mut server);
    let peer = client.local_addr();
    client.send("JOB 10000000000 second");
    assert_eq!(client.reply(), "ACCEPTED 2");
    client.send("JOB 5 third");
    assert_eq!(client.reply(), "ACCEPTED 3");
    drop(client);

    let running = cancelled_job(&mut server, peer, 1);
    assert_eq!(running["cause"], "peer_closed", "{running}");
    assert_eq!(running["was_running"], true, "{running}");
    for job in [2, 3] {
        let queued = cancelled_job(&mut server, peer, job);
        assert_eq!(queued["cause"], "peer_closed", "{queued}");
        assert_eq!(queued["was_running"], false, "{queued}");
    }
    server.expect_event("connection_closed", peer);
    assert_eq!(server.events_for("job_started", peer).len(), 1);
    assert!(server.events_for("job_done", peer).is_empty());
}

/// `--watch-hangup off`: no EPOLLRDHUP, so the server learns of the FIN only when its
/// reads reach end of input; then the half-close probe draws the closed socket's RST.
/// The job still ends here because this server keeps reading pipelined lines while a
/// job runs, so EOF comes right behind the last byte. The difference: with the watch
/// the FIN is seen the moment it arrives, even while the server is not reading (its
/// reply queue over the high-water mark, or a server that reads only between jobs);
/// without it such a server would not notice until it next reads or writes.
#[test]
fn without_the_watch_fin_is_found_at_end_of_input() {
    let mut server = TestServer::start(&["--watch-hangup", "off"]);
    let client = client_with_running_job(&mut server);
    let peer = client.local_addr();
    drop(client);

    let cancelled = cancelled_job(&mut server, peer, 1);
    assert_eq!(cancelled["cause"], "peer_closed", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "peer_closed", "{closed}");
}
