//! One connection as its I/O thread drives it (reactor.rs): moves bytes and
//! readiness between the socket and the sans-IO [`Connection`], starts and cancels its
//! jobs, and tells the thread its next deadline. Everything here runs on the
//! connection's I/O thread, without blocking; what happens elsewhere (a job's end, a
//! takeover, a durable commit) comes back as a [`ConnMessage`].

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hangup_core::{
    authorize, classify_readiness, Acknowledgements, Cause, CloseMode, Connection, ErrorCode,
    Event, Heartbeat, JobId, SessionId, SessionSlot, StatusCounts,
};
use mio::net::TcpStream;
use socket2::SockRef;
use tokio_util::sync::CancellationToken;

use crate::live::{lock, ConnectionSnapshot, ConnectionState, SessionSnapshot, TcpFigures};
use crate::reactor::{ConnMessage, Context, Key};
use crate::{Claim, PresenceDurability, SessionHandle, Sessions, Shared, DURABLE_WELCOME_LIMIT};
use hangup::apply_policy;

/// Reads per turn before the other connections of the thread get theirs.
const READS_PER_TURN: usize = 4;
/// The presence store hears that an open session's peer is alive at most this often
/// (or once per heartbeat, if that is longer): an open session's `last_seen` lags by at
/// most this plus the writer's batch interval; its end records the exact time. Writing
/// every heartbeat of a 1 s session cost the presence writer about 3 µs per heartbeat.
pub(crate) const SEEN_RESOLUTION: Duration = Duration::from_secs(5);
/// How long a graceful close waits for the peer's remaining input (SPEC §5).
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How much of the peer's remaining input a graceful close discards at most.
const DRAIN_BYTES: usize = 1 << 20;

/// What the thread should do with a connection after its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    /// Wait for readiness, a message or the deadline.
    Idle,
    /// It has more to do (input left after its fair share): another turn soon.
    Busy,
    /// It is over: drop it.
    Ended,
}

/// Socket readiness as epoll reported it and the connection has not used up yet (the
/// socket is edge-triggered: each change is reported once). The closed states and the
/// error stay once seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ready(u8);

impl Ready {
    const READABLE: u8 = 1;
    const WRITABLE: u8 = 2;
    const READ_CLOSED: u8 = 4;
    const WRITE_CLOSED: u8 = 8;
    const ERROR: u8 = 16;

    fn of(event: &mio::event::Event) -> Self {
        let bits = [
            (event.is_readable(), Self::READABLE),
            (event.is_writable(), Self::WRITABLE),
            (event.is_read_closed(), Self::READ_CLOSED),
            (event.is_write_closed(), Self::WRITE_CLOSED),
            (event.is_error(), Self::ERROR),
        ];
        Self(
            bits.into_iter()
                .filter(|(on, _)| *on)
                .fold(0, |all, (_, bit)| all | bit),
        )
    }

    /// The part of the readiness the core asks for now.
    fn wanted(self, wanted: hangup_core::Interest) -> Self {
        let mut mask = 0;
        if wanted.read {
            mask |= Self::READABLE | Self::READ_CLOSED;
        }
        if wanted.write {
            mask |= Self::WRITABLE | Self::WRITE_CLOSED;
        }
        if wanted.hangup {
            mask |= Self::ERROR;
        }
        Self(self.0 & mask)
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn clear(&mut self, bit: u8) {
        self.0 &= !bit;
    }
}

/// What one pass over the core's events did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    /// There were none.
    None,
    /// Some were carried out; they may have queued replies or more events.
    Handled,
    /// One closed the connection: with this cause, flushing first or not.
    Close(Cause, bool),
}

/// This connection's side of its jobs.
#[derive(Default)]
struct Jobs {
    /// The job on the worker pool, if one runs.
    running: Option<WorkerJob>,
    /// What this connection last added to the shared (running, queued) job counters.
    counted: (u32, u32),
    /// When the last job's worker stopped (Unix ns), for its `job_cancelled` event.
    stopped_ns: u64,
}

/// The job this connection has on the worker pool: how to cancel it. (The core keeps
/// its own record of the job it started; its end arrives as a message.)
struct WorkerJob {
    id: JobId,
    cancel: CancellationToken,
    /// When its cancellation was asked for.
    cancelled_at: Option<Instant>,
}

