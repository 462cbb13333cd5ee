//! The reconnecting session client (SPEC §4, §6).
//!
//! ```text
//!   SessionClient::next() ──▶ connect (apply_policy) ──▶ HELLO ──▶ WELCOME: heartbeat granted
//!        ▲                         │ refused                      │ PING after H of our silence
//!        │                         ▼                              │ dead after 1.5·H of theirs
//!   Reconnecting { delay } ◀── ConnectFailed / Lost / GoingAway ◀─┘ FIN, RST, kernel error
//!        (Backoff: reset only after WELCOME)          Kicked: stop for good
//! ```
//!
//! One task drives the socket, the heartbeat and the commands queued through a
//! [`SessionSender`], so the server's FIN, RST or silence is noticed while the user
//! sends nothing.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use hangup_core::{
    classify_readiness, Cause, Command, Frame, Heartbeat, HeartbeatAction, HeartbeatClock,
    LineDecoder, LivenessPolicy, Reply, ReplyParseError, SessionId, MAX_LINE,
};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{connect, Backoff};

/// What a [`SessionClient`] connects to and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The server, `host:port`; resolved again on every connect.
    pub addr: String,
    /// The device id to say `HELLO` for on every connect. `None`: an anonymous
    /// connection, without session or heartbeat (the server needs no `HELLO`).
    pub device: Option<String>,
    /// The device's token (`HELLO … token=`), for a server with an auth secret.
    pub token: Option<String>,
    /// The heartbeat to propose (`HELLO … heartbeat=`, whole seconds, rounded up).
    /// `None` proposes nothing and the server grants its default (30 s). Either way
    /// the client runs on what `WELCOME` grants, not on what it asked for.
    pub heartbeat: Option<Duration>,
    /// Socket options (keepalive, TCP_USER_TIMEOUT) and whether kernel errors end the
    /// connection at once (`watch_hangup`).
    pub policy: LivenessPolicy,
    /// Delays between reconnects. Reset only once a server has welcomed the session
    /// (for an anonymous connection: once the server sent a line), so that a server
    /// that accepts and closes at once is retried ever more slowly.
    pub backoff: Backoff,
}

impl SessionConfig {
    /// An anonymous connection to `addr` with dead-after 30 s and the default backoff
    /// (100 ms doubling to 30 s, full jitter).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            device: None,
            token: None,
            heartbeat: None,
            policy: LivenessPolicy::from_dead_after(Duration::from_secs(30)),
            backoff: Backoff::default(),
        }
    }

    /// Opens a session for `device` on every connect.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Sends `token` with `HELLO`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Proposes `heartbeat` with `HELLO`.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// Uses `policy` on every connection.
    pub fn policy(mut self, policy: LivenessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Waits between reconnects as `backoff` says.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// What happened, from [`SessionClient::next`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A TCP connection is up, with the policy applied; `HELLO` is on its way.
    Connected {
        /// The server's address.
        peer: SocketAddr,
    },
    /// The server answered `HELLO` with `WELCOME`: the session is open, and the client
    /// now heartbeats at the granted interval. `Reply::Welcome(session, heartbeat)`
    /// prints the line the server sent.
    SessionOpened {
        /// The session's id.
        session: SessionId,
        /// The heartbeat the server granted (not necessarily the one proposed).
        heartbeat: Heartbeat,
    },
    /// Any other line from the server (`PONG`, `ACCEPTED`, `DONE`, `ERR`, `BYE`, and
    /// `GOAWAY shutdown` when it arrives). Probes (`#`) and empty lines are not reported.
    Reply(Reply),
    /// A line from the server that is not a reply of the protocol.
    Unrecognized {
        /// The line, without its line ending (invalid UTF-8 replaced).
        line: String,
        /// Why it did not parse.
        error: ReplyParseError,
    },
    /// The server sent a line longer than [`MAX_LINE`]; it was discarded.
    LineTooLong,
    /// The server closed the connection after `GOAWAY`: it is shutting down. The
    /// client reconnects after a backoff delay.
    GoingAway {
        /// How long the connection was up.
        connected_for: Duration,
    },
    /// The connection was lost; the client reconnects after a backoff delay.
    Lost {
        /// How it was noticed: `peer_closed` (FIN), `peer_reset` (RST), `timeout`
        /// (keepalive or TCP_USER_TIMEOUT), `heartbeat_missed` (1.5 heartbeats of
        /// silence), …
        cause: Cause,
        /// How long the server had been silent when the loss was noticed.
        silent_for: Duration,
        /// How long the connection was up.
        connected_for: Duration,
    },
    /// Another connection took over this device's session (`KICKED takeover`). The
    /// client stops: reconnecting would evict the other one in turn. Next comes `None`.
    Kicked,
    /// After [`SessionSender::finish`] (or a `BYE` answered by `BYE`), the server
    /// closed the connection: everything is done. Next comes `None`.
    Finished,
    /// Connecting failed; the client tries again after a backoff delay.
    ConnectFailed {
        /// Why.
        error: io::Error,
    },
    /// The client waits `delay` (the next [`Backoff`] delay), then connects again.
    Reconnecting {
        /// How long it waits.
        delay: Duration,
    },
}

