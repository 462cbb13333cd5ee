//! `hangup bench mass-death`: N clients die at once, silently, and the servers must
//! notice every one within the liveness budget D.
//!
//! ```text
//!   root namespace                              namespace hlab-<pid>-md
//!   K × hangup serve --reuse-port  ◀── veth ──▶  load workers, sources 10.o.1.x
//!       on 10.o.0.1:P              hl<pid>x0s    hl<pid>x0c  ◀── `ip link set down`
//!   prober: connect + PING + close, every 1/rate s, through the local route
//! ```
//!
//! The clients' side of the link is set down (the kernel here has no netem), so their
//! packets stop both ways and nothing tells the servers: no FIN, no RST. Each death is
//! detected by the server's own timers. The detection time of a session is the `ts_ns`
//! of its `connection_closed` event minus the instant just before the link went down
//! (the same CLOCK_REALTIME), so it is never flattered. With 1.5 × H below D the
//! heartbeat catches every death (`heartbeat_missed`, at most 1.5 × H after the link
//! went down); with H at or above D, keepalive with TCP_USER_TIMEOUT does (`timeout`).
//!
//! Meanwhile a prober in the root namespace measures what fresh clients see: connect,
//! `PING`, `PONG`, close, a few hundred times a second, before and during the storm.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hangup::events::ts_ns;
use hangup_core::Reply;
use hangup_lab::{ip, Netns, Side, Veth};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::histogram::Histogram;
use super::load::{shares, sum_reasons, Fleet, LoadProtocol, WorkerPlan, SESSIONS_PER_ADDRESS};
use super::procfs::{thread_cpu_us_between, Limits, ProcessSample};
use super::scale::{limits_from_errors, start_servers_at, SESSIONS_PER_INSTANCE};
use super::{check_interrupt, machine_description, sleep_checked, write_json};

/// What `bench mass-death` measures.
#[derive(Debug, Clone)]
pub struct MassDeathSettings {
    /// Sessions that die at once.
    pub connections: usize,
    /// The servers' dead-after D, against which detection is measured.
    pub dead_after: Duration,
    /// The sessions' heartbeat H, in whole seconds.
    pub heartbeat: u64,
    /// Server instances sharing the port; `None`: about 18 000 sessions each.
    pub instances: Option<usize>,
    /// Sessions per load-worker process.
    pub per_worker: usize,
    /// Connects plus HELLOs in flight per load worker during ramp-up.
    pub concurrency: usize,
    /// Fresh connect-plus-PING probes per second from outside the namespace.
    pub probe_rate: u32,
    /// Give up if ramp-up takes longer than this.
    pub ramp_limit: Duration,
    /// Write the results as JSON to this file.
    pub json: Option<PathBuf>,
}

/// How long after the link went down the bench waits for detections at most, in D.
const WAIT_FOR_DEATHS: u32 = 3;
/// The detection budget, in D, that the bench reports against.
const BUDGET: f64 = 1.1;

/// The clients' namespace and the veth pair into it, made with the lab's guards
/// (`hlab-<pid>-md`, so that `hangup lab --cleanup` finds what a killed bench left);
/// both deleted when dropped.
struct ClientNetwork {
    // Field order: the pair goes before the namespace its client end is in.
    veth: Veth,
    netns: Netns,
    /// 10.`octet`.0.0/16.
    octet: u8,
}

impl ClientNetwork {
    fn create(addresses: usize) -> anyhow::Result<Self> {
        let octet = 100 + (std::process::id() % 150) as u8;
        let netns = Netns::for_run("md")?;
        // The server end stays in this (the root) namespace, with the servers.
        let veth = Veth::create(Some(&netns), None)?;
        let network = Self { veth, netns, octet };
        let (host_dev, client_dev) = (network.dev(Side::Server), network.dev(Side::Client));
        ip(&[
            "addr",
            "add",
            &format!("{}/16", network.host_ip()),
            "dev",
            host_dev,
        ])?;
        ip(&["link", "set", host_dev, "up"])?;
        for address in 0..addresses {
            let addr = format!("{}/16", network.client_ip(address));
            ip(&[
                "-n",
                network.netns(),
                "addr",
                "add",
                &addr,
                "dev",
                client_dev,
            ])?;
        }
        ip(&["-n", network.netns(), "link", "set", client_dev, "up"])?;
        Ok(network)
    }

