//! Load generation for `bench scale` and `bench mass-death`.
//!
//! One process may hold at most 20 000 descriptors here, so the sessions are spread
//! over several *load workers*: hidden `hangup bench load-worker` child processes, each
//! holding its share of sessions from its own source addresses (127.0.x.y, or
//! addresses inside the mass-death namespace), on one single-threaded tokio runtime.
//! Each address carries at most [`SESSIONS_PER_ADDRESS`] sessions: the kernel finds a
//! free port for a connect by probing the port range of the (source, destination)
//! pair, and probes get long and expensive (a lookup in the established table each)
//! as the range fills up.
//!
//! ```text
//!  parent ──spawn──▶ load-worker (source A, sessions 0..k)     stdout: JSON lines
//!         ──spawn──▶ load-worker (source B, sessions k..2k)    {"kind":"progress"…}
//!         ◀──────── {"kind":"ready"} from every worker          {"kind":"ready"…}
//!         ──stdin──▶ "measure"  (RTT and PONG counts restart)
//!         ──stdin──▶ "stop"     ◀── {"kind":"done", lost, pongs, rtt histogram}
//!         ──stdin──▶ "close" (or EOF): the sessions' sockets close
//! ```
//!
//! Every session connects, says `HELLO <prefix>-<n> heartbeat=<H>`, and then sends
//! `PING` every H (the first after a random part of H, so that the pings of all
//! sessions spread evenly) and times the `PONG`. A session that ends before "stop",
//! or whose `PONG` does not come, is *lost*. With [`LoadProtocol::Mqtt`] the same
//! sessions speak MQTT 3.1.1 to a broker instead (`bench scale --peer mosquitto`):
//! CONNECT with keepalive 2 × H and client id `<prefix>-<n>`, CONNACK, then PINGREQ
//! every H, timing the PINGRESP; everything else (schedule, limits, counting) is the same code.

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader as StdBufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use hangup_core::{Command as Request, Reply, ReplyParseError};

use super::histogram::Histogram;
use super::mqtt;
use super::{command_line, first_words};

/// What the load workers' sessions speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadProtocol {
    /// hangup's line protocol: `HELLO`, then `PING` → `PONG`.
    #[default]
    Line,
    /// MQTT 3.1.1: CONNECT (keepalive = 2 × the heartbeat), then PINGREQ → PINGRESP
    /// every heartbeat.
    Mqtt,
}

impl LoadProtocol {
    /// The name as `--protocol` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Mqtt => "mqtt",
        }
    }
}

impl std::fmt::Display for LoadProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LoadProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Line, Self::Mqtt]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("expected `line` or `mqtt`, got `{s}`"))
    }
}

/// One load worker's share, as `bench load-worker` takes it.
#[derive(Debug, Clone)]
pub struct LoadWorkerSettings {
    /// The server.
    pub target: SocketAddr,
    /// Source addresses, used in turn.
    pub source: Vec<IpAddr>,
    /// Sessions to open.
    pub connections: usize,
    /// Number of the first device (devices are `<prefix>-<n>`).
    pub first_device: u64,
    /// Device id prefix.
    pub device_prefix: String,
    /// Heartbeat, in whole seconds.
    pub heartbeat: u64,
    /// Connects plus HELLOs in flight.
    pub concurrency: usize,
    /// What the sessions speak.
    pub protocol: LoadProtocol,
    /// Close every session with a reset (SO_LINGER 0): the devices are to die with
    /// their link, and a FIN that can never arrive would leave an orphan socket
    /// retrying it for minutes (130 000 after a 100 000-session mass death, loading the
    /// machine for the next run).
    pub abort_on_close: bool,
}

/// Sessions per source address: about 14 % of a default port range (32768–60999).
pub(crate) const SESSIONS_PER_ADDRESS: usize = 4_000;

