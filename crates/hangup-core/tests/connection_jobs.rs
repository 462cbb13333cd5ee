//! Jobs on one connection (SPEC §3): ACCEPTED, DONE with the right digest, one at a
//! time in order, pipelining, the queue limit, CANCEL, STATUS and BYE.

mod common;

use common::{err_code, expected_digest, reply, Driver, Jobs};
use hangup_core::{Cause, ErrorCode, Event, HalfClosePolicy, Reply, StatusCounts};

fn manual() -> Driver {
    Driver::with(HalfClosePolicy::Probe, Jobs::Manual)
}

fn started(id: u64, rounds: u64, seed: &str) -> Event {
    Event::StartJob {
        id,
        rounds,
        seed: seed.into(),
    }
}

#[test]
fn job_is_accepted_then_done_with_the_sha256_chain() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::RunAtOnce);
    // The worker only sees a job once the whole read was parsed, as with a real
    // driver: every ACCEPTED of one read comes before the first DONE.
    d.bytes("JOB 1\njob 3 abc\nJoB 1000 x\n");
    assert_eq!(
        d.take_lines(),
        vec![
            "ACCEPTED 1".to_owned(),
            "ACCEPTED 2".to_owned(),
            "ACCEPTED 3".to_owned(),
            format!("DONE 1 {}", expected_digest("hangup", 1)),
            format!("DONE 2 {}", expected_digest("abc", 3)),
            format!("DONE 3 {}", expected_digest("x", 1000)),
        ]
    );
    // Known answer from outside Rust: `printf hangup | sha256sum`.
    assert_eq!(
        expected_digest("hangup", 1),
        "033ee1e762e5be87ffee1afa1e573e6bdfc01811ec246c42a0e864cf93def224"
    );
    assert_eq!(
        d.take_events(),
        vec![
            started(1, 1, "hangup"),
            Event::JobDone { id: 1, rounds: 1 },
            started(2, 3, "abc"),
            Event::JobDone { id: 2, rounds: 3 },
            started(3, 1000, "x"),
            Event::JobDone {
                id: 3,
                rounds: 1000
            },
        ]
    );
    assert_eq!(d.conn.job_counts(), (0, 0));
    assert_eq!(d.closed(), None);
}

#[test]
fn accepted_is_sent_at_once_and_done_only_when_the_job_finishes() {
    let mut d = manual();
    d.bytes("JOB 5\n");
    assert_eq!(d.take_lines(), ["ACCEPTED 1"]);
    assert_eq!(d.take_events(), vec![started(1, 5, "hangup")]);
    assert_eq!(d.conn.job_counts(), (1, 0));
    d.complete_job();
    assert_eq!(
        d.take_lines(),
        [format!("DONE 1 {}", expected_digest("hangup", 5))]
    );
    assert_eq!(d.take_events(), vec![Event::JobDone { id: 1, rounds: 5 }]);
}

#[test]
fn pipelined_jobs_run_one_at_a_time_in_order() {
    let mut d = manual();
    d.bytes("JOB 2 a\nJOB 3 b\nPING mid\nJOB 4 c\n");
    // Every line is answered at once; only the first job runs.
    assert_eq!(
        d.take_lines(),
        ["ACCEPTED 1", "ACCEPTED 2", "PONG mid", "ACCEPTED 3"]
    );
    assert_eq!(d.take_events(), vec![started(1, 2, "a")]);
    assert_eq!(d.conn.job_counts(), (1, 2));

    // Lines that arrive while a job runs are parsed and answered or queued.
    d.bytes("PING busy\nJOB 5 e\nSTATUS\n");
    assert_eq!(
        d.take_lines(),
        [
            "PONG busy",
            "ACCEPTED 4",
            "STATUS connections=0 sessions=0 jobs_running=1 jobs_queued=3"
        ]
    );
    assert_eq!(d.take_events(), vec![]);
    assert_eq!(d.conn.job_counts(), (1, 3));

    for (id, rounds, seed) in [(1, 2, "a"), (2, 3, "b"), (3, 4, "c"), (4, 5, "e")] {
        assert_eq!(d.running().map(|job| job.id), Some(id));
        d.complete_job();
        assert_eq!(
            d.take_lines(),
            [format!("DONE {id} {}", expected_digest(seed, rounds))]
        );
        let mut expected = vec![Event::JobDone { id, rounds }];
        if id < 4 {
            let (rounds, seed) = [(3, "b"), (4, "c"), (5, "e")][id as usize - 1];
            expected.push(started(id + 1, rounds, seed));
        }
        assert_eq!(d.take_events(), expected);
    }
    assert_eq!(d.running(), None);
    assert_eq!(d.conn.job_counts(), (0, 0));
}

