//! The peer goes away (SPEC §3 "Hangup during a job"): FIN under each half-close
//! policy, FIN that arrives with the last request, RST, kernel timeouts, and what a
//! closed connection still does (nothing).

mod common;

use std::time::Duration;

use common::{expected_digest, Driver, Jobs, Peer, D};
use hangup_core::{derive_user_timeout, Cause, Event, HalfClosePolicy, Reply};

const PROBE_WINDOW: Duration = Duration::from_millis(200);

/// A connection with job 1 running (ACCEPTED already read by the peer).
fn running_job(policy: HalfClosePolicy) -> Driver {
    let mut d = Driver::with(policy, Jobs::Manual);
    d.bytes("JOB 50 s\n");
    assert_eq!(d.take_lines(), ["ACCEPTED 1"]);
    assert!(matches!(
        d.take_events()[..],
        [Event::StartJob { id: 1, .. }]
    ));
    d
}

fn close(cause: Cause, flush: bool) -> Event {
    Event::Close { cause, flush }
}

fn cancelled(id: u64, cause: Cause, was_running: bool) -> Event {
    Event::JobCancelled {
        id,
        cause,
        was_running,
    }
}

fn done_line() -> String {
    format!("DONE 1 {}", expected_digest("s", 50))
}

// ---- FIN through readiness while a job runs ---------------------------------------------

#[test]
fn fin_under_cancel_cancels_the_job_and_closes_hard() {
    let mut d = running_job(HalfClosePolicy::Cancel);
    d.read_closed();
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::PeerClosed
        }]
    );
    assert_eq!(
        d.take_lines(),
        Vec::<String>::new(),
        "no probe under cancel"
    );
    assert_eq!(d.closed(), None, "Close waits for the worker to stop");
    // Nothing is worth reading or writing any more.
    assert!(!d.conn.interest().read && !d.conn.interest().write);

    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            cancelled(1, Cause::PeerClosed, true),
            close(Cause::PeerClosed, false)
        ]
    );
    d.assert_dead();
}

#[test]
fn fin_under_probe_then_rst_is_peer_closed_and_cancels() {
    let mut d = running_job(HalfClosePolicy::Probe);
    d.read_closed();
    assert_eq!(d.take_lines(), ["#"], "the probe line");
    assert_eq!(d.take_events(), vec![], "nothing is cancelled on FIN alone");
    assert_eq!(d.next_timeout(), Some(PROBE_WINDOW));
    assert!(
        d.conn.interest().read,
        "the rest of the input is still read"
    );

    // The peer had closed its socket: our probe bytes drew a RST.
    d.advance(Duration::from_millis(3));
    d.error(Cause::PeerReset);
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::PeerClosed
        }]
    );
    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            cancelled(1, Cause::PeerClosed, true),
            close(Cause::PeerClosed, false)
        ]
    );
    d.assert_dead();
}

#[test]
fn fin_under_probe_without_rst_is_a_half_close_and_results_are_delivered() {
    let mut d = running_job(HalfClosePolicy::Probe);
    d.read_closed();
    assert_eq!(d.take_lines(), ["#"]);
    // A second readiness report does not probe again.
    d.read_closed();
    assert_eq!(d.take_lines(), Vec::<String>::new());

    assert_eq!(d.jump(), PROBE_WINDOW);
    assert_eq!(d.take_events(), vec![Event::PeerHalfClosed]);
    assert_eq!(d.running().unwrap().cancelled, None);

    d.complete_job();
    assert_eq!(d.take_lines(), [done_line()]);
    assert_eq!(d.take_events(), vec![Event::JobDone { id: 1, rounds: 50 }]);
    assert_eq!(d.closed(), None, "input has not ended yet");

    d.eof();
    assert_eq!(d.take_events(), vec![close(Cause::PeerClosed, true)]);
    d.assert_dead();
}

