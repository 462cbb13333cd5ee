//! One server connection as a state machine: bytes and socket facts in, replies, job
//! starts and cancellations out. No I/O, no clock: time comes in as `now`.
//!
//! Inputs are `handle_*`; outputs are [`Connection::poll_event`],
//! [`Connection::poll_transmit`] and [`Connection::poll_timeout`]. The driver (the tokio
//! layer) asks [`Connection::interest`] what to wait for on the socket, so that it never
//! waits on readiness it will not consume.
//!
//! ```text
//!   bytes ──handle_bytes──▶ ┌────────────┐ ──poll_transmit──▶ reply bytes
//!   FIN   ──handle_read_closed / handle_eof  │ Connection │ ──poll_event────▶ StartJob / CancelJob / Close …
//!   error ──handle_error──▶ │            │ ──poll_timeout──▶ next deadline
//!   job   ──handle_job_finished──▶ └────────────┘ ◀─handle_timeout── now
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cause::Cause;
use crate::policy::{HalfClosePolicy, LivenessPolicy};
use crate::protocol::{
    parse_line, Command, ErrorCode, JobId, Line, LineDecoder, Reply, StatusCounts, TooLong,
    MAX_LINE,
};
use crate::session::{Heartbeat, SessionId};
use crate::timer::{Epoch, Stamp, Timer, TimerTable};

/// The largest `JOB <rounds>` accepted unless configured otherwise (SPEC §5
/// `--max-rounds`).
pub const DEFAULT_MAX_ROUNDS: u64 = 10_000_000_000;

/// Bytes of queued work (jobs waiting behind a running one, their seeds included) across
/// every connection that shares it. Past its limit a `JOB` gets `ERR too-many-jobs`, so
/// the memory all peers together can make the server hold for later is bounded, not
/// only each connection's share.
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicUsize,
    limit: usize,
}

impl QueueBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn try_charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Settings of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest `JOB <rounds>`.
    pub max_rounds: u64,
    /// Jobs that may wait behind the running one; the next gets `ERR too-many-jobs`.
    pub max_queued_jobs: usize,
    /// What to do on FIN while jobs are pending.
    pub half_close: HalfClosePolicy,
    /// Close a peer that accepts none of our pending bytes for this long.
    pub write_timeout: Option<Duration>,
    /// Close a connection (`timeout`) whose peer acknowledged nothing of what we wrote
    /// for this long, counted from our last write: bytes already in the kernel, which
    /// the write timeout does not see. A session's heartbeat stands in for it.
    pub ack_timeout: Option<Duration>,
    /// Close a connection whose unfinished line is older than this.
    pub partial_line_timeout: Option<Duration>,
    /// After a half-close probe, how long without RST before the peer is taken to be
    /// reading (only an observation: nothing is cancelled either way).
    pub probe_window: Duration,
    /// Stop reading while this many reply bytes wait to be written (back-pressure).
    pub outbox_high_water: usize,
    /// `PING`s a session may send per second on average (twice that in a burst); more
    /// get `ERR rate-limited` and the connection is closed. `None`: no limit. Anonymous
    /// connections are not limited (their replies are bounded by back-pressure).
    pub session_pings_per_sec: Option<u32>,
    /// Shared with the server's other connections: the bound on all queued work.
    /// `None`: only the per-connection `max_queued_jobs`.
    pub queue_budget: Option<Arc<QueueBudget>>,
}

impl ConnectionConfig {
    /// The defaults of SPEC §3 with the timeouts of `policy`.
    pub fn new(policy: &LivenessPolicy) -> Self {
        Self {
            max_rounds: DEFAULT_MAX_ROUNDS,
            max_queued_jobs: 64,
            half_close: HalfClosePolicy::default(),
            write_timeout: policy.write_timeout,
            // The user timeout's budget, from the write rather than from the kernel's
            // first retransmission (one RTO later, and later still on a loaded host).
            ack_timeout: policy.user_timeout,
            partial_line_timeout: policy.partial_line_timeout,
            probe_window: Duration::from_millis(200),
            outbox_high_water: 64 * 1024,
            session_pings_per_sec: Some(10),
            queue_budget: None,
        }
    }
}

/// What the driver must do or record, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Run job `id` on a worker and report back with [`Connection::handle_job_finished`].
    StartJob {
        /// The job.
        id: JobId,
        /// SHA-256 rounds.
        rounds: u64,
        /// The chain's starting bytes.
        seed: String,
    },
    /// Cancel the running job `id` (its token); it still reports back when it stops.
    CancelJob {
        /// The job.
        id: JobId,
        /// Why.
        cause: Cause,
    },
    /// Job `id` finished and its `DONE` is queued.
    JobDone {
        /// The job.
        id: JobId,
        /// Rounds it ran.
        rounds: u64,
    },
    /// Job `id` stopped without a result (it had been running, or never started).
    JobCancelled {
        /// The job.
        id: JobId,
        /// Why.
        cause: Cause,
        /// Whether it was running on a worker when it was cancelled.
        was_running: bool,
    },
    /// The peer sent FIN but is still reading: it only half-closed (an observation).
    PeerHalfClosed,
    /// The peer sent `HELLO`. Input stops until the driver answers with
    /// [`Connection::handle_session_opened`] or [`Connection::handle_session_refused`]
    /// (it checks the token and takes the device over in the registry).
    SessionRequested {
        /// The device id (already validated).
        device: String,
        /// The token the peer sent, if any.
        token: Option<String>,
        /// The heartbeat the session will get.
        heartbeat: Heartbeat,
    },
    /// The connection is over. With `flush`, write what [`Connection::poll_transmit`]
    /// still holds (nothing, by then), shut down the write side and drain input briefly
    /// before closing; without, close at once.
    Close {
        /// Why.
        cause: Cause,
        /// Whether the socket is still worth a graceful close.
        flush: bool,
    },
}

