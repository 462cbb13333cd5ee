//! The liveness policy: every timer derived from one budget, dead-after D (SPEC §2).
//!
//! | mechanism | derived value | catches |
//! |---|---|---|
//! | hangup watch (EPOLLRDHUP/EPOLLERR) | always on | FIN and RST as they arrive |
//! | TCP keepalive | idle D/2, interval D/10, 5 probes | an idle peer that died silently |
//! | TCP_USER_TIMEOUT | D − min(D/8, 250 ms) | a peer that died while our data is unacknowledged |
//! | acknowledgement watch | the user timeout, from our last write | the same, where the kernel counts late (from its first retransmission) |
//! | write timeout | D − 2·min(D/8, 250 ms) | a live peer that stopped reading (`stalled`) |
//! | partial-line timeout | D | a peer that never finishes its line |
//!
//! Every value can be overridden; `None` means off. [`LivenessSettings`] is what a user
//! configures (each value `auto`, `off` or explicit); [`LivenessSettings::resolve`] turns
//! it into the [`LivenessPolicy`] a connection runs. The defaults of every setting live
//! here, and nowhere else.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::duration::{format_duration, parse_duration};

/// How many keepalive probes the derivation sends before giving up.
pub const DERIVED_KEEPALIVE_PROBES: u32 = 5;

/// The dead-after budget D when none is given (SPEC §2: the server's default).
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(30);

/// Kernel keepalive timers, as TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT.
///
/// Linux counts the two durations in whole seconds (1 to 32767); values are kept in
/// that form so that what is configured is exactly what the kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveTimers {
    /// Idle time before the first probe (TCP_KEEPIDLE).
    pub idle: Duration,
    /// Time between unanswered probes (TCP_KEEPINTVL).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub count: u32,
}

impl KeepaliveTimers {
    /// Keepalive derived from D: idle D/2 and interval D/10, each rounded down to whole
    /// seconds but at least 1 s (the kernel's unit), and 5 probes.
    ///
    /// For D below 10 s the 1 s floor makes keepalive alone slower than D; the derived
    /// TCP_USER_TIMEOUT (= D) then bounds it, because Linux aborts a probing connection
    /// once the user timeout has passed since the peer was last heard.
    pub fn derive(dead_after: Duration) -> Self {
        let whole_seconds = |d: Duration| Duration::from_secs(d.as_secs().clamp(1, 32_767));
        Self {
            idle: whole_seconds(dead_after / 2),
            interval: whole_seconds(dead_after / 10),
            count: DERIVED_KEEPALIVE_PROBES,
        }
    }

    /// Worst-case time from the peer's last sign of life to the kernel giving up.
    pub fn worst_case(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

/// Keepalive as configured: derived, left to the OS, off, or explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepaliveSetting {
    /// Derive the timers from D.
    #[default]
    Auto,
    /// Turn SO_KEEPALIVE on with the system's timers (net.ipv4.tcp_keepalive_*).
    Os,
    /// No keepalive.
    Off,
    /// Explicit timers.
    Explicit(KeepaliveTimers),
}

/// Keepalive as applied to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// SO_KEEPALIVE off.
    Off,
    /// SO_KEEPALIVE on with the system's timers.
    Os,
    /// SO_KEEPALIVE on with these timers.
    Tuned(KeepaliveTimers),
}

