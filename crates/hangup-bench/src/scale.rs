//! `hangup bench scale`: many concurrent heartbeating sessions against reuse-port
//! server instances.
//!
//! A process may hold at most 20 000 descriptors here, so both sides are spread over
//! processes the way nginx runs workers: K `hangup serve --reuse-port` instances share
//! one port (the kernel spreads connections over them), and the sessions come from load
//! workers (`load.rs`) of at most `--per-worker` sessions, each from its own 127.0.x.y
//! source address (one address offers one port range towards the server port).
//!
//! Phases: ramp-up (every worker opens its sessions; the time until all are open is the
//! ramp-up time), a second to settle, then the hold: every session keeps heartbeating
//! and the workers time each `PING` round trip. Server memory is read from /proc before
//! the ramp and after it; server CPU over the hold, divided by the `PONG`s answered.
//!
//! `--peer mosquitto` runs such rounds against `hangup serve` and against a mosquitto
//! the bench starts (`mosquitto.rs`), `--repeat` of each, interleaved, with the same
//! load workers speaking MQTT there (`mqtt.rs`), and prints the figures side by side
//! with the ratios hangup/mosquitto.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::load::{
    merged_rtt, mqtt_keepalive, shares, sum_reasons, Fleet, LoadProtocol, WorkerPlan,
    SESSIONS_PER_ADDRESS,
};
use super::mosquitto::{self, Mosquitto};
use super::netstat::{CounterGrowth, Counters};
use super::own_netns;
use super::procfs::{thread_cpu_us_between, Limits, MachineSample, ProcessSample};
use super::{
    check_interrupt, load_average, machine_description, sleep_checked, write_json, ServerProcess,
};

/// What `bench scale` measures, and against what.
#[derive(Debug, Clone)]
pub struct ScaleSettings {
    /// Sessions to open and hold.
    pub connections: usize,
    /// The heartbeat every session asks for, in whole seconds (the protocol's unit).
    pub heartbeat: u64,
    /// Server instances sharing the port; `None`: about 18 000 sessions each.
    pub instances: Option<usize>,
    /// Load a server already running here instead of starting instances.
    pub target: Option<SocketAddr>,
    /// With `target`: the server processes to measure (memory, CPU).
    pub server_pid: Vec<u32>,
    /// How long to hold every session once all are open; `None`: 2 heartbeats, at
    /// least 20 s.
    pub hold: Option<Duration>,
    /// Sessions per load-worker process.
    pub per_worker: usize,
    /// Connects plus HELLOs in flight per load worker during ramp-up.
    pub concurrency: usize,
    /// The servers' dead-after D; `None`: 3 × heartbeat.
    pub dead_after: Option<Duration>,
    /// The servers' `--io-threads`; `None`: their default (one per CPU).
    pub io_threads: Option<usize>,
    /// Give up if ramp-up takes longer than this.
    pub ramp_limit: Duration,
    /// Run the same load against this peer too, in the same run: rounds alternate
    /// between hangup and the peer.
    pub peer: Option<ScalePeer>,
    /// Rounds per server (with `peer`), interleaved: hangup, peer, peer, hangup, …
    pub repeat: usize,
    /// Run the whole bench in a network namespace of its own, with a TCP table sized
    /// for `connections` (`own_netns.rs`).
    pub netns: bool,
    /// Write the results as JSON to this file.
    pub json: Option<PathBuf>,
}

/// A third-party server `bench scale --peer` runs the same load against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalePeer {
    /// mosquitto (MQTT 3.1.1 broker): CONNECT with keepalive, PINGREQ → PINGRESP.
    Mosquitto,
}

impl ScalePeer {
    /// The name as `--peer` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Mosquitto => "mosquitto",
        }
    }
}

impl std::fmt::Display for ScalePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ScalePeer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mosquitto" => Ok(Self::Mosquitto),
            _ => Err(format!("expected `mosquitto`, got `{s}`")),
        }
    }
}

/// Which server one round loads.
enum Under<'a> {
    /// `hangup serve --reuse-port` instances the bench starts.
    Hangup,
    /// A server already running at `--target`.
    External,
    /// A mosquitto the bench starts, from this executable.
    Mosquitto(&'a std::path::Path),
}

impl Under<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::Hangup => "hangup",
            Self::External => "external",
            Self::Mosquitto(_) => "mosquitto",
        }
    }
}

/// Sessions per server instance when the count of instances is left to the bench: under
/// the 20 000 descriptors a process may hold, with room for the uneven spread of
/// SO_REUSEPORT's hash.
pub(crate) const SESSIONS_PER_INSTANCE: usize = 18_000;
/// Descriptors a process needs besides its connections (listener, epoll, SQLite, stdio).
const FD_MARGIN: u64 = 300;

