//! The line protocol (SPEC §3): a bounded line decoder, commands and replies.
//!
//! Lines are UTF-8 and end in `\n` (`\r\n` accepted); a line is at most
//! [`MAX_LINE`] bytes. An over-long line is discarded up to its newline without being
//! buffered, so a peer that sends 100 MB without a newline costs at most one line of
//! memory.

use std::borrow::Cow;
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

/// A line longer than the decoder's limit, discarded up to and including its newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// A line out of [`LineDecoder::next_line`], without its line ending.
pub type Line<'a> = Result<Cow<'a, [u8]>, TooLong>;

/// Splits a byte stream into lines, never holding more than one line's worth of bytes.
#[derive(Debug, Default)]
pub struct LineDecoder {
    partial: Vec<u8>,
    discarding: bool,
    /// 32 bits: a decoder per connection, and no line is 4 GiB.
    max_line: u32,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            discarding: false,
            max_line: u32::try_from(max_line).unwrap_or(u32::MAX),
        }
    }

    fn max_line(&self) -> usize {
        self.max_line as usize
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
            let (line, rest) = self.next_line(bytes);
            bytes = rest;
            match line {
                Some(Ok(line)) => on_frame(Frame::Line(&line)),
                Some(Err(TooLong)) => on_frame(Frame::TooLong),
                None => {}
            }
        }
    }

    /// Feeds `bytes` up to and including their first newline: the line that completes,
    /// if one does, and the bytes after it (not fed yet). The line is borrowed from
    /// `bytes` when it began in them (no copy: a heartbeat costs no allocation), or
    /// taken out of the decoder with its buffer when an earlier feed began it.
    pub fn next_line<'a>(&mut self, bytes: &'a [u8]) -> (Option<Line<'a>>, &'a [u8]) {
        let (chunk, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[..i], &bytes[i + 1..], true),
            None => (bytes, &[][..], false),
        };
        if self.discarding {
            if complete {
                self.discarding = false;
                return (Some(Err(TooLong)), rest);
            }
            return (None, rest);
        }
        // +1 leaves room for the `\r` of a `\r\n` ending on a maximal line.
        if self.partial.len() + chunk.len() > self.max_line() + 1 {
            self.partial = Vec::new();
            if complete {
                return (Some(Err(TooLong)), rest);
            }
            self.discarding = true;
            return (None, rest);
        }
        if !complete {
            self.partial.extend_from_slice(chunk);
            return (None, rest);
        }
        let line = if self.partial.is_empty() {
            Cow::Borrowed(chunk.strip_suffix(b"\r").unwrap_or(chunk))
        } else {
            // The buffer leaves with the line: an idle connection holds no line memory.
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(chunk);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Cow::Owned(line)
        };
        if line.len() > self.max_line() {
            return (Some(Err(TooLong)), rest);
        }
        (Some(Ok(line)), rest)
    }

    /// At end of input: the unfinished last line, if any, as a frame.
    pub fn finish(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        match self.finish_line() {
            Some(Ok(line)) => on_frame(Frame::Line(&line)),
            Some(Err(TooLong)) => on_frame(Frame::TooLong),
            None => {}
        }
    }

    /// At end of input: the unfinished last line, if any, taken out of the decoder
    /// with its buffer.
    pub fn finish_line(&mut self) -> Option<Line<'static>> {
        if std::mem::take(&mut self.discarding) {
            return Some(Err(TooLong));
        }
        if self.partial.is_empty() {
            return None;
        }
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        // The buffer holds one byte more than a line for a `\r`; without one, a last
        // line of `max_line + 1` bytes is too long like any other.
        if line.len() > self.max_line() {
            return Some(Err(TooLong));
        }
        Some(Ok(Cow::Owned(line)))
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

