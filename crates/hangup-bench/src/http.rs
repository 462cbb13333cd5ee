//! `hangup bench http`: plain axum and hyper against their hangup variants, measured in
//! one run by one client.
//!
//! ```text
//!  hangup bench http ──spawns──▶ hangup bench http-peer --server axum|axum-hangup|hyper|hyper-hangup
//!        │                         (one process each; JSON events on stderr)
//!        │  connect, request /work, wait for `work_started`, take ts_ns, hang up
//!        └──────────────────────▶  … `work_stopped {ts_ns, cancelled}`: latency = stop − hangup
//! ```
//!
//! Cases: `fin` (close), `rst` (SO_LINGER 0), `pipelined` (a second request in the same
//! write, then close), `unread-body` (a POST whose 1 MiB body the handler never reads,
//! 64 KiB of it sent, then close), `half-close` (shutdown(Write), keep reading: the
//! right outcome is the answer; the hangup variants run with `OnFin::Finish` there, in a
//! second process). A work not stopped within the miss limit is missed; the next trial
//! waits until it ends at its cap, so that no stale work burns the CPU of later
//! measurements. Both clocks are the same CLOCK_REALTIME of this machine.
//!
//! Throughput: the same keep-alive load on `/ok`, plain against hangup, interleaved;
//! besides requests/s (which other load on the machine disturbs), the server's CPU time
//! per request (from /proc/PID/stat, all threads).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangup::events::ts_ns;
use serde::Serialize;

use super::procfs::ProcessSample;
use super::{
    catch_interrupts, check_interrupt, load_average, machine_description, percentile, write_json,
    ServerProcess,
};
use crate::http_peer::HttpServerKind;

/// What `hangup bench http` measures, and how much.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Hangups measured per server and case.
    pub trials: usize,
    /// A hangup whose work is not stopped within this counts as missed.
    pub miss_limit: Duration,
    /// Stop a case after this many misses in a row; 0: run every trial.
    pub give_up_after: usize,
    /// The bounded work the half-close case asks for.
    pub half_close_work: Duration,
    /// How long one throughput run loads a server.
    pub throughput_time: Duration,
    /// Keep-alive connections of the throughput client.
    pub throughput_connections: usize,
    /// Throughput runs per server (0: skip throughput).
    pub throughput_runs: usize,
    /// The route the throughput client requests (`/ok` or `/no-token`).
    pub throughput_path: String,
    /// Write the results as JSON to this file.
    pub json: Option<std::path::PathBuf>,
}

const SERVERS: [HttpServerKind; 4] = [
    HttpServerKind::Axum,
    HttpServerKind::AxumHangup,
    HttpServerKind::Hyper,
    HttpServerKind::HyperHangup,
];

/// The events the client reads from its servers.
const EVENTS: &[&str] = &["work_started", "work_stopped"];

/// Starts one reference server (`hangup bench http-peer --server KIND`, with
/// `OnFin::Finish` if `finish_on_fin`) as a child of this executable; it reports
/// `work_started` / `work_stopped` on stderr. `bench http` and `bench cancel --peer`
/// both start their peers here.
pub(crate) fn start_reference(
    kind: HttpServerKind,
    finish_on_fin: bool,
) -> anyhow::Result<ServerProcess> {
    let mut args = vec!["bench", "http-peer", "--server", kind.as_str()];
    if finish_on_fin {
        args.push("--finish-on-fin");
    }
    ServerProcess::start_child(&args, EVENTS)
}

/// How long the server may take to start a requested work.
const START_LIMIT: Duration = Duration::from_secs(5);

/// Requests per connection at most in one throughput run (the run is bounded by time
/// first; this only bounds the loop).
const MAX_REQUESTS_PER_CONNECTION: u64 = 20_000_000;

/// The unread-body case: the length announced, and the part of it sent before the
/// hangup.
const ANNOUNCED_BODY: usize = 1 << 20;
const SENT_BODY: usize = 64 * 1024;

/// How a client hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    Fin,
    Rst,
    Pipelined,
    UnreadBody,
    HalfClose,
}