/// How long a connect plus `HELLO`, or a `PING`'s `PONG` (at least), may take.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// How often a worker reports its ramp-up.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct WorkerState {
    open: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    pongs: AtomicU64,
    measuring: AtomicBool,
    /// Open no more sessions (the parent saw the machine run low on memory).
    halted: AtomicBool,
    /// Sessions not attempted because of the halt.
    skipped: AtomicU64,
    /// [`LoadWorkerSettings::abort_on_close`].
    abort_on_close: bool,
    /// Why sessions could not open, by error.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Why open sessions ended before "stop".
    lost_reasons: Mutex<BTreeMap<String, u64>>,
    rtt: Mutex<Histogram>,
    stop: CancellationToken,
    /// The parent is done with the sessions ("close", or its end of stdin closed).
    release: CancellationToken,
}

impl WorkerState {
    fn count(map: &Mutex<BTreeMap<String, u64>>, reason: String) {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    fn lose(&self, reason: String) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        Self::count(&self.lost_reasons, reason);
    }
}

#[derive(Serialize)]
struct Line<'a> {
    kind: &'a str,
    open: u64,
    failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ramp_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_reasons: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pongs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_us: Option<Histogram>,
}

fn emit(line: &Line<'_>) {
    let mut out = io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// `hangup bench load-worker` (hidden): runs one worker until told to stop.
pub fn load_worker(args: &LoadWorkerSettings) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    runtime.block_on(run_worker(args));
    Ok(ExitCode::SUCCESS)
}

async fn run_worker(args: &LoadWorkerSettings) {
    let state = Arc::new(WorkerState {
        abort_on_close: args.abort_on_close,
        ..WorkerState::default()
    });
    // Commands from the parent; its end of stdin closing means it is gone: stop.
    let commands = state.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line.as_deref().map(str::trim) {
                Ok("measure") => {
                    *commands.rtt.lock().unwrap_or_else(|p| p.into_inner()) = Histogram::default();
                    commands.pongs.store(0, Ordering::Relaxed);
                    commands.measuring.store(true, Ordering::Relaxed);
                }
                Ok("halt") => commands.halted.store(true, Ordering::Relaxed),
                Ok("stop") => commands.stop.cancel(),
                Ok("close") | Err(_) => break,
                Ok(_) => {}
            }
        }
        commands.stop.cancel();
        commands.release.cancel();
    });

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let heartbeat = Duration::from_secs(args.heartbeat.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.connections as u64 {
        let device = format!("{}-{}", args.device_prefix, args.first_device + n);
        let (state, gate) = (state.clone(), gate.clone());
        let (source, target) = (args.source[n as usize % args.source.len()], args.target);
        let protocol = args.protocol;
        tasks.spawn(async move {
            session(&state, &gate, protocol, source, target, &device, heartbeat).await
        });
    }
    let total = args.connections as u64;
    let progress = |kind| {
        let line = Line {
            kind,
            open: state.open.load(Ordering::Relaxed),
            failed: state.failed.load(Ordering::Relaxed),
            ramp_ms: None,
            errors: None,
            lost: None,
            lost_reasons: None,
            pongs: None,
            rtt_us: None,
        };
        emit(&line);
        line.open + line.failed + state.skipped.load(Ordering::Relaxed) >= total
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROGRESS_EVERY) => {}
            () = state.stop.cancelled() => break,
        }
        if progress("progress") {
            break;
        }
    }
    emit(&Line {
        kind: "ready",
        open: state.open.load(Ordering::Relaxed),
        failed: state.failed.load(Ordering::Relaxed),
        ramp_ms: Some(started.elapsed().as_millis() as u64),
        errors: Some(
            state
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        ),
        lost: None,
        lost_reasons: None,
        pongs: None,
        rtt_us: None,
    });
    state.stop.cancelled().await;
    // Every session looks at its socket once more before any closes, and they close
    // only when the parent says so (every worker has reported): a worker that closed
    // each as it went would take many seconds over 18 000 on a loaded machine, and the
    // sessions looked at last, its own and other workers', would by then have outlived
    // the servers' heartbeat budget (a server rightly ends a session that stopped
    // pinging) and count as lost.
    let mut still_open = Vec::with_capacity(args.connections);
    while let Some(joined) = tasks.join_next().await {
        still_open.extend(joined.ok().flatten());
    }
    emit(&Line {
        kind: "done",
        open: state.open.load(Ordering::Relaxed),
        failed: state.failed.load(Ordering::Relaxed),
        ramp_ms: None,
        errors: None,
        lost: Some(state.lost.load(Ordering::Relaxed)),
        lost_reasons: Some(
            state
                .lost_reasons
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        ),
        pongs: Some(state.pongs.load(Ordering::Relaxed)),
        rtt_us: Some(state.rtt.lock().unwrap_or_else(|p| p.into_inner()).clone()),
    });
    state.release.cancelled().await;
    drop(still_open);
}

