//! The line protocol (SPEC §3): a bounded line decoder, commands and replies.
//!
//! Lines are UTF-8 and end in `\n` (`\r\n` accepted); a line is at most
//! [`MAX_LINE`] bytes. An over-long line is discarded up to its newline without being
//! buffered, so a peer that sends 100 MB without a newline costs at most one line of
//! memory.

use std::fmt;
use std::time::Duration;

use crate::session::{Heartbeat, SessionId};

/// The longest line, in bytes, not counting the line ending.
pub const MAX_LINE: usize = 4096;

/// One item out of the [`LineDecoder`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its line ending.
    Line(&'a [u8]),
    /// A line longer than the limit was discarded up to and including its newline.
    TooLong,
}

/// Splits a byte stream into lines, never holding more than one line's worth of bytes.
#[derive(Debug, Default)]
pub struct LineDecoder {
    partial: Vec<u8>,
    discarding: bool,
    max_line: usize,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            discarding: false,
            max_line,
        }
    }

    /// Whether bytes of an unfinished line (or of one being discarded) are pending.
    pub fn has_partial(&self) -> bool {
        self.discarding || !self.partial.is_empty()
    }

    /// Bytes currently buffered (at most `max_line + 1`).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes in; calls `on_frame` for every line completed by them.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (chunk, rest, complete) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.discarding {
                if complete {
                    self.discarding = false;
                    on_frame(Frame::TooLong);
                }
                continue;
            }
            // +1 leaves room for the `\r` of a `\r\n` ending on a maximal line.
            if self.partial.len() + chunk.len() > self.max_line + 1 {
                self.partial = Vec::new();
                if complete {
                    on_frame(Frame::TooLong);
                } else {
                    self.discarding = true;
                }
                continue;
            }
            if !complete {
                self.partial.extend_from_slice(chunk);
                continue;
            }
            let line: &[u8] = if self.partial.is_empty() {
                chunk
            } else {
                self.partial.extend_from_slice(chunk);
                &self.partial
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > self.max_line {
                on_frame(Frame::TooLong);
            } else {
                on_frame(Frame::Line(line));
            }
            // Give the buffer back: an idle connection should hold no line memory.
            self.partial = Vec::new();
        }
    }

    /// At end of input: the unfinished last line, if any, as a frame.
    pub fn finish(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        if std::mem::take(&mut self.discarding) {
            on_frame(Frame::TooLong);
        } else if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            on_frame(Frame::Line(line));
        }
    }
}

/// A job identifier, unique within its connection.
pub type JobId = u64;

/// A request from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELLO <device-id> [token=<hex>] [heartbeat=<secs>]`: open a session.
    Hello {
        /// The device id (1–128 chars of `A-Za-z0-9._:-`).
        device: String,
        /// The authentication token, if given.
        token: Option<String>,
        /// The proposed heartbeat, if given.
        heartbeat: Option<Duration>,
    },
    /// `PING [data]`.
    Ping(String),
    /// `JOB <rounds> [seed]`.
    Job {
        /// SHA-256 rounds to run.
        rounds: u64,
        /// The chain's starting bytes.
        seed: String,
    },
    /// `CANCEL <job-id>`.
    Cancel(JobId),
    /// `STATUS`.
    Status,
    /// `BYE`.
    Bye,
}

/// The line protocol's TCP port unless configured otherwise (SPEC §3).
pub const DEFAULT_PORT: u16 = 7557;

/// The seed a `JOB` without one starts from.
pub const DEFAULT_SEED: &str = "hangup";

/// An `ERR` code (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The line is not a well-formed command.
    BadRequest,
    /// The line was longer than [`MAX_LINE`].
    TooLong,
    /// The command word is not known.
    UnknownCommand,
    /// Authentication failed.
    Unauthorized,
    /// More jobs are queued than allowed.
    TooManyJobs,
    /// The client sends faster than allowed.
    RateLimited,
    /// The server is at its connection limit; the connection is closed.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
    /// No such job.
    NotFound,
    /// A partial line waited too long for its end; the connection is closed.
    Timeout,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::TooLong => "too-long",
            Self::UnknownCommand => "unknown-command",
            Self::Unauthorized => "unauthorized",
            Self::TooManyJobs => "too-many-jobs",
            Self::RateLimited => "rate-limited",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting-down",
            Self::NotFound => "not-found",
            Self::Timeout => "timeout",
        }
    }
}

/// A command that could not be parsed: the code and a message for `ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The `ERR` code.
    pub code: ErrorCode,
    /// A human message.
    pub message: String,
}