const CASES: [Case; 5] = [
    Case::Fin,
    Case::Rst,
    Case::Pipelined,
    Case::UnreadBody,
    Case::HalfClose,
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Fin => "fin",
            Case::Rst => "rst",
            Case::Pipelined => "pipelined",
            Case::UnreadBody => "unread-body",
            Case::HalfClose => "half-close",
        }
    }

    /// The bytes sent, with `cap` as the work's bound.
    fn request(self, cap: Duration) -> Vec<u8> {
        let work = format!(
            "GET /work?ms={} HTTP/1.1\r\nHost: bench\r\n\r\n",
            cap.as_millis()
        );
        match self {
            Case::Fin | Case::Rst | Case::HalfClose => work.into_bytes(),
            Case::Pipelined => {
                format!("{work}GET /ok HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
            }
            Case::UnreadBody => {
                let mut request = format!(
                    "POST /work?ms={} HTTP/1.1\r\nHost: bench\r\nContent-Length: {ANNOUNCED_BODY}\r\n\r\n",
                    cap.as_millis()
                )
                .into_bytes();
                request.resize(request.len() + SENT_BODY, b'x');
                request
            }
        }
    }
}

/// One server in one case.
#[derive(Debug, Serialize)]
struct CaseResult {
    server: &'static str,
    case: &'static str,
    /// Trials asked for.
    trials: usize,
    /// Trials run (fewer when the case gave up after misses in a row).
    run: usize,
    /// Works cancelled within the miss limit.
    stopped: usize,
    /// Works not cancelled within the miss limit (for half-close: not cancelled at all).
    missed: usize,
    /// Requests whose work never started (a broken server).
    not_started: usize,
    /// half-close only: complete answers read after the client's shutdown(Write).
    answered: Option<usize>,
    gave_up: bool,
    /// Hangup to `work_stopped`, over the stopped trials, in microseconds.
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
}

#[derive(Debug, Serialize)]
struct ServerThroughput {
    server: &'static str,
    /// Requests per second of each run, in the order run.
    runs_rps: Vec<f64>,
    mean_rps: f64,
    /// The server's CPU time (user + system) per request of each run, warm-up
    /// included, microseconds.
    runs_cpu_us_per_request: Vec<f64>,
    mean_cpu_us_per_request: f64,
}

#[derive(Debug, Serialize)]
struct ThroughputPair {
    plain: &'static str,
    hangup: &'static str,
    /// Mean requests/s of the hangup variant over the plain server's.
    ratio: f64,
    /// (1 − ratio) in percent: what the hangup variant costs.
    cost_pct: f64,
    /// Mean server CPU per request of the hangup variant over the plain server's.
    cpu_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    path: String,
    connections: usize,
    run_ms: u128,
    runs: usize,
    servers: Vec<ServerThroughput>,
    pairs: Vec<ThroughputPair>,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    trials: usize,
    miss_limit_ms: u128,
    work_cap_ms: u128,
    give_up_after: usize,
    half_close_work_ms: u128,
    machine: String,
    /// /proc/loadavg at the start and at the end: the machine may be shared.
    load_average: [String; 2],
    results: Vec<CaseResult>,
    throughput: Option<Throughput>,
}

/// A server's processes: the one every case but half-close uses, and for the hangup
/// variants one with `OnFin::Finish` for half-close. Killed when dropped.
struct Peer {
    kind: HttpServerKind,
    main: ServerProcess,
    finish_on_fin: Option<ServerProcess>,
}

impl Peer {
    fn start(kind: HttpServerKind) -> anyhow::Result<Self> {
        let main = start_reference(kind, false)?;
        let finish_on_fin = if kind.is_hangup() {
            Some(start_reference(kind, true)?)
        } else {
            None
        };
        Ok(Self {
            kind,
            main,
            finish_on_fin,
        })
    }

    fn for_case(&self, case: Case) -> &ServerProcess {
        match (case, &self.finish_on_fin) {
            (Case::HalfClose, Some(finish)) => finish,
            _ => &self.main,
        }
    }
}

