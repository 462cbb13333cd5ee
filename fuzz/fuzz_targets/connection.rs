//! The sans-IO `Connection` driven by an arbitrary sequence of driver inputs on virtual
//! time, with the driver's side of the contract kept (bytes only while it wants to
//! read, `handle_sent` of at most what is pending, one job on the worker at a time).
//!
//! Checks after every step (events and bytes drained as a driver would): no panic;
//! replies pending stay within the high-water mark plus what one input line and the
//! jobs in flight can add; queued jobs never exceed `max_queued_jobs`; no expired timer
//! is left after `handle_timeout`; exactly one `Close`, nothing after it, and a closed
//! connection stays closed, wants nothing, holds nothing and sets no timer.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use hangup_core::{
    Acknowledgements, Cause, Connection, ConnectionConfig, ErrorCode, Event, HalfClosePolicy,
    Interest, JobId, LivenessPolicy, SessionId, StatusCounts, MAX_LINE,
};
use libfuzzer_sys::fuzz_target;

/// One clock jump is at most this long (virtual time: a jump costs nothing).
const MAX_JUMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Arbitrary)]
struct Settings {
    max_rounds: u64,
    max_queued_jobs: u8,
    half_close: Policy,
    write_timeout_ms: Option<u16>,
    partial_line_timeout_ms: Option<u16>,
    probe_window_ms: u16,
    outbox_high_water: u16,
    session_pings_per_sec: Option<u8>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Policy {
    Probe,
    Cancel,
    Finish,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum PeerGone {
    PeerReset,
    Timeout,
    Unreachable,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Bytes read from the peer (only while the connection wants to read).
    Bytes(Vec<u8>),
    /// Lines the protocol knows, so that short inputs get past the parser.
    Lines(Vec<Line>),
    /// The peer accepted this many of the pending bytes (capped at what is pending).
    Sent(u16),
    /// The peer accepts everything pending.
    SentAll,
    /// The worker finishes the running job, with a digest or stopped.
    JobFinished {
        completed: bool,
    },
    /// A report for a job id the worker does not run.
    StrayJobFinished(JobId),
    ReadClosed,
    Eof,
    Error(PeerGone),
    /// What TCP_INFO said, for the timers about to fire.
    Acknowledgements {
        unacked: u32,
        retransmits: u8,
        since_last_ack_ms: u16,
    },
    SessionOpened(u64),
    SessionRefused,
    Kicked,
    Goaway,
    LocalClose {
        flush: bool,
    },
    /// The clock moves on by this many milliseconds (capped); due timers fire.
    Advance(u32),
    /// The clock jumps to the next deadline, as the driver's one `Sleep` does.
    ToNextTimeout,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Line {
    Ping,
    Job(u8),
    Cancel(u8),
    Status,
    Bye,
    Hello { heartbeat: Option<u8> },
    Partial,
    Garbage,
    Long,
}

impl Line {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Line::Ping => out.extend_from_slice(b"PING fuzz\n"),
            Line::Job(rounds) => out.extend_from_slice(format!("JOB {rounds}\n").as_bytes()),
            Line::Cancel(id) => out.extend_from_slice(format!("CANCEL {id}\n").as_bytes()),
            Line::Status => out.extend_from_slice(b"STATUS\n"),
            Line::Bye => out.extend_from_slice(b"BYE\n"),
            Line::Hello { heartbeat: None } => out.extend_from_slice(b"HELLO dev-1\n"),
            Line::Hello {
                heartbeat: Some(secs),
            } => out.extend_from_slice(format!("HELLO dev-1 heartbeat={secs}\n").as_bytes()),
            Line::Partial => out.extend_from_slice(b"PIN"),
            Line::Garbage => out.extend_from_slice(b"FROB \xff\n"),
            Line::Long => out.extend(std::iter::repeat_n(b'x', MAX_LINE + 2)),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    settings: Settings,
    ops: Vec<Op>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

struct Driver {
    conn: Connection,
    config: ConnectionConfig,
    now: Instant,
    /// The job the worker runs, as `StartJob` told it.
    running: Option<JobId>,
    session_requested: bool,
    closed: bool,
    /// What TCP_INFO says, for the next timers due that ask for it.
    acks: Option<Acknowledgements>,
}

impl Driver {
    fn drain_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            assert!(!self.closed, "{event:?} after Close");
            match event {
                Event::StartJob { id, .. } => {
                    assert_eq!(self.running, None, "StartJob {id} while a job runs");
                    self.running = Some(id);
                }
                Event::CancelJob { id, .. } => {
                    assert_eq!(self.running, Some(id), "CancelJob {id} for no running job");
                }
                Event::JobDone { id, .. } | Event::JobCancelled { id, .. } => {
                    assert_ne!(self.running, Some(id), "job {id} over while it still runs");
                }
                Event::SessionRequested { .. } => {
                    assert!(!self.session_requested, "a second SessionRequested");
                    self.session_requested = true;
                }
                Event::PeerHalfClosed => {}
                Event::Close { .. } => self.closed = true,
            }
        }
    }

    fn check(&self) {
        let (running, queued) = self.conn.job_counts();
        assert_eq!(
            running,
            usize::from(self.running.is_some()),
            "job on the worker"
        );
        assert!(
            queued <= self.config.max_queued_jobs,
            "{queued} jobs queued, max {}",
            self.config.max_queued_jobs
        );
        // One input line's reply (at most a PONG or ERR of about a line), a DONE for
        // every job in flight, and the few unasked lines (WELCOME, KICKED, GOAWAY, `#`,
        // an ERR for a refused session) may land above the mark.
        let jobs = self.config.max_queued_jobs + 1;
        let bound = self.config.outbox_high_water + MAX_LINE + 128 + jobs * 100 + 512;
        let pending = self.conn.poll_transmit().len();
        assert!(
            pending <= bound,
            "{pending} reply bytes pending, bound {bound}"
        );
        let interest = self.conn.interest();
        if pending > 0 {
            assert!(interest.write, "bytes pending but no write interest");
        }
        assert_eq!(
            self.closed,
            self.conn.is_closed(),
            "is_closed() vs Close event"
        );
        if self.closed {
            assert_eq!(interest, Interest::default(), "interest after Close");
            assert_eq!(pending, 0, "bytes pending after Close");
            assert_eq!(self.conn.poll_timeout(), None, "timer armed after Close");
            assert_eq!(self.conn.job_counts(), (0, 0), "jobs left after Close");
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.conn.interest().read {
            self.conn
                .handle_bytes(self.now, bytes, &StatusCounts::default);
        }
    }

    fn fire_due_timers(&mut self) {
        if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
            match self.acks.take() {
                Some(acks) if self.conn.wants_acknowledgements(self.now) => {
                    self.conn.handle_timeout_acknowledged(self.now, acks)
                }
                _ => self.conn.handle_timeout(self.now),
            }
            assert!(
                self.conn.poll_timeout().is_none_or(|t| t > self.now),
                "a timer is still due after handle_timeout"
            );
        }
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Bytes(bytes) => self.feed(bytes),
            Op::Lines(lines) => {
                let mut bytes = Vec::new();
                for line in lines {
                    line.write(&mut bytes);
                }
                self.feed(&bytes);
            }
            Op::Sent(n) => {
                let n = usize::from(*n).min(self.conn.poll_transmit().len());
                self.conn.handle_sent(now, n);
            }
            Op::SentAll => {
                let n = self.conn.poll_transmit().len();
                self.conn.handle_sent(now, n);
            }
            Op::JobFinished { completed } => {
                if let Some(id) = self.running.take() {
                    let digest = completed.then_some([0xab; 32]);
                    self.conn.handle_job_finished(now, id, digest);
                }
            }
            Op::StrayJobFinished(id) => {
                if self.running != Some(*id) {
                    self.conn.handle_job_finished(now, *id, Some([0; 32]));
                }
            }
            Op::ReadClosed => self.conn.handle_read_closed(now),
            Op::Eof => self.conn.handle_eof(now, &StatusCounts::default),
            Op::Error(gone) => {
                let cause = match gone {
                    PeerGone::PeerReset => Cause::PeerReset,
                    PeerGone::Timeout => Cause::Timeout,
                    PeerGone::Unreachable => Cause::Unreachable,
                };
                self.conn.handle_error(now, cause);
            }
            Op::Acknowledgements {
                unacked,
                retransmits,
                since_last_ack_ms,
            } => {
                self.acks = Some(Acknowledgements {
                    unacked: *unacked,
                    retransmits: *retransmits,
                    since_last_ack: Duration::from_millis(u64::from(*since_last_ack_ms)),
                })
            }
            Op::SessionOpened(id) => {
                if std::mem::take(&mut self.session_requested) {
                    self.conn.handle_session_opened(now, SessionId(*id));
                }
            }
            Op::SessionRefused => {
                if std::mem::take(&mut self.session_requested) {
                    self.conn
                        .handle_session_refused(now, ErrorCode::Unauthorized, "bad token");
                }
            }
            Op::Kicked => self.conn.handle_kicked(now),
            Op::Goaway => self.conn.handle_goaway(now),
            Op::LocalClose { flush } => self.conn.handle_local_close(now, Cause::Shutdown, *flush),
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms)).min(MAX_JUMP);
                self.fire_due_timers();
            }
            Op::ToNextTimeout => {
                if let Some(deadline) = self.conn.poll_timeout() {
                    assert!(
                        deadline <= self.now + MAX_JUMP * 1000,
                        "a deadline years away"
                    );
                    self.now = self.now.max(deadline);
                    self.fire_due_timers();
                }
            }
        }
        // Input held back at the high-water mark goes on once replies drain.
        while self.conn.can_resume_input() {
            self.conn
                .handle_bytes(self.now, b"", &StatusCounts::default);
            self.drain_events();
        }
        self.drain_events();
        self.check();
    }
}

