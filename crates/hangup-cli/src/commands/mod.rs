//! One module per subcommand; each resolves its arguments into settings and runs.

mod bench;
mod client;
mod config;
mod inspect;
mod lab;
mod presence;
mod serve;
mod token;

pub use config::expand as expand_config;

use std::process::ExitCode;

use anyhow::Context;
use hangup_core::{LivenessPolicy, LivenessSettings};

use crate::args::{Cli, Command, LivenessArgs};

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Inspect(args) => inspect::run(&args),
        Command::Lab(args) => lab::run(args),
        Command::Token(args) => token::run(&args),
        Command::Presence(args) => presence::run(&args),
    }
}

/// Resolves the liveness flags into a policy: the flags are the core's
/// [`LivenessSettings`], and the core derives everything that says `auto` from D.
pub(crate) fn resolve_policy(args: &LivenessArgs) -> anyhow::Result<LivenessPolicy> {
    let settings = LivenessSettings {
        dead_after: args.dead_after,
        keepalive: args.keepalive,
        user_timeout: args.user_timeout,
        watch_hangup: args.watch_hangup,
        write_timeout: args.write_timeout,
    };
    settings.resolve().with_context(|| {
        format!(
            "--dead-after {}",
            hangup_core::format_duration(args.dead_after)
        )
    })
}

/// Reads an `--auth-secret` file: its bytes without trailing line breaks.
pub(crate) fn read_secret(path: &std::path::Path) -> anyhow::Result<hangup_server::AuthSecret> {
    let mut bytes = std::fs::read(path).with_context(|| {
        format!(
            "could not read the secret file {} (--auth-secret)",
            path.display()
        )
    })?;
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        anyhow::bail!(
            "the secret file {} (--auth-secret) is empty; put a long random secret in it, e.g. `head -c 32 /dev/urandom | base64 > {}`",
            path.display(),
            path.display()
        );
    }
    Ok(hangup_server::AuthSecret::new(bytes))
}

/// A multi-threaded tokio runtime.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the tokio runtime")
}