/// Runs `hangup bench http`: the four reference servers, every case, the throughput
/// runs; prints the table and writes the JSON.
pub fn http(args: &HttpSettings) -> anyhow::Result<ExitCode> {
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    if args.throughput_connections == 0 {
        bail!("--throughput-connections must be at least 1");
    }
    catch_interrupts()?;
    let load_before = load_average();
    // Above the miss limit, so that a work ending at its cap is never taken for a stop.
    let work_cap = args.miss_limit + args.miss_limit / 2;
    let peers = SERVERS
        .iter()
        .map(|&kind| Peer::start(kind))
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "bench http: servers {}",
        peers
            .iter()
            .map(|p| format!("{} at {}", p.kind.as_str(), p.main.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut results = Vec::new();
    for case in CASES {
        for peer in &peers {
            let result = measure(peer, case, args, work_cap)?;
            eprintln!(
                "bench http: {:<12} {:<11} stopped {}/{}{}",
                result.server,
                result.case,
                result.stopped,
                result.run,
                result
                    .answered
                    .map(|a| format!(", answered {a}/{}", result.run))
                    .unwrap_or_default()
            );
            results.push(result);
        }
    }
    let throughput = if args.throughput_runs > 0 {
        Some(throughput(&peers, args)?)
    } else {
        None
    };
    drop(peers);
    let report = Report {
        bench: "http",
        trials: args.trials,
        miss_limit_ms: args.miss_limit.as_millis(),
        work_cap_ms: work_cap.as_millis(),
        give_up_after: args.give_up_after,
        half_close_work_ms: args.half_close_work.as_millis(),
        machine: machine_description(),
        load_average: [load_before, load_average()],
        results,
        throughput,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    // Plain servers missing is what is measured; a hangup variant missing is a bug.
    let hangup_failures: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.server.ends_with("-hangup"))
        .filter(|r| match r.answered {
            Some(answered) => answered < r.run,
            None => r.stopped < r.run,
        })
        .map(|r| format!("{} {}", r.server, r.case))
        .collect();
    Ok(if hangup_failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "bench http: hangup variants missed trials: {}",
            hangup_failures.join(", ")
        );
        ExitCode::from(1)
    })
}

/// What one trial saw.
pub(crate) enum Trial {
    Stopped { latency_us: f64, answered: bool },
    Missed { answered: bool },
    NotStarted,
}