#[derive(Debug, Serialize)]
struct ServerFigures {
    processes: usize,
    /// VmRSS summed over the instances, before the ramp-up, a second after it, and at
    /// the end of the hold.
    rss_before_bytes: u64,
    rss_after_bytes: u64,
    rss_after_hold_bytes: u64,
    /// (VmRSS after − before) / sessions.
    rss_per_connection_bytes: f64,
    /// (VmRSS at the end of the hold − before) / sessions: every session has
    /// heartbeated for the whole hold, and what the ramp-up left in flight is gone.
    rss_per_connection_after_hold_bytes: f64,
    /// (RssAnon after − before) / sessions: the heap and stacks only.
    anon_per_connection_bytes: f64,
    /// CPU time over the hold.
    cpu_user_s: f64,
    cpu_system_s: f64,
    /// (user + system CPU) / PONGs answered during the hold.
    cpu_per_heartbeat_us: f64,
    /// user CPU / PONGs.
    user_cpu_per_heartbeat_us: f64,
    /// (user + system CPU) / PONGs, by thread name: where a heartbeat's cost goes.
    cpu_per_heartbeat_by_thread_us: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct KernelFigures {
    /// Slab growth over the ramp-up / sessions. On loopback both ends are on this
    /// machine: two sockets per session.
    slab_per_session_bytes: f64,
    /// Socket buffer memory charged to TCP (sockstat `TCP: mem`) at the end of the hold.
    tcp_buffer_bytes: u64,
    /// TCP sockets allocated, growth over the ramp-up.
    tcp_sockets_added: u64,
    /// Machine memory in use (MemTotal − MemAvailable), growth over the ramp-up /
    /// sessions: servers, load workers and the kernel's both ends together.
    machine_used_per_session_bytes: f64,
    /// The load workers' VmRSS / sessions.
    load_worker_rss_per_session_bytes: f64,
    /// The load workers' CPU (user + sys) over the hold / `PONG`s: the client side's
    /// share of the machine, which a run on few cores shares with the servers.
    load_worker_cpu_per_heartbeat_us: f64,
}

#[derive(Debug, Serialize)]
struct RttFigures {
    pongs: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    /// `hangup`, `mosquitto` or `external` (`--target`).
    server_kind: &'static str,
    machine: String,
    connections: usize,
    heartbeat_s: u64,
    instances: usize,
    load_workers: usize,
    per_worker: usize,
    hold_s: f64,
    /// The hangup servers' dead-after (not used by mosquitto rounds).
    dead_after_s: f64,
    /// Mosquitto rounds: the keepalive every MQTT session asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt_keepalive_s: Option<u16>,
    sessions_reached: u64,
    sessions_failed: u64,
    open_errors: BTreeMap<String, u64>,
    ramp_s: f64,
    sessions_lost: u64,
    lost_reasons: BTreeMap<String, u64>,
    /// Connections the servers closed before the bench's stop (must be 0).
    server_closes_during_run: u64,
    /// Those closes by the cause the server gave (`connection_closed`'s `cause`).
    server_close_causes: BTreeMap<String, u64>,
    /// Heartbeats a server found waiting in its socket only when the session's budget
    /// was up (its own lag, read before ending the session; `heartbeat_read_late`).
    server_heartbeats_read_late: u64,
    /// The kernel's TCP abort, reset and overflow counters that grew during the round
    /// (the whole machine's network namespace: servers and load workers).
    tcp_counters: CounterGrowth,
    /// Connections the servers closed during the stop (from the end of the hold to the
    /// load workers' reports, before any of them closes a socket), by cause; none is
    /// expected.
    server_close_causes_at_the_stop: BTreeMap<String, u64>,
    /// The same kernel counters' growth during the stop.
    tcp_counters_at_the_stop: CounterGrowth,
    server: Option<ServerFigures>,
    kernel: KernelFigures,
    rtt: RttFigures,
    limits: Limits,
    limits_hit: Vec<String>,
    limits_changed: Vec<String>,
}

/// Runs `bench scale`.
pub fn scale(args: &ScaleSettings) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.per_worker == 0 || args.heartbeat == 0 {
        bail!("--connections, --per-worker and --heartbeat must be at least 1");
    }
    if args.netns && own_netns::inside().is_none() {
        if args.target.is_some() {
            bail!("--netns starts the servers inside the namespace: it does not take --target");
        }
        return own_netns::rerun_inside(args.connections);
    }
    if let Some(peer) = args.peer {
        return compare(args, peer);
    }
    super::catch_interrupts()?;
    let under = if args.target.is_some() {
        Under::External
    } else {
        Under::Hangup
    };
    let report = round(args, &under, &format!("scale{}", std::process::id()))?;
    print_table(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let ok = report_ok(&report, args.connections);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Every session reached and held, none closed by a server; says so on stderr if not.
fn report_ok(report: &Report, connections: usize) -> bool {
    let ok = report.sessions_reached == connections as u64
        && report.sessions_lost == 0
        && report.server_closes_during_run == 0;
    if !ok {
        eprintln!(
            "bench scale: FAILED ({}): {} of {connections} sessions reached, {} lost, {} closed by the servers",
            report.server_kind,
            report.sessions_reached,
            report.sessions_lost,
            report.server_closes_during_run
        );
    }
    ok
}

/// One round: start the server(s) of `under`, ramp up, hold, measure, stop.
fn round(args: &ScaleSettings, under: &Under<'_>, prefix: &str) -> anyhow::Result<Report> {
    let limits = Limits::read();
    let fd_room = limits.nofile.0.saturating_sub(FD_MARGIN) as usize;
    let port_room = limits.ports_per_address() as usize;
    let per_worker = args.per_worker.min(fd_room).min(port_room).max(1);
    let mut limits_hit = Vec::new();
    if per_worker < args.per_worker {
        limits_hit.push(format!(
            "--per-worker {} lowered to {per_worker}: RLIMIT_NOFILE {} per process and {port_room} local ports per source address",
            args.per_worker, limits.nofile.0
        ));
    }
    let dead_after = args
        .dead_after
        .unwrap_or(Duration::from_secs(3 * args.heartbeat));
    let hold = args
        .hold
        .unwrap_or_else(|| Duration::from_secs(2 * args.heartbeat).max(Duration::from_secs(20)));
    let machine_before = MachineSample::read();
    // Who resets connections, if any are lost: the kernel's own counters.
    let tcp_before = Counters::read().ok();

    // The servers.
    let mut broker = None;
    let mut limits_changed = Vec::new();
    let (target, servers, server_pids) = match (under, args.target) {
        (Under::External, Some(target)) => (target, Vec::new(), args.server_pid.clone()),
        (Under::Mosquitto(binary), _) => {
            let mosquitto = Mosquitto::start(binary, args.connections)?;
            let (target, pid) = (mosquitto.addr, mosquitto.pid());
            broker = Some(mosquitto);
            limits_changed.push(format!(
                "mosquitto's soft RLIMIT_NOFILE raised to its hard limit ({}): one process holds every session",
                limits.nofile.1
            ));
            (target, Vec::new(), vec![pid])
        }
        _ => {
            let instances = args
                .instances
                .unwrap_or(args.connections.div_ceil(SESSIONS_PER_INSTANCE))
                .max(1);
            let per_instance = args.connections.div_ceil(instances);
            if per_instance > fd_room {
                limits_hit.push(format!(
                    "{per_instance} sessions per instance do not fit under RLIMIT_NOFILE {}: some will be refused (`ERR busy`)",
                    limits.nofile.0
                ));
            }
            let io_threads = args.io_threads.map(|n| n.to_string());
            let extra: Vec<&str> = match &io_threads {
                Some(n) => vec!["--io-threads", n],
                None => Vec::new(),
            };
            let servers = start_servers(instances, fd_room, dead_after, &extra)?;
            let target = servers[0].addr;
            let pids = servers.iter().map(ServerProcess::pid).collect();
            (target, servers, pids)
        }
    };
    limits_changed.extend(own_netns::inside());
    let instances = servers.len().max(server_pids.len());
    let server_before: Vec<ProcessSample> = sample_all(&server_pids);

    // The load.
    let protocol = match under {
        Under::Mosquitto(_) => LoadProtocol::Mqtt,
        Under::Hangup | Under::External => LoadProtocol::Line,
    };
    let plans = plan_workers(
        args.connections,
        per_worker,
        target,
        prefix,
        args.heartbeat,
        args.concurrency,
        protocol,
    )?;
    eprintln!(
        "bench scale: {} sessions, heartbeat {} s, {} {} process(es) at {target}, {} load workers ({protocol})",
        args.connections,
        args.heartbeat,
        if instances == 0 { "external".to_string() } else { instances.to_string() },
        under.kind(),
        plans.len()
    );
    let (mut fleet, ready, ramp, memory) =
        Fleet::ramp_up(&plans, args.connections, args.ramp_limit)?;
    let reached: u64 = ready.iter().map(|l| l["open"].as_u64().unwrap_or(0)).sum();
    let failed: u64 = ready
        .iter()
        .map(|l| l["failed"].as_u64().unwrap_or(0))
        .sum();
    let open_errors = sum_reasons(&ready, "errors");
    eprintln!(
        "bench scale: {reached} sessions open in {:.1} s ({failed} failed); holding for {hold:?}",
        ramp.as_secs_f64()
    );

    sleep_checked(Duration::from_secs(1), |_| {})?;
    let server_after_ramp = sample_all(&server_pids);
    let machine_after_ramp = MachineSample::read();
    let workers_after_ramp = sample_all(&fleet.pids());
    let worker_rss: u64 = workers_after_ramp.iter().map(|s| s.rss).sum();
    fleet.broadcast("measure");
    let hold_bar = ProgressBar::new(hold.as_secs()).with_style(
        ProgressStyle::with_template("hold {elapsed_precise} [{bar:40}] {pos}/{len} s")?
            .progress_chars("=> "),
    );
    sleep_checked(hold, |elapsed| hold_bar.set_position(elapsed.as_secs()))?;
    hold_bar.finish_and_clear();
    let server_after_hold = sample_all(&server_pids);
    let workers_after_hold = sample_all(&fleet.pids());
    let machine_at_end = MachineSample::read();
    // Before the stop: the teardown's own resets (a million sockets closing) are not the
    // run's.
    let tcp_after = Counters::read().ok();
    let mut server_heartbeats_read_late = 0;
    let server_close_causes = close_causes(&servers, |event| {
        if event["event"] == "heartbeat_read_late" {
            server_heartbeats_read_late += 1;
        }
    });
    let server_closes = server_close_causes.values().sum();
    check_interrupt()?;
    fleet.broadcast("stop");
    let done = fleet.wait_all("done", Duration::from_secs(120), |_, _| false)?;
    // The stop on its own, up to the load workers' reports: each looks at every socket
    // once more (a loss found then is named so); none closes a socket before every
    // report is in (the fleet's drop below). So a server's close in this window, and
    // the counters' growth, are who ended a session that the stop found gone.
    let tcp_at_the_stop = Counters::read().ok();
    let server_close_causes_at_the_stop = close_causes(&servers, |_| {});
    drop(fleet);
    drop(servers);
    drop(broker);

    let lost: u64 = done.iter().map(|l| l["lost"].as_u64().unwrap_or(0)).sum();
    let tcp_counters_at_the_stop =
        CounterGrowth::between(tcp_after.as_ref(), tcp_at_the_stop.as_ref());
    let tcp_counters = CounterGrowth::between(tcp_before.as_ref(), tcp_after.as_ref());
    let rtt = merged_rtt(&done);
    let per_session = |bytes: f64| {
        if reached == 0 {
            f64::NAN
        } else {
            bytes / reached as f64
        }
    };
    let sum = |samples: &[ProcessSample], f: fn(&ProcessSample) -> f64| -> f64 {
        samples.iter().map(f).sum()
    };
    // CPU figures are per heartbeat answered in the hold.
    let pongs = rtt.count().max(1) as f64;
    let server = (!server_pids.is_empty()).then(|| {
        // (VmRSS in `after` − before the ramp-up) / sessions.
        let rss_per_session = |after: &[ProcessSample]| {
            per_session(sum(after, |s| s.rss as f64) - sum(&server_before, |s| s.rss as f64))
        };
        let user = sum(&server_after_hold, |s| s.utime_s) - sum(&server_after_ramp, |s| s.utime_s);
        let system =
            sum(&server_after_hold, |s| s.stime_s) - sum(&server_after_ramp, |s| s.stime_s);
        let by_thread = thread_cpu_us_between(&server_after_ramp, &server_after_hold, pongs);
        ServerFigures {
            processes: server_pids.len(),
            rss_before_bytes: sum(&server_before, |s| s.rss as f64) as u64,
            rss_after_bytes: sum(&server_after_ramp, |s| s.rss as f64) as u64,
            rss_after_hold_bytes: sum(&server_after_hold, |s| s.rss as f64) as u64,
            rss_per_connection_bytes: rss_per_session(&server_after_ramp),
            rss_per_connection_after_hold_bytes: rss_per_session(&server_after_hold),
            anon_per_connection_bytes: per_session(
                sum(&server_after_ramp, |s| s.rss_anon as f64)
                    - sum(&server_before, |s| s.rss_anon as f64),
            ),
            cpu_user_s: user,
            cpu_system_s: system,
            cpu_per_heartbeat_us: (user + system) * 1e6 / pongs,
            user_cpu_per_heartbeat_us: user * 1e6 / pongs,
            cpu_per_heartbeat_by_thread_us: by_thread,
        }
    });
    let kernel = KernelFigures {
        slab_per_session_bytes: per_session(
            machine_after_ramp.slab as f64 - machine_before.slab as f64,
        ),
        tcp_buffer_bytes: machine_at_end.tcp_buffers,
        tcp_sockets_added: machine_after_ramp
            .tcp_sockets
            .saturating_sub(machine_before.tcp_sockets),
        machine_used_per_session_bytes: per_session(
            machine_after_ramp.used as f64 - machine_before.used as f64,
        ),
        load_worker_rss_per_session_bytes: per_session(worker_rss as f64),
        load_worker_cpu_per_heartbeat_us: (sum(&workers_after_hold, ProcessSample::cpu_s)
            - sum(&workers_after_ramp, ProcessSample::cpu_s))
            * 1e6
            / pongs,
    };
    limits_hit.extend(limits_from_errors(&open_errors));
    limits_hit.extend(memory.describe());
    // tcp_mem is the host's only: a namespace of the bench's own (`--netns`) has none,
    // and then there is no mark to compare with.
    let tcp_pressure = limits
        .tcp_mem_pages
        .get(1)
        .map_or(u64::MAX, |pages| pages.saturating_mul(4096));
    if machine_at_end.tcp_buffers >= tcp_pressure {
        limits_hit.push(format!(
            "net.ipv4.tcp_mem pressure: {} bytes of TCP buffers",
            machine_at_end.tcp_buffers
        ));
    }
    if machine_after_ramp.open_files * 10 >= limits.file_max * 9 {
        limits_hit.push(format!(
            "fs.file-max {}: {} files open",
            limits.file_max, machine_after_ramp.open_files
        ));
    }
    let report = Report {
        bench: "scale",
        server_kind: under.kind(),
        machine: machine_description(),
        connections: args.connections,
        heartbeat_s: args.heartbeat,
        instances,
        load_workers: plans.len(),
        per_worker,
        hold_s: hold.as_secs_f64(),
        dead_after_s: dead_after.as_secs_f64(),
        mqtt_keepalive_s: (protocol == LoadProtocol::Mqtt).then(|| mqtt_keepalive(args.heartbeat)),
        sessions_reached: reached,
        sessions_failed: failed,
        open_errors,
        ramp_s: ramp.as_secs_f64(),
        sessions_lost: lost,
        lost_reasons: sum_reasons(&done, "lost_reasons"),
        server_closes_during_run: server_closes,
        server_close_causes,
        server_heartbeats_read_late,
        tcp_counters,
        server_close_causes_at_the_stop,
        tcp_counters_at_the_stop,
        server,
        kernel,
        rtt: RttFigures {
            pongs: rtt.count(),
            p50_us: rtt.percentile(50.0),
            p90_us: rtt.percentile(90.0),
            p99_us: rtt.percentile(99.0),
            max_us: rtt.percentile(100.0),
        },
        limits,
        limits_hit,
        limits_changed: if limits_changed.is_empty() {
            vec!["none: the bench sets no sysctl and no rlimit".to_string()]
        } else {
            limits_changed
        },
    };
    Ok(report)
}

/// K instances of `hangup serve --reuse-port` on one loopback port, with `extra` flags.
pub(crate) fn start_servers(
    instances: usize,
    max_connections: usize,
    dead_after: Duration,
    extra: &[&str],
) -> anyhow::Result<Vec<ServerProcess>> {
    start_servers_at(
        Ipv4Addr::LOCALHOST.into(),
        instances,
        max_connections,
        dead_after,
        extra,
        &[],
    )
}

/// The servers' closes so far by the cause they gave (`connection_closed`'s `cause`);
/// every other event they kept goes to `other`.
fn close_causes(
    servers: &[ServerProcess],
    mut other: impl FnMut(&serde_json::Value),
) -> BTreeMap<String, u64> {
    let mut causes = BTreeMap::<String, u64>::new();
    for server in servers {
        server.drain_events(|event| {
            if event["event"] == "connection_closed" {
                let cause = event["cause"].as_str().unwrap_or("unknown");
                *causes.entry(cause.to_owned()).or_default() += 1;
            } else {
                other(&event);
            }
        });
    }
    causes
}

/// K instances of `hangup serve --reuse-port` on one port of `ip`, keeping the events
/// named in `wanted` (besides `connection_closed`).
pub(crate) fn start_servers_at(
    ip: IpAddr,
    instances: usize,
    max_connections: usize,
    dead_after: Duration,
    extra: &[&str],
    wanted: &'static [&'static str],
) -> anyhow::Result<Vec<ServerProcess>> {
    let max_connections = max_connections.to_string();
    let dead_after = format!("{}ms", dead_after.as_millis());
    let mut flags = vec![
        "--reuse-port",
        "--max-connections",
        &max_connections,
        "--dead-after",
        &dead_after,
    ];
    flags.extend_from_slice(extra);
    let wanted: &'static [&'static str] = if wanted.is_empty() {
        &["connection_closed", "heartbeat_read_late"]
    } else {
        wanted
    };
    let mut servers: Vec<ServerProcess> = Vec::with_capacity(instances);
    for _ in 0..instances {
        check_interrupt()?;
        let listen = match servers.first() {
            Some(first) => first.addr,
            None => SocketAddr::new(ip, 0),
        };
        servers.push(
            ServerProcess::start_at(&listen.to_string(), &flags, wanted)
                .context("could not start a server instance")?,
        );
    }
    Ok(servers)
}

