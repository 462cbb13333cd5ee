//! Turning a [`Snapshot`] into findings. Pure: no I/O, no clock.
//!
//! Every rule reads only what the kernel reported in one dump; the ages it
//! uses are the relative times in TCP_INFO, so the same snapshot always gives
//! the same report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use crate::model::{OwnerStatus, Snapshot, Socket, TcpState, TimerKind};
use crate::render::human_duration;

/// When a condition becomes a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A CLOSE_WAIT socket older than this is a `close-wait-leak`.
    pub close_wait_after: Duration,
    /// An ESTABLISHED socket that received nothing for longer than this is a
    /// `half-open-suspect` (keepalive off) or, with a twin from the same peer heard from since, a `ghost-duplicate`.
    pub silent_after: Duration,
}

impl Default for Thresholds {
    /// The CLI defaults: 10 s for CLOSE_WAIT, 5 min of silence.
    fn default() -> Self {
        Thresholds {
            close_wait_after: Duration::from_secs(10),
            silent_after: Duration::from_secs(300),
        }
    }
}

/// What is wrong with a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// CLOSE_WAIT longer than the threshold: the peer closed, the application never did.
    CloseWaitLeak,
    /// ESTABLISHED, silent longer than the threshold, keepalive off: nothing would notice a dead peer.
    HalfOpenSuspect,
    /// Retransmission timeouts without an answer: the peer is likely gone.
    Retransmitting,
    /// The peer advertises a zero window: alive, but not reading.
    ZeroWindow,
    /// One of several connections from the same peer address to a listening
    /// port, silent, while another of them was heard from since: likely left
    /// behind by a reconnect.
    GhostDuplicate,
}

impl FindingKind {
    /// Every kind, in report order.
    pub const ALL: [FindingKind; 5] = [
        FindingKind::CloseWaitLeak,
        FindingKind::HalfOpenSuspect,
        FindingKind::Retransmitting,
        FindingKind::ZeroWindow,
        FindingKind::GhostDuplicate,
    ];

    /// The stable name used in the table and the JSON, e.g. `close-wait-leak`.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::CloseWaitLeak => "close-wait-leak",
            FindingKind::HalfOpenSuspect => "half-open-suspect",
            FindingKind::Retransmitting => "retransmitting",
            FindingKind::ZeroWindow => "zero-window",
            FindingKind::GhostDuplicate => "ghost-duplicate",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One finding on one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// One line saying why, with the figures that triggered it.
    pub reason: String,
}

/// Which sockets to show. `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Local or peer port.
    pub port: Option<u16>,
    /// A process holding the socket.
    pub pid: Option<u32>,
    /// The TCP state.
    pub state: Option<TcpState>,
}

impl Filter {
    /// Whether `socket` passes every set criterion.
    pub fn matches(&self, socket: &Socket) -> bool {
        self.port
            .is_none_or(|port| socket.local.port() == port || socket.peer.port() == port)
            && self
                .pid
                .is_none_or(|pid| socket.owners.iter().any(|owner| owner.pid == pid))
            && self.state.is_none_or(|state| socket.state == state)
    }
}

/// A socket with what was found about it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagnosedSocket {
    /// The socket as collected.
    pub socket: Socket,
    /// Findings, in [`FindingKind::ALL`] order; empty when healthy.
    pub findings: Vec<Finding>,
}

/// Counts for one process (or for sockets without a known owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessSummary {
    /// Process id; `None` for the group of sockets with no known owner.
    pub pid: Option<u32>,
    /// Process name; empty for the no-owner group.
    pub comm: String,
    /// Sockets shown for this process.
    pub sockets: usize,
    /// Of those, sockets with at least one finding.
    pub flagged: usize,
    /// Number of sockets per finding kind (kinds with zero are left out).
    pub findings: BTreeMap<FindingKind, usize>,
}

