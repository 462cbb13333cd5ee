//! The tokio driver of one connection: moves bytes and readiness between the socket
//! and the sans-IO [`Connection`], runs its jobs, and keeps one sleep armed at the
//! core's next deadline.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hangup_core::{
    authorize, classify_readiness, retransmitting, Cause, CloseMode, Connection, ErrorCode, Event,
    Heartbeat, JobId, SessionId,
};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::live::{lock, ConnectionState, LiveConnection, LiveSession};
use crate::workers::Finished;
use crate::{PresenceDurability, SessionHandle, Shared, DURABLE_WELCOME_LIMIT};
use hangup::apply_policy;

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per wake-up before yielding to the other connections.
const READS_PER_WAKE: usize = 4;
/// The presence store hears that an open session's peer is alive at most this often
/// (or once per heartbeat, if that is longer): an open session's `last_seen` lags by at
/// most this plus the writer's batch interval; its end records the exact time. Writing
/// every heartbeat of a 1 s session cost the presence writer about 3 µs per heartbeat.
pub(crate) const SEEN_RESOLUTION: Duration = Duration::from_secs(5);
/// How long a graceful close waits for the peer's remaining input (SPEC §5).
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How much of the peer's remaining input a graceful close discards at most.
const DRAIN_BYTES: usize = 1 << 20;

thread_local! {
    /// The read buffer of the connections polled on this thread, zeroed once rather
    /// than on every wake-up (a heartbeat is a few bytes; zeroing 16 KiB cost more).
    static READ_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// The job this connection has on the worker pool: how to cancel it and where its
/// outcome arrives. (The core keeps its own record of the job it started.)
struct WorkerJob {
    id: JobId,
    cancel: CancellationToken,
    outcome: oneshot::Receiver<Finished>,
    /// When its cancellation was asked for.
    cancelled_at: Option<Instant>,
}

/// The session this connection carries.
struct OpenSession {
    device: Box<str>,
    id: SessionId,
    heartbeat: Duration,
    /// Fires with the evicting `HELLO`'s instant when another connection takes over.
    kick: Option<oneshot::Receiver<Instant>>,
    /// When the presence store was last told the peer is alive.
    seen_recorded: Instant,
}

/// One connection's state, built before its task is spawned and moved into it whole.
///
/// Building it outside the task matters for memory: an async fn keeps its arguments in
/// every state of its future even after they were moved into a local, so a task that
/// builds its driver from the stream and address would carry them twice.
pub(super) struct Driver {
    /// First field, so dropped first: out of the live table before the socket closes
    /// (the admin endpoint reads TCP_INFO from the descriptor of every entry).
    _listed: Listed,
    stream: TcpStream,
    shared: Arc<Shared>,
    conn: Connection,
    /// Boxed: most connections never run a job, and every byte here is per connection.
    job: Option<Box<WorkerJob>>,
    /// What this connection last added to the shared (running, queued) job counters.
    jobs_counted: (u64, u64),
    /// When the last job's worker stopped (Unix ns), for its `job_cancelled` event.
    job_stopped_ns: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// The connection's id, peer, opening time and last inbound bytes live here (and
    /// nowhere else: every byte of this struct is memory per connection).
    live: Arc<LiveConnection>,
    session: Option<OpenSession>,
    /// With durable presence: the session whose `WELCOME` waits for its commit.
    welcome_after: Option<Box<PendingWelcome>>,
    /// Last field, so dropped last: the slot is free once the descriptor is.
    _slot: Slot,
}

/// A `WELCOME` held back until the session's start is committed.
struct PendingWelcome {
    id: SessionId,
    committed: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
}

/// The connection's entry in the live table, removed on drop — also when the
/// connection's task panics, so a panic leaks no entry.
struct Listed {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.shared.live.remove(self.id);
    }
}

