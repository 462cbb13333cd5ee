//! The `hangup` command: parses its flags (args.rs, the one place of clap derive),
//! turns them into the settings of the crate that does the work, and runs it.
//!
//! ```text
//!  args.rs ──▶ commands/serve.rs     ──▶ hangup-server  (hangup serve)
//!              commands/client.rs    ──▶ hangup         (the session client)
//!              commands/bench.rs     ──▶ hangup-bench   (cancel, takeover, scale, mass-death)
//!              commands/lab.rs       ──▶ hangup-lab     (the fault lab, --cleanup)
//!              commands/inspect.rs   ──▶ hangup-inspect (sock_diag)
//!              commands/{presence,token,config}.rs
//! ```

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
