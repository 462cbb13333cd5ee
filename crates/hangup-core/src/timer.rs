//! The connection's timers: a closed set, one deadline each, and the earliest of them
//! for the driver's single sleep.

use std::time::Instant;

/// Every timer a connection can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// An unfinished line has waited `partial_line_timeout` for its newline.
    PartialLine,
    /// Pending replies made no write progress for `write_timeout`: the peer stalled.
    WriteStall,
    /// No RST came back within the probe window: the peer only half-closed.
    HalfCloseProbe,
    /// The session's peer has been silent for its heartbeat's dead-after (1.5 × H).
    /// Every inbound read moves it (one slot write: O(1) per heartbeat).
    Heartbeat,
}

impl Timer {
    const ALL: [Timer; 4] = [
        Timer::PartialLine,
        Timer::WriteStall,
        Timer::HalfCloseProbe,
        Timer::Heartbeat,
    ];

    const fn index(self) -> usize {
        self as usize
    }
}

/// One optional deadline per [`Timer`]; setting one is O(1), finding the next is a scan
/// of a fixed four slots.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    /// Arms `timer` for `deadline`, replacing any earlier setting.
    pub fn set(&mut self, timer: Timer, deadline: Instant) {
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
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// The earliest armed deadline.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns the earliest timer due at `now`, if any.
    ///
    /// Taking them one at a time lets the handling of one disarm the others: after a
    /// late wake-up a close must not be followed by a timer it made moot.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let (_, timer) = Timer::ALL
            .into_iter()
            .filter_map(|t| self.get(t).filter(|&d| d <= now).map(|d| (d, t)))
            .min_by_key(|&(deadline, _)| deadline)?;
        self.clear(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_timeout_is_the_earliest() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next_timeout(), None);
        table.set(Timer::WriteStall, t0 + Duration::from_secs(5));
        table.set(Timer::PartialLine, t0 + Duration::from_secs(2));
        assert_eq!(table.next_timeout(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(table.pop_expired(t0 + Duration::from_secs(1)), None);
        let late = t0 + Duration::from_secs(6);
        assert_eq!(table.pop_expired(late), Some(Timer::PartialLine));
        assert_eq!(table.pop_expired(late), Some(Timer::WriteStall));
        assert_eq!(table.next_timeout(), None);
    }

    #[test]
    fn pop_expired_takes_the_earliest_first() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::HalfCloseProbe, t0 + Duration::from_secs(3));
        table.set(Timer::WriteStall, t0 + Duration::from_secs(1));
        table.set(Timer::PartialLine, t0 + Duration::from_secs(9));
        let now = t0 + Duration::from_secs(5);
        assert_eq!(table.pop_expired(now), Some(Timer::WriteStall));
        table.clear(Timer::HalfCloseProbe);
        assert_eq!(table.pop_expired(now), None);
        assert_eq!(table.next_timeout(), Some(t0 + Duration::from_secs(9)));
    }
}
