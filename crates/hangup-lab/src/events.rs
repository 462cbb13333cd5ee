//! Clock and event helpers. Every hangup process logs JSON events with `ts_ns`, Unix
//! time in ns (SPEC §5); the lab takes the fault's time from the same clock
//! (CLOCK_REALTIME is shared by all network namespaces), so detection is simply
//! `event.ts_ns - fault_ns`.

use std::time::Duration;

use serde_json::Value;

// The clock is the one the events are stamped with.
pub(crate) use hangup::events::ts_ns;

/// The event's name (`event` field).
pub(crate) fn name(event: &Value) -> &str {
    event["event"].as_str().unwrap_or("")
}

/// The event's `ts_ns`.
pub(crate) fn ts(event: &Value) -> u64 {
    event["ts_ns"].as_u64().unwrap_or(0)
}

/// The event's `peer` field (the other end's address, as the process names it).
pub(crate) fn peer(event: &Value) -> &str {
    event["peer"].as_str().unwrap_or("")
}

/// The event's `cause`, if it has one.
pub(crate) fn cause(event: &Value) -> Option<&str> {
    event["cause"].as_str()
}

/// Time from `from_ns` to `to_ns` (zero if `to_ns` is earlier).
pub(crate) fn elapsed(from_ns: u64, to_ns: u64) -> Duration {
    Duration::from_nanos(to_ns.saturating_sub(from_ns))
}