impl fmt::Display for Command {
    /// The command as a line without its `\n`, in the form [`parse_line`] reads back:
    /// uppercase, `JOB` without its seed when it is [`DEFAULT_SEED`], `HELLO`'s
    /// heartbeat in whole seconds (a fraction rounds up, as the server counts seconds).
    ///
    /// A `PING` round-trips when its data is one line without NUL bytes or CRs (no
    /// line may hold one) or leading or trailing whitespace (the server trims it); a
    /// `JOB` seed when it is a single word of at most [`MAX_SEED_LEN`] bytes, a `HELLO`
    /// token when it is a single word, and a `HELLO` device when it is a valid device
    /// id ([`valid_device_id`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Hello {
                device,
                token,
                heartbeat,
            } => {
                write!(f, "HELLO {device}")?;
                if let Some(token) = token {
                    write!(f, " token={token}")?;
                }
                match heartbeat {
                    Some(heartbeat) => write!(f, " heartbeat={}", whole_secs_up(*heartbeat)),
                    None => Ok(()),
                }
            }
            Command::Ping(data) if data.is_empty() => f.write_str("PING"),
            Command::Ping(data) => write!(f, "PING {data}"),
            Command::Job { rounds, seed } if seed == DEFAULT_SEED => write!(f, "JOB {rounds}"),
            Command::Job { rounds, seed } => write!(f, "JOB {rounds} {seed}"),
            Command::Cancel(id) => write!(f, "CANCEL {id}"),
            Command::Status => f.write_str("STATUS"),
            Command::Bye => f.write_str("BYE"),
        }
    }
}

impl Command {
    /// Appends the command and its `\n` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "{self}");
    }
}