impl ParseError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Parses one line. `Ok(None)` for lines that are to be ignored (empty, or `#…`).
///
/// `max_rounds` bounds `JOB <rounds>`.
pub fn parse_line(line: &[u8], max_rounds: u64) -> Result<Option<Command>, ParseError> {
    if line.contains(&0) {
        return Err(ParseError::bad("line contains a NUL byte"));
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::bad("line is not valid UTF-8"))?;
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let (word, rest) = match trimmed.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (trimmed, ""),
    };
    let mut args = rest.split_whitespace();
    let no_more = |args: &mut std::str::SplitWhitespace<'_>, usage: &str| match args.next() {
        Some(extra) => Err(ParseError::bad(format!(
            "unexpected argument `{}`; usage: {usage}",
            truncate(extra)
        ))),
        None => Ok(()),
    };
    let command = match word.to_ascii_uppercase().as_str() {
        "PING" => Command::Ping(rest.to_owned()),
        "JOB" => {
            const USAGE: &str = "JOB <rounds> [seed]";
            let rounds = args
                .next()
                .ok_or_else(|| ParseError::bad(format!("missing rounds; usage: {USAGE}")))?;
            let rounds = parse_rounds(rounds, max_rounds)?;
            let seed = args.next().unwrap_or(DEFAULT_SEED).to_owned();
            no_more(&mut args, USAGE)?;
            Command::Job { rounds, seed }
        }
        "CANCEL" => {
            const USAGE: &str = "CANCEL <job-id>";
            let id = args
                .next()
                .ok_or_else(|| ParseError::bad(format!("missing job id; usage: {USAGE}")))?;
            let id = id.parse().map_err(|_| {
                ParseError::bad(format!(
                    "job id `{}` is not a number; usage: {USAGE}",
                    truncate(id)
                ))
            })?;
            no_more(&mut args, USAGE)?;
            Command::Cancel(id)
        }
        "STATUS" => {
            no_more(&mut args, "STATUS")?;
            Command::Status
        }
        "BYE" => {
            no_more(&mut args, "BYE")?;
            Command::Bye
        }
        "HELLO" => parse_hello(&mut args)?,
        _ => {
            return Err(ParseError {
                code: ErrorCode::UnknownCommand,
                message: format!(
                    "unknown command `{}`; known: HELLO PING JOB CANCEL STATUS BYE",
                    truncate(word)
                ),
            })
        }
    };
    Ok(Some(command))
}

fn parse_rounds(text: &str, max_rounds: u64) -> Result<u64, ParseError> {
    let rounds: u64 = text.parse().map_err(|_| {
        ParseError::bad(format!(
            "rounds `{}` is not a whole number from 1 to {max_rounds}",
            truncate(text)
        ))
    })?;
    if !(1..=max_rounds).contains(&rounds) {
        return Err(ParseError::bad(format!(
            "rounds {rounds} is out of range: 1 to {max_rounds}"
        )));
    }
    Ok(rounds)
}

const HELLO_USAGE: &str = "HELLO <device-id> [token=<hex>] [heartbeat=<secs>]";

fn parse_hello(args: &mut std::str::SplitWhitespace<'_>) -> Result<Command, ParseError> {
    let device = args
        .next()
        .ok_or_else(|| ParseError::bad(format!("missing device id; usage: {HELLO_USAGE}")))?;
    if !valid_device_id(device) {
        return Err(ParseError::bad(
            "device id must be 1-128 characters of A-Za-z0-9._:-",
        ));
    }
    let (mut token, mut heartbeat) = (None, None);
    for arg in args {
        match arg.split_once('=') {
            Some(("token", hex)) if !hex.is_empty() => token = Some(hex.to_owned()),
            Some(("heartbeat", secs)) => {
                let secs: u64 = secs.parse().map_err(|_| {
                    ParseError::bad(format!(
                        "heartbeat `{}` is not a whole number of seconds",
                        truncate(secs)
                    ))
                })?;
                heartbeat = Some(Duration::from_secs(secs));
            }
            _ => {
                return Err(ParseError::bad(format!(
                    "unexpected argument `{}`; usage: {HELLO_USAGE}",
                    truncate(arg)
                )))
            }
        }
    }
    Ok(Command::Hello {
        device: device.to_owned(),
        token,
        heartbeat,
    })
}

/// Whether `id` is a valid device id: 1–128 characters of `A-Za-z0-9._:-`.
pub fn valid_device_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Echoing a peer's text back in an error: keep it short.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Server-wide figures for a `STATUS` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Open connections.
    pub connections: u64,
    /// Open sessions.
    pub sessions: u64,
    /// Jobs running on a worker.
    pub jobs_running: u64,
    /// Jobs accepted and waiting.
    pub jobs_queued: u64,
}

