//! The hangup fault lab: proves, scenario by scenario, how fast each kind of peer death
//! is detected, and what the same fault costs with Linux defaults (SPEC §7).
//!
//! For every cell of the matrix (scenario × detection set-up) the lab builds two fresh
//! network namespaces joined by a veth pair, runs the real `hangup serve` and
//! `hangup client` (or a small raw-socket peer, `hangup lab peer`) inside them, injects
//! the fault, and measures detection from the `ts_ns` of the watching side's
//! `connection_closed` event against the moment of the fault.
//!
//! ```text
//!  run(LabConfig) ── for each scenario × set-up ──────────────────────────────────┐
//!   │  Topology (netns.rs)      hlab-<pid>-<n>c ══veth══ hlab-<pid>-<n>s          │
//!   │  LabProcess (process.rs)  hangup client / peer      hangup serve            │
//!   │  fault (run.rs)           SIGKILL · SIGSTOP · SIGTERM · SHUT_WR ·           │
//!   │                           link cut/restored · host reboot                   │
//!   │  measure                  event ts_ns − fault ts_ns  ──▶ Cell (cell.rs)     │
//!   └───────────────────────────────────────────────────────────────────────────────┘
//!  Report (report.rs): table, JSON        chart.rs: SVG, log scale, budget D line
//! ```
//!
//! What it does not do: shape traffic (no netem), or touch any namespace, interface or
//! process it did not create. Everything carries the prefix `hlab-<lab pid in hex>`
//! and is removed when a cell ends, on error and on SIGINT/SIGTERM (after
//! [`install_interrupt_handler`]); [`cleanup_leftovers`] removes what a killed run left.
//! The namespace and veth guards ([`Netns`], [`Veth`]) are public: `hangup bench
//! mass-death` (in hangup-bench) builds its network with them, under the same prefix,
//! so the one cleanup covers it too.
//!
//! It needs Linux, root and iproute2 ([`preflight`] says which is missing).
//!
//! ```no_run
//! use std::time::Duration;
//! use hangup_lab::{LabConfig, Setup};
//!
//! let mut config = LabConfig::new("target/release/hangup".into(), Duration::from_secs(2));
//! config.setups = vec![Setup::Full];
//! let report = hangup_lab::run(&config)?;
//! println!("{}", report.table());
//! assert!(report.full_policy_holds());
//! # Ok::<(), hangup_lab::LabError>(())
//! ```
#![warn(missing_docs)]

mod cell;
mod chart;
mod error;
mod events;
mod interrupt;
mod netns;
mod peer;
mod process;
mod report;
mod run;
mod scenario;
mod setup;
mod sockwatch;
mod timescale;

pub use cell::{judge, judge_target, Cell, Check, Outcome};
pub use chart::write_svg;
pub use error::LabError;
pub use interrupt::{install_handler as install_interrupt_handler, requested as interrupted};
pub use netns::{
    cleanup_leftovers, ip, namespaces_with_prefix, owner_pid, parse_counters, preflight,
    processes_with_marker, run_prefix, server_addr, Cleanup, Netns, Side, Veth, CLIENT_IP,
    NETNS_PREFIX, ROUTED_CLIENT_IP, ROUTED_SERVER_IP, RUN_MARKER_ENV, SERVER_IP, SERVER_PORT,
};
pub use peer::{run_peer, PeerMode, PeerOptions, STREAMING_AFTER_BYTES};
pub use report::{format_duration, Machine, Report};
pub use run::{default_cap, run, Capabilities, LabConfig, Target};
pub use scenario::{Bound, Expectation, Scenario, INSTANT};
pub use setup::{heartbeat_for, Setup};
pub use sockwatch::{close_reason, run_sockwatch, CloseReason, POLL as SOCKWATCH_POLL};
pub use timescale::{keepalive_verdict, retries_timeout, TimeScale};