/// The error for a policy value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A keepalive setting that is none of the accepted forms.
    #[error("invalid keepalive `{0}`: expected `auto`, `os`, `off` or `IDLE,INTERVAL,COUNT` (e.g. `15s,3s,5`)")]
    Keepalive(String),
    /// A keepalive timer outside what the kernel accepts.
    #[error("invalid keepalive `{0}`: idle and interval must be whole seconds from 1s to 32767s, count from 1 to 127")]
    KeepaliveRange(String),
    /// A user-timeout setting that is none of the accepted forms, or zero (which the
    /// kernel would read as "the system default").
    #[error("invalid user timeout `{0}`: expected `auto`, `off` or a duration such as `30s`")]
    UserTimeout(String),
    /// A derived-or-explicit duration that is none of `auto`, `off` or a duration.
    #[error("expected `auto`, `off` or a duration such as `30s`, got `{0}`")]
    AutoDuration(String),
    /// A half-close policy that is none of the accepted names.
    #[error("invalid half-close policy `{0}`: expected `probe`, `cancel` or `finish`")]
    HalfClose(String),
    /// A dead-after budget that is zero.
    #[error("dead-after must be at least 1s")]
    DeadAfterZero,
}

impl FromStr for KeepaliveSetting {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => return Ok(Self::Auto),
            "os" => return Ok(Self::Os),
            "off" => return Ok(Self::Off),
            _ => {}
        }
        let bad = || PolicyError::Keepalive(s.to_owned());
        let mut parts = s.split(',');
        let (Some(idle), Some(interval), Some(count), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let idle = parse_duration(idle).map_err(|_| bad())?;
        let interval = parse_duration(interval).map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let whole = |d: Duration| d.subsec_nanos() == 0 && (1..=32_767).contains(&d.as_secs());
        if !whole(idle) || !whole(interval) || !(1..=127).contains(&count) {
            return Err(PolicyError::KeepaliveRange(s.to_owned()));
        }
        Ok(Self::Explicit(KeepaliveTimers {
            idle,
            interval,
            count,
        }))
    }
}

impl fmt::Display for KeepaliveSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Os => f.write_str("os"),
            Self::Off => f.write_str("off"),
            Self::Explicit(t) => write!(
                f,
                "{},{},{}",
                format_duration(t.idle),
                format_duration(t.interval),
                t.count
            ),
        }
    }
}

/// A timer setting that is derived from D, turned off, or set explicitly: TCP_USER_TIMEOUT
/// and the write timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoDuration {
    /// Derived from D (both timers that take this setting derive to D itself).
    #[default]
    Auto,
    /// Not set: no such timer (for TCP_USER_TIMEOUT: the kernel retransmits for ~15 min
    /// with tcp_retries2=15).
    Off,
    /// Set explicitly.
    Fixed(Duration),
}

impl AutoDuration {
    /// The timer's value: `derived` for `auto`, `None` for `off`.
    pub fn resolve(self, derived: Duration) -> Option<Duration> {
        match self {
            Self::Auto => Some(derived),
            Self::Off => None,
            Self::Fixed(d) => Some(d),
        }
    }

    /// Parses a TCP_USER_TIMEOUT setting: as [`FromStr`], but zero is refused, because
    /// the kernel reads 0 as "the system default" (say `off` for that).
    pub fn parse_user_timeout(s: &str) -> Result<Self, PolicyError> {
        match s.parse() {
            Ok(Self::Fixed(d)) if d.is_zero() => Err(PolicyError::UserTimeout(s.to_owned())),
            Ok(setting) => Ok(setting),
            Err(_) => Err(PolicyError::UserTimeout(s.to_owned())),
        }
    }
}

impl FromStr for AutoDuration {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => parse_duration(other)
                .map(Self::Fixed)
                .map_err(|_| PolicyError::AutoDuration(s.to_owned())),
        }
    }
}

impl fmt::Display for AutoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Off => f.write_str("off"),
            Self::Fixed(d) => f.write_str(&format_duration(*d)),
        }
    }
}

/// What the server does when a client sends FIN while it has jobs pending (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HalfClosePolicy {
    /// Write a `#` probe line: a peer that closed its socket answers with RST (then
    /// cancel, cause `peer_closed`); a peer that only half-closed keeps reading and gets
    /// its results.
    #[default]
    Probe,
    /// Treat FIN as a hangup: cancel at once.
    Cancel,
    /// Never cancel on FIN: finish the jobs and send the results.
    Finish,
}

