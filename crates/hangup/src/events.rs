//! Events: `tracing` events with target [`TARGET`], a field `event` naming them
//! (SPEC §5) and `ts_ns`, Unix time in nanoseconds, so that other processes (the lab,
//! the bench) can measure detection from outside. Emit them with [`emit!`](crate::emit),
//! which attaches all three.

use std::time::{SystemTime, UNIX_EPOCH};

/// The `tracing` target of every hangup event.
pub const TARGET: &str = "hangup::event";

/// Unix time now, in nanoseconds.
pub fn ts_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Emits a hangup event: a `tracing` event with target [`TARGET`], `event = $name`,
/// `ts_ns` = [`ts_ns()`] and then the given fields, in `tracing`'s field syntax.
/// The level is `INFO` unless one of `tracing`'s level names comes first.
///
/// ```
/// let peer: std::net::SocketAddr = "127.0.0.1:7557".parse().unwrap();
/// hangup::emit!("connection_opened", conn = 1, peer = %peer);
/// hangup::emit!(WARN, "accept_paused", error = "out of descriptors");
/// hangup::emit!("shutdown_started");
/// ```
// `tracing` needs the target as a constant at the call site: a macro, not a function.
#[macro_export]
macro_rules! emit {
    ($level:ident, $name:literal $(, $($fields:tt)*)?) => {
        $crate::__tracing::event!(
            target: $crate::events::TARGET,
            $crate::__tracing::Level::$level,
            event = $name,
            ts_ns = $crate::events::ts_ns()
            $(, $($fields)*)?
        )
    };
    ($name:literal $(, $($fields:tt)*)?) => {
        $crate::emit!(INFO, $name $(, $($fields)*)?)
    };
}
