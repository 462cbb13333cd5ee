//! A fake driver for [`Connection`] on virtual time: the tests' stand-in for the tokio
//! layer. It owns the connection, a clock that only moves when told (jumping from one
//! `poll_timeout()` to the next), a worker that runs `StartJob`s with
//! [`hangup_core::run_chain`] (at once, or only when told), and a peer that reads the
//! replies (all of them, none, or `k` bytes per step) and whose kernel acknowledges
//! what it was sent (at once, or not since some instant), as TCP_INFO would tell.
//!
//! After every step it checks what must always hold: one job at a time, no event after
//! `Close`, and a closed connection wants nothing, holds nothing and sets no timer.

// Each test file uses a different part of the harness.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hangup_core::{
    run_chain, Acknowledgements, Cause, Connection, ConnectionConfig, ErrorCode, Event,
    HalfClosePolicy, Interest, JobId, LivenessPolicy, Reply, SessionId, StatusCounts,
};
use sha2::{Digest, Sha256};

/// A line the connection wrote, parsed; panics with the line if it is not a reply.
pub fn reply(line: &str) -> Reply {
    Reply::parse(line).unwrap_or_else(|err| panic!("`{line}`: {err}"))
}

/// The code of an `ERR` line; `None` for any other line.
pub fn err_code(line: &str) -> Option<ErrorCode> {
    match Reply::parse(line) {
        Ok(Reply::Err(code, _)) => Some(code),
        _ => None,
    }
}

/// The dead-after budget the lab and tests use (SPEC §2).
pub const D: Duration = Duration::from_secs(2);

/// The connection settings derived from [`D`], with `half_close`.
pub fn config(half_close: HalfClosePolicy) -> ConnectionConfig {
    let mut config = ConnectionConfig::new(&LivenessPolicy::from_dead_after(D));
    config.half_close = half_close;
    // The timer tests count from a write timeout of exactly D; what `auto` derives
    // (a little less, below the user timeout) is tested in policy.rs.
    config.write_timeout = Some(D);
    config
}

/// H(rounds) of SPEC §3 as lowercase hex, computed here with `sha2` rather than by the
/// crate under test.
pub fn expected_digest(seed: &str, rounds: u64) -> String {
    let mut h = seed.as_bytes().to_vec();
    for _ in 0..rounds {
        h = Sha256::digest(&h).to_vec();
    }
    hex::encode(h)
}

/// How the peer takes our replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Accepts everything at once.
    Reads,
    /// Accepts nothing (zero window).
    Stalled,
    /// Accepts at most this many bytes per step.
    Trickle(usize),
}

/// What the peer's kernel acknowledges of the bytes handed to ours: the TCP_INFO the
/// driver reads when the connection asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Everything, at once: nothing is ever outstanding.
    Prompt,
    /// Nothing since this instant (the peer died then); bytes are outstanding and the
    /// kernel retransmits them.
    StoppedAt(Duration),
    /// Bytes are outstanding without retransmissions (in flight, or behind a shut
    /// window), and the last acknowledgement came at this instant.
    LastAt(Duration),
}

/// What the worker does with a `StartJob`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    /// Runs the chain and reports at once (same virtual instant), once the step's
    /// events are seen: the digest, or `None` if a `CancelJob` came for it.
    RunAtOnce,
    /// Leaves the job running until the test calls [`Driver::complete_job`] or
    /// [`Driver::stop_job`].
    Manual,
}

/// A job the worker is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub id: JobId,
    pub rounds: u64,
    pub seed: String,
    /// The cause of a `CancelJob` for it, if one came.
    pub cancelled: Option<Cause>,
}

/// How the driver answers `SessionRequested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// Opens every session, with ids counting up from 1.
    Open,
    /// Refuses every session with this code.
    Refuse(ErrorCode),
    /// Leaves the request pending until the test calls [`Driver::open_session`].
    Manual,
}

/// The fake driver.
#[derive(Debug)]
pub struct Driver {
    pub conn: Connection,
    base: Instant,
    elapsed: Duration,
    pub peer: Peer,
    pub acks: Acks,
    /// How many times the connection asked for TCP_INFO.
    pub acks_read: usize,
    pub jobs: Jobs,
    /// What `STATUS` is told.
    pub status: StatusCounts,
    received: Vec<u8>,
    events: VecDeque<Event>,
    running: Option<RunningJob>,
    closed: Option<Event>,
    /// Largest `poll_transmit().len()` seen after any step.
    pub max_pending: usize,
    pub sessions: Sessions,
    /// A `SessionRequested` not answered yet.
    session_requested: bool,
    next_session: u64,
}