/// Whole seconds, a fraction rounded up: `HELLO heartbeat=` takes whole seconds.
fn whole_secs_up(duration: Duration) -> u64 {
    // Saturating: `Duration::MAX` has a fraction on `u64::MAX` seconds.
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// The line protocol's TCP port unless configured otherwise (SPEC §3).
pub const DEFAULT_PORT: u16 = 7557;

/// The longest `JOB` seed, in bytes: a chain's start needs no more, and 64 queued jobs
/// per connection stay small.
pub const MAX_SEED_LEN: usize = 256;

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
    /// Every code, in the order of SPEC §3.
    pub const ALL: [ErrorCode; 10] = [
        Self::BadRequest,
        Self::TooLong,
        Self::UnknownCommand,
        Self::Unauthorized,
        Self::TooManyJobs,
        Self::RateLimited,
        Self::Busy,
        Self::ShuttingDown,
        Self::NotFound,
        Self::Timeout,
    ];

    /// The code sent on the wire as `code`, if it is one (case-sensitive).
    pub fn from_wire(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

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
    // The line's own `\r\n` ending is gone by now: a CR left inside would be echoed
    // back (`PING a\rb`) and put a bare CR on the wire.
    if line.contains(&b'\r') {
        return Err(ParseError::bad(
            "line contains a carriage return (CR) inside it; end lines with \\n or \\r\\n",
        ));
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
    let mut upper = [0u8; COMMAND_WORD_MAX];
    let command = match command_word(word, &mut upper) {
        b"PING" => Command::Ping(rest.to_owned()),
        b"JOB" => {
            const USAGE: &str = "JOB <rounds> [seed]";
            let rounds = args
                .next()
                .ok_or_else(|| ParseError::bad(format!("missing rounds; usage: {USAGE}")))?;
            let rounds = parse_rounds(rounds, max_rounds)?;
            let seed = args.next().unwrap_or(DEFAULT_SEED).to_owned();
            if seed.len() > MAX_SEED_LEN {
                return Err(ParseError::bad(format!(
                    "seed is {} bytes; at most {} are accepted",
                    seed.len(),
                    MAX_SEED_LEN
                )));
            }
            no_more(&mut args, USAGE)?;
            Command::Job { rounds, seed }
        }
        b"CANCEL" => {
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
        b"STATUS" => {
            no_more(&mut args, "STATUS")?;
            Command::Status
        }
        b"BYE" => {
            no_more(&mut args, "BYE")?;
            Command::Bye
        }
        b"HELLO" => parse_hello(&mut args)?,
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

/// The longest command word (`CANCEL`, `STATUS`).
const COMMAND_WORD_MAX: usize = 6;

/// `word` in upper case, in `upper` (a line costs no allocation), or nothing if it is
/// longer than any command word.
fn command_word<'a>(word: &str, upper: &'a mut [u8; COMMAND_WORD_MAX]) -> &'a [u8] {
    let Some(upper) = upper.get_mut(..word.len()) else {
        return b"";
    };
    upper.copy_from_slice(word.as_bytes());
    upper.make_ascii_uppercase();
    upper
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
        match self {
            // Every heartbeat's reply: written without the formatting machinery.
            Reply::Pong(data) => {
                out.extend_from_slice(b"PONG");
                if !data.is_empty() {
                    out.push(b' ');
                    out.extend_from_slice(data.as_bytes());
                }
                out.push(b'\n');
            }
            // Writing into a Vec cannot fail.
            _ => {
                let _ = writeln!(out, "{self}");
            }
        }
    }
}

/// A server line that is not a reply of this protocol, from [`Reply::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyParseError {
    /// The line is not valid UTF-8.
    #[error("reply is not valid UTF-8")]
    NotUtf8,
    /// The line is empty; the protocol ignores empty lines.
    #[error("reply is empty")]
    Empty,
    /// The first word is not a reply the server sends (replies are uppercase).
    #[error("unknown reply `{0}`")]
    UnknownReply(String),
    /// The reply word is known, but what follows is not in the form the server writes.
    #[error("malformed {reply} reply; expected `{expected}`")]
    Malformed {
        /// The reply word.
        reply: &'static str,
        /// The form the server writes.
        expected: &'static str,
    },
    /// `ERR` with a code that SPEC §3 does not list.
    #[error("unknown error code `{0}`")]
    UnknownErrorCode(String),
}

impl Reply {
    /// Parses one line from the server: every line [`Reply`]'s `Display` writes.
    ///
    /// Replies are case-sensitive and uppercase, as the server writes them; one trailing
    /// `\n`, `\r\n` or `\r` is ignored. Any line starting with `#` is a [`Reply::Probe`]
    /// (SPEC §3: both sides ignore such lines). Otherwise the parser accepts exactly
    /// the canonical form, so `Reply::parse(line)?.to_string() == line`: a client may
    /// print the parsed reply instead of the bytes it read.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hangup_core::{ErrorCode, Reply, SessionId};
    ///
    /// let welcome = Reply::parse("WELCOME 000000000000002a heartbeat=1 dead-after=1.5\r")?;
    /// let Reply::Welcome(session, heartbeat) = welcome else { unreachable!() };
    /// assert_eq!(session, SessionId(42));
    /// assert_eq!(heartbeat.dead_after, Duration::from_millis(1500));
    /// assert_eq!(
    ///     Reply::parse(b"ERR not-found no job 7")?,
    ///     Reply::Err(ErrorCode::NotFound, "no job 7".into())
    /// );
    /// assert!(Reply::parse("pong").is_err());
    /// # Ok::<(), hangup_core::ReplyParseError>(())
    /// ```
    pub fn parse(line: impl AsRef<[u8]>) -> Result<Reply, ReplyParseError> {
        let line = line.as_ref();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| ReplyParseError::NotUtf8)?;
        if line.is_empty() {
            return Err(ReplyParseError::Empty);
        }
        if line.starts_with('#') {
            return Ok(Reply::Probe);
        }
        let (word, rest) = match line.split_once(' ') {
            Some((word, rest)) => (word, Some(rest)),
            None => (line, None),
        };
        let malformed = |reply: &'static str, expected: &'static str| ReplyParseError::Malformed {
            reply,
            expected,
        };
        match word {
            "PONG" => match rest {
                None => Ok(Reply::Pong(String::new())),
                Some(data) if !data.is_empty() => Ok(Reply::Pong(data.to_owned())),
                Some(_) => Err(malformed("PONG", "PONG [data]")),
            },
            "ACCEPTED" => rest
                .and_then(canonical_u64)
                .map(Reply::Accepted)
                .ok_or(malformed("ACCEPTED", "ACCEPTED <job-id>")),
            "DONE" => rest
                .and_then(|args| {
                    let (id, digest) = args.split_once(' ')?;
                    Some(Reply::Done(canonical_u64(id)?, lowercase_digest(digest)?))
                })
                .ok_or(malformed("DONE", "DONE <job-id> <64 lowercase hex>")),
            "CANCELLED" => rest
                .and_then(canonical_u64)
                .map(Reply::Cancelled)
                .ok_or(malformed("CANCELLED", "CANCELLED <job-id>")),
            "STATUS" => rest
                .and_then(parse_status)
                .map(Reply::Status)
                .ok_or(malformed(
                    "STATUS",
                    "STATUS connections=<n> sessions=<n> jobs_running=<n> jobs_queued=<n>",
                )),
            "BYE" => match rest {
                None => Ok(Reply::Bye),
                Some(_) => Err(malformed("BYE", "BYE")),
            },
            "WELCOME" => rest.and_then(parse_welcome).ok_or(malformed(
                "WELCOME",
                "WELCOME <session-id> heartbeat=<secs> dead-after=<secs> [clamped-from=<secs>]",
            )),
            "KICKED" => match rest {
                Some("takeover") => Ok(Reply::KickedTakeover),
                _ => Err(malformed("KICKED", "KICKED takeover")),
            },
            "GOAWAY" => match rest {
                Some("shutdown") => Ok(Reply::GoawayShutdown),
                _ => Err(malformed("GOAWAY", "GOAWAY shutdown")),
            },
            "ERR" => {
                let (code, message) = rest
                    .and_then(|args| args.split_once(' '))
                    .ok_or(malformed("ERR", "ERR <code> <message>"))?;
                let code = ErrorCode::from_wire(code)
                    .ok_or_else(|| ReplyParseError::UnknownErrorCode(truncate(code).to_owned()))?;
                Ok(Reply::Err(code, message.to_owned()))
            }
            _ => Err(ReplyParseError::UnknownReply(truncate(word).to_owned())),
        }
    }
}