impl HalfClosePolicy {
    /// The flag's name for this policy.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::Cancel => "cancel",
            Self::Finish => "finish",
        }
    }
}

impl FromStr for HalfClosePolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "probe" => Ok(Self::Probe),
            "cancel" => Ok(Self::Cancel),
            "finish" => Ok(Self::Finish),
            other => Err(PolicyError::HalfClose(other.to_owned())),
        }
    }
}

impl fmt::Display for HalfClosePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every liveness mechanism for one connection, resolved from D and the overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// The budget D everything else was derived from.
    pub dead_after: Duration,
    /// TCP keepalive.
    pub keepalive: Keepalive,
    /// TCP_USER_TIMEOUT; `None` = not set.
    pub user_timeout: Option<Duration>,
    /// Watch for FIN/RST through readiness, without reading data.
    pub watch_hangup: bool,
    /// Close a peer that accepts none of our pending bytes for this long (`stalled`).
    pub write_timeout: Option<Duration>,
    /// Close a connection whose unfinished line is older than this (`ERR timeout`).
    pub partial_line_timeout: Option<Duration>,
}

/// How much earlier than D the derived TCP_USER_TIMEOUT is set, at most.
///
/// Linux counts the user timeout from the first *retransmission* of the oldest
/// unacknowledged segment (`retrans_stamp`), which leaves one RTO after the segment was
/// sent: at least TCP_RTO_MIN = 200 ms. A user timeout of D therefore fired at
/// D + 0.22 s in the lab (client-crash-sending, D = 2 s: 2.23 s against 1.1·D). Set
/// 250 ms earlier (D/8 for small D), the crash is reported within D.
pub const FIRST_RETRANSMISSION_ALLOWANCE: Duration = Duration::from_millis(250);

/// The TCP_USER_TIMEOUT derived from D: `D − min(D/8, 250 ms)` (see
/// [`FIRST_RETRANSMISSION_ALLOWANCE`]), so that a peer that dies while our data is in
/// flight is given up on within D.
pub fn derive_user_timeout(dead_after: Duration) -> Duration {
    dead_after - (dead_after / 8).min(FIRST_RETRANSMISSION_ALLOWANCE)
}

/// The write timeout derived from D: one allowance below the user timeout
/// (`D − 2·min(D/8, 250 ms)`). A reader that stopped keeps its window shut, and Linux
/// aborts zero-window probing once the user timeout passes: the write-stall timer must
/// come first to name the peer `stalled` (alive, not reading) rather than `timeout`.
pub fn derive_write_timeout(dead_after: Duration) -> Duration {
    derive_user_timeout(dead_after) - (dead_after / 8).min(FIRST_RETRANSMISSION_ALLOWANCE)
}

impl LivenessPolicy {
    /// The full policy derived from D, with nothing overridden.
    pub fn from_dead_after(dead_after: Duration) -> Self {
        Self {
            dead_after,
            keepalive: Keepalive::Tuned(KeepaliveTimers::derive(dead_after)),
            user_timeout: Some(derive_user_timeout(dead_after)),
            watch_hangup: true,
            write_timeout: Some(derive_write_timeout(dead_after)),
            partial_line_timeout: Some(dead_after),
        }
    }

    /// Nothing configured: what a plain socket gets from the OS.
    pub fn os_defaults(dead_after: Duration) -> Self {
        Self {
            dead_after,
            keepalive: Keepalive::Off,
            user_timeout: None,
            watch_hangup: false,
            write_timeout: None,
            partial_line_timeout: None,
        }
    }