/// The result of [`diagnose`]: the shown sockets, their findings, and a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Thresholds the findings were judged with.
    pub thresholds: Thresholds,
    /// TCP sockets in the dump, before filtering.
    pub total_sockets: usize,
    /// Sockets passing the filter, with findings.
    pub sockets: Vec<DiagnosedSocket>,
    /// Per process, sorted by pid; the no-owner group last.
    pub processes: Vec<ProcessSummary>,
    /// What could not be seen (missing privileges, no IPv6), one sentence each.
    pub notes: Vec<String>,
}

impl Report {
    /// Sockets with at least one finding.
    pub fn flagged(&self) -> impl Iterator<Item = &DiagnosedSocket> {
        self.sockets.iter().filter(|s| !s.findings.is_empty())
    }
}

/// Judges every socket of `snapshot`, then keeps those matching `filter`.
///
/// Rules look at the whole snapshot (a `ghost-duplicate` needs the listener and
/// its siblings), so filtering happens after diagnosis.
pub fn diagnose(snapshot: Snapshot, thresholds: &Thresholds, filter: &Filter) -> Report {
    let ghosts = ghost_duplicates(&snapshot.sockets, thresholds);
    let total_sockets = snapshot.sockets.len();
    let sockets: Vec<DiagnosedSocket> = snapshot
        .sockets
        .into_iter()
        .enumerate()
        .filter(|(_, socket)| filter.matches(socket))
        .map(|(index, socket)| {
            let mut findings = Vec::new();
            findings.extend(close_wait_leak(&socket, thresholds));
            findings.extend(half_open_suspect(&socket, thresholds));
            findings.extend(retransmitting(&socket));
            findings.extend(zero_window(&socket));
            findings.extend(ghosts.get(&index).cloned());
            DiagnosedSocket { socket, findings }
        })
        .collect();
    let processes = summarize(&sockets);
    Report {
        thresholds: *thresholds,
        total_sockets,
        sockets,
        processes,
        notes: snapshot.notes,
    }
}

/// CLOSE_WAIT age: the peer's FIN carried an ACK, and TCP_INFO's
/// `last_ack_recv` counts from the last ACK received. A peer that closed may
/// still acknowledge our data after its FIN, so this is a lower bound: the socket
/// has been in CLOSE_WAIT *at least* this long (`last_data_recv` is an upper bound).
pub fn close_wait_age(socket: &Socket) -> Option<Duration> {
    (socket.state == TcpState::CloseWait)
        .then(|| socket.tcp_info.map(|info| info.last_ack_recv))
        .flatten()
}

fn close_wait_leak(socket: &Socket, thresholds: &Thresholds) -> Option<Finding> {
    let age = close_wait_age(socket)?;
    (age > thresholds.close_wait_after).then(|| Finding {
        kind: FindingKind::CloseWaitLeak,
        reason: format!(
            "in CLOSE_WAIT for at least {}: the peer closed and {} has not closed its end \
             ({} unread byte(s))",
            human_duration(age),
            holder(socket),
            socket.recv_q.saturating_sub(1),
        ),
    })
}

fn half_open_suspect(socket: &Socket, thresholds: &Thresholds) -> Option<Finding> {
    if socket.state != TcpState::Established {
        return None;
    }
    let info = socket.tcp_info?;
    let silence = info.last_recv();
    // A pending keepalive will notice a dead peer; a pending retransmission will
    // too (and is its own finding); a persist timer means the peer answers probes.
    let timer_watches = socket.timer.is_some_and(|timer| {
        matches!(
            timer.kind,
            TimerKind::Keepalive | TimerKind::Retransmit | TimerKind::Persist
        )
    });
    (!timer_watches && silence > thresholds.silent_after).then(|| Finding {
        kind: FindingKind::HalfOpenSuspect,
        reason: format!(
            "nothing received for {} and no keepalive timer: if the peer vanished, \
             nothing on this host will ever notice",
            human_duration(silence)
        ),
    })
}