fn measure(
    peer: &Peer,
    case: Case,
    args: &HttpSettings,
    work_cap: Duration,
) -> anyhow::Result<CaseResult> {
    let server = peer.for_case(case);
    let cap = if case == Case::HalfClose {
        args.half_close_work
    } else {
        work_cap
    };
    let mut latencies = Vec::with_capacity(args.trials);
    let (mut run, mut missed, mut not_started, mut answered) = (0, 0, 0, 0);
    let mut missed_in_a_row = 0;
    let mut gave_up = false;
    for _ in 0..args.trials {
        check_interrupt()?;
        if args.give_up_after > 0 && missed_in_a_row >= args.give_up_after {
            gave_up = true;
            break;
        }
        run += 1;
        match trial(server, case, cap, args.miss_limit)? {
            Trial::Stopped {
                latency_us,
                answered: a,
            } => {
                latencies.push(latency_us);
                answered += usize::from(a);
                missed_in_a_row = 0;
            }
            Trial::Missed { answered: a } => {
                missed += 1;
                answered += usize::from(a);
                // A half-closed client answered is the right outcome, not a miss.
                if !a {
                    missed_in_a_row += 1;
                }
            }
            Trial::NotStarted => {
                not_started += 1;
                missed_in_a_row += 1;
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(CaseResult {
        server: peer.kind.as_str(),
        case: case.name(),
        trials: args.trials,
        run,
        stopped: latencies.len(),
        missed,
        not_started,
        answered: (case == Case::HalfClose).then_some(answered),
        gave_up,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        max_us: latencies.last().copied().unwrap_or(f64::NAN),
        mean_us: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
    })
}

/// One hangup against `server`: connect, request a work bounded by `cap`, wait for
/// `work_started`, take the time, hang up as `case` says, wait up to `miss_limit` for
/// `work_stopped`. A work still running then is waited for until its cap.
pub(crate) fn trial(
    server: &ServerProcess,
    case: Case,
    cap: Duration,
    miss_limit: Duration,
) -> anyhow::Result<Trial> {
    let mut stream = TcpStream::connect(server.addr).context("connect")?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?.to_string();
    let of_this_client = |e: &serde_json::Value, event: &str| {
        e["event"] == event && e["peer"].as_str() == Some(local.as_str())
    };
    stream.write_all(&case.request(cap))?;
    if server
        .wait_event(START_LIMIT, |e| of_this_client(e, "work_started"))
        .is_none()
    {
        return Ok(Trial::NotStarted);
    }
    // Let the work get into its loop.
    std::thread::sleep(Duration::from_millis(1));
    if case == Case::Rst {
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    }
    let hung_up_at = ts_ns();
    let mut answered = false;
    if case == Case::HalfClose {
        stream.shutdown(Shutdown::Write)?;
        answered = read_answer(&mut stream, cap + miss_limit);
    }
    drop(stream);
    let stopped = server.wait_event(miss_limit, |e| of_this_client(e, "work_stopped"));
    match stopped {
        Some(event) if event["cancelled"] == true => {
            let at = event["ts_ns"].as_u64().context("event without ts_ns")?;
            Ok(Trial::Stopped {
                latency_us: at.saturating_sub(hung_up_at) as f64 / 1000.0,
                answered,
            })
        }
        Some(_) => Ok(Trial::Missed { answered }),
        None => {
            // Still running: wait for its cap, so that it burns no CPU of later trials.
            let _ = server.wait_event(cap + START_LIMIT, |e| of_this_client(e, "work_stopped"));
            Ok(Trial::Missed { answered })
        }
    }
}

/// Reads until the server closes (or `limit`): whether a complete answer came.
fn read_answer(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
        if received.len() > 1 << 20 {
            break;
        }
    }
    received.starts_with(b"HTTP/1.1 200") && received.ends_with(b"done\n")
}

/// Plain and hangup variant of each framework, interleaved: plain first in even runs,
/// the hangup variant first in odd ones.
fn throughput(peers: &[Peer], args: &HttpSettings) -> anyhow::Result<Throughput> {
    let find = |kind: HttpServerKind| {
        peers
            .iter()
            .find(|p| p.kind == kind)
            .expect("every server is started")
    };
    let pairs = [
        (HttpServerKind::Axum, HttpServerKind::AxumHangup),
        (HttpServerKind::Hyper, HttpServerKind::HyperHangup),
    ];
    let mut servers = Vec::new();
    let mut ratios = Vec::new();
    for (plain, hangup) in pairs {
        let (mut plain_runs, mut hangup_runs) = (Vec::new(), Vec::new());
        let (mut plain_cpu, mut hangup_cpu) = (Vec::new(), Vec::new());
        for run in 0..args.throughput_runs {
            let order = if run % 2 == 0 {
                [plain, hangup]
            } else {
                [hangup, plain]
            };
            for kind in order {
                check_interrupt()?;
                let server = &find(kind).main;
                let cpu_before = cpu_seconds(server.pid())?;
                let (rps, requests) = load(
                    server.addr,
                    &args.throughput_path,
                    args.throughput_connections,
                    args.throughput_time,
                )
                .with_context(|| format!("throughput of {}", kind.as_str()))?;
                let cpu_us = (cpu_seconds(server.pid())? - cpu_before) * 1e6 / requests as f64;
                eprintln!(
                    "bench http: throughput {:<12} run {} {rps:>10.0} requests/s, {cpu_us:.2} µs server CPU a request",
                    kind.as_str(),
                    run + 1
                );
                if kind == plain {
                    plain_runs.push(rps);
                    plain_cpu.push(cpu_us);
                } else {
                    hangup_runs.push(rps);
                    hangup_cpu.push(cpu_us);
                }
            }
        }
        let mean = |runs: &[f64]| runs.iter().sum::<f64>() / runs.len() as f64;
        let ratio = mean(&hangup_runs) / mean(&plain_runs);
        ratios.push(ThroughputPair {
            plain: plain.as_str(),
            hangup: hangup.as_str(),
            ratio,
            cost_pct: (1.0 - ratio) * 100.0,
            cpu_ratio: mean(&hangup_cpu) / mean(&plain_cpu),
        });
        for (kind, runs, cpu) in [
            (plain, plain_runs, plain_cpu),
            (hangup, hangup_runs, hangup_cpu),
        ] {
            servers.push(ServerThroughput {
                server: kind.as_str(),
                mean_rps: mean(&runs),
                runs_rps: runs,
                mean_cpu_us_per_request: mean(&cpu),
                runs_cpu_us_per_request: cpu,
            });
        }
    }
    Ok(Throughput {
        path: args.throughput_path.clone(),
        connections: args.throughput_connections,
        run_ms: args.throughput_time.as_millis(),
        runs: args.throughput_runs,
        servers,
        pairs: ratios,
    })
}

/// A process's CPU time so far (user + system, every thread, also those gone).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let sample = ProcessSample::read(pid).context("cannot read the server's /proc/PID/stat")?;
    Ok(sample.utime_s + sample.stime_s)
}

/// `connections` keep-alive connections, one thread each, requesting `path` one after
/// the other: a tenth of `time` to warm up, then `time` counted. Requests per second
/// counted, and requests made in all.
fn load(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    time: Duration,
) -> anyhow::Result<(f64, u64)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let barrier = Arc::new(Barrier::new(connections));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let barrier = barrier.clone();
            let request = request.clone();
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                let connected = TcpStream::connect(addr).context("connect");
                barrier.wait();
                let mut stream = connected?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut response = ResponseReader::default();
                let warm_until = Instant::now() + time / 10;
                let count_until = warm_until + time;
                let (mut counted, mut all) = (0u64, 0u64);
                for _ in 0..MAX_REQUESTS_PER_CONNECTION {
                    let now = Instant::now();
                    if now >= count_until {
                        break;
                    }
                    stream.write_all(request.as_bytes())?;
                    response.read_one(&mut stream)?;
                    all += 1;
                    if now >= warm_until {
                        counted += 1;
                    }
                }
                Ok((counted, all))
            })
        })
        .collect();
    let (mut counted, mut all) = (0, 0);
    for worker in workers {
        let (c, a) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        counted += c;
        all += a;
    }
    Ok((counted as f64 / time.as_secs_f64(), all.max(1)))
}

