//! `hangup client`: stdin to the server, the server's lines to stdout, and the server's
//! death noticed even while the user sits at the prompt.
//!
//! Built on the library's [`SessionClient`]: it drives the socket and the heartbeat
//! while a task forwards stdin, so a FIN, an RST or a kernel timeout (keepalive,
//! TCP_USER_TIMEOUT from `--dead-after`) is reported the moment it happens, not when
//! the user next types. This file only prints its events.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use hangup::client::{ClientEvent, SessionClient, SessionConfig, SessionSender};
use hangup::{Cause, Reply, MAX_LINE};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{resolve_policy, runtime};
use crate::args::ClientArgs;
use crate::logging;

/// Why the client is about to wait before connecting again.
enum Retry {
    ConnectFailed(io::Error),
    GoAway,
    Lost,
}

pub fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format);
    let policy = resolve_policy(&args.liveness)?;
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let mut config = SessionConfig::new(args.addr.clone()).policy(policy);
        if let Some(device) = &args.device {
            config = config
                .device(device.clone())
                .heartbeat(Duration::from_secs(args.heartbeat));
        }
        if let Some(token) = &args.token {
            config = config.token(token.clone());
        }
        let mut client = SessionClient::new(config);
        tokio::spawn(forward_stdin(client.sender()));
        let mut peer: Option<SocketAddr> = None;
        let mut retry = Retry::Lost;
        while let Some(event) = client.next().await {
            let peer_text = peer.map(|p| p.to_string()).unwrap_or_default();
            match event {
                ClientEvent::Connected { peer: addr } => {
                    peer = Some(addr);
                    eprintln!("hangup: connected to {addr}");
                    hangup::emit!("connection_opened", peer = %addr);
                }
                ClientEvent::SessionOpened { session, heartbeat } => {
                    hangup::emit!("session_started", session = %session,
                        heartbeat_ms = heartbeat.interval.as_millis() as u64,
                    );
                    print_line(Reply::Welcome(session, heartbeat));
                }
                ClientEvent::Reply(reply) => print_line(reply),
                ClientEvent::Unrecognized { line, .. } => print_line(line),
                ClientEvent::LineTooLong => print_line(format_args!(
                    "(a line longer than {MAX_LINE} bytes from the server was discarded)"
                )),
                ClientEvent::Finished => {
                    hangup::emit!("connection_closed", peer = %peer_text, cause = %Cause::Local);
                    return Ok(ExitCode::SUCCESS);
                }
                ClientEvent::Kicked => {
                    print_line(Reply::KickedTakeover);
                    hangup::emit!("connection_closed", peer = %peer_text, cause = %Cause::Takeover);
                    eprintln!(
                        "hangup: another connection took over this device's session (KICKED takeover); not reconnecting, so the two do not evict each other in turn"
                    );
                    return Ok(ExitCode::from(3));
                }
                ClientEvent::GoingAway { .. } => {
                    hangup::emit!("connection_closed", peer = %peer_text, cause = %Cause::Shutdown);
                    if args.once {
                        eprintln!("hangup: the server is shutting down (GOAWAY) and closed the connection");
                        return Ok(ExitCode::SUCCESS);
                    }
                    retry = Retry::GoAway;
                }
                ClientEvent::Lost {
                    cause,
                    silent_for,
                    connected_for,
                } => {
                    hangup::emit!("connection_closed", peer = %peer_text,
                        cause = %cause,
                        silent_ms = silent_for.as_millis() as u64,
                    );
                    eprintln!(
                        "hangup: connection lost: {cause} ({}); connected {:.1}s, server silent for {:.3}s before detection",
                        describe(cause),
                        connected_for.as_secs_f64(),
                        silent_for.as_secs_f64(),
                    );
                    if args.once {
                        return Ok(ExitCode::from(1));
                    }
                    retry = Retry::Lost;
                }
                ClientEvent::ConnectFailed { error } => {
                    if args.once {
                        anyhow::bail!("could not connect to {}: {error}", args.addr);
                    }
                    retry = Retry::ConnectFailed(error);
                }
                ClientEvent::Reconnecting { delay } => {
                    let delay = delay.as_secs_f64();
                    match std::mem::replace(&mut retry, Retry::Lost) {
                        Retry::ConnectFailed(err) => eprintln!(
                            "hangup: could not connect to {}: {err}; retrying in {delay:.1}s",
                            args.addr
                        ),
                        Retry::GoAway => eprintln!(
                            "hangup: the server is shutting down (GOAWAY); reconnecting in {delay:.1}s"
                        ),
                        Retry::Lost => eprintln!("hangup: reconnecting in {delay:.1}s"),
                    }
                }
                _ => {}
            }
        }
        Ok(ExitCode::SUCCESS)
    });
    // tokio reads stdin with a blocking read on a pool thread that cannot be cancelled:
    // dropping the runtime would wait for it, i.e. for the user's next line, and a
    // `--once` client whose server died would never exit.
    runtime.shutdown_background();
    result
}

/// Stdin to the server, line by line as typed (the server answers what it cannot
/// parse); at end of input the client half-closes once everything was sent.
async fn forward_stdin(sender: SessionSender) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if sender.send_line(&line).is_err() {
            return;
        }
    }
    let _ = sender.finish();
}

/// A server line to stdout, at once.
fn print_line(line: impl std::fmt::Display) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
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