/// A line from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `PONG [data]`.
    Pong(String),
    /// `ACCEPTED <job-id>`.
    Accepted(JobId),
    /// `DONE <job-id> <hex>`.
    Done(JobId, [u8; 32]),
    /// `CANCELLED <job-id>`.
    Cancelled(JobId),
    /// `STATUS …`.
    Status(StatusCounts),
    /// `BYE`.
    Bye,
    /// `WELCOME <session-id> heartbeat=<secs> dead-after=<secs> [clamped-from=<secs>]`.
    Welcome(SessionId, Heartbeat),
    /// `KICKED takeover`: another connection took over this device's session.
    KickedTakeover,
    /// `GOAWAY shutdown`: the server is shutting down; jobs in flight still finish.
    GoawayShutdown,
    /// `#`: a liveness probe; the client ignores it.
    Probe,
    /// `ERR <code> <message>`.
    Err(ErrorCode, String),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Pong(data) if data.is_empty() => f.write_str("PONG"),
            Reply::Pong(data) => write!(f, "PONG {data}"),
            Reply::Accepted(id) => write!(f, "ACCEPTED {id}"),
            Reply::Done(id, digest) => write!(f, "DONE {id} {}", hex::encode(digest)),
            Reply::Cancelled(id) => write!(f, "CANCELLED {id}"),
            Reply::Status(s) => write!(
                f,
                "STATUS connections={} sessions={} jobs_running={} jobs_queued={}",
                s.connections, s.sessions, s.jobs_running, s.jobs_queued
            ),
            Reply::Bye => f.write_str("BYE"),
            Reply::Welcome(id, heartbeat) => {
                write!(
                    f,
                    "WELCOME {id} heartbeat={} dead-after={}",
                    Secs(heartbeat.interval),
                    Secs(heartbeat.dead_after)
                )?;
                match heartbeat.clamped_from {
                    Some(asked) => write!(f, " clamped-from={}", Secs(asked)),
                    None => Ok(()),
                }
            }
            Reply::KickedTakeover => f.write_str("KICKED takeover"),
            Reply::GoawayShutdown => f.write_str("GOAWAY shutdown"),
            Reply::Probe => f.write_str("#"),
            Reply::Err(code, message) => write!(f, "ERR {} {message}", code.as_str()),
        }
    }
}

/// Seconds as the protocol writes them: `30`, `1.5`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, millis) = (self.0.as_secs(), self.0.subsec_millis());
        if millis == 0 {
            write!(f, "{secs}")
        } else {
            let fraction = format!("{millis:03}");
            write!(f, "{secs}.{}", fraction.trim_end_matches('0'))
        }
    }
}