/// One session: open it, then heartbeat until "stop"; the connection, if it is still
/// open then.
async fn session(
    state: &WorkerState,
    gate: &Semaphore,
    protocol: LoadProtocol,
    source: IpAddr,
    target: SocketAddr,
    device: &str,
    heartbeat: Duration,
) -> Option<BufReader<TcpStream>> {
    let opened = {
        let _permit = gate.acquire().await;
        if state.stop.is_cancelled() {
            return None;
        }
        if state.halted.load(Ordering::Relaxed) {
            state.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        tokio::time::timeout(
            STEP_LIMIT,
            open(
                protocol,
                source,
                target,
                device,
                heartbeat,
                state.abort_on_close,
            ),
        )
        .await
    };
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            state.failed.fetch_add(1, Ordering::Relaxed);
            WorkerState::count(&state.errors, error_name(&err));
            return None;
        }
        Err(_) => {
            state.failed.fetch_add(1, Ordering::Relaxed);
            WorkerState::count(&state.errors, "connect+HELLO timed out".into());
            return None;
        }
    };
    state.open.fetch_add(1, Ordering::Relaxed);
    let pong_limit = STEP_LIMIT.max(heartbeat);
    let mut next = tokio::time::Instant::now() + heartbeat.mul_f64(fastrand::f64());
    let mut line = String::new();
    let ping = command_line(&Request::Ping(String::new()));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = state.stop.cancelled() => break,
        }
        next += heartbeat;
        let sent = Instant::now();
        let answer = heartbeat_once(protocol, &mut conn, &ping, &mut line);
        let answer = tokio::select! {
            answer = tokio::time::timeout(pong_limit, answer) => answer,
            () = state.stop.cancelled() => break,
        };
        let lost = match answer {
            Ok(Ok(Answer::Pong)) => {
                if state.measuring.load(Ordering::Relaxed) {
                    state.pongs.fetch_add(1, Ordering::Relaxed);
                    let rtt = sent.elapsed().as_micros() as u64;
                    state
                        .rtt
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(rtt);
                }
                continue;
            }
            Ok(Ok(Answer::Eof)) => "server closed (EOF)".into(),
            Ok(Ok(Answer::Other(what))) => format!("server sent {what}"),
            Ok(Err(err)) => error_name(&err),
            Err(_) => "no PONG in time".into(),
        };
        state.lose(lost);
        return None;
    }
    // Still open at the stop? A closed or reset connection shows now. Named apart from
    // the losses a heartbeat met: these came between this session's last heartbeat and
    // the stop, possibly after the bench's last look at the kernel's counters.
    let mut probe = [0u8; 256];
    match conn.get_ref().try_read(&mut probe) {
        Ok(0) => state.lose(format!("server closed (EOF){AT_THE_STOP}")),
        Err(err) if err.kind() != io::ErrorKind::WouldBlock => {
            state.lose(format!("{}{AT_THE_STOP}", error_name(&err)));
        }
        _ => return Some(conn),
    }
    None
}

