//! `hangup client`: stdin to the server, the server's lines to stdout, and the server's
//! death noticed even while the user sits at the prompt.
//!
//! One task waits on stdin and on the socket at once, so a FIN, an RST or a kernel
//! timeout (keepalive, TCP_USER_TIMEOUT from `--dead-after`) is reported the moment it
//! happens, not when the user next types.

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hangup::client::{connect, Backoff};
use hangup::events::ts_ns;
use hangup::{Cause, LivenessPolicy};
use hangup_core::{Frame, Heartbeat, HeartbeatAction, HeartbeatClock, LineDecoder, MAX_LINE};
use socket2::SockRef;
use tokio::io::{AsyncBufReadExt, BufReader, Interest, Lines, Stdin};
use tokio::net::TcpStream;

use super::{resolve_policy, runtime};
use crate::args::ClientArgs;
use crate::logging;

/// How a connection ended, from the client's side.
enum End {
    /// Our input ended, we half-closed, and the server finished and closed: done.
    Finished,
    /// The server said `GOAWAY` and closed: come back later (or elsewhere).
    GoAway,
    /// Another connection took over our device's session (`KICKED takeover`).
    Kicked,
    /// The connection was lost.
    Lost { cause: Cause, silent_for: Duration },
}

pub fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format);
    let policy = resolve_policy(&args.liveness)?;
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let mut stdin = Some(BufReader::new(tokio::io::stdin()).lines());
        let mut backoff = Backoff::default();
        loop {
            let stream = match connect(&args.addr, &policy).await {
                Ok(stream) => stream,
                Err(err) if args.once => {
                    anyhow::bail!("could not connect to {}: {err}", args.addr)
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    eprintln!(
                        "hangup: could not connect to {}: {err}; retrying in {:.1}s",
                        args.addr,
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            backoff.reset();
            let opened = Instant::now();
            let peer = stream.peer_addr()?;
            eprintln!("hangup: connected to {peer}");
            tracing::info!(target: "hangup::event", event = "connection_opened", ts_ns = ts_ns(), peer = %peer);
            let hello = args.device.as_ref().map(|device| {
                let mut line = format!("HELLO {device}");
                if let Some(token) = &args.token {
                    line.push_str(&format!(" token={token}"));
                }
                line.push_str(&format!(" heartbeat={}\n", args.heartbeat));
                line
            });
            match converse(&stream, &mut stdin, &policy, hello).await {
                End::Finished => {
                    tracing::info!(target: "hangup::event", event = "connection_closed", ts_ns = ts_ns(), peer = %peer, cause = %Cause::Local);
                    return Ok(ExitCode::SUCCESS);
                }
                End::Kicked => {
                    tracing::info!(target: "hangup::event", event = "connection_closed", ts_ns = ts_ns(), peer = %peer, cause = %Cause::Takeover);
                    eprintln!(
                        "hangup: another connection took over this device's session (KICKED takeover); not reconnecting, so the two do not evict each other in turn"
                    );
                    return Ok(ExitCode::from(3));
                }
                End::GoAway => {
                    tracing::info!(target: "hangup::event", event = "connection_closed", ts_ns = ts_ns(), peer = %peer, cause = %Cause::Shutdown);
                    if args.once {
                        eprintln!("hangup: the server is shutting down (GOAWAY) and closed the connection");
                        return Ok(ExitCode::SUCCESS);
                    }
                    let delay = backoff.next_delay();
                    eprintln!(
                        "hangup: the server is shutting down (GOAWAY); reconnecting in {:.1}s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
                End::Lost { cause, silent_for } => {
                    tracing::info!(
                        target: "hangup::event",
                        event = "connection_closed",
                        ts_ns = ts_ns(),
                        peer = %peer,
                        cause = %cause,
                        silent_ms = silent_for.as_millis() as u64,
                    );
                    eprintln!(
                        "hangup: connection lost: {cause} ({}); connected {:.1}s, server silent for {:.3}s before detection",
                        describe(cause),
                        opened.elapsed().as_secs_f64(),
                        silent_for.as_secs_f64(),
                    );
                    if args.once {
                        return Ok(ExitCode::from(1));
                    }
                    let delay = backoff.next_delay();
                    eprintln!("hangup: reconnecting in {:.1}s", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    });
    // tokio reads stdin with a blocking read on a pool thread that cannot be cancelled:
    // dropping the runtime would wait for it, i.e. for the user's next line, and a
    // `--once` client whose server died would never exit.
    runtime.shutdown_background();
    result
}

fn describe(cause: Cause) -> &'static str {
    match cause {
        Cause::PeerClosed => "the server closed the connection",
        Cause::PeerReset => "the server reset the connection: it crashed, restarted or refused us",
        Cause::Timeout => "the server stopped answering within the dead-after budget",
        Cause::Unreachable => "the server's host is unreachable",
        Cause::HeartbeatMissed => "the server sent nothing for 1.5 heartbeats",
        _ => "the connection ended",
    }
}

/// Relays lines both ways until the connection ends.
async fn converse(
    stream: &TcpStream,
    stdin: &mut Option<Lines<BufReader<Stdin>>>,
    policy: &LivenessPolicy,
    hello: Option<String>,
) -> End {
    let mut decoder = LineDecoder::new(MAX_LINE);
    let mut outbox: Vec<u8> = hello.map(String::into_bytes).unwrap_or_default();
    let mut half_closed = false;
    let mut last_line_was_bye = false;
    let mut last_inbound = Instant::now();
    // Started by WELCOME, with the heartbeat the server granted.
    let mut heartbeat: Option<HeartbeatClock> = None;
    let (mut goaway, mut kicked) = (false, false);
    let lost = |cause: Cause, last_inbound: Instant| End::Lost {
        cause,
        silent_for: last_inbound.elapsed(),
    };
    loop {
        // Once input ended and everything typed was sent: half-close, keep reading.
        if stdin.is_none() && outbox.is_empty() && !half_closed {
            let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Write);
            half_closed = true;
        }
        let mut interest = Interest::READABLE | Interest::ERROR;
        if !outbox.is_empty() {
            interest |= Interest::WRITABLE;
        }
        let beat = heartbeat
            .filter(|_| !half_closed)
            .map(|clock| clock.poll_timeout());
        tokio::select! {
            () = sleep_until(beat), if beat.is_some() => {
                let Some(clock) = heartbeat.as_mut() else { continue };
                match clock.handle_timeout(Instant::now()) {
                    Some(HeartbeatAction::SendPing) => outbox.extend_from_slice(b"PING\n"),
                    Some(HeartbeatAction::PeerDead) => {
                        return lost(Cause::HeartbeatMissed, last_inbound);
                    }
                    None => {}
                }
            }
            line = next_line(stdin) => match line {
                Some(line) => {
                    outbox.extend_from_slice(line.as_bytes());
                    outbox.push(b'\n');
                }
                None => *stdin = None,
            },
            ready = stream.ready(interest) => {
                let ready = match ready {
                    Ok(ready) => ready,
                    Err(err) => return lost(Cause::from_io_error(&err), last_inbound),
                };
                if ready.is_error() && policy.watch_hangup {
                    let cause = match stream.take_error() {
                        Ok(Some(err)) => Cause::from_io_error(&err),
                        _ => Cause::PeerReset,
                    };
                    return lost(cause, last_inbound);
                }
                if ready.is_writable() && !outbox.is_empty() {
                    match stream.try_write(&outbox) {
                        Ok(n) => {
                            outbox.drain(..n);
                            if let Some(clock) = heartbeat.as_mut() {
                                clock.handle_sent(Instant::now());
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                        Err(err) => return lost(Cause::from_io_error(&err), last_inbound),
                    }
                }
                if ready.is_readable() || ready.is_read_closed() {
                    let mut buf = [0u8; 16 * 1024];
                    match stream.try_read(&mut buf) {
                        Ok(0) if kicked => return End::Kicked,
                        Ok(0) if goaway => return End::GoAway,
                        Ok(0) if half_closed || last_line_was_bye => return End::Finished,
                        Ok(0) => return lost(Cause::PeerClosed, last_inbound),
                        Ok(n) => {
                            last_inbound = Instant::now();
                            if let Some(clock) = heartbeat.as_mut() {
                                clock.handle_received(last_inbound);
                            }
                            let mut stdout = io::stdout().lock();
                            decoder.feed(&buf[..n], |frame| match frame {
                                Frame::Line(line) if line.is_empty() || line.starts_with(b"#") => {}
                                Frame::Line(line) => {
                                    last_line_was_bye = line.eq_ignore_ascii_case(b"BYE");
                                    goaway |= line.starts_with(b"GOAWAY");
                                    kicked |= line.starts_with(b"KICKED");
                                    if let Some(granted) = welcome_heartbeat(line) {
                                        heartbeat = Some(HeartbeatClock::new(granted, last_inbound));
                                    }
                                    let _ = stdout.write_all(line);
                                    let _ = stdout.write_all(b"\n");
                                }
                                Frame::TooLong => {
                                    let _ = writeln!(stdout, "(a line longer than {MAX_LINE} bytes from the server was discarded)");
                                }
                            });
                            let _ = stdout.flush();
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                        Err(err) => return lost(Cause::from_io_error(&err), last_inbound),
                    }
                }
            }
        }
    }
}

/// The heartbeat a `WELCOME <session> heartbeat=<secs> …` line grants.
fn welcome_heartbeat(line: &[u8]) -> Option<Heartbeat> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if words.next() != Some("WELCOME") {
        return None;
    }
    let secs: u64 = words
        .find_map(|w| w.strip_prefix("heartbeat="))?
        .parse()
        .ok()?;
    let granted = Heartbeat::grant(Some(Duration::from_secs(secs)));
    tracing::info!(
        target: "hangup::event",
        event = "session_started",
        ts_ns = ts_ns(),
        session = line.split_whitespace().nth(1).unwrap_or_default(),
        heartbeat_ms = granted.interval.as_millis() as u64,
    );
    Some(granted)
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The next stdin line; pending forever once stdin ended.
async fn next_line(stdin: &mut Option<Lines<BufReader<Stdin>>>) -> Option<String> {
    match stdin {
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}