/// How the driver ends the socket of a [`Event::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Shut the write side down (FIN after the last reply), drain the peer's input
    /// briefly, then close.
    Graceful,
    /// Close at once; the kernel sends FIN (or RST if input is unread).
    Close,
    /// Close with RST (`SO_LINGER` 0): the peer is gone or will not read, so nothing we
    /// still hold will ever be read, and a FIN would leave an orphan socket
    /// retransmitting into the void.
    Reset,
}

impl CloseMode {
    /// The close for a [`Event::Close`]'s `cause` and `flush`.
    ///
    /// ```
    /// use hangup_core::{Cause, CloseMode};
    ///
    /// assert_eq!(CloseMode::of(Cause::PeerClosed, true), CloseMode::Graceful);
    /// assert_eq!(CloseMode::of(Cause::Stalled, false), CloseMode::Reset);
    /// assert_eq!(CloseMode::of(Cause::PeerReset, false), CloseMode::Close);
    /// ```
    pub const fn of(cause: Cause, flush: bool) -> CloseMode {
        match (flush, cause) {
            (true, _) => CloseMode::Graceful,
            (
                false,
                Cause::Stalled
                | Cause::Timeout
                | Cause::Unreachable
                | Cause::HeartbeatMissed
                | Cause::Shutdown,
            ) => CloseMode::Reset,
            (false, _) => CloseMode::Close,
        }
    }
}

/// What TCP_INFO says of the bytes a connection handed to its kernel. The driver reads
/// it when [`Connection::wants_acknowledgements`] says so and hands its timers the
/// reading with [`Connection::handle_timeout_acknowledged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acknowledgements {
    /// Segments sent and not acknowledged (`tcpi_unacked`).
    pub unacked: u32,
    /// Retransmissions of the oldest of them without an answer (`tcpi_retransmits`).
    pub retransmits: u8,
    /// How long ago the peer last acknowledged anything (`tcpi_last_ack_recv`).
    pub since_last_ack: Duration,
}

impl Acknowledgements {
    /// The kernel is retransmitting bytes the peer never acknowledged: the peer is
    /// unreachable rather than alive with a full window.
    ///
    /// ```
    /// use hangup_core::Acknowledgements;
    ///
    /// let lost = Acknowledgements { unacked: 3, retransmits: 2, ..Default::default() };
    /// assert!(lost.retransmitting());
    /// assert!(!Acknowledgements { unacked: 0, ..lost }.retransmitting());
    /// assert!(!Acknowledgements { retransmits: 0, ..lost }.retransmitting());
    /// ```
    pub const fn retransmitting(&self) -> bool {
        self.retransmits > 0 && self.unacked > 0
    }
}

/// How soon the acknowledgement watch looks again when the peer's last acknowledgement
/// is nearly `ack_timeout` old: TCP_INFO counts it in jiffies (4 ms at HZ = 250), so
/// the age it gives can be short by one.
const ACK_RECHECK: Duration = Duration::from_millis(5);

/// A reading of [`Acknowledgements`], for the timers of one wake-up (not kept: every
/// byte in [`Connection`] is paid per connection).
#[derive(Debug, Clone, Copy)]
struct KernelReading {
    /// When the peer last acknowledged anything.
    heard: Stamp,
    /// Bytes were sent and not acknowledged.
    outstanding: bool,
    retransmitting: bool,
}

/// What the driver should wait for on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// Readable: read input (never set once input ended or while back-pressured).
    pub read: bool,
    /// Writable: replies are pending.
    pub write: bool,
    /// Errors and hangups (RST, FIN): set while the socket is alive.
    pub hangup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    NotSent,
    Sent,
    Concluded,
}

#[derive(Debug)]
struct QueuedJob {
    id: JobId,
    rounds: u64,
    seed: String,
}

impl QueuedJob {
    /// What it holds in memory, as charged to the [`QueueBudget`].
    fn cost(&self) -> usize {
        std::mem::size_of::<Self>() + self.seed.capacity()
    }
}

/// A connection's jobs, out of line: most connections never run one, and every byte in
/// [`Connection`] is paid per connection. Kept once made (job ids count on).
#[derive(Debug)]
struct Jobs {
    queued: VecDeque<QueuedJob>,
    running: Option<RunningJob>,
    next_id: JobId,
}

impl Jobs {
    const FIRST_ID: JobId = 1;
}

impl Default for Jobs {
    fn default() -> Self {
        Self {
            queued: VecDeque::new(),
            running: None,
            next_id: Self::FIRST_ID,
        }
    }
}

