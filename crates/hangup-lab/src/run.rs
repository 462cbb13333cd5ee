//! Running the matrix: for each cell, fresh namespaces, a fresh server and client,
//! the fault, and the wait for the watching side's `connection_closed`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangup_core::{Command, Reply, DEFAULT_SEED};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::cell::{judge, judge_target, Cell, Check, Outcome};
use crate::error::LabError;
use crate::events::{self, elapsed, name, ts, ts_ns};
use crate::interrupt;
use crate::netns::{self, run_prefix, Link, Side, Topology};
use crate::peer::PeerMode;
use crate::process::LabProcess;
use crate::report::{format_duration, Machine, Report};
use crate::scenario::Scenario;
use crate::setup::{heartbeat_for, Setup};
use crate::timescale::TimeScale;

/// Rounds of a job that never ends on its own (10^10 SHA-256 rounds).
const ENDLESS_ROUNDS: u64 = 10_000_000_000;
/// `JOB <rounds>` from the default seed, as the client types it.
fn job(rounds: u64) -> String {
    Command::Job {
        rounds,
        seed: DEFAULT_SEED.to_owned(),
    }
    .to_string()
}

/// Whether a line the client printed is the `DONE` of the connection's first job.
fn first_job_done(line: &str) -> bool {
    matches!(Reply::parse(line), Ok(Reply::Done(1, _)))
}

/// The check that the router's ICMP reached the watching side.
const ROUTER_ANSWERED: &str = "the router answered with ICMP unreachable";

/// How long a process may take to start and connect before the cell counts as failed.
const STARTUP: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The `hangup` executable to run in the namespaces.
    pub hangup: PathBuf,
    /// The liveness budget D given to both sides.
    pub dead_after: Duration,
    /// How long a cell waits for a detection before it reports "not detected".
    pub cap: Duration,
    /// The rows.
    pub scenarios: Vec<Scenario>,
    /// The columns.
    pub setups: Vec<Setup>,
    /// Draw a progress bar on stderr (when it is a terminal) and a line per cell.
    pub progress: bool,
    /// The command line, recorded in the report.
    pub command: String,
    /// `--time-scale N`: the namespaces' own TCP timers divided by N (see
    /// [`TimeScale`]); `None`: Linux's defaults.
    pub time_scale: Option<TimeScale>,
    /// Run the server-side scenarios against this third-party server instead of
    /// `hangup serve` (the only column then is [`Setup::Target`]).
    pub target: Option<Target>,
    /// For the cleanup test: fail the run once the first cell's processes run.
    #[doc(hidden)]
    pub fail_after_start: bool,
}

/// A third-party TCP server for `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Run by `sh -c 'exec COMMAND'` in the server namespace, with
    /// `HANGUP_LAB_SERVER_IP` and `HANGUP_LAB_PORT` in its environment; it must stay
    /// in the foreground and listen on `PORT` (any address, or the server IP).
    pub command: String,
    /// The port it listens on.
    pub port: u16,
    /// What the raw-socket peer sends first (an HTTP request, an MQTT CONNECT, …).
    pub payload: Vec<u8>,
    /// Instead of `payload` in client-crash-sending and client-stalled: a request
    /// whose answer streams (≥ 1 MiB), e.g. a GET of a large file.
    pub payload_streaming: Option<Vec<u8>>,
    /// Instead of `payload` in client-crash-uploading: the head of a large request
    /// whose body the peer then streams (filler bytes), e.g. a POST with a large
    /// Content-Length.
    pub payload_upload: Option<Vec<u8>>,
}

impl Target {
    /// What the peer sends first in `scenario`.
    pub fn payload_for(&self, scenario: Scenario) -> &[u8] {
        let special = match scenario {
            Scenario::ClientCrashSending
            | Scenario::ClientStalled
            | Scenario::ClientUnreachableSending => &self.payload_streaming,
            Scenario::ClientCrashUploading => &self.payload_upload,
            _ => &None,
        };
        special.as_deref().unwrap_or(&self.payload)
    }
}

impl LabConfig {
    /// The full matrix with dead-after `dead_after` and the default cap, 3·D + 5 s.
    pub fn new(hangup: PathBuf, dead_after: Duration) -> Self {
        Self {
            hangup,
            dead_after,
            cap: default_cap(dead_after),
            scenarios: Scenario::ALL.to_vec(),
            setups: Setup::ALL.to_vec(),
            progress: false,
            command: String::new(),
            target: None,
            time_scale: None,
            fail_after_start: false,
        }
    }
}

/// The default cap for D: 3·D + 5 s.
pub fn default_cap(dead_after: Duration) -> Duration {
    dead_after * 3 + Duration::from_secs(5)
}

/// What the `hangup` binary under test supports (sessions arrive with SPEC §4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `hangup client --device/--heartbeat`: sessions with heartbeats.
    pub sessions: bool,
    /// `hangup serve --drain-timeout`: GOAWAY and a graceful drain on SIGTERM.
    pub drain: bool,
    /// `hangup serve --data-dir`.
    pub data_dir: bool,
    /// `hangup serve --admin`.
    pub admin: bool,
    /// `hangup serve --insecure` (needed to listen off loopback without a secret).
    pub insecure: bool,
}

