//! The event log on stderr: human text, or one JSON object a line.

use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // I/O threads write their lines once per pass (hangup_server::log).
        .with_writer(|| hangup_server::log::StderrLines)
        // A line that cannot be written is dropped. By default the subscriber reports
        // it with `eprintln!`, which panics when stderr is gone (its reader exited: a
        // closed pipe): the signal task panicked at `shutdown_started`, and the server
        // could no longer be stopped by a signal.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
