//! `hangup presence`: is a device online, when did it drop, and why — read from the
//! presence store the server writes (SPEC §4). All the storage is in
//! `hangup_server::presence`; this resolves the flags and prints.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use hangup_inspect::human_duration;
use hangup_server::cluster::{self, ClusterSessionRow};
use hangup_server::presence::{query, PresenceError, PresenceFilter, SessionRow};

use crate::args::PresenceArgs;

/// Marks an open session whose server is no longer running, in the table.
const SERVER_GONE: &str = "(server gone)";

/// Prints the sessions; see the exit status in `hangup presence --help`.
pub fn run(args: &PresenceArgs) -> anyhow::Result<ExitCode> {
    if args.limit == Some(0) {
        bail!("--limit 0: the limit must be at least 1 (or leave it out for every session)");
    }
    if let Some(url) = &args.cluster {
        return run_cluster(args, url);
    }
    let filter = PresenceFilter {
        device: args.device.clone(),
        online_only: args.online,
        limit: args.limit,
    };
    let rows = read(&args.data_dir, &filter)?;
    print_rows(args, &rows, |out| {
        print_table(out, &rows, SystemTime::now())
    })?;
    let Some(device) = unlisted_device(args, &rows, || args.data_dir.display().to_string()) else {
        return Ok(ExitCode::SUCCESS);
    };
    // Say which of "never seen" and "seen, but offline" it is: the second is the
    // question people ask most ("when did it drop, and why").
    let last = read(
        &args.data_dir,
        &PresenceFilter {
            device: Some(device.clone()),
            online_only: false,
            limit: Some(1),
        },
    )?;
    match last.first() {
        Some(last) => eprintln!("device {device} is not online: {}", describe_end(last)),
        None => eprintln!(
            "device {device} was never seen (no session in {})",
            args.data_dir.display()
        ),
    }
    Ok(ExitCode::from(1))
}

/// Prints `rows` as JSON (`--json`) or as `table` prints them.
fn print_rows<R: serde::Serialize>(
    args: &PresenceArgs,
    rows: &[R],
    table: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut out, rows)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out)
    };
    match printed {
        Ok(()) => Ok(()),
        // `hangup presence | head` closing the pipe is a normal way to stop.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(error).context("could not write the sessions"),
    }
}

/// The `--device` that selected no session, to be explained (exit status 1); `None`
/// when rows were listed or no device was asked for (then an empty listing says so,
/// naming `place`, unless the output is JSON).
fn unlisted_device<'a, R>(
    args: &'a PresenceArgs,
    rows: &[R],
    place: impl FnOnce() -> String,
) -> Option<&'a String> {
    if !rows.is_empty() {
        return None;
    }
    if args.device.is_none() && !args.json {
        let what = if args.online {
            "no session is online"
        } else {
            "no session recorded"
        };
        eprintln!("{what} in {}", place());
    }
    args.device.as_ref()
}

