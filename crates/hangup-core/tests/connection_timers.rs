//! Timers on virtual time: the partial-line timeout, the write-stall timeout and a
//! driver that wakes up late.

mod common;

use std::time::Duration;

use common::{config, err_code, Acks, Driver, Jobs, Peer, D};
use hangup_core::{Cause, ErrorCode, Event, HalfClosePolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A driver whose deadlines are the partial-line and write-stall timers alone: the
/// acknowledgement watch, which every write moves, has its own section below.
fn driver() -> Driver {
    let mut config = config(HalfClosePolicy::Probe);
    config.ack_timeout = None;
    Driver::new(config, Jobs::Manual)
}

// ---- partial line -----------------------------------------------------------------------

#[test]
fn a_partial_line_older_than_d_gets_err_timeout_and_closes() {
    let mut d = driver();
    d.bytes("PIN");
    assert_eq!(d.next_timeout(), Some(D));
    d.advance(D - ms(1));
    assert_eq!(d.take_events(), vec![]);
    assert_eq!(d.jump(), D);
    let lines = d.take_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::Timeout), "{lines:?}");
    assert_eq!(
        d.take_events(),
        vec![Event::Close {
            cause: Cause::ProtocolError,
            flush: true
        }]
    );
    d.assert_dead();
}

/// A driver that fell behind is told to read before the line's budget ends it: the
/// rest of the line, waiting in the kernel, then finishes it in time.
#[test]
fn a_driver_that_fell_behind_reads_before_the_partial_line_timer_ends_it() {
    let mut d = driver();
    d.bytes("PIN");
    assert!(!d.conn.line_overdue(d.now()));
    d.stall(D + ms(300));
    assert!(d.conn.line_overdue(d.now()));
    d.bytes("G late\n");
    assert!(!d.conn.line_overdue(d.now()), "the line is finished");
    d.oversleep(Duration::ZERO);
    assert_eq!(d.take_lines(), ["PONG late"]);
    assert_eq!(d.closed(), None);
    // The rest of the line did not come: overdue, and the timer ends it.
    d.bytes("PIN");
    d.stall(D);
    assert!(d.conn.line_overdue(d.now()));
    d.oversleep(Duration::ZERO);
    assert_eq!(err_code(&d.take_lines()[0]), Some(ErrorCode::Timeout));
    assert!(!d.conn.line_overdue(d.now()), "closed: nothing to read for");
}

#[test]
fn a_slow_drip_of_the_same_line_does_not_extend_the_deadline() {
    let mut d = driver();
    d.bytes("P");
    for byte in ["I", "N", "G", " ", "x"] {
        d.advance(ms(300));
        d.bytes(byte);
        assert_eq!(
            d.next_timeout(),
            Some(D),
            "deadline stays at the first byte"
        );
    }
    d.advance(D - d.elapsed());
    assert_eq!(err_code(&d.take_lines()[0]), Some(ErrorCode::Timeout));
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::ProtocolError,
            flush: true
        })
    );
}

#[test]
fn the_deadline_restarts_with_each_new_partial_line() {
    let mut d = driver();
    d.bytes("PI");
    d.advance(ms(1500));
    // Finishes the old line and starts a new one in the same read.
    d.bytes("NG a\nPI");
    assert_eq!(d.take_lines(), ["PONG a"]);
    assert_eq!(d.next_timeout(), Some(ms(1500) + D));
    d.advance(ms(1000));
    // Finishes it exactly: no partial line, no timer.
    d.bytes("NG b\n");
    assert_eq!(d.take_lines(), ["PONG b"]);
    assert_eq!(d.next_timeout(), None);
    d.advance(Duration::from_secs(3600));
    assert_eq!(d.closed(), None, "a quiet connection is not timed out here");
    d.bytes("P");
    assert_eq!(d.next_timeout(), Some(d.elapsed() + D));
}

#[test]
fn an_over_long_line_dripping_in_is_timed_out_too() {
    let mut d = driver();
    let chunk = vec![b'x'; 1000];
    for _ in 0..100 {
        d.bytes(&chunk);
        d.advance(ms(10));
    }
    // 100 000 bytes in 1 s: discarded as too long, but not yet old.
    assert_eq!(d.closed(), None);
    assert_eq!(d.next_timeout(), Some(D));
    d.advance(D);
    assert_eq!(err_code(&d.take_lines()[0]), Some(ErrorCode::Timeout));
    assert!(d.closed().is_some());
}

