//! `hangup bench cancel`: latency from a client's hangup to its job being stopped.
//!
//! It starts a real `hangup serve` (this same executable) with JSON events, holds N idle
//! connections open against it, and then, one at a time: connects, starts a job that
//! would run for minutes, waits until the server reports it running, takes the time,
//! and hangs up (FIN: a plain close; RST: close with SO_LINGER 0). The latency is the
//! `stopped_ns` of the server's `job_cancelled` event (when the worker came out of the
//! chain, read on its thread) minus the time taken just before the close.
//! Both clocks are the same CLOCK_REALTIME of this machine.
//!
//! With `--peer axum|hyper`, a reference server of `bench http` (`http.rs`, plain axum
//! or hyper with the drop-guard idiom) runs beside it with as many idle connections,
//! and every trial is run on both, alternating which goes first: the same client code
//! connects, starts the work (`JOB` there, `GET /work` here), waits for the server's
//! started event, takes the time, hangs up and reads the stopped event's `ts_ns`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangup::events::ts_ns;
use hangup_core::{Command, HalfClosePolicy, Reply, DEFAULT_SEED};
use serde::Serialize;

use super::http::{self, Case, Trial};
use super::{
    command_line, load_average, machine_description, percentile, write_json, ServerProcess,
};
use crate::http_peer::HttpServerKind;

/// What `bench cancel` measures.
#[derive(Debug, Clone)]
pub struct CancelSettings {
    /// Idle connections held open against the server during the measurement.
    pub idle: usize,
    /// Hangups measured per mode.
    pub iterations: usize,
    /// Which hangups to measure.
    pub mode: HangupMode,
    /// The server's policy for FIN during a job (passed to the server under test).
    pub on_half_close: HalfClosePolicy,
    /// Time this reference server the same way in the same run, trials interleaved.
    pub peer: Option<HttpServerKind>,
    /// Write the results as JSON to this file.
    pub json: Option<PathBuf>,
}

/// Which kind of hangup `bench cancel` measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HangupMode {
    /// The client closes normally: FIN.
    Fin,
    /// The client closes with SO_LINGER 0: RST.
    Rst,
    /// Both, one after the other.
    #[default]
    Both,
}

impl HangupMode {
    /// The name as `--mode` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Both => "both",
        }
    }
}

impl std::fmt::Display for HangupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HangupMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Fin, Self::Rst, Self::Both]
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| format!("expected `fin`, `rst` or `both`, got `{s}`"))
    }
}

/// A job long enough never to finish during a measurement (minutes of CPU).
const ENDLESS_ROUNDS: u64 = 10_000_000_000;
/// How long one hangup may take to be reported before it counts as missed.
const PER_HANGUP_LIMIT: Duration = Duration::from_secs(5);
/// The peer's work bound: above the miss limit, so that a work ending at its cap is
/// never taken for a stop.
const PEER_WORK_CAP: Duration = Duration::from_millis(7_500);
/// Descriptors the bench needs besides its idle connections.
const FD_MARGIN: u64 = 200;

/// Latencies of one hangup mode, in microseconds.
#[derive(Debug, Serialize)]
struct ModeResult {
    /// `hangup` (`hangup serve`) or the peer's name.
    server: &'static str,
    mode: &'static str,
    expected_cause: &'static str,
    samples: usize,
    missed: usize,
    wrong_cause: HashMap<String, usize>,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    idle_connections: usize,
    iterations: usize,
    on_half_close: String,
    machine: String,
    /// /proc/loadavg at the start and at the end: the machine may be shared.
    load_average: [String; 2],
    /// `hangup serve`'s figures, one per mode.
    results: Vec<ModeResult>,
    /// With `--peer`: the peer's figures from the same run, and the ratios.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<PeerReport>,
}

