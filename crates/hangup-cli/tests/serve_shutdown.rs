//! Graceful shutdown of the real server (SPEC §5): on SIGTERM every client gets
//! `GOAWAY shutdown`, jobs in flight finish within `--drain-timeout` and their `DONE`
//! arrives before a clean EOF (FIN, never an RST that could destroy it); a job that
//! outlives the drain is cancelled with cause `shutdown`; `/healthz` says 503 while
//! draining; the server exits 0 after `shutdown_complete`, and at once on a second signal.
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{chain_hex, ticks_per_second, LineClient, TestServer, ENDLESS_JOB, PATIENCE};
use hangup_core::{ErrorCode, Reply};

/// Rounds of a job that takes about `target` on this server now, measured with a
/// calibration job (job threads run at nice 19: on a busy machine they are slow, and
/// the measurement sees that too).
fn rounds_taking(server: &TestServer, target: Duration) -> u64 {
    const PROBE: u64 = 2_000_000;
    let mut client = LineClient::connect(server.addr());
    let started = Instant::now();
    client.send(&format!("JOB {PROBE} calibrate"));
    assert_eq!(client.reply(), "ACCEPTED 1");
    let done = client.reply();
    assert!(
        matches!(Reply::parse(&done), Ok(Reply::Done(1, _))),
        "{done}"
    );
    let per_round = started.elapsed().as_secs_f64() / PROBE as f64;
    ((target.as_secs_f64() / per_round) as u64).clamp(PROBE, 1_000_000_000)
}

/// The drain timeout for jobs that should finish: ~1 s of work with 30× headroom for a
/// machine busy with builds (nice-19 job threads get little CPU then).
const DRAIN_FOR_FINISHING: &str = "30s";

#[test]
fn sigterm_lets_the_job_in_flight_finish_then_closes_with_fin_and_exits_zero() {
    let mut server = TestServer::start(&["--drain-timeout", DRAIN_FOR_FINISHING]);
    let rounds = rounds_taking(&server, Duration::from_secs(1));
    let mut client = LineClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(60));
    let peer = client.local_addr();
    client.send(&format!("JOB {rounds} drain-me"));
    assert_eq!(client.reply(), "ACCEPTED 1");
    server.expect_event("job_started", peer);

    server.signal(libc::SIGTERM);
    // GOAWAY first, while the job still runs; then its result; then EOF.
    assert_eq!(client.reply(), "GOAWAY shutdown");
    // The listener was closed before any GOAWAY went out: new connections are refused.
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "still accepting after GOAWAY"
    );
    let done = client.reply();
    assert_eq!(done, format!("DONE 1 {}", chain_hex("drain-me", rounds)));
    match client.bytes_to_eof() {
        Ok(rest) => assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest)),
        Err(kind) => panic!("the connection ended with {kind:?}, not EOF"),
    }

    let status = server.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}; {}", server.stderr_text());
    let order: Vec<String> = server
        .events_matching(|e| {
            matches!(
                e["event"].as_str(),
                Some("shutdown_started" | "job_done" | "connection_closed" | "shutdown_complete")
            )
        })
        .iter()
        .filter(|e| e["event"] != "connection_closed" || e["peer"] == peer.to_string().as_str())
        .filter(|e| e["event"] != "job_done" || e["peer"] == peer.to_string().as_str())
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        order,
        [
            "shutdown_started",
            "job_done",
            "connection_closed",
            "shutdown_complete"
        ],
        "{}",
        server.stderr_text()
    );
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "shutdown", "{closed}");
    server.assert_no_panic();
}

#[test]
fn a_job_longer_than_the_drain_timeout_is_cancelled_as_shutdown_and_still_gets_fin() {
    let mut server = TestServer::start(&["--drain-timeout", "1s"]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client.send(ENDLESS_JOB);
    assert_eq!(client.reply(), "ACCEPTED 1");
    server.expect_event("job_started", peer);

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(client.reply(), "GOAWAY shutdown");
    match client.bytes_to_eof() {
        Ok(rest) => assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest)),
        Err(kind) => panic!("the connection ended with {kind:?}, not EOF"),
    }
    // The drain timeout started when the server saw the signal, after `signalled`.
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "closed {:?} after SIGTERM, before the 1 s drain timeout",
        signalled.elapsed()
    );

    let cancelled = server.expect_job_event("job_cancelled", peer, 1);
    assert_eq!(cancelled["cause"], "shutdown", "{cancelled}");
    assert_eq!(cancelled["was_running"], true, "{cancelled}");
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "shutdown", "{closed}");
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}; {}", server.stderr_text());
    server
        .wait_event(|e| e["event"] == "shutdown_complete", PATIENCE)
        .expect("shutdown_complete");
    assert!(server.events_for("job_done", peer).is_empty());
}

