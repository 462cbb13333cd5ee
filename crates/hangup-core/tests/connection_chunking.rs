//! The same bytes, split at random points and read by a peer that takes random
//! amounts, must give the same replies: the connection may not depend on how TCP
//! segments or `read()` calls happen to fall. Faults come from a seeded PRNG.

mod common;

use common::{err_code, expected_digest, reply, Driver, Jobs, Peer, Rng};
use hangup_core::{ErrorCode, Event, HalfClosePolicy, Reply};

/// Every kind of line, including ones that straddle the limits.
fn script() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"PING first\r\nJOB 3 abc\njob 1\n\n# note\nSTATUS\n");
    s.extend_from_slice(b"CANCEL 99\nJOB 0\nFROB\nPI\0NG\nPING \xff\n");
    s.extend_from_slice(format!("PING {}\n", "m".repeat(4091)).as_bytes());
    s.extend_from_slice(format!("PING {}\r\n", "m".repeat(4092)).as_bytes());
    s.extend_from_slice(format!("{}\n", "L".repeat(20_000)).as_bytes());
    s.extend_from_slice(b"JOB 20 seed\nCANCEL 1\nPING last\n");
    s
}

fn run(chunks: &[&[u8]], rng: Option<&mut Rng>) -> (Vec<u8>, Vec<Event>) {
    let mut d = Driver::with(HalfClosePolicy::Probe, Jobs::RunAtOnce);
    let mut rng = rng;
    for chunk in chunks {
        if let Some(rng) = rng.as_deref_mut() {
            d.peer = match rng.range(0, 2) {
                0 => Peer::Stalled,
                _ => Peer::Trickle(rng.range(1, 300)),
            };
        }
        d.bytes(chunk);
    }
    d.set_peer(Peer::Reads);
    d.eof();
    assert!(d.closed().is_some());
    (d.received_bytes().to_vec(), d.take_events())
}

#[test]
fn random_splits_give_the_same_replies() {
    let script = script();
    let (reference, reference_events) = run(&[&script], None);
    assert!(reference_events.contains(&Event::JobCancelled {
        id: 1,
        cause: hangup_core::Cause::Local,
        was_running: true
    }));
    // Check the reference itself against the spec, independently of chunking.
    let text = String::from_utf8(reference.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "PONG first");
    assert_eq!(lines[1], "ACCEPTED 1");
    assert_eq!(lines[2], "ACCEPTED 2");
    assert!(matches!(reply(lines[3]), Reply::Status(_)));
    assert_eq!(err_code(lines[4]), Some(ErrorCode::NotFound));
    assert_eq!(err_code(lines[5]), Some(ErrorCode::BadRequest));
    assert_eq!(err_code(lines[6]), Some(ErrorCode::UnknownCommand));
    assert_eq!(err_code(lines[7]), Some(ErrorCode::BadRequest));
    assert_eq!(err_code(lines[8]), Some(ErrorCode::BadRequest));
    assert_eq!(lines[9].len(), 4096);
    assert_eq!(err_code(lines[10]), Some(ErrorCode::TooLong));
    assert_eq!(err_code(lines[11]), Some(ErrorCode::TooLong));
    assert_eq!(lines[12], "ACCEPTED 3");
    // Jobs run only once the whole read is parsed: CANCEL 1 finds job 1 running.
    assert_eq!(lines[13], "CANCELLED 1");
    assert_eq!(lines[14], "PONG last");
    assert_eq!(lines.len(), 15 + 2, "two DONE lines: {lines:?}");
    assert_eq!(
        lines[15],
        format!("DONE 2 {}", expected_digest("hangup", 1))
    );
    assert_eq!(lines[16], format!("DONE 3 {}", expected_digest("seed", 20)));

    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let max = [1, 7, 64, 5000][seed as usize % 4];
        let chunks = rng.chunks(&script, max);
        let (got, _) = run(&chunks, Some(&mut rng));
        // Where a read boundary falls decides whether a job finished before a later
        // line was parsed, so only the timing-independent replies must agree.
        assert_eq!(
            without_job_lines(&got),
            without_job_lines(&reference),
            "seed {seed}: replies differ"
        );
        // Jobs 2 and 3 are never cancelled, whatever the timing.
        let text = String::from_utf8(got).unwrap();
        assert!(
            text.contains(lines[15]) && text.contains(lines[16]),
            "seed {seed}"
        );
    }
}

/// The replies with lines whose order or content depend on when jobs run removed.
fn without_job_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| {
            !matches!(
                reply(l),
                Reply::Done(..)
                    | Reply::Cancelled(_)
                    | Reply::Status(_)
                    | Reply::Err(ErrorCode::NotFound, _)
            )
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn random_splits_of_job_free_lines_give_byte_identical_replies() {
    let mut script = Vec::new();
    for i in 0..200 {
        script.extend_from_slice(format!("PING {i}\r\n\n# c\nfrob {i}\nJOB x{i}\n").as_bytes());
    }
    script.extend_from_slice(format!("{}\n", "Q".repeat(9000)).as_bytes());
    script.extend_from_slice(b"PING end");
    let (reference, _) = run(&[&script], None);
    assert!(
        reference.ends_with(b"PONG end\n"),
        "the last line counts at eof"
    );
    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let max = [1, 3, 100, 10_000][seed as usize % 4];
        let chunks = rng.chunks(&script, max);
        let (got, _) = run(&chunks, Some(&mut rng));
        assert!(got == reference, "seed {seed}: replies differ");
    }
}