/// A number as the server writes it: decimal digits, no sign, no leading zero.
fn canonical_u64(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if !digits_only || leading_zero {
        return None;
    }
    text.parse().ok()
}

/// Seconds as [`Secs`] writes them: `30`, `1.5`, `0.125` (milliseconds at most, no
/// trailing zero in the fraction).
fn canonical_secs(text: &str) -> Option<Duration> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let secs = canonical_u64(whole)?;
    let millis = match fraction {
        None => 0,
        Some(fraction) => {
            let well_formed = (1..=3).contains(&fraction.len())
                && fraction.bytes().all(|b| b.is_ascii_digit())
                && !fraction.ends_with('0');
            if !well_formed {
                return None;
            }
            format!("{fraction:0<3}").parse::<u32>().ok()?
        }
    };
    Some(Duration::new(secs, millis * 1_000_000))
}

/// A `DONE` digest: exactly 64 lowercase hex digits.
fn lowercase_digest(text: &str) -> Option<[u8; 32]> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

fn parse_status(args: &str) -> Option<StatusCounts> {
    let mut fields = args.split(' ');
    let mut field = |key: &str| {
        let (k, v) = fields.next()?.split_once('=')?;
        (k == key).then_some(())?;
        canonical_u64(v)
    };
    let counts = StatusCounts {
        connections: field("connections")?,
        sessions: field("sessions")?,
        jobs_running: field("jobs_running")?,
        jobs_queued: field("jobs_queued")?,
    };
    fields.next().is_none().then_some(counts)
}

