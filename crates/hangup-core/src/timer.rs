//! The connection's timers: a closed set, one deadline each, and the earliest of them
//! for the driver's single sleep.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Every timer a connection can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// An unfinished line has waited `partial_line_timeout` for its newline.
    PartialLine,
    /// Pending replies made no write progress for `write_timeout`: the peer stalled.
    WriteStall,
    /// Bytes handed to the kernel `ack_timeout` ago: has the peer acknowledged any of
    /// them since? Moved by every write (one slot write), asked of TCP_INFO only when due.
    Unacknowledged,
    /// No RST came back within the probe window: the peer only half-closed.
    HalfCloseProbe,
    /// The session's peer has been silent for its heartbeat's dead-after (1.5 × H).
    /// Every inbound read moves it (one slot write: O(1) per heartbeat).
    Heartbeat,
}

impl Timer {
    const ALL: [Timer; 5] = [
        Timer::PartialLine,
        Timer::WriteStall,
        Timer::Unacknowledged,
        Timer::HalfCloseProbe,
        Timer::Heartbeat,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

/// Where a connection's instants count from: its start. Stored as [`Stamp`]s, a
/// connection's several instants take 8 bytes each instead of an `Option<Instant>`'s
/// 16 (and a server holds many connections).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

/// An instant, as nanoseconds after its connection's [`Epoch`] (plus one, so that
/// `Option<Stamp>` needs no extra word). 584 years of range; ordered as the instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(NonZeroU64);

impl Epoch {
    pub fn new(at: Instant) -> Self {
        Self(at)
    }

    pub fn instant(self) -> Instant {
        self.0
    }

    /// `at` as a stamp; an instant before the epoch counts as the epoch itself.
    pub fn stamp(self, at: Instant) -> Stamp {
        let nanos = at.saturating_duration_since(self.0).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX).min(u64::MAX - 1);
        Stamp(NonZeroU64::MIN.saturating_add(nanos))
    }

    /// The instant `stamp` stands for.
    pub fn at(self, stamp: Stamp) -> Instant {
        self.0 + Duration::from_nanos(stamp.0.get() - 1)
    }
}

/// One optional deadline per [`Timer`]; setting one is O(1), finding the next is a scan
/// of a fixed five slots.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Stamp>; Timer::ALL.len()],
}

impl TimerTable {
    /// Arms `timer` for `deadline`, replacing any earlier setting.
    pub fn set(&mut self, timer: Timer, deadline: Stamp) {
        self.deadlines[timer.index()] = Some(deadline);
    }

    /// Disarms `timer`.
    pub fn clear(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// Disarms every timer.
    pub fn clear_all(&mut self) {
        self.deadlines = Default::default();
    }

    /// The deadline of `timer`, if armed.
    pub fn get(&self, timer: Timer) -> Option<Stamp> {
        self.deadlines[timer.index()]
    }

    /// The earliest armed deadline.
    pub fn next_timeout(&self) -> Option<Stamp> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Whether `timer` is armed and due at `now`.
    pub fn is_due(&self, timer: Timer, now: Stamp) -> bool {
        self.get(timer).is_some_and(|deadline| deadline <= now)
    }

    /// Disarms and returns the earliest timer due at `now`, with its deadline, if any.
    ///
    /// Taking them one at a time lets the handling of one disarm the others: after a
    /// late wake-up a close must not be followed by a timer it made moot.
    pub fn pop_expired(&mut self, now: Stamp) -> Option<(Timer, Stamp)> {
        let (deadline, timer) = Timer::ALL
            .into_iter()
            .filter_map(|t| self.get(t).filter(|&d| d <= now).map(|d| (d, t)))
            .min_by_key(|&(deadline, _)| deadline)?;
        self.clear(timer);
        Some((timer, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_timeout_is_the_earliest() {
        let t0 = Instant::now();
        let epoch = Epoch::new(t0);
        let at = |secs| epoch.stamp(t0 + Duration::from_secs(secs));
        let mut table = TimerTable::default();
        assert_eq!(table.next_timeout(), None);
        table.set(Timer::WriteStall, at(5));
        table.set(Timer::PartialLine, at(2));
        assert_eq!(table.next_timeout(), Some(at(2)));
        assert_eq!(table.pop_expired(at(1)), None);
        let late = at(6);
        assert!(table.is_due(Timer::WriteStall, late));
        assert_eq!(table.pop_expired(late), Some((Timer::PartialLine, at(2))));
        assert_eq!(table.pop_expired(late), Some((Timer::WriteStall, at(5))));
        assert!(!table.is_due(Timer::WriteStall, late));
        assert_eq!(table.next_timeout(), None);
    }

    #[test]
    fn pop_expired_takes_the_earliest_first() {
        let t0 = Instant::now();
        let epoch = Epoch::new(t0);
        let at = |secs| epoch.stamp(t0 + Duration::from_secs(secs));
        let mut table = TimerTable::default();
        table.set(Timer::HalfCloseProbe, at(3));
        table.set(Timer::WriteStall, at(1));
        table.set(Timer::PartialLine, at(9));
        let now = at(5);
        assert_eq!(table.pop_expired(now), Some((Timer::WriteStall, at(1))));
        table.clear(Timer::HalfCloseProbe);
        assert_eq!(table.pop_expired(now), None);
        assert_eq!(table.next_timeout(), Some(at(9)));
    }

    #[test]
    fn stamps_are_exact_ordered_and_small() {
        let t0 = Instant::now();
        let epoch = Epoch::new(t0);
        for offset in [0, 1, 999, 1_000_000_007, 86_400 * 1_000_000_000 * 365] {
            let at = t0 + Duration::from_nanos(offset);
            assert_eq!(epoch.at(epoch.stamp(at)), at);
        }
        let (a, b) = (t0 + Duration::from_nanos(5), t0 + Duration::from_nanos(6));
        assert!(epoch.stamp(a) < epoch.stamp(b));
        // Before the epoch: the epoch itself.
        let later = Epoch::new(t0 + Duration::from_secs(1));
        assert_eq!(later.at(later.stamp(t0)), t0 + Duration::from_secs(1));
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }
}
