//! `hangup inspect`: list a host's TCP sockets through sock_diag netlink and
//! diagnose ghosts, leaks and dying peers, for any process, not only hangup's.
//!
//! ```text
//!  kernel ──sock_diag dump (INET_DIAG_INFO)──▶ sys::collect ──▶ Snapshot
//!  /proc/*/fd  socket:[inode] ──owners──────────────┘              │
//!                                                                 ▼
//!                      Thresholds, Filter ──▶ diagnose (pure) ──▶ Report
//!                                                                 │
//!                                       render_table / render_json ▼ out
//! ```
//!
//! What it does:
//! - one netlink dump per address family (IPv4, IPv6), every TCP state, with
//!   TCP_INFO and the kernel timer (`idiag_timer`, `idiag_retrans`, `idiag_expires`);
//! - owners from `/proc/PID/fd` links; without root, other users' processes are
//!   unreadable and the report says so in its notes;
//! - five findings, each with a one-line reason: [`FindingKind`];
//! - a table or a stable JSON document (schema [`JSON_SCHEMA`], see `docs/INSPECT.md`),
//!   once or refreshed every N seconds.
//!
//! What it does not do: change or kill sockets (no `SOCK_DESTROY`), look into
//! other network namespaces than the calling thread's, or keep history between
//! refreshes: every finding comes from one dump, with ages taken from TCP_INFO.
//!
//! Linux only; elsewhere [`collect`] returns [`InspectError::Unsupported`].
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use hangup_inspect::{collect, diagnose, render_table, Filter, Thresholds};
//!
//! # fn main() -> Result<(), hangup_inspect::InspectError> {
//! # if cfg!(not(target_os = "linux")) { return Ok(()); }
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let port = listener.local_addr()?.port();
//!
//! let thresholds = Thresholds { close_wait_after: Duration::from_secs(10), ..Thresholds::default() };
//! let filter = Filter { port: Some(port), ..Filter::default() };
//! let report = diagnose(collect()?, &thresholds, &filter);
//! assert_eq!(report.sockets.len(), 1);
//! assert_eq!(report.sockets[0].socket.owners[0].pid, std::process::id());
//!
//! render_table(&report, &mut std::io::stdout())?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod diagnose;
mod error;
mod model;
mod render;
mod sys;

use std::io::Write;
use std::time::Duration;

pub use diagnose::{
    close_wait_age, diagnose, DiagnosedSocket, Filter, Finding, FindingKind, ProcessSummary,
    Report, Thresholds,
};
pub use error::InspectError;
pub use model::{KernelTimer, Owner, OwnerStatus, Snapshot, Socket, TcpInfo, TcpState, TimerKind};
pub use render::{finding_counts, human_duration, render_json, render_table, JSON_SCHEMA};
#[cfg(target_os = "linux")]
pub use sys::linux::{parse_dump_datagram, DumpDatagram};

/// Dumps every TCP socket (IPv4 and IPv6, all states) of the calling thread's
/// network namespace, with TCP_INFO, timers and owning processes.
///
/// # Errors
/// [`InspectError::Netlink`], [`InspectError::Kernel`] or [`InspectError::Decode`]
/// when the dump fails; [`InspectError::Unsupported`] off Linux.
pub fn collect() -> Result<Snapshot, InspectError> {
    sys::collect()
}

/// Like [`collect`], but without owners (no walk of `/proc/*/fd`): the sockets, their
/// states, TCP_INFO and timers only, cheap enough to poll every few milliseconds (the
/// fault lab watches a third-party server's connections this way).
///
/// # Errors
/// As [`collect`].
pub fn collect_sockets() -> Result<Snapshot, InspectError> {
    sys::collect_sockets()
}

/// What `hangup inspect` was asked to do.
///
/// Build it from [`Options::default`] and set fields; more may be added.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Options {
    /// Only sockets whose local or peer port is this.
    pub port: Option<u16>,
    /// Only sockets held by this process.
    pub pid: Option<u32>,
    /// Only sockets in this state, by name (`established`, `close-wait`, `estab`, ...).
    pub state: Option<String>,
    /// Print JSON (one document per line) instead of a table.
    pub json: bool,
    /// Refresh every interval until interrupted; `None` = print once. Must not be zero.
    pub watch: Option<Duration>,
    /// With `watch`: stop after this many reports (at least one is printed);
    /// `None` = until interrupted.
    pub refreshes: Option<u64>,
    /// CLOSE_WAIT older than this is a `close-wait-leak`.
    pub close_wait_after: Duration,
    /// ESTABLISHED and silent for longer than this is a `half-open-suspect`
    /// (keepalive off) or, with a twin from the same peer heard from since, a `ghost-duplicate`.
    pub silent_after: Duration,
}

impl Default for Options {
    /// Everything shown once as a table, with the [`Thresholds::default`] thresholds.
    fn default() -> Self {
        let thresholds = Thresholds::default();
        Options {
            port: None,
            pid: None,
            state: None,
            json: false,
            watch: None,
            refreshes: None,
            close_wait_after: thresholds.close_wait_after,
            silent_after: thresholds.silent_after,
        }
    }
}

impl Options {
    /// The socket filter these options describe.
    ///
    /// # Errors
    /// [`InspectError::UnknownState`] for a state name that is not a TCP state.
    pub fn filter(&self) -> Result<Filter, InspectError> {
        Ok(Filter {
            port: self.port,
            pid: self.pid,
            state: self.state.as_deref().map(TcpState::parse).transpose()?,
        })
    }

    /// The thresholds these options describe.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            close_wait_after: self.close_wait_after,
            silent_after: self.silent_after,
        }
    }
}

/// Collects, diagnoses and renders once, or repeatedly with [`Options::watch`].
///
/// In watch mode the table is redrawn in place (ANSI clear screen before each
/// frame); JSON prints one document per line per refresh, with no escapes.
///
/// # Errors
/// Invalid options ([`InspectError::UnknownState`], [`InspectError::ZeroWatchInterval`])
/// before anything is collected; then any collection or output error.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<(), InspectError> {
    let filter = opts.filter()?;
    let thresholds = opts.thresholds();
    let render = |report: &Report, out: &mut dyn Write| {
        if opts.json {
            render_json(report, out)
        } else {
            render_table(report, out)
        }
    };
    let Some(interval) = opts.watch else {
        let report = diagnose(collect()?, &thresholds, &filter);
        return render(&report, out);
    };
    if interval.is_zero() {
        return Err(InspectError::ZeroWatchInterval);
    }
    let mut done = 0u64;
    loop {
        let report = diagnose(collect()?, &thresholds, &filter);
        // One write per frame, so a slow terminal never shows half a table.
        let mut frame = Vec::new();
        if !opts.json {
            frame.extend_from_slice(b"\x1b[H\x1b[2J");
        }
        render(&report, &mut frame)?;
        out.write_all(&frame)?;
        out.flush()?;
        done += 1;
        if opts.refreshes.is_some_and(|limit| done >= limit) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