#[derive(Debug)]
struct RunningJob {
    id: JobId,
    rounds: u64,
    cancel_cause: Option<Cause>,
}

#[derive(Debug, PartialEq, Eq)]
enum Session {
    None,
    /// `HELLO` was sent; the driver has not answered yet. Boxed: it lasts one round
    /// trip to the driver, while every open session pays for this enum's size.
    Requested(Box<Heartbeat>),
    /// Dead after this much inbound silence.
    Open {
        id: SessionId,
        dead_after: Duration,
    },
}

/// A token bucket, in thousandths of a token so that refills need no floats.
#[derive(Debug, Clone, Copy)]
struct PingBucket {
    /// At most 2 000 × the rate (saturating: a rate above two million a second is no
    /// limit anyway).
    milli_tokens: u32,
    refilled: Stamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// `BYE` received: finish the jobs, then reply `BYE` and close.
    ByeRequested,
    /// Closing for `cause`; `Close` is emitted once the running job has stopped and,
    /// with `flush`, the outbox is empty.
    Closing {
        cause: Cause,
        flush: bool,
    },
    Closed,
}

/// One connection's protocol and liveness state.
#[derive(Debug)]
pub struct Connection {
    /// Usually the same for every connection of a server: shared, not copied.
    config: Arc<ConnectionConfig>,
    decoder: LineDecoder,
    /// Input read but held back while replies are over the high-water mark (at most
    /// one read's worth: no more is read until it is parsed).
    unparsed: Box<[u8]>,
    outbox: Vec<u8>,
    sent: usize,
    events: VecDeque<Event>,
    /// When the connection started: what its [`Stamp`]s count from.
    epoch: Epoch,
    timers: TimerTable,
    /// Made by the first `JOB`.
    jobs: Option<Box<Jobs>>,
    phase: Phase,
    /// The peer sent FIN (seen through readiness or at end of input).
    fin_seen: bool,
    /// All input was read.
    eof: bool,
    probe: Probe,
    session: Session,
    /// When the peer last sent bytes (the session's proof of life).
    last_inbound: Option<Stamp>,
    pings: Option<PingBucket>,
    /// `GOAWAY` was sent: no new work; close once the jobs in flight are done.
    draining: bool,
}

impl Drop for Connection {
    /// Whatever is still queued gives its bytes back to the shared budget.
    fn drop(&mut self) {
        for job in self.jobs.iter().flat_map(|jobs| &jobs.queued) {
            self.release(job);
        }
    }
}

impl Connection {
    /// A fresh connection, started at `now`.
    pub fn new(config: ConnectionConfig, now: Instant) -> Self {
        Self::with_shared_config(Arc::new(config), now)
    }

    /// A fresh connection with settings shared with others (a server's many
    /// connections need one copy between them).
    pub fn with_shared_config(config: Arc<ConnectionConfig>, now: Instant) -> Self {
        Self {
            config,
            decoder: LineDecoder::new(MAX_LINE),
            unparsed: Box::default(),
            outbox: Vec::new(),
            sent: 0,
            events: VecDeque::new(),
            epoch: Epoch::new(now),
            timers: TimerTable::default(),
            jobs: None,
            phase: Phase::Open,
            fin_seen: false,
            eof: false,
            probe: Probe::NotSent,
            session: Session::None,
            last_inbound: None,
            pings: None,
            draining: false,
        }
    }

