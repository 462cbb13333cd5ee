//! The benches of `hangup bench`: measurements against a real `hangup serve`, started
//! as a child process of this same executable, and the reference peers they drive.
//!
//! ```text
//!  hangup bench <name> ── hangup-cli args.rs ──▶ <Name>Settings ──▶ hangup_bench::<name>
//!   cancel.rs      FIN/RST → job_cancelled latency      ─┐
//!   takeover.rs    reconnect storm, eviction latency     │  ServerProcess (lib.rs):
//!   scale.rs       N heartbeating sessions, K instances  ├─ `<current exe> serve …`,
//!   mass_death.rs  N sessions die at once in a netns     │  JSON events on stderr
//!   load.rs        the load workers (`bench load-worker`)┘
//!   http.rs        plain axum/hyper beside their hangup variants (http_peer.rs: the
//!                  reference servers, also `bench cancel --peer`'s)
//!   mosquitto.rs · mqtt.rs     `bench scale --peer mosquitto`: the broker the bench
//!                  starts · the MQTT 3.1.1 packets the load workers speak to it
//!   histogram.rs · procfs.rs   log-bucket latencies · /proc samples and limits
//! ```
//!
//! What it does not do: parse command-line flags (the `hangup` binary's args.rs does,
//! and hands each bench a plain settings struct), or run without the `hangup`
//! executable: every bench starts `hangup serve` and its load workers through
//! [`std::env::current_exe`], so it must be called from within the `hangup` binary.
//! Each bench is a function that returns the process's exit code: success when its
//! checks held.
//!
//! Whatever a bench makes carries the lab's run prefix (`hlab-<pid in hex>`): the
//! mass-death namespace and veth pair are the lab's guards ([`hangup_lab::Netns`],
//! [`hangup_lab::Veth`]), the servers' presence stores are `hlab-<pid>-bench-*`
//! directories, and every child process carries [`hangup_lab::RUN_MARKER_ENV`]. So
//! `hangup lab --cleanup` removes what a killed bench left, with the lab's one helper.
//!
//! ```no_run
//! // Inside the `hangup` binary:
//! let settings = hangup_bench::TakeoverSettings {
//!     devices: 1_000,
//!     wave: 500,
//!     concurrency: 4,
//!     nodes: 1,
//!     redis: None,
//!     presence_durability: hangup_server::PresenceDurability::Batched,
//!     json: None,
//! };
//! let code = hangup_bench::takeover(&settings)?;
//! # Ok::<(), anyhow::Error>(())
//! ```
#![warn(missing_docs)]

mod cancel;
mod histogram;
mod http;
mod http_peer;
mod load;
mod mass_death;
mod mosquitto;
mod mqtt;
mod netstat;
mod own_netns;
mod procfs;
mod scale;
mod soak;
mod takeover;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

pub use cancel::{cancel, CancelSettings, HangupMode};
pub use http::{http, HttpSettings};
pub use http_peer::{http_peer, HttpPeerSettings, HttpServerKind};
pub use load::{load_worker, LoadProtocol, LoadWorkerSettings};
pub use mass_death::{mass_death, MassDeathSettings};
pub use scale::{scale, ScalePeer, ScaleSettings};
pub use soak::{soak, SoakSettings};
pub use takeover::{takeover, TakeoverSettings};

/// Turns SIGINT, SIGTERM and SIGHUP into a flag that the benches' loops check, so that
/// they return through their guards (killing their children, deleting namespaces)
/// instead of dying with them still in place. The flag is the lab's: one handler for
/// every command that cleans up after itself.
pub(crate) fn catch_interrupts() -> anyhow::Result<()> {
    hangup_lab::install_interrupt_handler().context("could not install the Ctrl-C handler")
}

/// An error once SIGINT, SIGTERM or SIGHUP arrived.
pub(crate) fn check_interrupt() -> anyhow::Result<()> {
    if hangup_lab::interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `total` in short steps, returning early with an error on an interrupt.
pub(crate) fn sleep_checked(total: Duration, mut tick: impl FnMut(Duration)) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < total {
        check_interrupt()?;
        std::thread::sleep((total - start.elapsed()).min(Duration::from_millis(100)));
        tick(start.elapsed());
    }
    Ok(())
}

