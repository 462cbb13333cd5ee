//! The scenarios of SPEC §7: which fault, who should notice, and what the full policy
//! must achieve. The fault injection itself is in `run.rs`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::LabError;
use crate::netns::Side;

/// One way a peer can die (a row of the matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// The client is SIGKILLed while its job runs: its kernel sends FIN.
    ClientExit,
    /// The same with replies unread in the client's socket: its kernel sends RST.
    ClientExitUnread,
    /// The client shuts down its write side after `JOB` and keeps reading.
    ClientHalfClose,
    /// The client's link goes down, then the client is killed: nothing leaves.
    ClientCrashIdle,
    /// The same while the server streams a large reply (data unacknowledged).
    ClientCrashSending,
    /// The same while the client streams a large request (the server only receives).
    ClientCrashUploading,
    /// The client's link goes down for D/2, then up again.
    ClientCableFlap,
    /// Link down, kill, and the client's host comes back without any socket.
    ClientReboot,
    /// A crashed client leaves a ghost; the same device connects again.
    ClientReconnect,
    /// Behind a router, the client's link goes down and the router answers for it with
    /// ICMP host unreachable; the client is killed.
    ClientUnreachable,
    /// The same while the server streams a large reply (data unacknowledged).
    ClientUnreachableSending,
    /// The client stops reading (SIGSTOP) during a large reply.
    ClientStalled,
    /// The server is SIGKILLed while the client idles at its prompt.
    ServerExit,
    /// The server's link goes down, then the server is killed.
    ServerCrash,
    /// Behind a router, the server's link goes down and the router answers for it with
    /// ICMP host unreachable; the server is killed.
    ServerUnreachable,
    /// The server crashes, its host comes back with a fresh server.
    ServerReboot,
    /// The server gets SIGTERM with a job in flight.
    ServerShutdown,
}

/// How fast the full policy must notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// At once: within 5 ms (SPEC), the time a FIN or RST takes to arrive.
    Instant,
    /// Within the budget, 1.1·D.
    Budget,
    /// Within one heartbeat H (the client's next segment), with the allowance every
    /// timed budget gets, 1.1·H; 1.1·D without sessions. The fault comes after the
    /// client's last exchange, so its next heartbeat is due less than H after the
    /// fault and the reset one round trip later: a bound of H exactly left the
    /// distance between the two (about 20 ms in the lab) to cover every stall of a
    /// shared host.
    Heartbeat,
    /// Within the cap (for outcomes that are checked rather than timed).
    Cap,
}

/// The SPEC's bound for [`Bound::Instant`].
pub const INSTANT: Duration = Duration::from_millis(5);

impl Bound {
    /// The bound in time, given D, the heartbeat in force (if sessions run) and the cap.
    pub fn limit(
        self,
        dead_after: Duration,
        heartbeat: Option<Duration>,
        cap: Duration,
    ) -> Duration {
        match self {
            Bound::Instant => INSTANT,
            Bound::Budget => dead_after.mul_f64(1.1),
            Bound::Heartbeat => heartbeat.unwrap_or(dead_after).mul_f64(1.1),
            Bound::Cap => cap,
        }
    }
}

/// What the full policy must show in a scenario (SPEC §7, last column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// Whether the connection (or its job) must survive rather than be declared dead.
    pub survives: bool,
    /// Causes accepted for the detection (empty: any).
    pub causes: &'static [&'static str],
    /// How fast.
    pub bound: Bound,
    /// The SPEC's words.
    pub spec: &'static str,
}

impl Scenario {
    /// Every scenario, in SPEC order.
    pub const ALL: [Scenario; 17] = [
        Scenario::ClientExit,
        Scenario::ClientExitUnread,
        Scenario::ClientHalfClose,
        Scenario::ClientCrashIdle,
        Scenario::ClientCrashSending,
        Scenario::ClientCrashUploading,
        Scenario::ClientCableFlap,
        Scenario::ClientReboot,
        Scenario::ClientReconnect,
        Scenario::ClientUnreachable,
        Scenario::ClientUnreachableSending,
        Scenario::ClientStalled,
        Scenario::ServerExit,
        Scenario::ServerCrash,
        Scenario::ServerUnreachable,
        Scenario::ServerReboot,
        Scenario::ServerShutdown,
    ];

