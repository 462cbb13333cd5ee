//! Sessions (SPEC §4): which connection speaks for a device, the heartbeat a session is
//! granted, and takeover when the device connects again.
//!
//! ```text
//!   HELLO dev-7 ──▶ SessionRegistry::open("dev-7", handle)
//!                     ├─ no live session: Opened { id }
//!                     └─ live session:    Opened { id, evicted: Some(old) } ──▶ kick old
//!   close        ──▶ SessionRegistry::close(slot, id)  (only if `id` is still current)
//! ```
//!
//! The registry holds one entry per device and nothing per heartbeat. The handle `H`
//! is whatever the I/O layer needs to reach the connection that owns a session (a
//! cancellation token, a channel); the registry only stores and returns it.

use std::fmt;
#[cfg(feature = "registry")]
use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;
use std::time::{Duration, Instant};

#[cfg(feature = "registry")]
use hashbrown::HashTable;
#[cfg(feature = "registry")]
use slab::Slab;

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
#[cfg(feature = "registry")]
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<H> {
    /// The new session.
    pub id: SessionId,
    /// Where it sits in the registry, for [`SessionRegistry::close`].
    pub slot: SessionSlot,
    /// The session this one replaced, with its handle: its connection must be kicked.
    pub evicted: Option<(SessionId, H)>,
}

/// Where a session sits in its [`SessionRegistry`]: the device's place for as long as
/// the device has a live session (a takeover keeps it), reused after. Always paired
/// with the session's id, which tells a session still there from a later one.
#[cfg(feature = "registry")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSlot(u32);

#[cfg(feature = "registry")]
#[derive(Debug)]
struct Entry<H> {
    device: Box<str>,
    id: SessionId,
    handle: H,
}

/// Live sessions by device: at most one per device.
///
/// The entries sit in a dense slab; the hash table holds only their 4-byte indices
/// (hashed by the entry's device). A table keeps up to twice as many buckets as
/// entries, so a bucket of key, id and handle would cost every session twice its size.
#[cfg(feature = "registry")]
#[derive(Debug)]
pub struct SessionRegistry<H> {
    by_device: HashTable<u32>,
    entries: Slab<Entry<H>>,
    hasher: RandomState,
    next_id: u64,
}

#[cfg(feature = "registry")]
impl<H> SessionRegistry<H> {
    /// An empty registry whose ids count up from `first_id`.
    pub fn new(first_id: u64) -> Self {
        Self {
            by_device: HashTable::new(),
            entries: Slab::new(),
            hasher: RandomState::new(),
            next_id: first_id,
        }
    }

    /// The index of `device`'s entry in the table, if it has one.
    fn find(&self, device: &str) -> Option<u32> {
        let entries = &self.entries;
        self.by_device
            .find(self.hasher.hash_one(device), |&i| {
                *entries[i as usize].device == *device
            })
            .copied()
    }

    /// Opens a session for `device`, owned by the connection behind `handle`. A live
    /// session of the same device is replaced at once and returned for eviction: the
    /// newest connection always wins, so a ghost can never lock a device out.
    pub fn open(&mut self, device: &str, handle: H) -> Opened<H> {
        let id = SessionId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        if let Some(index) = self.find(device) {
            let entry = &mut self.entries[index as usize];
            let old_id = std::mem::replace(&mut entry.id, id);
            let old_handle = std::mem::replace(&mut entry.handle, handle);
            return Opened {
                id,
                slot: SessionSlot(index),
                evicted: Some((old_id, old_handle)),
            };
        }
        let entry = self.entries.vacant_entry();
        // Each entry holds a device id on the heap besides itself: memory runs out long
        // before 2^32 of them.
        let index = u32::try_from(entry.key()).expect("fewer than 2^32 live sessions");
        entry.insert(Entry {
            device: device.into(),
            id,
            handle,
        });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_device
            .insert_unique(hasher.hash_one(device), index, |&i| {
                hasher.hash_one(&*entries[i as usize].device)
            });
        Opened {
            id,
            slot: SessionSlot(index),
            evicted: None,
        }
    }

    /// Ends session `id`, if it is still its device's current one, and gives the
    /// device back. `None` means it was already taken over (or closed), and whoever
    /// replaced it has recorded its end.
    pub fn close(&mut self, slot: SessionSlot, id: SessionId) -> Option<Box<str>> {
        self.device(slot, id)?;
        let SessionSlot(index) = slot;
        let entry = self.entries.remove(index as usize);
        let hash = self.hasher.hash_one(&*entry.device);
        if let Ok(found) = self.by_device.find_entry(hash, |&i| i == index) {
            found.remove();
        }
        Some(entry.device)
    }

