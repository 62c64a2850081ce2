//! Pure: the broker's per-uid rate limit (a token bucket per uid) and the
//! bookkeeping that keeps its tables bounded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tables are pruned of idle entries when they grow past this.
const PRUNE_AT: usize = 4096;

/// A token bucket: `capacity` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Requests per uid and minute, with bursts of a quarter of that.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    capacity: f64,
    buckets: HashMap<u32, Bucket>,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            capacity: f64::from((per_minute / 4).max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one request of `uid` at `now`; false when over the limit.
    pub fn allow(&mut self, uid: u32, now: Instant) -> bool {
        if self.buckets.len() >= PRUNE_AT {
            self.prune(now);
        }
        let (per_second, capacity) = (self.per_second, self.capacity);
        let b = self.buckets.entry(uid).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Seconds until `uid` may ask again (for the message).
    pub fn retry_after(&self, uid: u32) -> Duration {
        let missing = self
            .buckets
            .get(&uid)
            .map_or(0.0, |b| (1.0 - b.tokens).max(0.0));
        Duration::from_secs_f64((missing / self.per_second).ceil().max(1.0))
    }

    /// Drops buckets that have refilled: they are the same as no entry.
    fn prune(&mut self, now: Instant) {
        let (per_second, capacity) = (self.per_second, self.capacity);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * per_second < capacity
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_the_rate() {
        let mut r = RateLimit::new(60); // 1/s, bursts of 15
        let t = Instant::now();
        assert!((0..15).all(|_| r.allow(7, t)));
        assert!(!r.allow(7, t));
        assert_eq!(r.retry_after(7), Duration::from_secs(1));
        // other users are not affected
        assert!(r.allow(8, t));
        assert!(r.allow(7, t + Duration::from_millis(1000)));
        assert!(!r.allow(7, t + Duration::from_millis(1100)));
        // a long pause refills to the burst, no more
        let later = t + Duration::from_secs(3600);
        assert!((0..15).all(|_| r.allow(7, later)));
        assert!(!r.allow(7, later));
    }

    #[test]
    fn tiny_rates_still_allow_one() {
        let mut r = RateLimit::new(1);
        let t = Instant::now();
        assert!(r.allow(1, t));
        assert!(!r.allow(1, t));
        assert_eq!(r.retry_after(1), Duration::from_secs(60));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut r = RateLimit::new(60);
        let t = Instant::now();
        for uid in 0..PRUNE_AT as u32 {
            r.allow(uid, t);
        }
        assert_eq!(r.len(), PRUNE_AT);
        r.allow(999_999, t + Duration::from_secs(60));
        assert_eq!(r.len(), 1);
    }
}
