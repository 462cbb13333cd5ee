//! `hangup bench soak`: a bounded run that mixes what wears a server down — session
//! churn, takeovers, malformed and over-long lines, readers that stop reading, jobs
//! cancelled by hangups — across server restarts, then checks that it all came back:
//!
//! - resident memory of the last server instance within a bound of the first's idle
//!   baseline, and its descriptors back to that baseline;
//! - every session a client was told about (`WELCOME`) in the presence store, with an
//!   end and a cause, none left open;
//! - no ghost: no server socket on the port left ESTABLISHED or CLOSE_WAIT.
//!
//! Load comes from client threads with blocking sockets, each loop bounded by the
//! deadline; a connection refused or reset while the server restarts is counted, not
//! failed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hangup_core::{Command, Reply};
use serde::Serialize;

use crate::procfs::ProcessSample;
use crate::{check_interrupt, machine_description, write_json, ServerProcess};

/// What `hangup bench soak` runs.
#[derive(Debug, Clone)]
pub struct SoakSettings {
    /// How long the load runs.
    pub duration: Duration,
    /// Server restarts (SIGTERM, then a fresh server on the same port and data
    /// directory), spread evenly over the run.
    pub restarts: usize,
    /// Client threads.
    pub clients: usize,
    /// How far the last instance's RSS may end above the first's idle baseline.
    pub rss_slack: u64,
    /// Write the results as JSON to this file.
    pub json: Option<PathBuf>,
}

/// How long a client waits for one reply before it gives the connection up.
const REPLY_LIMIT: Duration = Duration::from_secs(5);
/// After the load: how long the server gets to close what the clients left.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Default, Serialize)]
struct Counts {
    connections: u64,
    sessions_welcomed: u64,
    takeovers_seen: u64,
    bad_lines_answered: u64,
    jobs_done: u64,
    jobs_abandoned: u64,
    stalled_readers: u64,
    /// Connects or replies lost to a restart (refused, reset, EOF).
    interrupted: u64,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: String,
    duration_s: f64,
    restarts: usize,
    clients: usize,
    counts: Counts,
    baseline_rss: u64,
    final_rss: u64,
    baseline_fds: usize,
    final_fds: usize,
    sessions_in_store: usize,
    checks: Vec<Check>,
}

/// Shared by the client threads.
struct Load {
    addr: SocketAddr,
    deadline: Instant,
    counts: Mutex<Counts>,
    /// Session ids from `WELCOME` lines.
    welcomed: Mutex<HashSet<String>>,
    next_device: AtomicU64,
}

impl Load {
    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Runs `hangup bench soak`.
pub fn soak(settings: &SoakSettings) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(settings.clients > 0, "--clients must be at least 1");
    crate::catch_interrupts()?;
    let data_dir = std::env::temp_dir().join(format!(
        "{}-soak-{}",
        hangup_lab::run_prefix(),
        fastrand::u32(..)
    ));
    let _remove = RemoveDir(data_dir.clone());
    let mut server = start_server("127.0.0.1:0", &data_dir)?;
    let listen = server.addr.to_string();
    std::thread::sleep(Duration::from_millis(300));
    let baseline = ProcessSample::read(server.pid()).context("read the server's /proc")?;
    let baseline_fds = open_fds(server.pid())?;

    let started = Instant::now();
    let load = Arc::new(Load {
        addr: server.addr,
        deadline: started + settings.duration,
        counts: Mutex::new(Counts::default()),
        welcomed: Mutex::new(HashSet::new()),
        next_device: AtomicU64::new(0),
    });
    let threads: Vec<_> = (0..settings.clients)
        .map(|seed| {
            let load = load.clone();
            std::thread::spawn(move || client(&load, seed as u64))
        })
        .collect();

