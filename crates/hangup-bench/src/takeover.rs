//! `hangup bench takeover`: a reconnect storm against a real `hangup serve`.
//!
//! Devices are taken in waves (two descriptors each must fit under the per-process
//! limit). In a wave, every device first opens a session (`HELLO dev-N`) and keeps it;
//! then the storm: every device connects again and says `HELLO` on the new connection,
//! `--concurrency` at a time, while the old one is still open. For each device it
//! measures, on this machine's monotonic clock:
//!
//! - *eviction*: from the new `HELLO` written to `KICKED takeover` read on the old
//!   connection (what the old device sees; includes the server's queue of HELLOs);
//! - *handover*: from the new `HELLO` written to `WELCOME` read on the new one.
//!
//! After each wave it counts ghosts in the kernel's socket table (sock_diag): server
//! sockets on the port still ESTABLISHED or CLOSE_WAIT beyond the live sessions. At the
//! end it stops the server (SIGTERM) and checks the presence store: one row per session,
//! every evicted one ended with cause `takeover`, and the writer's largest backlog.
//!
//! `--nodes N` (N > 1) runs N `serve --cluster` nodes on one Redis (its own
//! `redis-server`, killed by pid at the end, unless `--redis URL`): device i opens its
//! session on node i mod N and reconnects to node i+1 mod N, so every eviction crosses
//! nodes; it also reports the Redis round trips the nodes made (from their
//! `cluster_left` events).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangup_core::{Cause, Command, Reply};
use hangup_server::presence::{query, PresenceFilter};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{command_line, machine_description, percentile, write_json, ServerProcess};

/// What `bench takeover` measures.
#[derive(Debug, Clone)]
pub struct TakeoverSettings {
    /// Devices that reconnect, in total.
    pub devices: usize,
    /// Devices per wave: each wave holds this many old sessions plus as many new
    /// connections (two descriptors a device).
    pub wave: usize,
    /// Reconnects in flight at once during the storm.
    pub concurrency: usize,
    /// Cluster nodes to run; more than one: every takeover is a cross-node eviction.
    pub nodes: usize,
    /// With `nodes`: this Redis instead of one the bench starts.
    pub redis: Option<String>,
    /// The server's presence durability.
    pub presence_durability: hangup_server::PresenceDurability,
    /// Write the results as JSON to this file.
    pub json: Option<PathBuf>,
}

/// The most descriptors this process may hold (hard RLIMIT_NOFILE here), less a margin.
const FD_BUDGET: usize = 19_000;
/// How long one step (connect, a reply) may take before the bench gives up.
const STEP_LIMIT: Duration = Duration::from_secs(10);
/// How long the kernel's socket table may take to settle after a wave.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// One device's open session.
struct Session {
    reader: BufReader<OwnedReadHalf>,
    /// Kept open: dropping it would half-close the connection.
    _writer: OwnedWriteHalf,
}

/// What one reconnect measured, in microseconds.
struct Reconnect {
    eviction_us: f64,
    handover_us: f64,
    /// The old connection got KICKED and then EOF (not an RST).
    clean_close: bool,
    new: Session,
}

