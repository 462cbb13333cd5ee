//! Client-side pieces: connecting with a liveness policy, reconnect backoff, and the
//! reconnecting [`SessionClient`] built from both.

use std::io;
use std::time::Duration;

use hangup_core::LivenessPolicy;
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::socket::apply_policy;

mod session;

pub use session::{ClientEvent, SendError, SessionClient, SessionConfig, SessionSender};

/// Connects to `addr` and applies `policy` to the socket.
pub async fn connect(addr: impl ToSocketAddrs, policy: &LivenessPolicy) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    apply_policy(&stream, policy)?;
    Ok(stream)
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(cap, base · 2ⁿ)]`, so that clients that lost the same server do not come
/// back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call doubles the ceiling until the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Back to the first delay, after a connection succeeded.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 30 s (SPEC §6).
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_the_cap() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay();
            assert!(delay <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[8], Duration::from_millis(25_600));
        assert_eq!(ceilings[9], Duration::from_secs(30));
        assert_eq!(ceilings[11], Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut delays: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        delays.sort();
        // Full jitter: both halves of [0, 1 s] are used.
        assert!(delays[20] < Duration::from_millis(500));
        assert!(delays[180] > Duration::from_millis(500));
    }
}