/// The workers' shares and source addresses: 127.0.x.y from 127.0.0.2 on, at most
/// [`SESSIONS_PER_ADDRESS`] sessions each.
fn plan_workers(
    connections: usize,
    per_worker: usize,
    target: SocketAddr,
    prefix: &str,
    heartbeat: u64,
    concurrency: usize,
    protocol: LoadProtocol,
) -> anyhow::Result<Vec<WorkerPlan>> {
    let shares = shares(connections, per_worker);
    let addresses = connections.div_ceil(SESSIONS_PER_ADDRESS) + shares.len();
    if addresses > 250 * 250 {
        bail!("{connections} sessions would need more source addresses than 127.0.0.0/16 has");
    }
    let mut first = 0;
    let mut next_address = 0;
    Ok(shares
        .into_iter()
        .map(|count| {
            let sources = (0..count.div_ceil(SESSIONS_PER_ADDRESS).max(1))
                .map(|_| {
                    let i = next_address;
                    next_address += 1;
                    IpAddr::from(Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 2))
                })
                .collect();
            let plan = WorkerPlan {
                target,
                sources,
                connections: count,
                first_device: first,
                device_prefix: prefix.to_owned(),
                heartbeat: Duration::from_secs(heartbeat),
                concurrency,
                protocol,
                netns: None,
                abort_on_close: false,
            };
            first += count as u64;
            plan
        })
        .collect())
}

