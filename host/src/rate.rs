//! A token bucket: a rate per second, with up to [`BURST_SECONDS`] of it
//! held for a burst. A leaf: the plugins' log budget and the channels'
//! delivery rate each keep one behind their own lock.

use std::time::Instant;

/// How many seconds of a rate may be spent at once (a burst).
pub const BURST_SECONDS: u64 = 10;

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket for `per_second`, as of `now`.
    pub fn full(per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst(per_second),
            at: now,
        }
    }

    /// When it was last refilled.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Refills for the time since the last call (up to the burst).
    fn refill(&mut self, per_second: u32, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(per_second);
        self.tokens = (self.tokens + gained).min(burst(per_second));
        self.at = self.at.max(now);
    }

    /// Takes one token if there is one (`per_second` 0: always).
    pub fn take(&mut self, per_second: u32, now: Instant) -> bool {
        if per_second == 0 {
            return true;
        }
        self.refill(per_second, now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Gives back one token taken for nothing (up to the burst).
    pub fn give_back(&mut self, per_second: u32) {
        self.tokens = (self.tokens + 1.0).min(burst(per_second));
    }

    /// Whether a token is there (`per_second` 0: always), taking none.
    pub fn has(&mut self, per_second: u32, now: Instant) -> bool {
        if per_second == 0 {
            return true;
        }
        self.refill(per_second, now);
        self.tokens >= 1.0
    }
}

fn burst(per_second: u32) -> f64 {
    f64::from(per_second) * BURST_SECONDS as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        for _ in 0..20 {
            assert!(b.take(2, t0));
        }
        assert!(!b.has(2, t0) && !b.take(2, t0));
        // Half a second: one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.has(2, t1));
        assert!(b.take(2, t1));
        assert!(!b.take(2, t1));
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..25).filter(|_| b.take(2, t2)).count(), 20);
        // A rate of 0 is no bound.
        assert!(b.take(0, t2));
    }
}