/// The [`SessionClient`] is gone: nothing can be sent through its [`SessionSender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session client was dropped")]
pub struct SendError;

enum Outgoing {
    Line(Vec<u8>),
    Finish,
}

/// Queues lines for a [`SessionClient`]; cheap to clone, usable from any task.
///
/// Lines queued while the client is disconnected are sent on the next connection,
/// after its `HELLO`. Bytes still unsent when a connection is lost are dropped with it.
#[derive(Debug, Clone)]
pub struct SessionSender {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outgoing::Line(line) => f
                .debug_tuple("Line")
                .field(&String::from_utf8_lossy(line))
                .finish(),
            Outgoing::Finish => f.write_str("Finish"),
        }
    }
}

impl SessionSender {
    /// Queues a command.
    pub fn send(&self, command: &Command) -> Result<(), SendError> {
        let mut line = Vec::new();
        command.encode(&mut line);
        self.push(Outgoing::Line(line))
    }

    /// Queues a raw line (a `\n` is added), as a user typed it: the server answers
    /// what it cannot parse with `ERR`.
    pub fn send_line(&self, line: &str) -> Result<(), SendError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.push(Outgoing::Line(bytes))
    }

    /// No more input: once everything queued is sent, half-close (`shutdown(SHUT_WR)`)
    /// and keep reading until the server closes, then report
    /// [`ClientEvent::Finished`]. Lines queued after this are dropped.
    pub fn finish(&self) -> Result<(), SendError> {
        self.push(Outgoing::Finish)
    }

    fn push(&self, message: Outgoing) -> Result<(), SendError> {
        self.tx.send(message).map_err(|_| SendError)
    }
}

/// A client that keeps a session with a hangup line server: it connects with the
/// liveness policy, says `HELLO` on every connect, heartbeats at the interval `WELCOME`
/// grants, notices the server's FIN, RST or silence while the user sends nothing, and
/// reconnects with exponential backoff and full jitter.
///
/// Drive it by calling [`next`](Self::next) in a loop; send through a
/// [`SessionSender`] from [`sender`](Self::sender). The connection only makes progress
/// while `next` is being awaited. `next` is cancel safe: dropping its future (in a
/// `select!`) loses no event and no line.
///
/// ```
/// use std::time::Duration;
/// use hangup::client::{ClientEvent, SessionClient, SessionConfig};
/// use hangup::{parse_line, Command, Heartbeat, Reply, SessionId};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// // A tiny server: welcomes HELLO, answers PING.
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// tokio::spawn(async move {
///     let (stream, _) = listener.accept().await?;
///     let (read, mut write) = stream.into_split();
///     let mut lines = BufReader::new(read).lines();
///     while let Some(line) = lines.next_line().await? {
///         let reply = match parse_line(line.as_bytes(), 1) {
///             Ok(Some(Command::Hello { heartbeat, .. })) => {
///                 Reply::Welcome(SessionId(7), Heartbeat::grant(heartbeat))
///             }
///             Ok(Some(Command::Ping(data))) => Reply::Pong(data),
///             _ => continue,
///         };
///         let mut bytes = Vec::new();
///         reply.encode(&mut bytes);
///         write.write_all(&bytes).await?;
///     }
///     std::io::Result::Ok(())
/// });
///
/// let config = SessionConfig::new(addr.to_string())
///     .device("sensor-1")
///     .heartbeat(Duration::from_secs(5));
/// let mut client = SessionClient::new(config);
/// let sender = client.sender();
/// while let Some(event) = client.next().await {
///     match event {
///         ClientEvent::SessionOpened { session, heartbeat } => {
///             assert_eq!((session, heartbeat.interval), (SessionId(7), Duration::from_secs(5)));
///             sender.send(&Command::Ping("hi".into())).unwrap();
///         }
///         ClientEvent::Reply(Reply::Pong(data)) => {
///             assert_eq!(data, "hi");
///             break;
///         }
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SessionClient {
    config: SessionConfig,
    state: State,
    events: VecDeque<ClientEvent>,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    sender: SessionSender,
    finishing: bool,
}