fn sample_all(pids: &[u32]) -> Vec<ProcessSample> {
    pids.iter()
        .map(|&pid| ProcessSample::read(pid).unwrap_or_default())
        .collect()
}

/// The limits that the errors of the ramp-up name.
pub(crate) fn limits_from_errors(errors: &BTreeMap<String, u64>) -> Vec<String> {
    errors
        .iter()
        .filter_map(|(error, count)| {
            let limit = if error.starts_with("EMFILE") {
                "RLIMIT_NOFILE (a load worker ran out of descriptors)"
            } else if error.starts_with("ENFILE") {
                "fs.file-max (the system ran out of file handles)"
            } else if error.starts_with("EADDRNOTAVAIL") {
                "net.ipv4.ip_local_port_range (a source address ran out of ports)"
            } else if error.starts_with("ENOMEM") || error.starts_with("ENOBUFS") {
                "kernel memory"
            } else if error.contains("ERR busy") {
                "a server's --max-connections (its descriptor limit)"
            } else if error.contains("timed out") {
                "ramp-up time: connect + HELLO took longer than 30 s (the servers' backlog or CPU)"
            } else {
                return None;
            };
            Some(format!("{limit}: {count} × {error}"))
        })
        .collect()
}

fn print_table(r: &Report) {
    println!(
        "hangup bench scale: {} sessions, heartbeat {} s, {} instance(s), {} load workers",
        r.connections, r.heartbeat_s, r.instances, r.load_workers
    );
    println!("machine: {}", r.machine);
    let row = |name: &str, value: String| println!("{name:<44} {value}");
    row(
        "sessions reached",
        format!(
            "{} / {} ({} failed)",
            r.sessions_reached, r.connections, r.sessions_failed
        ),
    );
    row("ramp-up", format!("{:.1} s", r.ramp_s));
    row(
        "sessions lost during the hold",
        format!(
            "{} (servers closed {})",
            r.sessions_lost, r.server_closes_during_run
        ),
    );
    if let Some(s) = &r.server {
        row(
            "server RSS per connection (VmRSS delta)",
            format!("{:.0} B", s.rss_per_connection_bytes),
        );
        row(
            "  at the end of the hold",
            format!("{:.0} B", s.rss_per_connection_after_hold_bytes),
        );
        row(
            "server heap per connection (RssAnon delta)",
            format!("{:.0} B", s.anon_per_connection_bytes),
        );
        row(
            "server CPU per heartbeat (user+sys, user)",
            format!(
                "{:.2} µs, {:.2} µs",
                s.cpu_per_heartbeat_us, s.user_cpu_per_heartbeat_us
            ),
        );
        let threads: Vec<String> = s
            .cpu_per_heartbeat_by_thread_us
            .iter()
            .filter(|(_, us)| us.abs() >= 0.01)
            .map(|(name, us)| format!("{name} {us:.2}"))
            .collect();
        row("  by thread (µs)", threads.join(", "));
    }
    let k = &r.kernel;
    row(
        "kernel slab per session (both ends)",
        format!("{:.0} B", k.slab_per_session_bytes),
    );
    row(
        "load worker RSS per session",
        format!("{:.0} B", k.load_worker_rss_per_session_bytes),
    );
    row(
        "load worker CPU per heartbeat (user+sys)",
        format!("{:.2} µs", k.load_worker_cpu_per_heartbeat_us),
    );
    row(
        "machine memory per session (everything)",
        format!("{:.0} B", k.machine_used_per_session_bytes),
    );
    row(
        "TCP buffers (sockstat mem)",
        format!("{} B", k.tcp_buffer_bytes),
    );
    row(
        "PING round trip p50 / p90 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0} µs ({} PONGs)",
            r.rtt.p50_us, r.rtt.p90_us, r.rtt.p99_us, r.rtt.max_us, r.rtt.pongs
        ),
    );
    if !r.open_errors.is_empty() {
        row("open errors", format!("{:?}", r.open_errors));
    }
    if !r.lost_reasons.is_empty() {
        row("lost", format!("{:?}", r.lost_reasons));
    }
    if !r.server_close_causes.is_empty() {
        row(
            "closed by the servers, by cause",
            format!("{:?}", r.server_close_causes),
        );
    }
    if r.server_heartbeats_read_late > 0 {
        row(
            "heartbeats read late (the servers' lag, not the peers')",
            r.server_heartbeats_read_late.to_string(),
        );
    }
    row(
        "kernel TCP resets, aborts, overflows",
        r.tcp_counters.summary(),
    );
    if r.sessions_lost > 0 {
        // Who ended the sessions that the stop found gone: no load worker closes a
        // socket in this window.
        row("  during the stop", r.tcp_counters_at_the_stop.summary());
        row(
            "closed by the servers during the stop",
            format!("{:?}", r.server_close_causes_at_the_stop),
        );
    }
    for limit in &r.limits_hit {
        row("limit hit", limit.clone());
    }
    for limit in &r.limits_changed {
        row("limits changed", limit.clone());
    }
}