/// The connection's slot in the `connections_open` gauge (taken at accept), given back
/// on drop — also on a panic, so the server never thinks itself fuller than it is.
pub(super) struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    /// Takes a slot.
    pub(super) fn take(shared: &Arc<Shared>) -> Self {
        shared.metrics.connections_open.inc();
        Self {
            shared: shared.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.metrics.connections_open.dec();
        self.shared.connection_ended.notify_waiters();
    }
}

impl Driver {
    /// A driver for an accepted connection, holding the slot the caller took; listed in
    /// the live table until it is dropped.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        shared: Arc<Shared>,
        slot: Slot,
    ) -> Self {
        let now = Instant::now();
        let live = Arc::new(LiveConnection::new(id, peer, stream.as_raw_fd(), now));
        shared.live.insert(live.clone());
        Self {
            _listed: Listed {
                shared: shared.clone(),
                id,
            },
            _slot: slot,
            conn: Connection::with_shared_config(shared.connection_config.clone()),
            stream,
            shared,
            job: None,
            jobs_counted: (0, 0),
            job_stopped_ns: 0,
            bytes_in: 0,
            bytes_out: 0,
            live,
            session: None,
            welcome_after: None,
        }
    }

    /// Serves the connection until it is closed, then gives its slot back.
    ///
    /// Not an `async fn`: that would copy `mut self` into a second slot of the future;
    /// an `async move` block uses its capture in place.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn serve(
        mut self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            if let Err(err) = apply_policy(&self.stream, &self.shared.config.policy) {
                tracing::warn!(conn = self.live.id, peer = %self.live.peer, error = %err, "could not apply the liveness policy");
            }
            hangup::emit!(
                "connection_opened",
                conn = self.live.id,
                peer = %self.live.peer,
            );
            self.shared.metrics.connections_opened.inc();
            self.run(shutdown).await;
            // Dropping the driver takes it out of the live table, closes the socket and
            // gives the slot back, in that order (its fields' order).
        }
    }
}

