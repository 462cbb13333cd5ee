//! `hangup bench`: measurements against a real `hangup serve` (this same executable).

mod cancel;
mod takeover;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

pub use cancel::cancel;
pub use takeover::takeover;

/// The server under test, killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    events: mpsc::Receiver<Value>,
    /// Its presence store, removed with it.
    data_dir: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl ServerProcess {
    /// Starts `hangup serve` on an ephemeral loopback port, without admin endpoint, with
    /// a fresh presence store and `extra` flags; waits for `listening`. Only the events
    /// named in `wanted` (and `listening`) are kept: a storm logs millions of others.
    pub fn start(extra: &[&str], wanted: &'static [&'static str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the hangup executable")?;
        let data_dir = std::env::temp_dir().join(format!(
            "hangup-bench-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--admin", "off", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("could not start `hangup serve`")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
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
            .context("the server did not report `listening`")?;
        server.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("`listening` event without an address")?;
        Ok(server)
    }

    /// The server's presence store.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
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

/// The `p`-th percentile (nearest rank) of sorted `values`; NaN when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU model, core count and kernel, for the record.
pub(crate) fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}
