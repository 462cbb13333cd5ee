//! Sessions on virtual time: WELCOME, heartbeat expiry, takeover (KICKED), GOAWAY,
//! PING floods and HELLO misuse.

mod common;

use std::time::Duration;

use common::{err_code, reply, Driver, Jobs, Peer, Sessions, D};
use hangup_core::{
    derive_user_timeout, Cause, ErrorCode, Event, HalfClosePolicy, Reply, SessionId,
};

fn driver(jobs: Jobs) -> Driver {
    Driver::with(HalfClosePolicy::Probe, jobs)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn close_event(cause: Cause, flush: bool) -> Event {
    Event::Close { cause, flush }
}

#[test]
fn hello_is_answered_before_the_lines_behind_it() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1 heartbeat=5\nPING a\nSTATUS\n");
    let lines = d.take_lines();
    assert_eq!(
        lines[..2],
        [
            "WELCOME 0000000000000001 heartbeat=5 dead-after=7.5",
            "PONG a"
        ]
    );
    assert!(matches!(reply(&lines[2]), Reply::Status(_)), "{lines:?}");
    assert_eq!(d.conn.session().map(|id| id.0), Some(1));
}

#[test]
fn input_waits_while_the_driver_decides_on_the_session() {
    let mut d = driver(Jobs::RunAtOnce);
    d.sessions = Sessions::Manual;
    d.bytes("HELLO dev-1\nPING held\n");
    assert_eq!(d.take_lines(), Vec::<String>::new());
    assert!(
        !d.conn.interest().read,
        "reads on while the session is undecided"
    );
    assert!(d.conn.interest().hangup, "the hangup watch must stay on");
    // The harness resumes held input the way the driver does after back-pressure.
    d.open_session();
    assert!(!d.conn.can_resume_input());
    assert_eq!(
        d.take_lines(),
        [
            "WELCOME 0000000000000001 heartbeat=30 dead-after=45",
            "PONG held"
        ]
    );
}

#[test]
fn silent_session_is_closed_after_one_and_a_half_heartbeats() {
    let mut d = driver(Jobs::Manual);
    d.bytes("HELLO dev-1 heartbeat=1\nJOB 1000\n");
    d.take_lines();
    d.advance(ms(1400));
    assert_eq!(d.closed(), None);
    // Life at 1.4 s moves the deadline to 2.9 s.
    d.bytes("PING\n");
    d.advance(ms(1499));
    assert_eq!(d.closed(), None, "closed before 1.5 H of silence");
    d.advance(ms(1));
    assert_eq!(
        d.running().and_then(|job| job.cancelled),
        Some(Cause::HeartbeatMissed)
    );
    d.stop_job();
    assert_eq!(
        d.closed(),
        Some(&close_event(Cause::HeartbeatMissed, false))
    );
    assert_eq!(d.elapsed(), ms(2900));
    let events = d.take_events();
    assert!(events.contains(&Event::JobCancelled {
        id: 1,
        cause: Cause::HeartbeatMissed,
        was_running: true
    }));
    d.assert_dead();
}

#[test]
fn a_driver_that_fell_behind_is_told_to_read_before_the_heartbeat_ends_the_session() {
    let mut d = driver(Jobs::Manual);
    d.bytes("HELLO dev-1 heartbeat=1\n");
    d.take_lines();
    let start = d.now();
    assert!(!d.conn.heartbeat_overdue(start + ms(1499)));
    assert!(d.conn.heartbeat_overdue(start + ms(1500)));
    // The driver's thread stalls for 2 s; the PING the peer sent at 1 s waited in the
    // kernel. Read before the timer's turn (as the driver does when told), it counts:
    // nothing ends, and the deadline moves 1.5 H past the read.
    d.stall(ms(2000));
    assert!(d.conn.heartbeat_overdue(d.now()));
    d.bytes("PING late\n");
    assert!(!d.conn.heartbeat_overdue(d.now()));
    d.oversleep(Duration::ZERO);
    assert_eq!(d.closed(), None);
    assert_eq!(d.take_lines(), ["PONG late"]);
    assert_eq!(d.next_timeout(), Some(ms(3500)));
    // Not reading (a job runs after BYE): silence proves nothing, so nothing is overdue.
    d.bytes("JOB 1000\nBYE\n");
    d.stall(ms(10_000));
    assert!(!d.conn.heartbeat_overdue(d.now()));
    // Reading, silent past the budget: overdue, and the timer ends it.
    let mut d = driver(Jobs::Manual);
    d.bytes("HELLO dev-2 heartbeat=1\n");
    d.stall(ms(1600));
    assert!(d.conn.heartbeat_overdue(d.now()));
    d.oversleep(Duration::ZERO);
    assert_eq!(
        d.closed(),
        Some(&close_event(Cause::HeartbeatMissed, false))
    );
}