    fn netns(&self) -> &str {
        self.netns.name()
    }

    fn dev(&self, side: Side) -> &str {
        self.veth.dev(side)
    }

    fn host_ip(&self) -> IpAddr {
        Ipv4Addr::new(10, self.octet, 0, 1).into()
    }

    fn client_ip(&self, address: usize) -> IpAddr {
        Ipv4Addr::new(
            10,
            self.octet,
            1 + (address / 250) as u8,
            (address % 250) as u8 + 1,
        )
        .into()
    }

    fn is_client(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[1] == self.octet && v4.octets()[2] >= 1)
    }

    fn pull_link(&self) -> anyhow::Result<()> {
        ip(&[
            "-n",
            self.netns(),
            "link",
            "set",
            self.dev(Side::Client),
            "down",
        ])?;
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct Distribution {
    samples: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Distribution {
    fn of(histogram: &Histogram) -> Self {
        let ms = |p| histogram.percentile(p) / 1000.0;
        Self {
            samples: histogram.count(),
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: String,
    connections: usize,
    instances: usize,
    load_workers: usize,
    heartbeat_s: u64,
    dead_after_s: f64,
    sessions_reached: u64,
    open_errors: BTreeMap<String, u64>,
    ramp_s: f64,
    /// Sessions the servers closed before the link went down (must be 0).
    closed_before_link_down: u64,
    /// How long `ip link set down` took (the detection times include it).
    link_down_ms: f64,
    deaths_detected: u64,
    deaths_missed: u64,
    expected_causes: Vec<&'static str>,
    causes: BTreeMap<String, u64>,
    wrong_cause: u64,
    /// From the link going down to each `connection_closed`.
    detection: Distribution,
    /// Detection budget: 1.1 × D.
    budget_ms: f64,
    within_budget: u64,
    /// The servers' CPU time from the link going down to the last detection, per
    /// death, by thread name (user + system, µs).
    server_cpu_per_death_us: BTreeMap<String, f64>,
    /// Fresh clients, before the link went down.
    probe_before: Distribution,
    /// Fresh clients between the link going down and the last detection.
    probe_storm: Distribution,
    /// Of those, the connect alone: the kernel's handshake, which no server thread
    /// takes part in; the rest is the server's accept and reply (and the prober's own
    /// wake-up).
    probe_storm_connect: Distribution,
    probe_failures: u64,
    /// TCP orphans on the machine when the bench began (`/proc/net/sockstat`): closed
    /// sockets still retrying, such as an earlier storm's, which load the machine.
    orphans_at_start: Option<u64>,
    limits_hit: Vec<String>,
}

/// Runs `bench mass-death`.
pub fn mass_death(args: &MassDeathSettings) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.per_worker == 0 || args.heartbeat == 0 {
        bail!("--connections, --per-worker and --heartbeat must be at least 1");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench mass-death needs root: it creates a network namespace and a veth pair");
    }
    super::catch_interrupts()?;
    let limits = Limits::read();
    let fd_room = limits.nofile.0.saturating_sub(300) as usize;
    let per_worker = args
        .per_worker
        .min(fd_room)
        .min(limits.ports_per_address() as usize)
        .max(1);
    let shares = shares(args.connections, per_worker);
    let heartbeat = Duration::from_secs(args.heartbeat);
    let dead_after = args.dead_after;
    let expected_causes: Vec<&'static str> = if heartbeat.mul_f64(1.5) < dead_after {
        vec!["heartbeat_missed"]
    } else if heartbeat >= dead_after {
        vec!["timeout"]
    } else {
        vec!["heartbeat_missed", "timeout"]
    };

    let per_worker_addresses: Vec<usize> = shares
        .iter()
        .map(|&count| count.div_ceil(SESSIONS_PER_ADDRESS).max(1))
        .collect();
    let orphans_at_start = super::netstat::tcp_orphans();
    let network = ClientNetwork::create(per_worker_addresses.iter().sum())?;
    let instances = args
        .instances
        .unwrap_or(args.connections.div_ceil(SESSIONS_PER_INSTANCE))
        .max(1);
    let servers = start_servers_at(
        network.host_ip(),
        instances,
        fd_room,
        dead_after,
        &["--insecure"],
        &[],
    )?;
    let target = servers[0].addr;
    let mut first = 0;
    let mut next_address = 0;
    let plans: Vec<WorkerPlan> = shares
        .iter()
        .zip(&per_worker_addresses)
        .map(|(&count, &addresses)| {
            let sources = (next_address..next_address + addresses)
                .map(|a| network.client_ip(a))
                .collect();
            next_address += addresses;
            let plan = WorkerPlan {
                target,
                sources,
                connections: count,
                first_device: first,
                device_prefix: format!("death{}", std::process::id()),
                heartbeat,
                concurrency: args.concurrency,
                protocol: LoadProtocol::Line,
                netns: Some(network.netns().to_owned()),
                // The devices die with their link: no orphan left retrying a FIN.
                abort_on_close: true,
            };
            first += count as u64;
            plan
        })
        .collect();
    eprintln!(
        "bench mass-death: {} sessions in namespace {}, heartbeat {} s, D = {dead_after:?}, {instances} server instance(s) at {target}, {} load workers",
        args.connections, network.netns(), args.heartbeat, plans.len()
    );
    let (fleet, ready, ramp, memory) = Fleet::ramp_up(&plans, args.connections, args.ramp_limit)?;
    let reached: u64 = ready.iter().map(|l| l["open"].as_u64().unwrap_or(0)).sum();
    let open_errors = sum_reasons(&ready, "errors");

    // Steady state: every session has heartbeated, fresh clients are measured.
    let prober = Prober::start(target, args.probe_rate)?;
    eprintln!(
        "bench mass-death: {reached} sessions open in {:.1} s; heartbeating for {} s before the link goes down",
        ramp.as_secs_f64(),
        args.heartbeat.max(2)
    );
    sleep_checked(heartbeat.max(Duration::from_secs(2)), |_| {})?;
    let mut closed_before = 0;
    for server in &servers {
        server.drain_events(|event| {
            let peer = peer_ip(&event);
            closed_before += u64::from(peer.is_some_and(|ip| network.is_client(ip)));
        });
    }

    let cpu_at = || -> Vec<ProcessSample> {
        servers
            .iter()
            .filter_map(|server| ProcessSample::read(server.pid()))
            .collect()
    };
    let cpu_before = cpu_at();
    let down_ns = ts_ns();
    network.pull_link()?;
    let link_down_ms = (ts_ns() - down_ns) as f64 / 1e6;
    let mut detection = Histogram::default();
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    let mut wrong_cause = 0;
    let mut within_budget = 0;
    let budget_ns = (dead_after.as_secs_f64() * BUDGET * 1e9) as u64;
    let mut last_death_ns = down_ns;
    let bar = ProgressBar::new(reached).with_style(
        ProgressStyle::with_template(
            "deaths detected {elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
        )?
        .progress_chars("=> "),
    );
    let wait_limit = Instant::now() + dead_after * WAIT_FOR_DEATHS;
    while detection.count() < reached && Instant::now() < wait_limit {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20));
        for server in &servers {
            server.drain_events(|event| {
                if !peer_ip(&event).is_some_and(|ip| network.is_client(ip)) {
                    return;
                }
                let at = event["ts_ns"].as_u64().unwrap_or(0);
                let after = at.saturating_sub(down_ns);
                detection.record(after / 1000);
                within_budget += u64::from(after <= budget_ns);
                last_death_ns = last_death_ns.max(at);
                let cause = event["cause"].as_str().unwrap_or("?").to_owned();
                wrong_cause += u64::from(!expected_causes.contains(&cause.as_str()));
                *causes.entry(cause).or_default() += 1;
            });
        }
        bar.set_position(detection.count());
    }
    bar.finish_and_clear();
    let deaths = detection.count().max(1) as f64;
    let server_cpu_per_death_us = thread_cpu_us_between(&cpu_before, &cpu_at(), deaths);
    let probes = prober.stop();
    drop(fleet);
    drop(servers);
    drop(network);

    let mut probe_before = Histogram::default();
    let mut probe_storm = Histogram::default();
    let mut probe_storm_connect = Histogram::default();
    for &(at, micros, connect) in &probes.samples {
        if at < down_ns {
            probe_before.record(micros);
        } else if at <= last_death_ns {
            probe_storm.record(micros);
            probe_storm_connect.record(connect);
        }
    }
    let mut limits_hit = limits_from_errors(&open_errors);
    limits_hit.extend(memory.describe());
    if probes.failures > 0 {
        limits_hit.push(format!("{} fresh-client probes failed", probes.failures));
    }
    let report = Report {
        bench: "mass-death",
        machine: machine_description(),
        connections: args.connections,
        instances,
        load_workers: plans.len(),
        heartbeat_s: args.heartbeat,
        dead_after_s: dead_after.as_secs_f64(),
        sessions_reached: reached,
        open_errors,
        ramp_s: ramp.as_secs_f64(),
        closed_before_link_down: closed_before,
        link_down_ms,
        deaths_detected: detection.count(),
        deaths_missed: reached.saturating_sub(detection.count()),
        expected_causes,
        causes,
        wrong_cause,
        detection: Distribution::of(&detection),
        budget_ms: dead_after.as_secs_f64() * BUDGET * 1000.0,
        within_budget,
        server_cpu_per_death_us,
        probe_before: Distribution::of(&probe_before),
        probe_storm: Distribution::of(&probe_storm),
        probe_storm_connect: Distribution::of(&probe_storm_connect),
        probe_failures: probes.failures,
        orphans_at_start,
        limits_hit,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let ok = report.sessions_reached == args.connections as u64
        && report.deaths_missed == 0
        && report.wrong_cause == 0
        && report.closed_before_link_down == 0;
    if !ok {
        eprintln!(
            "bench mass-death: FAILED: {} of {} sessions reached, {} deaths missed, {} with a wrong cause, {} closed early",
            report.sessions_reached,
            args.connections,
            report.deaths_missed,
            report.wrong_cause,
            report.closed_before_link_down
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn peer_ip(event: &serde_json::Value) -> Option<IpAddr> {
    if event["event"] != "connection_closed" {
        return None;
    }
    event["peer"]
        .as_str()?
        .parse::<SocketAddr>()
        .ok()
        .map(|peer| peer.ip())
}

struct ProbeResults {
    /// (when the probe started, ts_ns; connect + PING round trip, µs; of it the
    /// connect, µs)
    samples: Vec<(u64, u64, u64)>,
    failures: u64,
}

/// Fresh clients: connect, PING, PONG, close, at a steady rate, on a thread.
struct Prober {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<ProbeResults>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(target: SocketAddr, rate: u32) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(ProbeResults {
            samples: Vec::new(),
            failures: 0,
        }));
        let period = Duration::from_secs(1) / rate.max(1);
        let thread = {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::Builder::new()
                .name("hangup-prober".into())
                .spawn(move || {
                    let mut next = Instant::now();
                    // Bounded: an hour of probes at most, whatever happens to `stop`.
                    for _ in 0..u64::from(rate.max(1)) * 3600 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let at = ts_ns();
                        let started = Instant::now();
                        let outcome = probe(target);
                        let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                        match outcome {
                            Ok(connect) => results.samples.push((
                                at,
                                started.elapsed().as_micros() as u64,
                                connect.as_micros() as u64,
                            )),
                            Err(_) => results.failures += 1,
                        }
                        drop(results);
                        next += period;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                })?
        };
        Ok(Self {
            stop,
            results,
            thread: Some(thread),
        })
    }

    fn stop(mut self) -> ProbeResults {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        ProbeResults {
            samples: std::mem::take(&mut results.samples),
            failures: results.failures,
        }
    }
}

/// One fresh client; how long its connect took (the kernel's handshake, which needs no
/// server thread: the rest of the round trip is the server's accept and reply).
fn probe(target: SocketAddr) -> std::io::Result<Duration> {
    let limit = Duration::from_secs(2);
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target, limit)?;
    let connect = started.elapsed();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(limit))?;
    stream.write_all(&super::command_line(&hangup_core::Command::Ping(
        String::new(),
    )))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if Reply::parse(&line) != Ok(Reply::Pong(String::new())) {
        return Err(std::io::Error::other(format!("got {line:?}")));
    }
    Ok(connect)
}