    let slice = settings.duration / (settings.restarts as u32 + 1);
    for restart in 1..=settings.restarts {
        let at = started + slice * restart as u32;
        while Instant::now() < at {
            check_interrupt()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        server
            .terminate(Duration::from_secs(30))
            .with_context(|| format!("restart {restart}: the server did not stop cleanly"))?;
        drop(server);
        server = start_server(&listen, &data_dir)
            .with_context(|| format!("restart {restart}: the server did not start again"))?;
    }
    for thread in threads {
        let _ = thread.join();
    }
    std::thread::sleep(SETTLE);

    let final_sample = ProcessSample::read(server.pid()).context("read the server's /proc")?;
    let final_fds = open_fds(server.pid())?;
    let port = server.addr.port();
    let ghosts = held_sockets(port)?;
    server
        .terminate(Duration::from_secs(30))
        .context("the last server did not stop cleanly")?;
    drop(server);

    let rows = hangup_server::presence::query(&data_dir, &Default::default())
        .context("read the presence store")?;
    let stored: HashSet<&str> = rows.iter().map(|row| row.session.as_str()).collect();
    let open: Vec<&str> = rows
        .iter()
        .filter(|row| row.ended_at.is_none() || row.cause.is_none())
        .map(|row| row.session.as_str())
        .collect();
    let welcomed = load
        .welcomed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let missing: Vec<&String> = welcomed
        .iter()
        .filter(|s| !stored.contains(s.as_str()))
        .collect();

    let rss_bound = baseline.rss + settings.rss_slack;
    let checks = vec![
        Check {
            name: "rss_back_to_baseline",
            ok: final_sample.rss <= rss_bound,
            detail: format!(
                "{} KiB at the end, {} KiB idle at the start, bound {} KiB",
                final_sample.rss / 1024,
                baseline.rss / 1024,
                rss_bound / 1024
            ),
        },
        Check {
            name: "descriptors_back_to_baseline",
            ok: final_fds <= baseline_fds,
            detail: format!("{final_fds} open at the end, {baseline_fds} idle at the start"),
        },
        Check {
            name: "every_welcomed_session_stored",
            ok: missing.is_empty(),
            detail: format!(
                "{} welcomed, {} stored, {} missing",
                welcomed.len(),
                rows.len(),
                missing.len()
            ),
        },
        Check {
            name: "every_session_ended_with_a_cause",
            ok: open.is_empty(),
            detail: format!("{} without an end or a cause", open.len()),
        },
        Check {
            name: "no_ghosts",
            ok: ghosts == 0,
            detail: format!(
                "{ghosts} server sockets on port {port} still ESTABLISHED or CLOSE_WAIT"
            ),
        },
    ];
    let counts = std::mem::take(&mut *load.counts.lock().unwrap_or_else(|p| p.into_inner()));
    let report = Report {
        bench: "soak",
        machine: machine_description(),
        duration_s: started.elapsed().as_secs_f64(),
        restarts: settings.restarts,
        clients: settings.clients,
        counts,
        baseline_rss: baseline.rss,
        final_rss: final_sample.rss,
        baseline_fds,
        final_fds,
        sessions_in_store: rows.len(),
        checks,
    };
    print_report(&report);
    if let Some(path) = &settings.json {
        write_json(path, &report)?;
    }
    let failed = report.checks.iter().any(|c| !c.ok);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn start_server(listen: &str, data_dir: &std::path::Path) -> anyhow::Result<ServerProcess> {
    let data_dir = data_dir.to_str().context("data dir is not UTF-8")?;
    ServerProcess::start_in(
        listen,
        data_dir,
        &[
            "--dead-after",
            "4s",
            "--drain-timeout",
            "1s",
            "--workers",
            "1",
        ],
        &[],
    )
}

/// One client thread: a random mix of what wears a server down, until the deadline.
fn client(load: &Load, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while Instant::now() < load.deadline {
        let result = match rng.u8(..10) {
            0..=3 => churn(load, &mut rng),
            4 | 5 => takeover(load),
            6 => bad_input(load),
            7 => stalled_reader(load),
            _ => abandoned_job(load, &mut rng),
        };
        if result.is_err() {
            load.count(|c| c.interrupted += 1);
            // The server may be restarting: a short pause, not a spin.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    fn connect(load: &Load) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&load.addr, REPLY_LIMIT)?;
        stream.set_read_timeout(Some(REPLY_LIMIT))?;
        stream.set_write_timeout(Some(REPLY_LIMIT))?;
        load.count(|c| c.connections += 1);
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    fn send(&mut self, command: &Command) -> std::io::Result<()> {
        let mut line = Vec::new();
        command.encode(&mut line);
        self.stream.write_all(&line)
    }

    /// The next reply that is not a `#` probe.
    fn reply(&mut self) -> std::io::Result<Reply> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            match Reply::parse(&line) {
                Ok(Reply::Probe) => continue,
                Ok(reply) => return Ok(reply),
                Err(err) => return Err(std::io::Error::other(err.to_string())),
            }
        }
    }

    fn hello(&mut self, load: &Load, device: &str) -> std::io::Result<()> {
        self.send(&Command::Hello {
            device: device.to_owned(),
            token: None,
            heartbeat: Some(Duration::from_secs(2)),
        })?;
        match self.reply()? {
            Reply::Welcome(session, _) => {
                load.welcomed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(session.to_string());
                load.count(|c| c.sessions_welcomed += 1);
                Ok(())
            }
            other => Err(std::io::Error::other(format!("HELLO answered {other}"))),
        }
    }
}

fn device(load: &Load) -> String {
    format!("soak-{}", load.next_device.fetch_add(1, Ordering::Relaxed))
}

/// A session that says a few things and leaves, by BYE or by just closing.
fn churn(load: &Load, rng: &mut fastrand::Rng) -> std::io::Result<()> {
    let mut client = Client::connect(load)?;
    client.hello(load, &device(load))?;
    for i in 0..rng.u8(1..5) {
        client.send(&Command::Ping(format!("soak {i}")))?;
        client.reply()?;
    }
    client.send(&Command::Job {
        rounds: 1000,
        seed: "soak".into(),
    })?;
    client.reply()?; // ACCEPTED
    client.reply()?; // DONE
    load.count(|c| c.jobs_done += 1);
    if rng.bool() {
        client.send(&Command::Bye)?;
        client.reply()?;
    }
    Ok(())
}

/// The same device connects again while its first connection is open: the first must
/// be told `KICKED takeover`.
fn takeover(load: &Load) -> std::io::Result<()> {
    let device = device(load);
    let mut first = Client::connect(load)?;
    first.hello(load, &device)?;
    let mut second = Client::connect(load)?;
    second.hello(load, &device)?;
    match first.reply()? {
        Reply::KickedTakeover => load.count(|c| c.takeovers_seen += 1),
        other => return Err(std::io::Error::other(format!("takeover answered {other}"))),
    }
    second.send(&Command::Ping("after takeover".into()))?;
    second.reply()?;
    Ok(())
}

/// Malformed, binary and over-long lines: each gets its `ERR`, the connection lives.
fn bad_input(load: &Load) -> std::io::Result<()> {
    let mut client = Client::connect(load)?;
    let long = vec![b'x'; hangup_core::MAX_LINE * 3];
    let lines: [&[u8]; 5] = [
        b"FROB\n",
        b"JOB -1\n",
        b"PING \xff\xfe\n",
        b"PING a\rb\n",
        &long,
    ];
    for line in lines {
        client.stream.write_all(line)?;
        if line == long.as_slice() {
            client.stream.write_all(b"\n")?;
        }
        match client.reply()? {
            Reply::Err(..) => load.count(|c| c.bad_lines_answered += 1),
            other => return Err(std::io::Error::other(format!("bad line answered {other}"))),
        }
    }
    client.send(&Command::Ping("still here".into()))?;
    client.reply()?;
    Ok(())
}

/// A reader that asks for replies and stops reading them, then goes away.
fn stalled_reader(load: &Load) -> std::io::Result<()> {
    let mut client = Client::connect(load)?;
    client
        .stream
        .set_write_timeout(Some(Duration::from_millis(200)))?;
    let ping = format!("PING {}\n", "p".repeat(1000));
    for _ in 0..500 {
        if client.stream.write_all(ping.as_bytes()).is_err() {
            break;
        }
    }
    load.count(|c| c.stalled_readers += 1);
    std::thread::sleep(Duration::from_millis(300));
    // Closing with unread replies: the kernel resets; the server must let go.
    let mut sink = [0u8; 1];
    let _ = client.stream.set_nonblocking(true);
    let _ = client.stream.read(&mut sink);
    Ok(())
}

/// A long job whose client hangs up, half the time with RST.
fn abandoned_job(load: &Load, rng: &mut fastrand::Rng) -> std::io::Result<()> {
    let mut client = Client::connect(load)?;
    client.send(&Command::Job {
        rounds: 10_000_000_000,
        seed: "abandoned".into(),
    })?;
    client.reply()?; // ACCEPTED
    std::thread::sleep(Duration::from_millis(rng.u64(5..50)));
    if rng.bool() {
        let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
    }
    load.count(|c| c.jobs_abandoned += 1);
    Ok(())
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("read /proc/{pid}/fd"))?
        .count())
}

