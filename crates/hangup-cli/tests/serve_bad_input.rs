//! Bad input over a real socket (SPEC §3, §5): every malformed line gets its `ERR` and
//! the connection lives on (proved by `PING` → `PONG` after each); memory stays bounded
//! whatever a peer sends; the connection limit answers `ERR busy`; running out of file
//! descriptors neither makes the accept loop spin nor stops it for good.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{poll_until, ticks_per_second, LineClient, TestServer, ENDLESS_JOB, PATIENCE};
use hangup_core::{ErrorCode, Reply};

/// Sends `input` and checks that the reply starts with `expected`, then that the
/// connection still answers PING.
fn assert_rejected(client: &mut LineClient, input: &[u8], expected: &str, tag: &str) {
    client.send_raw(input);
    let reply = client.reply();
    assert!(
        reply.starts_with(expected),
        "input {:?}: expected `{expected}…`, got `{reply}`",
        String::from_utf8_lossy(&input[..input.len().min(60)])
    );
    client.assert_alive(tag);
}

#[test]
fn malformed_lines_get_err_and_the_connection_lives() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let long_line = format!("PING {}\n", "x".repeat(5000));
    let cases: [(&[u8], &str); 11] = [
        (long_line.as_bytes(), "ERR too-long "),
        (b"PING \xff\xfe\x80\n", "ERR bad-request "),
        (b"PING a\0b\n", "ERR bad-request "),
        (b"FROBNICATE now\n", "ERR unknown-command "),
        (b"JOB 0\n", "ERR bad-request "),
        (b"JOB 10000000001\n", "ERR bad-request "),
        (b"JOB abc\n", "ERR bad-request "),
        (b"JOB -1\n", "ERR bad-request "),
        (b"JOB\n", "ERR bad-request "),
        (b"CANCEL 99\n", "ERR not-found "),
        (b"CANCEL x\n", "ERR bad-request "),
    ];
    for (i, (input, expected)) in cases.iter().enumerate() {
        assert_rejected(&mut client, input, expected, &format!("case-{i}"));
    }
    // `\r\n` endings are accepted, comments and empty lines get no reply.
    client.send_raw(b"# a comment\n\nPING crlf\r\n");
    assert_eq!(client.reply(), "PONG crlf");
}

/// A 100 MB line without a newline is discarded as it streams in, not buffered.
#[test]
fn a_hundred_megabyte_line_is_discarded_without_buffering() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    client.assert_alive("before");
    let rss_before = server.rss_kib();
    let chunk = vec![b'a'; 1 << 20];
    let mut rss_max = rss_before;
    for _ in 0..100 {
        client.send_raw(&chunk);
        rss_max = rss_max.max(server.rss_kib());
    }
    client.send_raw(b"\n");
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::TooLong),
        "got `{reply}`"
    );
    rss_max = rss_max.max(server.rss_kib());
    client.assert_alive("after");
    let growth_mib = rss_max.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 64,
        "server RSS grew by {growth_mib} MiB ({rss_before} KiB → {rss_max} KiB) for a 100 MB line"
    );
}

#[test]
fn more_than_sixty_four_queued_jobs_are_refused() {
    let mut server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    // One running and 64 queued are accepted; the next is one too many.
    let jobs = format!("{ENDLESS_JOB}\n").repeat(66);
    client.send_raw(jobs.as_bytes());
    for id in 1..=65 {
        assert_eq!(client.reply(), format!("ACCEPTED {id}"));
    }
    let reply = client.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::TooManyJobs),
        "got `{reply}`"
    );
    client.assert_alive("queue-full");
    client.send("STATUS");
    assert_eq!(
        client.reply(),
        "STATUS connections=1 sessions=0 jobs_running=1 jobs_queued=64"
    );
    drop(client);
    server.expect_event("connection_closed", peer);
    assert_eq!(server.events_for("job_cancelled", peer).len(), 65);
}

#[test]
fn the_connection_limit_answers_busy_then_closes() {
    let mut server = TestServer::start(&["--max-connections", "2"]);
    let mut first = LineClient::connect(server.addr());
    first.assert_alive("first");
    let mut second = LineClient::connect(server.addr());
    second.assert_alive("second");

    let mut third = LineClient::connect(server.addr());
    let refused = third.line();
    assert_eq!(
        common::err_code(&refused),
        Some(ErrorCode::Busy),
        "got `{refused}`"
    );
    assert_eq!(third.read_line(), None, "the refused client must get EOF");

    // A slot frees up: the next client is served.
    let peer = first.local_addr();
    drop(first);
    server.expect_event("connection_closed", peer);
    // The slot is released just after that event is logged: retry while still busy.
    let mut attempts = 0;
    let served = poll_until(PATIENCE, Duration::from_millis(20), || {
        attempts += 1;
        let mut fourth = LineClient::connect(server.addr());
        fourth.send("PING fourth");
        let reply = fourth.reply();
        assert!(
            reply == "PONG fourth" || common::err_code(&reply) == Some(ErrorCode::Busy),
            "got `{reply}`"
        );
        (reply == "PONG fourth").then_some(fourth)
    });
    assert!(served.is_some(), "no slot freed after {attempts} attempts");
    second.assert_alive("second-again");
}

/// Out of descriptors (EMFILE), the accept loop pauses instead of spinning on the
/// pending connection, and serves it once descriptors are free again.
#[test]
fn accept_survives_emfile_without_spinning() {
    const FD_LIMIT: libc::rlim_t = 40;
    let mut server = TestServer::start_with(&[], |command| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: FD_LIMIT,
                    rlim_max: FD_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });

    // Open connections until one is no longer served (it waits in the backlog).
    let mut served = Vec::new();
    let mut unserved = None;
    for i in 0..FD_LIMIT {
        let mut client = LineClient::connect(server.addr());
        client.set_read_timeout(Duration::from_millis(500));
        client.send(&format!("PING {i}"));
        match client.try_read_line() {
            Ok(Some(line)) => {
                assert_eq!(line, format!("PONG {i}"));
                served.push(client);
            }
            _ => {
                unserved = Some(client);
                break;
            }
        }
    }
    let mut unserved = unserved.unwrap_or_else(|| {
        panic!(
            "all {} connections were served under an fd limit of {FD_LIMIT}",
            served.len()
        )
    });
    assert!(
        served.len() >= 5,
        "only {} connections were served",
        served.len()
    );

    let paused = server.wait_event(|e| e["event"] == "accept_paused", PATIENCE);
    assert!(
        paused.is_some(),
        "the server never reported running out of descriptors"
    );

    // While out of descriptors, the server must idle, not spin.
    let ticks_before = server.cpu_ticks();
    let waited = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = Duration::from_secs_f64(
        (server.cpu_ticks() - ticks_before) as f64 / ticks_per_second() as f64,
    );
    assert!(
        cpu < Duration::from_millis(500),
        "the server used {cpu:?} of CPU in {:?} while out of descriptors (spinning?)",
        waited.elapsed()
    );

    // Free some descriptors: the waiting client and a new one are served.
    served.truncate(served.len() - 5);
    unserved.set_read_timeout(PATIENCE);
    let reply = unserved.reply();
    assert!(
        matches!(Reply::parse(&reply), Ok(Reply::Pong(_))),
        "got `{reply}`"
    );
    let mut fresh = LineClient::connect(server.addr());
    fresh.assert_alive("recovered");
    for client in &mut served {
        client.set_read_timeout(PATIENCE);
        client.assert_alive("still-served");
    }
}
