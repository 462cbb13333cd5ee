//! Platform code: TCP_INFO, and the hangup-only epoll registration of the watch.
//!
//! Linux is the supported platform; elsewhere the same functions exist and return
//! `ErrorKind::Unsupported`, so the rest of the crate compiles unchanged.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::tcp_info;
#[cfg(target_os = "linux")]
pub(crate) use linux::{send_nonblocking, HangupRegistration};

#[cfg(not(target_os = "linux"))]
mod fallback;
#[cfg(not(target_os = "linux"))]
pub use fallback::tcp_info;
#[cfg(not(target_os = "linux"))]
pub(crate) use fallback::{send_nonblocking, HangupRegistration};

use std::time::Duration;

/// The parts of the kernel's `struct tcp_info` that tell whether a peer is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// TCP state number (1 = ESTABLISHED … 8 = CLOSE_WAIT, as in `include/net/tcp_states.h`).
    pub state: u8,
    /// Consecutive retransmissions of the oldest unacknowledged segment.
    pub retransmits: u8,
    /// Unanswered zero-window or keepalive probes.
    pub probes: u8,
    /// Exponential backoff of the retransmission timer.
    pub backoff: u8,
    /// Current retransmission timeout.
    pub rto: Duration,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Round-trip time variance.
    pub rtt_var: Duration,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Time since we last sent data.
    pub last_data_sent: Duration,
    /// Time since we last received data.
    pub last_data_recv: Duration,
    /// Time since we last received an ACK.
    pub last_ack_recv: Duration,
    /// Congestion window, in segments.
    pub snd_cwnd: u32,
}

/// The hangup conditions a `HangupRegistration` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HangupEvents {
    /// EPOLLRDHUP: the peer sent FIN.
    pub read_closed: bool,
    /// EPOLLERR or EPOLLHUP: a pending socket error, or nothing can flow any more.
    pub error: bool,
}