    /// Bytes read from the peer. `status` is asked on `STATUS` for the server-wide counts
    /// of every *other* connection; this connection adds its own jobs.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8], status: &dyn Fn() -> StatusCounts) {
        if !self.accepts_input() {
            return;
        }
        if !bytes.is_empty() {
            self.last_inbound = Some(self.epoch.stamp(now));
            // The deadline follows every sign of life: a slot write here. The driver
            // refiles it in its timer wheel only when the old deadline comes up (one
            // entry per connection, not one per heartbeat).
            if let Session::Open { dead_after, .. } = self.session {
                self.set_timer(Timer::Heartbeat, now + dead_after);
            }
        }
        let stashed = std::mem::take(&mut self.unparsed);
        let input: std::borrow::Cow<'_, [u8]> = if stashed.is_empty() {
            bytes.into()
        } else {
            [&*stashed, bytes].concat().into()
        };
        let had_partial = self.decoder.has_partial();
        let mut completed_a_line = false;
        let mut rest: &[u8] = &input;
        // One line at a time, so that replies stop being produced at the high-water
        // mark: a read of tiny bad lines must not turn into a flood of `ERR` replies.
        while !rest.is_empty() && self.accepts_input() {
            if !self.under_high_water() || self.session_pending() {
                self.unparsed = rest.into();
                break;
            }
            let (line, tail) = self.decoder.next_line(rest);
            rest = tail;
            if let Some(line) = line {
                completed_a_line = true;
                self.handle_frame(now, &line, status);
            }
        }
        self.rearm_partial_line(now, had_partial && !completed_a_line);
        self.apply_half_close_policy(now);
    }

    /// Whether input read earlier waits unparsed (held back at the reply high-water
    /// mark) and can now go on: the driver then calls
    /// [`Connection::handle_bytes`] with no new bytes.
    pub fn can_resume_input(&self) -> bool {
        !self.unparsed.is_empty()
            && self.under_high_water()
            && self.accepts_input()
            && !self.session_pending()
    }

    /// The driver opened the session asked for by [`Event::SessionRequested`].
    pub fn handle_session_opened(&mut self, now: Instant, id: SessionId) {
        let Session::Requested(heartbeat) = &self.session else {
            return;
        };
        let heartbeat = **heartbeat;
        self.session = Session::Open {
            id,
            dead_after: heartbeat.dead_after,
        };
        // The heartbeat is the session's proof of life from now on.
        self.timers.clear(Timer::Unacknowledged);
        self.send(now, &Reply::Welcome(id, heartbeat));
        self.last_inbound = Some(self.epoch.stamp(now));
        if self.accepts_input() {
            self.set_timer(Timer::Heartbeat, now + heartbeat.dead_after);
        }
        if let Some(rate) = self.config.session_pings_per_sec {
            self.pings = Some(PingBucket {
                milli_tokens: rate.saturating_mul(2000),
                refilled: self.epoch.stamp(now),
            });
        }
    }

    /// The driver refused the session asked for by [`Event::SessionRequested`]
    /// (`ERR <code> <message>`); the connection goes on without one.
    pub fn handle_session_refused(&mut self, now: Instant, code: ErrorCode, message: &str) {
        if let Session::Requested(_) = self.session {
            self.session = Session::None;
            self.send(now, &Reply::Err(code, message.into()));
        }
    }

    /// Another connection took over this one's session: `KICKED takeover`, cancel the
    /// jobs, close (cause `takeover`).
    pub fn handle_kicked(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Open | Phase::ByeRequested) {
            return;
        }
        self.send(now, &Reply::KickedTakeover);
        self.close(now, Cause::Takeover, true);
    }

    /// The server is shutting down: `GOAWAY shutdown`, refuse new work, and close
    /// (cause `shutdown`) once the jobs in flight are done. The driver bounds the wait
    /// with [`Connection::handle_local_close`] at its drain timeout.
    pub fn handle_goaway(&mut self, now: Instant) {
        if self.draining || !matches!(self.phase, Phase::Open | Phase::ByeRequested) {
            return;
        }
        self.draining = true;
        self.send(now, &Reply::GoawayShutdown);
        self.maybe_finish(now);
    }

    /// The session open on this connection, if any.
    pub fn session(&self) -> Option<SessionId> {
        match self.session {
            Session::Open { id, .. } => Some(id),
            Session::None | Session::Requested(_) => None,
        }
    }

    /// When the peer last sent bytes, if it ever did.
    pub fn last_inbound(&self) -> Option<Instant> {
        self.last_inbound.map(|at| self.epoch.at(at))
    }

    /// The peer's heartbeat is overdue at `now` while we read: the heartbeat timer's turn
    /// would end the connection `heartbeat_missed`. The core only knows the bytes it was
    /// given; a driver that fell behind (a stalled thread, a backlog of readiness) reads
    /// what the kernel holds before that turn, so that its own lag never passes for the
    /// peer's silence.
    pub fn heartbeat_overdue(&self, now: Instant) -> bool {
        self.interest().read && self.heartbeat_due().is_some_and(|due| due <= now)
    }

    /// The unfinished line's budget is up at `now` while we read: the partial-line
    /// timer's turn would end the connection `protocol_error`. As with
    /// [`Connection::heartbeat_overdue`], a driver that fell behind reads first, so that
    /// the line's rest, if it waits in the kernel, finishes the line.
    pub fn line_overdue(&self, now: Instant) -> bool {
        self.interest().read
            && self
                .timers
                .is_due(Timer::PartialLine, self.epoch.stamp(now))
    }

    /// When the open session's silence reaches its budget: the last bytes heard plus
    /// dead-after.
    fn heartbeat_due(&self) -> Option<Instant> {
        let (&Session::Open { dead_after, .. }, Some(last)) = (&self.session, self.last_inbound)
        else {
            return None;
        };
        Some(self.epoch.at(last) + dead_after)
    }

    /// When the connection started (the `now` it was made with).
    pub fn opened(&self) -> Instant {
        self.epoch.instant()
    }

    /// The peer's FIN was seen through readiness; input may still be queued unread.
    pub fn handle_read_closed(&mut self, now: Instant) {
        self.fin_seen = true;
        self.apply_half_close_policy(now);
    }

    /// All input was read: the peer sent FIN. An unfinished last line counts as a line.
    pub fn handle_eof(&mut self, now: Instant, status: &dyn Fn() -> StatusCounts) {
        if self.eof {
            return;
        }
        self.eof = true;
        self.fin_seen = true;
        self.timers.clear(Timer::PartialLine);
        if self.accepts_input() {
            if let Some(line) = self.decoder.finish_line() {
                self.handle_frame(now, &line, status);
            }
        }
        self.apply_half_close_policy(now);
        self.maybe_finish(now);
    }

    /// The socket reported an error or reset: the peer is gone.
    ///
    /// A reset after the peer's FIN means it closed and is not reading: `peer_closed`.
    pub fn handle_error(&mut self, now: Instant, cause: Cause) {
        let cause = if self.fin_seen && cause == Cause::PeerReset {
            Cause::PeerClosed
        } else {
            cause
        };
        self.close(now, cause, false);
    }

    /// The driver closes the connection for a reason of its own (e.g. shutdown).
    pub fn handle_local_close(&mut self, now: Instant, cause: Cause, flush: bool) {
        self.close(now, cause, flush);
    }

    /// The running job `id` stopped: `Some(digest)` if it completed.
    pub fn handle_job_finished(&mut self, now: Instant, id: JobId, digest: Option<[u8; 32]>) {
        let running = self.jobs.as_mut().map(|jobs| &mut jobs.running);
        let Some(job) = running.and_then(|running| running.take_if(|job| job.id == id)) else {
            return;
        };
        match (digest, job.cancel_cause) {
            (Some(digest), None) => {
                self.send(now, &Reply::Done(id, digest));
                self.events.push_back(Event::JobDone {
                    id,
                    rounds: job.rounds,
                });
            }
            (_, cause) => self.events.push_back(Event::JobCancelled {
                id,
                cause: cause.unwrap_or(Cause::Local),
                was_running: true,
            }),
        }
        self.start_next_job();
        self.maybe_finish(now);
    }

    /// The driver wrote `n` bytes of [`Connection::poll_transmit`].
    pub fn handle_sent(&mut self, now: Instant, n: usize) {
        if n == 0 {
            return;
        }
        self.sent += n;
        debug_assert!(self.sent <= self.outbox.len());
        if let (Some(timeout), false) = (
            self.config.ack_timeout,
            matches!(self.session, Session::Open { .. }),
        ) {
            // Counts from the last write: one slot write, the driver's wheel is only
            // touched when the old deadline comes up.
            self.set_timer(Timer::Unacknowledged, now + timeout);
        }
        if self.sent >= self.outbox.len() {
            // Release the buffer: idle connections hold no reply memory.
            self.outbox = Vec::new();
            self.sent = 0;
            self.timers.clear(Timer::WriteStall);
        } else {
            // A peer that always leaves a few bytes unread would otherwise keep every
            // byte ever written here. Dropping the written part once it is the larger
            // half copies fewer bytes than were written: amortised O(1) per byte.
            if self.sent > self.outbox.len() / 2 {
                self.outbox.drain(..self.sent);
                self.sent = 0;
            }
            if let Some(timeout) = self.config.write_timeout {
                self.set_timer(Timer::WriteStall, now + timeout);
            }
        }
        // Replies drained below the high-water mark: a pending partial line's clock runs
        // again.
        self.rearm_partial_line(now, true);
        self.maybe_finish(now);
    }

    /// Whether the timers due at `now` need TCP_INFO: read it then, and handle them with
    /// [`Connection::handle_timeout_acknowledged`] (one getsockopt, only on those
    /// wake-ups).
    pub fn wants_acknowledgements(&self, now: Instant) -> bool {
        let now = self.epoch.stamp(now);
        self.timers.is_due(Timer::WriteStall, now) || self.timers.is_due(Timer::Unacknowledged, now)
    }

    /// Time reached [`Connection::poll_timeout`] and TCP_INFO says `acks` of the bytes
    /// we wrote: the write-stall timer names a peer that acknowledges nothing `timeout`
    /// rather than `stalled`, and the acknowledgement watch ends a connection whose peer
    /// acknowledged none of them for `ack_timeout`.
    pub fn handle_timeout_acknowledged(&mut self, now: Instant, acks: Acknowledgements) {
        let heard = now.checked_sub(acks.since_last_ack).unwrap_or(now);
        self.timeout(
            now,
            Some(KernelReading {
                heard: self.epoch.stamp(heard),
                outstanding: acks.unacked > 0,
                retransmitting: acks.retransmitting(),
            }),
        );
    }

    /// Time reached [`Connection::poll_timeout`] (without a TCP_INFO reading: a write
    /// stall is `stalled`, and the acknowledgement watch takes everything as
    /// acknowledged).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now, None);
    }

    fn timeout(&mut self, now: Instant, kernel: Option<KernelReading>) {
        // One at a time: after a late wake-up several may be due, and a close by the
        // first disarms the rest (no `ERR timeout` or `PeerHalfClosed` after it).
        while let Some((timer, deadline)) = self.timers.pop_expired(self.epoch.stamp(now)) {
            match timer {
                Timer::PartialLine => {
                    let message = "partial line older than the dead-after budget; closing";
                    self.send(now, &Reply::Err(ErrorCode::Timeout, message.into()));
                    self.close(now, Cause::ProtocolError, true);
                }
                Timer::WriteStall => {
                    // No write progress for the budget. A peer that acknowledges our
                    // bytes but keeps its window shut is alive and not reading:
                    // `stalled`. One that acknowledges nothing is gone, and the kernel
                    // would say so with ETIMEDOUT a retransmission later: `timeout`.
                    let cause = if kernel.is_some_and(|k| k.retransmitting) {
                        Cause::Timeout
                    } else {
                        Cause::Stalled
                    };
                    self.close(now, cause, false);
                }
                Timer::Unacknowledged => {
                    // Everything acknowledged (or no reading): nothing to watch until
                    // the next write arms this again.
                    let (Some(timeout), Some(kernel)) = (self.config.ack_timeout, kernel) else {
                        continue;
                    };
                    // (Never armed for a session: opening one disarms it.)
                    if !kernel.outstanding {
                        continue;
                    }
                    // Our last write was `timeout` before this deadline (each write
                    // moves it); nothing came back since then, or since the peer's last
                    // acknowledgement if that is later.
                    let wrote = self.epoch.at(deadline).checked_sub(timeout);
                    let quiet_since =
                        wrote.map_or(now, |wrote| wrote.max(self.epoch.at(kernel.heard)));
                    let end = quiet_since + timeout;
                    if end <= now {
                        self.close(now, Cause::Timeout, false);
                    } else {
                        self.set_timer(Timer::Unacknowledged, end.max(now + ACK_RECHECK));
                    }
                }
                Timer::HalfCloseProbe => {
                    if self.probe == Probe::Sent {
                        self.probe = Probe::Concluded;
                        self.events.push_back(Event::PeerHalfClosed);
                    }
                }
                Timer::Heartbeat => {
                    let (&Session::Open { dead_after, .. }, Some(due)) =
                        (&self.session, self.heartbeat_due())
                    else {
                        continue;
                    };
                    if !self.interest().read {
                        // Not reading (back-pressure, BYE, the peer's FIN): its
                        // heartbeats cannot reach us, so silence proves nothing. The
                        // write-stall timer and the socket watch guard this time.
                        self.set_timer(Timer::Heartbeat, now.max(due) + dead_after);
                    } else if due <= now {
                        self.close(now, Cause::HeartbeatMissed, false);
                    } else {
                        self.set_timer(Timer::Heartbeat, due);
                    }
                }
            }
        }
    }

    /// The next thing to do or record.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 {
            // Events are rare (HELLO, jobs, close), and a queue keeps its capacity: an
            // idle connection would hold a few hundred bytes for nothing.
            self.events = VecDeque::new();
        }
        event
    }

    /// Reply bytes waiting to be written.
    pub fn poll_transmit(&self) -> &[u8] {
        &self.outbox[self.sent..]
    }

    /// The earliest deadline, for the driver's one sleep.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout().map(|at| self.epoch.at(at))
    }

    fn set_timer(&mut self, timer: Timer, deadline: Instant) {
        self.timers.set(timer, self.epoch.stamp(deadline));
    }

    /// What to wait for on the socket now.
    pub fn interest(&self) -> Interest {
        let alive = match self.phase {
            Phase::Closed => false,
            Phase::Closing { flush, .. } => flush,
            Phase::Open | Phase::ByeRequested => true,
        };
        let pending = self.sent < self.outbox.len();
        Interest {
            read: alive
                && !self.eof
                && self.accepts_input()
                && self.under_high_water()
                && self.unparsed.is_empty()
                && !self.session_pending(),
            write: alive && pending,
            hangup: alive,
        }
    }

    /// Whether the connection is over (a `Close` event was emitted).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Jobs running and waiting on this connection.
    pub fn job_counts(&self) -> (usize, usize) {
        self.jobs.as_ref().map_or((0, 0), |jobs| {
            (usize::from(jobs.running.is_some()), jobs.queued.len())
        })
    }

    fn running(&self) -> Option<&RunningJob> {
        self.jobs.as_ref()?.running.as_ref()
    }

    fn accepts_input(&self) -> bool {
        self.phase == Phase::Open
    }

    fn session_pending(&self) -> bool {
        matches!(self.session, Session::Requested(_))
    }

    /// Takes one `PING` from the session's bucket; `false` if it is empty.
    fn ping_allowed(&mut self, now: Instant) -> bool {
        let (Some(bucket), Some(rate)) = (self.pings.as_mut(), self.config.session_pings_per_sec)
        else {
            return true;
        };
        let rate = u64::from(rate);
        let elapsed_ms = now
            .duration_since(self.epoch.at(bucket.refilled))
            .as_millis() as u64;
        let refilled =
            u64::from(bucket.milli_tokens).saturating_add(elapsed_ms.saturating_mul(rate));
        bucket.milli_tokens = u32::try_from(refilled.min(2000 * rate)).unwrap_or(u32::MAX);
        bucket.refilled = self.epoch.stamp(now);
        match bucket.milli_tokens.checked_sub(1000) {
            Some(left) => {
                bucket.milli_tokens = left;
                true
            }
            None => false,
        }
    }

    fn under_high_water(&self) -> bool {
        self.outbox.len() - self.sent < self.config.outbox_high_water
    }

    fn has_work(&self) -> bool {
        self.job_counts() != (0, 0)
    }

    fn handle_frame(&mut self, now: Instant, line: &Line<'_>, status: &dyn Fn() -> StatusCounts) {
        if !self.accepts_input() {
            return;
        }
        let line = match line {
            Ok(line) => line,
            Err(TooLong) => {
                let message = format!("line longer than {MAX_LINE} bytes was discarded");
                self.send(now, &Reply::Err(ErrorCode::TooLong, message));
                return;
            }
        };
        let command = match parse_line(line, self.config.max_rounds) {
            Ok(Some(command)) => command,
            Ok(None) => return,
            Err(err) => {
                self.send(now, &Reply::Err(err.code, err.message));
                return;
            }
        };
        match command {
            Command::Ping(data) => {
                if self.ping_allowed(now) {
                    self.send(now, &Reply::Pong(data));
                } else {
                    let rate = self.config.session_pings_per_sec.unwrap_or_default();
                    let message = format!("more than {rate} PING a second; closing");
                    self.send(now, &Reply::Err(ErrorCode::RateLimited, message));
                    self.close(now, Cause::ProtocolError, true);
                }
            }
            Command::Job { .. } | Command::Hello { .. } if self.draining => {
                let message = "the server is shutting down; reconnect later";
                self.send(now, &Reply::Err(ErrorCode::ShuttingDown, message.into()));
            }
            Command::Job { rounds, seed } => {
                let limit = self.config.max_queued_jobs;
                if self.job_counts().1 >= limit {
                    let message = format!("{limit} jobs are already queued on this connection");
                    self.send(now, &Reply::Err(ErrorCode::TooManyJobs, message));
                    return;
                }
                let job = QueuedJob {
                    id: self
                        .jobs
                        .as_ref()
                        .map_or(Jobs::FIRST_ID, |jobs| jobs.next_id),
                    rounds,
                    seed,
                };
                if let Some(budget) = &self.config.queue_budget {
                    if !budget.try_charge(job.cost()) {
                        let message = format!(
                            "the server's job queue is full ({} bytes across all connections); try again later",
                            budget.limit()
                        );
                        self.send(now, &Reply::Err(ErrorCode::TooManyJobs, message));
                        return;
                    }
                }
                self.send(now, &Reply::Accepted(job.id));
                let jobs = self.jobs.get_or_insert_with(Box::default);
                jobs.next_id = job.id + 1;
                jobs.queued.push_back(job);
                self.start_next_job();
            }
            Command::Cancel(id) => self.cancel_by_client(now, id),
            Command::Status => {
                // `status` counts the other connections; this one's jobs are known here.
                let mut counts = status();
                let (running, queued) = self.job_counts();
                counts.jobs_running += running as u64;
                counts.jobs_queued += queued as u64;
                self.send(now, &Reply::Status(counts));
            }
            Command::Bye => {
                self.phase = Phase::ByeRequested;
                self.timers.clear(Timer::PartialLine);
                self.maybe_finish(now);
            }
            Command::Hello {
                device,
                token,
                heartbeat,
            } => {
                if self.session != Session::None {
                    let message =
                        "a session is already open on this connection (HELLO was sent twice)";
                    self.send(now, &Reply::Err(ErrorCode::BadRequest, message.into()));
                    return;
                }
                let heartbeat = Heartbeat::grant(heartbeat);
                self.session = Session::Requested(Box::new(heartbeat));
                self.events.push_back(Event::SessionRequested {
                    device,
                    token,
                    heartbeat,
                });
            }
        }
    }

    fn cancel_by_client(&mut self, now: Instant, id: JobId) {
        let jobs = self.jobs.as_deref_mut();
        if let Some(job) = jobs.and_then(|jobs| jobs.running.as_mut().filter(|job| job.id == id)) {
            if job.cancel_cause.is_none() {
                job.cancel_cause = Some(Cause::Local);
                self.events.push_back(Event::CancelJob {
                    id,
                    cause: Cause::Local,
                });
            }
            self.send(now, &Reply::Cancelled(id));
        } else if let Some(job) = self.jobs.as_deref_mut().and_then(|jobs| {
            let pos = jobs.queued.iter().position(|job| job.id == id)?;
            jobs.queued.remove(pos)
        }) {
            self.release(&job);
            self.events.push_back(Event::JobCancelled {
                id,
                cause: Cause::Local,
                was_running: false,
            });
            self.send(now, &Reply::Cancelled(id));
        } else {
            let message = format!("no job {id} is queued or running on this connection");
            self.send(now, &Reply::Err(ErrorCode::NotFound, message));
        }
    }

    fn release(&self, job: &QueuedJob) {
        if let Some(budget) = &self.config.queue_budget {
            budget.release(job.cost());
        }
    }

    fn start_next_job(&mut self) {
        if matches!(self.phase, Phase::Closing { .. } | Phase::Closed) {
            return;
        }
        let Some(jobs) = self
            .jobs
            .as_deref_mut()
            .filter(|jobs| jobs.running.is_none())
        else {
            return;
        };
        if let Some(job) = jobs.queued.pop_front() {
            jobs.running = Some(RunningJob {
                id: job.id,
                rounds: job.rounds,
                cancel_cause: None,
            });
            self.release(&job);
            self.events.push_back(Event::StartJob {
                id: job.id,
                rounds: job.rounds,
                seed: job.seed,
            });
        }
    }

    /// FIN with work pending: cancel, probe or carry on, as configured.
    fn apply_half_close_policy(&mut self, now: Instant) {
        if !self.fin_seen
            || !self.has_work()
            || matches!(self.phase, Phase::Closing { .. } | Phase::Closed)
        {
            return;
        }
        match self.config.half_close {
            HalfClosePolicy::Cancel => self.close(now, Cause::PeerClosed, false),
            HalfClosePolicy::Probe if self.probe == Probe::NotSent => {
                // A peer that closed its socket answers these bytes with RST, which
                // arrives through `handle_error`; one that half-closed just reads them.
                self.probe = Probe::Sent;
                self.send(now, &Reply::Probe);
                self.set_timer(Timer::HalfCloseProbe, now + self.config.probe_window);
            }
            HalfClosePolicy::Probe | HalfClosePolicy::Finish => {}
        }
    }

    /// Moves towards `Close` once nothing is left to do.
    fn maybe_finish(&mut self, now: Instant) {
        if self.phase == Phase::ByeRequested && !self.has_work() {
            self.send(now, &Reply::Bye);
            self.phase = Phase::Closing {
                cause: Cause::Local,
                flush: true,
            };
        }
        if self.phase == Phase::Open && self.eof && !self.has_work() {
            self.phase = Phase::Closing {
                cause: Cause::PeerClosed,
                flush: true,
            };
        }
        if self.phase == Phase::Open && self.draining && !self.has_work() {
            self.phase = Phase::Closing {
                cause: Cause::Shutdown,
                flush: true,
            };
        }
        if let Phase::Closing { cause, flush } = self.phase {
            let flushed = !flush || self.sent >= self.outbox.len();
            if self.running().is_none() && flushed {
                self.phase = Phase::Closed;
                self.timers.clear_all();
                self.events.push_back(Event::Close { cause, flush });
            }
        }
    }

    fn close(&mut self, now: Instant, cause: Cause, flush: bool) {
        match self.phase {
            Phase::Closed | Phase::Closing { flush: false, .. } => return,
            // Already closing gracefully; only a hard close (the peer is gone) overrides.
            Phase::Closing { flush: true, .. } if flush => return,
            Phase::Closing { .. } | Phase::Open | Phase::ByeRequested => {}
        }
        self.phase = Phase::Closing { cause, flush };
        if !flush {
            self.outbox = Vec::new();
            self.sent = 0;
        }
        self.timers.clear(Timer::PartialLine);
        self.timers.clear(Timer::HalfCloseProbe);
        self.timers.clear(Timer::Heartbeat);
        let jobs = self.jobs.as_deref_mut();
        if let Some(job) = jobs.and_then(|jobs| jobs.running.as_mut()) {
            if job.cancel_cause.is_none() {
                job.cancel_cause = Some(cause);
                self.events
                    .push_back(Event::CancelJob { id: job.id, cause });
            }
        }
        let queued = self
            .jobs
            .as_deref_mut()
            .map(|jobs| std::mem::take(&mut jobs.queued));
        for job in queued.unwrap_or_default() {
            self.release(&job);
            self.events.push_back(Event::JobCancelled {
                id: job.id,
                cause,
                was_running: false,
            });
        }
        self.maybe_finish(now);
    }

    fn send(&mut self, now: Instant, reply: &Reply) {
        // Closed without flush (or closed at all): the socket is closed at once, so a
        // late reply (a session answered after the peer was gone) is never written.
        if matches!(
            self.phase,
            Phase::Closed | Phase::Closing { flush: false, .. }
        ) {
            return;
        }
        if self.sent >= self.outbox.len() {
            if let Some(timeout) = self.config.write_timeout {
                self.set_timer(Timer::WriteStall, now + timeout);
            }
        }
        reply.encode(&mut self.outbox);
        if !self.under_high_water() {
            // We stop reading here: the peer's unfinished line waits on us, not on it.
            self.timers.clear(Timer::PartialLine);
        }
    }

    /// `same_partial`: the unfinished line before this input is still the one pending,
    /// so its deadline stands.
    ///
    /// Paused while input is held back (replies over the high-water mark): the peer
    /// cannot finish its line while we do not read, and a peer that stopped reading our
    /// replies is the write-stall timer's to judge (`stalled`, not `protocol_error`).
    /// When reading resumes, the line gets a fresh budget.
    fn rearm_partial_line(&mut self, now: Instant, same_partial: bool) {
        let Some(timeout) = self.config.partial_line_timeout else {
            return;
        };
        if !self.accepts_input() {
            return;
        }
        let held_back = !self.under_high_water() || !self.unparsed.is_empty();
        if !self.decoder.has_partial() || held_back {
            self.timers.clear(Timer::PartialLine);
        } else if !same_partial || self.timers.get(Timer::PartialLine).is_none() {
            self.set_timer(Timer::PartialLine, now + timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that always leaves some reply bytes unread must not make the outbox keep
    /// every byte ever written (the written prefix is only dropped on a full drain).
    #[test]
    fn outbox_memory_is_bounded_when_never_fully_drained() {
        let policy = LivenessPolicy::from_dead_after(Duration::from_secs(2));
        let config = ConnectionConfig::new(&policy);
        let now = Instant::now();
        let mut conn = Connection::new(config.clone(), now);
        let chunk = "PING 0123456789\n".repeat(1024);
        for _ in 0..1000 {
            if conn.interest().read {
                conn.handle_bytes(now, chunk.as_bytes(), &StatusCounts::default);
            }
            // The peer reads all but the last byte.
            let pending = conn.poll_transmit().len();
            conn.handle_sent(now, pending - 1);
            assert!(
                conn.outbox.len() <= 2 * (config.outbox_high_water + chunk.len()),
                "outbox holds {} bytes",
                conn.outbox.len()
            );
        }
    }
}