    /// Resolves settings that may say `auto` against their D.
    pub fn resolve(settings: &LivenessSettings) -> Result<Self, PolicyError> {
        let dead_after = settings.dead_after;
        if dead_after < Duration::from_secs(1) {
            return Err(PolicyError::DeadAfterZero);
        }
        let keepalive = match settings.keepalive {
            KeepaliveSetting::Auto => Keepalive::Tuned(KeepaliveTimers::derive(dead_after)),
            KeepaliveSetting::Os => Keepalive::Os,
            KeepaliveSetting::Off => Keepalive::Off,
            KeepaliveSetting::Explicit(timers) => Keepalive::Tuned(timers),
        };
        let user_timeout = settings
            .user_timeout
            .resolve(derive_user_timeout(dead_after));
        if user_timeout == Some(Duration::ZERO) {
            return Err(PolicyError::UserTimeout(settings.user_timeout.to_string()));
        }
        Ok(Self {
            keepalive,
            user_timeout,
            watch_hangup: settings.watch_hangup,
            write_timeout: settings
                .write_timeout
                .resolve(derive_write_timeout(dead_after)),
            ..Self::from_dead_after(dead_after)
        })
    }
}

/// The liveness policy as configured (flags, a config file): D and the overrides, each
/// `auto` (derived from D), `off` or explicit. [`Default`] is SPEC §2's: D = 30 s and
/// everything derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessSettings {
    /// The budget D. At least 1 s.
    pub dead_after: Duration,
    /// TCP keepalive; `auto`: idle D/2, interval D/10, 5 probes.
    pub keepalive: KeepaliveSetting,
    /// TCP_USER_TIMEOUT; `auto`: D − min(D/8, 250 ms) ([`derive_user_timeout`]). An
    /// explicit value must not be zero.
    pub user_timeout: AutoDuration,
    /// Watch for FIN/RST through readiness, without reading data.
    pub watch_hangup: bool,
    /// Give up on a peer that accepts none of our bytes for this long (`stalled`);
    /// `auto`: D − 2·min(D/8, 250 ms) ([`derive_write_timeout`]).
    pub write_timeout: AutoDuration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        Self {
            dead_after: DEFAULT_DEAD_AFTER,
            keepalive: KeepaliveSetting::default(),
            user_timeout: AutoDuration::default(),
            watch_hangup: true,
            write_timeout: AutoDuration::default(),
        }
    }
}

