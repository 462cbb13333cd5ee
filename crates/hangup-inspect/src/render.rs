//! Turning a [`Report`] into a table for people or JSON for programs.
//!
//! The JSON shape is versioned by its `schema` field and documented in
//! `docs/INSPECT.md`; fields are only ever added within a version.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::diagnose::{DiagnosedSocket, Finding, FindingKind, ProcessSummary, Report};
use crate::error::InspectError;
use crate::model::{KernelTimer, Owner, OwnerStatus, TcpState, TimerKind};

/// The value of the JSON `schema` field.
pub const JSON_SCHEMA: &str = "hangup-inspect/1";

/// A short human form: `850ms`, `12.3s`, `5m03s`, `2h10m`, `3d04h`.
pub fn human_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let secs = duration.as_secs();
    match millis {
        0..=999 => format!("{millis}ms"),
        1_000..=59_999 => format!("{}.{}s", millis / 1000, (millis % 1000) / 100),
        60_000..=3_599_999 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn rtt_cell(rtt: Duration) -> String {
    if rtt < Duration::from_millis(1) {
        format!("{}us", rtt.as_micros())
    } else {
        format!("{:.1}ms", rtt.as_secs_f64() * 1000.0)
    }
}

fn timer_cell(timer: Option<&KernelTimer>) -> String {
    match timer {
        None => "-".to_owned(),
        Some(timer) => format!(
            "{} {}/{}",
            timer.kind.ss_name(),
            human_duration(timer.expires_in),
            timer.retries
        ),
    }
}

fn owner_cell(diagnosed: &DiagnosedSocket) -> String {
    let socket = &diagnosed.socket;
    match (socket.owner_status, socket.owners.as_slice()) {
        (OwnerStatus::Found, [first, rest @ ..]) => {
            let mut cell = format!("{}/{}", first.comm, first.pid);
            let others = rest.iter().filter(|o| o.pid != first.pid).count();
            if others > 0 {
                let _ = write!(cell, " +{others}");
            }
            cell
        }
        (OwnerStatus::Unknown, _) => "?".to_owned(),
        _ => "-".to_owned(),
    }
}

/// Writes the human table: one row per socket, findings indented under it,
/// then the summary per process and any notes.
///
/// # Errors
/// [`InspectError::Output`] if `out` fails.
pub fn render_table(report: &Report, out: &mut dyn Write) -> Result<(), InspectError> {
    let headers = [
        "STATE", "RECV-Q", "SEND-Q", "LOCAL", "PEER", "RTT", "UNACK", "RETRANS", "LAST-SND",
        "LAST-RCV", "TIMER", "PROCESS",
    ];
    let rows: Vec<[String; 12]> = report
        .sockets
        .iter()
        .map(|diagnosed| {
            let socket = &diagnosed.socket;
            // A listener's TCP_INFO carries no round trips or data times.
            let info = socket
                .tcp_info
                .as_ref()
                .filter(|_| socket.state != TcpState::Listen);
            let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
            [
                socket.state.ss_label().to_owned(),
                socket.recv_q.to_string(),
                socket.send_q.to_string(),
                socket.local.to_string(),
                if socket.state == TcpState::Listen {
                    "*".to_owned()
                } else {
                    socket.peer.to_string()
                },
                or_dash(info.map(|i| rtt_cell(i.rtt))),
                or_dash(info.map(|i| i.unacked.to_string())),
                or_dash(info.map(|i| format!("{}/{}", i.retransmits, i.total_retrans))),
                or_dash(info.map(|i| human_duration(i.last_data_sent))),
                or_dash(info.map(|i| human_duration(i.last_data_recv))),
                timer_cell(socket.timer.as_ref()),
                owner_cell(diagnosed),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let flagged = report.flagged().count();
    writeln!(
        out,
        "{} of {} TCP socket(s) shown, {flagged} flagged",
        report.sockets.len(),
        report.total_sockets
    )?;
    let line = |cells: &[&str]| {
        let mut line = String::new();
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let numeric = matches!(index, 1 | 2 | 6);
            if index + 1 == cells.len() {
                line.push_str(cell);
            } else if numeric {
                let _ = write!(line, "{cell:>width$}  ");
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        line
    };
    writeln!(out, "{}", line(&headers))?;
    for (row, diagnosed) in rows.iter().zip(&report.sockets) {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
        for finding in &diagnosed.findings {
            writeln!(out, "  ! {}: {}", finding.kind, finding.reason)?;
        }
    }
    if !report.processes.is_empty() {
        writeln!(out)?;
        writeln!(out, "per process:")?;
        for process in &report.processes {
            let name = match process.pid {
                Some(pid) => format!("{} (pid {pid})", process.comm),
                None => "no known owner".to_owned(),
            };
            let findings: Vec<String> = process
                .findings
                .iter()
                .map(|(kind, count)| format!("{count} {kind}"))
                .collect();
            let detail = if findings.is_empty() {
                String::new()
            } else {
                format!(": {}", findings.join(", "))
            };
            writeln!(
                out,
                "  {name}: {} socket(s), {} flagged{detail}",
                process.sockets, process.flagged
            )?;
        }
    }
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

/// Writes the report as one JSON document (schema [`JSON_SCHEMA`]) on one line.
///
/// # Errors
/// [`InspectError::Json`] or [`InspectError::Output`].
pub fn render_json(report: &Report, out: &mut dyn Write) -> Result<(), InspectError> {
    serde_json::to_writer(&mut *out, &JsonReport::from(report))?;
    writeln!(out)?;
    Ok(())
}

/// The JSON document; see `docs/INSPECT.md` for every field.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    schema: &'static str,
    thresholds: JsonThresholds,
    total_sockets: usize,
    findings: BTreeMap<FindingKind, usize>,
    sockets: Vec<JsonSocket<'a>>,
    processes: &'a [ProcessSummary],
    notes: &'a [String],
}

#[derive(Debug, Serialize)]
struct JsonThresholds {
    close_wait_after_ms: u128,
    silent_after_ms: u128,
}

#[derive(Debug, Serialize)]
struct JsonSocket<'a> {
    family: &'static str,
    state: TcpState,
    local: String,
    peer: String,
    recv_q: u32,
    send_q: u32,
    uid: u32,
    inode: u32,
    cookie: u64,
    timer: Option<JsonTimer>,
    tcp_info: Option<JsonTcpInfo>,
    owner_status: OwnerStatus,
    owners: &'a [Owner],
    findings: &'a [Finding],
}

#[derive(Debug, Serialize)]
struct JsonTimer {
    kind: TimerKind,
    expires_ms: u128,
    retries: u8,
}

#[derive(Debug, Serialize)]
struct JsonTcpInfo {
    rtt_us: u128,
    rttvar_us: u128,
    rto_us: u128,
    unacked: u32,
    lost: u32,
    retrans: u32,
    retransmits: u8,
    total_retrans: u32,
    probes: u8,
    backoff: u8,
    last_data_sent_ms: u128,
    last_data_recv_ms: u128,
    last_ack_recv_ms: u128,
    bytes_acked: Option<u64>,
    bytes_received: Option<u64>,
    notsent_bytes: Option<u32>,
    snd_wnd: Option<u32>,
}

impl<'a> From<&'a Report> for JsonReport<'a> {
    fn from(report: &'a Report) -> Self {
        JsonReport {
            schema: JSON_SCHEMA,
            thresholds: JsonThresholds {
                close_wait_after_ms: report.thresholds.close_wait_after.as_millis(),
                silent_after_ms: report.thresholds.silent_after.as_millis(),
            },
            total_sockets: report.total_sockets,
            findings: finding_counts(report),
            sockets: report.sockets.iter().map(JsonSocket::from).collect(),
            processes: &report.processes,
            notes: &report.notes,
        }
    }
}

impl<'a> From<&'a DiagnosedSocket> for JsonSocket<'a> {
    fn from(diagnosed: &'a DiagnosedSocket) -> Self {
        let socket = &diagnosed.socket;
        JsonSocket {
            family: if socket.local.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            },
            state: socket.state,
            local: socket.local.to_string(),
            peer: socket.peer.to_string(),
            recv_q: socket.recv_q,
            send_q: socket.send_q,
            uid: socket.uid,
            inode: socket.inode,
            cookie: socket.cookie,
            timer: socket.timer.map(|timer| JsonTimer {
                kind: timer.kind,
                expires_ms: timer.expires_in.as_millis(),
                retries: timer.retries,
            }),
            tcp_info: socket.tcp_info.map(|info| JsonTcpInfo {
                rtt_us: info.rtt.as_micros(),
                rttvar_us: info.rttvar.as_micros(),
                rto_us: info.rto.as_micros(),
                unacked: info.unacked,
                lost: info.lost,
                retrans: info.retrans,
                retransmits: info.retransmits,
                total_retrans: info.total_retrans,
                probes: info.probes,
                backoff: info.backoff,
                last_data_sent_ms: info.last_data_sent.as_millis(),
                last_data_recv_ms: info.last_data_recv.as_millis(),
                last_ack_recv_ms: info.last_ack_recv.as_millis(),
                bytes_acked: info.bytes_acked,
                bytes_received: info.bytes_received,
                notsent_bytes: info.notsent_bytes,
                snd_wnd: info.snd_wnd,
            }),
            owner_status: socket.owner_status,
            owners: &socket.owners,
            findings: &diagnosed.findings,
        }
    }
}

/// Counts of each finding kind over the report, every kind present (zero included).
pub fn finding_counts(report: &Report) -> BTreeMap<FindingKind, usize> {
    let mut counts: BTreeMap<FindingKind, usize> =
        FindingKind::ALL.into_iter().map(|kind| (kind, 0)).collect();
    for finding in report.sockets.iter().flat_map(|s| &s.findings) {
        *counts.entry(finding.kind).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(human_duration(Duration::from_secs(303)), "5m03s");
        assert_eq!(human_duration(Duration::from_secs(7_800)), "2h10m");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d04h"
        );
    }
}