/// One figure of hangup and the peer side by side: medians over the rounds, and each
/// round's value.
#[derive(Debug, Serialize)]
struct ComparedFigure {
    figure: &'static str,
    unit: &'static str,
    hangup: f64,
    peer: f64,
    /// hangup / peer (of the medians).
    ratio: f64,
    hangup_rounds: Vec<f64>,
    peer_rounds: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct CompareReport {
    bench: &'static str,
    peer: &'static str,
    peer_version: String,
    machine: String,
    /// /proc/loadavg at the start and at the end: the machine may be shared.
    load_average: [String; 2],
    connections: usize,
    heartbeat_s: u64,
    repeat: usize,
    /// The servers in the order their rounds ran.
    order: Vec<&'static str>,
    comparison: Vec<ComparedFigure>,
    rounds: Vec<Report>,
}

/// The figures compared, as (name, unit, how to read it from a round).
type Figure = (&'static str, &'static str, fn(&Report) -> f64);

const FIGURES: &[Figure] = &[
    ("server processes", "", |r| {
        r.server.as_ref().map_or(f64::NAN, |s| s.processes as f64)
    }),
    ("sessions reached", "", |r| r.sessions_reached as f64),
    ("sessions lost", "", |r| r.sessions_lost as f64),
    ("ramp-up", "s", |r| r.ramp_s),
    ("server RSS per session (VmRSS delta)", "B", |r| {
        r.server
            .as_ref()
            .map_or(f64::NAN, |s| s.rss_per_connection_bytes)
    }),
    ("  at the end of the hold", "B", |r| {
        r.server
            .as_ref()
            .map_or(f64::NAN, |s| s.rss_per_connection_after_hold_bytes)
    }),
    ("server heap per session (RssAnon delta)", "B", |r| {
        r.server
            .as_ref()
            .map_or(f64::NAN, |s| s.anon_per_connection_bytes)
    }),
    ("server CPU per heartbeat (user+sys)", "µs", |r| {
        r.server
            .as_ref()
            .map_or(f64::NAN, |s| s.cpu_per_heartbeat_us)
    }),
    ("server CPU per heartbeat (user)", "µs", |r| {
        r.server
            .as_ref()
            .map_or(f64::NAN, |s| s.user_cpu_per_heartbeat_us)
    }),
    ("heartbeats answered in the hold", "", |r| {
        r.rtt.pongs as f64
    }),
    ("PING round trip p50", "µs", |r| r.rtt.p50_us),
    ("PING round trip p90", "µs", |r| r.rtt.p90_us),
    ("PING round trip p99", "µs", |r| r.rtt.p99_us),
    ("PING round trip max", "µs", |r| r.rtt.max_us),
];

/// `bench scale --peer`: the same load (same workers, same schedule) against hangup
/// and the peer, `--repeat` rounds each, interleaved, then both side by side.
fn compare(args: &ScaleSettings, peer: ScalePeer) -> anyhow::Result<ExitCode> {
    if args.target.is_some() {
        bail!("--peer starts both servers itself: it does not take --target");
    }
    let ScalePeer::Mosquitto = peer;
    let binary = mosquitto::binary()?;
    if args.connections > mosquitto::session_room() {
        bail!(
            "mosquitto is one process: at most {} sessions fit under this machine's RLIMIT_NOFILE hard limit; lower --connections",
            mosquitto::session_room()
        );
    }
    super::catch_interrupts()?;
    let load_before = load_average();
    let peer_version = mosquitto::version(&binary);
    let repeat = args.repeat.max(1);
    let mut order = Vec::new();
    let mut rounds = Vec::new();
    for i in 0..repeat {
        // hangup first in even rounds, the peer first in odd ones: drift over the run
        // (other work on the machine, page cache) falls on both alike.
        let pair = if i % 2 == 0 {
            [Under::Hangup, Under::Mosquitto(&binary)]
        } else {
            [Under::Mosquitto(&binary), Under::Hangup]
        };
        for under in pair {
            check_interrupt()?;
            eprintln!("bench scale: round {} of {repeat}: {}", i + 1, under.kind());
            let prefix = format!("scale{}-{}{i}", std::process::id(), under.kind());
            let report = round(args, &under, &prefix)?;
            order.push(report.server_kind);
            rounds.push(report);
        }
    }
    let of = |kind: &str, read: fn(&Report) -> f64| -> Vec<f64> {
        rounds
            .iter()
            .filter(|r| r.server_kind == kind)
            .map(read)
            .collect()
    };
    let comparison = FIGURES
        .iter()
        .map(|&(figure, unit, read)| {
            let (hangup_rounds, peer_rounds) = (of("hangup", read), of(peer.as_str(), read));
            let (hangup, peer) = (median(&hangup_rounds), median(&peer_rounds));
            ComparedFigure {
                figure,
                unit,
                hangup,
                peer,
                ratio: hangup / peer,
                hangup_rounds,
                peer_rounds,
            }
        })
        .collect();
    let report = CompareReport {
        bench: "scale",
        peer: peer.as_str(),
        peer_version,
        machine: machine_description(),
        load_average: [load_before, load_average()],
        connections: args.connections,
        heartbeat_s: args.heartbeat,
        repeat,
        order,
        comparison,
        rounds,
    };
    print_comparison(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    // Every round checked, so that each failure is named.
    let failed = report
        .rounds
        .iter()
        .filter(|r| !report_ok(r, args.connections))
        .count();
    let ok = failed == 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn print_comparison(r: &CompareReport) {
    let hold = r.rounds.first().map_or(f64::NAN, |round| round.hold_s);
    println!(
        "hangup bench scale --peer {}: {} sessions, heartbeat {} s, hold {hold:.0} s, {} round(s) each, in the order {}",
        r.peer,
        r.connections,
        r.heartbeat_s,
        r.repeat,
        r.order.join(", ")
    );
    println!(
        "machine: {} (load average {} at the start, {} at the end)",
        r.machine, r.load_average[0], r.load_average[1]
    );
    println!("peer: {}", r.peer_version);
    // Round trips of milliseconds in ms, the rest in its unit; rounds without the unit.
    let unit_of = |value: f64, unit: &'static str| match unit {
        "µs" if value >= 1000.0 => (value / 1000.0, "ms"),
        _ => (value, unit),
    };
    let number = |value: f64, unit: &str| match unit {
        "" | "B" => format!("{value:.0}"),
        "ms" => format!("{value:.2}"),
        _ => format!("{value:.1}"),
    };
    // The median picks the unit; its rounds are shown in the same one.
    let cell = |median: f64, rounds: &[f64], unit: &'static str| {
        let (value, shown) = unit_of(median, unit);
        let scale = if shown == unit { 1.0 } else { 1000.0 };
        let median = match shown {
            "" => number(value, shown),
            _ => format!("{} {shown}", number(value, shown)),
        };
        if rounds.len() > 1 {
            let each: Vec<String> = rounds.iter().map(|&v| number(v / scale, shown)).collect();
            format!("{median} ({})", each.join(", "))
        } else {
            median
        }
    };
    println!(
        "{:<40} {:>30} {:>30} {:>17}",
        "figure",
        "hangup",
        r.peer,
        format!("hangup/{}", r.peer)
    );
    for f in &r.comparison {
        println!(
            "{:<40} {:>30} {:>30} {:>17}",
            f.figure,
            cell(f.hangup, &f.hangup_rounds, f.unit),
            cell(f.peer, &f.peer_rounds, f.unit),
            if f.ratio.is_finite() {
                format!("{:.2}", f.ratio)
            } else {
                "—".into()
            }
        );
    }
    for round in &r.rounds {
        if let Some(server) = &round.server {
            let threads: Vec<String> = server
                .cpu_per_heartbeat_by_thread_us
                .iter()
                .filter(|(_, us)| us.abs() >= 0.01)
                .map(|(name, us)| format!("{name} {us:.2}"))
                .collect();
            println!(
                "CPU per heartbeat by thread ({}, µs): {}",
                round.server_kind,
                threads.join(", ")
            );
        }
        for limit in &round.limits_hit {
            println!("limit hit ({}): {limit}", round.server_kind);
        }
        for lost in round.lost_reasons.keys() {
            println!("lost ({}): {lost}", round.server_kind);
        }
    }
}