/// Reads keep-alive responses with a `content-length` off a stream.
#[derive(Default)]
struct ResponseReader {
    buf: Vec<u8>,
}

impl ResponseReader {
    fn read_one(&mut self, stream: &mut TcpStream) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(len) = self.complete_response()? {
                self.buf.drain(..len);
                return Ok(());
            }
            if self.buf.len() > 64 * 1024 {
                bail!("response too long");
            }
            let n = stream.read(&mut chunk).context("read response")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The length of the first response in the buffer, once it is all there.
    fn complete_response(&self) -> anyhow::Result<Option<usize>> {
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("unexpected response: {head:?}");
        }
        let body_len: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .context("response without content-length")?;
        let len = head_end + 4 + body_len;
        Ok((self.buf.len() >= len).then_some(len))
    }
}

fn print_table(report: &Report) {
    println!(
        "hangup bench http: {} trials per server and case, miss limit {} ms, work cap {} ms, half-close work {} ms",
        report.trials, report.miss_limit_ms, report.work_cap_ms, report.half_close_work_ms
    );
    println!(
        "machine: {}; load average {} at the start, {} at the end",
        report.machine, report.load_average[0], report.load_average[1]
    );
    println!(
        "{:<12} {:<12} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "case", "server", "stopped", "answered", "p50 µs", "p99 µs", "max µs"
    );
    for r in &report.results {
        let answered = r
            .answered
            .map(|a| format!("{a}/{}", r.run))
            .unwrap_or_else(|| "-".into());
        let gave_up = if r.gave_up { " (gave up)" } else { "" };
        let not_started = if r.not_started > 0 {
            format!(" ({} never started)", r.not_started)
        } else {
            String::new()
        };
        println!(
            "{:<12} {:<12} {:>9} {:>9} {:>10.1} {:>10.1} {:>10.1}{gave_up}{not_started}",
            r.case,
            r.server,
            format!("{}/{}", r.stopped, r.run),
            answered,
            r.p50_us,
            r.p99_us,
            r.max_us
        );
    }
    if let Some(t) = &report.throughput {
        println!(
            "throughput on {}: {} keep-alive connections, {} runs of {} ms each, interleaved",
            t.path, t.connections, t.runs, t.run_ms
        );
        for s in &t.servers {
            let runs: Vec<String> = s.runs_rps.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "{:<12} {:>10.0} requests/s (runs: {}), {:.2} µs server CPU a request",
                s.server,
                s.mean_rps,
                runs.join(", "),
                s.mean_cpu_us_per_request
            );
        }
        for p in &t.pairs {
            println!(
                "{} / {}: {:.3} requests/s (cost {:+.1} %), {:.3} server CPU a request",
                p.hangup, p.plain, p.ratio, p.cost_pct, p.cpu_ratio
            );
        }
    }
}
