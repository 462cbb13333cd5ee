//! The `hangup` command.

mod args;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv = match commands::expand_config(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(err) => {
            eprintln!("hangup: error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let cli = args::Cli::parse_from(argv);
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hangup: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
