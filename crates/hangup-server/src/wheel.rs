//! One I/O thread's timer wheel: every connection's next deadline, filed in one of
//! [`SLOTS`] slots of [`TICK`] by its tick number modulo the wheel's size. Filing and
//! firing are O(1) (a binary heap of 15 000 deadlines cost more user time than all of
//! the protocol: a pop is 14 cache misses). A deadline more than one turn of the wheel
//! ahead waits in its slot for its turn.
//!
//! The wheel holds keys, not deadlines: whoever files keeps the tick it filed at, and
//! an entry only counts while its key still has that tick filed ([`Wheel::expire`]
//! asks; an entry whose key filed elsewhere since is dropped when its slot comes up). A deadline that moves later is not refiled when it moves, only when its old
//! tick comes up — one entry per connection, not one per heartbeat.

use std::time::{Duration, Instant};

/// The wheel's resolution, ms: deadlines fire within one tick after they are due.
const TICK_MS: u64 = 1;
/// The wheel's resolution.
pub(crate) const TICK: Duration = Duration::from_millis(TICK_MS);
/// Slots in the wheel: one turn is 4.096 s.
const SLOTS: usize = 4096;

/// A tick number: [`TICK`]s since the wheel's origin.
pub(crate) type Tick = u64;

pub(crate) struct Wheel<K> {
    origin: Instant,
    slots: Box<[Vec<K>]>,
    /// One bit per slot that holds entries, to find the next one without a scan.
    occupied: Box<[u64]>,
    /// Every tick before this one was expired.
    cursor: Tick,
}

impl<K: Copy> Wheel<K> {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: vec![0; SLOTS / 64].into_boxed_slice(),
            cursor: 0,
        }
    }

    /// The first tick at or after `at` (a deadline never fires early), and never one
    /// already expired.
    pub(crate) fn tick_of(&self, at: Instant) -> Tick {
        let since = at.saturating_duration_since(self.origin);
        let tick = since.as_nanos().div_ceil(TICK.as_nanos()) as Tick;
        tick.max(self.cursor)
    }

    /// Files `key` at `tick` (from [`Wheel::tick_of`]).
    pub(crate) fn file(&mut self, tick: Tick, key: K) {
        let slot = (tick % SLOTS as Tick) as usize;
        self.slots[slot].push(key);
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    /// When the wheel next needs to expire something: the next occupied slot's tick
    /// (its entries may be for a later turn: then that wake-up only finds them there).
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let start = (self.cursor % SLOTS as Tick) as usize;
        let offset = (0..SLOTS / 64 + 1).find_map(|word_step| {
            let word = (start / 64 + word_step) % (SLOTS / 64);
            let mut bits = self.occupied[word];
            if word_step == 0 {
                // Only slots at or after the cursor in its own word...
                bits &= !0u64 << (start % 64);
            } else if word_step == SLOTS / 64 {
                // ...and, after a whole turn, the ones before it.
                bits = self.occupied[start / 64] & !(!0u64 << (start % 64));
            }
            (bits != 0).then(|| {
                let slot = word * 64 + bits.trailing_zeros() as usize;
                (slot + SLOTS - start) % SLOTS
            })
        })?;
        Some(self.origin + Duration::from_millis((self.cursor + offset as Tick) * TICK_MS))
    }

    /// Expires every tick up to `now`: each entry of each slot that came up whose key
    /// still has a tick filed (`filed(key)`) that is due goes to `fire` (which must
    /// forget that tick, or file another); one filed for a later turn of the wheel in
    /// the same slot stays; any other is stale and dropped.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        mut filed: impl FnMut(K) -> Option<Tick>,
        mut fire: impl FnMut(K),
    ) {
        let now_tick = now.saturating_duration_since(self.origin).as_nanos() / TICK.as_nanos();
        let now_tick = now_tick as Tick;
        if now_tick < self.cursor {
            return;
        }
        // After a long sleep every slot comes up once, not once per turn missed.
        let last = now_tick.min(self.cursor + SLOTS as Tick - 1);
        for tick in self.cursor..=last {
            let slot = (tick % SLOTS as Tick) as usize;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let entries = std::mem::take(&mut self.slots[slot]);
            let mut kept = Vec::new();
            for key in entries {
                match filed(key) {
                    Some(at) if at <= now_tick => fire(key),
                    Some(at) if (at % SLOTS as Tick) as usize == slot => kept.push(key),
                    _ => {}
                }
            }
            // `fire` may have filed more here (a deadline due again at once lands on
            // the cursor): keep those too.
            kept.append(&mut self.slots[slot]);
            if kept.is_empty() {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
            self.slots[slot] = kept;
        }
        self.cursor = now_tick + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
        let filed = |key: u8| Some([0, 700, 90][usize::from(key)]);
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
    }
}