#[derive(Debug, Serialize)]
struct PeerReport {
    server: &'static str,
    results: Vec<ModeResult>,
    /// hangup / peer, per mode.
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    mode: &'static str,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Runs `bench cancel`.
pub fn cancel(args: &CancelSettings) -> anyhow::Result<ExitCode> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let load_before = load_average();
    if args.peer.is_some() {
        let room = super::procfs::Limits::read()
            .nofile
            .0
            .saturating_sub(FD_MARGIN) as usize;
        if 2 * args.idle > room {
            bail!(
                "--peer holds --idle connections to each server from this one process: at most {} each fit under RLIMIT_NOFILE here",
                room / 2
            );
        }
    }
    let server = ServerProcess::start(
        &[
            "--on-half-close",
            args.on_half_close.as_str(),
            "--max-connections",
            &(args.idle + 100).to_string(),
        ],
        &["job_started", "job_cancelled"],
    )?;
    let peer = args
        .peer
        .map(|kind| http::start_reference(kind, false).map(|process| (kind, process)))
        .transpose()?;
    eprintln!(
        "bench cancel: server at {}{} ({} idle connections to open{})",
        server.addr,
        peer.as_ref()
            .map(|(kind, p)| format!(", peer {} at {}", kind.as_str(), p.addr))
            .unwrap_or_default(),
        args.idle,
        if peer.is_some() { " to each" } else { "" }
    );
    let idle = open_idle(server.addr, args.idle, true)?;
    let peer_idle = match &peer {
        Some((_, process)) => open_idle(process.addr, args.idle, false)?,
        None => Vec::new(),
    };
    eprintln!(
        "bench cancel: {} idle connections open",
        idle.len() + peer_idle.len()
    );
    let modes: &[HangupMode] = match args.mode {
        HangupMode::Both => &[HangupMode::Fin, HangupMode::Rst],
        HangupMode::Fin => &[HangupMode::Fin],
        HangupMode::Rst => &[HangupMode::Rst],
    };
    let mut results = Vec::new();
    let mut peer_results = Vec::new();
    for &mode in modes {
        let peer = peer.as_ref().map(|(kind, process)| (*kind, process));
        let (ours, theirs) = measure(&server, peer, mode, args.iterations)?;
        results.push(ours);
        peer_results.extend(theirs);
    }
    drop((idle, peer_idle));
    let peer = peer.map(|(kind, _)| PeerReport {
        server: kind.as_str(),
        ratios: results
            .iter()
            .zip(&peer_results)
            .map(|(ours, theirs)| Ratio {
                mode: ours.mode,
                p50: ours.p50_us / theirs.p50_us,
                p99: ours.p99_us / theirs.p99_us,
                max: ours.max_us / theirs.max_us,
            })
            .collect(),
        results: peer_results,
    });
    let report = Report {
        bench: "cancel",
        idle_connections: args.idle,
        iterations: args.iterations,
        on_half_close: args.on_half_close.to_string(),
        machine: machine_description(),
        load_average: [load_before, load_average()],
        results,
        peer,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    // hangup missing a hangup is a bug; so is a plain peer missing a FIN or RST, which
    // hyper notices too (what it misses are the cases of `bench http`).
    let missed: usize = report
        .results
        .iter()
        .chain(report.peer.iter().flat_map(|p| &p.results))
        .map(|r| r.missed)
        .sum();
    Ok(if missed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench cancel: {missed} hangups were not reported as stopped work");
        ExitCode::from(1)
    })
}

