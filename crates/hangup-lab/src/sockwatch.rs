//! `hangup lab sockwatch`: watches a third-party server's connections from outside,
//! through sock_diag (`hangup_inspect::collect_sockets`), and reports them as the JSON
//! events a `hangup serve` would log, so that `--target` cells are measured the same
//! way as hangup's own.
//!
//! It runs inside the server's namespace and polls every [`POLL`]. A connection of the
//! server's port is open while its socket is ESTABLISHED or CLOSE_WAIT; it is
//! *detected* the moment it leaves those states, i.e. when the server (or its kernel)
//! acted. The cause is what the kernel tells, from the new state and the namespace's
//! SNMP counters since the connection was first seen (the lab's namespaces hold one
//! connection at a time):
//!
//! | what the socket did | counters | cause |
//! |---|---|---|
//! | → FIN_WAIT1/2, CLOSING, TIME_WAIT, LAST_ACK | | `fin_sent` (the server closed) |
//! | gone | `TCPAbortOnTimeout` | `timer` (retransmission, keepalive or user timeout) |
//! | gone | `TCPAbortOn{Data,Close,Linger,Memory}` | `rst_sent` (closed with unread data, linger 0) |
//! | gone | `EstabResets` only | `rst_received` |
//! | gone | none (it was LAST_ACK already) | `fin_sent` |
//!
//! Events: `listening` (a LISTEN socket on the port), `connection_opened {peer}`,
//! `peer_half_closed {peer}` (ESTABLISHED → CLOSE_WAIT: the peer's FIN, not an end),
//! `connection_closed {peer, cause, from, to}`; each with `ts_ns`, on stderr.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hangup_inspect::{collect_sockets, TcpState};
use serde_json::json;

use crate::error::LabError;
use crate::events::ts_ns;
use crate::netns::parse_counters;

/// How often the sockets are dumped: the resolution of every `--target` time.
pub const POLL: Duration = Duration::from_millis(2);

/// How a connection that left ESTABLISHED/CLOSE_WAIT ended, as the kernel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server closed its socket: a FIN left.
    FinSent,
    /// The server's kernel reset it (closed with unread data, or linger 0).
    RstSent,
    /// An RST from the peer ended it.
    RstReceived,
    /// A kernel timer gave up: retransmissions, keepalive probes or the user timeout.
    Timer,
}

impl CloseReason {
    /// The name in events and the report.
    pub const fn name(self) -> &'static str {
        match self {
            CloseReason::FinSent => "fin_sent",
            CloseReason::RstSent => "rst_sent",
            CloseReason::RstReceived => "rst_received",
            CloseReason::Timer => "timer",
        }
    }
}

/// Whether a socket in `state` is still an open connection for the watch.
fn is_open(state: TcpState) -> bool {
    matches!(state, TcpState::Established | TcpState::CloseWait)
}

/// The reason for a connection whose socket is now in `now` (`None`: gone from the
/// dump), given the counters' increase since the previous poll (`Group.Name` keys).
pub fn close_reason(now: Option<TcpState>, delta: &dyn Fn(&str) -> u64) -> CloseReason {
    if now.is_some() {
        return CloseReason::FinSent;
    }
    if delta("TcpExt.TCPAbortOnTimeout") > 0 {
        return CloseReason::Timer;
    }
    let aborts = [
        "TcpExt.TCPAbortOnData",
        "TcpExt.TCPAbortOnClose",
        "TcpExt.TCPAbortOnLinger",
        "TcpExt.TCPAbortOnMemory",
    ];
    if aborts.iter().any(|key| delta(key) > 0) {
        return CloseReason::RstSent;
    }
    if delta("Tcp.EstabResets") > 0 {
        return CloseReason::RstReceived;
    }
    // Left CLOSE_WAIT for LAST_ACK and was acknowledged within one poll.
    CloseReason::FinSent
}

fn read_counters() -> HashMap<String, u64> {
    let mut text = String::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        if let Ok(part) = std::fs::read_to_string(file) {
            text.push_str(&part);
        }
    }
    parse_counters(&text)
}

fn emit(event: serde_json::Value) {
    eprintln!("{event}");
}

/// Watches the connections whose local port is `port` until killed.
pub fn run_sockwatch(port: u16) -> Result<(), LabError> {
    let mut open: HashMap<(SocketAddr, SocketAddr), TcpState> = HashMap::new();
    let mut listening = false;
    // The counters when each connection was first seen: only lab connections live in
    // the namespace, one at a time, so what they count since is that connection's doing.
    let mut baseline: HashMap<(SocketAddr, SocketAddr), HashMap<String, u64>> = HashMap::new();
    loop {
        let snapshot = collect_sockets()
            .map_err(|err| LabError::io("sock_diag dump", std::io::Error::other(err)))?;
        let at = ts_ns();
        let mut after: Option<HashMap<String, u64>> = None;
        let ours: HashMap<(SocketAddr, SocketAddr), TcpState> = snapshot
            .sockets
            .iter()
            .filter(|s| s.local.port() == port)
            .map(|s| ((s.local, s.peer), s.state))
            .collect();
        if !listening && ours.values().any(|&s| s == TcpState::Listen) {
            listening = true;
            emit(json!({"event": "listening", "ts_ns": at, "port": port}));
        }
        for (&key, &state) in &ours {
            if !is_open(state) {
                continue;
            }
            match open.insert(key, state) {
                None => {
                    baseline.insert(key, read_counters());
                    emit(json!({
                        "event": "connection_opened", "ts_ns": at, "peer": key.1.to_string(),
                    }));
                }
                Some(TcpState::Established) if state == TcpState::CloseWait => emit(json!({
                    "event": "peer_half_closed", "ts_ns": at, "peer": key.1.to_string(),
                })),
                Some(_) => {}
            }
        }
        let ended: Vec<_> = open
            .iter()
            .filter(|(key, _)| !ours.get(key).is_some_and(|&s| is_open(s)))
            .map(|(&key, &from)| (key, from))
            .collect();
        for (key, from) in ended {
            open.remove(&key);
            let to = ours.get(&key).copied();
            let now = after.get_or_insert_with(read_counters);
            let then = baseline.remove(&key).unwrap_or_default();
            let delta = |key: &str| {
                now.get(key)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(then.get(key).copied().unwrap_or(0))
            };
            let reason = close_reason(to, &delta);
            emit(json!({
                "event": "connection_closed",
                "ts_ns": at,
                "peer": key.1.to_string(),
                "cause": reason.name(),
                "from": from.name(),
                "to": to.map_or("gone", TcpState::name),
            }));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas(increased: &'static [&'static str]) -> impl Fn(&str) -> u64 {
        move |key| u64::from(increased.contains(&key))
    }

    #[test]
    fn the_new_state_or_the_counters_name_the_reason() {
        let none = deltas(&[]);
        assert_eq!(
            close_reason(Some(TcpState::FinWait1), &none),
            CloseReason::FinSent
        );
        assert_eq!(
            close_reason(Some(TcpState::LastAck), &none),
            CloseReason::FinSent
        );
        assert_eq!(close_reason(None, &none), CloseReason::FinSent);
        let timer = deltas(&["TcpExt.TCPAbortOnTimeout", "Tcp.EstabResets"]);
        assert_eq!(close_reason(None, &timer), CloseReason::Timer);
        let unread = deltas(&["TcpExt.TCPAbortOnClose", "Tcp.EstabResets"]);
        assert_eq!(close_reason(None, &unread), CloseReason::RstSent);
        let reset = deltas(&["Tcp.EstabResets"]);
        assert_eq!(close_reason(None, &reset), CloseReason::RstReceived);
    }
}