#[derive(Debug, Serialize)]
struct Distribution {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Distribution {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Self {
            p50_us: percentile(&samples, 50.0),
            p90_us: percentile(&samples, 90.0),
            p99_us: percentile(&samples, 99.0),
            max_us: samples.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    devices: usize,
    nodes: usize,
    wave: usize,
    concurrency: usize,
    machine: String,
    reconnects: usize,
    storm_seconds: f64,
    reconnects_per_second: f64,
    eviction: Distribution,
    handover: Distribution,
    /// Old connections that did not end with KICKED then EOF.
    unclean_old_closes: usize,
    /// Largest count, over the waves, of server sockets ESTABLISHED or CLOSE_WAIT
    /// beyond the live sessions, once the table settled.
    ghosts_left: usize,
    /// Longest time the socket table took to settle after a wave.
    settle_ms_max: u64,
    presence_rows: usize,
    presence_takeover_rows: usize,
    presence_max_pending: u64,
    presence_max_batch_ms: f64,
    /// Cluster mode: round trips to Redis by every node over the whole run (leases,
    /// sweeps, the opening sessions' claims and the storm's).
    redis_round_trips: Option<u64>,
    /// Cluster mode: those round trips per reconnect (each device is claimed twice).
    redis_round_trips_per_takeover: Option<f64>,
    /// Cluster mode: sessions evicted by a message from another node.
    cluster_evictions: Option<u64>,
}

/// Events the bench keeps from its servers.
const WANTED: &[&str] = &["shutdown_complete", "cluster_joined", "cluster_left"];

/// A `redis-server` of the bench's own on a free loopback port, without persistence;
/// killed by its pid (our child) on drop.
struct BenchRedis {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl BenchRedis {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("hangup-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context(
                "could not start redis-server (apt-get install redis-server, or pass --redis URL)",
            )?;
        let redis = Self { child, port, dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > STEP_LIMIT {
                bail!("redis-server did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `bench takeover`.
pub fn takeover(args: &TakeoverSettings) -> anyhow::Result<ExitCode> {
    if args.devices == 0 || args.wave == 0 || args.concurrency == 0 || args.nodes == 0 {
        bail!("--devices, --wave, --concurrency and --nodes must be at least 1");
    }
    if 2 * args.wave + 100 > FD_BUDGET {
        bail!(
            "--wave {} needs {} descriptors in this process (two per device); at most {} fit under the 20 000 descriptor limit",
            args.wave,
            2 * args.wave + 100,
            (FD_BUDGET - 100) / 2
        );
    }
    let wave = args.wave.min(args.devices);
    let own_redis = match (&args.redis, args.nodes) {
        (None, 2..) => Some(BenchRedis::start()?),
        _ => None,
    };
    let cluster_url = args
        .redis
        .clone()
        .or_else(|| own_redis.as_ref().map(BenchRedis::url));
    let max_connections = (2 * wave + 100).to_string();
    let mut servers = Vec::with_capacity(args.nodes);
    for k in 0..args.nodes {
        let node_id = format!("bench-{k}");
        let mut extra = vec![
            "--max-connections",
            &max_connections,
            "--presence-durability",
            args.presence_durability.as_str(),
        ];
        if let Some(url) = &cluster_url {
            extra.extend(["--cluster", url, "--node-id", &node_id]);
        }
        let server = ServerProcess::start(&extra, WANTED)?;
        if cluster_url.is_some() {
            server
                .wait_event(STEP_LIMIT, |e| e["event"] == "cluster_joined")
                .with_context(|| format!("node {node_id} did not join the cluster"))?;
        }
        servers.push(server);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    eprintln!(
        "bench takeover: {} node(s) at {addrs:?}; {} devices in waves of {wave}, {} reconnects in flight",
        args.nodes, args.devices, args.concurrency
    );
    let runtime = super::runtime()?;
    let waves = runtime.block_on(run_waves(&addrs, args, wave))?;
    let (mut rows, mut takeover_rows, mut max_pending, mut max_batch_us) = (0, 0, 0, 0);
    let mut round_trips = 0;
    let mut evictions = 0;
    for server in &mut servers {
        server
            .terminate(STEP_LIMIT)
            .context("the server did not shut down cleanly")?;
        // `cluster_left` comes first: waiting skips the events before the one wanted.
        if cluster_url.is_some() {
            let left = server
                .wait_event(STEP_LIMIT, |e| e["event"] == "cluster_left")
                .context("a node did not leave the cluster cleanly")?;
            round_trips += left["round_trips"].as_u64().unwrap_or(0);
            evictions += left["evictions"].as_u64().unwrap_or(0);
        }
        let complete = server
            .wait_event(STEP_LIMIT, |e| e["event"] == "shutdown_complete")
            .context("no shutdown_complete event")?;
        max_pending = max_pending.max(complete["presence_max_pending"].as_u64().unwrap_or(0));
        max_batch_us = max_batch_us.max(complete["presence_max_batch_us"].as_u64().unwrap_or(0));
        let stored = query(
            server.data_dir(),
            &PresenceFilter {
                device: None,
                online_only: false,
                limit: None,
            },
        )
        .context("could not read the presence store")?;
        rows += stored.len();
        takeover_rows += stored
            .iter()
            .filter(|row| row.cause == Some(Cause::Takeover))
            .count();
    }
    drop(own_redis);
    let clustered = cluster_url.is_some();
    let report = Report {
        bench: "takeover",
        devices: args.devices,
        nodes: args.nodes,
        wave,
        concurrency: args.concurrency,
        machine: machine_description(),
        reconnects: waves.evictions.len(),
        storm_seconds: waves.storm_time.as_secs_f64(),
        reconnects_per_second: waves.evictions.len() as f64 / waves.storm_time.as_secs_f64(),
        eviction: Distribution::of(waves.evictions),
        handover: Distribution::of(waves.handovers),
        unclean_old_closes: waves.unclean,
        ghosts_left: waves.ghosts_max,
        settle_ms_max: waves.settle_max.as_millis() as u64,
        presence_rows: rows,
        presence_takeover_rows: takeover_rows,
        presence_max_pending: max_pending,
        presence_max_batch_ms: max_batch_us as f64 / 1000.0,
        redis_round_trips: clustered.then_some(round_trips),
        redis_round_trips_per_takeover: clustered.then(|| round_trips as f64 / args.devices as f64),
        cluster_evictions: clustered.then_some(evictions),
    };
    print_table(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let expected_rows = 2 * args.devices;
    let ok = report.ghosts_left == 0
        && report.unclean_old_closes == 0
        && (!clustered || report.cluster_evictions == Some(args.devices as u64))
        && report.presence_rows == expected_rows
        && report.presence_takeover_rows == args.devices;
    if !ok {
        eprintln!(
            "bench takeover: FAILED: ghosts {}, unclean closes {}, presence rows {}/{expected_rows}, takeover rows {}/{}",
            report.ghosts_left,
            report.unclean_old_closes,
            report.presence_rows,
            report.presence_takeover_rows,
            args.devices
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Waves {
    evictions: Vec<f64>,
    handovers: Vec<f64>,
    unclean: usize,
    storm_time: Duration,
    ghosts_max: usize,
    settle_max: Duration,
}

/// Device `i` opens its session on `addrs[i % n]` and reconnects to `addrs[(i + 1) % n]`
/// (the same server with one node).
async fn run_waves(
    addrs: &[SocketAddr],
    args: &TakeoverSettings,
    wave: usize,
) -> anyhow::Result<Waves> {
    let mut waves = Waves {
        evictions: Vec::with_capacity(args.devices),
        handovers: Vec::with_capacity(args.devices),
        unclean: 0,
        storm_time: Duration::ZERO,
        ghosts_max: 0,
        settle_max: Duration::ZERO,
    };
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut first = 0;
    while first < args.devices {
        let count = wave.min(args.devices - first);
        let devices: Vec<String> = (first..first + count).map(|i| format!("dev-{i}")).collect();
        // The old sessions, opened at a modest pace (this is not what is measured).
        let opener = Arc::new(Semaphore::new(64));
        let mut opening = Vec::with_capacity(count);
        let ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
        let home = |i: usize| addrs[(first + i) % addrs.len()];
        let next = |i: usize| addrs[(first + i + 1) % addrs.len()];
        for (i, device) in devices.iter().enumerate() {
            let device = device.clone();
            let opener = opener.clone();
            let addr = home(i);
            opening.push(tokio::spawn(async move {
                let _permit = opener.acquire().await;
                open_session(addr, &device)
                    .await
                    .map(|(session, _)| session)
            }));
        }
        let mut olds = Vec::with_capacity(count);
        for task in opening {
            olds.push(task.await.context("opener task")??);
        }
        // The storm.
        let storm = Instant::now();
        let mut storming = Vec::with_capacity(count);
        for (i, (device, old)) in devices.into_iter().zip(olds).enumerate() {
            let gate = gate.clone();
            let addr = next(i);
            storming.push(tokio::spawn(async move {
                let _permit = gate.acquire().await;
                reconnect(addr, &device, old).await
            }));
        }
        let mut news = Vec::with_capacity(count);
        for task in storming {
            let reconnect = task.await.context("storm task")??;
            waves.evictions.push(reconnect.eviction_us);
            waves.handovers.push(reconnect.handover_us);
            waves.unclean += usize::from(!reconnect.clean_close);
            news.push(reconnect.new);
        }
        waves.storm_time += storm.elapsed();
        // Ghosts: with every old connection kicked and closed, the server must hold
        // exactly the new ones.
        let (ghosts, settle) = count_ghosts(&ports, count).await?;
        waves.ghosts_max = waves.ghosts_max.max(ghosts);
        waves.settle_max = waves.settle_max.max(settle);
        drop(news);
        first += count;
        eprintln!(
            "bench takeover: {first}/{} devices reconnected; ghosts after the wave: {ghosts} (settled in {settle:.0?})",
            args.devices
        );
        // Let the server see the new connections go before the next wave opens more.
        count_ghosts(&ports, 0).await?;
    }
    Ok(waves)
}

/// Connects and opens a session; returns it and when `HELLO` was written.
async fn open_session(addr: SocketAddr, device: &str) -> anyhow::Result<(Session, Instant)> {
    let stream = tokio::time::timeout(STEP_LIMIT, TcpStream::connect(addr))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let hello_at = Instant::now();
    let hello = Command::Hello {
        device: device.to_owned(),
        token: None,
        heartbeat: Some(Duration::from_secs(3600)),
    };
    write.write_all(&command_line(&hello)).await?;
    let line = read_line(&mut reader).await?;
    if !matches!(Reply::parse(&line), Ok(Reply::Welcome(..))) {
        bail!("{device}: expected WELCOME, got {line:?}");
    }
    Ok((
        Session {
            reader,
            _writer: write,
        },
        hello_at,
    ))
}

/// The device connects again; waits for its old connection's KICKED and EOF.
async fn reconnect(addr: SocketAddr, device: &str, mut old: Session) -> anyhow::Result<Reconnect> {
    let (new, hello_at) = open_session(addr, device).await?;
    let handover = hello_at.elapsed();
    let kicked = read_line(&mut old.reader).await?;
    let eviction = hello_at.elapsed();
    if Reply::parse(&kicked) != Ok(Reply::KickedTakeover) {
        bail!("{device}: the old connection got {kicked:?} instead of KICKED takeover");
    }
    let clean_close = matches!(read_line(&mut old.reader).await, Ok(line) if line.is_empty());
    Ok(Reconnect {
        eviction_us: eviction.as_secs_f64() * 1e6,
        handover_us: handover.as_secs_f64() * 1e6,
        clean_close,
        new,
    })
}

/// One line without its ending; empty at EOF.
async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> anyhow::Result<String> {
    let mut line = String::new();
    tokio::time::timeout(STEP_LIMIT, reader.read_line(&mut line))
        .await
        .context("no reply in time")?
        .context("read")?;
    Ok(line.trim_end().to_owned())
}

/// Server sockets on `ports` that are ESTABLISHED or CLOSE_WAIT beyond `live`, from the
/// kernel's table, polled until it settles (or [`SETTLE_LIMIT`]); and how long that took.
async fn count_ghosts(ports: &[u16], live: usize) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    loop {
        let snapshot = tokio::task::spawn_blocking(hangup_inspect::collect)
            .await
            .context("sock_diag task")?
            .context("could not read the kernel's socket table")?;
        let held = snapshot
            .sockets
            .iter()
            .filter(|s| ports.contains(&s.local.port()) && s.peer.port() != 0)
            .filter(|s| {
                matches!(
                    s.state,
                    hangup_inspect::TcpState::Established | hangup_inspect::TcpState::CloseWait
                )
            })
            .count();
        let ghosts = held.saturating_sub(live);
        if ghosts == 0 || started.elapsed() >= SETTLE_LIMIT {
            return Ok((ghosts, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_table(r: &Report) {
    println!(
        "hangup bench takeover: {} devices, waves of {}, {} reconnects in flight, {} node(s)",
        r.devices, r.wave, r.concurrency, r.nodes
    );
    println!("machine: {}", r.machine);
    println!(
        "reconnects: {} in {:.1} s ({:.0}/s)",
        r.reconnects, r.storm_seconds, r.reconnects_per_second
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for (name, d) in [
        ("eviction (HELLO -> KICKED)", &r.eviction),
        ("handover (HELLO -> WELCOME)", &r.handover),
    ] {
        println!(
            "{name:<30} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            d.p50_us, d.p90_us, d.p99_us, d.max_us
        );
    }
    println!(
        "ghosts left: {} (kernel socket table; settled within {} ms)",
        r.ghosts_left, r.settle_ms_max
    );
    println!(
        "old connections not ended by KICKED + EOF: {}",
        r.unclean_old_closes
    );
    println!(
        "presence: {} rows, {} ended by takeover; writer backlog max {} sessions, slowest batch {:.1} ms",
        r.presence_rows, r.presence_takeover_rows, r.presence_max_pending, r.presence_max_batch_ms
    );
    if let (Some(trips), Some(per), Some(evictions)) = (
        r.redis_round_trips,
        r.redis_round_trips_per_takeover,
        r.cluster_evictions,
    ) {
        println!(
            "cluster: {evictions} cross-node evictions; {trips} Redis round trips by all nodes ({per:.2} per takeover, leases and the opening claims included)"
        );
    }
}
