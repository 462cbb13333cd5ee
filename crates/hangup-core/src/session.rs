//! Sessions (SPEC §4): which connection speaks for a device, the heartbeat a session is
//! granted, and takeover when the device connects again.
//!
//! ```text
//!   HELLO dev-7 ──▶ SessionRegistry::open("dev-7", handle)
//!                     ├─ no live session: Opened { id }
//!                     └─ live session:    Opened { id, evicted: Some(old) } ──▶ kick old
//!   close        ──▶ SessionRegistry::close("dev-7", id)  (only if `id` is still current)
//! ```
//!
//! The registry holds one entry per device and nothing per heartbeat. The handle `H`
//! is whatever the I/O layer needs to reach the connection that owns a session (a
//! cancellation token, a channel); the registry only stores and returns it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Identifies one session. Unique within a server run; the server starts its sequence at
/// a random point so that ids also stay unique across restarts in the presence store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    /// Sixteen lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(SessionId)
    }
}

/// The shortest heartbeat a server grants.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// The longest heartbeat a server grants.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The heartbeat a client gets when it proposes none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// The heartbeat agreed for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The peer sends something (at least a `PING`) after this much of its own silence.
    pub interval: Duration,
    /// The session is dead after this much inbound silence: 1.5 × `interval`.
    pub dead_after: Duration,
    /// What the peer proposed, when it was outside [`MIN_HEARTBEAT`]..=[`MAX_HEARTBEAT`]
    /// and had to be clamped.
    pub clamped_from: Option<Duration>,
}

impl Heartbeat {
    /// Grants a heartbeat for the peer's proposal: clamped to [1 s, 3600 s], default 30 s.
    pub fn grant(proposed: Option<Duration>) -> Self {
        let wanted = proposed.unwrap_or(DEFAULT_HEARTBEAT);
        let interval = wanted.clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
        Self {
            interval,
            dead_after: interval * 3 / 2,
            clamped_from: (interval != wanted).then_some(wanted),
        }
    }
}

/// What a [`HeartbeatClock`] asks its owner to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// We were silent for a heartbeat interval: send `PING`.
    SendPing,
    /// The peer was silent for dead-after: it is gone (`heartbeat_missed`).
    PeerDead,
}

/// The client's side of a session heartbeat (SPEC §4): speak after `interval` of our
/// own silence, give the peer up after `dead_after` of its silence. Sans-IO: the owner
/// reports traffic and sleeps until [`HeartbeatClock::poll_timeout`].
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatClock {
    heartbeat: Heartbeat,
    last_sent: Instant,
    last_received: Instant,
}

impl HeartbeatClock {
    /// A clock starting at `now` (both directions count as just heard).
    pub fn new(heartbeat: Heartbeat, now: Instant) -> Self {
        Self {
            heartbeat,
            last_sent: now,
            last_received: now,
        }
    }

    /// We sent bytes.
    pub fn handle_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// The peer sent bytes.
    pub fn handle_received(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// When to call [`HeartbeatClock::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Instant {
        (self.last_sent + self.heartbeat.interval)
            .min(self.last_received + self.heartbeat.dead_after)
    }

    /// What is due at `now`, the peer's death first.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<HeartbeatAction> {
        if now >= self.last_received + self.heartbeat.dead_after {
            Some(HeartbeatAction::PeerDead)
        } else if now >= self.last_sent + self.heartbeat.interval {
            // Counted as sent now, so that a slow write does not send a PING per wake-up.
            self.last_sent = now;
            Some(HeartbeatAction::SendPing)
        } else {
            None
        }
    }

    /// How long the peer has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_received)
    }
}

/// What [`SessionRegistry::open`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<H> {
    /// The new session.
    pub id: SessionId,
    /// The session this one replaced, with its handle: its connection must be kicked.
    pub evicted: Option<(SessionId, H)>,
}

/// Live sessions by device: at most one per device.
#[derive(Debug)]
pub struct SessionRegistry<H> {
    by_device: HashMap<Box<str>, (SessionId, H)>,
    next_id: u64,
}

impl<H> SessionRegistry<H> {
    /// An empty registry whose ids count up from `first_id`.
    pub fn new(first_id: u64) -> Self {
        Self {
            by_device: HashMap::new(),
            next_id: first_id,
        }
    }

    /// Opens a session for `device`, owned by the connection behind `handle`. A live
    /// session of the same device is replaced at once and returned for eviction: the
    /// newest connection always wins, so a ghost can never lock a device out.
    pub fn open(&mut self, device: &str, handle: H) -> Opened<H> {
        let id = SessionId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let evicted = match self.by_device.get_mut(device) {
            Some(entry) => Some(std::mem::replace(entry, (id, handle))),
            None => {
                self.by_device.insert(device.into(), (id, handle));
                None
            }
        };
        Opened { id, evicted }
    }