#[test]
fn while_draining_healthz_is_503_new_jobs_are_refused_and_pings_answered() {
    let mut server = TestServer::start(&["--drain-timeout", "5s"]);
    assert_eq!(server.admin_get("/healthz").status, 200);
    let mut busy = LineClient::connect(server.addr());
    busy.send(ENDLESS_JOB);
    assert_eq!(busy.reply(), "ACCEPTED 1");
    server.expect_event("job_started", busy.local_addr());
    let mut idle = LineClient::connect(server.addr());
    idle.assert_alive("before");

    server.signal(libc::SIGTERM);
    assert_eq!(busy.reply(), "GOAWAY shutdown");
    let health = server.admin_get("/healthz");
    assert_eq!(health.status, 503, "{health:?}");
    assert_eq!(health.body.trim(), "draining");
    let connections = server.admin_get("/connections").json();
    let busy_row = connections
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["peer"] == busy.local_addr().to_string().as_str())
        .unwrap_or_else(|| panic!("no row for the busy client: {connections:#}"))
        .clone();
    assert_eq!(busy_row["state"], "draining", "{busy_row}");
    assert_eq!(busy_row["jobs_running"], 1, "{busy_row}");
    busy.send("JOB 5");
    let reply = busy.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::ShuttingDown),
        "{reply}"
    );
    busy.send("HELLO late-device");
    let reply = busy.reply();
    assert_eq!(
        common::err_code(&reply),
        Some(ErrorCode::ShuttingDown),
        "{reply}"
    );
    busy.assert_alive("draining");

    // The idle connection had nothing in flight: GOAWAY, then EOF at once.
    assert_eq!(idle.lines_to_eof(), ["GOAWAY shutdown"]);
    drop(idle);

    // The busy one lasts until the drain timeout cancels its job.
    assert!(busy.lines_to_eof().is_empty());
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = TestServer::start(&["--drain-timeout", "60s"]);
    let mut client = LineClient::connect(server.addr());
    client.send(ENDLESS_JOB);
    assert_eq!(client.reply(), "ACCEPTED 1");
    server.expect_event("job_started", client.local_addr());
    server.signal(libc::SIGTERM);
    assert_eq!(client.reply(), "GOAWAY shutdown");
    server.signal(libc::SIGINT);
    // Far below the 60 s drain timeout.
    let status = server.wait_exit(PATIENCE);
    assert!(!status.success(), "{status}");
}

/// A client that reads nothing: the server's replies back up, so after `GOAWAY` the
/// connection cannot close gracefully. Past the drain timeout it gets the shutdown
/// grace (1 s) to take its last bytes, then is reset (cause `shutdown`), long before
/// its write-stall timeout (D = 12 s). Waiting in that grace must cost no CPU (the
/// server once re-polled its finished drain timer in a loop).
#[test]
fn waiting_past_the_drain_timeout_for_a_reader_that_stalls_does_not_spin() {
    let mut server = TestServer::start(&["--drain-timeout", "1s", "--dead-after", "12s"]);
    let mut client = LineClient::connect(server.addr());
    let peer = client.local_addr();
    client
        .stream
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // PINGs whose PONGs we never read, until neither direction has room left.
    let chunk = format!("PING {}\n", "p".repeat(250)).repeat(256);
    let mut written = 0usize;
    loop {
        match client.stream.write(chunk.as_bytes()) {
            Ok(n) => written += n,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(err) => panic!("writing to the server failed: {err}"),
        }
        assert!(written < 256 << 20, "the server never stopped reading");
    }

    server.signal(libc::SIGTERM);
    server
        .wait_event(|e| e["event"] == "shutdown_started", PATIENCE)
        .expect("shutdown_started");
    // Past the 1 s drain timeout, inside the 1 s grace.
    std::thread::sleep(Duration::from_millis(1100));
    let (ticks_before, at) = (server.cpu_ticks(), Instant::now());
    std::thread::sleep(Duration::from_millis(600));
    let used = (server.cpu_ticks() - ticks_before) as f64 / ticks_per_second() as f64;
    let share = used / at.elapsed().as_secs_f64();
    assert!(
        share < 0.2,
        "the server used {:.0} % of a CPU while waiting for a stalled reader",
        share * 100.0
    );
    let closed = server.expect_event("connection_closed", peer);
    assert_eq!(closed["cause"], "shutdown", "{closed}");
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}");
}

/// The server's log reader goes away (a closed pipe on stderr): the server keeps its
/// connections and still shuts down on SIGTERM. Every line it logs then fails with
/// EPIPE; the log subscriber used to report that with `eprintln!`, which panics on a
/// closed stderr, so the signal task panicked at its `shutdown_started` line: SIGTERM
/// did nothing, nor did a second one (the I/O threads' batched lines drop their write
/// errors, so connections were served).
#[test]
fn a_server_whose_log_reader_is_gone_serves_and_shuts_down() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = common::TempDir::new("log-reader-gone");
    let child = Command::new(common::hangup_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "off"])
        .args(["--log-format", "json", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hangup serve");
    let mut server = Killed(child);
    let mut stderr = BufReader::new(server.0.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("the first log line");
    let listening: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(listening["event"], "listening", "{line}");
    let addr: std::net::SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    drop(stderr);

    // Opening the connection logs a line, which now fails.
    let mut client = LineClient::connect(addr);
    client.send("PING after");
    assert_eq!(client.reply(), "PONG after");

    common::send_signal(server.0.id(), libc::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {PATIENCE:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