impl Driver {
    async fn run(&mut self, shutdown: CancellationToken) {
        // One sleep for every timer of the core (SPEC §2 timers, a closed set inside
        // the core, behind `Connection::poll_timeout`), reset only when the core's next deadline moves. No
        // timer per event, and no scan of all connections per tick: tokio's wheel holds
        // one entry per connection, and the core's table has four slots.
        //
        // A heartbeat moves the core's deadline 1.5 × H past it, and so this sleep:
        // `Sleep::reset` to a later instant is a compare-and-swap, and tokio's wheel
        // re-files the entry when the old instant comes up, without waking the task.
        // That measured ~2 µs less server CPU per heartbeat than re-arming lazily in
        // the core, which woke every connection about once per heartbeat (BENCHMARKS.md,
        // bench scale). Both are O(1) per heartbeat.
        let mut sleep: std::pin::Pin<&mut Sleep> = pin!(tokio::time::sleep(Duration::ZERO));
        // Made once: a fresh `cancelled()` per wake-up would join and leave the token's
        // waiter list (a lock shared by every connection) on every heartbeat.
        let mut shutdown_started = pin!(shutdown.cancelled());
        let mut armed = None;
        // Only a draining connection needs this second timer; boxed on shutdown rather
        // than pinned here, so that idle connections do not carry it (a `Sleep` is
        // 112 bytes).
        let mut drain_end: Option<std::pin::Pin<Box<Sleep>>> = None;
        // An elapsed `Sleep` is ready on every poll: each stage fires once.
        let mut drain_over = false;
        let mut drain_stage = DrainStage::Jobs;
        loop {
            self.flush();
            if let Some((cause, flush)) = self.process_events() {
                // Boxed: the close (with its drain timeout) is a state every connection's
                // future would otherwise carry for its whole life.
                Box::pin(self.close(cause, flush)).await;
                return;
            }
            let deadline = self.conn.poll_timeout();
            // Only touch tokio's timer when the deadline moved (see above).
            if let Some(deadline) = deadline.filter(|d| armed != Some(*d)) {
                sleep.as_mut().reset(deadline.into());
            }
            armed = deadline;
            let interest = self.socket_interest();
            let kick = self.session.as_mut().and_then(|s| s.kick.as_mut());
            let has_kick = kick.is_some();
            let (stream, job) = (&self.stream, &mut self.job);
            let has_job = job.is_some();
            let has_welcome = self.welcome_after.is_some();
            let welcome = self.welcome_after.as_mut();
            tokio::select! {
                kicked = kicked(kick), if has_kick => {
                    if let Some(session) = self.session.as_mut() {
                        session.kick = None;
                    }
                    if let Ok(hello_at) = kicked {
                        let now = Instant::now();
                        self.conn.handle_kicked(now);
                        self.shared.metrics.eviction.observe(now.saturating_duration_since(hello_at).as_secs_f64());
                    }
                }
                ready = stream.ready(interest.unwrap_or(Interest::ERROR)), if interest.is_some() => {
                    match ready {
                        Ok(ready) => self.on_ready(ready),
                        Err(err) => self.conn.handle_error(Instant::now(), Cause::from_io_error(&err)),
                    }
                }
                durable = committed(welcome), if has_welcome => {
                    if let Some(pending) = self.welcome_after.take() {
                        self.session_committed(pending.id, durable);
                    }
                }
                finished = job_outcome(job), if has_job => {
                    if let Some(job) = self.job.take() {
                        if let Some(asked) = job.cancelled_at {
                            self.shared.metrics.job_stop.observe(asked.elapsed().as_secs_f64());
                        }
                        self.job_stopped_ns = finished.stopped_ns;
                        self.conn.handle_job_finished(Instant::now(), job.id, finished.outcome);
                    }
                }
                () = &mut sleep, if deadline.is_some() => {
                    if self.conn.interest().write {
                        // Replies wait: tell the write-stall timer whether the peer
                        // still acknowledges anything (one getsockopt per timer wake).
                        let retransmitting = hangup::tcp_info(&self.stream)
                            .is_ok_and(|info| retransmitting(info.retransmits, info.unacked));
                        self.conn.handle_retransmitting(retransmitting);
                    }
                    self.conn.handle_timeout(Instant::now());
                }
                () = &mut shutdown_started, if drain_end.is_none() => {
                    let now = Instant::now();
                    drain_end = Some(Box::pin(tokio::time::sleep_until((now + self.shared.config.drain_timeout).into())));
                    self.live.set_state(ConnectionState::Draining);
                    self.conn.handle_goaway(now);
                }
                () = drained(drain_end.as_mut()), if drain_end.is_some() && !drain_over => {
                    let now = Instant::now();
                    match drain_stage {
                        DrainStage::Jobs => {
                            // Jobs had their time: close gracefully, within the grace.
                            drain_stage = DrainStage::Close;
                            if let Some(end) = drain_end.as_mut() {
                                end.as_mut().reset((now + crate::SHUTDOWN_GRACE).into());
                            }
                            self.conn.handle_local_close(now, Cause::Shutdown, true);
                        }
                        DrainStage::Close => {
                            // The peer does not take our last bytes: reset.
                            drain_over = true;
                            self.conn.handle_local_close(now, Cause::Shutdown, false);
                        }
                    }
                }
            }
        }
    }

