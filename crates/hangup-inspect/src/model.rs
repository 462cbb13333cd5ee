//! What one sock_diag dump tells about the host's TCP sockets.
//!
//! These are plain values: the collector in `sys/` fills them, [`crate::diagnose`]
//! reads them. Durations the kernel reports relative to "now" (timer expiry, last
//! data sent or received) stay relative, so nothing here depends on a clock.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::error::InspectError;

/// A TCP state as the kernel names it (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpState {
    /// Connection open, data may flow both ways.
    Established,
    /// Active open: SYN sent, waiting for SYN-ACK.
    SynSent,
    /// Passive open: SYN received, SYN-ACK sent, waiting for the final ACK.
    SynRecv,
    /// We closed, our FIN is not acknowledged yet.
    #[serde(rename = "fin-wait-1")]
    FinWait1,
    /// We closed and our FIN is acknowledged; waiting for the peer's FIN.
    #[serde(rename = "fin-wait-2")]
    FinWait2,
    /// Both sides closed; lingering to absorb late segments.
    TimeWait,
    /// Not connected (a bound or freshly created socket).
    Close,
    /// The peer closed; waiting for the local application to close too.
    CloseWait,
    /// The peer closed, then we closed; waiting for the ACK of our FIN.
    LastAck,
    /// Accepting connections.
    Listen,
    /// Both sides closed at the same time.
    Closing,
}

impl TcpState {
    /// Every state, in the kernel's numbering order.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// The state for the kernel's `TCP_*` number (1 = `TCP_ESTABLISHED` ... 11 = `TCP_CLOSING`).
    pub fn from_kernel(value: u8) -> Option<TcpState> {
        let index = usize::from(value).checked_sub(1)?;
        TcpState::ALL.get(index).copied()
    }