/// Server sockets on `port` still ESTABLISHED or CLOSE_WAIT, from the kernel's table.
fn held_sockets(port: u16) -> anyhow::Result<usize> {
    let snapshot = hangup_inspect::collect().context("read the kernel's socket table")?;
    Ok(snapshot
        .sockets
        .iter()
        .filter(|s| s.local.port() == port && s.peer.port() != 0)
        .filter(|s| {
            matches!(
                s.state,
                hangup_inspect::TcpState::Established | hangup_inspect::TcpState::CloseWait
            )
        })
        .count())
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn print_report(r: &Report) {
    println!(
        "hangup bench soak: {:.1} s, {} clients, {} restarts ({})",
        r.duration_s, r.clients, r.restarts, r.machine
    );
    let c = &r.counts;
    println!(
        "  load: {} connections, {} sessions, {} takeovers, {} bad lines answered, {} jobs done, {} abandoned, {} stalled readers, {} interrupted by restarts",
        c.connections,
        c.sessions_welcomed,
        c.takeovers_seen,
        c.bad_lines_answered,
        c.jobs_done,
        c.jobs_abandoned,
        c.stalled_readers,
        c.interrupted
    );
    for check in &r.checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        println!("  {mark} {:<32} {}", check.name, check.detail);
    }
}