/// The session this connection carries.
struct OpenSession {
    /// Its place in the registry, which keeps the device id (one copy per session).
    slot: SessionSlot,
    id: SessionId,
    /// The heartbeat interval, ms (at most an hour).
    heartbeat_ms: u32,
    /// Milliseconds after the connection was accepted: when the presence store was
    /// last told the peer is alive, and when the `HELLO` came. (Offsets, not Instants
    /// and SystemTimes: 8 bytes each instead of 16, for every session.)
    seen_recorded_ms: u64,
    started_ms: u64,
}

impl OpenSession {
    fn heartbeat(&self) -> Duration {
        Duration::from_millis(u64::from(self.heartbeat_ms))
    }
}

/// After our FIN: what the graceful close still waits for.
struct Closing {
    cause: Cause,
    /// When it stops waiting for the peer's remaining input.
    until: Instant,
    /// Input discarded so far.
    drained: usize,
}

/// One connection's state: its entry in its I/O thread's slab.
pub(crate) struct Conn {
    stream: TcpStream,
    key: Key,
    ready: Ready,
    conn: Connection,
    /// Made by the first job: most connections never run one, and every byte here is
    /// per connection.
    jobs: Option<Box<Jobs>>,
    bytes_in: u64,
    bytes_out: u64,
    peer: SocketAddr,
    state: ConnectionState,
    session: Option<OpenSession>,
    /// With durable presence: the session whose `WELCOME` waits for its commit.
    /// (The core takes no input meanwhile: no second `HELLO` before the commit.)
    welcome_pending: bool,
    /// Set once the core closed the connection gracefully: the drain of the peer's
    /// remaining input.
    closing: Option<Box<Closing>>,
    /// Last field, so dropped last: the slot is free once the descriptor is.
    _slot: Slot,
}

/// The connection's slot in the `connections_open` gauge (taken at accept), given back
/// on drop — also on a panic, so the server never thinks itself fuller than it is.
pub(crate) struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    /// Takes a slot.
    pub(crate) fn take(shared: &Arc<Shared>) -> Self {
        shared.metrics.connections_open.inc();
        Self {
            shared: shared.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.metrics.connections_open.dec();
    }
}

impl Conn {
    /// A connection just accepted (and registered at `key`), holding the slot its
    /// thread took.
    pub(crate) fn open(
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        key: Key,
        ctx: &Context,
        slot: Slot,
    ) -> Self {
        let shared = &ctx.shared;
        if let Err(err) = apply_policy(&stream, &shared.config.policy) {
            tracing::warn!(conn = id, peer = %peer, error = %err, "could not apply the liveness policy");
        }
        hangup::emit!("connection_opened", conn = id, peer = %peer);
        shared.metrics.connections_opened.inc();
        Self {
            stream,
            key,
            // Taken as readable and writable until a read or write says otherwise: a
            // client's first line is usually in by the time it is accepted, and its
            // first turn (right after the accept) then reads it instead of waiting a
            // pass of the loop for the readiness its registration reports. A fresh
            // socket's send buffer is empty.
            ready: Ready(Ready::READABLE | Ready::WRITABLE),
            conn: Connection::with_shared_config(shared.connection_config.clone(), Instant::now()),
            jobs: None,
            bytes_in: 0,
            bytes_out: 0,
            peer,
            state: ConnectionState::Open,
            session: None,
            welcome_pending: false,
            closing: None,
            _slot: slot,
        }
    }

