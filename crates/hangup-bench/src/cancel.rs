//! `hangup bench cancel`: latency from a client's hangup to its job being stopped.
//!
//! It starts a real `hangup serve` (this same executable) with JSON events, holds N idle
//! connections open against it, and then, one at a time: connects, starts a job that
//! would run for minutes, waits until the server reports it running, takes the time,
//! and hangs up (FIN: a plain close; RST: close with SO_LINGER 0). The latency is the
//! server's `job_cancelled` event `ts_ns` minus the time taken just before the close.
//! Both clocks are the same CLOCK_REALTIME of this machine.

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

use super::{command_line, machine_description, percentile, write_json, ServerProcess};

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

/// Latencies of one hangup mode, in microseconds.
#[derive(Debug, Serialize)]
struct ModeResult {
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
    results: Vec<ModeResult>,
}

/// Runs `bench cancel`.
pub fn cancel(args: &CancelSettings) -> anyhow::Result<ExitCode> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
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
    eprintln!(
        "bench cancel: server at {} ({} idle connections to open)",
        server.addr, args.idle
    );
    let idle = open_idle(server.addr, args.idle)?;
    eprintln!("bench cancel: {} idle connections open", idle.len());
    let modes: &[HangupMode] = match args.mode {
        HangupMode::Both => &[HangupMode::Fin, HangupMode::Rst],
        HangupMode::Fin => &[HangupMode::Fin],
        HangupMode::Rst => &[HangupMode::Rst],
    };
    let mut results = Vec::new();
    for &mode in modes {
        results.push(measure(&server, mode, args.iterations)?);
    }
    drop(idle);
    let report = Report {
        bench: "cancel",
        idle_connections: args.idle,
        iterations: args.iterations,
        on_half_close: args.on_half_close.to_string(),
        machine: machine_description(),
        results,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let missed: usize = report.results.iter().map(|r| r.missed).sum();
    Ok(if missed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench cancel: {missed} hangups were not reported as cancelled jobs");
        ExitCode::from(1)
    })
}

fn open_idle(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut idle = Vec::with_capacity(count);
    for i in 0..count {
        let stream = TcpStream::connect(addr)
            .with_context(|| format!("could not open idle connection {i} of {count}"))?;
        idle.push(stream);
    }
    // Make sure the server accepted them all before measuring.
    if let Some(last) = idle.last_mut() {
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

fn measure(
    server: &ServerProcess,
    mode: HangupMode,
    iterations: usize,
) -> anyhow::Result<ModeResult> {
    let (name, expected) = match mode {
        HangupMode::Fin => ("fin", "peer_closed"),
        HangupMode::Rst => ("rst", "peer_reset"),
        HangupMode::Both => unreachable!("split by the caller"),
    };
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(iterations);
    let mut missed = 0;
    let mut wrong_cause: HashMap<String, usize> = HashMap::new();
    let endless_job = command_line(&Command::Job {
        rounds: ENDLESS_ROUNDS,
        seed: DEFAULT_SEED.to_owned(),
    });
    for i in 0..iterations {
        let mut stream = TcpStream::connect(server.addr).context("connect")?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?.to_string();
        stream.write_all(&endless_job)?;
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
                    *wrong_cause.entry(cause).or_default() += 1;
                }
                let at = event["ts_ns"].as_u64().context("event without ts_ns")?;
                latencies.push(at.saturating_sub(hung_up_at) as f64 / 1000.0);
            }
            None => missed += 1,
        }
        if (i + 1) % 500 == 0 {
            eprintln!(
                "bench cancel: {name}: {}/{iterations} ({:.0?})",
                i + 1,
                started.elapsed()
            );
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&latencies, p);
    Ok(ModeResult {
        mode: name,
        expected_cause: expected,
        samples: latencies.len(),
        missed,
        wrong_cause,
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        max_us: latencies.last().copied().unwrap_or(f64::NAN),
        mean_us: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
    })
}

fn print_table(report: &Report) {
    println!(
        "hangup bench cancel: {} idle connections, {} hangups per mode, --on-half-close {}",
        report.idle_connections, report.iterations, report.on_half_close
    );
    println!("machine: {}", report.machine);
    println!(
        "{:<5} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10}  cause",
        "mode", "samples", "missed", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for r in &report.results {
        let wrong: usize = r.wrong_cause.values().sum();
        println!(
            "{:<5} {:>8} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {} ({} other)",
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
}
