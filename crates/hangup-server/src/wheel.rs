//! One I/O thread's timer wheel: every connection's next deadline, filed in one of
//! [`SLOTS`] slots of a tick ([`TICK_MS`]) by its tick number modulo the wheel's size. Filing and
//! firing are O(1) (a binary heap of 15 000 deadlines cost more user time than all of
//! the protocol: a pop is 14 cache misses). A deadline more than one turn of the wheel
//! ahead waits in its slot for its turn.
//!
//! Whoever files keeps the tick it filed at, and an entry only counts while its key
//! still has that tick filed ([`Wheel::expire`] asks; an entry whose key filed
//! elsewhere since is dropped when its slot comes up). The wheel knows its earliest
//! entry, so that a thread sleeps until then, not until the next occupied slot (which
//! at a 30 s heartbeat mostly holds deadlines a turn or more away: every 1 ms slot was
//! occupied, and each woke its thread for nothing); and each slot its earliest, so that
//! expiring skips the slots with nothing due. A deadline that moves later is not
//! refiled when it moves, only when its old tick comes up — one entry per connection,
//! not one per heartbeat.
//!
//! An entry is 8 bytes with a `u32` key: the key and the turn of the wheel it is due in
//! (the slot says the rest of its tick), so that the wheel costs a session 8 bytes plus
//! its slot's spare capacity, not 24.

use std::time::{Duration, Instant};

/// The wheel's resolution (a tick), ms: deadlines fire within one tick after they are
/// due.
const TICK_MS: u64 = 1;
/// Slots in the wheel: one turn is 4.096 s.
const SLOTS: usize = 4096;

/// A tick number: ticks since the wheel's origin.
pub(crate) type Tick = u64;

/// A turn of the wheel: a tick divided by [`SLOTS`]. 32 bits last 557 years.
type Turn = u32;

pub(crate) struct Wheel<K> {
    origin: Instant,
    /// Each entry with the turn its tick is in (the tick is `turn × SLOTS + slot`).
    slots: Box<[Vec<(K, Turn)>]>,
    /// The earliest tick filed in each slot ([`Tick::MAX`]: none).
    slot_min: Box<[Tick]>,
    /// The earliest tick filed anywhere ([`Tick::MAX`]: none).
    earliest: Tick,
    /// Every tick before this one was expired.
    cursor: Tick,
    /// The buffers of slots that emptied, for the next empty slot filed into: the
    /// wheel turning (a trip per heartbeat per connection) then allocates nothing. At
    /// most one per slot; an empty slot holds none.
    spare: Vec<Vec<(K, Turn)>>,
}