    /// The socket readiness the core wants, as a tokio interest.
    fn socket_interest(&self) -> Option<Interest> {
        let wanted = self.conn.interest();
        let parts = [
            (wanted.read, Interest::READABLE),
            (wanted.write, Interest::WRITABLE),
            (wanted.hangup, Interest::ERROR),
        ];
        parts
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, interest)| interest)
            .reduce(|a, b| a | b)
    }

    fn on_ready(&mut self, ready: tokio::io::Ready) {
        let now = Instant::now();
        let watch = self.shared.config.policy.watch_hangup;
        // Without the watch a FIN is only learnt at end of input, but a socket error is
        // still taken: epoll reports EPOLLERR whatever was asked, and leaving it pending
        // would make `ready()` return at once forever (a spin that never cancels).
        if ready.is_error() || (watch && ready.is_read_closed()) {
            // An RST also shows as read-closed; the socket error tells them apart (and
            // an error reading it counts as that error).
            let pending = self.stream.take_error().unwrap_or_else(Some);
            let read_closed = watch && ready.is_read_closed();
            match classify_readiness(ready.is_error(), read_closed, pending.as_ref()) {
                Some(Cause::PeerClosed) => self.conn.handle_read_closed(now),
                Some(cause) => return self.conn.handle_error(now, cause),
                None => {}
            }
        }
        if ready.is_readable() || ready.is_read_closed() {
            self.read_some(now);
        }
    }

    /// Reads while the core wants input, up to a fair share per wake-up.
    fn read_some(&mut self, now: Instant) {
        READ_BUFFER.with_borrow_mut(|buf| self.read_into(now, buf));
    }

    fn read_into(&mut self, now: Instant, buf: &mut [u8]) {
        for _ in 0..READS_PER_WAKE {
            if !self.conn.interest().read {
                return;
            }
            match read_draining(&self.stream, buf) {
                Ok(Read::Eof) => {
                    let status = || self.shared.status_excluding(self.jobs_counted);
                    self.conn.handle_eof(now, &status);
                    return;
                }
                Ok(Read::Bytes { n, drained }) => {
                    self.bytes_in += n as u64;
                    self.live.saw_inbound(now);
                    self.record_seen(now);
                    let status = || self.shared.status_excluding(self.jobs_counted);
                    self.conn.handle_bytes(now, &buf[..n], &status);
                    if drained {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.conn.handle_error(now, Cause::from_io_error(&err)),
            }
        }
    }

    /// Writes what the core has queued, as far as the socket takes it, and lets input
    /// held back at the reply high-water mark go on once the replies drained.
    fn flush(&mut self) {
        self.write_pending();
        while self.conn.can_resume_input() {
            let status = || self.shared.status_excluding(self.jobs_counted);
            self.conn.handle_bytes(Instant::now(), &[], &status);
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
            match self.stream.try_write(pending) {
                Ok(n) => {
                    self.bytes_out += n as u64;
                    self.conn.handle_sent(Instant::now(), n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return self
                        .conn
                        .handle_error(Instant::now(), Cause::from_io_error(&err))
                }
            }
        }
    }

    /// Carries out the core's events; returns the close request, if one came.
    fn process_events(&mut self) -> Option<(Cause, bool)> {
        let mut close = None;
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::StartJob { id, rounds, seed } => {
                    let cancel = CancellationToken::new();
                    let outcome = self.shared.workers.spawn(seed, rounds, cancel.clone());
                    self.job = Some(Box::new(WorkerJob {
                        id,
                        cancel,
                        outcome,
                        cancelled_at: None,
                    }));
                    self.shared.metrics.jobs_started.inc();
                    hangup::emit!(
                        "job_started",
                        conn = self.live.id,
                        peer = %self.live.peer,
                        job = id,
                        rounds,
                    );
                }
                Event::CancelJob { id, .. } => {
                    if let Some(job) = self.job.as_mut().filter(|job| job.id == id) {
                        job.cancel.cancel();
                        job.cancelled_at = Some(Instant::now());
                    }
                }
                Event::JobDone { id, rounds } => {
                    self.job_stopped_ns = 0;
                    self.shared.metrics.jobs_done.inc();
                    hangup::emit!(
                        "job_done",
                        conn = self.live.id,
                        peer = %self.live.peer,
                        job = id,
                        rounds,
                    );
                }
                Event::JobCancelled {
                    id,
                    cause,
                    was_running,
                } => {
                    self.shared
                        .metrics
                        .jobs_cancelled
                        .get_or_create(&cause.into())
                        .inc();
                    // When its worker stopped (0: it never ran).
                    let stopped_ns = std::mem::take(&mut self.job_stopped_ns);
                    hangup::emit!(
                        "job_cancelled",
                        conn = self.live.id,
                        peer = %self.live.peer,
                        job = id,
                        cause = %cause,
                        was_running,
                        stopped_ns,
                    );
                }
                Event::PeerHalfClosed => hangup::emit!(
                    "peer_half_closed",
                    conn = self.live.id,
                    peer = %self.live.peer,
                ),
                Event::SessionRequested {
                    device,
                    token,
                    heartbeat,
                } => self.open_session(device, token.as_deref(), heartbeat),
                Event::Close { cause, flush } => close = Some((cause, flush)),
            }
        }
        self.count_jobs();
        close
    }

    /// `HELLO`: checks the token, takes the device over in the registry (kicking the
    /// connection that held it) and opens the session.
    fn open_session(&mut self, device: String, token: Option<&str>, heartbeat: Heartbeat) {
        let now = Instant::now();
        if let Some(secret) = &self.shared.config.auth_secret {
            if let Err(message) = authorize(secret.as_bytes(), &device, token) {
                hangup::emit!(
                    "session_refused",
                    conn = self.live.id,
                    peer = %self.live.peer,
                    device = %device,
                    reason = "unauthorized",
                );
                return self
                    .conn
                    .handle_session_refused(now, ErrorCode::Unauthorized, message);
            }
        }
        let (kick, kick_rx) = oneshot::channel();
        let wall = SystemTime::now();
        let handle = SessionHandle {
            conn: self.live.id,
            kick: Some(kick),
            epoch: 0,
            evict_seen: 0,
            peer: self.live.peer,
            since_ms: wall
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        };
        let (opened, live_sessions) = {
            let mut registry = lock(&self.shared.sessions);
            let opened = registry.open(&device, handle);
            (opened, registry.len())
        };
        self.shared.metrics.sessions_open.set(live_sessions as i64);
        let durable = self.shared.config.presence_durability == PresenceDurability::Acked;
        match (&self.shared.config.presence, durable) {
            (Some(presence), true) => {
                let presence = presence.clone();
                let (id, device, peer) = (opened.id, device.clone(), self.live.peer);
                self.welcome_after = Some(Box::new(PendingWelcome {
                    id,
                    committed: Box::pin(async move {
                        presence
                            .session_started_durably(
                                id.0,
                                &device,
                                peer,
                                wall,
                                DURABLE_WELCOME_LIMIT,
                            )
                            .await
                    }),
                }));
            }
            (Some(presence), false) => {
                self.conn.handle_session_opened(now, opened.id);
                presence.session_started(opened.id.0, &device, self.live.peer, wall);
            }
            (None, _) => self.conn.handle_session_opened(now, opened.id),
        }
        if let Some(cluster) = &self.shared.cluster {
            cluster.claim(&device, opened.id, self.live.peer, wall);
        }
        if let Some((old_id, mut old)) = opened.evicted {
            // The old connection may already be closing on its own; then nobody waits
            // on the receiver, and that is fine: it ends either way.
            let _ = old.kick_now(now);
            self.end_session_record(old_id, wall, Cause::Takeover);
            self.shared.metrics.takeovers.inc();
            hangup::emit!(
                "session_taken_over",
                conn = self.live.id,
                peer = %self.live.peer,
                device = %device,
                session = %opened.id,
                old_session = %old_id,
                old_conn = old.conn,
            );
        }
        self.shared.metrics.sessions_started.inc();
        hangup::emit!(
            "session_started",
            conn = self.live.id,
            peer = %self.live.peer,
            device = %device,
            session = %opened.id,
            heartbeat_ms = heartbeat.interval.as_millis() as u64,
        );
        self.live.set_session(Some(LiveSession {
            device: device.as_str().into(),
            id: opened.id,
            heartbeat: heartbeat.interval,
            started_at: wall,
        }));
        self.session = Some(OpenSession {
            device: device.into(),
            id: opened.id,
            heartbeat: heartbeat.interval,
            kick: Some(kick_rx),
            seen_recorded: now,
        });
    }

    /// The durable start of session `id` was committed (`WELCOME` now) or not in time
    /// (`ERR busy`; the session is undone, recorded as ended `local`).
    fn session_committed(&mut self, id: SessionId, durable: bool) {
        let now = Instant::now();
        if durable {
            return self.conn.handle_session_opened(now, id);
        }
        if let Some(session) = self.session.take().filter(|s| s.id == id) {
            let (current, live_sessions) = {
                let mut registry = lock(&self.shared.sessions);
                (registry.close(&session.device, session.id), registry.len())
            };
            if current {
                self.shared.metrics.sessions_open.set(live_sessions as i64);
                self.end_session_record(id, SystemTime::now(), Cause::Local);
            }
            self.live.set_session(None);
        }
        let message = "the presence store could not record the session in time; try again later";
        self.conn
            .handle_session_refused(now, ErrorCode::Busy, message);
    }

    /// The session's end, in the metrics, the presence store and the event log.
    fn end_session_record(&self, id: SessionId, at: SystemTime, cause: Cause) {
        self.shared
            .metrics
            .sessions_ended
            .get_or_create(&cause.into())
            .inc();
        if let Some(presence) = &self.shared.config.presence {
            presence.session_ended(id.0, at, cause);
        }
        hangup::emit!(
            "session_ended",
            session = %id,
            cause = %cause,
        );
    }

    /// Tells the presence store the peer is alive, at most once per heartbeat and per
    /// [`SEEN_RESOLUTION`] (the session's end records the exact last time).
    fn record_seen(&mut self, now: Instant) {
        let (Some(session), Some(presence)) = (&mut self.session, &self.shared.config.presence)
        else {
            return;
        };
        let every = session.heartbeat.max(SEEN_RESOLUTION);
        if now.saturating_duration_since(session.seen_recorded) >= every {
            session.seen_recorded = now;
            presence.seen(session.id.0, SystemTime::now());
        }
    }

    /// Keeps the server-wide job counters in step with this connection.
    fn count_jobs(&mut self) {
        let (running, queued) = self.conn.job_counts();
        let now = (running as u64, queued as u64);
        if now != self.jobs_counted {
            self.live.set_jobs(now.0, now.1);
        }
        let counters = &self.shared.counters;
        for (counter, before, after) in [
            (&counters.jobs_running, self.jobs_counted.0, now.0),
            (&counters.jobs_queued, self.jobs_counted.1, now.1),
        ] {
            if after > before {
                counter.fetch_add(after - before, Ordering::Relaxed);
            } else {
                counter.fetch_sub(before - after, Ordering::Relaxed);
            }
        }
        self.jobs_counted = now;
    }

    async fn close(&mut self, cause: Cause, flush: bool) {
        let now = Instant::now();
        self.live.set_state(ConnectionState::Closing);
        if let Some(session) = self.session.take() {
            let (current, live_sessions) = {
                let mut registry = lock(&self.shared.sessions);
                let current = registry.close(&session.device, session.id);
                (current, registry.len())
            };
            // Taken over: the connection that evicted us has recorded the end.
            if current {
                self.shared.metrics.sessions_open.set(live_sessions as i64);
                let at = SystemTime::now();
                // The last time the peer was heard from, exact whatever the throttle
                // left unwritten.
                if let Some(presence) = &self.shared.config.presence {
                    let last = at.checked_sub(self.live.silent_for(now)).unwrap_or(at);
                    presence.seen(session.id.0, last);
                }
                self.end_session_record(session.id, at, cause);
                if let Some(cluster) = &self.shared.cluster {
                    cluster.release(&session.device, session.id, cause, at);
                }
            }
            self.live.set_session(None);
        }
        match CloseMode::of(cause, flush) {
            CloseMode::Graceful => {
                let _ = SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
                drain_briefly(&self.stream).await;
            }
            CloseMode::Reset => {
                let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
            }
            CloseMode::Close => {}
        }
        hangup::emit!(
            "connection_closed",
            conn = self.live.id,
            peer = %self.live.peer,
            cause = %cause,
            age_ms = now.saturating_duration_since(self.live.opened()).as_millis() as u64,
            silent_ms = self.live.silent_for(now).as_millis() as u64,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
        );
        self.shared
            .metrics
            .observe_close(cause, self.live.silent_for(now));
        self.count_jobs();
    }
}