impl Driver {
    pub fn new(config: ConnectionConfig, jobs: Jobs) -> Self {
        let base = Instant::now();
        Self {
            conn: Connection::new(config, base),
            base,
            elapsed: Duration::ZERO,
            peer: Peer::Reads,
            acks: Acks::Prompt,
            acks_read: 0,
            jobs,
            status: StatusCounts::default(),
            received: Vec::new(),
            events: VecDeque::new(),
            running: None,
            closed: None,
            max_pending: 0,
            sessions: Sessions::Open,
            session_requested: false,
            next_session: 1,
        }
    }

    /// Default settings (D = 2 s) with `half_close`.
    pub fn with(half_close: HalfClosePolicy, jobs: Jobs) -> Self {
        Self::new(config(half_close), jobs)
    }

    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The connection's next deadline, relative to the start.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.conn.poll_timeout().map(|t| t - self.base)
    }

    // ---- inputs -------------------------------------------------------------------

    /// Bytes read from the peer.
    pub fn bytes(&mut self, bytes: impl AsRef<[u8]>) {
        let status = self.status;
        let now = self.now();
        self.conn.handle_bytes(now, bytes.as_ref(), &move || status);
        self.settle();
    }

    /// Feeds `source` in chunks of `chunk` bytes while the connection wants to read,
    /// as a driver honouring `interest().read` does. Returns the bytes consumed.
    pub fn feed_while_readable(&mut self, source: &[u8], chunk: usize) -> usize {
        let mut fed = 0;
        while fed < source.len() && self.conn.interest().read {
            let end = (fed + chunk).min(source.len());
            self.bytes(&source[fed..end]);
            fed = end;
        }
        fed
    }

    /// FIN seen through readiness (input may still be unread).
    pub fn read_closed(&mut self) {
        let now = self.now();
        self.conn.handle_read_closed(now);
        self.settle();
    }

    /// All input read: end of stream.
    pub fn eof(&mut self) {
        let status = self.status;
        let now = self.now();
        self.conn.handle_eof(now, &move || status);
        self.settle();
    }

    /// A socket error (RST, ETIMEDOUT, …).
    pub fn error(&mut self, cause: Cause) {
        let now = self.now();
        self.conn.handle_error(now, cause);
        self.settle();
    }

    /// The driver's own close (shutdown and the like).
    pub fn local_close(&mut self, cause: Cause, flush: bool) {
        let now = self.now();
        self.conn.handle_local_close(now, cause, flush);
        self.settle();
    }

    /// Another connection took this one's session over.
    pub fn kick(&mut self) {
        let now = self.now();
        self.conn.handle_kicked(now);
        self.settle();
    }

    /// The server starts shutting down.
    pub fn goaway(&mut self) {
        let now = self.now();
        self.conn.handle_goaway(now);
        self.settle();
    }

    /// Answers a pending `SessionRequested` by opening the session.
    pub fn open_session(&mut self) -> SessionId {
        assert!(self.session_requested, "no session was requested");
        self.session_requested = false;
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let now = self.now();
        self.conn.handle_session_opened(now, id);
        self.settle();
        id
    }

    /// Changes how the peer reads, then lets it read.
    pub fn set_peer(&mut self, peer: Peer) {
        self.peer = peer;
        self.settle();
    }

    // ---- the worker ---------------------------------------------------------------

    pub fn running(&self) -> Option<&RunningJob> {
        self.running.as_ref()
    }

    /// The running job finishes its chain and reports the digest.
    pub fn complete_job(&mut self) -> JobId {
        let job = self.running.take().expect("no job is running");
        let digest = run_chain(job.seed.as_bytes(), job.rounds, || false).expect("not cancelled");
        let now = self.now();
        self.conn.handle_job_finished(now, job.id, Some(digest));
        self.settle();
        job.id
    }

    /// The running job stops without a result (it saw its cancellation).
    pub fn stop_job(&mut self) -> JobId {
        let job = self.running.take().expect("no job is running");
        let now = self.now();
        self.conn.handle_job_finished(now, job.id, None);
        self.settle();
        job.id
    }

    // ---- time ---------------------------------------------------------------------

    /// Lets `duration` of virtual time pass, firing every deadline on the way at its
    /// own instant.
    pub fn advance(&mut self, duration: Duration) {
        let target = self.elapsed + duration;
        while let Some(deadline) = self.next_timeout() {
            if deadline > target {
                break;
            }
            self.elapsed = self.elapsed.max(deadline);
            self.timeout();
        }
        self.elapsed = target;
    }

    /// Jumps to the next deadline and fires it; returns the new virtual time.
    pub fn jump(&mut self) -> Duration {
        let deadline = self.next_timeout().expect("no timer is armed");
        self.elapsed = self.elapsed.max(deadline);
        self.timeout();
        self.elapsed
    }

    /// A stalled driver: `duration` passes and no deadline is handled (until the next
    /// call that handles them).
    pub fn stall(&mut self, duration: Duration) {
        self.elapsed += duration;
    }

    /// A late driver: sleeps `duration` without waking at the deadlines on the way,
    /// then handles every expired timer in one call.
    pub fn oversleep(&mut self, duration: Duration) {
        self.elapsed += duration;
        self.timeout();
    }

    /// Handles the timers due now as the driver does: TCP_INFO first when asked for.
    fn timeout(&mut self) {
        let now = self.now();
        if self.conn.wants_acknowledgements(now) {
            self.acks_read += 1;
            let since = |at: Duration| self.elapsed.saturating_sub(at);
            let acks = match self.acks {
                Acks::Prompt => Acknowledgements::default(),
                Acks::StoppedAt(at) => Acknowledgements {
                    unacked: 2,
                    retransmits: 1,
                    since_last_ack: since(at),
                },
                Acks::LastAt(at) => Acknowledgements {
                    unacked: 2,
                    retransmits: 0,
                    since_last_ack: since(at),
                },
            };
            self.conn.handle_timeout_acknowledged(now, acks);
        } else {
            self.conn.handle_timeout(now);
        }
        self.settle();
    }

    // ---- outputs ------------------------------------------------------------------

    /// Events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Complete lines the peer received since the last call (without `\n`).
    pub fn take_lines(&mut self) -> Vec<String> {
        let Some(end) = self.received.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.received.drain(..=end).collect();
        let text = String::from_utf8(complete).expect("replies are UTF-8");
        text.lines().map(str::to_owned).collect()
    }

    /// Everything the peer received and nobody took yet.
    pub fn received_bytes(&self) -> &[u8] {
        &self.received
    }

    /// The `Close` event, once it came.
    pub fn closed(&self) -> Option<&Event> {
        self.closed.as_ref()
    }

    // ---- the loop -----------------------------------------------------------------

    /// Drains events (running jobs as configured) and lets the peer read, until
    /// nothing more happens at this instant.
    pub fn settle(&mut self) {
        let mut writes_left = match self.peer {
            Peer::Reads => usize::MAX,
            Peer::Stalled => 0,
            Peer::Trickle(_) => 1,
        };
        loop {
            self.drain_events();
            self.check_invariants();
            let pending = self.conn.poll_transmit().len();
            if pending == 0 || writes_left == 0 {
                break;
            }
            writes_left -= 1;
            let n = match self.peer {
                Peer::Reads => pending,
                Peer::Trickle(k) => k.min(pending),
                Peer::Stalled => 0,
            };
            self.received
                .extend_from_slice(&self.conn.poll_transmit()[..n]);
            let now = self.now();
            self.conn.handle_sent(now, n);
            // As the driver does: input held back at the high-water mark goes on once
            // the replies drained below it.
            if self.conn.can_resume_input() {
                let status = self.status;
                self.conn.handle_bytes(now, &[], &move || status);
            }
        }
        self.max_pending = self.max_pending.max(self.conn.poll_transmit().len());
    }

    fn drain_events(&mut self) {
        loop {
            self.record_events();
            if self.session_requested && self.sessions != Sessions::Manual {
                self.session_requested = false;
                let now = self.now();
                match self.sessions {
                    Sessions::Refuse(code) => {
                        self.conn
                            .handle_session_refused(now, code, "refused by the test")
                    }
                    _ => {
                        let id = SessionId(self.next_session);
                        self.next_session += 1;
                        self.conn.handle_session_opened(now, id);
                    }
                }
                continue;
            }
            // The worker picks a job up only after the driver has seen every event
            // of this step, so a CANCEL read together with its JOB reaches it first.
            if self.jobs == Jobs::Manual || self.running.is_none() {
                break;
            }
            let job = self.running.take().expect("a job is running");
            let digest = match job.cancelled {
                None => run_chain(job.seed.as_bytes(), job.rounds, || false),
                Some(_) => None,
            };
            let now = self.now();
            self.conn.handle_job_finished(now, job.id, digest);
        }
    }

    fn record_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            assert!(
                self.closed.is_none(),
                "event {event:?} after {:?}",
                self.closed
            );
            match &event {
                Event::StartJob { id, rounds, seed } => {
                    assert!(
                        self.running.is_none(),
                        "job {id} started while {:?} runs",
                        self.running
                    );
                    self.running = Some(RunningJob {
                        id: *id,
                        rounds: *rounds,
                        seed: seed.clone(),
                        cancelled: None,
                    });
                }
                Event::CancelJob { id, cause } => {
                    let job = self
                        .running
                        .as_mut()
                        .expect("CancelJob with no job running");
                    assert_eq!(job.id, *id, "CancelJob for a job that is not running");
                    assert_eq!(job.cancelled, None, "CancelJob twice for job {id}");
                    job.cancelled = Some(*cause);
                }
                Event::JobDone { id, .. } | Event::JobCancelled { id, .. } => {
                    assert!(
                        self.running.as_ref().is_none_or(|job| job.id != *id),
                        "job {id} reported over while the worker still runs it"
                    );
                }
                Event::Close { .. } => self.closed = Some(event.clone()),
                Event::PeerHalfClosed => {}
                Event::SessionRequested { .. } => {
                    assert!(
                        !self.session_requested,
                        "a second SessionRequested before the answer"
                    );
                    self.session_requested = true;
                }
            }
            self.events.push_back(event);
        }
    }

    fn check_invariants(&self) {
        let (running, _queued) = self.conn.job_counts();
        assert_eq!(
            running,
            usize::from(self.running.is_some()),
            "the connection and the worker disagree on whether a job runs"
        );
        let interest = self.conn.interest();
        if !self.conn.poll_transmit().is_empty() {
            assert!(interest.write, "bytes pending but no write interest");
        }
        match &self.closed {
            Some(close) => {
                assert!(self.conn.is_closed(), "{close:?} but not is_closed()");
                assert_eq!(interest, Interest::default(), "interest after {close:?}");
                assert_eq!(
                    self.conn.poll_transmit(),
                    b"",
                    "bytes pending after {close:?}"
                );
                assert_eq!(
                    self.conn.poll_timeout(),
                    None,
                    "timer armed after {close:?}"
                );
                assert_eq!(self.conn.job_counts(), (0, 0), "jobs left after {close:?}");
            }
            None => assert!(!self.conn.is_closed(), "is_closed() without a Close event"),
        }
    }

    /// After `Close`: pokes every input and checks that nothing comes out.
    pub fn assert_dead(&mut self) {
        assert!(self.closed.is_some(), "not closed");
        self.take_events();
        self.take_lines();
        self.bytes("PING\nJOB 1\nBYE\n");
        self.read_closed();
        self.eof();
        self.error(Cause::PeerReset);
        self.local_close(Cause::Shutdown, true);
        self.kick();
        self.goaway();
        let now = self.now();
        self.conn.handle_session_opened(now, SessionId(99));
        self.conn
            .handle_session_refused(now, ErrorCode::Unauthorized, "late");
        self.conn.handle_job_finished(now, 1, None);
        self.conn.handle_sent(now, 0);
        self.settle();
        self.oversleep(Duration::from_secs(3600));
        assert_eq!(self.take_events(), vec![]);
        assert_eq!(self.take_lines(), Vec::<String>::new());
        assert_eq!(self.received_bytes(), b"");
        assert_eq!(self.conn.interest(), Interest::default());
    }
}

/// A tiny xorshift64* PRNG: deterministic faults from a seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next_u64() % (high - low + 1) as u64) as usize
    }

    /// `bytes` cut at random points into chunks of 1..=`max` bytes.
    pub fn chunks<'a>(&mut self, bytes: &'a [u8], max: usize) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.range(1, max.min(rest.len()));
            let (chunk, tail) = rest.split_at(n);
            out.push(chunk);
            rest = tail;
        }
        out
    }
}