fuzz_target!(|input: Input| {
    let s = &input.settings;
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(2));
    let mut config = ConnectionConfig::new(&policy);
    config.max_rounds = s.max_rounds.max(1);
    config.max_queued_jobs = usize::from(s.max_queued_jobs % 8);
    config.half_close = match s.half_close {
        Policy::Probe => HalfClosePolicy::Probe,
        Policy::Cancel => HalfClosePolicy::Cancel,
        Policy::Finish => HalfClosePolicy::Finish,
    };
    let ms = |ms: u16| Duration::from_millis(u64::from(ms));
    config.write_timeout = s.write_timeout_ms.map(ms);
    config.partial_line_timeout = s.partial_line_timeout_ms.map(ms);
    config.probe_window = ms(s.probe_window_ms);
    config.outbox_high_water = usize::from(s.outbox_high_water.max(1));
    config.session_pings_per_sec = s.session_pings_per_sec.map(u32::from);

    let now = base();
    let mut driver = Driver {
        conn: Connection::new(config.clone(), now),
        config,
        now,
        running: None,
        session_requested: false,
        acks: None,
        closed: false,
    };
    for op in input.ops.iter().take(1000) {
        let was_closed = driver.closed;
        driver.step(op);
        assert!(
            !was_closed || driver.conn.is_closed(),
            "reopened after Close"
        );
    }
});
