//! The raw-socket peers (`hangup lab peer`), for faults the real client cannot be
//! made to show: replies left unread in the socket, a server streaming a large reply,
//! and a reader that stops while far more is queued for it than buffers hold. The lab runs them inside the client namespace, like the client.
//!
//! Each prints `ready <local address>` once connected, so the lab knows which
//! connection of the server's it is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::Duration;

use hangup_core::{Command, DEFAULT_SEED};

use crate::error::LabError;

/// The replies a streaming peer reads before it says `streaming`.
pub const STREAMING_AFTER_BYTES: u64 = 1 << 20;

/// `STATUS` lines per request burst of [`PeerMode::LargeReplies`]: ~29 KB asking for
/// ~250 KB of replies.
pub const BURST_LINES: usize = 4_096;

/// What the peer does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// Sends `PING unread` and an endless `JOB`, and never reads: the `PONG` and
    /// `ACCEPTED` stay in its socket, so that its death is an RST.
    Unread,
    /// Asks for large replies and reads them as fast as it can: writes of
    /// [`BURST_LINES`] `STATUS` lines, one burst ahead of the replies. The server
    /// always has replies to stream, and never a partial line (the bursts are whole
    /// lines and fit its receive window), so a dead peer leaves it with unacknowledged
    /// data and nothing else to go by.
    LargeReplies,
    /// Pipelines `STATUS` lines without end from one thread and reads as fast as it can
    /// from another, with a small receive buffer: when it stops reading, the server has
    /// far more to send than the socket buffers hold.
    Flood,
    /// Streams a large request without end: whole comment lines (`# uuu…`, ~4 KB each,
    /// which the server reads and ignores), so the server only receives and has nothing
    /// of its own in flight. With a device it first opens a session (`HELLO`, waits for
    /// `WELCOME`): the stream is what keeps it heard.
    Upload,
    /// Any protocol (`--target`): sends the payload, then reads whatever comes, as fast
    /// as it can; `streaming` once [`STREAMING_AFTER_BYTES`] arrived.
    RawRead,
    /// Any protocol: sends the payload and never reads; prints `unread <bytes>` once the
    /// reply sits in its socket (or `unread 0` after a second without one).
    RawUnread,
    /// Any protocol: sends the payload, [`HALF_CLOSE_AFTER`] later `shutdown(SHUT_WR)`
    /// (prints `half-closed <Unix ns just before>`), then reads until EOF (prints `replied` at the first byte,
    /// `eof <bytes read>` at the end).
    RawHalfClose,
    /// Any protocol: sends the payload, then filler bytes without end (the body of a
    /// large request the payload announced); `streaming` once
    /// [`STREAMING_AFTER_BYTES`] went out.
    RawUpload,
}

/// How long [`PeerMode::RawHalfClose`] waits after its payload before its FIN.
pub const HALF_CLOSE_AFTER: Duration = Duration::from_millis(200);

/// What a peer says before its mode's traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerOptions {
    /// Open a session for this device first (`HELLO <device> heartbeat=<secs>`).
    pub device: Option<String>,
    /// The heartbeat to propose with `device`, in seconds.
    pub heartbeat: Option<u64>,
    /// The raw modes' first bytes (an HTTP request, an MQTT CONNECT, …).
    pub payload: Vec<u8>,
}

/// One line of [`PeerMode::Upload`]'s stream: a comment, ignored by the server.
fn upload_line() -> String {
    format!("# {}\n", "u".repeat(4000))
}

impl FromStr for PeerMode {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerMode::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| LabError::UnknownName {
                kind: "peer mode",
                name: s.to_owned(),
                expected: PeerMode::ALL.map(PeerMode::name).join(", "),
            })
    }
}

impl PeerMode {
    /// Every mode.
    pub const ALL: [PeerMode; 8] = [
        PeerMode::Unread,
        PeerMode::LargeReplies,
        PeerMode::Flood,
        PeerMode::Upload,
        PeerMode::RawRead,
        PeerMode::RawUnread,
        PeerMode::RawHalfClose,
        PeerMode::RawUpload,
    ];