#[test]
fn more_than_64_queued_jobs_is_refused_and_the_connection_lives_on() {
    let mut d = manual();
    let script: String = (0..66).map(|i| format!("JOB {}\n", i + 1)).collect();
    d.bytes(script + "PING still-here\n");
    let lines = d.take_lines();
    // One runs and 64 wait; the 66th is one too many.
    for (i, line) in lines[..65].iter().enumerate() {
        assert_eq!(line, &format!("ACCEPTED {}", i + 1));
    }
    assert_eq!(
        err_code(&lines[65]),
        Some(ErrorCode::TooManyJobs),
        "got {:?}",
        lines[65]
    );
    assert_eq!(lines[66], "PONG still-here");
    assert_eq!(lines.len(), 67);
    assert_eq!(d.conn.job_counts(), (1, 64));
    assert_eq!(d.closed(), None);

    // Room again once one job finishes; the refused one consumed no id.
    d.complete_job();
    d.take_lines();
    d.bytes("JOB 7\nJOB 8\n");
    let lines = d.take_lines();
    assert_eq!(lines[0], "ACCEPTED 66");
    assert_eq!(err_code(&lines[1]), Some(ErrorCode::TooManyJobs));
}

#[test]
fn cancel_a_queued_job() {
    let mut d = manual();
    d.bytes("JOB 1\nJOB 2\nJOB 3\n");
    d.take_lines();
    d.take_events();
    d.bytes("CANCEL 2\n");
    assert_eq!(d.take_lines(), ["CANCELLED 2"]);
    assert_eq!(
        d.take_events(),
        vec![Event::JobCancelled {
            id: 2,
            cause: Cause::Local,
            was_running: false
        }]
    );
    assert_eq!(d.conn.job_counts(), (1, 1));
    // The running one is untouched, and the queue skips the cancelled job.
    assert_eq!(d.running().unwrap().cancelled, None);
    d.complete_job();
    assert_eq!(
        d.take_events(),
        vec![Event::JobDone { id: 1, rounds: 1 }, started(3, 3, "hangup")]
    );
    d.complete_job();
    let lines = d.take_lines();
    assert!(
        matches!(reply(&lines[0]), Reply::Done(1, _))
            && matches!(reply(&lines[1]), Reply::Done(3, _))
    );
    assert_eq!(lines.len(), 2);
}

#[test]
fn cancel_the_running_job() {
    let mut d = manual();
    d.bytes("JOB 1000000 a\nJOB 4 b\n");
    d.take_lines();
    d.take_events();
    d.bytes("CANCEL 1\n");
    assert_eq!(d.take_lines(), ["CANCELLED 1"]);
    assert_eq!(
        d.take_events(),
        vec![Event::CancelJob {
            id: 1,
            cause: Cause::Local
        }]
    );
    // A second CANCEL while it winds down is answered but asks the worker nothing new.
    d.bytes("cancel 1\n");
    assert_eq!(d.take_lines(), ["CANCELLED 1"]);
    assert_eq!(d.take_events(), vec![]);

    d.stop_job();
    assert_eq!(
        d.take_events(),
        vec![
            Event::JobCancelled {
                id: 1,
                cause: Cause::Local,
                was_running: true
            },
            started(2, 4, "b"),
        ]
    );
    assert_eq!(d.take_lines(), Vec::<String>::new(), "no DONE for job 1");
    d.complete_job();
    assert_eq!(
        d.take_lines(),
        [format!("DONE 2 {}", expected_digest("b", 4))]
    );
    assert_eq!(d.closed(), None);
}