#[test]
fn a_partial_line_timeout_during_a_job_cancels_it() {
    let mut d = driver();
    d.bytes("JOB 99\nSTAT");
    d.take_events();
    d.advance(D);
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::ProtocolError
        }]
    );
    let lines = d.take_lines();
    assert_eq!(lines[0], "ACCEPTED 1");
    assert_eq!(err_code(&lines[1]), Some(ErrorCode::Timeout));
    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            Event::JobCancelled {
                id: 1,
                cause: Cause::ProtocolError,
                was_running: true
            },
            Event::Close {
                cause: Cause::ProtocolError,
                flush: true
            }
        ]
    );
}

/// A connection whose reply high-water mark is 60 bytes, so that one `DONE` (72)
/// crosses it, with a peer that read `ACCEPTED 1` and a half line pending since 0 s,
/// and then stopped reading.
fn half_line_then_stalled() -> Driver {
    let mut config = config(HalfClosePolicy::Probe);
    config.outbox_high_water = 60;
    config.ack_timeout = None;
    let mut d = Driver::new(config, Jobs::Manual);
    d.bytes("JOB 1\nPIN");
    assert_eq!(d.take_lines(), ["ACCEPTED 1"]);
    d.set_peer(Peer::Stalled);
    d
}

/// Found by the fault lab (LAB.md, finding 3): the partial-line timer ran while we
/// ourselves had stopped reading (replies over the high-water mark), and closed a peer
/// as `protocol_error` for a line it could not finish. A peer that stopped reading our
/// replies is the write-stall timer's case.
#[test]
fn a_partial_line_waits_while_we_hold_input_back() {
    let mut d = half_line_then_stalled();
    assert_eq!(d.next_timeout(), Some(D), "the half line's deadline");
    d.advance(ms(500));
    // The DONE takes the replies over the mark: reading stops, the line's clock too.
    // Only the write-stall timer (D after the DONE) is left.
    d.complete_job();
    assert!(!d.conn.interest().read);
    assert_eq!(d.next_timeout(), Some(ms(500) + D));
    d.advance(D);
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::Stalled,
            flush: false
        })
    );
    assert!(!d
        .take_lines()
        .iter()
        .any(|l| err_code(l) == Some(ErrorCode::Timeout)));
}

#[test]
fn a_partial_line_gets_a_fresh_budget_when_reading_resumes() {
    let mut d = half_line_then_stalled();
    d.advance(ms(500));
    d.complete_job();
    d.advance(ms(1000));
    // The peer reads everything at 1.5 s: the half line now has D from here.
    d.set_peer(Peer::Reads);
    assert!(d.conn.interest().read);
    assert_eq!(d.next_timeout(), Some(ms(1500) + D));
    d.take_lines();
    assert_eq!(d.jump(), ms(1500) + D);
    let lines = d.take_lines();
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::Timeout), "{lines:?}");
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::ProtocolError,
            flush: true
        })
    );
}

#[test]
fn no_partial_line_timer_when_it_is_off() {
    let mut config = config(HalfClosePolicy::Probe);
    config.partial_line_timeout = None;
    let mut d = Driver::new(config, Jobs::Manual);
    d.bytes("PIN");
    assert_eq!(d.next_timeout(), None);
}

// ---- write stall ------------------------------------------------------------------------

#[test]
fn a_peer_that_accepts_nothing_is_stalled_after_the_write_timeout() {
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("PING\n");
    assert_eq!(d.next_timeout(), Some(D));
    // More replies without progress do not push the deadline out.
    d.advance(ms(1000));
    d.bytes("PING\nPING\n");
    assert_eq!(d.next_timeout(), Some(D));
    assert_eq!(d.jump(), D);
    assert_eq!(
        d.take_events(),
        vec![Event::Close {
            cause: Cause::Stalled,
            flush: false
        }]
    );
    d.assert_dead();
}

/// Found by the fault lab (client-crash-sending): a peer that crashed while we sent
/// acknowledges nothing, and the stall timer would call it `stalled` ("alive but not
/// reading"). With the kernel retransmitting, the cause is `timeout`.
#[test]
fn a_peer_that_acknowledges_nothing_is_a_timeout_not_a_stall() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.peer = Peer::Stalled;
    d.bytes("JOB 1000\nPING\n");
    d.advance(ms(1000));
    d.acks = Acks::StoppedAt(ms(1000));
    d.advance(D);
    assert_eq!(
        d.running().and_then(|job| job.cancelled),
        Some(Cause::Timeout)
    );
    d.stop_job();
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::Timeout,
            flush: false
        })
    );
}

