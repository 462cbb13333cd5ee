//! The five detection set-ups the lab compares: what the server and the client are
//! told, flag by flag (the same liveness flags on both sides).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::LabError;

/// A detection set-up: one column of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setup {
    /// Nothing configured: no keepalive, no user timeout, no hangup watch, no write
    /// timeout, no sessions. What a plain socket server gets from Linux.
    OsDefaults,
    /// SO_KEEPALIVE with the system's timers (net.ipv4.tcp_keepalive_time = 7200 s,
    /// intvl 75 s, probes 9 by default), nothing else.
    KeepaliveOs,
    /// Keepalive with timers derived from D (idle D/2, interval D/10, 5 probes, whole
    /// seconds of at least 1 s), nothing else.
    KeepaliveTuned,
    /// Derived keepalive plus TCP_USER_TIMEOUT = D.
    KeepaliveUserTimeout,
    /// Everything: derived keepalive, TCP_USER_TIMEOUT, the hangup watch, the write
    /// timeout and, where the binary has them, sessions with heartbeats.
    Full,
    /// `--target`: a third-party server (not hangup's flags), watched through sock_diag.
    Target,
}

impl Setup {
    /// Every set-up, from least to most configured.
    pub const ALL: [Setup; 5] = [
        Setup::OsDefaults,
        Setup::KeepaliveOs,
        Setup::KeepaliveTuned,
        Setup::KeepaliveUserTimeout,
        Setup::Full,
    ];

    /// The stable name (`os-defaults`, `keepalive-os`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Setup::OsDefaults => "os-defaults",
            Setup::KeepaliveOs => "keepalive-os",
            Setup::KeepaliveTuned => "keepalive-tuned",
            Setup::KeepaliveUserTimeout => "keepalive+user-timeout",
            Setup::Full => "full",
            Setup::Target => "target",
        }
    }

    /// The liveness flags given to both `hangup serve` and `hangup client` (besides
    /// `--dead-after D`).
    /// ([`Setup::Target`]: none, it is not hangup.)
    pub const fn liveness_flags(self) -> &'static [&'static str] {
        match self {
            Setup::OsDefaults => &[
                "--keepalive",
                "off",
                "--user-timeout",
                "off",
                "--watch-hangup",
                "off",
                "--write-timeout",
                "off",
            ],
            Setup::KeepaliveOs => &[
                "--keepalive",
                "os",
                "--user-timeout",
                "off",
                "--watch-hangup",
                "off",
                "--write-timeout",
                "off",
            ],
            Setup::KeepaliveTuned => &[
                "--keepalive",
                "auto",
                "--user-timeout",
                "off",
                "--watch-hangup",
                "off",
                "--write-timeout",
                "off",
            ],
            Setup::KeepaliveUserTimeout => &[
                "--keepalive",
                "auto",
                "--user-timeout",
                "auto",
                "--watch-hangup",
                "off",
                "--write-timeout",
                "off",
            ],
            Setup::Full => &[
                "--keepalive",
                "auto",
                "--user-timeout",
                "auto",
                "--watch-hangup",
                "on",
                "--write-timeout",
                "auto",
            ],
            Setup::Target => &[],
        }
    }

    /// Whether the client opens a session with heartbeats (`--device`, `--heartbeat`).
    pub const fn sessions(self) -> bool {
        matches!(self, Setup::Full)
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Setup {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Setup::ALL
            .into_iter()
            .chain([Setup::Target])
            .find(|setup| setup.name() == s)
            .ok_or_else(|| LabError::UnknownName {
                kind: "set-up",
                name: s.to_owned(),
                expected: Setup::ALL.map(Setup::name).join(", "),
            })
    }
}

/// The heartbeat the `full` client proposes for dead-after D: the largest whole number
/// of seconds H with 1.5·H ≤ D, at least 1 s (the server's minimum).
pub fn heartbeat_for(dead_after: Duration) -> Duration {
    Duration::from_secs(((dead_after.as_secs_f64() / 1.5).floor() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for setup in Setup::ALL {
            assert_eq!(setup.name().parse::<Setup>().unwrap(), setup);
        }
        assert!("keepalive".parse::<Setup>().is_err());
    }

    #[test]
    fn heartbeat_keeps_one_and_a_half_beats_within_d() {
        assert_eq!(
            heartbeat_for(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_for(Duration::from_secs(30)),
            Duration::from_secs(20)
        );
        assert_eq!(
            heartbeat_for(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
