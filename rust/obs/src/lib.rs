//! Latency histograms cheap enough for the hot path: fixed buckets, two relaxed atomic adds per
//! observation, no lock, no allocation. Readers take a [`HistogramSnapshot`] in Prometheus'
//! shape (cumulative bucket counts, sum in seconds); a snapshot taken while writers run may be
//! off by the observations in flight, which statistics tolerate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, in nanoseconds (25 µs .. 60 s; `+Inf` is implicit). One layout
/// for every histogram: an fsync on a fast disk is tens of µs, a snapshot transfer seconds.
pub const BOUNDS_NS: [u64; 20] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Observations of one duration (per bucket, not cumulative) and their sum.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let index = BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observes the time since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(BUCKETS);
        let mut total = 0u64;
        for bucket in &self.buckets {
            total += bucket.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        HistogramSnapshot {
            bounds_s: BOUNDS_NS.iter().map(|ns| *ns as f64 / 1e9).collect(),
            cumulative,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: total,
        }
    }
}

/// Prometheus' view of a histogram: `cumulative[i]` observations were ≤ `bounds_s[i]`; the
/// last entry (one more than the bounds) is the `+Inf` bucket and equals `count`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds_s: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_covers_them() {
        let h = Histogram::new();
        h.observe(Duration::from_nanos(25_000)); // exactly on a bound: that bucket (le)
        h.observe(Duration::from_nanos(25_001));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(3600)); // above every bound: +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative.len(), BOUNDS_NS.len() + 1);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        let le_5ms = BOUNDS_NS.iter().position(|b| *b == 5_000_000).unwrap();
        assert_eq!(s.cumulative[le_5ms - 1], 2);
        assert_eq!(s.cumulative[le_5ms], 3);
        assert_eq!(s.cumulative[BOUNDS_NS.len() - 1], 3);
        assert_eq!(*s.cumulative.last().unwrap(), 4);
        let expected = 25e-6 + 25.001e-6 + 3e-3 + 3600.0;
        assert!((s.sum_s - expected).abs() < 1e-9, "{}", s.sum_s);
        assert_eq!(s.bounds_s[0], 25e-6);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe(Duration::from_micros(t * 1000 + i % 7));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }
}
