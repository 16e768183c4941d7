//! Flood control for what the bot sends: servers queue a client's lines and
//! drop it when too many arrive at once (InspIRCd: "RecvQ exceeded";
//! others: "Excess Flood"). A token bucket lets `burst` lines out at once,
//! then one every `interval_ms`.

pub struct Throttle {
    burst: u32,
    interval_ms: u64,
    tokens: u32,
    /// When the bucket last gained a token (or was full).
    last_ms: u64,
}

impl Throttle {
    pub fn new(burst: u32, interval_ms: u64, now_ms: u64) -> Self {
        let burst = burst.max(1);
        Throttle {
            burst,
            interval_ms: interval_ms.max(1),
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes a token if one is there: true means a line may go out now.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let earned = now_ms.saturating_sub(self.last_ms) / self.interval_ms;
        if earned > 0 {
            let tokens = (self.tokens as u64 + earned).min(self.burst as u64);
            self.tokens = tokens as u32;
            self.last_ms = if self.tokens == self.burst {
                now_ms
            } else {
                self.last_ms + earned * self.interval_ms
            };
        }
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == self.burst {
            // Leaving a full bucket starts the refill clock.
            self.last_ms = now_ms;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let mut t = Throttle::new(3, 1000, 10_000);
        assert!(t.take(10_000) && t.take(10_000) && t.take(10_001));
        assert!(!t.take(10_500), "a fourth line inside the burst window");
        assert!(t.take(11_000));
        assert!(!t.take(11_999));
        assert!(t.take(12_000));
        // A long pause refills the bucket, but not beyond the burst.
        let n = (0..10).filter(|_| t.take(60_000)).count();
        assert_eq!(n, 3);
    }

    #[test]
    fn a_clock_going_back_only_waits() {
        let mut t = Throttle::new(1, 500, 5_000);
        assert!(t.take(5_000));
        assert!(!t.take(4_000));
        assert!(t.take(5_500));
    }
}