#[test]
fn a_cancelled_job_that_finished_anyway_gets_no_done() {
    let mut d = manual();
    d.bytes("JOB 3\nCANCEL 1\n");
    assert_eq!(d.take_lines(), ["ACCEPTED 1", "CANCELLED 1"]);
    // The worker finished before it looked at its token.
    d.complete_job();
    assert_eq!(d.take_lines(), Vec::<String>::new());
    let events = d.take_events();
    assert_eq!(
        events.last(),
        Some(&Event::JobCancelled {
            id: 1,
            cause: Cause::Local,
            was_running: true
        })
    );
}

#[test]
fn cancel_of_an_unknown_or_finished_job_is_not_found() {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::RunAtOnce);
    d.bytes("CANCEL 1\nJOB 1\n");
    d.bytes("CANCEL 1\nCANCEL 18446744073709551615\nPING\n");
    let lines = d.take_lines();
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::NotFound), "{lines:?}");
    assert_eq!(lines[1], "ACCEPTED 1");
    assert!(matches!(reply(&lines[2]), Reply::Done(1, _)));
    assert_eq!(err_code(&lines[3]), Some(ErrorCode::NotFound), "{lines:?}");
    assert_eq!(err_code(&lines[4]), Some(ErrorCode::NotFound), "{lines:?}");
    assert_eq!(lines[5], "PONG");
    assert_eq!(lines.len(), 6);
}

#[test]
fn status_reports_the_counts_it_is_given() {
    let mut d = manual();
    d.status = StatusCounts {
        connections: 12,
        sessions: 3,
        jobs_running: 4,
        jobs_queued: 56,
    };
    d.bytes("status\n");
    assert_eq!(
        d.take_lines(),
        ["STATUS connections=12 sessions=3 jobs_running=4 jobs_queued=56"]
    );
    // The given counts are the other connections'; this one adds its own jobs.
    d.bytes("JOB 1\nJOB 2\nJOB 3\nSTATUS\n");
    assert_eq!(
        d.take_lines(),
        [
            "ACCEPTED 1",
            "ACCEPTED 2",
            "ACCEPTED 3",
            "STATUS connections=12 sessions=3 jobs_running=5 jobs_queued=58"
        ]
    );
}

#[test]
fn bye_waits_for_queued_done_lines_then_closes() {
    let mut d = manual();
    d.bytes("JOB 2\nJOB 3\nBYE\nPING ignored\nJOB 9\n");
    assert_eq!(d.take_lines(), ["ACCEPTED 1", "ACCEPTED 2"]);
    assert!(!d.conn.interest().read, "nothing is read after BYE");
    d.bytes("PING also-ignored\n");
    assert_eq!(d.take_lines(), Vec::<String>::new());

    d.complete_job();
    assert_eq!(
        d.take_lines(),
        [format!("DONE 1 {}", expected_digest("hangup", 2))]
    );
    assert_eq!(d.closed(), None);
    d.complete_job();
    assert_eq!(
        d.take_lines(),
        [
            format!("DONE 2 {}", expected_digest("hangup", 3)),
            "BYE".to_owned()
        ]
    );
    assert_eq!(
        d.take_events().last(),
        Some(&Event::Close {
            cause: Cause::Local,
            flush: true
        })
    );
    d.assert_dead();
}

#[test]
fn bye_closes_only_after_the_peer_took_every_byte() {
    let mut d = manual();
    d.peer = common::Peer::Stalled;
    d.bytes("PING a\nBYE\n");
    assert_eq!(d.closed(), None, "BYE is still in the outbox");
    assert!(d.conn.interest().write && d.conn.interest().hangup);
    d.set_peer(common::Peer::Trickle(3));
    while d.closed().is_none() {
        d.settle();
    }
    assert_eq!(d.take_lines(), ["PONG a", "BYE"]);
    assert_eq!(
        d.closed(),
        Some(&Event::Close {
            cause: Cause::Local,
            flush: true
        })
    );
}

#[test]
fn bye_with_nothing_pending_closes_at_once() {
    let mut d = manual();
    d.bytes("bye\n");
    assert_eq!(d.take_lines(), ["BYE"]);
    assert_eq!(
        d.take_events(),
        vec![Event::Close {
            cause: Cause::Local,
            flush: true
        }]
    );
    d.assert_dead();
}