#[test]
fn half_close_waits_for_the_outbox_before_close() {
    let mut d = running_job(HalfClosePolicy::Probe);
    d.read_closed();
    d.eof(); // the driver reads the end of input before the job is done
    assert_eq!(d.take_lines(), ["#"]);
    assert_eq!(d.take_events(), vec![]);
    d.advance(PROBE_WINDOW);
    assert_eq!(d.take_events(), vec![Event::PeerHalfClosed]);

    d.peer = Peer::Stalled;
    d.complete_job();
    assert_eq!(d.take_events(), vec![Event::JobDone { id: 1, rounds: 50 }]);
    assert_eq!(d.closed(), None, "DONE is not written yet");
    assert!(d.conn.interest().write);

    d.set_peer(Peer::Trickle(7));
    while d.closed().is_none() {
        d.settle();
    }
    assert_eq!(d.take_lines(), [done_line()]);
    assert_eq!(d.take_events(), vec![close(Cause::PeerClosed, true)]);
}

#[test]
fn fin_under_finish_sends_no_probe_and_delivers_done() {
    let mut d = running_job(HalfClosePolicy::Finish);
    d.read_closed();
    d.eof();
    assert_eq!(d.take_lines(), Vec::<String>::new());
    assert_eq!(d.take_events(), vec![]);
    // No probe: the one timer is the acknowledgement watch of `ACCEPTED 1`.
    assert_eq!(d.next_timeout(), Some(derive_user_timeout(D)));
    d.complete_job();
    assert_eq!(d.take_lines(), [done_line()]);
    assert_eq!(
        d.take_events(),
        vec![
            Event::JobDone { id: 1, rounds: 50 },
            close(Cause::PeerClosed, true)
        ]
    );
}

#[test]
fn fin_with_no_work_is_only_an_end_of_input() {
    for policy in [
        HalfClosePolicy::Probe,
        HalfClosePolicy::Cancel,
        HalfClosePolicy::Finish,
    ] {
        let mut d = Driver::with(policy, Jobs::Manual);
        d.bytes("PING\n");
        d.read_closed();
        assert_eq!(d.take_lines(), ["PONG"], "{policy}: no probe without jobs");
        assert_eq!(d.take_events(), vec![]);
        assert!(d.conn.interest().read, "{policy}: read to the end of input");
        d.eof();
        assert_eq!(
            d.take_events(),
            vec![close(Cause::PeerClosed, true)],
            "{policy}"
        );
    }
}

// ---- JOB and FIN in the same read -----------------------------------------------------

/// `printf 'JOB 50 s\n' | nc -N`: the request and the end of input arrive together,
/// with no readiness FIN reported first. `terminated`: whether the line ends in `\n`.
fn job_then_eof(policy: HalfClosePolicy, terminated: bool) -> Driver {
    let mut d = Driver::with(policy, Jobs::Manual);
    d.bytes(if terminated { "JOB 50 s\n" } else { "JOB 50 s" });
    d.eof();
    d
}

#[test]
fn job_with_fin_under_cancel_is_cancelled() {
    for terminated in [true, false] {
        let mut d = job_then_eof(HalfClosePolicy::Cancel, terminated);
        assert_eq!(
            d.take_events(),
            vec![
                Event::StartJob {
                    id: 1,
                    rounds: 50,
                    seed: "s".into()
                },
                Event::CancelJob {
                    id: 1,
                    cause: Cause::PeerClosed
                }
            ]
        );
        d.stop_job();
        assert_eq!(
            d.take_events(),
            vec![
                cancelled(1, Cause::PeerClosed, true),
                close(Cause::PeerClosed, false)
            ]
        );
        let lines = d.take_lines();
        assert!(
            !lines
                .iter()
                .any(|l| matches!(Reply::parse(l), Ok(Reply::Done(..)))),
            "{lines:?}"
        );
    }
}

