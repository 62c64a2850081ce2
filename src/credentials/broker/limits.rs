//! Pure: the broker's per-uid limits — a rate (a token bucket per uid),
//! connections held open at once, and log lines about refusals (one per
//! uid and minute, carrying the count of those not logged) — with tables
//! that stay bounded (entries go when they no longer limit anything).

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

/// Connections each uid holds open, so one user cannot take every slot.
#[derive(Debug)]
pub struct PerUid {
    cap: usize,
    open: HashMap<u32, usize>,
}

impl PerUid {
    /// An eighth of `max_connections` per uid, at least 2.
    pub fn new(max_connections: usize) -> Self {
        Self {
            cap: (max_connections / 8).max(2),
            open: HashMap::new(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Counts a new connection of `uid`; false when it already holds `cap`.
    pub fn open(&mut self, uid: u32) -> bool {
        let n = self.open.entry(uid).or_insert(0);
        if *n >= self.cap {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection of `uid` ended.
    pub fn close(&mut self, uid: u32) {
        if let Some(n) = self.open.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&uid);
            }
        }
    }
}

/// Log lines about one uid's refusals: at most one per `every`; the next
/// line carries how many were not logged in between.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    /// Per uid: when its last line was written, refusals not logged since.
    last: HashMap<u32, (Instant, u64)>,
}

impl LogLimit {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// A refusal of `uid` at `now`: `Some(n)` when it is logged, `n` being
    /// the refusals not logged since the last line; `None` when it is only
    /// counted.
    pub fn admit(&mut self, uid: u32, now: Instant) -> Option<u64> {
        if self.last.len() >= PRUNE_AT {
            let every = self.every;
            self.last
                .retain(|_, (at, n)| *n > 0 || now.saturating_duration_since(*at) < every);
        }
        match self.last.get_mut(&uid) {
            Some((at, n)) if now.saturating_duration_since(*at) < self.every => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let missed = *n;
                (*at, *n) = (now, 0);
                Some(missed)
            }
            None => {
                self.last.insert(uid, (now, 0));
                Some(0)
            }
        }
    }

    /// The uids with refusals not logged yet, and their counts (for the
    /// last words at shutdown); the counts start again from 0.
    pub fn unlogged(&mut self) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = self
            .last
            .iter_mut()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(uid, (_, n))| (*uid, std::mem::take(n)))
            .collect();
        out.sort_unstable();
        out
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
    fn connections_per_uid() {
        let mut p = PerUid::new(64);
        assert_eq!(p.cap(), 8);
        assert!((0..8).all(|_| p.open(5)));
        assert!(!p.open(5));
        assert!(p.open(6));
        p.close(5);
        assert!(p.open(5));
        (0..8).for_each(|_| p.close(5));
        p.close(5);
        assert!(!p.open.contains_key(&5));
        assert_eq!(PerUid::new(2).cap(), 2);
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

    #[test]
    fn one_log_line_per_uid_and_minute_with_a_count() {
        let mut l = LogLimit::new(Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(l.admit(7, t), Some(0));
        assert!((1..=100).all(|i| l.admit(7, t + Duration::from_millis(i * 100)).is_none()));
        // another uid has its own minute
        assert_eq!(l.admit(8, t + Duration::from_secs(1)), Some(0));
        assert_eq!(l.unlogged(), vec![(7, 100)]);
        assert!(l.admit(7, t + Duration::from_secs(59)).is_none());
        assert_eq!(l.admit(7, t + Duration::from_secs(60)), Some(1));
        assert!(l.admit(7, t + Duration::from_secs(61)).is_none());
        assert_eq!(l.admit(7, t + Duration::from_secs(200)), Some(1));
        assert!(l.unlogged().is_empty());
        // the table stays bounded; counts not yet logged are kept
        l.admit(7, t + Duration::from_secs(201));
        for uid in 100..100 + PRUNE_AT as u32 {
            l.admit(uid, t + Duration::from_secs(201));
        }
        l.admit(1, t + Duration::from_secs(400));
        assert_eq!(l.last.len(), 2);
        assert_eq!(l.unlogged(), vec![(7, 1)]);
    }
}
