//! A log-linear latency histogram that load workers can ship to the parent as JSON and
//! the parent can merge: 64 sub-buckets per power of two, so every recorded value is
//! known to within 1.6 %, in constant memory whatever the number of samples.

use serde::{Deserialize, Serialize};

/// Values below this are exact.
const EXACT: u64 = 128;
/// Sub-buckets per power of two above [`EXACT`].
const SUB: u64 = 64;

/// Counts of microsecond values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Histogram {
    /// `(bucket, count)` for the non-empty buckets, sparse so that a worker's report
    /// stays a short line.
    buckets: std::collections::BTreeMap<u32, u64>,
    count: u64,
    max: u64,
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        *self.buckets.entry(bucket(micros)).or_default() += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (&bucket, &count) in &other.buckets {
            *self.buckets.entry(bucket).or_default() += count;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `p`-th percentile (nearest rank), as the lower bound of its bucket (the
    /// maximum for p = 100); NaN when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        if p >= 100.0 {
            return self.max as f64;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&bucket, &count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return lower_bound(bucket).min(self.max) as f64;
            }
        }
        self.max as f64
    }
}

fn bucket(value: u64) -> u32 {
    if value < EXACT {
        return value as u32;
    }
    let exp = 63 - u64::from(value.leading_zeros()); // ≥ 7
    let sub = (value >> (exp - 6)) - SUB; // 0..64
    (EXACT + (exp - 7) * SUB + sub) as u32
}

fn lower_bound(bucket: u32) -> u64 {
    let bucket = u64::from(bucket);
    if bucket < EXACT {
        return bucket;
    }
    let exp = (bucket - EXACT) / SUB + 7;
    let sub = (bucket - EXACT) % SUB;
    (SUB + sub) << (exp - 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_two_percent() {
        for value in [0, 1, 127, 128, 129, 1000, 12_345, 999_999, 10_000_000_000] {
            let low = lower_bound(bucket(value));
            assert!(low <= value, "{value}: {low}");
            assert!(
                (value - low) as f64 <= value as f64 / 60.0,
                "{value}: {low}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=50 {
            a.record(v);
        }
        for v in 51..=100 {
            b.record(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert_eq!(a.percentile(50.0), 50.0);
        assert_eq!(a.percentile(99.0), 99.0);
        assert_eq!(a.percentile(100.0), 100.0);
    }
}