    /// Ends session `id` of `device`, if it is still the device's current one. Returns
    /// whether it was: `false` means it was already taken over (or closed), and whoever
    /// replaced it has recorded its end.
    pub fn close(&mut self, device: &str, id: SessionId) -> bool {
        match self.by_device.get(device) {
            Some((current, _)) if *current == id => {
                self.by_device.remove(device);
                true
            }
            _ => false,
        }
    }

    /// The device's current session, if any.
    pub fn current(&self, device: &str) -> Option<SessionId> {
        self.by_device.get(device).map(|(id, _)| *id)
    }

    /// The device's current session and its handle, to update in place.
    pub fn get_mut(&mut self, device: &str) -> Option<(SessionId, &mut H)> {
        self.by_device
            .get_mut(device)
            .map(|(id, handle)| (*id, handle))
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// Every live session: device, id and handle.
    pub fn iter(&self) -> impl Iterator<Item = (&str, SessionId, &H)> {
        self.by_device
            .iter()
            .map(|(device, (id, handle))| (&**device, *id, handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_clamped_heartbeats() {
        let secs = Duration::from_secs;
        let h = Heartbeat::grant(None);
        assert_eq!(
            (h.interval, h.dead_after, h.clamped_from),
            (secs(30), secs(45), None)
        );
        let h = Heartbeat::grant(Some(secs(1)));
        assert_eq!(
            (h.interval, h.dead_after),
            (secs(1), Duration::from_millis(1500))
        );
        assert_eq!(Heartbeat::grant(Some(secs(0))).interval, secs(1));
        assert_eq!(Heartbeat::grant(Some(secs(0))).clamped_from, Some(secs(0)));
        let h = Heartbeat::grant(Some(secs(100_000)));
        assert_eq!(
            (h.interval, h.clamped_from),
            (secs(3600), Some(secs(100_000)))
        );
    }

    #[test]
    fn heartbeat_clock_pings_on_our_silence_and_gives_up_on_theirs() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut clock = HeartbeatClock::new(Heartbeat::grant(Some(Duration::from_secs(1))), start);
        assert_eq!(clock.poll_timeout(), at(1000));
        assert_eq!(clock.handle_timeout(at(999)), None);
        assert_eq!(
            clock.handle_timeout(at(1000)),
            Some(HeartbeatAction::SendPing)
        );
        // The peer answers at 1.2 s; our next PING is due at 2 s.
        clock.handle_received(at(1200));
        assert_eq!(clock.poll_timeout(), at(2000));
        assert_eq!(
            clock.handle_timeout(at(2000)),
            Some(HeartbeatAction::SendPing)
        );
        // No answer: dead 1.5 s after 1.2 s.
        assert_eq!(clock.poll_timeout(), at(2700));
        assert_eq!(
            clock.handle_timeout(at(2700)),
            Some(HeartbeatAction::PeerDead)
        );
        assert_eq!(clock.silent_for(at(2700)), Duration::from_millis(1500));
    }

    #[test]
    fn newest_connection_wins_and_stale_close_is_ignored() {
        let mut registry = SessionRegistry::new(7);
        let first = registry.open("dev", "conn-a");
        assert_eq!(
            first,
            Opened {
                id: SessionId(7),
                evicted: None
            }
        );
        let second = registry.open("dev", "conn-b");
        assert_eq!(second.evicted, Some((SessionId(7), "conn-a")));
        // The evicted connection's own close comes late: it must not end the new session.
        assert!(!registry.close("dev", first.id));
        assert_eq!(registry.current("dev"), Some(second.id));
        assert!(registry.close("dev", second.id));
        assert!(registry.is_empty());
        assert!(!registry.close("dev", second.id));
    }

    #[test]
    fn devices_are_independent() {
        let mut registry = SessionRegistry::new(0);
        let a = registry.open("a", ());
        let b = registry.open("b", ());
        assert_ne!(a.id, b.id);
        assert_eq!(registry.len(), 2);
        assert!(registry.close("a", a.id));
        assert_eq!(registry.current("b"), Some(b.id));
    }

    #[test]
    fn session_ids_are_sixteen_hex_digits_and_parse_back() {
        let id = SessionId(0x00ab_cdef_0000_0001);
        assert_eq!(id.to_string(), "00abcdef00000001");
        assert_eq!("00abcdef00000001".parse::<SessionId>(), Ok(id));
    }
}
