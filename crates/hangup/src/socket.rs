//! Applying a [`LivenessPolicy`] to a socket, and reading back what the kernel runs.

use std::io;
use std::time::Duration;

use hangup_core::{Keepalive, KeepaliveTimers, LivenessPolicy};
use socket2::{SockRef, TcpKeepalive};

/// Sets the socket options of `policy` on a TCP socket.
///
/// - keepalive: `SO_KEEPALIVE`, and with tuned timers `TCP_KEEPIDLE`, `TCP_KEEPINTVL`,
///   `TCP_KEEPCNT` (whole seconds, as the kernel counts them);
/// - `TCP_USER_TIMEOUT` (milliseconds; Linux only): how long sent data may stay
///   unacknowledged before the kernel drops the connection with `ETIMEDOUT`. Linux
///   also applies it to keepalive probing, which bounds keepalive by D even when its
///   one-second granularity would make it slower;
/// - `TCP_NODELAY`, so that one-line replies and probes leave at once.
///
/// The watch and the timeouts of the policy are not socket options: the driver applies
/// them.
///
/// ```
/// use std::time::Duration;
/// use hangup::{apply_policy, read_liveness, LivenessPolicy};
///
/// # fn main() -> std::io::Result<()> {
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let stream = std::net::TcpStream::connect(listener.local_addr()?)?;
/// apply_policy(&stream, &LivenessPolicy::from_dead_after(Duration::from_secs(30)))?;
/// let live = read_liveness(&stream)?;
/// let keepalive = live.keepalive.expect("keepalive is on");
/// assert_eq!(keepalive.idle, Duration::from_secs(15)); // D/2
/// assert_eq!(keepalive.interval, Duration::from_secs(3)); // D/10
/// # #[cfg(target_os = "linux")]
/// assert_eq!(live.user_timeout, Some(Duration::from_millis(29_750))); // D − 250 ms
/// # Ok(())
/// # }
/// ```
pub fn apply_policy<'s>(socket: impl Into<SockRef<'s>>, policy: &LivenessPolicy) -> io::Result<()> {
    let socket = socket.into();
    socket.set_tcp_nodelay(true)?;
    match policy.keepalive {
        Keepalive::Off => socket.set_keepalive(false)?,
        Keepalive::Os => socket.set_keepalive(true)?,
        Keepalive::Tuned(timers) => {
            let params = TcpKeepalive::new()
                .with_time(timers.idle)
                .with_interval(timers.interval)
                .with_retries(timers.count);
            socket.set_tcp_keepalive(&params)?;
            socket.set_keepalive(true)?;
        }
    }
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(policy.user_timeout)?;
    Ok(())
}

/// The liveness-related options a socket carries, as read back with `getsockopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLiveness {
    /// Keepalive: off, on with the timers the kernel reports.
    pub keepalive: Option<KeepaliveTimers>,
    /// TCP_USER_TIMEOUT, `None` when unset (0).
    pub user_timeout: Option<Duration>,
}

/// Reads the liveness options of a TCP socket back from the kernel (see
/// [`apply_policy`] for an example).
pub fn read_liveness<'s>(socket: impl Into<SockRef<'s>>) -> io::Result<SocketLiveness> {
    let socket = socket.into();
    let keepalive = if socket.keepalive()? {
        Some(KeepaliveTimers {
            idle: socket.tcp_keepalive_time()?,
            interval: socket.tcp_keepalive_interval()?,
            count: socket.tcp_keepalive_retries()?,
        })
    } else {
        None
    };
    #[cfg(target_os = "linux")]
    let user_timeout = socket.tcp_user_timeout()?;
    #[cfg(not(target_os = "linux"))]
    let user_timeout = None;
    Ok(SocketLiveness {
        keepalive,
        user_timeout,
    })
}