/// The server under test, killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    events: mpsc::Receiver<Value>,
    /// Its presence store, removed with it (a `hangup serve`; none for other children).
    data_dir: Option<PathBuf>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(data_dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

impl ServerProcess {
    /// Starts `hangup serve` on an ephemeral loopback port, without admin endpoint, with
    /// a fresh presence store and `extra` flags; waits for `listening`. Only the events
    /// named in `wanted` (and `listening`) are kept: a storm logs millions of others.
    pub fn start(extra: &[&str], wanted: &'static [&'static str]) -> anyhow::Result<Self> {
        Self::start_at("127.0.0.1:0", extra, wanted)
    }

    /// Like [`ServerProcess::start`], listening on `listen`.
    pub fn start_at(
        listen: &str,
        extra: &[&str],
        wanted: &'static [&'static str],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the hangup executable")?;
        let data_dir = std::env::temp_dir().join(format!(
            "{}-bench-{}",
            hangup_lab::run_prefix(),
            fastrand::u32(..)
        ));
        let mut command = Command::new(exe);
        command
            .args(["serve", "--listen", listen, "--log-format", "json"])
            .args(["--admin", "off", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("RUST_LOG", "info");
        Self::spawn(command, "hangup serve", wanted, Some(data_dir))
    }

    /// Starts `hangup serve` on `listen` with the presence store in `data_dir`, which it
    /// leaves in place (for a run that restarts the server on the same store).
    pub fn start_in(
        listen: &str,
        data_dir: &str,
        extra: &[&str],
        wanted: &'static [&'static str],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the hangup executable")?;
        let mut command = Command::new(exe);
        command
            .args(["serve", "--listen", listen, "--log-format", "json"])
            .args(["--admin", "off", "--data-dir", data_dir])
            .args(extra)
            .env("RUST_LOG", "info");
        Self::spawn(command, "hangup serve", wanted, None)
    }

    /// Starts this same executable with `args`: a child that prints `listening` with its
    /// `addr` and then its events, one JSON object a line, on stderr.
    pub fn start_child(args: &[&str], wanted: &'static [&'static str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the hangup executable")?;
        let mut command = Command::new(exe);
        command.args(args);
        Self::spawn(command, &format!("hangup {}", args.join(" ")), wanted, None)
    }

    fn spawn(
        mut command: Command,
        what: &str,
        wanted: &'static [&'static str],
        data_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        // Marked as this run's, so that `hangup lab --cleanup` ends it if we are killed.
        let mut child = command
            .env(hangup_lab::RUN_MARKER_ENV, hangup_lab::run_prefix())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{what}`"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, events) = mpsc::channel();
        // Lines that are not events (a usage error, a panic), kept for the error report.
        let complaints = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let kept = complaints.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if !line.starts_with('{') {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() < 20 {
                        kept.push(line);
                    }
                    continue;
                }
                let name = line
                    .split("\"event\":\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default();
                if name != "listening" && !wanted.contains(&name) {
                    continue;
                }
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            events,
            data_dir,
        };
        let listening = server
            .wait_event(Duration::from_secs(10), |e| e["event"] == "listening")
            .with_context(|| {
                let said = complaints.lock().unwrap_or_else(|p| p.into_inner());
                format!(
                    "the server did not report `listening`; it said: {}",
                    said.join("\n")
                )
            })?;
        server.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("`listening` event without an address")?;
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Events received so far that match `wanted`, without waiting.
    pub fn drain_events(&self, mut on_event: impl FnMut(Value)) {
        while let Ok(event) = self.events.try_recv() {
            on_event(event);
        }
    }

    /// The server's presence store.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir
            .as_deref()
            .expect("only a `hangup serve` has a presence store")
    }

    /// SIGTERM, then waits up to `limit` for a clean exit.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill -TERM");
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "the server exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("the server did not exit within {limit:?} of SIGTERM")
    }

    /// The next event matching `wanted`, within `limit`.
    pub fn wait_event(&self, limit: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(event) if wanted(&event) => return Some(event),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// Writes a report as pretty JSON.
pub(crate) fn write_json(
    path: &std::path::Path,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").with_context(|| format!("could not write {}", path.display()))
}

/// The `p`-th percentile (nearest rank) of sorted `values`; NaN when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU model, core count and kernel, for the record (the lab's description, in the
/// benches' format).
pub(crate) fn machine_description() -> String {
    let machine = hangup_lab::Machine::describe();
    format!(
        "{}, {} cores, Linux {}",
        machine.cpu, machine.cpus, machine.kernel
    )
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg): the machine may be shared.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A multi-threaded tokio runtime.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("could not start the tokio runtime")
}

/// A command as the line a client sends, `\n` included.
pub(crate) fn command_line(command: &hangup_core::Command) -> Vec<u8> {
    let mut line = Vec::new();
    command.encode(&mut line);
    line
}

/// The first two words of a line the bench did not expect (`ERR busy`, `GOAWAY
/// shutdown`), to count it under in a report.
pub(crate) fn first_words(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