/// What one read gave.
enum Read {
    /// The peer's FIN: no more input.
    Eof,
    /// `n` bytes; `drained`: fewer than asked for, so the receive queue is empty and the
    /// socket's readiness was cleared without a second, empty read.
    Bytes { n: usize, drained: bool },
}

/// One `recv` into `buf`. A read shorter than `buf` took everything the kernel held
/// (TCP's `recvmsg` copies until the buffer is full or the queue is empty), so the
/// readiness is cleared then and there: a heartbeat costs one `recv`, not a second
/// one that only returns `EAGAIN`. tokio clears the readiness only if no new readiness
/// arrived since it handed this one out, and epoll (edge-triggered) reports every new
/// arrival, so bytes that come in after the `recv` wake the connection again.
fn read_draining(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Read> {
    let mut short = 0;
    let read = stream.try_io(Interest::READABLE, || {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes for the call; the
        // descriptor is the stream's, open while it is borrowed.
        let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            0 => Ok(0),
            n if (n as usize) < buf.len() => {
                short = n as usize;
                Err(io::ErrorKind::WouldBlock.into())
            }
            n => Ok(n as usize),
        }
    });
    match read {
        Ok(0) => Ok(Read::Eof),
        Ok(n) => Ok(Read::Bytes { n, drained: false }),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(Read::Bytes {
            n: short,
            drained: true,
        }),
        Err(err) => Err(err),
    }
}