    /// Milliseconds since the connection was accepted.
    fn ms_since_opened(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.conn.opened())
            .as_millis() as u64
    }

    /// How long the peer has been silent (since it was accepted, if it never spoke).
    fn silent_for(&self, now: Instant) -> Duration {
        let last = self.conn.last_inbound().unwrap_or(self.conn.opened());
        now.saturating_duration_since(last)
    }

    /// Its row in the admin endpoint's `/connections` (with TCP_INFO, one getsockopt).
    pub(crate) fn snapshot(&self, now: Instant, wall: SystemTime) -> ConnectionSnapshot {
        let tcp = hangup::tcp_info(&self.stream).ok().map(|info| TcpFigures {
            rtt_us: info.rtt.as_micros() as u64,
            unacked: info.unacked,
            retransmits: info.retransmits,
            total_retrans: info.total_retrans,
            probes: info.probes,
            last_data_recv_ms: info.last_data_recv.as_millis() as u64,
        });
        let (running, queued) = self.conn.job_counts();
        let age = now.saturating_duration_since(self.conn.opened());
        ConnectionSnapshot {
            id: self.key.id,
            peer: self.peer.to_string(),
            // Filled in by [`Conn::device`], under the registry's lock.
            device: None,
            session: self.session.as_ref().map(|s| s.id.to_string()),
            state: self.state,
            opened_at: humantime::format_rfc3339_millis(wall.checked_sub(age).unwrap_or(wall))
                .to_string(),
            age_ms: age.as_millis() as u64,
            last_inbound_ms_ago: self.silent_for(now).as_millis() as u64,
            jobs_running: running as u32,
            jobs_queued: queued as u32,
            tcp,
        }
    }

    /// Its session's device, while the session is the device's current one.
    pub(crate) fn device(&self, sessions: &Sessions) -> Option<String> {
        let session = self.session.as_ref()?;
        sessions.device(session.slot, session.id).map(str::to_owned)
    }

    /// Its session's row in `/sessions`, if it carries one (and was not just taken
    /// over).
    pub(crate) fn session_snapshot(
        &self,
        now: Instant,
        wall: SystemTime,
        sessions: &Sessions,
    ) -> Option<SessionSnapshot> {
        let session = self.session.as_ref()?;
        let started = self.conn.opened() + Duration::from_millis(session.started_ms);
        let ago = now.saturating_duration_since(started);
        let started_at = wall.checked_sub(ago).unwrap_or(wall);
        Some(SessionSnapshot {
            device: self.device(sessions)?,
            session: session.id.to_string(),
            connection: self.key.id,
            peer: self.peer.to_string(),
            started_at: humantime::format_rfc3339_millis(started_at).to_string(),
            heartbeat_s: session.heartbeat().as_secs_f64(),
            last_inbound_ms_ago: self.silent_for(now).as_millis() as u64,
            node: None,
        })
    }

    /// What `STATUS` counts of every other connection: the server's counts less the
    /// jobs this one last added to them.
    fn others<'a>(&self, shared: &'a Shared) -> impl Fn() -> StatusCounts + 'a {
        let (running, queued) = self.jobs_counted();
        let own = (u64::from(running), u64::from(queued));
        move || shared.status_excluding(own)
    }

    /// The server's number for this connection.
    pub(crate) fn id(&self) -> u64 {
        self.key.id
    }

    /// For the thread to take the socket out of epoll before dropping it.
    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The next instant the connection needs a turn without readiness or a message.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.closing {
            Some(closing) => Some(closing.until),
            None => self.conn.poll_timeout(),
        }
    }

    /// Readiness epoll reported.
    pub(crate) fn on_readiness(&mut self, event: &mio::event::Event) {
        self.ready.0 |= Ready::of(event).0;
    }

    /// A message from another thread.
    pub(crate) fn on_message(&mut self, ctx: &mut Context, message: ConnMessage) {
        let now = Instant::now();
        match message {
            ConnMessage::Kicked(hello_at) => {
                if self.session.is_some() && self.closing.is_none() {
                    self.conn.handle_kicked(now);
                    ctx.shared
                        .metrics
                        .eviction
                        .observe(now.saturating_duration_since(hello_at).as_secs_f64());
                }
            }
            ConnMessage::JobFinished(id, finished) => {
                let running = self.jobs.as_mut().map(|jobs| &mut jobs.running);
                if let Some(job) = running.and_then(|job| job.take_if(|job| job.id == id)) {
                    if let Some(asked) = job.cancelled_at {
                        ctx.shared
                            .metrics
                            .job_stop
                            .observe(asked.elapsed().as_secs_f64());
                    }
                    self.jobs().stopped_ns = finished.stopped_ns;
                    self.conn.handle_job_finished(now, id, finished.outcome);
                }
            }
            ConnMessage::Committed(id, durable) => {
                if self.welcome_pending {
                    self.welcome_pending = false;
                    self.session_committed(ctx, id, durable);
                }
            }
            #[cfg(test)]
            ConnMessage::Panic => panic!("a bug in one connection"),
            #[cfg(test)]
            ConnMessage::Stall(duration) => std::thread::sleep(duration),
        }
    }

    /// The deadline came: the core's timers, or the end of the graceful close's drain.
    pub(crate) fn on_timeout(&mut self, ctx: &mut Context, now: Instant) {
        if let Some(closing) = &mut self.closing {
            // The peer had its time to send the rest: close now.
            closing.until = now;
            return;
        }
        let heartbeat = self.conn.heartbeat_overdue(now);
        if heartbeat || self.conn.line_overdue(now) {
            // About to end `heartbeat_missed`, or `protocol_error` for a line left
            // unfinished. A thread that fell behind may not have been told of input yet
            // (a stall, more readiness than one epoll_wait returns): what the kernel
            // holds counts first. One read, only here.
            let (silent, heard) = (self.silent_for(now), self.conn.last_inbound());
            self.ready.0 |= Ready::READABLE;
            self.read_some(ctx, now);
            // Bytes, not the end of the stream or an error (those end it with their
            // own cause).
            if heartbeat && self.conn.last_inbound() != heard {
                hangup::emit!(
                    "heartbeat_read_late",
                    conn = self.id(),
                    silent_ms = silent.as_millis() as u64
                );
            }
        }
        // The write-stall timer or the acknowledgement watch is due: what has the peer
        // acknowledged? One getsockopt, only on these wake-ups.
        let info = self
            .conn
            .wants_acknowledgements(now)
            .then(|| hangup::tcp_info(&self.stream).ok())
            .flatten();
        match info {
            Some(info) => self.conn.handle_timeout_acknowledged(
                now,
                Acknowledgements {
                    unacked: info.unacked,
                    retransmits: info.retransmits,
                    since_last_ack: info.last_ack_recv,
                },
            ),
            None => self.conn.handle_timeout(now),
        }
    }

    /// Shutdown began: `GOAWAY`, then jobs in flight get the drain timeout.
    pub(crate) fn goaway(&mut self, now: Instant) {
        if self.closing.is_none() {
            self.state = ConnectionState::Draining;
            self.conn.handle_goaway(now);
        }
    }

    /// The server closes the connection: gracefully (`flush`) or at once.
    pub(crate) fn local_close(&mut self, now: Instant, flush: bool) {
        match &mut self.closing {
            // Draining the peer's input already; a reset ends that too.
            Some(closing) if !flush => closing.until = now,
            Some(_) => {}
            None => self.conn.handle_local_close(now, Cause::Shutdown, flush),
        }
    }

    /// One turn: writes what is queued, carries out the core's events and uses the
    /// readiness the core asks for, at most a fair share of input.
    pub(crate) fn drive(&mut self, ctx: &mut Context) -> Drive {
        if self.closing.is_some() {
            return self.drain_input(ctx);
        }
        if let Some((cause, flush)) = self.settle(ctx) {
            return self.close(ctx, cause, flush);
        }
        let ready = self.ready.wanted(self.conn.interest());
        if ready == Ready::default() {
            return Drive::Idle;
        }
        self.on_ready(ctx, ready);
        if let Some((cause, flush)) = self.settle(ctx) {
            return self.close(ctx, cause, flush);
        }
        // Input left after the fair share, or input the core held back and now takes
        // (its replies drained): another turn, after the thread's other connections.
        if self.ready.wanted(self.conn.interest()) == Ready::default() {
            Drive::Idle
        } else {
            Drive::Busy
        }
    }

    /// Writes and carries out events until the core has nothing new (an event's
    /// handling, a session opened say, queues replies and further events); returns the
    /// close request, if one came.
    fn settle(&mut self, ctx: &mut Context) -> Option<(Cause, bool)> {
        loop {
            self.flush(ctx);
            match self.process_events(ctx) {
                Events::None => return None,
                Events::Handled => {}
                Events::Close(cause, flush) => return Some((cause, flush)),
            }
        }
    }

    /// Uses the readiness.
    fn on_ready(&mut self, ctx: &mut Context, ready: Ready) {
        let now = Instant::now();
        let watch = ctx.shared.config.policy.watch_hangup;
        let read_closed = watch && ready.has(Ready::READ_CLOSED);
        // Without the watch a FIN is only learnt at end of input, but a socket error is
        // still taken (and, edge-triggered, never reported twice).
        if ready.has(Ready::ERROR) || read_closed {
            // An RST also shows as read-closed; the socket error tells them apart (and
            // an error reading it counts as that error).
            let pending = self.stream.take_error().unwrap_or_else(Some);
            match classify_readiness(ready.has(Ready::ERROR), read_closed, pending.as_ref()) {
                Some(Cause::PeerClosed) => self.conn.handle_read_closed(now),
                Some(cause) => return self.conn.handle_error(now, cause),
                None => {}
            }
        }
        if ready.has(Ready::READABLE) || ready.has(Ready::READ_CLOSED) {
            self.read_some(ctx, now);
        }
    }

    /// Reads while the core wants input, up to a fair share.
    fn read_some(&mut self, ctx: &mut Context, now: Instant) {
        for _ in 0..READS_PER_TURN {
            if !self.conn.interest().read {
                return;
            }
            let buf = &mut ctx.buffer;
            match self.stream.read(buf) {
                Ok(0) => {
                    let others = self.others(&ctx.shared);
                    self.conn.handle_eof(now, &others);
                    return;
                }
                Ok(n) => {
                    self.bytes_in += n as u64;
                    self.record_seen(&ctx.shared, now);
                    let others = self.others(&ctx.shared);
                    self.conn.handle_bytes(now, &buf[..n], &others);
                    if n < buf.len() {
                        // TCP's recvmsg copies until the buffer is full or the queue is
                        // empty: a short read took everything, so no second read that
                        // only returns EAGAIN. Bytes arriving after it are a new edge.
                        self.ready.clear(Ready::READABLE);
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.ready.clear(Ready::READABLE);
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.conn.handle_error(now, Cause::from_io_error(&err));
                    return;
                }
            }
        }
    }

    /// Writes what the core has queued, as far as the socket takes it, and lets input
    /// held back at the reply high-water mark go on once the replies drained.
    fn flush(&mut self, ctx: &Context) {
        self.write_pending();
        while self.conn.can_resume_input() {
            let others = self.others(&ctx.shared);
            self.conn.handle_bytes(Instant::now(), &[], &others);
            self.write_pending();
            // The socket is full: go on when it is writable again. (When it took
            // everything, keep parsing: nothing else would wake this connection up.)
            if self.conn.interest().write {
                break;
            }
        }
    }

    fn write_pending(&mut self) {
        loop {
            let pending = self.conn.poll_transmit();
            if pending.is_empty() || !self.conn.interest().write {
                return;
            }
            match self.stream.write(pending) {
                Ok(n) => {
                    self.bytes_out += n as u64;
                    self.conn.handle_sent(Instant::now(), n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.ready.clear(Ready::WRITABLE);
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return self
                        .conn
                        .handle_error(Instant::now(), Cause::from_io_error(&err))
                }
            }
        }
    }

    /// Carries out the core's events.
    fn process_events(&mut self, ctx: &mut Context) -> Events {
        let mut handled = Events::None;
        while let Some(event) = self.conn.poll_event() {
            if handled == Events::None {
                handled = Events::Handled;
            }
            match event {
                Event::StartJob { id, rounds, seed } => self.start_job(ctx, id, rounds, seed),
                Event::CancelJob { id, .. } => {
                    let running = self.jobs.as_mut().and_then(|jobs| jobs.running.as_mut());
                    if let Some(job) = running.filter(|job| job.id == id) {
                        job.cancel.cancel();
                        job.cancelled_at = Some(Instant::now());
                    }
                }
                Event::JobDone { id, rounds } => {
                    if let Some(jobs) = &mut self.jobs {
                        jobs.stopped_ns = 0;
                    }
                    ctx.shared.metrics.jobs_done.inc();
                    hangup::emit!(
                        "job_done",
                        conn = self.key.id,
                        peer = %self.peer,
                        job = id,
                        rounds,
                    );
                }
                Event::JobCancelled {
                    id,
                    cause,
                    was_running,
                } => {
                    ctx.shared
                        .metrics
                        .jobs_cancelled
                        .get_or_create(&cause.into())
                        .inc();
                    // When its worker stopped (0: it never ran).
                    let jobs = self.jobs.as_mut();
                    let stopped_ns = jobs.map_or(0, |jobs| std::mem::take(&mut jobs.stopped_ns));
                    hangup::emit!(
                        "job_cancelled",
                        conn = self.key.id,
                        peer = %self.peer,
                        job = id,
                        cause = %cause,
                        was_running,
                        stopped_ns,
                    );
                }
                Event::PeerHalfClosed => hangup::emit!(
                    "peer_half_closed",
                    conn = self.key.id,
                    peer = %self.peer,
                ),
                Event::SessionRequested {
                    device,
                    token,
                    heartbeat,
                } => self.open_session(ctx, device, token.as_deref(), heartbeat),
                Event::Close { cause, flush } => handled = Events::Close(cause, flush),
            }
        }
        self.count_jobs(&ctx.shared);
        handled
    }

    /// Queues the job on the worker pool; its end comes back as a message (also when
    /// the worker vanished: then as cancelled).
    fn start_job(&mut self, ctx: &Context, id: JobId, rounds: u64, seed: String) {
        let cancel = CancellationToken::new();
        let mailbox = ctx.mailbox(self.key);
        ctx.shared
            .workers
            .spawn(seed, rounds, cancel.clone(), move |finished| {
                mailbox.send(ConnMessage::JobFinished(id, finished));
            });
        self.jobs().running = Some(WorkerJob {
            id,
            cancel,
            cancelled_at: None,
        });
        ctx.shared.metrics.jobs_started.inc();
        hangup::emit!(
            "job_started",
            conn = self.key.id,
            peer = %self.peer,
            job = id,
            rounds,
        );
    }

    /// `HELLO`: checks the token, takes the device over in the registry (kicking the
    /// connection that held it) and opens the session.
    fn open_session(
        &mut self,
        ctx: &Context,
        device: String,
        token: Option<&str>,
        heartbeat: Heartbeat,
    ) {
        let now = Instant::now();
        let shared = &ctx.shared;
        if let Some(secret) = &shared.config.auth_secret {
            if let Err(message) = authorize(secret.as_bytes(), &device, token) {
                hangup::emit!(
                    "session_refused",
                    conn = self.key.id,
                    peer = %self.peer,
                    device = %device,
                    reason = "unauthorized",
                );
                return self
                    .conn
                    .handle_session_refused(now, ErrorCode::Unauthorized, message);
            }
        }
        let wall = SystemTime::now();
        let handle = SessionHandle {
            conn: self.key.id,
            kick: Some(ctx.mailbox(self.key)),
            claim: shared.cluster.as_ref().map(|_| {
                Box::new(Claim {
                    epoch: 0,
                    evict_seen: 0,
                    peer: self.peer,
                    since_ms: wall
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64,
                })
            }),
        };
        let (opened, live_sessions) = {
            let mut registry = lock(&shared.sessions);
            let opened = registry.open(&device, handle);
            (opened, registry.len())
        };
        shared.metrics.sessions_open.set(live_sessions as i64);
        let durable = shared.config.presence_durability == PresenceDurability::Acked;
        match (&shared.config.presence, durable) {
            (Some(presence), true) => {
                let presence = presence.clone();
                let (id, device, peer) = (opened.id, device.clone(), self.peer);
                let mailbox = ctx.mailbox(self.key);
                self.welcome_pending = true;
                ctx.runtime.spawn(async move {
                    let durable = presence
                        .session_started_durably(id.0, &device, peer, wall, DURABLE_WELCOME_LIMIT)
                        .await;
                    mailbox.send(ConnMessage::Committed(id, durable));
                });
            }
            (Some(presence), false) => {
                self.conn.handle_session_opened(now, opened.id);
                presence.session_started(opened.id.0, &device, self.peer, wall);
            }
            (None, _) => self.conn.handle_session_opened(now, opened.id),
        }
        if let Some(cluster) = &shared.cluster {
            cluster.claim(&device, opened.id, self.peer, wall);
        }
        if let Some((old_id, mut old)) = opened.evicted {
            // The old connection may already be closing on its own; then its message
            // finds nobody, and that is fine: it ends either way.
            old.kick_now(now);
            end_session_record(shared, old_id, wall, Cause::Takeover);
            shared.metrics.takeovers.inc();
            hangup::emit!(
                "session_taken_over",
                conn = self.key.id,
                peer = %self.peer,
                device = %device,
                session = %opened.id,
                old_session = %old_id,
                old_conn = old.conn,
            );
        }
        shared.metrics.sessions_started.inc();
        hangup::emit!(
            "session_started",
            conn = self.key.id,
            peer = %self.peer,
            device = %device,
            session = %opened.id,
            heartbeat_ms = heartbeat.interval.as_millis() as u64,
        );
        let started_ms = self.ms_since_opened(now);
        self.session = Some(OpenSession {
            slot: opened.slot,
            id: opened.id,
            heartbeat_ms: u32::try_from(heartbeat.interval.as_millis()).unwrap_or(u32::MAX),
            seen_recorded_ms: started_ms,
            started_ms,
        });
    }

    /// The durable start of session `id` was committed (`WELCOME` now) or not in time
    /// (`ERR busy`; the session is undone, recorded as ended `local`).
    fn session_committed(&mut self, ctx: &Context, id: SessionId, durable: bool) {
        let now = Instant::now();
        if durable {
            return self.conn.handle_session_opened(now, id);
        }
        if let Some(session) = self.session.take_if(|s| s.id == id) {
            self.close_session(&ctx.shared, &session, SystemTime::now(), Cause::Local);
        }
        let message = "the presence store could not record the session in time; try again later";
        self.conn
            .handle_session_refused(now, ErrorCode::Busy, message);
    }

    /// Takes the session out of the registry and, unless another connection took it
    /// over (and recorded its end), records the end. Returns its device if it was
    /// current.
    fn close_session(
        &self,
        shared: &Shared,
        session: &OpenSession,
        at: SystemTime,
        cause: Cause,
    ) -> Option<Box<str>> {
        let (device, live_sessions) = {
            let mut registry = lock(&shared.sessions);
            let device = registry.close(session.slot, session.id);
            (device, registry.len())
        };
        if device.is_some() {
            shared.metrics.sessions_open.set(live_sessions as i64);
            // The last time the peer was heard from, exact whatever the throttle left
            // unwritten; recorded before the end, so that the end takes it in whether
            // the writer puts the two in one batch or in two.
            if let Some(presence) = &shared.config.presence {
                let last = at
                    .checked_sub(self.silent_for(Instant::now()))
                    .unwrap_or(at);
                presence.seen(session.id.0, last);
            }
            end_session_record(shared, session.id, at, cause);
        }
        device
    }

    /// Tells the presence store the peer is alive, at most once per heartbeat and per
    /// [`SEEN_RESOLUTION`] (the session's end records the exact last time).
    fn record_seen(&mut self, shared: &Shared, now: Instant) {
        let (Some(session), Some(presence)) = (&mut self.session, &shared.config.presence) else {
            return;
        };
        let now_ms = now
            .saturating_duration_since(self.conn.opened())
            .as_millis() as u64;
        let every = session.heartbeat().max(SEEN_RESOLUTION).as_millis() as u64;
        if now_ms.saturating_sub(session.seen_recorded_ms) >= every {
            session.seen_recorded_ms = now_ms;
            presence.seen(session.id.0, SystemTime::now());
        }
    }

    /// Keeps the server-wide job counters in step with this connection.
    fn count_jobs(&mut self, shared: &Shared) {
        let (running, queued) = self.conn.job_counts();
        let now = (running as u32, queued as u32);
        let counted = self.jobs_counted();
        if now == counted {
            return;
        }
        let counters = &shared.counters;
        for (counter, before, after) in [
            (&counters.jobs_running, counted.0, now.0),
            (&counters.jobs_queued, counted.1, now.1),
        ] {
            if after > before {
                counter.fetch_add(u64::from(after - before), Ordering::Relaxed);
            } else {
                counter.fetch_sub(u64::from(before - after), Ordering::Relaxed);
            }
        }
        self.jobs().counted = now;
    }

    /// What this connection last added to the shared (running, queued) job counters.
    fn jobs_counted(&self) -> (u32, u32) {
        self.jobs.as_ref().map_or((0, 0), |jobs| jobs.counted)
    }

    fn jobs(&mut self) -> &mut Jobs {
        self.jobs.get_or_insert_with(Box::default)
    }

    /// The core closed the connection: the session ends, then the socket closes as the
    /// cause says — a graceful close first drains the peer's remaining input.
    fn close(&mut self, ctx: &mut Context, cause: Cause, flush: bool) -> Drive {
        let now = Instant::now();
        self.state = ConnectionState::Closing;
        if let Some(session) = self.session.take() {
            let at = SystemTime::now();
            let shared = &ctx.shared;
            // Taken over: the connection that evicted us has recorded the end.
            if let Some(device) = self.close_session(shared, &session, at, cause) {
                if let Some(cluster) = &shared.cluster {
                    cluster.release(&device, session.id, cause, at);
                }
            }
        }
        match CloseMode::of(cause, flush) {
            CloseMode::Graceful => {
                let _ = SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
                self.closing = Some(Box::new(Closing {
                    cause,
                    until: now + DRAIN_TIME,
                    drained: 0,
                }));
                // Our FIN makes the socket readable again only if the peer sends more.
                self.ready.0 |= Ready::READABLE;
                return self.drain_input(ctx);
            }
            CloseMode::Reset => {
                let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
            }
            CloseMode::Close => {}
        }
        self.closed(&ctx.shared, cause)
    }

    /// After our FIN: reads and discards what the peer still sends, until its FIN, an
    /// error, [`DRAIN_TIME`] or [`DRAIN_BYTES`], so that closing with unread input does
    /// not turn into an RST that could destroy replies the peer has not read yet.
    fn drain_input(&mut self, ctx: &mut Context) -> Drive {
        let Some(closing) = &mut self.closing else {
            return Drive::Idle;
        };
        let mut over = closing.until <= Instant::now() || closing.drained >= DRAIN_BYTES;
        while !over && self.ready.has(Ready::READABLE) {
            match self.stream.read(&mut ctx.buffer) {
                Ok(0) => over = true,
                Ok(n) => {
                    closing.drained += n;
                    over = closing.drained >= DRAIN_BYTES;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.ready.clear(Ready::READABLE)
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => over = true,
            }
        }
        if !over && !self.ready.has(Ready::ERROR) {
            return Drive::Idle;
        }
        let cause = closing.cause;
        self.closed(&ctx.shared, cause)
    }

    /// The connection is over: the record of its end. Dropping it then closes the
    /// socket and gives the slot back, in that order (its fields' order).
    fn closed(&mut self, shared: &Shared, cause: Cause) -> Drive {
        let now = Instant::now();
        hangup::emit!(
            "connection_closed",
            conn = self.key.id,
            peer = %self.peer,
            cause = %cause,
            age_ms = now.saturating_duration_since(self.conn.opened()).as_millis() as u64,
            silent_ms = self.silent_for(now).as_millis() as u64,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
        );
        shared.metrics.observe_close(cause, self.silent_for(now));
        self.count_jobs(shared);
        Drive::Ended
    }
}

/// The session's end, in the metrics, the presence store and the event log.
fn end_session_record(shared: &Shared, id: SessionId, at: SystemTime, cause: Cause) {
    shared
        .metrics
        .sessions_ended
        .get_or_create(&cause.into())
        .inc();
    if let Some(presence) = &shared.config.presence {
        presence.session_ended(id.0, at, cause);
    }
    hangup::emit!(
        "session_ended",
        session = %id,
        cause = %cause,
    );
}

/// Reads and discards what a peer still sends after our FIN, on a tokio stream (the
/// accept loop's `ERR busy` refusals): until its FIN, an error, [`DRAIN_TIME`] or
/// [`DRAIN_BYTES`].
pub(crate) async fn drain_briefly(stream: &tokio::net::TcpStream) {
    let drain = async {
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}
