//! Jobs over a real socket (SPEC §3): DONE digests checked against a SHA-256 chain
//! computed here with `sha2`, order within a connection, CANCEL, STATUS and BYE.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{chain_hex, poll_until, LineClient, TestServer, ENDLESS_JOB, PATIENCE};

#[test]
fn digests_match_an_independent_chain_with_the_default_seed() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    for (id, rounds) in [(1, 1), (2, 2), (3, 1000), (4, 123_457)] {
        client.send(&format!("JOB {rounds}"));
        assert_eq!(client.reply(), format!("ACCEPTED {id}"));
        assert_eq!(
            client.reply(),
            format!("DONE {id} {}", chain_hex("hangup", rounds))
        );
    }
    // The first round is SHA-256 of the seed itself.
    assert_eq!(
        chain_hex("hangup", 1),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"hangup"))
    );
}

#[test]
fn digests_match_an_independent_chain_with_a_custom_seed() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    client.send("job 5000 s33d-ü"); // commands are case-insensitive, seeds are UTF-8
    assert_eq!(client.reply(), "ACCEPTED 1");
    let done = client.reply();
    assert_eq!(done, format!("DONE 1 {}", chain_hex("s33d-ü", 5000)));
    assert_ne!(done, format!("DONE 1 {}", chain_hex("hangup", 5000)));
}

#[test]
fn jobs_of_one_connection_run_in_order() {
    let mut server = TestServer::start(&["--workers", "2"]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    // Pipelined in one write: the long job first, then two short ones that would finish
    // first if they ran beside it.
    client.send_raw(b"JOB 300000\nJOB 1 a\nJOB 2 b\n");
    let lines: Vec<String> = (0..6).map(|_| client.reply()).collect();
    assert_eq!(
        lines,
        [
            "ACCEPTED 1".to_owned(),
            "ACCEPTED 2".to_owned(),
            "ACCEPTED 3".to_owned(),
            format!("DONE 1 {}", chain_hex("hangup", 300_000)),
            format!("DONE 2 {}", chain_hex("a", 1)),
            format!("DONE 3 {}", chain_hex("b", 2)),
        ]
    );
    // Events are logged in order: once job 3's is in, the earlier ones are too.
    server.expect_job_event("job_done", peer, 3);
    let started: Vec<u64> = server
        .events_for("job_started", peer)
        .iter()
        .map(|e| e["job"].as_u64().unwrap())
        .collect();
    assert_eq!(started, [1, 2, 3]);
}

#[test]
fn cancel_stops_a_queued_and_the_running_job() {
    let mut server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client.send(ENDLESS_JOB);
    client.send(ENDLESS_JOB);
    client.send("JOB 3");
    for id in 1..=3 {
        assert_eq!(client.reply(), format!("ACCEPTED {id}"));
    }
    server.expect_event("job_started", peer);

    client.send("CANCEL 2");
    assert_eq!(client.reply(), "CANCELLED 2");
    client.send("CANCEL 1");
    assert_eq!(client.reply(), "CANCELLED 1");
    // Job 3 runs once job 1 has stopped.
    assert_eq!(client.reply(), format!("DONE 3 {}", chain_hex("hangup", 3)));

    server.expect_job_event("job_done", peer, 3);
    let cancelled = server.events_for("job_cancelled", peer);
    let of = |job: u64| {
        cancelled
            .iter()
            .find(|e| e["job"] == job)
            .unwrap_or_else(|| panic!("no job_cancelled for job {job}: {cancelled:?}"))
    };
    assert_eq!(of(2)["was_running"], false);
    assert_eq!(of(2)["cause"], "local");
    assert_eq!(of(1)["was_running"], true);
    assert_eq!(of(1)["cause"], "local");
    let started: Vec<u64> = server
        .events_for("job_started", peer)
        .iter()
        .map(|e| e["job"].as_u64().unwrap())
        .collect();
    assert_eq!(started, [1, 3], "the cancelled queued job must never start");
    client.assert_alive("after-cancel");
}

#[test]
fn status_counts_connections_and_jobs() {
    let server = TestServer::start(&["--workers", "1"]);
    let mut busy = LineClient::connect(server.addr());
    busy.send(ENDLESS_JOB);
    busy.send(ENDLESS_JOB);
    busy.send(ENDLESS_JOB);
    for id in 1..=3 {
        assert_eq!(busy.reply(), format!("ACCEPTED {id}"));
    }
    // The asking connection counts its own jobs exactly.
    busy.send("STATUS");
    assert_eq!(
        busy.reply(),
        "STATUS connections=1 sessions=0 jobs_running=1 jobs_queued=2"
    );

    let mut other = LineClient::connect(server.addr());
    let expected = "STATUS connections=2 sessions=0 jobs_running=1 jobs_queued=2";
    let mut last = String::new();
    let seen = poll_until(PATIENCE, Duration::from_millis(20), || {
        other.send("STATUS");
        last = other.reply();
        (last == expected).then_some(())
    });
    assert!(seen.is_some(), "last STATUS: {last}");

    busy.send("CANCEL 3");
    assert_eq!(busy.reply(), "CANCELLED 3");
    busy.send("STATUS");
    assert_eq!(
        busy.reply(),
        "STATUS connections=2 sessions=0 jobs_running=1 jobs_queued=1"
    );
}

#[test]
fn bye_after_queued_jobs_sends_every_done_then_bye_then_eof() {
    let mut server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client.send_raw(b"JOB 100000\nJOB 2000 x\nBYE\n");
    // `lines_to_eof` panics on a reset: the close must be a FIN after the last byte.
    let lines = client.lines_to_eof();
    assert_eq!(
        lines,
        [
            "ACCEPTED 1".to_owned(),
            "ACCEPTED 2".to_owned(),
            format!("DONE 1 {}", chain_hex("hangup", 100_000)),
            format!("DONE 2 {}", chain_hex("x", 2000)),
            "BYE".to_owned(),
        ]
    );
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "local", "{closed}");
    assert!(server.events_for("job_cancelled", peer).is_empty());
}