/// The commit a `WELCOME` waits for; never resolves without one.
async fn committed(pending: Option<&mut Box<PendingWelcome>>) -> bool {
    match pending {
        Some(pending) => pending.committed.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The kick of a session taken over; never resolves without a session.
async fn kicked(
    kick: Option<&mut oneshot::Receiver<Instant>>,
) -> Result<Instant, oneshot::error::RecvError> {
    match kick {
        Some(kick) => kick.await,
        None => std::future::pending().await,
    }
}

/// Where a connection is in the server's shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainStage {
    /// `GOAWAY` sent; jobs in flight finish within the drain timeout.
    Jobs,
    /// Closing gracefully; reset once `SHUTDOWN_GRACE` is over.
    Close,
}

/// The end of the drain time; never without one.
async fn drained(drain_end: Option<&mut std::pin::Pin<Box<Sleep>>>) {
    match drain_end {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The running job's end; a worker that vanished counts as cancelled, now.
async fn job_outcome(job: &mut Option<Box<WorkerJob>>) -> Finished {
    match job {
        Some(job) => (&mut job.outcome).await.unwrap_or_else(|_| Finished {
            outcome: None,
            stopped_ns: hangup::events::ts_ns(),
        }),
        None => std::future::pending().await,
    }
}

/// After our FIN: read and discard what the peer still sends, until its FIN, an error,
/// [`DRAIN_TIME`] or [`DRAIN_BYTES`], so that closing with unread input does not turn
/// into an RST that could destroy replies the peer has not read yet.
pub(super) async fn drain_briefly(stream: &TcpStream) {
    let drain = async {
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match discard_input(stream) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// One read into a buffer on the thread's stack. A buffer declared in the async block
/// above would be part of every connection's future, closing or not (a future is as
/// large as its largest state): 4 KiB per idle connection.
fn discard_input(stream: &TcpStream) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    stream.try_read(&mut buf)
}
