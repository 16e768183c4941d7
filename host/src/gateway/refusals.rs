//! A rate-limited log of refusals (connections over the limit, bad Host or
//! Origin, slow headers or bodies): a flood must not bury the log in one
//! line per refused peer. The first refusal after a quiet spell is logged at
//! once; later ones are counted and reported in one line per interval.

use crate::sync::MutexExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one refusal line per this interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct RefusalLog {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Records one refusal of `what` because of `why`; logs it at WARN unless
    /// a line was written less than [`REPORT_INTERVAL`] ago (then it is
    /// counted, logged at DEBUG, and the count goes into the next line).
    /// Returns whether a WARN line was written.
    pub fn note(&self, what: &str, why: &str) -> bool {
        let mut s = self.state.guard();
        let now = Instant::now();
        if s.last
            .is_some_and(|t| now.duration_since(t) < REPORT_INTERVAL)
        {
            s.suppressed += 1;
            tracing::debug!("refused {what}: {why}");
            return false;
        }
        let more = std::mem::take(&mut s.suppressed);
        s.last = Some(now);
        drop(s);
        if more > 0 {
            tracing::warn!(
                suppressed = more,
                "refused {what}: {why} (and {more} other refusals in the last {} s)",
                REPORT_INTERVAL.as_secs()
            );
        } else {
            tracing::warn!("refused {what}: {why}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_line() {
        let log = RefusalLog::default();
        assert!(log.note("connection", "full"));
        let written = (0..2000).filter(|_| log.note("connection", "full")).count();
        assert_eq!(written, 0);
        assert_eq!(log.state.lock().unwrap().suppressed, 2000);
    }
}