#[test]
fn job_with_fin_under_probe_probes_and_then_delivers() {
    for terminated in [true, false] {
        let mut d = job_then_eof(HalfClosePolicy::Probe, terminated);
        assert_eq!(d.take_lines(), ["ACCEPTED 1", "#"]);
        d.advance(PROBE_WINDOW);
        assert_eq!(
            d.take_events(),
            vec![
                Event::StartJob {
                    id: 1,
                    rounds: 50,
                    seed: "s".into()
                },
                Event::PeerHalfClosed
            ]
        );
        d.complete_job();
        assert_eq!(d.take_lines(), [done_line()]);
        assert_eq!(
            d.take_events(),
            vec![
                Event::JobDone { id: 1, rounds: 50 },
                close(Cause::PeerClosed, true)
            ]
        );
    }
}

#[test]
fn job_with_fin_under_probe_then_rst_is_cancelled() {
    let mut d = job_then_eof(HalfClosePolicy::Probe, true);
    d.take_events();
    d.error(Cause::PeerReset);
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::PeerClosed
        }]
    );
    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            cancelled(1, Cause::PeerClosed, true),
            close(Cause::PeerClosed, false)
        ]
    );
}

#[test]
fn job_with_fin_under_finish_is_delivered() {
    for terminated in [true, false] {
        let mut d = job_then_eof(HalfClosePolicy::Finish, terminated);
        assert_eq!(d.take_lines(), ["ACCEPTED 1"]);
        d.complete_job();
        assert_eq!(d.take_lines(), [done_line()]);
        assert_eq!(
            d.take_events().last(),
            Some(&close(Cause::PeerClosed, true))
        );
    }
}

#[test]
fn pipelined_jobs_with_fin_under_finish_all_deliver_in_order() {
    let mut d = Driver::with(HalfClosePolicy::Finish, Jobs::RunAtOnce);
    d.bytes("JOB 1 a\nJOB 2 b\nJOB 3 c");
    d.eof();
    let lines = d.take_lines();
    assert_eq!(
        lines,
        [
            "ACCEPTED 1".to_owned(),
            "ACCEPTED 2".to_owned(),
            format!("DONE 1 {}", expected_digest("a", 1)),
            format!("DONE 2 {}", expected_digest("b", 2)),
            "ACCEPTED 3".to_owned(),
            format!("DONE 3 {}", expected_digest("c", 3)),
        ]
    );
    assert_eq!(d.closed(), Some(&close(Cause::PeerClosed, true)));
}

#[test]
fn fin_reported_before_the_job_is_read_applies_once_the_job_starts() {
    // The socket holds `JOB …` and FIN; readiness reports the FIN before the read.
    for policy in [
        HalfClosePolicy::Probe,
        HalfClosePolicy::Cancel,
        HalfClosePolicy::Finish,
    ] {
        let mut d = Driver::with(policy, Jobs::Manual);
        d.read_closed();
        assert_eq!(d.take_events(), vec![], "{policy}");
        d.bytes(
            "JOB 50 s
",
        );
        d.eof();
        let lines = d.take_lines();
        let events = d.take_events();
        match policy {
            HalfClosePolicy::Probe => {
                assert_eq!(lines, ["ACCEPTED 1", "#"]);
                assert_eq!(events.len(), 1, "{events:?}");
                d.complete_job();
                assert_eq!(d.take_lines(), [done_line()]);
            }
            HalfClosePolicy::Cancel => {
                assert_eq!(
                    events[1],
                    Event::CancelJob {
                        id: 1,
                        cause: Cause::PeerClosed
                    }
                );
                d.stop_job();
            }
            HalfClosePolicy::Finish => {
                assert_eq!(lines, ["ACCEPTED 1"]);
                d.complete_job();
                assert_eq!(d.take_lines(), [done_line()]);
            }
        }
        let flush = policy != HalfClosePolicy::Cancel;
        assert_eq!(
            d.closed(),
            Some(&close(Cause::PeerClosed, flush)),
            "{policy}"
        );
    }
}

#[test]
fn nc_style_job_bye_and_half_close_gets_done_then_bye() {
    // `printf 'JOB 50 s\nBYE\n' | nc -N host 7557` under the default policy.
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("JOB 50 s\nBYE\n");
    d.read_closed();
    assert_eq!(d.take_lines(), ["ACCEPTED 1", "#"]);
    d.advance(PROBE_WINDOW);
    d.complete_job();
    assert_eq!(d.take_lines(), [done_line(), "BYE".to_owned()]);
    assert_eq!(
        d.take_events()[1..],
        [
            Event::PeerHalfClosed,
            Event::JobDone { id: 1, rounds: 50 },
            close(Cause::Local, true)
        ]
    );
}