/// Writes `cells` under `headers` in columns two spaces apart, the last one unpadded.
fn write_columns(out: &mut dyn Write, headers: &[&str], cells: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut headers.iter().copied())?;
    for row in cells {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// `--cluster URL`: the fleet's view from Redis.
fn run_cluster(args: &PresenceArgs, url: &str) -> anyhow::Result<ExitCode> {
    let filter = PresenceFilter {
        device: args.device.clone(),
        online_only: args.online,
        limit: args.limit,
    };
    let rows = super::runtime()?
        .block_on(cluster::query(url, &filter))
        .with_context(|| format!("could not read the cluster's presence from {url} (--cluster)"))?;
    print_rows(args, &rows, |out| {
        print_cluster_table(out, &rows, SystemTime::now())
    })?;
    let Some(device) = unlisted_device(args, &rows, || format!("the cluster at {url}")) else {
        return Ok(ExitCode::SUCCESS);
    };
    let all = PresenceFilter {
        device: Some(device.clone()),
        online_only: false,
        limit: Some(1),
    };
    let last = super::runtime()?
        .block_on(cluster::query(url, &all))
        .context("could not read the cluster's presence")?;
    match last.first() {
        Some(ClusterSessionRow {
            ended_at: Some(ended_at),
            cause: Some(cause),
            node,
            ..
        }) => eprintln!(
            "device {device} is not online: its last session (node {node}) ended at {} (cause {cause})",
            humantime::format_rfc3339_seconds(*ended_at)
        ),
        Some(last) => eprintln!(
            "device {device} is not online: its last session (node {}) has no end recorded and its node's lease expired",
            last.node
        ),
        None => eprintln!("device {device} was never seen in the cluster at {url}"),
    }
    Ok(ExitCode::from(1))
}

/// The cluster table, newest session first, times UTC to the second.
fn print_cluster_table(
    out: &mut dyn Write,
    rows: &[ClusterSessionRow],
    now: SystemTime,
) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let headers = [
        "DEVICE",
        "NODE",
        "SESSION",
        "PEER",
        "STATE",
        "CONNECTED_AT",
        "ENDED_AT",
        "CAUSE",
        "DURATION",
    ];
    let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let state = if row.online { "online" } else { "offline" };
            let until = row.ended_at.unwrap_or(now);
            let duration = until
                .duration_since(row.connected_at)
                .unwrap_or(Duration::ZERO);
            vec![
                row.device.clone(),
                row.node.clone(),
                row.session.clone(),
                row.peer.clone(),
                state.to_owned(),
                time(row.connected_at),
                row.ended_at.map(time).unwrap_or_else(|| "-".to_owned()),
                row.cause
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                human_duration(duration),
            ]
        })
        .collect();
    write_columns(out, &headers, &cells)
}

/// Queries the store, turning a missing database into advice.
fn read(data_dir: &Path, filter: &PresenceFilter) -> anyhow::Result<Vec<SessionRow>> {
    match query(data_dir, filter) {
        Ok(rows) => Ok(rows),
        Err(PresenceError::NotFound { path }) => bail!(
            "no presence database at {}: sessions are recorded there by \
             `hangup serve --data-dir {}`; pass --data-dir DIR to read another directory",
            path.display(),
            data_dir.display()
        ),
        Err(error) => Err(error).context("could not read the presence store"),
    }
}

/// How a session that is not online ended, for one line of prose.
fn describe_end(row: &SessionRow) -> String {
    match (row.ended_at, row.cause) {
        (Some(ended_at), Some(cause)) => format!(
            "its last session ended at {} (cause {cause})",
            humantime::format_rfc3339_seconds(ended_at)
        ),
        _ => format!(
            "its last session was last seen at {}, and the server that recorded it is no \
             longer running",
            humantime::format_rfc3339_seconds(row.last_seen)
        ),
    }
}

/// The table, newest session first. Times are UTC, to the second.
fn print_table(out: &mut dyn Write, rows: &[SessionRow], now: SystemTime) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let headers = [
        "DEVICE",
        "SESSION",
        "PEER",
        "STATE",
        "CONNECTED_AT",
        "LAST_SEEN",
        "ENDED_AT",
        "CAUSE",
        "DURATION",
    ];
    let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let state = if row.online { "online" } else { "offline" };
            let (ended_at, cause) = match (row.ended_at, row.cause) {
                (Some(ended_at), Some(cause)) => (time(ended_at), cause.to_string()),
                _ if row.online => ("-".to_owned(), "-".to_owned()),
                _ => ("-".to_owned(), SERVER_GONE.to_owned()),
            };
            // Online: so far. Ended: until the end. Server gone: until last heard from.
            let until = match row.ended_at {
                Some(ended_at) => ended_at,
                None if row.online => now,
                None => row.last_seen,
            };
            let duration = until
                .duration_since(row.connected_at)
                .unwrap_or(Duration::ZERO);
            vec![
                row.device.clone(),
                row.session.clone(),
                row.peer.clone(),
                state.to_owned(),
                time(row.connected_at),
                time(row.last_seen),
                ended_at,
                cause,
                human_duration(duration),
            ]
        })
        .collect();
    write_columns(out, &headers, &cells)?;
    if cells.iter().any(|row| row[7] == SERVER_GONE) {
        writeln!(
            out,
            "\n{SERVER_GONE}: the server that recorded the session is no longer running; \
             its next start on this data directory closes it with cause shutdown."
        )?;
    }
    Ok(())
}
