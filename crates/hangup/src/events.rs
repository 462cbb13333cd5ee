//! Event timestamps. Events are `tracing` events with target `hangup::event`, a field
//! `event` naming them (SPEC §5) and `ts_ns`, Unix time in nanoseconds, so that other
//! processes (the lab, the bench) can measure detection from outside.

use std::time::{SystemTime, UNIX_EPOCH};

/// The `tracing` target of every hangup event.
pub const TARGET: &str = "hangup::event";

/// Unix time now, in nanoseconds.
pub fn ts_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
