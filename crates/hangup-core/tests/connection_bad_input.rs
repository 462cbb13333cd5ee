//! Malformed input (SPEC §3): every bad line gets its `ERR` and the connection stays
//! usable; over-long lines are discarded without being buffered.

mod common;

use common::{err_code, Driver, Jobs};
use hangup_core::{ErrorCode, Frame, HalfClosePolicy, LineDecoder, MAX_LINE};

fn driver() -> Driver {
    Driver::with(HalfClosePolicy::Probe, Jobs::Manual)
}

/// Sends `bad` then a PING; expects one `ERR <code> …` and then `PONG after`.
fn assert_err_then_usable(bad: &[u8], code: &str) {
    let mut d = driver();
    d.bytes(bad);
    d.bytes("PING after\n");
    let lines = d.take_lines();
    assert_eq!(
        lines.len(),
        2,
        "{:?}: {lines:?}",
        String::from_utf8_lossy(bad)
    );
    assert!(
        err_code(&lines[0]).map(ErrorCode::as_str) == Some(code),
        "{:?}: {lines:?}",
        String::from_utf8_lossy(bad)
    );
    assert!(lines[0].len() < 200, "the echo is kept short: {}", lines[0]);
    assert_eq!(lines[1], "PONG after");
    assert_eq!(d.take_events(), vec![], "no job started");
    assert_eq!(d.closed(), None);
}

#[test]
fn each_malformed_line_gets_its_error_and_the_connection_continues() {
    let cases: &[(&[u8], &str)] = &[
        (b"PING \xff\xfe\n", "bad-request"),
        (b"\xc3\x28\n", "bad-request"),
        (b"PI\0NG\n", "bad-request"),
        (b"\0\n", "bad-request"),
        (b"FROB\n", "unknown-command"),
        (b"frob with args\n", "unknown-command"),
        (b"JOB 0\n", "bad-request"),
        (b"JOB 10000000001\n", "bad-request"),
        (b"JOB 99999999999999999999999\n", "bad-request"),
        (b"JOB abc\n", "bad-request"),
        (b"JOB -1\n", "bad-request"),
        (b"JOB\n", "bad-request"),
        (b"JOB 5 seed extra\n", "bad-request"),
        (b"CANCEL\n", "bad-request"),
        (b"CANCEL one\n", "bad-request"),
        (b"STATUS please\n", "bad-request"),
        (b"BYE now\n", "bad-request"),
        (b"HELLO\n", "bad-request"),
        (b"HELLO dev/1\n", "bad-request"),
        (b"HELLO dev-1 heartbeat=-1\n", "bad-request"),
        // A CR inside a line would be echoed back as a bare CR on the wire.
        (b"PING a\rb\n", "bad-request"),
        (b"PING a\rb\r\n", "bad-request"),
        (b"\rPING\n", "bad-request"),
    ];
    for &(bad, code) in cases {
        assert_err_then_usable(bad, code);
    }
    let long_word = format!("{}\n", "X".repeat(4000));
    assert_err_then_usable(long_word.as_bytes(), "unknown-command");
}

#[test]
fn rejected_jobs_use_no_job_id() {
    let mut d = driver();
    d.bytes("JOB 0\nJOB 10000000001\nJOB abc\nJOB 10000000000\n");
    let lines = d.take_lines();
    assert_eq!(lines.len(), 4);
    // The maximum is allowed (and left running: it is 10^10 rounds).
    assert_eq!(lines[3], "ACCEPTED 1");
    assert_eq!(d.running().unwrap().rounds, 10_000_000_000);
}

#[test]
fn ignored_lines_get_no_reply() {
    let mut d = driver();
    d.bytes("\n\r\n   \n# a comment\n#\n  # indented comment\nping\r\nPiNg MiXeD\n");
    assert_eq!(d.take_lines(), ["PONG", "PONG MiXeD"]);
}

#[test]
fn over_long_line_is_too_long_and_the_next_line_works() {
    let mut d = driver();
    // Exactly at the limit is fine, also with `\r\n`.
    let max = format!("PING {}", "a".repeat(MAX_LINE - 5));
    assert_eq!(max.len(), MAX_LINE);
    d.bytes(format!("{max}\n{max}\r\n"));
    let expected = max.replacen("PING", "PONG", 1);
    assert_eq!(d.take_lines(), [expected.clone(), expected]);

    // One byte more is not.
    d.bytes(format!("{max}b\nPING ok\n"));
    let lines = d.take_lines();
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::TooLong), "{lines:?}");
    assert_eq!(lines[1], "PONG ok");

    // Nor across reads.
    d.bytes(&max);
    d.bytes("bc");
    d.bytes("\nPING ok2\n");
    let lines = d.take_lines();
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::TooLong), "{lines:?}");
    assert_eq!(lines[1], "PONG ok2");
    assert_eq!(lines.len(), 2);
}

#[test]
fn a_100_mb_line_without_newline_is_discarded_then_err_too_long() {
    let mut d = driver();
    let chunk = vec![b'z'; 64 * 1024];
    for _ in 0..(100 << 20) / chunk.len() {
        d.bytes(&chunk);
    }
    assert_eq!(
        d.take_lines(),
        Vec::<String>::new(),
        "nothing until its newline"
    );
    assert!(d.conn.interest().read);
    d.bytes("zzz\nPING alive\n");
    let lines = d.take_lines();
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::TooLong), "{lines:?}");
    assert_eq!(lines[1], "PONG alive");
    assert_eq!(lines.len(), 2);
}

#[test]
fn the_line_decoder_never_buffers_more_than_one_line() {
    // The decoder a Connection uses, on the same 100 MB: its buffer stays at one line.
    let mut decoder = LineDecoder::new(MAX_LINE);
    let chunk = vec![b'z'; 64 * 1024];
    let mut frames = 0;
    for _ in 0..(100 << 20) / chunk.len() {
        decoder.feed(&chunk, |_| frames += 1);
        assert!(decoder.buffered() <= MAX_LINE + 1);
    }
    assert_eq!(frames, 0);
    let mut got = Vec::new();
    decoder.feed(b"end\nPING\n", |frame| {
        got.push(match frame {
            Frame::TooLong => None,
            Frame::Line(line) => Some(line.to_vec()),
        })
    });
    assert_eq!(got, vec![None, Some(b"PING".to_vec())]);
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn an_over_long_last_line_at_eof_is_too_long() {
    let mut d = driver();
    d.bytes("y".repeat(10_000));
    d.eof();
    let lines = d.take_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(err_code(&lines[0]), Some(ErrorCode::TooLong), "{lines:?}");
    assert!(d.closed().is_some());
}

#[test]
fn a_seed_longer_than_the_limit_is_refused_and_one_at_the_limit_accepted() {
    let long = format!("JOB 1 {}\n", "s".repeat(hangup_core::MAX_SEED_LEN + 1));
    assert_err_then_usable(long.as_bytes(), "bad-request");
    let mut d = driver();
    d.bytes(format!("JOB 1 {}\n", "s".repeat(hangup_core::MAX_SEED_LEN)));
    assert_eq!(d.take_lines(), vec!["ACCEPTED 1"]);
}

#[test]
fn a_crlf_line_is_still_fine() {
    let mut d = driver();
    d.bytes("PING crlf\r\n");
    assert_eq!(d.take_lines(), vec!["PONG crlf"]);
}