impl Capabilities {
    /// Asks the binary's `--help`.
    pub fn probe(hangup: &std::path::Path) -> Result<Self, LabError> {
        let help = |command: &str| -> Result<String, LabError> {
            let output = std::process::Command::new(hangup)
                .args([command, "--help"])
                .output()
                .map_err(|source| LabError::Spawn {
                    what: format!("{} {command} --help", hangup.display()),
                    source,
                })?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let serve = help("serve")?;
        let client = help("client")?;
        Ok(Self {
            sessions: client.contains("--device") && client.contains("--heartbeat"),
            drain: serve.contains("--drain-timeout"),
            data_dir: serve.contains("--data-dir"),
            admin: serve.contains("--admin"),
            insecure: serve.contains("--insecure"),
        })
    }
}

/// Everything the cells share.
#[derive(Debug)]
struct Lab<'a> {
    config: &'a LabConfig,
    capabilities: Capabilities,
    heartbeat: Duration,
    rounds_per_second: u64,
    run_prefix: String,
}

/// Runs the configured matrix and returns the report. Everything a cell creates is
/// removed when the cell ends, whether it succeeded, failed or was interrupted.
pub fn run(config: &LabConfig) -> Result<Report, LabError> {
    netns::preflight()?;
    let capabilities = Capabilities::probe(&config.hangup)?;
    let lab = Lab {
        config,
        capabilities,
        heartbeat: heartbeat_for(config.dead_after),
        rounds_per_second: rounds_per_second(),
        run_prefix: run_prefix(),
    };
    let started = Instant::now();
    let started_unix = ts_ns();
    let plan: Vec<(Scenario, Setup)> = config
        .scenarios
        .iter()
        .flat_map(|&scenario| config.setups.iter().map(move |&setup| (scenario, setup)))
        .collect();
    let bar = progress_bar(config.progress, plan.len());
    let mut cells = Vec::with_capacity(plan.len());
    for (index, &(scenario, setup)) in plan.iter().enumerate() {
        interrupt::check()?;
        bar.set_message(format!("{scenario} × {setup}"));
        let cell = lab.run_cell(index, scenario, setup);
        let cell = match cell {
            Ok(cell) => cell,
            Err(err) => {
                bar.abandon();
                return Err(err);
            }
        };
        if config.progress {
            let line = crate::report::cell_line(&cell);
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        bar.inc(1);
        cells.push(cell);
    }
    bar.finish_and_clear();
    Ok(Report {
        command: config.command.clone(),
        machine: Machine::describe(),
        dead_after: config.dead_after,
        cap: config.cap,
        heartbeat: capabilities.sessions.then_some(lab.heartbeat),
        capabilities,
        started_unix_ns: started_unix,
        took: started.elapsed(),
        scenarios: config.scenarios.clone(),
        setups: config.setups.clone(),
        cells,
        target: config.target.clone(),
        time_scale: config.time_scale,
    })
}

fn progress_bar(enabled: bool, cells: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(cells as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// SHA-256 rounds per second on this machine, so that jobs last a chosen time.
fn rounds_per_second() -> u64 {
    let mut chain = hangup_core::HashChain::new(b"calibrate", u64::MAX);
    let rounds = 200_000;
    let started = Instant::now();
    chain.advance(rounds);
    let took = started.elapsed().as_secs_f64().max(1e-6);
    ((rounds as f64 / took) as u64).max(1)
}

impl Lab<'_> {
    fn run_cell(&self, index: usize, scenario: Scenario, setup: Setup) -> Result<Cell, LabError> {
        let mut cell = CellRun {
            lab: self,
            scenario,
            setup,
            prefix: format!("{}-{index}", self.run_prefix),
            checks: Vec::new(),
            notes: Vec::new(),
            data_dir: None,
            first: index == 0,
        };
        let heartbeat = (setup.sessions() && self.capabilities.sessions).then_some(self.heartbeat);
        let limit =
            scenario
                .expectation()
                .bound
                .limit(self.config.dead_after, heartbeat, self.config.cap);
        let outcome = match cell.skip_reason(scenario) {
            Some(reason) => Outcome::Skipped { reason },
            None => match cell.run_either(scenario) {
                Ok(outcome) => outcome,
                Err(err) if err.is_fatal() => return Err(err),
                Err(err) => Outcome::Error {
                    message: err.to_string(),
                },
            },
        };
        let meets_expectation = if setup == Setup::Target {
            judge_target(scenario, &outcome, &cell.checks, limit)
        } else {
            judge(scenario, &outcome, &cell.checks, limit)
        };
        Ok(Cell {
            scenario,
            setup,
            outcome,
            checks: cell.checks,
            notes: cell.notes,
            limit,
            meets_expectation,
        })
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One cell being run.
struct CellRun<'a> {
    lab: &'a Lab<'a>,
    scenario: Scenario,
    setup: Setup,
    prefix: String,
    checks: Vec<Check>,
    notes: Vec<String>,
    data_dir: Option<TempDir>,
    first: bool,
}

/// The instant `after` past the Unix time `fault_ns`.
fn deadline_after(fault_ns: u64, after: Duration) -> Instant {
    let since_fault = elapsed(fault_ns, ts_ns());
    Instant::now() + after.saturating_sub(since_fault)
}

fn soon() -> Instant {
    Instant::now() + STARTUP
}

fn is(event: &Value, wanted: &str, peer: &str) -> bool {
    name(event) == wanted && events::peer(event) == peer
}

/// How a scenario takes a peer off the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Its address goes: nothing answers for it.
    Silent,
    /// Behind the router, which answers for it with ICMP host unreachable.
    Unreachable,
}

impl Cut {
    /// Takes `side` off the network this way; the Unix time in ns just before.
    fn apply(self, topology: &Topology, side: Side) -> Result<u64, LabError> {
        match self {
            Cut::Silent => topology.cut(side),
            Cut::Unreachable => topology.cut_unreachable(side),
        }
    }
}

impl CellRun<'_> {
    fn dead_after(&self) -> Duration {
        self.lab.config.dead_after
    }

    fn sessions(&self) -> bool {
        self.setup.sessions() && self.lab.capabilities.sessions
    }

    fn skip_reason(&self, scenario: Scenario) -> Option<String> {
        let caps = self.lab.capabilities;
        match scenario {
            Scenario::ServerShutdown if !caps.drain => {
                Some("this hangup has no graceful drain (GOAWAY, --drain-timeout) yet".into())
            }
            Scenario::ClientReconnect if self.setup.sessions() && !caps.sessions => {
                Some("this hangup has no sessions (HELLO, --device) yet".into())
            }
            _ => None,
        }
    }

    fn run_either(&mut self, scenario: Scenario) -> Result<Outcome, LabError> {
        match &self.lab.config.target {
            Some(target) if self.setup == Setup::Target => self.run_target(scenario, target),
            _ => self.run(scenario),
        }
    }

    fn run(&mut self, scenario: Scenario) -> Result<Outcome, LabError> {
        match scenario {
            Scenario::ClientExit => self.client_exit(),
            Scenario::ClientExitUnread => self.client_exit_unread(),
            Scenario::ClientHalfClose => self.client_half_close(),
            Scenario::ClientCrashIdle => self.idle_session_dies(Side::Client, Cut::Silent),
            Scenario::ClientCrashSending => self.client_crash_sending(),
            Scenario::ClientCrashUploading => self.client_crash_uploading(),
            Scenario::ClientUnreachable => self.idle_session_dies(Side::Client, Cut::Unreachable),
            Scenario::ClientUnreachableSending => self.client_unreachable_sending(),
            Scenario::ServerUnreachable => self.idle_session_dies(Side::Server, Cut::Unreachable),
            Scenario::ClientCableFlap => self.client_cable_flap(),
            Scenario::ClientReboot => self.client_reboot(),
            Scenario::ClientReconnect => self.client_reconnect(),
            Scenario::ClientStalled => self.client_stalled(),
            Scenario::ServerExit => self.server_exit(),
            Scenario::ServerCrash => self.idle_session_dies(Side::Server, Cut::Silent),
            Scenario::ServerReboot => self.server_reboot(),
            Scenario::ServerShutdown => self.server_shutdown(),
        }
    }

    // ------------------------------------------------------------ building blocks

    fn check(&mut self, name: &str, passed: bool) {
        self.checks.push(Check {
            name: name.to_owned(),
            passed,
        });
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Called once the processes run, just before the fault.
    fn started(&self) -> Result<(), LabError> {
        if self.first && self.lab.config.fail_after_start {
            return Err(LabError::Injected);
        }
        interrupt::check()
    }

    fn topology(&self) -> Result<Topology, LabError> {
        let link = if self.scenario.routed() {
            Link::Routed
        } else {
            Link::Direct
        };
        Topology::create(&self.prefix, link, self.lab.config.time_scale)
    }

    fn liveness_args(&self) -> Vec<String> {
        let mut args = vec![
            "--dead-after".to_owned(),
            format!("{}ms", self.dead_after().as_millis()),
        ];
        args.extend(self.setup.liveness_flags().iter().map(|f| (*f).to_owned()));
        args
    }

    /// Starts `hangup serve` in the server namespace and waits for `listening`.
    fn server(&mut self, topology: &Topology) -> Result<LabProcess, LabError> {
        let caps = self.lab.capabilities;
        let mut args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            topology.server_addr().to_string(),
            "--log-format".to_owned(),
            "json".to_owned(),
        ];
        args.extend(self.liveness_args());
        if caps.data_dir {
            // One per cell, kept across a server "reboot" like a disk would be.
            if self.data_dir.is_none() {
                let dir = std::env::temp_dir().join(format!("{}-data", self.prefix));
                std::fs::create_dir_all(&dir)
                    .map_err(|err| LabError::io(format!("create {}", dir.display()), err))?;
                self.data_dir = Some(TempDir(dir));
            }
            if let Some(dir) = &self.data_dir {
                args.push("--data-dir".to_owned());
                args.push(dir.0.display().to_string());
            }
        }
        if caps.admin {
            args.extend(["--admin".to_owned(), "off".to_owned()]);
        }
        if caps.insecure {
            args.push("--insecure".to_owned());
        }
        let mut server = LabProcess::spawn(
            "server",
            topology.netns(Side::Server),
            &self.lab.config.hangup,
            &args,
            &self.lab.run_prefix,
        )?;
        server.expect_event("`listening`", soon(), |e| name(e) == "listening")?;
        Ok(server)
    }

    /// Starts `hangup client` in the client namespace (with a session in `full`) and
    /// waits until it is connected.
    fn client(&self, topology: &Topology, device: &str) -> Result<LabProcess, LabError> {
        let mut args = vec![
            "client".to_owned(),
            topology.server_addr().to_string(),
            "--log-format".to_owned(),
            "json".to_owned(),
        ];
        args.extend(self.liveness_args());
        if self.sessions() {
            args.extend([
                "--device".to_owned(),
                device.to_owned(),
                "--heartbeat".to_owned(),
                self.lab.heartbeat.as_secs().to_string(),
            ]);
        }
        let mut client = LabProcess::spawn(
            "client",
            topology.netns(Side::Client),
            &self.lab.config.hangup,
            &args,
            &self.lab.run_prefix,
        )?;
        client.expect_event("`connection_opened`", soon(), |e| {
            name(e) == "connection_opened"
        })?;
        Ok(client)
    }

    /// Starts a raw-socket peer in the client namespace; returns it and its address.
    fn peer(&self, topology: &Topology, mode: PeerMode) -> Result<(LabProcess, String), LabError> {
        self.peer_with(topology, mode, None)
    }

    /// [`CellRun::peer`], opening a session for `device` first (with the lab's
    /// heartbeat) when given.
    fn peer_with(
        &self,
        topology: &Topology,
        mode: PeerMode,
        device: Option<&str>,
    ) -> Result<(LabProcess, String), LabError> {
        let mut args = vec![
            "lab".to_owned(),
            "peer".to_owned(),
            "--connect".to_owned(),
            topology.server_addr().to_string(),
            "--mode".to_owned(),
            mode.name().to_owned(),
        ];
        if let Some(device) = device {
            args.extend([
                "--device".to_owned(),
                device.to_owned(),
                "--heartbeat".to_owned(),
                self.lab.heartbeat.as_secs().to_string(),
            ]);
        }
        let mut peer = LabProcess::spawn(
            "peer",
            topology.netns(Side::Client),
            &self.lab.config.hangup,
            &args,
            &self.lab.run_prefix,
        )?;
        let (_, ready) = peer.expect_stdout("`ready`", soon(), |l| l.starts_with("ready "))?;
        let address = ready.trim_start_matches("ready ").to_owned();
        Ok((peer, address))
    }

    /// The client address of the next connection the server accepted (not in `known`).
    fn accepted(&self, server: &mut LabProcess, known: &[&str]) -> Result<(String, u64), LabError> {
        let opened = server.expect_event("the client's connection", soon(), |e| {
            name(e) == "connection_opened" && !known.contains(&events::peer(e))
        })?;
        Ok((events::peer(&opened).to_owned(), ts(&opened)))
    }

    /// PING/PONG through the client: the connection works, and the last inbound
    /// segment on both sides is now (the worst case for the timers that follow).
    fn warm_up(&self, client: &mut LabProcess, tag: &str) -> Result<u64, LabError> {
        client.send_line(&Command::Ping(tag.to_owned()).to_string())?;
        let pong = Reply::Pong(tag.to_owned());
        let (at, _) = client.expect_stdout(&pong.to_string(), soon(), |l| {
            Reply::parse(l).as_ref() == Ok(&pong)
        })?;
        Ok(at)
    }

    /// Sessions (full set-up): wait for WELCOME, so that the session exists.
    fn welcomed(&self, client: &mut LabProcess) -> Result<(), LabError> {
        if self.sessions() {
            client.expect_stdout("WELCOME", soon(), |l| {
                matches!(Reply::parse(l), Ok(Reply::Welcome(..)))
            })?;
        }
        Ok(())
    }

    /// Waits for `watcher`'s `connection_closed` (of `peer`, if given) after the fault;
    /// `since_ns` is where the detection time is measured from (usually the fault).
    fn detect(
        &self,
        watcher: &mut LabProcess,
        side: Side,
        peer: Option<&str>,
        fault_ns: u64,
        since_ns: u64,
    ) -> Result<Outcome, LabError> {
        let cap = self.lab.config.cap;
        let closed = watcher.wait_event(deadline_after(since_ns, cap), |e| {
            name(e) == "connection_closed"
                && ts(e) >= fault_ns
                && peer.is_none_or(|p| events::peer(e) == p)
        })?;
        Ok(match closed {
            Some(event) => Outcome::Detected {
                side,
                cause: events::cause(&event).unwrap_or("unknown").to_owned(),
                after: elapsed(since_ns, ts(&event)),
            },
            None => Outcome::NotDetected { within: cap },
        })
    }

    fn job_rounds(&self, lasting: Duration) -> u64 {
        ((self.lab.rounds_per_second as f64 * lasting.as_secs_f64()) as u64).max(1)
    }

    fn device(&self) -> String {
        format!("lab-{}", self.prefix)
    }

    // ------------------------------------------------------------ scenarios

    fn client_exit(&mut self) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        let (peer, _) = self.accepted(&mut server, &[])?;
        self.welcomed(&mut client)?;
        let said = Instant::now();
        client.send_line(&job(ENDLESS_ROUNDS))?;
        server.expect_event("`job_started`", soon(), |e| is(e, "job_started", &peer))?;
        // Killed with ACCEPTED unread, its kernel would send RST, not FIN.
        client.expect_stdout("ACCEPTED", soon(), |l| {
            matches!(Reply::parse(l), Ok(Reply::Accepted(_)))
        })?;
        self.far_from_a_heartbeat(&mut client, said)?;
        self.started()?;
        let fault = client.kill()?;
        let outcome = self.detect(&mut server, Side::Server, Some(&peer), fault, fault)?;
        let cancelled = server.events_matching(|e| is(e, "job_cancelled", &peer));
        self.check("job cancelled", !cancelled.is_empty());
        Ok(outcome)
    }

    /// Makes sure the client's next heartbeat is far off before it is killed: it sends
    /// a PING H after its last words, and killed while that PING's PONG is on its way,
    /// it leaves the PONG unread and its kernel answers with RST instead of FIN (a kill
    /// 1.0002 s after the last exchange did exactly that). `said`: when the client last
    /// spoke. While half a heartbeat or more has passed since (a slow host), it speaks
    /// again, a PING of the lab's own, at most three times.
    fn far_from_a_heartbeat(
        &self,
        client: &mut LabProcess,
        mut said: Instant,
    ) -> Result<(), LabError> {
        for _ in 0..3 {
            if said.elapsed() < self.lab.heartbeat / 2 {
                return Ok(());
            }
            said = Instant::now();
            client.send_line("PING lab")?;
            client.expect_stdout("PONG lab", soon(), |l| l == "PONG lab")?;
        }
        Ok(())
    }

    fn client_exit_unread(&mut self) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let (mut peer_process, peer) = self.peer(&topology, PeerMode::Unread)?;
        server.expect_event("`job_started`", soon(), |e| is(e, "job_started", &peer))?;
        // PONG and ACCEPTED were written before the job started; give them time to
        // land in the peer's receive queue.
        interrupt::sleep(Duration::from_millis(50))?;
        self.started()?;
        let fault = peer_process.kill()?;
        let outcome = self.detect(&mut server, Side::Server, Some(&peer), fault, fault)?;
        let cancelled = server.events_matching(|e| is(e, "job_cancelled", &peer));
        self.check("job cancelled", !cancelled.is_empty());
        Ok(outcome)
    }

    /// A session whose client has a job of about a second running on the server: how
    /// the scenarios that fault a connection mid-job begin. The topology must outlive
    /// the processes (dropping it removes the namespaces).
    fn session_running_a_job(
        &mut self,
    ) -> Result<(Topology, LabProcess, LabProcess, String), LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        let (peer, _) = self.accepted(&mut server, &[])?;
        self.welcomed(&mut client)?;
        let rounds = self.job_rounds(Duration::from_secs(1));
        client.send_line(&job(rounds))?;
        server.expect_event("`job_started`", soon(), |e| is(e, "job_started", &peer))?;
        self.started()?;
        Ok((topology, server, client, peer))
    }

    fn client_half_close(&mut self) -> Result<Outcome, LabError> {
        let (_topology, mut server, mut client, peer) = self.session_running_a_job()?;
        let fault = client.close_stdin();
        let cap = self.lab.config.cap;
        let done = client.wait_stdout(deadline_after(fault, cap), first_job_done)?;
        let cancelled = server.events_matching(|e| is(e, "job_cancelled", &peer));
        if !server
            .events_matching(|e| is(e, "peer_half_closed", &peer))
            .is_empty()
        {
            self.note("server saw peer_half_closed (the probe drew no RST)".into());
        }
        self.check("no job cancelled", cancelled.is_empty());
        self.check("DONE delivered", done.is_some());
        let exit = client.wait_exit(Instant::now() + Duration::from_secs(5))?;
        self.check("client exited 0", exit.is_some_and(|s| s.success()));
        if let Some(event) = cancelled.first() {
            return Ok(Outcome::Detected {
                side: Side::Server,
                cause: events::cause(event).unwrap_or("unknown").to_owned(),
                after: elapsed(fault, ts(event)),
            });
        }
        Ok(match done {
            Some((at, _)) => Outcome::Kept {
                proven_after: elapsed(fault, at),
            },
            None => Outcome::Broken {
                detail: format!("no DONE within {}", format_duration(cap)),
            },
        })
    }

    /// The host on `dying`'s side of an idle session goes (its link cut as `cut`, its
    /// process killed): when and how the other side notices.
    fn idle_session_dies(&mut self, dying: Side, cut: Cut) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        let peer = match dying {
            Side::Client => Some(self.accepted(&mut server, &[])?.0),
            Side::Server => None,
        };
        self.welcomed(&mut client)?;
        let tag = match cut {
            Cut::Silent => "before-crash",
            Cut::Unreachable => "before-unreachable",
        };
        self.warm_up(&mut client, tag)?;
        self.started()?;
        let fault = cut.apply(&topology, dying)?;
        let (dead, watcher, watching) = match dying {
            Side::Client => (&mut client, &mut server, Side::Server),
            Side::Server => (&mut server, &mut client, Side::Client),
        };
        dead.kill()?;
        let outcome = self.detect(watcher, watching, peer.as_deref(), fault, fault)?;
        if cut == Cut::Unreachable {
            self.note_icmp(&topology, watching);
        }
        Ok(outcome)
    }

    fn client_crash_sending(&mut self) -> Result<Outcome, LabError> {
        self.streaming_peer_dies(PeerMode::LargeReplies, None, Cut::Silent)
    }

    fn client_crash_uploading(&mut self) -> Result<Outcome, LabError> {
        let session = self.sessions().then(|| self.device());
        self.streaming_peer_dies(PeerMode::Upload, session.as_deref(), Cut::Silent)
    }

    /// A raw peer streams (`mode`, with a session for `device` if given), then its link
    /// is cut and it is killed: when and how the server notices.
    fn streaming_peer_dies(
        &mut self,
        mode: PeerMode,
        device: Option<&str>,
        cut: Cut,
    ) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let (mut peer_process, peer) = self.peer_with(&topology, mode, device)?;
        peer_process.expect_stdout("`streaming`", soon(), |l| l == "streaming")?;
        self.started()?;
        let fault = cut.apply(&topology, Side::Client)?;
        peer_process.kill()?;
        let outcome = self.detect(&mut server, Side::Server, Some(&peer), fault, fault)?;
        if cut == Cut::Unreachable {
            self.note_icmp(&topology, Side::Server);
        }
        Ok(outcome)
    }

    /// What the watching side's kernel made of the router's ICMP: how many host
    /// unreachables arrived, and how many it dropped as out of window (those answering
    /// keepalive probes, which carry snd_una − 1).
    fn note_icmp(&mut self, topology: &Topology, watcher: Side) {
        match netns::counters(topology.netns(watcher)) {
            Ok(counters) => {
                let get = |key: &str| counters.get(key).copied().unwrap_or(0);
                // Checked where the watcher certainly sends after the cut (the full
                // policy's heartbeats, probes, retransmissions); an idle watcher draws
                // no ICMP, and that is part of what the other cells show.
                if self.setup == Setup::Full {
                    self.check(ROUTER_ANSWERED, get("Icmp.InDestUnreachs") > 0);
                }
                self.note(format!(
                    "{} kernel: {} ICMP destination unreachable received, {} ignored as out of window",
                    match watcher {
                        Side::Client => "client",
                        Side::Server => "server",
                    },
                    get("Icmp.InDestUnreachs"),
                    get("TcpExt.OutOfWindowIcmps"),
                ));
            }
            Err(err) => {
                if self.setup == Setup::Full {
                    self.check(ROUTER_ANSWERED, false);
                }
                self.note(format!("no ICMP counters: {err}"));
            }
        }
    }

    fn client_unreachable_sending(&mut self) -> Result<Outcome, LabError> {
        self.streaming_peer_dies(PeerMode::LargeReplies, None, Cut::Unreachable)
    }

    // ------------------------------------------------------------ --target

    /// One server-side scenario against a third-party server: its connection watched
    /// through sock_diag by `hangup lab sockwatch`, its client a raw-socket peer.
    fn run_target(&mut self, scenario: Scenario, target: &Target) -> Result<Outcome, LabError> {
        let mut topology = self.topology()?;
        let server_ip = topology.ip(Side::Server);
        let mut watcher = LabProcess::spawn(
            "sockwatch",
            topology.netns(Side::Server),
            &self.lab.config.hangup,
            &[
                "lab".to_owned(),
                "sockwatch".to_owned(),
                "--port".to_owned(),
                target.port.to_string(),
            ],
            &self.lab.run_prefix,
        )?;
        let mut server = LabProcess::spawn_shell(
            "target",
            topology.netns(Side::Server),
            &target.command,
            &self.lab.run_prefix,
            &[
                ("HANGUP_LAB_SERVER_IP", server_ip.to_string()),
                ("HANGUP_LAB_PORT", target.port.to_string()),
            ],
        )?;
        let listening = watcher.wait_event(soon(), |e| name(e) == "listening")?;
        if listening.is_none() {
            let exited = server.wait_exit(Instant::now())?;
            return Err(LabError::Timeout {
                what: format!(
                    "the target never listened on port {} ({})",
                    target.port,
                    exited.map_or("still running".to_owned(), |s| format!("it exited: {s}"))
                ),
                process: "target".into(),
                log: server.log_tail(),
            });
        }
        let mode = match scenario {
            Scenario::ClientExitUnread => PeerMode::RawUnread,
            Scenario::ClientHalfClose => PeerMode::RawHalfClose,
            Scenario::ClientCrashUploading => PeerMode::RawUpload,
            _ => PeerMode::RawRead,
        };
        let addr = SocketAddr::from((server_ip, target.port));
        let payload = target.payload_for(scenario);
        let (mut peer_process, peer) = self.raw_peer(&topology, addr, mode, payload)?;
        watcher.expect_event("the peer's connection", soon(), |e| {
            is(e, "connection_opened", &peer)
        })?;
        let streaming = |p: &mut LabProcess| {
            p.wait_stdout(Instant::now() + Duration::from_secs(3), |l| {
                l == "streaming"
            })
        };
        let fault = match scenario {
            Scenario::ClientExit => {
                // Let the payload's answer arrive and be read: the kill then sends FIN.
                interrupt::sleep(Duration::from_millis(200))?;
                self.started()?;
                peer_process.kill()?
            }
            Scenario::ClientExitUnread => {
                let (_, unread) =
                    peer_process.expect_stdout("`unread`", soon(), |l| l.starts_with("unread "))?;
                let bytes: u64 = unread.trim_start_matches("unread ").parse().unwrap_or(0);
                self.check("the reply waits unread in the peer's socket", bytes > 0);
                self.note(format!("{bytes} bytes unread in the peer's socket"));
                self.started()?;
                peer_process.kill()?
            }
            Scenario::ClientHalfClose => {
                let (read_at, line) = peer_process
                    .expect_stdout("`half-closed`", soon(), |l| l.starts_with("half-closed "))?;
                self.started()?;
                // The peer's own time, just before its FIN: the server may act on the
                // FIN before the lab reads this line.
                line.trim_start_matches("half-closed ")
                    .parse()
                    .unwrap_or(read_at)
            }
            Scenario::ClientCrashSending
            | Scenario::ClientStalled
            | Scenario::ClientUnreachableSending => {
                if streaming(&mut peer_process)?.is_none() {
                    return Ok(Outcome::Skipped {
                        reason: "the target sent less than 1 MiB for the payload: nothing \
                                 streams to crash or stall on"
                            .into(),
                    });
                }
                self.started()?;
                if scenario == Scenario::ClientStalled {
                    peer_process.signal(libc::SIGSTOP)?
                } else {
                    let cut = match scenario {
                        Scenario::ClientUnreachableSending => Cut::Unreachable,
                        _ => Cut::Silent,
                    };
                    let at = cut.apply(&topology, Side::Client)?;
                    peer_process.kill()?;
                    at
                }
            }
            Scenario::ClientCrashUploading => {
                if streaming(&mut peer_process)?.is_none() {
                    return Ok(Outcome::Skipped {
                        reason: "the target did not take 1 MiB of upload within 3 s".into(),
                    });
                }
                self.started()?;
                let at = topology.cut(Side::Client)?;
                peer_process.kill()?;
                at
            }
            Scenario::ClientCrashIdle | Scenario::ClientCableFlap | Scenario::ClientUnreachable => {
                interrupt::sleep(Duration::from_millis(200))?;
                self.started()?;
                let cut = match scenario {
                    Scenario::ClientUnreachable => Cut::Unreachable,
                    _ => Cut::Silent,
                };
                let at = cut.apply(&topology, Side::Client)?;
                // A flapping cable comes back: its peer lives on.
                if scenario != Scenario::ClientCableFlap {
                    peer_process.kill()?;
                }
                at
            }
            Scenario::ClientReboot => {
                interrupt::sleep(Duration::from_millis(200))?;
                self.started()?;
                let at = topology.cut(Side::Client)?;
                peer_process.kill()?;
                topology.reboot(Side::Client)?;
                at
            }
            other => {
                return Ok(Outcome::Skipped {
                    reason: format!("{other} is not a server-side scenario"),
                })
            }
        };
        if scenario == Scenario::ClientCableFlap {
            interrupt::sleep(self.dead_after() / 2)?;
            topology.reconnect(Side::Client)?;
            let watch = self.dead_after() * 2 + self.dead_after() / 2;
            return Ok(
                match self.detect_until(&mut watcher, Some(&peer), fault, watch)? {
                    Some(event) => self.false_positive(Side::Server, &event, fault),
                    None => Outcome::Kept {
                        proven_after: watch,
                    },
                },
            );
        }
        let mut outcome = self.detect(&mut watcher, Side::Server, Some(&peer), fault, fault)?;
        if scenario == Scenario::ClientHalfClose {
            if let Outcome::NotDetected { within } = outcome {
                outcome = Outcome::Kept {
                    proven_after: within,
                };
            }
            let replied = peer_process
                .wait_stdout(Instant::now() + Duration::from_secs(2), |l| l == "replied")?;
            self.check("the half-closing peer got a reply", replied.is_some());
            if let Some((_, eof)) =
                peer_process.wait_stdout(Instant::now(), |l| l.starts_with("eof "))?
            {
                self.note(format!(
                    "the half-closed peer read {} bytes, then EOF",
                    eof.trim_start_matches("eof ")
                ));
            }
        }
        if scenario.routed() {
            // A note only (see note_icmp).
            self.note_icmp(&topology, Side::Server);
        }
        if let Outcome::Detected { .. } = &outcome {
            if let Some(event) = watcher
                .events_matching(|e| is(e, "connection_closed", &peer))
                .first()
            {
                self.note(format!(
                    "server socket {} → {}",
                    event["from"].as_str().unwrap_or("?"),
                    event["to"].as_str().unwrap_or("?")
                ));
            }
        }
        drop(server);
        Ok(outcome)
    }

    /// A raw-socket peer for `--target` in the client namespace.
    fn raw_peer(
        &self,
        topology: &Topology,
        addr: SocketAddr,
        mode: PeerMode,
        payload: &[u8],
    ) -> Result<(LabProcess, String), LabError> {
        let mut args = vec![
            "lab".to_owned(),
            "peer".to_owned(),
            "--connect".to_owned(),
            addr.to_string(),
            "--mode".to_owned(),
            mode.name().to_owned(),
        ];
        // Through a file: a payload can be larger than one argument may be (128 KiB).
        let dir = std::env::temp_dir().join(format!("{}-payload", self.prefix));
        std::fs::create_dir_all(&dir)
            .map_err(|err| LabError::io(format!("create {}", dir.display()), err))?;
        let dir = TempDir(dir);
        let file = dir.0.join("payload");
        std::fs::write(&file, payload)
            .map_err(|err| LabError::io(format!("write {}", file.display()), err))?;
        args.extend(["--payload-file".to_owned(), file.display().to_string()]);
        let mut peer = LabProcess::spawn(
            "peer",
            topology.netns(Side::Client),
            &self.lab.config.hangup,
            &args,
            &self.lab.run_prefix,
        )?;
        // The peer has read its payload once it says `ready`.
        let (_, ready) = peer.expect_stdout("`ready`", soon(), |l| l.starts_with("ready "))?;
        drop(dir);
        Ok((peer, ready.trim_start_matches("ready ").to_owned()))
    }

    fn client_cable_flap(&mut self) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        let (peer, _) = self.accepted(&mut server, &[])?;
        self.welcomed(&mut client)?;
        self.warm_up(&mut client, "before-flap")?;
        self.started()?;
        let fault = topology.cut(Side::Client)?;
        interrupt::sleep(self.dead_after() / 2)?;
        topology.reconnect(Side::Client)?;
        // Whatever would wrongly fire does so within D of the last segment before the
        // fault; watch well past that.
        let watch = self.dead_after() * 2 + self.dead_after() / 2;
        let server_saw = self.detect_until(&mut server, Some(&peer), fault, watch)?;
        let client_saw = self.detect_until(&mut client, None, fault, Duration::ZERO)?;
        if let Some(event) = server_saw {
            return Ok(self.false_positive(Side::Server, &event, fault));
        }
        if let Some(event) = client_saw {
            return Ok(self.false_positive(Side::Client, &event, fault));
        }
        client.send_line(&Command::Ping("after-flap".into()).to_string())?;
        let pong = client.wait_stdout(Instant::now() + Duration::from_secs(2), |l| {
            Reply::parse(l) == Ok(Reply::Pong("after-flap".into()))
        })?;
        self.check("PONG after the flap", pong.is_some());
        Ok(match pong {
            Some((at, _)) => Outcome::Kept {
                proven_after: elapsed(fault, at),
            },
            None => Outcome::Broken {
                detail: "no PONG within 2 s after the flap, and nothing reported".into(),
            },
        })
    }

    /// The first `connection_closed` after the fault, waiting at most `watch` past it.
    fn detect_until(
        &self,
        watcher: &mut LabProcess,
        peer: Option<&str>,
        fault_ns: u64,
        watch: Duration,
    ) -> Result<Option<Value>, LabError> {
        watcher.wait_event(deadline_after(fault_ns, watch), |e| {
            name(e) == "connection_closed"
                && ts(e) >= fault_ns
                && peer.is_none_or(|p| events::peer(e) == p)
        })
    }

    fn false_positive(&mut self, side: Side, event: &Value, fault: u64) -> Outcome {
        self.note("false positive: the peer was alive".into());
        Outcome::Detected {
            side,
            cause: events::cause(event).unwrap_or("unknown").to_owned(),
            after: elapsed(fault, ts(event)),
        }
    }

    fn client_reboot(&mut self) -> Result<Outcome, LabError> {
        let mut topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        let (peer, _) = self.accepted(&mut server, &[])?;
        self.welcomed(&mut client)?;
        self.warm_up(&mut client, "before-reboot")?;
        self.started()?;
        let fault = topology.cut(Side::Client)?;
        client.kill()?;
        topology.reboot(Side::Client)?;
        self.note(format!(
            "client host back {} after the fault",
            format_duration(elapsed(fault, ts_ns()))
        ));
        self.detect(&mut server, Side::Server, Some(&peer), fault, fault)
    }

    fn client_reconnect(&mut self) -> Result<Outcome, LabError> {
        let mut topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let device = self.device();
        let mut first = self.client(&topology, &device)?;
        let (ghost, _) = self.accepted(&mut server, &[])?;
        self.welcomed(&mut first)?;
        self.warm_up(&mut first, "before-crash")?;
        self.started()?;
        let fault = topology.cut(Side::Client)?;
        first.kill()?;
        topology.reboot(Side::Client)?;
        let mut second = self.client(&topology, &device)?;
        let (fresh, reconnected) = self.accepted(&mut server, &[&ghost])?;
        self.welcomed(&mut second)?;
        self.note(format!(
            "device reconnected {} after the crash; time measured from the new connection",
            format_duration(elapsed(fault, reconnected))
        ));
        let outcome = self.detect(&mut server, Side::Server, Some(&ghost), fault, reconnected)?;
        // Ghosts: connections the server still holds other than the fresh one.
        let opened = server.events_matching(|e| name(e) == "connection_opened");
        let closed = server.events_matching(|e| name(e) == "connection_closed");
        let open: Vec<&str> = opened
            .iter()
            .map(events::peer)
            .filter(|p| !closed.iter().any(|c| events::peer(c) == *p))
            .collect();
        let ghosts = open.iter().filter(|p| **p != fresh).count();
        self.check("0 ghosts", ghosts == 0);
        Ok(outcome)
    }

    fn client_stalled(&mut self) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let (mut peer_process, peer) = self.peer(&topology, PeerMode::Flood)?;
        peer_process.expect_stdout("`streaming`", soon(), |l| l == "streaming")?;
        self.started()?;
        let fault = peer_process.signal(libc::SIGSTOP)?;
        self.detect(&mut server, Side::Server, Some(&peer), fault, fault)
    }

    fn server_exit(&mut self) -> Result<Outcome, LabError> {
        let topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        self.welcomed(&mut client)?;
        self.warm_up(&mut client, "before-exit")?;
        self.started()?;
        let fault = server.kill()?;
        self.detect(&mut client, Side::Client, None, fault, fault)
    }

    fn server_reboot(&mut self) -> Result<Outcome, LabError> {
        let mut topology = self.topology()?;
        let mut server = self.server(&topology)?;
        let mut client = self.client(&topology, &self.device())?;
        self.welcomed(&mut client)?;
        self.warm_up(&mut client, "before-reboot")?;
        self.started()?;
        let fault = topology.cut(Side::Server)?;
        server.kill()?;
        topology.reboot(Side::Server)?;
        // The old one is reaped; the new one runs in the new namespace.
        server = self.server(&topology)?;
        self.note(format!(
            "fresh server listening {} after the fault",
            format_duration(elapsed(fault, ts_ns()))
        ));
        let outcome = self.detect(&mut client, Side::Client, None, fault, fault)?;
        // Only a client that noticed the loss has a reason to reconnect.
        if matches!(outcome, Outcome::Detected { .. }) {
            let reconnected = client.wait_event(Instant::now() + Duration::from_secs(5), |e| {
                name(e) == "connection_opened" && ts(e) > fault
            })?;
            self.check(
                "client reconnected to the fresh server",
                reconnected.is_some(),
            );
        }
        drop(server);
        Ok(outcome)
    }

    fn server_shutdown(&mut self) -> Result<Outcome, LabError> {
        let (topology, mut server, mut client, _peer) = self.session_running_a_job()?;
        let fault = server.signal(libc::SIGTERM)?;
        let deadline = deadline_after(fault, self.lab.config.cap);
        let outcome = self.detect(&mut client, Side::Client, None, fault, fault)?;
        let goaway =
            client.wait_stdout(deadline, |l| Reply::parse(l) == Ok(Reply::GoawayShutdown))?;
        let done = client.wait_stdout(deadline, first_job_done)?;
        self.check("GOAWAY received", goaway.is_some());
        self.check("DONE received", done.is_some());
        if let Some((at, _)) = done {
            self.note(format!(
                "DONE {} after SIGTERM",
                format_duration(elapsed(fault, at))
            ));
        }
        let exit = server.wait_exit(deadline)?;
        self.check("server exited 0", exit.is_some_and(|s| s.success()));
        drop(server);
        let _fresh = self.server(&topology)?;
        let reconnected = client.wait_event(Instant::now() + Duration::from_secs(5), |e| {
            name(e) == "connection_opened" && ts(e) > fault
        })?;
        self.check("client reconnected", reconnected.is_some());
        Ok(outcome)
    }
}