    /// The name `hangup lab peer --mode` takes.
    pub const fn name(self) -> &'static str {
        match self {
            PeerMode::Unread => "unread",
            PeerMode::LargeReplies => "large-replies",
            PeerMode::Flood => "flood",
            PeerMode::Upload => "upload",
            PeerMode::RawRead => "raw-read",
            PeerMode::RawUnread => "raw-unread",
            PeerMode::RawHalfClose => "raw-half-close",
            PeerMode::RawUpload => "raw-upload",
        }
    }
}

/// Runs a peer against `server` until it is killed or the connection ends. Prints
/// `ready <local address>` once connected and, in the streaming modes, `streaming`
/// once [`STREAMING_AFTER_BYTES`] of replies were read.
pub fn run_peer(server: SocketAddr, mode: PeerMode, options: &PeerOptions) -> Result<(), LabError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |err| LabError::io(what, err)
    };
    let mut stream = connect(server, mode).map_err(io("connect"))?;
    stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    let local = stream.local_addr().map_err(io("local address"))?;
    if let Some(device) = &options.device {
        open_session(&mut stream, device, options.heartbeat)?;
    }
    let burst = format!("{}\n", Command::Status).repeat(BURST_LINES);
    if mode.is_raw() {
        stream
            .write_all(&options.payload)
            .map_err(io("send the payload"))?;
    }
    match mode {
        PeerMode::RawRead => {
            say(&format!("ready {local}"));
            read_all(&mut stream);
            Ok(())
        }
        PeerMode::RawUnread => {
            say(&format!("ready {local}"));
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            let mut queued = 0;
            while std::time::Instant::now() < deadline {
                queued = bytes_queued(&stream);
                if queued > 0 {
                    // Let the rest of the reply land too.
                    std::thread::sleep(Duration::from_millis(50));
                    queued = bytes_queued(&stream);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            say(&format!("unread {queued}"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        PeerMode::RawHalfClose => {
            say(&format!("ready {local}"));
            // The request is in; its answer may be under way (and the lab has seen the
            // connection open) before the FIN follows it.
            std::thread::sleep(HALF_CLOSE_AFTER);
            // The time before the FIN leaves: the server may act on it before the lab
            // reads this line.
            let at = crate::events::ts_ns();
            stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(io("shutdown(SHUT_WR)"))?;
            say(&format!("half-closed {at}"));
            let mut received: u64 = 0;
            read_to_end(&mut stream, |n| {
                if received == 0 {
                    say("replied");
                }
                received += n as u64;
            });
            say(&format!("eof {received}"));
            Ok(())
        }
        PeerMode::RawUpload => {
            say(&format!("ready {local}"));
            let chunk = vec![b'u'; 64 * 1024];
            let mut sent: u64 = 0;
            loop {
                stream.write_all(&chunk).map_err(io("send"))?;
                count_streamed(&mut sent, chunk.len());
            }
        }
        PeerMode::Upload => {
            say(&format!("ready {local}"));
            let chunk = upload_line().repeat(16);
            let mut sent: u64 = 0;
            loop {
                stream.write_all(chunk.as_bytes()).map_err(io("send"))?;
                count_streamed(&mut sent, chunk.len());
            }
        }
        PeerMode::Unread => {
            let mut lines = Vec::new();
            Command::Ping("unread".into()).encode(&mut lines);
            Command::Job {
                rounds: 10_000_000_000,
                seed: DEFAULT_SEED.to_owned(),
            }
            .encode(&mut lines);
            stream.write_all(&lines).map_err(io("send"))?;
            say(&format!("ready {local}"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        PeerMode::LargeReplies => {
            say(&format!("ready {local}"));
            let mut buf = vec![0u8; 1 << 16];
            let mut received: u64 = 0;
            let mut replies = 0;
            let mut bursts_sent = 0;
            loop {
                // One burst ahead: the next goes out when the last is half answered, so
                // the server never runs out of work, and at most 1.5 bursts (~43 KB) of
                // whole lines wait on its side, inside its receive window.
                while replies + BURST_LINES / 2 >= bursts_sent * BURST_LINES {
                    stream.write_all(burst.as_bytes()).map_err(io("send"))?;
                    bursts_sent += 1;
                }
                let n = read_some(&mut stream, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                replies += buf[..n].iter().filter(|&&b| b == b'\n').count();
                count_streamed(&mut received, n);
            }
        }
        PeerMode::Flood => {
            say(&format!("ready {local}"));
            let mut writer = stream.try_clone().map_err(io("clone the socket"))?;
            std::thread::spawn(move || while writer.write_all(burst.as_bytes()).is_ok() {});
            let mut buf = vec![0u8; 1 << 16];
            let mut received: u64 = 0;
            loop {
                let n = read_some(&mut stream, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                count_streamed(&mut received, n);
            }
        }
    }
}

impl PeerMode {
    /// Whether the mode speaks no protocol of its own (the `--target` peers).
    pub const fn is_raw(self) -> bool {
        matches!(
            self,
            PeerMode::RawRead | PeerMode::RawUnread | PeerMode::RawHalfClose | PeerMode::RawUpload
        )
    }
}

/// Reads until EOF (or an error, which ends the connection as well); `streaming` once
/// [`STREAMING_AFTER_BYTES`] arrived.
fn read_all(stream: &mut TcpStream) {
    let mut received = 0;
    read_to_end(stream, |n| count_streamed(&mut received, n));
}

/// Reads until EOF or an error (either ends the connection), calling `on_read` with
/// each read's byte count.
fn read_to_end(stream: &mut TcpStream, mut on_read: impl FnMut(usize)) {
    let mut buf = vec![0u8; 1 << 16];
    while let n @ 1.. = read_some(stream, &mut buf).unwrap_or(0) {
        on_read(n);
    }
}

/// Adds `n` bytes to `total`, saying `streaming` when it passes
/// [`STREAMING_AFTER_BYTES`].
fn count_streamed(total: &mut u64, n: usize) {
    let before = *total;
    *total += n as u64;
    if before < STREAMING_AFTER_BYTES && *total >= STREAMING_AFTER_BYTES {
        say("streaming");
    }
}

/// Bytes received and not read (`SIOCINQ`).
fn bytes_queued(stream: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer given, which lives on our stack.
    let result = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut queued) };
    if result == 0 {
        queued
    } else {
        0
    }
}

/// `HELLO <device> [heartbeat=<secs>]`, then the reply line, which must be `WELCOME`.
fn open_session(
    stream: &mut TcpStream,
    device: &str,
    heartbeat: Option<u64>,
) -> Result<(), LabError> {
    let hello = Command::Hello {
        device: device.to_owned(),
        token: None,
        heartbeat: heartbeat.map(Duration::from_secs),
    };
    stream
        .write_all(format!("{hello}\n").as_bytes())
        .map_err(|err| LabError::io("send HELLO", err))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if read_some(stream, &mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    match hangup_core::Reply::parse(line.trim_end()) {
        Ok(hangup_core::Reply::Welcome(..)) => Ok(()),
        _ => Err(LabError::io(
            format!("HELLO answered with `{}`", line.trim_end()),
            std::io::ErrorKind::InvalidData.into(),
        )),
    }
}

/// The flood peer's receive buffer: small and fixed (no autotuning), so that when it
/// stops reading, the server's write timer starts within milliseconds rather than after
/// megabytes of buffers have filled.
const FLOOD_RCVBUF: usize = 32 * 1024;

fn connect(server: SocketAddr, mode: PeerMode) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // RawRead: a target's stalled reader, like the flood peer.
    if matches!(mode, PeerMode::Flood | PeerMode::RawRead) {
        socket.set_recv_buffer_size(FLOOD_RCVBUF)?;
    }
    socket.connect(&server.into())?;
    Ok(socket.into())
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, LabError> {
    loop {
        match stream.read(buf) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other.map_err(|err| LabError::io("read", err)),
        }
    }
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