impl LivenessSettings {
    /// The policy these settings describe: see [`LivenessPolicy::resolve`].
    pub fn resolve(&self) -> Result<LivenessPolicy, PolicyError> {
        LivenessPolicy::resolve(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_sums_to_dead_after() {
        let d = Duration::from_secs(30);
        let timers = KeepaliveTimers::derive(d);
        assert_eq!(timers.idle, Duration::from_secs(15));
        assert_eq!(timers.interval, Duration::from_secs(3));
        assert_eq!(timers.count, 5);
        assert_eq!(timers.worst_case(), d);
        let policy = LivenessPolicy::from_dead_after(d);
        // Fires 250 ms early: the kernel starts counting one RTO after the send.
        assert_eq!(policy.user_timeout, Some(Duration::from_millis(29_750)));
        assert_eq!(
            derive_user_timeout(Duration::from_secs(2)),
            Duration::from_millis(1_750)
        );
        assert_eq!(
            derive_user_timeout(Duration::from_secs(1)),
            Duration::from_millis(875)
        );
        assert_eq!(policy.write_timeout, Some(Duration::from_millis(29_500)));
        assert_eq!(
            derive_write_timeout(Duration::from_secs(2)),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn short_budgets_clamp_to_the_kernel_second() {
        let timers = KeepaliveTimers::derive(Duration::from_secs(2));
        assert_eq!(timers.idle, Duration::from_secs(1));
        assert_eq!(timers.interval, Duration::from_secs(1));
    }

    #[test]
    fn keepalive_setting_parses() {
        assert_eq!("auto".parse(), Ok(KeepaliveSetting::Auto));
        assert_eq!("os".parse(), Ok(KeepaliveSetting::Os));
        assert_eq!("off".parse(), Ok(KeepaliveSetting::Off));
        let explicit: KeepaliveSetting = "10s,2s,4".parse().unwrap();
        assert_eq!(
            explicit,
            KeepaliveSetting::Explicit(KeepaliveTimers {
                idle: Duration::from_secs(10),
                interval: Duration::from_secs(2),
                count: 4
            })
        );
        assert_eq!(explicit.to_string(), "10s,2s,4");
        assert!(matches!(
            "10s,500ms,4".parse::<KeepaliveSetting>(),
            Err(PolicyError::KeepaliveRange(_))
        ));
        assert!(matches!(
            "10s,2s".parse::<KeepaliveSetting>(),
            Err(PolicyError::Keepalive(_))
        ));
        assert!("10s,2s,0".parse::<KeepaliveSetting>().is_err());
    }

    #[test]
    fn resolve_applies_overrides() {
        let d = Duration::from_secs(2);
        let settings = LivenessSettings {
            dead_after: d,
            ..LivenessSettings::default()
        };
        assert_eq!(settings.resolve(), Ok(LivenessPolicy::from_dead_after(d)));
        let policy = LivenessSettings {
            keepalive: KeepaliveSetting::Off,
            user_timeout: AutoDuration::Off,
            watch_hangup: false,
            write_timeout: AutoDuration::Off,
            ..settings
        }
        .resolve()
        .unwrap();
        assert_eq!(policy.keepalive, Keepalive::Off);
        assert_eq!(policy.user_timeout, None);
        assert!(!policy.watch_hangup);
        assert_eq!(policy.write_timeout, None);
        let policy = LivenessSettings {
            keepalive: KeepaliveSetting::Os,
            user_timeout: AutoDuration::parse_user_timeout("750ms").unwrap(),
            write_timeout: "5s".parse().unwrap(),
            ..settings
        }
        .resolve()
        .unwrap();
        assert_eq!(policy.keepalive, Keepalive::Os);
        assert_eq!(policy.user_timeout, Some(Duration::from_millis(750)));
        assert_eq!(policy.write_timeout, Some(Duration::from_secs(5)));
        let zero = LivenessSettings {
            dead_after: Duration::ZERO,
            ..settings
        };
        assert_eq!(zero.resolve(), Err(PolicyError::DeadAfterZero));
        let zero_user_timeout = LivenessSettings {
            user_timeout: AutoDuration::Fixed(Duration::ZERO),
            ..settings
        };
        assert!(zero_user_timeout.resolve().is_err());
    }

    #[test]
    fn defaults_are_spec_section_2() {
        let policy = LivenessSettings::default().resolve().unwrap();
        assert_eq!(policy, LivenessPolicy::from_dead_after(DEFAULT_DEAD_AFTER));
        assert_eq!(DEFAULT_DEAD_AFTER, Duration::from_secs(30));
    }

    #[test]
    fn auto_durations_parse() {
        assert_eq!("auto".parse(), Ok(AutoDuration::Auto));
        assert_eq!("off".parse(), Ok(AutoDuration::Off));
        assert_eq!(
            "0s".parse(),
            Ok(AutoDuration::Fixed(Duration::ZERO)),
            "a zero write timeout is accepted, as before"
        );
        assert!(matches!(
            AutoDuration::parse_user_timeout("0s"),
            Err(PolicyError::UserTimeout(_))
        ));
        assert!(matches!(
            "soon".parse::<AutoDuration>(),
            Err(PolicyError::AutoDuration(_))
        ));
        assert_eq!(
            AutoDuration::Fixed(Duration::from_millis(750)).to_string(),
            "750ms"
        );
    }

    #[test]
    fn half_close_parses() {
        for p in [
            HalfClosePolicy::Probe,
            HalfClosePolicy::Cancel,
            HalfClosePolicy::Finish,
        ] {
            assert_eq!(p.as_str().parse(), Ok(p));
        }
        assert!("maybe".parse::<HalfClosePolicy>().is_err());
    }
}
