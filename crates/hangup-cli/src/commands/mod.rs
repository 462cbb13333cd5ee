//! One module per subcommand; each resolves its arguments into settings and runs.

mod bench;
mod client;
mod inspect;
mod lab;
mod serve;

use std::process::ExitCode;

use anyhow::Context;
use hangup_core::LivenessPolicy;

use crate::args::{AutoDuration, BenchCommand, Cli, Command, LivenessArgs};

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Bench(BenchCommand::Cancel(args)) => bench::cancel(args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Lab(args) => lab::run(args),
    }
}

/// Resolves the liveness flags into a policy.
pub(crate) fn resolve_policy(args: &LivenessArgs) -> anyhow::Result<LivenessPolicy> {
    let mut policy = LivenessPolicy::resolve(args.dead_after, args.keepalive, args.user_timeout)
        .with_context(|| {
            format!(
                "--dead-after {}",
                hangup_core::format_duration(args.dead_after)
            )
        })?;
    policy.watch_hangup = args.watch_hangup;
    policy.write_timeout = match args.write_timeout {
        AutoDuration::Auto => Some(args.dead_after),
        AutoDuration::Off => None,
        AutoDuration::Fixed(d) => Some(d),
    };
    Ok(policy)
}

/// A multi-threaded tokio runtime.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the tokio runtime")
}