// ---- RST and kernel errors --------------------------------------------------------------

/// Job 1 running, jobs 2 and 3 queued.
fn three_jobs() -> Driver {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("JOB 10\nJOB 20\nJOB 30\n");
    d.take_lines();
    d.take_events();
    d
}

#[test]
fn rst_without_fin_is_peer_reset_and_cancels_everything() {
    let mut d = three_jobs();
    d.error(Cause::PeerReset);
    assert_eq!(
        d.take_events(),
        vec![
            Event::CancelJob {
                id: 1,
                cause: Cause::PeerReset
            },
            cancelled(2, Cause::PeerReset, false),
            cancelled(3, Cause::PeerReset, false),
        ]
    );
    assert_eq!(d.conn.job_counts(), (1, 0));
    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            cancelled(1, Cause::PeerReset, true),
            close(Cause::PeerReset, false)
        ]
    );
    d.assert_dead();
}

#[test]
fn kernel_causes_pass_through_even_after_fin() {
    for cause in [Cause::Timeout, Cause::Unreachable] {
        for fin_first in [false, true] {
            let mut d = three_jobs();
            if fin_first {
                d.read_closed();
                assert_eq!(d.take_lines(), ["#"]);
            }
            d.error(cause);
            let events = d.take_events();
            assert_eq!(events[0], Event::CancelJob { id: 1, cause }, "{cause}");
            assert_eq!(
                events[1..],
                [cancelled(2, cause, false), cancelled(3, cause, false)]
            );
            d.stop_job();
            assert_eq!(
                d.take_events(),
                vec![cancelled(1, cause, true), close(cause, false)]
            );
        }
    }
}

#[test]
fn a_job_that_finishes_as_the_peer_resets_is_still_cancelled() {
    let mut d = three_jobs();
    d.error(Cause::PeerReset);
    d.take_events();
    // The worker's digest raced the cancellation: no DONE is queued for a dead peer.
    d.complete_job();
    assert_eq!(
        d.take_events(),
        vec![
            cancelled(1, Cause::PeerReset, true),
            close(Cause::PeerReset, false)
        ]
    );
    assert_eq!(d.take_lines(), Vec::<String>::new());
}

#[test]
fn rst_with_unwritten_replies_drops_them() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.peer = Peer::Stalled;
    d.bytes("PING 1\nPING 2\n");
    assert!(!d.conn.poll_transmit().is_empty());
    d.error(Cause::PeerReset);
    assert_eq!(d.take_events(), vec![close(Cause::PeerReset, false)]);
    d.assert_dead();
}

#[test]
fn rst_during_bye_overrides_the_graceful_close() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.bytes("JOB 10\nJOB 20\nBYE\n");
    d.take_events();
    d.error(Cause::PeerReset);
    assert_eq!(
        d.take_events(),
        vec![
            Event::CancelJob {
                id: 1,
                cause: Cause::PeerReset
            },
            cancelled(2, Cause::PeerReset, false),
        ]
    );
    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            cancelled(1, Cause::PeerReset, true),
            close(Cause::PeerReset, false)
        ]
    );
    let lines = d.take_lines();
    assert!(!lines.contains(&"BYE".to_owned()), "{lines:?}");
}

#[test]
fn local_close_with_flush_delivers_what_is_queued() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::Manual);
    d.peer = Peer::Stalled;
    d.bytes("PING last\n");
    d.local_close(Cause::Shutdown, true);
    assert_eq!(d.closed(), None);
    assert!(!d.conn.interest().read && d.conn.interest().write);
    d.set_peer(Peer::Reads);
    assert_eq!(d.take_lines(), ["PONG last"]);
    assert_eq!(d.take_events(), vec![close(Cause::Shutdown, true)]);
    d.assert_dead();
}