impl<K: Copy> Wheel<K> {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            slot_min: vec![Tick::MAX; SLOTS].into_boxed_slice(),
            earliest: Tick::MAX,
            cursor: 0,
            spare: Vec::new(),
        }
    }

    /// The first tick at or after `at` (a deadline never fires early), and never one
    /// already expired.
    pub(crate) fn tick_of(&self, at: Instant) -> Tick {
        let since = at.saturating_duration_since(self.origin);
        // In whole milliseconds, a fraction rounded up, then in ticks (no 128-bit
        // division: this runs once per heartbeat).
        let ms = since.as_secs() * 1000 + u64::from(since.subsec_nanos().div_ceil(1_000_000));
        ms.div_ceil(TICK_MS).max(self.cursor)
    }

    /// Whether `tick` was expired: it is before the cursor.
    pub(crate) fn has_passed(&self, tick: Tick) -> bool {
        tick < self.cursor
    }

    /// Files `key` at `tick` (from [`Wheel::tick_of`]).
    pub(crate) fn file(&mut self, tick: Tick, key: K) {
        debug_assert!(tick >= self.cursor, "filed before the cursor: {tick}");
        let slot = (tick % SLOTS as Tick) as usize;
        let entries = &mut self.slots[slot];
        if entries.capacity() == 0 {
            *entries = self.spare.pop().unwrap_or_default();
        }
        entries.push((key, (tick / SLOTS as Tick) as Turn));
        self.slot_min[slot] = self.slot_min[slot].min(tick);
        self.earliest = self.earliest.min(tick);
    }

    /// The earliest tick filed, found by walking the slots from the cursor's: the slot
    /// `k` places on holds no tick before `cursor + k` (every tick filed is at or after
    /// the cursor), so the walk stops at the first slot that leaves nothing earlier to
    /// find — at once when deadlines are dense, as with thousands of sessions.
    fn earliest_from_cursor(&self) -> Tick {
        let mut earliest = Tick::MAX;
        for k in 0..SLOTS as Tick {
            let tick = self.cursor + k;
            earliest = earliest.min(self.slot_min[(tick % SLOTS as Tick) as usize]);
            if earliest <= tick {
                break;
            }
        }
        earliest
    }

    /// When the wheel next needs to expire something: its earliest entry's tick (the
    /// entry may be stale by then: that wake-up only drops it).
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        (self.earliest != Tick::MAX).then(|| {
            let tick = self.earliest.max(self.cursor);
            self.origin + Duration::from_millis(tick * TICK_MS)
        })
    }

    /// Expires every tick up to `now`: each entry of each slot that came up whose key
    /// still has a tick filed (`filed(key)`) that is due goes to `fire` (its owner then
    /// forgets that tick or files another, after this call: every tick filed is at or
    /// after the cursor); one filed for a later turn of the wheel in the same slot
    /// stays; any other is stale and dropped.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        mut filed: impl FnMut(K) -> Option<Tick>,
        mut fire: impl FnMut(K),
    ) {
        let since = now.saturating_duration_since(self.origin);
        let now_tick = (since.as_secs() * 1000 + u64::from(since.subsec_millis())) / TICK_MS;
        if now_tick < self.cursor {
            return;
        }
        // After a long sleep every slot comes up once, not once per turn missed.
        let last = now_tick.min(self.cursor + SLOTS as Tick - 1);
        for tick in self.cursor..=last {
            let slot = (tick % SLOTS as Tick) as usize;
            if self.slot_min[slot] > now_tick {
                // Empty, or only deadlines a turn or more away.
                continue;
            }
            let tick_of = |turn: Turn| Tick::from(turn) * SLOTS as Tick + slot as Tick;
            let entries = &mut self.slots[slot];
            let mut earliest = Tick::MAX;
            entries.retain(|&(key, turn)| {
                let at = tick_of(turn);
                if filed(key) != Some(at) {
                    return false;
                }
                if at <= now_tick {
                    fire(key);
                    return false;
                }
                earliest = earliest.min(at);
                true
            });
            self.slot_min[slot] = earliest;
            if entries.is_empty() {
                self.spare.push(std::mem::take(entries));
            }
        }
        self.cursor = now_tick + 1;
        if self.earliest <= now_tick {
            // It came up (fired or dropped): the next one is the least of the slots'.
            self.earliest = self.earliest_from_cursor();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TICK: Duration = Duration::from_millis(TICK_MS);

    /// A model of the reactor's use: keys with the tick they filed; a random mix of
    /// deadlines near and beyond one turn, moved later and earlier, fire exactly when
    /// due, never early, once each.
    #[test]
    fn deadlines_fire_when_due_never_early_and_once() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let mut filed: HashMap<u32, Tick> = HashMap::new();
        let mut deadline: HashMap<u32, Instant> = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut now = origin;
        let mut fired = 0;
        for step in 0..20_000u32 {
            now += Duration::from_micros(rng.u64(0..3_000));
            // A key moves its deadline; it files only if the new one is earlier.
            let key = rng.u32(0..500);
            let at = now + Duration::from_millis(rng.u64(0..10_000));
            deadline.insert(key, at);
            let tick = wheel.tick_of(at);
            if filed.get(&key).is_none_or(|&old| tick < old) {
                filed.insert(key, tick);
                wheel.file(tick, key);
            }
            let mut due = Vec::new();
            wheel.expire(now, |key| filed.get(&key).copied(), |key| due.push(key));
            for key in due {
                filed.remove(&key);
                let at = deadline[&key];
                if at <= now {
                    fired += 1;
                    deadline.remove(&key);
                } else {
                    // Moved later since it was filed: file it there.
                    let tick = wheel.tick_of(at);
                    filed.insert(key, tick);
                    wheel.file(tick, key);
                }
                assert!(step > 0);
            }
            // Nothing due is left unfired for more than a tick.
            for (key, at) in &deadline {
                assert!(
                    *at + TICK * 2 > now,
                    "key {key} due {:?} ago was not fired",
                    now - *at
                );
            }
            // And the wheel never sleeps past one.
            if let Some(earliest) = deadline.values().min() {
                let next = wheel.next_expiry().expect("deadlines pending, none filed");
                assert!(
                    next <= *earliest + TICK,
                    "the wheel would sleep past a deadline"
                );
            }
        }
        assert!(fired > 1_000, "only {fired} deadlines fired");
    }

    /// Heartbeating connections: each refiles 1.5 s on when its tick comes up. Once
    /// the wheel turned, it allocates no buffer more: there are never more than
    /// slots were ever occupied at once.
    #[test]
    fn a_turning_wheel_reuses_its_buffers() {
        let origin = Instant::now();
        let mut wheel: Wheel<u32> = Wheel::new(origin);
        let mut filed: HashMap<u32, Tick> = HashMap::new();
        let mut now = origin;
        for key in 0..2_000 {
            let tick = wheel.tick_of(now + Duration::from_micros(u64::from(key) * 750));
            filed.insert(key, tick);
            wheel.file(tick, key);
        }
        let buffers = |wheel: &Wheel<u32>| {
            let held = wheel.slots.iter().filter(|s| s.capacity() > 0).count();
            held + wheel.spare.len()
        };
        let occupied = |wheel: &Wheel<u32>| wheel.slots.iter().filter(|s| !s.is_empty()).count();
        let (mut most_occupied, mut fired) = (occupied(&wheel), 0);
        let mut after_a_turn = None;
        for step in 0..12_000u64 {
            now += Duration::from_millis(1);
            let mut due = Vec::new();
            wheel.expire(now, |key| filed.get(&key).copied(), |key| due.push(key));
            for key in due {
                fired += 1;
                let tick = wheel.tick_of(now + Duration::from_millis(1_500));
                filed.insert(key, tick);
                wheel.file(tick, key);
            }
            most_occupied = most_occupied.max(occupied(&wheel));
            assert!(buffers(&wheel) <= most_occupied);
            if step == SLOTS as u64 {
                after_a_turn = Some(buffers(&wheel));
            }
        }
        assert!(fired > 10_000, "only {fired} deadlines came up");
        assert_eq!(
            after_a_turn,
            Some(buffers(&wheel)),
            "buffers were allocated"
        );
    }

    #[test]
    fn the_next_expiry_is_the_earliest_filed_slot() {
        let origin = Instant::now();
        let mut wheel: Wheel<u8> = Wheel::new(origin);
        assert_eq!(wheel.next_expiry(), None);
        wheel.file(wheel.tick_of(origin + Duration::from_millis(700)), 1);
        wheel.file(wheel.tick_of(origin + Duration::from_millis(90)), 2);
        assert_eq!(
            wheel.next_expiry(),
            Some(origin + Duration::from_millis(90))
        );
        // Past the end of the wheel's turn, then wrapped around.
        let mut fired = Vec::new();
        let filed = |key: u8| Some([0, 700, 90, 4_050, 8_000][usize::from(key)]);
        assert_eq!(wheel.tick_of(origin + Duration::from_millis(700)), 700);
        wheel.expire(origin + Duration::from_millis(4_000), filed, |key| {
            fired.push(key)
        });
        assert_eq!(fired, [2, 1]);
        wheel.file(wheel.tick_of(origin + Duration::from_millis(4_050)), 3);
        assert_eq!(
            wheel.next_expiry(),
            Some(origin + Duration::from_millis(4_050))
        );
        wheel.file(wheel.tick_of(origin + Duration::from_millis(8_000)), 4);
        assert_eq!(
            wheel.next_expiry(),
            Some(origin + Duration::from_millis(4_050))
        );
        wheel.expire(origin + Duration::from_millis(4_060), filed, |key| {
            fired.push(key)
        });
        assert_eq!(fired, [2, 1, 3]);
        // Only a deadline more than a turn away is left: the wheel sleeps until it,
        // not until its slot's next turn.
        assert_eq!(
            wheel.next_expiry(),
            Some(origin + Duration::from_millis(8_000))
        );
    }
}
