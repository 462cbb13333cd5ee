//! `hangup inspect`: the host's TCP sockets through sock_diag, with ghosts, leaks
//! and dying peers flagged. All the work is in the `hangup-inspect` crate; this
//! only turns the flags into its [`Options`].

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hangup_inspect::{InspectError, Options};

use crate::args::InspectArgs;

/// Runs the inspector on stdout. Exit status 0 whether or not anything was
/// flagged (scripts read `--json`); errors go to `main`.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let mut options = Options::default();
    options.port = args.port;
    options.pid = args.pid;
    options.state = args.state.clone();
    options.json = args.json;
    options.watch = args.watch.map(watch_interval).transpose()?;
    options.close_wait_after = args.close_wait_after;
    options.silent_after = args.silent_after;
    // Reject a bad --state before anything is collected or printed.
    options.filter().context("--state")?;

    let mut out = io::stdout().lock();
    match hangup_inspect::run(&options, &mut out) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `hangup inspect | head` closing the pipe is a normal way to stop.
        Err(InspectError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error).context("could not inspect tcp sockets"),
    }
}

/// `--watch DURATION`: positive.
fn watch_interval(interval: Duration) -> anyhow::Result<Duration> {
    if interval.is_zero() {
        bail!(
            "--watch needs a positive duration, got {}",
            hangup_core::format_duration(interval)
        );
    }
    Ok(interval)
}