/// The same stall with the peer's kernel acknowledging (a shut window, no
/// retransmissions) stays `stalled`.
#[test]
fn a_peer_that_acknowledges_but_does_not_read_is_stalled() {
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("PING\n");
    d.acks = Acks::LastAt(ms(0));
    d.advance(D);
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::Stalled,
            flush: false
        })
    );
}

#[test]
fn write_progress_rearms_the_stall_timer() {
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("PING 0123456789\n");
    // One byte every 1.5 s: slow, but progress; never stalled for D.
    d.peer = Peer::Trickle(1);
    for step in 1..=10u32 {
        d.advance(ms(1500));
        d.settle();
        assert_eq!(d.closed(), None, "step {step}");
        assert_eq!(d.next_timeout(), Some(d.elapsed() + D));
    }
    // Then it stops reading.
    d.peer = Peer::Stalled;
    let since = d.elapsed();
    d.advance(D);
    assert_eq!(d.elapsed() - since, D);
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::Stalled,
            flush: false
        })
    );
}

#[test]
fn the_stall_timer_is_off_once_everything_is_written() {
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("PING\n");
    assert_eq!(d.next_timeout(), Some(D));
    d.set_peer(Peer::Reads);
    assert_eq!(d.take_lines(), ["PONG"]);
    assert_eq!(d.next_timeout(), None);
    d.advance(Duration::from_secs(60));
    assert_eq!(d.closed(), None);
}

#[test]
fn a_stalled_peer_during_a_job_cancels_it() {
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("JOB 5\n");
    d.take_events();
    d.advance(D);
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::Stalled
        }]
    );
    assert_eq!(d.conn.poll_transmit(), b"", "nothing more is written");
    d.stop_job();
    assert_eq!(
        d.take_events().last(),
        Some(&Event::Close {
            cause: Cause::Stalled,
            flush: false
        })
    );
}

#[test]
fn a_stalled_peer_after_bye_is_still_closed_as_stalled() {
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("BYE\n");
    assert_eq!(d.closed(), None);
    d.advance(D);
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::Stalled,
            flush: false
        })
    );
}

// ---- a driver that wakes up late ---------------------------------------------------------

#[test]
fn a_late_wakeup_handles_each_expired_timer_in_deadline_order() {
    // Write stall due at D, partial line due at D + 1 s; the driver wakes at D + 5 s.
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("PING\n");
    d.advance(ms(1000));
    d.bytes("PI");
    d.oversleep(Duration::from_secs(5));
    // The stall closed the connection; the partial line's timer died with it.
    assert_eq!(
        d.take_events(),
        vec![Event::Close {
            cause: Cause::Stalled,
            flush: false
        }]
    );
    d.assert_dead();
}

#[test]
fn a_late_wakeup_after_a_half_close_probe_and_a_stall() {
    // Write stall due at D, the probe window ends later: the stall wins and the
    // probe reports nothing for a connection that is already closing.
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("JOB 7\n");
    d.take_events();
    d.advance(D - ms(100));
    d.read_closed();
    d.oversleep(Duration::from_secs(5));
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::Stalled
        }]
    );
    d.stop_job();
    assert_eq!(
        d.take_events().last(),
        Some(&Event::Close {
            cause: Cause::Stalled,
            flush: false
        })
    );
}

#[test]
fn equal_deadlines_close_once() {
    // A reply and a partial line at the same instant: both timers due together.
    let mut d = driver();
    d.peer = Peer::Stalled;
    d.bytes("PING\nPI");
    d.advance(D);
    let events = d.take_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(events[0], Event::Close { .. }));
    d.assert_dead();
}

// ---- acknowledgement watch --------------------------------------------------------------

/// The watch's budget: the derived user timeout (D − 250 ms for D = 2 s), counted from
/// our last write instead of from the kernel's first retransmission.
const U: Duration = Duration::from_millis(1750);

/// How the watch ends a connection: `timeout`, reset (nobody will read what we hold).
const TIMED_OUT: Event = Event::Close {
    cause: Cause::Timeout,
    flush: false,
};