    /// The scenarios `--target` runs: those where the server watches and a raw-socket
    /// peer can make the fault (no sessions, so no client-reconnect).
    pub const TARGET: [Scenario; 11] = [
        Scenario::ClientExit,
        Scenario::ClientExitUnread,
        Scenario::ClientHalfClose,
        Scenario::ClientCrashIdle,
        Scenario::ClientCrashSending,
        Scenario::ClientCrashUploading,
        Scenario::ClientCableFlap,
        Scenario::ClientReboot,
        Scenario::ClientUnreachable,
        Scenario::ClientUnreachableSending,
        Scenario::ClientStalled,
    ];

    /// The stable name (`client-exit`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Scenario::ClientExit => "client-exit",
            Scenario::ClientExitUnread => "client-exit-unread",
            Scenario::ClientHalfClose => "client-half-close",
            Scenario::ClientCrashIdle => "client-crash-idle",
            Scenario::ClientCrashSending => "client-crash-sending",
            Scenario::ClientCrashUploading => "client-crash-uploading",
            Scenario::ClientCableFlap => "client-cable-flap",
            Scenario::ClientReboot => "client-reboot",
            Scenario::ClientReconnect => "client-reconnect",
            Scenario::ClientUnreachable => "client-unreachable",
            Scenario::ClientUnreachableSending => "client-unreachable-sending",
            Scenario::ClientStalled => "client-stalled",
            Scenario::ServerExit => "server-exit",
            Scenario::ServerCrash => "server-crash",
            Scenario::ServerUnreachable => "server-unreachable",
            Scenario::ServerReboot => "server-reboot",
            Scenario::ServerShutdown => "server-shutdown",
        }
    }

    /// The fault, in words.
    pub const fn fault(self) -> &'static str {
        match self {
            Scenario::ClientExit => "real client SIGKILLed during a job (FIN)",
            Scenario::ClientExitUnread => {
                "raw peer SIGKILLed during a job with replies unread in its socket (RST)"
            }
            Scenario::ClientHalfClose => {
                "real client's stdin ends after JOB: shutdown(SHUT_WR), keeps reading"
            }
            Scenario::ClientCrashIdle => "client link down, then client SIGKILLed (no FIN leaves)",
            Scenario::ClientCrashSending => {
                "raw peer's link down while the server streams replies, peer SIGKILLed"
            }
            Scenario::ClientCrashUploading => {
                "raw peer's link down while it streams a large request, peer SIGKILLed"
            }
            Scenario::ClientUnreachable => {
                "client link down behind a router that answers ICMP host unreachable, client SIGKILLed"
            }
            Scenario::ClientUnreachableSending => {
                "raw peer's link down behind a router that answers ICMP host unreachable while the server streams replies, peer SIGKILLed"
            }
            Scenario::ServerUnreachable => {
                "server link down behind a router that answers ICMP host unreachable, server SIGKILLed"
            }
            Scenario::ClientCableFlap => "client link down for D/2, then up",
            Scenario::ClientReboot => {
                "client link down, client SIGKILLed, its host back with no socket"
            }
            Scenario::ClientReconnect => {
                "client crash and reboot (a ghost stays), then the same device connects again"
            }
            Scenario::ClientStalled => "raw peer SIGSTOPped while the server streams replies",
            Scenario::ServerExit => "server SIGKILLed, client idle at its prompt (FIN)",
            Scenario::ServerCrash => "server link down, then server SIGKILLed",
            Scenario::ServerReboot => {
                "server link down, server SIGKILLed, its host back with a fresh server"
            }
            Scenario::ServerShutdown => "server SIGTERMed with a job in flight",
        }
    }

    /// Which side must notice.
    pub const fn watcher(self) -> Side {
        match self {
            Scenario::ServerExit
            | Scenario::ServerCrash
            | Scenario::ServerUnreachable
            | Scenario::ServerReboot
            | Scenario::ServerShutdown => Side::Client,
            _ => Side::Server,
        }
    }

    /// Whether the cell needs the routed topology (a router that can answer with ICMP).
    pub const fn routed(self) -> bool {
        matches!(
            self,
            Scenario::ClientUnreachable
                | Scenario::ClientUnreachableSending
                | Scenario::ServerUnreachable
        )
    }

    /// What the full policy must achieve.
    pub const fn expectation(self) -> Expectation {
        let (survives, causes, bound, spec): (bool, &'static [&'static str], Bound, &str) =
            match self {
                Scenario::ClientExit => (
                    false,
                    &["peer_closed"],
                    Bound::Instant,
                    "server peer_closed, job cancelled, ≤ 5 ms",
                ),
                Scenario::ClientExitUnread => {
                    (false, &["peer_reset"], Bound::Instant, "peer_reset, ≤ 5 ms")
                }
                Scenario::ClientHalfClose => (true, &[], Bound::Cap, "no cancel; DONE delivered"),
                Scenario::ClientCrashIdle => (
                    false,
                    &["timeout", "heartbeat_missed"],
                    Bound::Budget,
                    "server detects ≤ 1.1·D",
                ),
                Scenario::ClientCrashSending => {
                    (false, &["timeout"], Bound::Budget, "timeout ≤ 1.1·D")
                }
                Scenario::ClientCrashUploading => (
                    false,
                    &["timeout", "heartbeat_missed"],
                    Bound::Budget,
                    "server detects ≤ 1.1·D",
                ),
                // `heartbeat_missed`: the session's verdict (1.5·H) comes before the
                // kernel's, which keeps an ICMP host unreachable as a soft error until
                // its own timer gives up (LAB.md, "ICMP").
                Scenario::ClientUnreachable => (
                    false,
                    &["unreachable", "heartbeat_missed"],
                    Bound::Budget,
                    "server detects ≤ 1.1·D",
                ),
                // No session (a raw peer), data in flight: `timeout` from the server's
                // acknowledgement watch (nothing acknowledged for the user timeout
                // since its last write) or its write-stall timer (the peer's window was
                // shut at the cut: Linux drops the ICMP for a zero-window probe as out
                // of window); `unreachable` if the kernel's own user timeout, which
                // counts from its first retransmission, comes first (LAB.md, "ICMP").
                Scenario::ClientUnreachableSending => (
                    false,
                    &["unreachable", "timeout"],
                    Bound::Budget,
                    "unreachable (or timeout) ≤ 1.1·D",
                ),
                Scenario::ServerUnreachable => (
                    false,
                    &["unreachable", "heartbeat_missed"],
                    Bound::Budget,
                    "client detects ≤ 1.1·D",
                ),
                Scenario::ClientCableFlap => {
                    (true, &[], Bound::Cap, "no false positive; connection lives")
                }
                Scenario::ClientReboot => (
                    false,
                    &["peer_reset"],
                    Bound::Budget,
                    "peer_reset on next segment",
                ),
                Scenario::ClientReconnect => (
                    false,
                    &["takeover"],
                    Bound::Instant,
                    "takeover ≤ 5 ms, 0 ghosts",
                ),
                Scenario::ClientStalled => (false, &["stalled"], Bound::Budget, "stalled ≤ 1.1·D"),
                Scenario::ServerExit => (
                    false,
                    &["peer_closed"],
                    Bound::Instant,
                    "client peer_closed ≤ 5 ms",
                ),
                Scenario::ServerCrash => (
                    false,
                    &["timeout", "heartbeat_missed"],
                    Bound::Budget,
                    "client detects ≤ 1.1·D",
                ),
                Scenario::ServerReboot => (
                    false,
                    &["peer_reset"],
                    Bound::Heartbeat,
                    "client peer_reset ≤ 1.1·H",
                ),
                Scenario::ServerShutdown => (
                    false,
                    &[],
                    Bound::Cap,
                    "client gets GOAWAY and DONE, reconnects",
                ),
            };
        Expectation {
            survives,
            causes,
            bound,
            spec,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == s)
            .ok_or_else(|| LabError::UnknownName {
                kind: "scenario",
                name: s.to_owned(),
                expected: Scenario::ALL.map(Scenario::name).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse::<Scenario>().unwrap(), scenario);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Scenario::ALL.len());
        let err = "client-crash".parse::<Scenario>().unwrap_err().to_string();
        assert!(err.contains("client-crash-idle"), "{err}");
    }

    #[test]
    fn bounds() {
        let d = Duration::from_secs(2);
        let cap = Duration::from_secs(11);
        assert_eq!(
            Bound::Budget.limit(d, None, cap),
            Duration::from_millis(2200)
        );
        assert_eq!(
            Bound::Heartbeat.limit(d, Some(Duration::from_secs(1)), cap),
            Duration::from_millis(1100)
        );
        assert_eq!(
            Bound::Heartbeat.limit(d, None, cap),
            Duration::from_millis(2200)
        );
        assert_eq!(Bound::Instant.limit(d, None, cap), INSTANT);
    }
}