#[test]
fn each_heartbeat_moves_the_deadline_to_one_and_a_half_h_after_it() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1 heartbeat=10\n");
    assert_eq!(d.next_timeout(), Some(Duration::from_secs(15)));
    for i in 1..=5 {
        d.advance(Duration::from_secs(2));
        d.bytes("PING\n");
        assert_eq!(d.next_timeout(), Some(Duration::from_secs(2 * i + 15)));
    }
    // Silent from 10 s on: closed at 25 s, not before.
    d.advance(Duration::from_secs(14));
    assert_eq!(d.closed(), None);
    d.advance(Duration::from_secs(1));
    assert_eq!(
        d.closed(),
        Some(&close_event(Cause::HeartbeatMissed, false))
    );
}

#[test]
fn anonymous_connections_have_no_heartbeat_deadline() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("PING\n");
    // Only the acknowledgement watch of `PONG`, which finds it acknowledged.
    assert_eq!(d.next_timeout(), Some(derive_user_timeout(D)));
    d.oversleep(Duration::from_secs(100_000));
    assert_eq!(d.next_timeout(), None);
    assert_eq!(d.closed(), None);
}

#[test]
fn heartbeat_does_not_fire_while_we_are_not_reading() {
    // After BYE the server reads no more, so the peer's heartbeats cannot arrive: a long
    // job must not be cancelled for a silence we caused.
    let mut d = driver(Jobs::Manual);
    d.bytes("HELLO dev-1 heartbeat=1\nJOB 1000\nBYE\n");
    d.advance(Duration::from_secs(60));
    assert_eq!(d.closed(), None);
    assert_eq!(d.running().map(|job| job.cancelled), Some(None));
    d.complete_job();
    assert_eq!(d.closed(), Some(&close_event(Cause::Local, true)));
}

#[test]
fn heartbeat_waits_while_replies_are_held_back() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1 heartbeat=1\n");
    d.set_peer(Peer::Stalled);
    // Fill the outbox over the high-water mark: input stops.
    let flood = format!("PING {}\n", "x".repeat(4000)).repeat(20);
    d.feed_while_readable(flood.as_bytes(), 4096);
    assert!(!d.conn.interest().read);
    d.advance(ms(1900));
    assert_eq!(
        d.closed(),
        None,
        "heartbeat_missed while we were not reading"
    );
    // The write-stall timer (D = 2 s) is what ends a peer that stopped reading.
    d.advance(ms(200));
    assert_eq!(d.closed(), Some(&close_event(Cause::Stalled, false)));
}

#[test]
fn kicked_connection_gets_kicked_line_and_its_jobs_cancelled() {
    let mut d = driver(Jobs::Manual);
    d.bytes("HELLO dev-1\nJOB 1000\nJOB 5\n");
    d.take_lines();
    d.kick();
    assert_eq!(
        d.running().and_then(|job| job.cancelled),
        Some(Cause::Takeover)
    );
    d.stop_job();
    assert_eq!(d.take_lines(), ["KICKED takeover"]);
    assert_eq!(d.closed(), Some(&close_event(Cause::Takeover, true)));
    let events = d.take_events();
    assert!(events.contains(&Event::JobCancelled {
        id: 2,
        cause: Cause::Takeover,
        was_running: false
    }));
    d.assert_dead();
}

#[test]
fn kick_after_close_does_nothing() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1\n");
    d.error(Cause::PeerReset);
    d.take_lines();
    d.kick();
    assert_eq!(d.take_lines(), Vec::<String>::new());
    assert_eq!(d.closed(), Some(&close_event(Cause::PeerReset, false)));
}

#[test]
fn goaway_lets_jobs_finish_then_closes() {
    let mut d = driver(Jobs::Manual);
    d.bytes("JOB 3\nJOB 4\n");
    d.take_lines();
    d.goaway();
    assert_eq!(d.take_lines(), ["GOAWAY shutdown"]);
    d.bytes("JOB 5\nHELLO dev\nPING\n");
    let lines = d.take_lines();
    assert_eq!(
        err_code(&lines[0]),
        Some(ErrorCode::ShuttingDown),
        "{lines:?}"
    );
    assert_eq!(
        err_code(&lines[1]),
        Some(ErrorCode::ShuttingDown),
        "{lines:?}"
    );
    assert_eq!(lines[2], "PONG");
    d.complete_job();
    assert_eq!(d.closed(), None, "the queued job is still in flight");
    d.complete_job();
    let lines = d.take_lines();
    assert!(
        matches!(reply(&lines[0]), Reply::Done(1, _))
            && matches!(reply(&lines[1]), Reply::Done(2, _)),
        "{lines:?}"
    );
    assert_eq!(d.closed(), Some(&close_event(Cause::Shutdown, true)));
    d.assert_dead();
}

#[test]
fn goaway_closes_an_idle_connection_at_once() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1\n");
    d.take_lines();
    d.goaway();
    assert_eq!(d.take_lines(), ["GOAWAY shutdown"]);
    assert_eq!(d.closed(), Some(&close_event(Cause::Shutdown, true)));
}