/// Appended to the reason of a loss that the stop's last look at the socket found.
const AT_THE_STOP: &str = ", found at the stop";

/// What came back for a heartbeat.
enum Answer {
    /// `PONG` (line protocol) or PINGRESP (MQTT).
    Pong,
    /// The server closed the connection.
    Eof,
    /// Something else, named for the report.
    Other(String),
}

/// One heartbeat in `protocol`: its ping, then the answer.
async fn heartbeat_once(
    protocol: LoadProtocol,
    conn: &mut BufReader<TcpStream>,
    ping: &[u8],
    line: &mut String,
) -> io::Result<Answer> {
    match protocol {
        LoadProtocol::Line => line_heartbeat(conn, ping, line).await,
        LoadProtocol::Mqtt => mqtt_heartbeat(conn).await,
    }
}

/// One line-protocol heartbeat: `PING`, then the next reply.
async fn line_heartbeat(
    conn: &mut BufReader<TcpStream>,
    ping: &[u8],
    line: &mut String,
) -> io::Result<Answer> {
    conn.get_mut().write_all(ping).await?;
    read_reply(conn, line).await?;
    Ok(if Reply::parse(&*line) == Ok(Reply::Pong(String::new())) {
        Answer::Pong
    } else if line.is_empty() {
        Answer::Eof
    } else {
        Answer::Other(first_words(line))
    })
}

/// One MQTT heartbeat: PINGREQ, then the next packet, which must be a PINGRESP (a
/// client that subscribes to nothing gets no other packet).
async fn mqtt_heartbeat(conn: &mut BufReader<TcpStream>) -> io::Result<Answer> {
    conn.get_mut().write_all(&mqtt::PINGREQ).await?;
    let mut packet = [0u8; 2];
    let got = read_full(conn, &mut packet).await?;
    Ok(if got == 0 {
        Answer::Eof
    } else if got == 2 && packet == mqtt::PINGRESP {
        Answer::Pong
    } else {
        Answer::Other(format!("{:02x?}", &packet[..got]))
    })
}

