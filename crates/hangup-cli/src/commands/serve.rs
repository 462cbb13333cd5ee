//! `hangup serve`.

use std::process::ExitCode;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context;
use hangup_server::cluster::ClusterConfig;
use hangup_server::presence::PresenceStore;
use hangup_server::{Server, ServerConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::{read_secret, resolve_policy, runtime};
use crate::args::{AdminAddr, ServeArgs};
use crate::logging;

/// Reads an `--admin-token` file: its text without surrounding whitespace.
fn read_admin_token(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<str>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "could not read the admin token file {} (--admin-token)",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "the admin token file {} (--admin-token) must hold one token without spaces, e.g. `head -c 24 /dev/urandom | base64 > {}`",
            path.display(),
            path.display()
        );
    }
    Ok(token.into())
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format);
    let mut config = server_config(&args)?;
    let (store, recovery) = PresenceStore::open(&args.data_dir).with_context(|| {
        format!(
            "could not open the presence store in {} (--data-dir)",
            args.data_dir.display()
        )
    })?;
    if recovery.closed_sessions > 0 {
        hangup::emit!(
            "presence_recovered",
            closed_sessions = recovery.closed_sessions,
            cause = "shutdown",
        );
    }
    config.presence = Some(store.recorder());
    let listen = args.listen;
    let served = runtime()?.block_on(async move {
        // The handlers are in place before the server listens: a signal that comes
        // early is a shutdown too, never the default action's instant death.
        let signals = (
            signal(SignalKind::interrupt()).context("could not handle SIGINT")?,
            signal(SignalKind::terminate()).context("could not handle SIGTERM")?,
        );
        let server = Server::bind(config).await.with_context(|| {
            format!("could not listen on {listen} (--listen) or the --admin address")
        })?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(signals, shutdown.clone()));
        server.run(shutdown).await.context("server failed")
    });
    // Every session ended (cause `shutdown`) is on disk before we say we are done.
    let recorder = store.recorder();
    let closed = store.close().context("could not flush the presence store");
    let stats = recorder.stats();
    served?;
    closed?;
    hangup::emit!(
        "shutdown_complete",
        presence_rows_written = stats.rows_written,
        presence_max_pending = stats.max_pending,
        presence_max_batch_us = stats.max_batch_micros,
    );
    Ok(ExitCode::SUCCESS)
}

/// The flags (and the config file, already merged into them) as the server's settings,
/// in one step; whatever a flag leaves out is [`ServerConfig`]'s default.
fn server_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let policy = resolve_policy(&args.liveness)?;
    let max_connections =
        NonZeroUsize::new(args.max_connections).context("--max-connections must be at least 1")?;
    let defaults = ServerConfig::default();
    let workers = match args.workers {
        None => defaults.workers,
        Some(workers) => NonZeroUsize::new(workers)
            .context("--workers must be at least 1 (or leave it out for one per CPU)")?,
    };
    let io_threads = match args.io_threads {
        None => defaults.io_threads,
        Some(threads) => NonZeroUsize::new(threads)
            .context("--io-threads must be at least 1 (or leave it out for half the CPUs)")?,
    };
    let config = ServerConfig {
        listen: args.listen,
        reuse_port: args.reuse_port,
        policy,
        half_close: args.on_half_close,
        workers,
        io_threads,
        max_connections,
        max_rounds: args.max_rounds,
        max_queued_bytes: args.max_queued_bytes,
        presence_durability: args.presence_durability,
        admin: match args.admin {
            AdminAddr::Off => None,
            AdminAddr::At(addr) => Some(addr),
        },
        admin_token: args
            .admin_token
            .as_deref()
            .map(read_admin_token)
            .transpose()?,
        auth_secret: args.auth_secret.as_deref().map(read_secret).transpose()?,
        drain_timeout: args.drain_timeout,
        presence: None,
        cluster: match &args.cluster {
            // Checked here rather than by clap's `requires`: the config file's keys are
            // parsed one at a time.
            None if args.node_id.is_some() => {
                anyhow::bail!("--node-id needs --cluster (the node's id in the cluster)")
            }
            None => None,
            Some(url) => {
                let mut cluster = ClusterConfig::new(url, args.node_id.clone())
                    .context("--cluster / --node-id")?;
                if args.cluster_lease < Duration::from_millis(100) {
                    anyhow::bail!("--cluster-lease must be at least 100ms");
                }
                cluster.lease = args.cluster_lease;
                Some(cluster)
            }
        },
    };
    if config.auth_secret.is_none() && !args.insecure {
        refuse_exposed("--listen", args.listen)?;
        if let Some(admin) = config.admin {
            refuse_exposed("--admin", admin)?;
        }
    }
    Ok(config)
}

/// Without a secret, anyone who can reach the port could take over any device's
/// session: only loopback, unless the user says `--insecure`.
fn refuse_exposed(flag: &str, addr: SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr} ({flag}) without --auth-secret: anyone who can connect could take over any device's session. \
         Give --auth-secret FILE (clients then need `hangup token` tokens), listen on loopback, or pass --insecure"
    )
}

/// First SIGINT/SIGTERM: stop accepting and close connections; second: exit at once.
async fn stop_on_signal((mut int, mut term): (Signal, Signal), shutdown: CancellationToken) {
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    hangup::emit!("shutdown_started");
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    std::process::exit(130);
}