impl Reply {
    /// Appends the reply and its `\n` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "{self}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(decoder: &mut LineDecoder, bytes: &[u8]) -> Vec<Result<String, ()>> {
        let mut out = Vec::new();
        decoder.feed(bytes, |f| match f {
            Frame::Line(l) => out.push(Ok(String::from_utf8_lossy(l).into_owned())),
            Frame::TooLong => out.push(Err(())),
        });
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut d = LineDecoder::new(16);
        assert_eq!(frames(&mut d, b"PI"), vec![]);
        assert!(d.has_partial());
        assert_eq!(
            frames(&mut d, b"NG\r\nJOB 1\nST"),
            vec![Ok("PING".into()), Ok("JOB 1".into())]
        );
        assert_eq!(frames(&mut d, b"ATUS\n"), vec![Ok("STATUS".into())]);
        assert!(!d.has_partial());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn discards_long_lines_without_buffering() {
        let mut d = LineDecoder::new(8);
        let big = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            assert_eq!(frames(&mut d, &big), vec![]);
            assert!(d.buffered() <= 9);
        }
        assert_eq!(
            frames(&mut d, b"tail\nPING\n"),
            vec![Err(()), Ok("PING".into())]
        );
        // exactly max with CRLF is fine; max+1 is not
        assert_eq!(frames(&mut d, b"12345678\r\n"), vec![Ok("12345678".into())]);
        assert_eq!(frames(&mut d, b"123456789\n"), vec![Err(())]);
        assert_eq!(frames(&mut d, b"1234\r\n"), vec![Ok("1234".into())]);
    }

    #[test]
    fn finish_flushes_last_line() {
        let mut d = LineDecoder::new(8);
        assert_eq!(frames(&mut d, b"JOB 5"), vec![]);
        let mut got = Vec::new();
        d.finish(|f| got.push(matches!(f, Frame::Line(b"JOB 5"))));
        assert_eq!(got, vec![true]);
    }

    #[test]
    fn encodes_session_replies() {
        let line = |reply: Reply| reply.to_string();
        let heartbeat = Heartbeat::grant(Some(Duration::from_secs(1)));
        assert_eq!(
            line(Reply::Welcome(SessionId(0x2a), heartbeat)),
            "WELCOME 000000000000002a heartbeat=1 dead-after=1.5"
        );
        let clamped = Heartbeat::grant(Some(Duration::from_secs(0)));
        assert_eq!(
            line(Reply::Welcome(SessionId(1), clamped)),
            "WELCOME 0000000000000001 heartbeat=1 dead-after=1.5 clamped-from=0"
        );
        let default = Heartbeat::grant(None);
        assert_eq!(
            line(Reply::Welcome(SessionId(1), default)),
            "WELCOME 0000000000000001 heartbeat=30 dead-after=45"
        );
        assert_eq!(line(Reply::KickedTakeover), "KICKED takeover");
        assert_eq!(line(Reply::GoawayShutdown), "GOAWAY shutdown");
    }

    #[test]
    fn parses_commands() {
        let p = |s: &str| parse_line(s.as_bytes(), 1000);
        assert_eq!(p("ping"), Ok(Some(Command::Ping(String::new()))));
        assert_eq!(
            p("PING  hello world"),
            Ok(Some(Command::Ping("hello world".into())))
        );
        assert_eq!(
            p("job 10"),
            Ok(Some(Command::Job {
                rounds: 10,
                seed: "hangup".into()
            }))
        );
        assert_eq!(
            p("JOB 10 abc"),
            Ok(Some(Command::Job {
                rounds: 10,
                seed: "abc".into()
            }))
        );
        assert_eq!(p("Cancel 3"), Ok(Some(Command::Cancel(3))));
        assert_eq!(p("STATUS"), Ok(Some(Command::Status)));
        assert_eq!(p("bye"), Ok(Some(Command::Bye)));
        assert_eq!(p(""), Ok(None));
        assert_eq!(p("   "), Ok(None));
        assert_eq!(p("# comment"), Ok(None));
        assert_eq!(
            p("HELLO dev-1 token=ab heartbeat=5"),
            Ok(Some(Command::Hello {
                device: "dev-1".into(),
                token: Some("ab".into()),
                heartbeat: Some(Duration::from_secs(5))
            }))
        );
    }

    #[test]
    fn rejects_bad_input_with_codes() {
        let code = |s: &[u8]| parse_line(s, 1000).unwrap_err().code;
        assert_eq!(code(b"JOB"), ErrorCode::BadRequest);
        assert_eq!(code(b"JOB 0"), ErrorCode::BadRequest);
        assert_eq!(code(b"JOB 1001"), ErrorCode::BadRequest);
        assert_eq!(code(b"JOB -5"), ErrorCode::BadRequest);
        assert_eq!(code(b"JOB ten"), ErrorCode::BadRequest);
        assert_eq!(code(b"JOB 99999999999999999999999"), ErrorCode::BadRequest);
        assert_eq!(code(b"JOB 5 a b"), ErrorCode::BadRequest);
        assert_eq!(code(b"CANCEL x"), ErrorCode::BadRequest);
        assert_eq!(code(b"STATUS now"), ErrorCode::BadRequest);
        assert_eq!(code(b"FROB"), ErrorCode::UnknownCommand);
        assert_eq!(code(b"PI\0NG"), ErrorCode::BadRequest);
        assert_eq!(code(b"PING \xff\xfe"), ErrorCode::BadRequest);
        assert_eq!(code(b"HELLO"), ErrorCode::BadRequest);
        assert_eq!(code(b"HELLO bad/id"), ErrorCode::BadRequest);
        assert_eq!(code(b"HELLO ok heartbeat=x"), ErrorCode::BadRequest);
        let long_word = "X".repeat(500);
        let err = parse_line(long_word.as_bytes(), 10).unwrap_err();
        assert!(err.message.len() < 200, "echoed input is truncated");
    }

    #[test]
    fn device_ids() {
        assert!(valid_device_id("a"));
        assert!(valid_device_id("sensor-12.eu:7_x"));
        assert!(!valid_device_id(""));
        assert!(!valid_device_id(&"a".repeat(129)));
        assert!(!valid_device_id("héllo"));
    }

    #[test]
    fn replies_encode() {
        let mut out = Vec::new();
        Reply::Accepted(7).encode(&mut out);
        Reply::Done(7, [0xab; 32]).encode(&mut out);
        Reply::Err(ErrorCode::TooManyJobs, "64 jobs queued".into()).encode(&mut out);
        Reply::Pong(String::new()).encode(&mut out);
        Reply::Status(StatusCounts {
            connections: 2,
            sessions: 0,
            jobs_running: 1,
            jobs_queued: 3,
        })
        .encode(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!(
                "ACCEPTED 7\nDONE 7 {}\nERR too-many-jobs 64 jobs queued\nPONG\nSTATUS connections=2 sessions=0 jobs_running=1 jobs_queued=3\n",
                "ab".repeat(32)
            )
        );
    }
}
