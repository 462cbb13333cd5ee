//! The `hangup` command.

mod args;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hangup: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