#[test]
fn drain_timeout_cancels_what_is_left() {
    let mut d = driver(Jobs::Manual);
    d.bytes("JOB 1000\n");
    d.goaway();
    d.local_close(Cause::Shutdown, true);
    assert_eq!(
        d.running().and_then(|job| job.cancelled),
        Some(Cause::Shutdown)
    );
    d.stop_job();
    assert_eq!(d.closed(), Some(&close_event(Cause::Shutdown, true)));
}

#[test]
fn ping_flood_in_a_session_is_rate_limited_and_closed() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1\n");
    d.take_lines();
    // A burst of 20 is allowed; the 21st PING in the same instant is not.
    d.bytes("PING\n".repeat(21));
    let lines = d.take_lines();
    assert_eq!(lines.iter().filter(|l| *l == "PONG").count(), 20);
    assert_eq!(
        err_code(&lines[20]),
        Some(ErrorCode::RateLimited),
        "{lines:?}"
    );
    assert_eq!(d.closed(), Some(&close_event(Cause::ProtocolError, true)));
}

#[test]
fn steady_pings_within_the_rate_are_fine() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1 heartbeat=1\n");
    for _ in 0..1000 {
        d.advance(ms(100));
        d.bytes("PING\n");
    }
    assert_eq!(d.closed(), None);
}

#[test]
fn anonymous_pings_are_not_rate_limited() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("PING\n".repeat(500));
    assert_eq!(d.take_lines().len(), 500);
    assert_eq!(d.closed(), None);
}

#[test]
fn second_hello_is_refused_and_the_session_stays() {
    let mut d = driver(Jobs::RunAtOnce);
    d.bytes("HELLO dev-1\nHELLO dev-2\nPING\n");
    let lines = d.take_lines();
    assert!(matches!(reply(&lines[0]), Reply::Welcome(SessionId(1), _)));
    assert_eq!(
        err_code(&lines[1]),
        Some(ErrorCode::BadRequest),
        "{lines:?}"
    );
    assert!(lines[1].contains("HELLO was sent twice"), "{lines:?}");
    assert_eq!(lines[2], "PONG");
    assert_eq!(d.conn.session().map(|id| id.0), Some(1));
}

#[test]
fn refused_hello_leaves_a_usable_connection() {
    let mut d = driver(Jobs::RunAtOnce);
    d.sessions = Sessions::Refuse(ErrorCode::Unauthorized);
    d.bytes("HELLO dev-1 token=00\nPING\n");
    let lines = d.take_lines();
    assert_eq!(
        err_code(&lines[0]),
        Some(ErrorCode::Unauthorized),
        "{lines:?}"
    );
    assert_eq!(lines[1], "PONG");
    assert_eq!(d.conn.session(), None);
    assert_eq!(
        d.next_timeout(),
        Some(derive_user_timeout(D)),
        "no heartbeat without a session: only the acknowledgement watch"
    );
    // It may try again.
    d.sessions = Sessions::Open;
    d.bytes("HELLO dev-1\n");
    assert!(matches!(reply(&d.take_lines()[0]), Reply::Welcome(..)));
}

#[test]
fn bad_hellos_get_clear_errors() {
    let mut d = driver(Jobs::RunAtOnce);
    for (line, needle) in [
        ("HELLO\n", "missing device id"),
        ("HELLO bad/id\n", "device id must be"),
        (&format!("HELLO {}\n", "a".repeat(129)), "device id must be"),
        ("HELLO dev heartbeat=soon\n", "not a whole number"),
        ("HELLO dev color=blue\n", "unexpected argument"),
    ] {
        d.bytes(line);
        let lines = d.take_lines();
        assert_eq!(lines.len(), 1, "{line:?}: {lines:?}");
        assert_eq!(
            err_code(&lines[0]),
            Some(ErrorCode::BadRequest),
            "{line:?}: {lines:?}"
        );
        assert!(lines[0].contains(needle), "{line:?}: {lines:?}");
    }
    assert_eq!(d.conn.session(), None);
    d.bytes("HELLO dev heartbeat=0\n");
    assert_eq!(
        d.take_lines(),
        ["WELCOME 0000000000000001 heartbeat=1 dead-after=1.5 clamped-from=0"]
    );
}

#[test]
fn a_session_answered_after_the_peer_is_gone_writes_nothing() {
    // Found by fuzz/connection: the driver answers a `SessionRequested` that was
    // queued before the reset, and WELCOME (or ERR) landed in a closed connection.
    for open in [true, false] {
        let mut d = driver(Jobs::RunAtOnce);
        d.sessions = Sessions::Manual;
        d.bytes("HELLO dev-1\n");
        d.error(Cause::PeerReset);
        assert_eq!(d.closed(), Some(&close_event(Cause::PeerReset, false)));
        let now = d.now();
        if open {
            d.conn.handle_session_opened(now, SessionId(7));
        } else {
            d.conn
                .handle_session_refused(now, ErrorCode::Unauthorized, "late");
        }
        assert_eq!(d.conn.poll_transmit(), b"", "a reply after Close");
        assert_eq!(d.conn.poll_timeout(), None);
        d.assert_dead();
    }
}