fn parse_welcome(args: &str) -> Option<Reply> {
    let mut fields = args.split(' ');
    let id = fields.next()?;
    let lowercase_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if id.len() != 16 || !id.bytes().all(lowercase_hex) {
        return None;
    }
    let id = SessionId(u64::from_str_radix(id, 16).ok()?);
    let mut secs = |key: &str| canonical_secs(fields.next()?.strip_prefix(key)?);
    let interval = secs("heartbeat=")?;
    let dead_after = secs("dead-after=")?;
    let clamped_from = match fields.next() {
        None => None,
        Some(field) => Some(canonical_secs(field.strip_prefix("clamped-from=")?)?),
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Reply::Welcome(
        id,
        Heartbeat {
            interval,
            dead_after,
            clamped_from,
        },
    ))
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
    fn a_line_read_whole_is_borrowed_and_one_read_in_pieces_is_handed_over() {
        let mut d = LineDecoder::new(16);
        let (line, rest) = d.next_line(b"PING\r\nPI");
        assert_eq!(line, Some(Ok(Cow::Borrowed(&b"PING"[..]))));
        assert!(matches!(line, Some(Ok(Cow::Borrowed(_)))));
        assert_eq!(rest, b"PI");
        assert_eq!(d.next_line(rest), (None, &b""[..]));
        let (line, rest) = d.next_line(b"NG x\r\n");
        assert!(matches!(&line, Some(Ok(Cow::Owned(l))) if l == b"PING x"));
        assert!(rest.is_empty());
        assert_eq!(d.buffered(), 0);
        let (line, _) = d.next_line(b"0123456789abcdefg\n");
        assert_eq!(line, Some(Err(TooLong)));
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
    fn finish_line_takes_the_last_line_out_with_its_buffer() {
        let mut d = LineDecoder::new(8);
        assert_eq!(frames(&mut d, b"JOB"), vec![]);
        assert_eq!(frames(&mut d, b" 5\r"), vec![]);
        let line = d.finish_line();
        assert!(matches!(&line, Some(Ok(Cow::Owned(l))) if l == b"JOB 5"));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.finish_line(), None, "nothing is left to finish");

        let mut d = LineDecoder::new(4);
        assert_eq!(frames(&mut d, b"123456789"), vec![]);
        assert_eq!(d.finish_line(), Some(Err(TooLong)), "a discarded last line");
        assert!(!d.has_partial());
    }

    #[test]
    fn finish_rejects_a_last_line_one_byte_too_long() {
        // Found by fuzz/line_decoder: the `\r` byte of room let an unterminated last
        // line of max_line + 1 bytes out as a line.
        let mut d = LineDecoder::new(4);
        assert_eq!(frames(&mut d, b"12345"), vec![]);
        let mut got = Vec::new();
        d.finish(|f| got.push(f == Frame::TooLong));
        assert_eq!(got, vec![true]);
        assert!(!d.has_partial());

        let mut d = LineDecoder::new(4);
        assert_eq!(frames(&mut d, b"1234\r"), vec![]);
        let mut got = Vec::new();
        d.finish(|f| got.push(matches!(f, Frame::Line(b"1234"))));
        assert_eq!(got, vec![true], "a maximal line with its `\\r` is fine");
    }

    #[test]
    fn hello_heartbeat_near_duration_max_does_not_overflow() {
        // Found by fuzz/parse_line: rounding up Duration::MAX overflowed (a panic in
        // debug builds, `heartbeat=0` in release).
        let hello = Command::Hello {
            device: "d".into(),
            token: None,
            heartbeat: Some(Duration::MAX),
        };
        assert_eq!(hello.to_string(), format!("HELLO d heartbeat={}", u64::MAX));
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

    #[test]
    fn parses_every_reply_the_server_writes() {
        let p = |line: &str| Reply::parse(line);
        assert_eq!(p("PONG"), Ok(Reply::Pong(String::new())));
        assert_eq!(
            p("PONG hello  world"),
            Ok(Reply::Pong("hello  world".into()))
        );
        assert_eq!(p("ACCEPTED 7"), Ok(Reply::Accepted(7)));
        let done = format!("DONE 7 {}", "ab".repeat(32));
        assert_eq!(p(&done), Ok(Reply::Done(7, [0xab; 32])));
        assert_eq!(p("CANCELLED 3"), Ok(Reply::Cancelled(3)));
        assert_eq!(
            p("STATUS connections=2 sessions=0 jobs_running=1 jobs_queued=3"),
            Ok(Reply::Status(StatusCounts {
                connections: 2,
                sessions: 0,
                jobs_running: 1,
                jobs_queued: 3
            }))
        );
        assert_eq!(p("BYE"), Ok(Reply::Bye));
        assert_eq!(
            p("WELCOME 000000000000002a heartbeat=1 dead-after=1.5 clamped-from=0"),
            Ok(Reply::Welcome(
                SessionId(42),
                Heartbeat::grant(Some(Duration::ZERO))
            ))
        );
        assert_eq!(
            p("WELCOME 0000000000000001 heartbeat=30 dead-after=45"),
            Ok(Reply::Welcome(SessionId(1), Heartbeat::grant(None)))
        );
        assert_eq!(p("KICKED takeover"), Ok(Reply::KickedTakeover));
        assert_eq!(p("GOAWAY shutdown"), Ok(Reply::GoawayShutdown));
        assert_eq!(p("#"), Ok(Reply::Probe));
        assert_eq!(p("# any comment"), Ok(Reply::Probe));
        assert_eq!(
            p("ERR too-many-jobs 64 jobs queued"),
            Ok(Reply::Err(ErrorCode::TooManyJobs, "64 jobs queued".into()))
        );
        // One line ending is tolerated.
        assert_eq!(p("BYE\r"), Ok(Reply::Bye));
        assert_eq!(Reply::parse(b"ACCEPTED 1\r\n"), Ok(Reply::Accepted(1)));
    }

    #[test]
    fn welcome_seconds_keep_milliseconds() {
        let Ok(Reply::Welcome(_, heartbeat)) =
            Reply::parse("WELCOME 00000000000000ff heartbeat=2.25 dead-after=3.375")
        else {
            panic!("not a welcome")
        };
        assert_eq!(heartbeat.interval, Duration::from_millis(2250));
        assert_eq!(heartbeat.dead_after, Duration::from_millis(3375));
        assert_eq!(heartbeat.clamped_from, None);
    }

    #[test]
    fn rejects_what_the_server_never_writes() {
        use ReplyParseError as E;
        let p = |line: &[u8]| Reply::parse(line);
        assert_eq!(p(b""), Err(E::Empty));
        assert_eq!(p(b"\r\n"), Err(E::Empty));
        assert_eq!(p(b"PONG \xff"), Err(E::NotUtf8));
        assert_eq!(p(b"pong"), Err(E::UnknownReply("pong".into())));
        assert_eq!(p(b"HELLO x"), Err(E::UnknownReply("HELLO".into())));
        assert_eq!(
            p(b"ERR no-such-code x"),
            Err(E::UnknownErrorCode("no-such-code".into()))
        );
        for bad in [
            &b"PONG "[..],
            b"ACCEPTED",
            b"ACCEPTED x",
            b"ACCEPTED +1",
            b"ACCEPTED 01",
            b"ACCEPTED 1 2",
            b"ACCEPTED 99999999999999999999999",
            b"DONE 1",
            b"DONE 1 abcd",
            b"CANCELLED",
            b"STATUS",
            b"STATUS connections=1",
            b"STATUS sessions=0 connections=2 jobs_running=1 jobs_queued=3",
            b"STATUS connections=2 sessions=0 jobs_running=1 jobs_queued=3 extra=1",
            b"BYE now",
            b"WELCOME 2a heartbeat=1 dead-after=1.5",
            b"WELCOME 000000000000002A heartbeat=1 dead-after=1.5",
            b"WELCOME 000000000000002a dead-after=1.5 heartbeat=1",
            b"WELCOME 000000000000002a heartbeat=1.50 dead-after=1.5",
            b"WELCOME 000000000000002a heartbeat=1.1234 dead-after=1.5",
            b"WELCOME 000000000000002a heartbeat=1. dead-after=1.5",
            b"WELCOME 000000000000002a heartbeat=1 dead-after=1.5 clamped-from=",
            b"WELCOME 000000000000002a heartbeat=1 dead-after=1.5 clamped-from=0 x",
            b"KICKED",
            b"KICKED later",
            b"GOAWAY",
            b"ERR",
            b"ERR bad-request",
        ] {
            assert!(
                matches!(p(bad), Err(E::Malformed { .. })),
                "{:?} -> {:?}",
                String::from_utf8_lossy(bad),
                p(bad)
            );
        }
        let upper = format!("DONE 1 {}", "AB".repeat(32));
        assert!(Reply::parse(&upper).is_err(), "digests are lowercase");
        let message = Reply::parse("ERR").unwrap_err().to_string();
        assert_eq!(
            message,
            "malformed ERR reply; expected `ERR <code> <message>`"
        );
    }

    #[test]
    fn error_codes_read_back() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::from_wire("Busy"), None);
    }

    #[test]
    fn commands_encode_as_lines_the_server_reads() {
        let line = |command: Command| {
            let mut out = Vec::new();
            command.encode(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            line(Command::Hello {
                device: "dev-1".into(),
                token: Some("ab".into()),
                heartbeat: Some(Duration::from_secs(5)),
            }),
            "HELLO dev-1 token=ab heartbeat=5\n"
        );
        let hello = Command::Hello {
            device: "d".into(),
            token: None,
            heartbeat: Some(Duration::from_millis(1500)),
        };
        assert_eq!(hello.to_string(), "HELLO d heartbeat=2", "rounds up");
        assert_eq!(line(Command::Ping(String::new())), "PING\n");
        assert_eq!(line(Command::Ping("a b".into())), "PING a b\n");
        let job = |seed: &str| Command::Job {
            rounds: 9,
            seed: seed.into(),
        };
        assert_eq!(job(DEFAULT_SEED).to_string(), "JOB 9");
        assert_eq!(job("abc").to_string(), "JOB 9 abc");
        assert_eq!(Command::Cancel(4).to_string(), "CANCEL 4");
        assert_eq!(Command::Status.to_string(), "STATUS");
        assert_eq!(Command::Bye.to_string(), "BYE");
        for command in [job("abc"), job(DEFAULT_SEED), Command::Cancel(4), hello] {
            let parsed = parse_line(command.to_string().as_bytes(), 1000).unwrap();
            assert!(parsed.is_some());
        }
    }
}