fn retransmitting(socket: &Socket) -> Option<Finding> {
    if matches!(socket.state, TcpState::Listen | TcpState::TimeWait) {
        return None;
    }
    let retransmit_timer = socket
        .timer
        .filter(|timer| timer.kind == TimerKind::Retransmit);
    let timer_retries = retransmit_timer.map_or(0, |timer| timer.retries);
    let info_retries = socket.tcp_info.map_or(0, |info| info.retransmits);
    let retries = timer_retries.max(info_retries);
    if retries == 0 {
        return None;
    }
    let unacked = socket.tcp_info.map_or(0, |info| info.unacked);
    let heard = socket
        .tcp_info
        .map(|info| format!(", last ack {} ago", human_duration(info.last_ack_recv)))
        .unwrap_or_default();
    let next = retransmit_timer
        .map(|timer| format!(", next retry in {}", human_duration(timer.expires_in)))
        .unwrap_or_default();
    Some(Finding {
        kind: FindingKind::Retransmitting,
        reason: format!(
            "{retries} retransmission timeout(s) in a row with {unacked} segment(s) \
             unacknowledged{heard}{next}: the peer is likely gone"
        ),
    })
}

fn zero_window(socket: &Socket) -> Option<Finding> {
    let persist = socket
        .timer
        .filter(|timer| timer.kind == TimerKind::Persist);
    let window_closed = socket.state == TcpState::Established
        && socket.send_q > 0
        && socket.tcp_info.and_then(|info| info.snd_wnd) == Some(0);
    if persist.is_none() && !window_closed {
        return None;
    }
    let probes = persist
        .map(|timer| timer.retries)
        .or(socket.tcp_info.map(|info| info.probes))
        .unwrap_or(0);
    Some(Finding {
        kind: FindingKind::ZeroWindow,
        reason: format!(
            "the peer advertises a zero window with {} byte(s) waiting to be sent \
             ({probes} window probe(s) unanswered): the peer is alive but not reading",
            socket.send_q
        ),
    })
}

/// Groups server-side connections by (listening address, peer IP); in each group
/// of two or more, every silent socket except the live one is a ghost.
///
/// The live one is the connection heard from most recently (smallest TCP_INFO
/// receive silence). Creation order is not visible: inode numbers are handed out
/// in per-CPU batches, so they are only the tie-breaker.
fn ghost_duplicates(sockets: &[Socket], thresholds: &Thresholds) -> HashMap<usize, Finding> {
    let listeners: HashSet<SocketAddr> = sockets
        .iter()
        .filter(|socket| socket.state == TcpState::Listen)
        .map(|socket| socket.local)
        .collect();
    let wildcard_ports: HashSet<u16> = listeners
        .iter()
        .filter(|listener| listener.ip().is_unspecified())
        .map(SocketAddr::port)
        .collect();
    let is_accepted_on_listener =
        |local: &SocketAddr| listeners.contains(local) || wildcard_ports.contains(&local.port());
    let mut groups: HashMap<(SocketAddr, IpAddr), Vec<usize>> = HashMap::new();
    for (index, socket) in sockets.iter().enumerate() {
        if socket.state == TcpState::Established && is_accepted_on_listener(&socket.local) {
            groups
                .entry((socket.local, socket.peer.ip()))
                .or_default()
                .push(index);
        }
    }
    let liveness = |index: &usize| {
        let socket = &sockets[*index];
        let silence = socket
            .tcp_info
            .map_or(Duration::MAX, |info| info.last_recv());
        (std::cmp::Reverse(silence), socket.inode)
    };
    let mut ghosts = HashMap::new();
    for ((local, peer_ip), members) in groups {
        if members.len() < 2 {
            continue;
        }
        let Some(&live) = members.iter().max_by_key(|index| liveness(index)) else {
            continue;
        };
        for &index in &members {
            let socket = &sockets[index];
            let Some(silence) = socket.tcp_info.map(|info| info.last_recv()) else {
                continue;
            };
            if index == live || silence <= thresholds.silent_after {
                continue;
            }
            ghosts.insert(
                index,
                Finding {
                    kind: FindingKind::GhostDuplicate,
                    reason: format!(
                        "{} connections from {peer_ip} to {local}; this one is silent for {} \
                         while {} was heard from since: likely left behind by a reconnecting client",
                        members.len(),
                        human_duration(silence),
                        sockets[live].peer,
                    ),
                },
            );
        }
    }
    ghosts
}

