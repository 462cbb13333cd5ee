//! `--time-scale N`: the lab's namespaces get Linux's TCP timers divided by N, so that
//! the `os-defaults` and `keepalive-os` columns show the kernel's own verdicts
//! (ETIMEDOUT, EHOSTUNREACH, ECONNRESET) within minutes instead of hours. Every figure
//! measured this way is labelled *scaled*; multiply by N for the unscaled prediction.
//!
//! The timers are per network namespace (`net.ipv4.*` sysctls), so the host is left
//! alone. What can be divided and what cannot:
//!
//! - `tcp_keepalive_time` (7200 s) and `tcp_keepalive_intvl` (75 s) are times: divided
//!   by N, in whole seconds of at least 1 (the kernel's unit). N = 75 divides both
//!   exactly: 96 s and 1 s.
//! - `tcp_keepalive_probes` (9) is a count: kept.
//! - `tcp_retries2` (15) is a count, not a time. Linux gives up on unacknowledged data
//!   when the time since the first retransmission exceeds what 15 retransmissions would
//!   take with exponential backoff from TCP_RTO_MIN = 200 ms, capped at TCP_RTO_MAX =
//!   120 s ([`retries_timeout`]: 924.6 s for 15). That 200 ms base is a compile-time
//!   constant, so the time cannot be divided; instead the lab lowers the count to the
//!   one whose timeout is nearest 924.6 s / N ([`TimeScale::retries2`]) and reports
//!   the measured time beside the kernel's formula for that count.

use std::time::Duration;

/// Linux's `net.ipv4.tcp_keepalive_time`, in seconds.
pub const LINUX_KEEPALIVE_TIME_S: u64 = 7200;
/// Linux's `net.ipv4.tcp_keepalive_intvl`, in seconds.
pub const LINUX_KEEPALIVE_INTVL_S: u64 = 75;
/// Linux's `net.ipv4.tcp_keepalive_probes`.
pub const LINUX_KEEPALIVE_PROBES: u64 = 9;
/// Linux's `net.ipv4.tcp_retries2`.
pub const LINUX_RETRIES2: u32 = 15;
/// `TCP_RTO_MIN` (include/net/tcp.h), the base of the retransmission timeout model.
const RTO_MIN: Duration = Duration::from_millis(200);
/// `TCP_RTO_MAX`, the backoff's cap (the default of `net.ipv4.tcp_rto_max_ms`).
const RTO_MAX: Duration = Duration::from_secs(120);

/// How long Linux retransmits before it gives up after `retries` (tcp_retries2) on an
/// established connection: `tcp_model_timeout` in net/ipv4/tcp_timer.c, backoff
/// doubling from 200 ms until the 120 s cap, then linear.
pub fn retries_timeout(retries: u32) -> Duration {
    let ratio = (RTO_MAX.as_millis() / RTO_MIN.as_millis()) as u64;
    let linear_backoff_thresh = 63 - ratio.leading_zeros(); // ilog2
    if retries <= linear_backoff_thresh {
        RTO_MIN * ((2u32 << retries) - 1)
    } else {
        RTO_MIN * ((2u32 << linear_backoff_thresh) - 1)
            + RTO_MAX * (retries - linear_backoff_thresh)
    }
}

/// When Linux's keepalive declares an idle peer dead: time + probes × interval.
pub fn keepalive_verdict(time_s: u64, intvl_s: u64, probes: u64) -> Duration {
    Duration::from_secs(time_s + probes * intvl_s)
}

/// The TCP timers of the lab's namespaces divided by a factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeScale {
    /// N: every time is divided by it.
    pub factor: u32,
}

impl TimeScale {
    /// `tcp_keepalive_time`: 7200 s / N, rounded, at least 1 s.
    pub fn keepalive_time_s(self) -> u64 {
        scaled_seconds(LINUX_KEEPALIVE_TIME_S, self.factor)
    }