/// Reads until `buf` is full or EOF; the bytes read.
async fn read_full(conn: &mut BufReader<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Connects from `source` (any port), opens the session (`HELLO` → `WELCOME`, or MQTT
/// CONNECT → CONNACK) and returns the connection.
async fn open(
    protocol: LoadProtocol,
    source: IpAddr,
    target: SocketAddr,
    device: &str,
    heartbeat: Duration,
    abort_on_close: bool,
) -> io::Result<BufReader<TcpStream>> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if abort_on_close {
        socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
    }
    if target.is_ipv4() {
        // Leave the port to connect(), which only needs the 4-tuple to be unique, rather
        // than reserving one per source address at bind().
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    // Replies are one short line: a small buffer keeps 18 000 sessions cheap.
    let mut conn = BufReader::with_capacity(128, stream);
    match protocol {
        LoadProtocol::Line => {
            let hello = Request::Hello {
                device: device.to_owned(),
                token: None,
                heartbeat: Some(Duration::from_secs(heartbeat.as_secs())),
            };
            conn.get_mut().write_all(&command_line(&hello)).await?;
            let mut line = String::new();
            read_reply(&mut conn, &mut line).await?;
            if !matches!(Reply::parse(&line), Ok(Reply::Welcome(..))) {
                let word = first_words(&line);
                return Err(io::Error::other(format!("server answered {word:?}")));
            }
        }
        LoadProtocol::Mqtt => {
            let keepalive = mqtt_keepalive(heartbeat.as_secs());
            let connect = mqtt::connect(device, keepalive).map_err(io::Error::other)?;
            conn.get_mut().write_all(&connect).await?;
            let mut connack = [0u8; mqtt::CONNACK_LEN];
            if read_full(&mut conn, &mut connack).await? < connack.len() {
                return Err(io::Error::other("broker closed before CONNACK"));
            }
            mqtt::check_connack(&connack).map_err(io::Error::other)?;
        }
    }
    Ok(conn)
}

/// The keepalive an MQTT session of heartbeat `heartbeat_s` asks for: twice the
/// heartbeat. mosquitto 2.0 keeps time in whole seconds and drops a client once
/// `now_s - last_msg_in > keepalive * 3 / 2` (integer), so with keepalive = H = 1 s a
/// ping that is on time but crosses two second boundaries ends the session. The client
/// still pings every H.
pub(crate) fn mqtt_keepalive(heartbeat_s: u64) -> u16 {
    u16::try_from(2 * heartbeat_s).unwrap_or(u16::MAX)
}

/// The next line that is not a `#` probe, without its ending; empty at EOF.
async fn read_reply(conn: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<()> {
    loop {
        line.clear();
        if conn.read_line(line).await? == 0 {
            return Ok(());
        }
        let trimmed = line.trim_end().len();
        line.truncate(trimmed);
        if !matches!(
            Reply::parse(&*line),
            Ok(Reply::Probe) | Err(ReplyParseError::Empty)
        ) {
            return Ok(());
        }
    }
}

/// A short name for an error, to count errors by kind.
fn error_name(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL (out of ports)",
        Some(libc::EMFILE) => "EMFILE (process descriptor limit)",
        Some(libc::ENFILE) => "ENFILE (system file limit)",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        _ => return err.to_string(),
    };
    name.into()
}

// ------------------------------------------------------------------- parent side

/// One worker's share.
#[derive(Debug, Clone)]
pub(crate) struct WorkerPlan {
    pub target: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    pub first_device: u64,
    pub device_prefix: String,
    pub heartbeat: Duration,
    pub concurrency: usize,
    /// What the sessions speak.
    pub protocol: LoadProtocol,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// [`LoadWorkerSettings::abort_on_close`].
    pub abort_on_close: bool,
}

/// The running load workers; killed (by their pids) and reaped when dropped.
pub(crate) struct Fleet {
    workers: Vec<(Child, Option<ChildStdin>)>,
    lines: mpsc::Receiver<(usize, Value)>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (child, stdin) in &mut self.workers {
            drop(stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Fleet {
    pub fn spawn(plans: &[WorkerPlan]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the hangup executable")?;
        let (tx, lines) = mpsc::channel();
        let mut fleet = Self {
            workers: Vec::with_capacity(plans.len()),
            lines,
        };
        for (index, plan) in plans.iter().enumerate() {
            let mut command = match &plan.netns {
                Some(netns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", netns]).arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            command
                .env(hangup_lab::RUN_MARKER_ENV, hangup_lab::run_prefix())
                .args(["bench", "load-worker", "--target"])
                .arg(plan.target.to_string())
                .args(
                    plan.sources
                        .iter()
                        .flat_map(|s| ["--source".to_string(), s.to_string()]),
                )
                .arg("--connections")
                .arg(plan.connections.to_string())
                .arg("--first-device")
                .arg(plan.first_device.to_string())
                .arg("--device-prefix")
                .arg(&plan.device_prefix)
                .arg("--heartbeat")
                .arg(plan.heartbeat.as_secs().to_string())
                .arg("--concurrency")
                .arg(plan.concurrency.to_string())
                .args(["--protocol", plan.protocol.as_str()])
                .args(plan.abort_on_close.then_some("--abort-on-close"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = command.spawn().context("could not start a load worker")?;
            let stdout = child.stdout.take().context("no stdout")?;
            let stdin = child.stdin.take();
            fleet.workers.push((child, stdin));
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in StdBufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        if tx.send((index, value)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send((index, serde_json::json!({"kind": "exit"})));
            });
        }
        Ok(fleet)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|(child, _)| child.id()).collect()
    }

    /// Sends a command line to every worker.
    pub fn broadcast(&mut self, command: &str) {
        for (_, stdin) in &mut self.workers {
            if let Some(pipe) = stdin {
                let _ = writeln!(pipe, "{command}");
                let _ = pipe.flush();
            }
        }
    }

    /// Starts the workers of `plans` and waits, with a progress bar, until each has
    /// opened its sessions (or failed to), halting them at the machine's memory floor.
    /// Returns the fleet, each worker's `ready` line, the ramp-up time and the memory
    /// floor (which says whether it halted the ramp-up).
    pub fn ramp_up(
        plans: &[WorkerPlan],
        sessions: usize,
        limit: Duration,
    ) -> anyhow::Result<(Self, Vec<Value>, Duration, super::procfs::MemoryFloor)> {
        let started = Instant::now();
        let mut fleet = Self::spawn(plans)?;
        let bar = indicatif::ProgressBar::new(sessions as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "ramp-up {elapsed_precise} [{bar:40}] {pos}/{len} sessions ({per_sec}) {msg}",
            )?
            .progress_chars("=> "),
        );
        let mut memory = super::procfs::MemoryFloor::new();
        let ready = fleet.wait_all("ready", limit, |open, failed| {
            bar.set_position(open);
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
            memory.reached(open)
        })?;
        let ramp = started.elapsed();
        bar.finish_and_clear();
        Ok((fleet, ready, ramp, memory))
    }

    /// Waits until every worker sent a line of `kind` (or exited), calling `progress`
    /// with the sums of the workers' open and failed sessions as they report; when it
    /// returns `true`, the workers are told to open no more sessions. Gives up at
    /// `limit` or on an interrupt. Returns each worker's line of that kind.
    pub fn wait_all(
        &mut self,
        kind: &str,
        limit: Duration,
        mut progress: impl FnMut(u64, u64) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let mut halted = false;
        let deadline = Instant::now() + limit;
        let mut last: Vec<Option<Value>> = vec![None; self.workers.len()];
        let mut open = vec![(0u64, 0u64); self.workers.len()];
        while last.iter().any(Option::is_none) {
            super::check_interrupt()?;
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                bail!(
                    "{} of {} load workers did not report `{kind}` within {limit:?}",
                    last.iter().filter(|l| l.is_none()).count(),
                    self.workers.len()
                );
            };
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((index, value)) => {
                    let got = value["kind"].as_str().unwrap_or_default();
                    if got == "exit" {
                        if last[index].is_some() {
                            continue;
                        }
                        bail!("load worker {index} exited before reporting `{kind}`");
                    }
                    let n = |key: &str| value[key].as_u64().unwrap_or(0);
                    open[index] = (n("open"), n("failed"));
                    if got == kind {
                        last[index] = Some(value);
                    }
                    let halt = progress(
                        open.iter().map(|o| o.0).sum(),
                        open.iter().map(|o| o.1).sum(),
                    );
                    if halt && !halted {
                        halted = true;
                        self.broadcast("halt");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the load workers are gone"),
            }
        }
        Ok(last.into_iter().flatten().collect())
    }
}

/// Sums a per-reason count map over worker lines.
pub(crate) fn sum_reasons(lines: &[Value], key: &str) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for line in lines {
        if let Some(map) = line[key].as_object() {
            for (reason, count) in map {
                *sum.entry(reason.clone()).or_default() += count.as_u64().unwrap_or(0);
            }
        }
    }
    sum
}

/// Merges the workers' RTT histograms.
pub(crate) fn merged_rtt(lines: &[Value]) -> Histogram {
    let mut rtt = Histogram::default();
    for line in lines {
        if let Ok(h) = serde_json::from_value::<Histogram>(line["rtt_us"].clone()) {
            rtt.merge(&h);
        }
    }
    rtt
}

/// Splits `total` sessions into shares of at most `per_worker`, as even as possible.
pub(crate) fn shares(total: usize, per_worker: usize) -> Vec<usize> {
    let workers = total.div_ceil(per_worker.max(1)).max(1);
    (0..workers)
        .map(|i| total / workers + usize::from(i < total % workers))
        .collect()
}