fn print_table(r: &Report) {
    println!(
        "hangup bench mass-death: {} sessions, heartbeat {} s, D = {} s, {} instance(s), {} load workers",
        r.connections, r.heartbeat_s, r.dead_after_s, r.instances, r.load_workers
    );
    println!("machine: {}", r.machine);
    let row = |name: &str, value: String| println!("{name:<40} {value}");
    row(
        "sessions reached",
        format!(
            "{} / {} (ramp-up {:.1} s)",
            r.sessions_reached, r.connections, r.ramp_s
        ),
    );
    row(
        "deaths detected",
        format!(
            "{} ({} missed, {} closed before the link went down)",
            r.deaths_detected, r.deaths_missed, r.closed_before_link_down
        ),
    );
    row(
        "causes",
        format!(
            "{:?} (expected {:?}; {} wrong)",
            r.causes, r.expected_causes, r.wrong_cause
        ),
    );
    let d = &r.detection;
    row(
        "detection p50 / p90 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0} ms (D = {:.0} ms, max = {:.2} D)",
            d.p50_ms,
            d.p90_ms,
            d.p99_ms,
            d.max_ms,
            r.dead_after_s * 1000.0,
            d.max_ms / (r.dead_after_s * 1000.0)
        ),
    );
    row(
        "within 1.1 D",
        format!(
            "{} / {} (budget {:.0} ms)",
            r.within_budget, r.deaths_detected, r.budget_ms
        ),
    );
    // Threads with too little to show at one decimal (the main thread, say) are left
    // out.
    let by_thread: Vec<String> = r
        .server_cpu_per_death_us
        .iter()
        .filter(|(_, us)| **us >= 0.05)
        .map(|(name, us)| format!("{name} {us:.1}"))
        .collect();
    row("server CPU per death (µs)", by_thread.join(", "));
    for (name, p) in [
        ("fresh connect+PING before", &r.probe_before),
        ("fresh connect+PING during the storm", &r.probe_storm),
        ("  of it the connect", &r.probe_storm_connect),
    ] {
        row(
            name,
            format!(
                "p50 {:.2} / p99 {:.2} / max {:.2} ms ({} probes)",
                p.p50_ms, p.p99_ms, p.max_ms, p.samples
            ),
        );
    }
    row("probe failures", r.probe_failures.to_string());
    row("link down took", format!("{:.1} ms", r.link_down_ms));
    if let Some(orphans) = r.orphans_at_start {
        row("TCP orphans at the start", orphans.to_string());
    }
    for limit in &r.limits_hit {
        row("limit hit", limit.clone());
    }
}