#[derive(Debug)]
enum State {
    /// Connect on the next call.
    Connect,
    /// Connect at this instant.
    Waiting(Instant),
    /// A connection is up.
    Open(Box<Open>),
    /// A connection ended or failed: pick the backoff delay next.
    Ended,
    /// Kicked or finished: nothing more happens.
    Stopped,
}

/// One live connection.
#[derive(Debug)]
struct Open {
    stream: TcpStream,
    decoder: LineDecoder,
    outbox: Vec<u8>,
    opened: Instant,
    last_inbound: Instant,
    /// Started by `WELCOME`, with the heartbeat the server granted.
    clock: Option<HeartbeatClock>,
    half_closed: bool,
    going_away: bool,
    last_was_bye: bool,
}

/// How a connection ended.
enum End {
    Lost(Cause),
    GoingAway,
    Finished,
    Kicked,
}

impl SessionClient {
    /// A client for `config`. It connects on the first call to [`next`](Self::next).
    pub fn new(config: SessionConfig) -> Self {
        let (tx, outgoing) = mpsc::unbounded_channel();
        Self {
            config,
            state: State::Connect,
            events: VecDeque::new(),
            outgoing,
            sender: SessionSender { tx },
            finishing: false,
        }
    }

    /// A handle to queue commands and lines with.
    pub fn sender(&self) -> SessionSender {
        self.sender.clone()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Drives the connection until something happens. `None` once the client stopped
    /// ([`ClientEvent::Kicked`] or [`ClientEvent::Finished`]); otherwise it never
    /// gives up: after a loss it reports [`ClientEvent::Reconnecting`], waits, and
    /// connects again. To give up (a `--once` client), stop calling it.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            match &mut self.state {
                State::Stopped => return None,
                State::Ended => {
                    let delay = self.config.backoff.next_delay();
                    self.state = State::Waiting(Instant::now() + delay);
                    return Some(ClientEvent::Reconnecting { delay });
                }
                State::Waiting(at) => {
                    tokio::time::sleep_until((*at).into()).await;
                    self.state = State::Connect;
                }
                State::Connect => return Some(self.connect().await),
                State::Open(open) => {
                    let ctx = Context {
                        events: &mut self.events,
                        outgoing: &mut self.outgoing,
                        finishing: &mut self.finishing,
                        config: &mut self.config,
                    };
                    if let Some(end) = open.step(ctx).await {
                        let (event, next) = match end {
                            End::Lost(cause) => (
                                ClientEvent::Lost {
                                    cause,
                                    silent_for: open.last_inbound.elapsed(),
                                    connected_for: open.opened.elapsed(),
                                },
                                State::Ended,
                            ),
                            End::GoingAway => (
                                ClientEvent::GoingAway {
                                    connected_for: open.opened.elapsed(),
                                },
                                State::Ended,
                            ),
                            End::Finished => (ClientEvent::Finished, State::Stopped),
                            End::Kicked => (ClientEvent::Kicked, State::Stopped),
                        };
                        self.events.push_back(event);
                        self.state = next;
                    }
                }
            }
        }
    }

    async fn connect(&mut self) -> ClientEvent {
        let connected = async {
            let stream = connect(self.config.addr.as_str(), &self.config.policy).await?;
            let peer = stream.peer_addr()?;
            io::Result::Ok((stream, peer))
        };
        let (stream, peer) = match connected.await {
            Ok(connected) => connected,
            Err(error) => {
                self.state = State::Ended;
                return ClientEvent::ConnectFailed { error };
            }
        };
        let mut outbox = Vec::new();
        if let Some(device) = &self.config.device {
            Command::Hello {
                device: device.clone(),
                token: self.config.token.clone(),
                heartbeat: self.config.heartbeat,
            }
            .encode(&mut outbox);
        }
        let now = Instant::now();
        self.state = State::Open(Box::new(Open {
            stream,
            decoder: LineDecoder::new(MAX_LINE),
            outbox,
            opened: now,
            last_inbound: now,
            clock: None,
            half_closed: false,
            going_away: false,
            last_was_bye: false,
        }));
        ClientEvent::Connected { peer }
    }
}

/// What a connection's step may touch besides the connection.
struct Context<'a> {
    events: &'a mut VecDeque<ClientEvent>,
    outgoing: &'a mut mpsc::UnboundedReceiver<Outgoing>,
    finishing: &'a mut bool,
    config: &'a mut SessionConfig,
}

