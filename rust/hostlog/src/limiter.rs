//! At most one line per key per interval, with the count of those left out meanwhile: a peer
//! that retries a failing handshake, or floods malformed frames, costs a map lookup per event,
//! not a log line.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Per-key rate limit (pure: the caller passes the time).
#[derive(Debug)]
pub struct RateLimiter<K> {
    interval: Duration,
    keys_max: usize,
    /// key -> (when its last line was let through, events left out since).
    last: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// One line per key per `interval`; past `keys_max` keys, those quiet for an interval are
    /// forgotten (so the map stays bounded under a flood of distinct peers).
    pub fn new(interval: Duration, keys_max: usize) -> Self {
        RateLimiter {
            interval,
            keys_max,
            last: HashMap::new(),
        }
    }

    /// `Some(left out since the previous line)` if an event of `key` at `now` is to be logged,
    /// `None` if it is left out (and counted).
    pub fn admit(&mut self, key: K, now: Instant) -> Option<u64> {
        if self.last.len() >= self.keys_max {
            let interval = self.interval;
            self.last
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < interval);
        }
        match self.last.get_mut(&key) {
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
            Some(entry) if now.saturating_duration_since(entry.0) >= self.interval => {
                let left_out = entry.1;
                *entry = (now, 0);
                Some(left_out)
            }
            Some(entry) => {
                entry.1 += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_count_left_out() {
        let mut limit = RateLimiter::new(Duration::from_secs(10), 16);
        let t0 = Instant::now();
        assert_eq!(limit.admit("a", t0), Some(0));
        for i in 1..5 {
            assert_eq!(limit.admit("a", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.admit("b", t0), Some(0), "keys are limited apart");
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(10)), Some(4));
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(21)), Some(0));
    }

    #[test]
    fn quiet_keys_are_forgotten_past_the_bound() {
        let mut limit = RateLimiter::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        limit.admit(1, t0);
        limit.admit(2, t0);
        limit.admit(3, t0 + Duration::from_secs(2));
        assert!(limit.last.len() <= 2, "{:?}", limit.last.len());
    }
}