    /// `tcp_keepalive_intvl`: 75 s / N, rounded, at least 1 s.
    pub fn keepalive_intvl_s(self) -> u64 {
        scaled_seconds(LINUX_KEEPALIVE_INTVL_S, self.factor)
    }

    /// `tcp_retries2`: the count whose timeout is nearest 924.6 s / N (at least 1).
    pub fn retries2(self) -> u32 {
        let wanted = retries_timeout(LINUX_RETRIES2).as_secs_f64() / f64::from(self.factor);
        (1..=LINUX_RETRIES2)
            .min_by(|&a, &b| {
                let off = |r: u32| (retries_timeout(r).as_secs_f64() - wanted).abs();
                off(a).total_cmp(&off(b))
            })
            .unwrap_or(LINUX_RETRIES2)
    }

    /// The keepalive verdict these sysctls give (time + 9 × interval).
    pub fn keepalive_verdict(self) -> Duration {
        keepalive_verdict(
            self.keepalive_time_s(),
            self.keepalive_intvl_s(),
            LINUX_KEEPALIVE_PROBES,
        )
    }

    /// The sysctls to write in every endpoint namespace.
    pub fn sysctls(self) -> [(&'static str, String); 4] {
        [
            (
                "net.ipv4.tcp_keepalive_time",
                self.keepalive_time_s().to_string(),
            ),
            (
                "net.ipv4.tcp_keepalive_intvl",
                self.keepalive_intvl_s().to_string(),
            ),
            (
                "net.ipv4.tcp_keepalive_probes",
                LINUX_KEEPALIVE_PROBES.to_string(),
            ),
            ("net.ipv4.tcp_retries2", self.retries2().to_string()),
        ]
    }

    /// A cap long enough for the scaled kernel verdicts: the keepalive verdict and the
    /// retransmission timeout, with a quarter and 2 s to spare.
    pub fn cap(self) -> Duration {
        let longest = self
            .keepalive_verdict()
            .max(retries_timeout(self.retries2()));
        longest + longest / 4 + Duration::from_secs(2)
    }
}

fn scaled_seconds(seconds: u64, factor: u32) -> u64 {
    let factor = u64::from(factor.max(1));
    ((seconds + factor / 2) / factor).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_timeout_follows_the_kernel_model() {
        // (2^(r+1) − 1) × 200 ms up to r = 9 (ilog2(120 s / 200 ms) = 9), then 120 s each.
        assert_eq!(retries_timeout(1), Duration::from_millis(600));
        assert_eq!(retries_timeout(5), Duration::from_millis(12_600));
        assert_eq!(retries_timeout(9), Duration::from_millis(204_600));
        assert_eq!(retries_timeout(10), Duration::from_millis(324_600));
        assert_eq!(retries_timeout(15), Duration::from_millis(924_600));
    }

    #[test]
    fn seventy_five_divides_keepalive_exactly() {
        let scale = TimeScale { factor: 75 };
        assert_eq!(scale.keepalive_time_s(), 96);
        assert_eq!(scale.keepalive_intvl_s(), 1);
        assert_eq!(scale.keepalive_verdict(), Duration::from_secs(105));
        assert_eq!(
            scale.keepalive_verdict() * 75,
            keepalive_verdict(7200, 75, 9)
        );
        // 924.6 s / 75 = 12.3 s: 5 retries (12.6 s) is nearest.
        assert_eq!(scale.retries2(), 5);
    }

    #[test]
    fn no_scale_keeps_linux_defaults() {
        let scale = TimeScale { factor: 1 };
        assert_eq!(scale.keepalive_time_s(), 7200);
        assert_eq!(scale.keepalive_intvl_s(), 75);
        assert_eq!(scale.retries2(), 15);
        // Times never reach 0 s, the kernel's unit is a second.
        assert_eq!(TimeScale { factor: 10_000 }.keepalive_intvl_s(), 1);
    }
}
