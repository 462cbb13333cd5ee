//! Why a connection ended: one vocabulary for the library, server, client, lab and metrics.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a connection (or the work done for it) ended.
///
/// The string forms (`peer_closed`, `peer_reset`, …) appear in events, metrics and the
/// presence store, and are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// The peer sent FIN and is confirmed not to be reading any more.
    PeerClosed,
    /// The peer reset the connection (RST, `ECONNRESET`, `EPIPE`).
    PeerReset,
    /// The kernel gave up (`ETIMEDOUT`): keepalive probes or TCP_USER_TIMEOUT expired.
    Timeout,
    /// The peer cannot be reached (`EHOSTUNREACH`, `ENETUNREACH`).
    Unreachable,
    /// The peer sent no heartbeat within its dead-after window.
    HeartbeatMissed,
    /// The connection stayed idle for longer than allowed.
    ///
    /// Part of the shared vocabulary (SPEC §1), but nothing produces it today: the
    /// server has no idle timeout, and an idle connection without a session is closed
    /// by keepalive or TCP_USER_TIMEOUT, as [`Cause::Timeout`].
    Idle,
    /// The peer is alive but accepted none of our bytes for the write timeout.
    Stalled,
    /// A newer connection for the same device took over the session.
    Takeover,
    /// The server shut down.
    Shutdown,
    /// The peer broke the protocol badly enough that the connection was closed.
    ProtocolError,
    /// We closed on purpose (for example after `BYE`, or a job the client cancelled).
    Local,
    /// The cluster node that held the session died or lost the shared store (SPEC §11):
    /// its lease expired, and another node recorded the session's end.
    ServerLost,
}

impl Cause {
    /// Every cause, in declaration order.
    pub const ALL: [Cause; 12] = [
        Cause::PeerClosed,
        Cause::PeerReset,
        Cause::Timeout,
        Cause::Unreachable,
        Cause::HeartbeatMissed,
        Cause::Idle,
        Cause::Stalled,
        Cause::Takeover,
        Cause::Shutdown,
        Cause::ProtocolError,
        Cause::Local,
        Cause::ServerLost,
    ];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::PeerClosed => "peer_closed",
            Cause::PeerReset => "peer_reset",
            Cause::Timeout => "timeout",
            Cause::Unreachable => "unreachable",
            Cause::HeartbeatMissed => "heartbeat_missed",
            Cause::Idle => "idle",
            Cause::Stalled => "stalled",
            Cause::Takeover => "takeover",
            Cause::Shutdown => "shutdown",
            Cause::ProtocolError => "protocol_error",
            Cause::Local => "local",
            Cause::ServerLost => "server_lost",
        }
    }

    /// Classifies a socket error into the cause it reveals about the peer.
    ///
    /// `ECONNRESET`, `EPIPE` and `ECONNABORTED` mean the peer reset; `ETIMEDOUT` that the
    /// kernel gave up on it; `EHOSTUNREACH`/`ENETUNREACH` that it cannot be reached.
    /// Anything else is reported as [`Cause::PeerReset`], the closest honest reading of
    /// "the socket is unusable because of the other end".
    pub fn from_io_error(err: &io::Error) -> Cause {
        match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Cause::PeerReset,
            io::ErrorKind::TimedOut => Cause::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Cause::Unreachable
            }
            _ => Cause::PeerReset,
        }
    }
}

/// What a socket's readiness says about its peer — the one rule the library's watch,
/// the server and the client share.
///
/// `error` is EPOLLERR (or EPOLLHUP: nothing can be sent or received any more),
/// `read_closed` is EPOLLRDHUP (the peer's FIN), and `pending_error` is what `SO_ERROR`
/// held. A pending error decides (RST, timeout, unreachable); an error condition whose
/// errno someone else already took is a reset; a FIN alone is [`Cause::PeerClosed`].
/// `None`: the peer is still there.
///
/// ```
/// use std::io;
/// use hangup_core::{classify_readiness, Cause};
///
/// assert_eq!(classify_readiness(false, true, None), Some(Cause::PeerClosed));
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// assert_eq!(classify_readiness(true, true, Some(&reset)), Some(Cause::PeerReset));
/// let timeout = io::Error::from(io::ErrorKind::TimedOut);
/// assert_eq!(classify_readiness(true, false, Some(&timeout)), Some(Cause::Timeout));
/// assert_eq!(classify_readiness(false, false, None), None);
/// ```
pub fn classify_readiness(
    error: bool,
    read_closed: bool,
    pending_error: Option<&io::Error>,
) -> Option<Cause> {
    match pending_error {
        Some(err) => Some(Cause::from_io_error(err)),
        None if error => Some(Cause::PeerReset),
        None if read_closed => Some(Cause::PeerClosed),
        None => None,
    }
}

/// `TCP_CLOSE` in `include/net/tcp_states.h`.
pub const TCP_STATE_CLOSE: u8 = 7;
/// `TCP_CLOSE_WAIT` in `include/net/tcp_states.h`.
pub const TCP_STATE_CLOSE_WAIT: u8 = 8;

/// What an ended connection's TCP state (`tcpi_state`) says about how its peer left,
/// when the errno that would have told is gone (another reader of the socket took it).
///
/// CLOSE_WAIT: the peer's FIN arrived and we have not closed: [`Cause::PeerClosed`].
/// CLOSE: the connection is over in both directions; if we never sent a FIN
/// (`sent_fin`), only an RST (or a kernel abort, whose errno would have said so) gets a
/// socket there: [`Cause::PeerReset`]; after our FIN it is the orderly end of a
/// two-way close: [`Cause::PeerClosed`]. Any other state: `None`, the state does not
/// tell.
///
/// ```
/// use hangup_core::{classify_ended_state, Cause, TCP_STATE_CLOSE, TCP_STATE_CLOSE_WAIT};
///
/// assert_eq!(classify_ended_state(TCP_STATE_CLOSE_WAIT, false), Some(Cause::PeerClosed));
/// assert_eq!(classify_ended_state(TCP_STATE_CLOSE, false), Some(Cause::PeerReset));
/// assert_eq!(classify_ended_state(TCP_STATE_CLOSE, true), Some(Cause::PeerClosed));
/// assert_eq!(classify_ended_state(1, false), None); // ESTABLISHED
/// ```
pub fn classify_ended_state(tcp_state: u8, sent_fin: bool) -> Option<Cause> {
    match tcp_state {
        TCP_STATE_CLOSE_WAIT => Some(Cause::PeerClosed),
        TCP_STATE_CLOSE if sent_fin => Some(Cause::PeerClosed),
        TCP_STATE_CLOSE => Some(Cause::PeerReset),
        _ => None,
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no [`Cause`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cause `{0}`")]
pub struct UnknownCause(pub String);

impl FromStr for Cause {
    type Err = UnknownCause;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cause::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCause(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for cause in Cause::ALL {
            assert_eq!(cause.as_str().parse::<Cause>(), Ok(cause));
            // serde's snake_case renaming must agree with `as_str`.
            let json = serde_json::to_string(&cause).unwrap();
            assert_eq!(json, format!("\"{}\"", cause.as_str()));
        }
        assert!("nope".parse::<Cause>().is_err());
    }

    #[test]
    fn errors_classify() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Cause::from_io_error(&reset), Cause::PeerReset);
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(Cause::from_io_error(&pipe), Cause::PeerReset);
        let timeout = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(Cause::from_io_error(&timeout), Cause::Timeout);
        let unreachable = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(Cause::from_io_error(&unreachable), Cause::Unreachable);
    }
}