impl Open {
    /// Waits for one thing to happen (a heartbeat due, a line to send, the socket
    /// ready) and handles it. Every await is cancel safe, and state changes happen
    /// only after one completed.
    async fn step(&mut self, ctx: Context<'_>) -> Option<End> {
        // Once input ended and everything queued was sent: half-close, keep reading.
        if *ctx.finishing && self.outbox.is_empty() && !self.half_closed {
            let _ = SockRef::from(&self.stream).shutdown(Shutdown::Write);
            self.half_closed = true;
        }
        let mut interest = Interest::READABLE | Interest::ERROR;
        if !self.outbox.is_empty() {
            interest |= Interest::WRITABLE;
        }
        // After a half-close nothing can be sent, so no PING either; the server's
        // replies still count as life for as long as they come.
        let beat = self
            .clock
            .filter(|_| !self.half_closed)
            .map(|clock| clock.poll_timeout());
        tokio::select! {
            () = sleep_until(beat), if beat.is_some() => {
                let clock = self.clock.as_mut()?;
                match clock.handle_timeout(Instant::now()) {
                    Some(HeartbeatAction::SendPing) => {
                        Command::Ping(String::new()).encode(&mut self.outbox);
                    }
                    Some(HeartbeatAction::PeerDead) => return Some(End::Lost(Cause::HeartbeatMissed)),
                    None => {}
                }
                None
            }
            message = ctx.outgoing.recv() => {
                match message {
                    Some(Outgoing::Line(line)) if !*ctx.finishing => {
                        self.outbox.extend_from_slice(&line);
                    }
                    Some(Outgoing::Line(_)) => {}
                    // The client holds a sender itself, so the channel never closes.
                    Some(Outgoing::Finish) | None => *ctx.finishing = true,
                }
                None
            }
            ready = self.stream.ready(interest) => self.handle_ready(ready, ctx),
        }
    }

    fn handle_ready(
        &mut self,
        ready: io::Result<tokio::io::Ready>,
        ctx: Context<'_>,
    ) -> Option<End> {
        let ready = match ready {
            Ok(ready) => ready,
            Err(err) => return Some(End::Lost(Cause::from_io_error(&err))),
        };
        if ready.is_error() && ctx.config.policy.watch_hangup {
            let pending = self.stream.take_error().ok().flatten();
            if let Some(cause) = classify_readiness(true, ready.is_read_closed(), pending.as_ref())
            {
                return Some(End::Lost(cause));
            }
        }
        if ready.is_writable() && !self.outbox.is_empty() {
            match self.stream.try_write(&self.outbox) {
                Ok(n) => {
                    self.outbox.drain(..n);
                    if let Some(clock) = self.clock.as_mut() {
                        clock.handle_sent(Instant::now());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Some(End::Lost(Cause::from_io_error(&err))),
            }
        }
        if !(ready.is_readable() || ready.is_read_closed()) {
            return None;
        }
        let mut buf = [0u8; 16 * 1024];
        let n = match self.stream.try_read(&mut buf) {
            Ok(0) if self.going_away => return Some(End::GoingAway),
            Ok(0) if self.half_closed || self.last_was_bye => return Some(End::Finished),
            Ok(0) => return Some(End::Lost(Cause::PeerClosed)),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
            Err(err) => return Some(End::Lost(Cause::from_io_error(&err))),
        };
        self.last_inbound = Instant::now();
        if let Some(clock) = self.clock.as_mut() {
            clock.handle_received(self.last_inbound);
        }
        let mut frames = Vec::new();
        self.decoder.feed(&buf[..n], |frame| {
            frames.push(match frame {
                Frame::Line(line) => Some(line.to_vec()),
                Frame::TooLong => None,
            })
        });
        for frame in frames {
            let Some(line) = frame else {
                ctx.events.push_back(ClientEvent::LineTooLong);
                continue;
            };
            if line.is_empty() {
                continue;
            }
            let reply = Reply::parse(&line);
            if matches!(reply, Ok(Reply::Probe)) {
                continue;
            }
            if ctx.config.device.is_none() {
                // No WELCOME comes on an anonymous connection: a line is the proof
                // that this server serves us.
                ctx.config.backoff.reset();
            }
            self.last_was_bye = matches!(reply, Ok(Reply::Bye));
            let event = match reply {
                Ok(Reply::Welcome(session, heartbeat)) => {
                    self.clock = Some(HeartbeatClock::new(heartbeat, self.last_inbound));
                    ctx.config.backoff.reset();
                    ClientEvent::SessionOpened { session, heartbeat }
                }
                Ok(Reply::KickedTakeover) => return Some(End::Kicked),
                Ok(reply) => {
                    self.going_away |= reply == Reply::GoawayShutdown;
                    ClientEvent::Reply(reply)
                }
                Err(error) => ClientEvent::Unrecognized {
                    line: String::from_utf8_lossy(&line).into_owned(),
                    error,
                },
            };
            ctx.events.push_back(event);
        }
        None
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