    /// The lower-case name used by `--state` and the JSON output, e.g. `close-wait`.
    /// (The serde names are the same; a unit test holds them together.)
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn-sent",
            TcpState::SynRecv => "syn-recv",
            TcpState::FinWait1 => "fin-wait-1",
            TcpState::FinWait2 => "fin-wait-2",
            TcpState::TimeWait => "time-wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close-wait",
            TcpState::LastAck => "last-ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
        }
    }

    /// The upper-case label `ss` prints in its State column, e.g. `ESTAB`, `CLOSE-WAIT`.
    pub fn ss_label(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// Parses a state name as `--state` accepts it: case-insensitive, `-` or `_`
    /// as separator, and the `ss` labels (`estab`, `unconn`) as aliases.
    ///
    /// # Errors
    /// [`InspectError::UnknownState`] listing the valid names.
    pub fn parse(given: &str) -> Result<TcpState, InspectError> {
        let normalized = given.trim().to_ascii_lowercase().replace('_', "-");
        let alias = match normalized.as_str() {
            "estab" => Some(TcpState::Established),
            "unconn" | "closed" => Some(TcpState::Close),
            "fin-wait1" => Some(TcpState::FinWait1),
            "fin-wait2" => Some(TcpState::FinWait2),
            "syn-received" => Some(TcpState::SynRecv),
            _ => None,
        };
        alias
            .or_else(|| {
                TcpState::ALL
                    .into_iter()
                    .find(|state| state.name() == normalized)
            })
            .ok_or_else(|| InspectError::UnknownState {
                given: given.to_owned(),
                valid: TcpState::ALL.map(TcpState::name).join(", "),
            })
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which kernel timer is pending on a socket (`idiag_timer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerKind {
    /// Retransmission timer (also tail-loss probe and reordering timeout); `ss` calls it `on`.
    Retransmit,
    /// `sk_timer`: keepalive on open sockets, the FIN_WAIT2 timeout on closing ones.
    Keepalive,
    /// TIME_WAIT (or orphaned FIN_WAIT2) lifetime.
    TimeWait,
    /// Zero-window probe timer: the peer advertises no room; `ss` calls it `persist`.
    Persist,
}

impl TimerKind {
    /// The name `ss -o` prints: `on`, `keepalive`, `timewait`, `persist`.
    pub fn ss_name(self) -> &'static str {
        match self {
            TimerKind::Retransmit => "on",
            TimerKind::Keepalive => "keepalive",
            TimerKind::TimeWait => "timewait",
            TimerKind::Persist => "persist",
        }
    }
}

/// A pending kernel timer with the time left and its retry counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelTimer {
    /// Which timer.
    pub kind: TimerKind,
    /// Time until it fires (`idiag_expires`, millisecond resolution).
    pub expires_in: Duration,
    /// `idiag_retrans`: retransmissions for the retransmit timer, unanswered
    /// probes (`icsk_probes_out`) for keepalive and persist, 0 for TIME_WAIT.
    pub retries: u8,
}

/// The subset of `struct tcp_info` (INET_DIAG_INFO) that the inspector reads.
///
/// Fields the running kernel does not report (older kernels send a shorter
/// struct) are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// `tcpi_retransmits`: consecutive retransmission timeouts without progress.
    pub retransmits: u8,
    /// `tcpi_probes`: unanswered keepalive or zero-window probes.
    pub probes: u8,
    /// `tcpi_backoff`: exponential backoff shift of the retransmission timer.
    pub backoff: u8,
    /// `tcpi_rto`: retransmission timeout.
    pub rto: Duration,
    /// `tcpi_unacked`: segments sent and not yet acknowledged.
    pub unacked: u32,
    /// `tcpi_lost`: segments considered lost.
    pub lost: u32,
    /// `tcpi_retrans`: retransmitted segments still in flight.
    pub retrans: u32,
    /// `tcpi_last_data_sent`: time since the last data segment was sent.
    pub last_data_sent: Duration,
    /// `tcpi_last_data_recv`: time since the last data segment was received
    /// (since the connection opened if no data ever came).
    pub last_data_recv: Duration,
    /// `tcpi_last_ack_recv`: time since the last acceptable ACK arrived. Every
    /// segment a live peer sends carries one, FIN included.
    pub last_ack_recv: Duration,
    /// `tcpi_rtt`: smoothed round-trip time.
    pub rtt: Duration,
    /// `tcpi_rttvar`: round-trip time variation.
    pub rttvar: Duration,
    /// `tcpi_total_retrans`: retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// `tcpi_bytes_acked`: bytes sent and acknowledged (kernel 4.1+).
    pub bytes_acked: Option<u64>,
    /// `tcpi_bytes_received`: bytes received (kernel 4.1+).
    pub bytes_received: Option<u64>,
    /// `tcpi_notsent_bytes`: bytes queued and not sent yet (kernel 4.6+).
    pub notsent_bytes: Option<u32>,
    /// `tcpi_snd_wnd`: the peer's advertised receive window, scaled (kernel 5.4+).
    pub snd_wnd: Option<u32>,
}

impl TcpInfo {
    /// Time since anything at all (data or ACK) was received from the peer.
    pub fn last_recv(&self) -> Duration {
        self.last_data_recv.min(self.last_ack_recv)
    }
}

/// A process holding a socket, found through `/proc/PID/fd` -> `socket:[INODE]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Process name from `/proc/PID/comm` (at most 15 bytes).
    pub comm: String,
    /// The file descriptor number in that process.
    pub fd: u32,
}

/// Whether the owner of a socket is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnerStatus {
    /// At least one owning process was found.
    Found,
    /// No process can hold it: inode 0 (TIME_WAIT, orphaned after `close()`, or
    /// still in a listener's accept queue).
    Orphan,
    /// It has an inode but no readable `/proc/PID/fd` links to it; usually
    /// another user's process seen without root.
    Unknown,
}

/// One TCP socket as the kernel reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Socket {
    /// TCP state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Peer address and port (unspecified with port 0 for listeners).
    pub peer: SocketAddr,
    /// `idiag_rqueue`: listeners: pending connections; others: bytes received and
    /// not read by the application (FIN counts as one).
    pub recv_q: u32,
    /// `idiag_wqueue`: listeners: backlog; others: bytes not yet acknowledged by the peer.
    pub send_q: u32,
    /// Owner uid of the socket.
    pub uid: u32,
    /// Socket inode, 0 when no file refers to it.
    pub inode: u32,
    /// Kernel socket cookie, unique while the socket lives.
    pub cookie: u64,
    /// The pending kernel timer, if any.
    pub timer: Option<KernelTimer>,
    /// TCP_INFO; absent for TIME_WAIT and SYN_RECV mini-sockets.
    pub tcp_info: Option<TcpInfo>,
    /// Processes holding the socket, sorted by pid.
    pub owners: Vec<Owner>,
    /// Whether `owners` is complete.
    pub owner_status: OwnerStatus,
}

/// Everything one collection pass saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// All TCP sockets, IPv4 then IPv6, in kernel order.
    pub sockets: Vec<Socket>,
    /// Processes whose `/proc/PID/fd` could not be read (not ours, without root).
    pub unreadable_pids: Vec<u32>,
    /// Things the kernel or `/proc` did not let us see, one sentence each.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_the_state_names_and_parse_back() {
        for state in TcpState::ALL {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.name());
            assert_eq!(TcpState::parse(state.name()).unwrap(), state);
            assert_eq!(TcpState::parse(state.ss_label()).unwrap(), state);
        }
    }
}
