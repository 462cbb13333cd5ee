//! The codec both ways, on generated input: what a client encodes the server parses
//! back to the same command; what the server writes a client parses back to the same
//! reply; and no byte string makes the reply parser panic.

use std::time::Duration;

use hangup_core::{
    parse_line, Command, ErrorCode, Heartbeat, Reply, SessionId, StatusCounts, MAX_LINE,
};
use proptest::prelude::*;

const MAX_ROUNDS: u64 = 10_000_000_000;

/// A command as a client would send it: single-word device, token and seed, PING data
/// without leading or trailing whitespace (the server trims the line) or a CR inside
/// (refused), whole seconds.
fn command() -> impl Strategy<Value = Command> {
    let word = "[^\\s\\x00]{1,20}";
    prop_oneof![
        (
            "[A-Za-z0-9._:-]{1,128}",
            proptest::option::of("[0-9a-f]{1,64}"),
            proptest::option::of((0u64..100_000).prop_map(Duration::from_secs)),
        )
            .prop_map(|(device, token, heartbeat)| Command::Hello {
                device,
                token,
                heartbeat
            }),
        Just(Command::Ping(String::new())),
        "[^\\s\\x00]([^\\n\\r\\x00]{0,60}[^\\s\\x00])?".prop_map(Command::Ping),
        (1..=MAX_ROUNDS, word).prop_map(|(rounds, seed)| Command::Job { rounds, seed }),
        any::<u64>().prop_map(Command::Cancel),
        Just(Command::Status),
        Just(Command::Bye),
    ]
}

/// Whole milliseconds: the precision `WELCOME` carries.
fn millis() -> impl Strategy<Value = Duration> {
    (0u64..1 << 40, 0u32..1000).prop_map(|(secs, ms)| Duration::new(secs, ms * 1_000_000))
}

/// Any reply the server may write. Free text never holds a line ending.
fn reply() -> impl Strategy<Value = Reply> {
    let text = "[^\\n\\r]{0,60}";
    prop_oneof![
        text.prop_map(Reply::Pong),
        any::<u64>().prop_map(Reply::Accepted),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(id, digest)| Reply::Done(id, digest)),
        any::<u64>().prop_map(Reply::Cancelled),
        any::<[u64; 4]>().prop_map(|[c, s, r, q]| Reply::Status(StatusCounts {
            connections: c,
            sessions: s,
            jobs_running: r,
            jobs_queued: q,
        })),
        Just(Reply::Bye),
        (
            any::<u64>(),
            millis(),
            millis(),
            proptest::option::of(millis())
        )
            .prop_map(|(id, interval, dead_after, clamped_from)| Reply::Welcome(
                SessionId(id),
                Heartbeat {
                    interval,
                    dead_after,
                    clamped_from
                }
            )),
        Just(Reply::KickedTakeover),
        Just(Reply::GoawayShutdown),
        Just(Reply::Probe),
        (proptest::sample::select(&ErrorCode::ALL[..]), text)
            .prop_map(|(code, message)| Reply::Err(code, message)),
    ]
}

proptest! {
    #[test]
    fn encoded_commands_parse_back_to_themselves(command in command()) {
        let mut line = Vec::new();
        command.encode(&mut line);
        prop_assert_eq!(line.pop(), Some(b'\n'));
        prop_assert!(line.len() <= MAX_LINE);
        let displayed = command.to_string();
        prop_assert_eq!(line.as_slice(), displayed.as_bytes());
        prop_assert_eq!(parse_line(&line, MAX_ROUNDS), Ok(Some(command)));
    }

    #[test]
    fn written_replies_parse_back_to_themselves(reply in reply()) {
        let line = reply.to_string();
        prop_assert_eq!(Reply::parse(&line), Ok(reply.clone()));
        let mut encoded = Vec::new();
        reply.encode(&mut encoded);
        // The encoder's own path for PONG writes what Display writes.
        prop_assert_eq!(&encoded, &format!("{line}\n").into_bytes());
        prop_assert_eq!(Reply::parse(&encoded), Ok(reply.clone()));
        let crlf = format!("{line}\r\n");
        prop_assert_eq!(Reply::parse(crlf), Ok(reply));
    }

    #[test]
    fn the_reply_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Reply::parse(&bytes);
    }

    /// Near misses of real replies: whatever parses prints back as the very line, so a
    /// client may print the parsed reply instead of the bytes.
    #[test]
    fn whatever_parses_is_canonical(
        line in "(PONG|ACCEPTED|DONE|CANCELLED|STATUS|BYE|WELCOME|KICKED|GOAWAY|ERR)( [0-9a-z_=.+-]{0,20}){0,5}"
    ) {
        if let Ok(reply) = Reply::parse(&line) {
            prop_assert_eq!(reply.to_string(), line);
        }
    }
}

#[test]
fn whatever_parses_is_canonical_for_real_server_lines() {
    for line in [
        "WELCOME 00000000deadbeef heartbeat=1 dead-after=1.5 clamped-from=0",
        "STATUS connections=1 sessions=1 jobs_running=0 jobs_queued=0",
        "ERR not-found no job 3",
        "PONG  two spaces",
    ] {
        assert_eq!(Reply::parse(line).unwrap().to_string(), line);
    }
}
