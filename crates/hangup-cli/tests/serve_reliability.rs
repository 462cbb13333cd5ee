//! Defects from the adversarial pass (tracker issue 13), each on real sockets: a
//! half-sent admin request no longer holds shutdown; admin connections are capped and
//! timed out and never starve the line protocol; a stalled reader cannot stretch
//! shutdown past drain timeout + grace; admin bearer tokens; no colour codes in a log
//! file.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{LineClient, TempDir, TestServer, PATIENCE};

/// hangup_server::SHUTDOWN_GRACE and ADMIN_SHUTDOWN_GRACE (1 s each), with room for a
/// loaded machine: bounds follow from the configured times, never from speed.
const GRACE: Duration = Duration::from_secs(1);
const MARGIN: Duration = Duration::from_secs(4);

#[test]
fn a_half_sent_admin_request_does_not_hold_shutdown() {
    let mut server = TestServer::start(&["--drain-timeout", "1s"]);
    let mut admin = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    admin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap(); // no blank line
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(1) + 2 * GRACE + MARGIN);
    assert!(status.success(), "{status:?}");
    assert!(server
        .wait_event(|e| e["event"] == "shutdown_complete", PATIENCE)
        .is_some());
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[test]
fn admin_connections_are_capped_and_timed_out_and_the_line_protocol_stays_served() {
    let server = TestServer::start(&[]);
    let admin = server.admin_addr().unwrap();
    // More idle admin connections than the cap (32).
    let mut idle: Vec<TcpStream> = (0..48)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    for stream in &idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
    }
    // The line protocol is served meanwhile.
    let mut client = LineClient::connect(server.addr());
    client.assert_alive("beside idle admin clients");
    // Past the cap, connections are closed at once; the rest after the 5 s header
    // timeout. Every one ends well before 5 s + margin.
    let started = Instant::now();
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => closed += 1,
            Ok(_) => {}
        }
    }
    assert_eq!(closed, idle.len(), "every idle admin connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(5) + Duration::from_secs(8),
        "idle admin connections lived {:?}",
        started.elapsed()
    );
    // And the endpoint still answers.
    assert_eq!(server.admin_get("/healthz").status, 200);
    let metrics = server.admin_get("/metrics").body;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hangup_admin_refused_total "))
        .expect("admin_refused metric")
        .parse()
        .unwrap();
    assert!(
        refused >= 16.0,
        "{refused} refused; expected the 16 past the cap"
    );
}

#[test]
fn a_stalled_reader_cannot_stretch_shutdown_past_the_drain_bound() {
    // D = 30 s: before the fix a stalled reader held shutdown until its write timeout.
    let mut server = TestServer::start(&["--drain-timeout", "1s", "--dead-after", "30s"]);
    let stream = TcpStream::connect(server.addr()).unwrap();
    socket2::SockRef::from(&stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Ask for far more reply bytes than the buffers hold, and read none of them.
    let ping = format!("PING {}\n", "x".repeat(4000));
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..2000 {
        if writer.write_all(ping.as_bytes()).is_err() {
            break; // our own send buffer is full: the server stopped reading
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(1) + 2 * GRACE + MARGIN);
    assert!(status.success(), "{status:?}");
    let closed = server
        .wait_event(|e| e["event"] == "connection_closed", PATIENCE)
        .expect("connection_closed");
    assert_eq!(closed["cause"], "shutdown");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    drop(stream);
}

#[test]
fn the_admin_token_is_required_when_set() {
    let dir = TempDir::new("admin-token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let server = TestServer::start(&["--admin-token", token_file.to_str().unwrap()]);
    assert_eq!(server.admin_get("/healthz").status, 401);
    let admin = server.admin_addr().unwrap();
    let mut stream = TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-admin-token\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut stream = TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
}

#[test]
fn a_text_log_in_a_file_has_no_colour_codes() {
    let dir = TempDir::new("ansi");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = std::process::Command::new(common::hangup_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let path = dir.path().join("log");
    let text = common::poll_until(PATIENCE, Duration::from_millis(20), || {
        let text = std::fs::read_to_string(&path).ok()?;
        text.contains("listening").then_some(text)
    })
    .expect("the server logged `listening`");
    common::send_signal(child.id(), libc::SIGTERM);
    let _ = child.wait();
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file: {text:?}"
    );
}

#[test]
fn a_bare_cr_inside_a_line_is_refused_and_never_echoed() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    client.send_raw(b"PING a\rb\n");
    let reply = client.reply();
    assert!(reply.starts_with("ERR bad-request "), "{reply:?}");
    assert!(!reply.contains('\r'), "{reply:?}");
    client.assert_alive("after a bare CR");
}

#[test]
fn queued_work_is_bounded_across_connections() {
    let server = TestServer::start(&["--max-queued-bytes", "8000", "--workers", "1"]);
    let seed = "s".repeat(256);
    let fill = |client: &mut LineClient| -> usize {
        for accepted in 0..64 {
            client.send(&format!("JOB 10000000000 {seed}"));
            let reply = client.reply();
            if reply.starts_with("ERR too-many-jobs ") {
                assert!(reply.contains("server's job queue is full"), "{reply}");
                return accepted;
            }
            assert!(reply.starts_with("ACCEPTED "), "{reply}");
        }
        64
    };
    let mut first = LineClient::connect(server.addr());
    let accepted_first = fill(&mut first);
    assert!(
        accepted_first < 64,
        "the per-connection limit hit first: {accepted_first}"
    );
    let mut second = LineClient::connect(server.addr());
    assert_eq!(fill(&mut second), 0, "the whole server's budget is spent");
    second.assert_alive("refused work leaves the connection usable");
    // The first connection ends: its queue is given back.
    drop(first);
    let again = common::poll_until(PATIENCE, Duration::from_millis(50), || {
        second.send(&format!("JOB 10000000000 {seed}"));
        let reply = second.reply();
        reply.starts_with("ACCEPTED ").then_some(reply)
    });
    assert!(again.is_some(), "the budget never came back");
}

#[test]
fn a_read_only_data_dir_is_named_with_the_fix() {
    if !common::privileged("a_read_only_data_dir_is_named_with_the_fix") {
        return;
    }
    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = TempDir::new("readonly");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success(), "mount a read-only tmpfs");
    let _mount = Mount(data.clone());
    let output = common::run_hangup(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("not writable"), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

/// With `--presence-durability acked`, every session a client was welcomed into is on
/// disk: a `kill -9` right after the last `WELCOME` loses none of them.
#[test]
fn acked_durability_survives_a_kill_right_after_welcome() {
    let mut server = TestServer::start(&["--presence-durability", "acked"]);
    let data_dir = server.data_dir().unwrap().to_path_buf();
    // Sessions opened concurrently share commits; each WELCOME comes after its commit.
    let sessions: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let addr = server.addr();
                scope.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let (client, session) =
                                common::hello(addr, &format!("durable-{t}-{i}"), "");
                            std::mem::forget(client); // keep it open until the kill
                            session
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    server.kill(); // SIGKILL at once after the last WELCOME: no flush, no shutdown
    let stored: std::collections::HashSet<String> = common::presence_rows(&data_dir)
        .into_iter()
        .map(|row| row.session)
        .collect();
    let missing: Vec<&String> = sessions.iter().filter(|s| !stored.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} welcomed sessions missing",
        missing.len(),
        sessions.len()
    );
}
