//! `hangup serve`.

use std::process::ExitCode;

use anyhow::Context;
use hangup::server::{Server, ServerConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::{resolve_policy, runtime};
use crate::args::ServeArgs;
use crate::logging;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format);
    let policy = resolve_policy(&args.liveness)?;
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    if args.workers == Some(0) {
        anyhow::bail!("--workers must be at least 1 (or leave it out for one per CPU)");
    }
    let mut config = ServerConfig::new(args.listen, args.liveness.dead_after);
    config.policy = policy;
    config.half_close = args.on_half_close;
    config.max_connections = args.max_connections;
    config.max_rounds = args.max_rounds;
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    runtime()?.block_on(async move {
        let server = Server::bind(config)
            .await
            .with_context(|| format!("could not listen on {} (--listen)", args.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        server.run(shutdown).await.context("server failed")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// First SIGINT/SIGTERM: stop accepting and close connections; second: exit at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!(target: "hangup::event", event = "shutdown_started", ts_ns = hangup::events::ts_ns());
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    std::process::exit(130);
}