/// Found by the fault lab (client-unreachable-sending, once in a loaded CI run): every
/// reply was already in the kernel, so the write-stall timer had nothing to watch, and
/// the kernel's user timeout, which counts from its first retransmission and is checked
/// only when a retransmission is due, ended the connection 2.50 s after the cut against
/// 1.1·D = 2.2 s. The connection now asks TCP_INFO itself, U after its last write.
#[test]
fn a_peer_that_acknowledges_none_of_what_the_kernel_holds_is_a_timeout_after_u() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("PING\n");
    assert_eq!(d.take_lines(), ["PONG"]);
    assert!(!d.conn.interest().write, "nothing waits in our outbox");
    d.acks = Acks::StoppedAt(Duration::ZERO);
    assert_eq!(d.next_timeout(), Some(U));
    assert_eq!(d.jump(), U);
    assert_eq!(d.acks_read, 1);
    assert_eq!(d.closed(), Some(&TIMED_OUT));
    d.assert_dead();
}

#[test]
fn every_write_moves_the_watch_and_the_budget_counts_from_the_last() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("PING\n");
    d.advance(ms(1000));
    d.bytes("PING\n");
    assert_eq!(d.take_lines(), ["PONG", "PONG"]);
    assert_eq!(d.next_timeout(), Some(ms(1000) + U));
    // The peer acknowledged the first PONG and died before the second.
    d.acks = Acks::StoppedAt(ms(10));
    d.advance(U - ms(1));
    assert_eq!(d.closed(), None, "the second PONG is not U old yet");
    assert_eq!(d.acks_read, 0, "no TCP_INFO before the watch is due");
    d.advance(ms(1));
    assert_eq!(d.acks_read, 1);
    assert_eq!(d.closed(), Some(&TIMED_OUT));
}

/// A peer that acknowledges, late (a long path, a slow host), is alive: the watch
/// looks again U after its last acknowledgement, and stops once nothing is outstanding.
#[test]
fn late_acknowledgements_keep_the_connection_and_the_watch_ends_when_all_are_in() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("PING\n");
    d.acks = Acks::LastAt(ms(900));
    assert_eq!(d.jump(), U);
    assert_eq!(d.closed(), None);
    assert_eq!(d.next_timeout(), Some(ms(900) + U));
    // An acknowledgement 1 ms short of U old: TCP_INFO counts in jiffies, so look again
    // a few ms later rather than at once.
    d.acks = Acks::LastAt(ms(901));
    assert_eq!(d.jump(), ms(900) + U);
    assert_eq!(d.next_timeout(), Some(ms(900) + U + ms(5)));
    d.acks = Acks::Prompt;
    d.jump();
    assert_eq!(d.next_timeout(), None, "everything acknowledged: no watch");
    assert_eq!(d.acks_read, 3);
    d.advance(Duration::from_secs(60));
    assert_eq!(d.closed(), None);
}

/// Bytes written after a long quiet spell count from the write, not from the peer's
/// last acknowledgement (which was long before: nothing was outstanding).
#[test]
fn bytes_written_after_a_quiet_spell_count_from_the_write() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("PING\n");
    d.advance(Duration::from_secs(100));
    assert_eq!(d.acks_read, 1, "the first PONG was found acknowledged");
    d.bytes("PING\n");
    // The second PONG is in flight; the last acknowledgement is 100 s old.
    d.acks = Acks::LastAt(Duration::ZERO);
    d.advance(U - ms(1));
    assert_eq!(d.closed(), None);
    d.advance(ms(1));
    assert_eq!(d.closed(), Some(&TIMED_OUT));
}

/// A session proves it is alive by its heartbeat: no TCP_INFO reads for it, and a
/// dead peer is the heartbeat's to report.
#[test]
fn a_session_is_watched_by_its_heartbeat_not_by_acknowledgements() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("PING\n");
    d.bytes("HELLO dev-1 heartbeat=1\nPING\n");
    d.take_lines();
    d.acks = Acks::StoppedAt(Duration::ZERO);
    d.advance(Duration::from_secs(10));
    assert_eq!(d.acks_read, 0);
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::HeartbeatMissed,
            flush: false
        })
    );
}

#[test]
fn no_acknowledgement_watch_when_the_user_timeout_is_off() {
    let mut config = config(HalfClosePolicy::Probe);
    config.ack_timeout = None;
    let mut d = Driver::new(config, Jobs::Manual);
    d.bytes("PING\n");
    d.acks = Acks::StoppedAt(Duration::ZERO);
    assert_eq!(d.next_timeout(), None);
    d.advance(Duration::from_secs(60));
    assert_eq!((d.closed(), d.acks_read), (None, 0));
}