/// `count` connections that send nothing; with `line_protocol`, the last one checks
/// with a `PING` that the server has accepted them all (an HTTP peer has no such
/// command: its idle connections only wait in its accept queue or its reader).
fn open_idle(
    addr: SocketAddr,
    count: usize,
    line_protocol: bool,
) -> anyhow::Result<Vec<TcpStream>> {
    let mut idle = Vec::with_capacity(count);
    for i in 0..count {
        let stream = TcpStream::connect(addr)
            .with_context(|| format!("could not open idle connection {i} of {count}"))?;
        idle.push(stream);
    }
    // Make sure the server accepted them all before measuring.
    if let Some(last) = idle.last_mut().filter(|_| line_protocol) {
        last.write_all(&command_line(&Command::Ping("ready".into())))?;
        let mut reader = BufReader::new(last.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if Reply::parse(&line) != Ok(Reply::Pong("ready".into())) {
            bail!("unexpected answer from the server: {line:?}");
        }
    }
    Ok(idle)
}

/// Latencies of one server in one mode, as the trials come.
#[derive(Default)]
struct Samples {
    latencies: Vec<f64>,
    missed: usize,
    wrong_cause: HashMap<String, usize>,
}

impl Samples {
    fn result(
        mut self,
        server: &'static str,
        mode: &'static str,
        expected: &'static str,
    ) -> ModeResult {
        self.latencies.sort_by(f64::total_cmp);
        let latencies = &self.latencies;
        let pct = |p: f64| percentile(latencies, p);
        ModeResult {
            server,
            mode,
            expected_cause: expected,
            samples: latencies.len(),
            missed: self.missed,
            p50_us: pct(50.0),
            p90_us: pct(90.0),
            p99_us: pct(99.0),
            max_us: latencies.last().copied().unwrap_or(f64::NAN),
            mean_us: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
            wrong_cause: self.wrong_cause,
        }
    }
}

/// `iterations` hangups of `mode` against `hangup serve` and, if given, the peer, one
/// trial on each in turn (hangup first in even trials, the peer first in odd ones).
fn measure(
    server: &ServerProcess,
    peer: Option<(HttpServerKind, &ServerProcess)>,
    mode: HangupMode,
    iterations: usize,
) -> anyhow::Result<(ModeResult, Option<ModeResult>)> {
    let (name, expected, case) = match mode {
        HangupMode::Fin => ("fin", "peer_closed", Case::Fin),
        HangupMode::Rst => ("rst", "peer_reset", Case::Rst),
        HangupMode::Both => unreachable!("split by the caller"),
    };
    let started = Instant::now();
    let mut ours = Samples::default();
    let mut theirs = Samples::default();
    let endless_job = command_line(&Command::Job {
        rounds: ENDLESS_ROUNDS,
        seed: DEFAULT_SEED.to_owned(),
    });
    for i in 0..iterations {
        super::check_interrupt()?;
        let peer_first = i % 2 == 1 && peer.is_some();
        if peer_first {
            peer_trial(peer, case, &mut theirs)?;
        }
        hangup_trial(server, mode, &endless_job, expected, &mut ours)?;
        if !peer_first {
            peer_trial(peer, case, &mut theirs)?;
        }
        if (i + 1) % 500 == 0 {
            eprintln!(
                "bench cancel: {name}: {}/{iterations} ({:.0?})",
                i + 1,
                started.elapsed()
            );
        }
    }
    let peer_result = peer.map(|(kind, _)| theirs.result(kind.as_str(), name, "cancelled"));
    Ok((ours.result("hangup", name, expected), peer_result))
}

/// One hangup against `hangup serve`: connect, `JOB` (minutes of CPU), wait for its
/// `job_started`, take the time, hang up, read `job_cancelled`.
fn hangup_trial(
    server: &ServerProcess,
    mode: HangupMode,
    endless_job: &[u8],
    expected: &str,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(server.addr).context("connect")?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?.to_string();
    stream.write_all(endless_job)?;
    let mut accepted = [0u8; 64];
    let n = stream.read(&mut accepted)?;
    let first_line = accepted[..n]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    if !matches!(Reply::parse(first_line), Ok(Reply::Accepted(_))) {
        bail!(
            "unexpected reply: {:?}",
            String::from_utf8_lossy(&accepted[..n])
        );
    }
    let running = server.wait_event(PER_HANGUP_LIMIT, |e| {
        e["event"] == "job_started" && e["peer"].as_str() == Some(local.as_str())
    });
    if running.is_none() {
        bail!("the server never reported the job as started");
    }
    // Let the worker get into the hash loop.
    std::thread::sleep(Duration::from_millis(1));
    if mode == HangupMode::Rst {
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    }
    let hung_up_at = ts_ns();
    drop(stream);
    let cancelled = server.wait_event(PER_HANGUP_LIMIT, |e| {
        e["event"] == "job_cancelled" && e["peer"].as_str() == Some(local.as_str())
    });
    match cancelled {
        Some(event) => {
            let cause = event["cause"].as_str().unwrap_or("?").to_owned();
            if cause != expected {
                *samples.wrong_cause.entry(cause).or_default() += 1;
            }
            // When the worker came out of the chain, taken on its thread (where the
            // reference servers take `work_stopped`); the event's own time is later by
            // the hop back to the connection's task.
            let at = event["stopped_ns"]
                .as_u64()
                .filter(|&ns| ns > 0)
                .or_else(|| event["ts_ns"].as_u64())
                .context("event without ts_ns")?;
            samples
                .latencies
                .push(at.saturating_sub(hung_up_at) as f64 / 1000.0);
        }
        None => samples.missed += 1,
    }
    Ok(())
}

/// One hangup against the peer, if there is one: `bench http`'s trial, the same steps.
fn peer_trial(
    peer: Option<(HttpServerKind, &ServerProcess)>,
    case: Case,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let Some((kind, process)) = peer else {
        return Ok(());
    };
    match http::trial(process, case, PEER_WORK_CAP, PER_HANGUP_LIMIT)? {
        Trial::Stopped { latency_us, .. } => samples.latencies.push(latency_us),
        Trial::Missed { .. } => samples.missed += 1,
        Trial::NotStarted => bail!("{} never reported the work as started", kind.as_str()),
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "hangup bench cancel: {} idle connections{}, {} hangups per mode, --on-half-close {}",
        report.idle_connections,
        if report.peer.is_some() {
            " to each server"
        } else {
            ""
        },
        report.iterations,
        report.on_half_close
    );
    println!(
        "machine: {} (load average {} at the start, {} at the end)",
        report.machine, report.load_average[0], report.load_average[1]
    );
    println!(
        "{:<12} {:<5} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10}  cause",
        "server", "mode", "samples", "missed", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    let peer_results = report.peer.iter().flat_map(|p| &p.results);
    for r in report.results.iter().chain(peer_results) {
        let wrong: usize = r.wrong_cause.values().sum();
        println!(
            "{:<12} {:<5} {:>8} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {} ({} other)",
            r.server,
            r.mode,
            r.samples,
            r.missed,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.max_us,
            r.expected_cause,
            wrong
        );
    }
    if let Some(peer) = &report.peer {
        for ratio in &peer.ratios {
            println!(
                "ratio hangup/{} {}: p50 {:.2}, p99 {:.2}, max {:.2}",
                peer.server, ratio.mode, ratio.p50, ratio.p99, ratio.max
            );
        }
    }
}