    /// Session `id`'s device, while it is the device's current session.
    pub fn device(&self, slot: SessionSlot, id: SessionId) -> Option<&str> {
        self.entries
            .get(slot.0 as usize)
            .filter(|entry| entry.id == id)
            .map(|entry| &*entry.device)
    }

    /// The device's current session, if any.
    pub fn current(&self, device: &str) -> Option<SessionId> {
        self.find(device).map(|i| self.entries[i as usize].id)
    }

    /// The device's current session and its handle, to update in place.
    pub fn get_mut(&mut self, device: &str) -> Option<(SessionId, &mut H)> {
        let index = self.find(device)?;
        let entry = &mut self.entries[index as usize];
        Some((entry.id, &mut entry.handle))
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every live session: device, id and handle.
    pub fn iter(&self) -> impl Iterator<Item = (&str, SessionId, &H)> {
        self.entries
            .iter()
            .map(|(_, entry)| (&*entry.device, entry.id, &entry.handle))
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

    #[cfg(feature = "registry")]
    #[test]
    fn newest_connection_wins_and_stale_close_is_ignored() {
        let mut registry = SessionRegistry::new(7);
        let first = registry.open("dev", "conn-a");
        assert_eq!((first.id, &first.evicted), (SessionId(7), &None));
        let second = registry.open("dev", "conn-b");
        assert_eq!(second.evicted, Some((SessionId(7), "conn-a")));
        assert_eq!(
            second.slot, first.slot,
            "a takeover keeps the device's place"
        );
        // The evicted connection's own close comes late: it must not end the new session.
        assert_eq!(registry.close(first.slot, first.id), None);
        assert_eq!(registry.device(first.slot, first.id), None);
        assert_eq!(registry.current("dev"), Some(second.id));
        assert_eq!(registry.device(second.slot, second.id), Some("dev"));
        assert_eq!(
            registry.close(second.slot, second.id).as_deref(),
            Some("dev")
        );
        assert!(registry.is_empty());
        assert_eq!(registry.close(second.slot, second.id), None);
    }

    #[cfg(feature = "registry")]
    #[test]
    fn devices_are_independent_and_a_reused_place_is_not_the_old_session() {
        let mut registry = SessionRegistry::new(0);
        let a = registry.open("a", ());
        let b = registry.open("b", ());
        assert_ne!(a.id, b.id);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.close(a.slot, a.id).as_deref(), Some("a"));
        assert_eq!(registry.current("b"), Some(b.id));
        let c = registry.open("c", ());
        assert_eq!(c.slot, a.slot, "the slab reuses the freed place");
        assert_eq!(registry.device(a.slot, a.id), None);
        assert_eq!(registry.close(a.slot, a.id), None);
        assert_eq!(registry.current("c"), Some(c.id));
        assert_eq!(registry.current("a"), None);
    }

    #[cfg(feature = "registry")]
    mod registry_model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Op {
            Open(u8),
            /// Closes the n-th session ever opened (stale or current).
            Close(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..6).prop_map(Op::Open),
                any::<usize>().prop_map(Op::Close)
            ]
        }

        proptest! {
            /// Whatever the order of opens, takeovers and (stale) closes, the registry
            /// answers as a plain map from device to its newest session does.
            #[test]
            fn answers_as_a_map_of_devices_to_their_newest_session(
                ops in proptest::collection::vec(op(), 1..200)
            ) {
                let mut registry = SessionRegistry::new(0);
                let mut model: HashMap<String, SessionId> = HashMap::new();
                let mut opened: Vec<(String, SessionSlot, SessionId)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Open(n) => {
                            let device = format!("dev-{n}");
                            let result = registry.open(&device, n);
                            let before = model.insert(device.clone(), result.id);
                            prop_assert_eq!(result.evicted.map(|(id, _)| id), before);
                            opened.push((device, result.slot, result.id));
                        }
                        Op::Close(n) if !opened.is_empty() => {
                            let (device, slot, id) = opened[n % opened.len()].clone();
                            let current = model.get(&device) == Some(&id);
                            let closed = registry.close(slot, id);
                            prop_assert_eq!(closed.as_deref(), current.then_some(device.as_str()));
                            if current {
                                model.remove(&device);
                            }
                        }
                        Op::Close(_) => {}
                    }
                    prop_assert_eq!(registry.len(), model.len());
                    for (device, id) in &model {
                        prop_assert_eq!(registry.current(device), Some(*id));
                    }
                    for (device, slot, id) in &opened {
                        let current = model.get(device) == Some(id);
                        prop_assert_eq!(
                            registry.device(*slot, *id),
                            current.then_some(device.as_str())
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn session_ids_are_sixteen_hex_digits_and_parse_back() {
        let id = SessionId(0x00ab_cdef_0000_0001);
        assert_eq!(id.to_string(), "00abcdef00000001");
        assert_eq!("00abcdef00000001".parse::<SessionId>(), Ok(id));
    }
}