fn holder(socket: &Socket) -> String {
    match socket.owners.first() {
        Some(owner) => format!("{} (pid {})", owner.comm, owner.pid),
        None => "the application".to_owned(),
    }
}

fn summarize(sockets: &[DiagnosedSocket]) -> Vec<ProcessSummary> {
    let mut by_pid: BTreeMap<u32, ProcessSummary> = BTreeMap::new();
    let mut unowned = ProcessSummary {
        pid: None,
        comm: String::new(),
        sockets: 0,
        flagged: 0,
        findings: BTreeMap::new(),
    };
    let count = |summary: &mut ProcessSummary, diagnosed: &DiagnosedSocket| {
        summary.sockets += 1;
        if !diagnosed.findings.is_empty() {
            summary.flagged += 1;
        }
        for finding in &diagnosed.findings {
            *summary.findings.entry(finding.kind).or_default() += 1;
        }
    };
    for diagnosed in sockets {
        let socket = &diagnosed.socket;
        if socket.owner_status != OwnerStatus::Found {
            count(&mut unowned, diagnosed);
            continue;
        }
        // A socket shared after fork() counts once per process, not once per fd.
        let mut seen = HashSet::new();
        for owner in &socket.owners {
            if !seen.insert(owner.pid) {
                continue;
            }
            let summary = by_pid.entry(owner.pid).or_insert_with(|| ProcessSummary {
                pid: Some(owner.pid),
                comm: owner.comm.clone(),
                sockets: 0,
                flagged: 0,
                findings: BTreeMap::new(),
            });
            count(summary, diagnosed);
        }
    }
    let mut processes: Vec<ProcessSummary> = by_pid.into_values().collect();
    if unowned.sockets > 0 {
        processes.push(unowned);
    }
    processes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KernelTimer, Owner, TcpInfo};

    fn socket(state: TcpState, local: &str, peer: &str) -> Socket {
        Socket {
            state,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            recv_q: 0,
            send_q: 0,
            uid: 0,
            inode: 100,
            cookie: 1,
            timer: None,
            tcp_info: Some(TcpInfo::default()),
            owners: vec![Owner {
                pid: 42,
                comm: "server".into(),
                fd: 3,
            }],
            owner_status: OwnerStatus::Found,
        }
    }

    fn silent_for(mut socket: Socket, silence: Duration) -> Socket {
        let info = socket.tcp_info.as_mut().unwrap();
        info.last_data_recv = silence;
        info.last_ack_recv = silence;
        socket
    }

    fn kinds(report: &Report) -> Vec<Vec<FindingKind>> {
        report
            .sockets
            .iter()
            .map(|s| s.findings.iter().map(|f| f.kind).collect())
            .collect()
    }

    fn run(sockets: Vec<Socket>) -> Report {
        let snapshot = Snapshot {
            sockets,
            ..Snapshot::default()
        };
        diagnose(snapshot, &Thresholds::default(), &Filter::default())
    }

    #[test]
    fn close_wait_is_a_leak_only_past_the_threshold() {
        let old = silent_for(
            socket(TcpState::CloseWait, "10.0.0.1:80", "10.0.0.2:5000"),
            Duration::from_secs(11),
        );
        let young = silent_for(
            socket(TcpState::CloseWait, "10.0.0.1:80", "10.0.0.2:5001"),
            Duration::from_secs(9),
        );
        let report = run(vec![old, young]);
        assert_eq!(kinds(&report), [vec![FindingKind::CloseWaitLeak], vec![]]);
        assert!(report.sockets[0].findings[0]
            .reason
            .contains("server (pid 42)"));
    }

    #[test]
    fn silence_is_half_open_only_without_keepalive() {
        let bare = silent_for(
            socket(TcpState::Established, "10.0.0.1:80", "10.0.0.2:5000"),
            Duration::from_secs(600),
        );
        let mut kept = bare.clone();
        kept.timer = Some(KernelTimer {
            kind: TimerKind::Keepalive,
            expires_in: Duration::from_secs(30),
            retries: 0,
        });
        let report = run(vec![bare, kept]);
        assert_eq!(kinds(&report), [vec![FindingKind::HalfOpenSuspect], vec![]]);
    }

    #[test]
    fn retransmissions_and_zero_window_are_flagged_with_counts() {
        let mut lost = socket(TcpState::Established, "10.0.0.1:80", "10.0.0.2:5000");
        lost.timer = Some(KernelTimer {
            kind: TimerKind::Retransmit,
            expires_in: Duration::from_millis(800),
            retries: 3,
        });
        let mut stalled = socket(TcpState::Established, "10.0.0.1:80", "10.0.0.2:5001");
        stalled.send_q = 4096;
        stalled.timer = Some(KernelTimer {
            kind: TimerKind::Persist,
            expires_in: Duration::from_millis(400),
            retries: 0,
        });
        let report = run(vec![lost, stalled]);
        assert_eq!(
            kinds(&report),
            [
                vec![FindingKind::Retransmitting],
                vec![FindingKind::ZeroWindow]
            ]
        );
        assert!(report.sockets[0].findings[0]
            .reason
            .starts_with("3 retransmission"));
    }

    #[test]
    fn older_silent_twins_from_one_peer_are_ghosts() {
        let listener = socket(TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0");
        let mut old = socket(TcpState::Established, "10.0.0.1:80", "10.0.0.2:5000");
        old.inode = 10;
        old.timer = Some(KernelTimer {
            kind: TimerKind::Keepalive,
            expires_in: Duration::from_secs(30),
            retries: 0,
        });
        let old = silent_for(old, Duration::from_secs(900));
        let mut new = silent_for(old.clone(), Duration::from_secs(1));
        new.inode = 5;
        new.peer = "10.0.0.2:5001".parse().unwrap();
        let mut other_peer = old.clone();
        other_peer.peer = "10.0.0.3:5000".parse().unwrap();
        let report = run(vec![listener, old, new, other_peer]);
        assert_eq!(
            kinds(&report),
            [vec![], vec![FindingKind::GhostDuplicate], vec![], vec![]]
        );
    }

    #[test]
    fn filter_applies_after_diagnosis_and_summary_counts_per_process() {
        let leak = silent_for(
            socket(TcpState::CloseWait, "10.0.0.1:80", "10.0.0.2:5000"),
            Duration::from_secs(60),
        );
        let mut orphan = socket(TcpState::TimeWait, "10.0.0.1:81", "10.0.0.2:5001");
        orphan.owners.clear();
        orphan.owner_status = OwnerStatus::Orphan;
        orphan.tcp_info = None;
        let snapshot = Snapshot {
            sockets: vec![leak.clone(), orphan.clone()],
            ..Snapshot::default()
        };
        let all = diagnose(snapshot.clone(), &Thresholds::default(), &Filter::default());
        assert_eq!(all.processes.len(), 2);
        assert_eq!(all.processes[0].pid, Some(42));
        assert_eq!(all.processes[0].findings[&FindingKind::CloseWaitLeak], 1);
        assert_eq!(all.processes[1].pid, None);
        let only_81 = Filter {
            port: Some(81),
            ..Filter::default()
        };
        let report = diagnose(snapshot, &Thresholds::default(), &only_81);
        assert_eq!(report.total_sockets, 2);
        assert_eq!(report.sockets.len(), 1);
        assert_eq!(report.sockets[0].socket, orphan);
    }
}
