//! A plugin's log: every line a plugin causes — its `log` import, its
//! stdout and stderr, a destination its grants refuse, a key-value write
//! that failed, a call that failed — goes to `tracing` under its id, within
//! a budget of lines per second (`plugins.log_lines_per_second`) shared by
//! all its instances. Lines past the budget are dropped and counted; the
//! count is logged with the next line that fits. Each line is cut to
//! [`MAX_LINE`] bytes. So a plugin that logs in a loop cannot fill the
//! daemon's log or spend its CPU on formatting.

use crate::metrics::Metrics;
use crate::sync::MutexExt;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The longest line kept; the rest of a longer line is cut, and the cut
/// is said at its end.
pub const MAX_LINE: usize = 8192;

use crate::rate::TokenBucket;
pub use crate::rate::BURST_SECONDS;

/// One plugin's log budget (per load: a reload starts a fresh one).
pub struct PluginLog {
    id: Arc<str>,
    /// Lines per second; 0: no bound.
    per_second: u32,
    bucket: Mutex<Bucket>,
    /// Lines dropped since the plugin was loaded.
    dropped_total: AtomicU64,
    /// Where dropped lines are counted for `GET /metrics` (none while a
    /// file is being loaded).
    metrics: Option<Arc<Metrics>>,
}

struct Bucket {
    tokens: TokenBucket,
    /// Lines dropped since the last one that fitted.
    dropped: u64,
}

impl PluginLog {
    pub fn new(id: &str, per_second: u32, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self {
            id: Arc::from(id),
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: TokenBucket::full(per_second, Instant::now()),
                dropped: 0,
            }),
            dropped_total: AtomicU64::new(0),
            metrics,
        })
    }

    /// The plugin's id (its file's name while it is being loaded).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Lines dropped since the plugin was loaded.
    pub fn dropped(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Whether one more line fits the budget (call it only for a line that
    /// would be written: one whose level is enabled). A line that fits
    /// after some were dropped is preceded by a warning that counts them.
    pub fn admit(&self) -> bool {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let mut b = self.bucket.guard();
        if !b.tokens.take(self.per_second, now) {
            b.dropped += 1;
            drop(b);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.plugin_log_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        let dropped = std::mem::take(&mut b.dropped);
        drop(b);
        if dropped > 0 {
            tracing::warn!(
                plugin = &*self.id,
                dropped,
                "plugin `{}` logged more than plugins.log_lines_per_second = {} (bursts of {} s): {dropped} of its lines were dropped",
                self.id,
                self.per_second,
                BURST_SECONDS
            );
        }
        true
    }
}

/// `text` cut to [`MAX_LINE`] bytes (on a character boundary), saying how
/// much was cut.
pub fn bounded(text: &str) -> Cow<'_, str> {
    super::contract::cut(text, MAX_LINE)
}

/// Writes one event at `level` under the plugin's id if that level is
/// enabled and the line fits the plugin's budget. `level` must be a
/// constant (`tracing::Level::WARN`).
macro_rules! plugin_event {
    ($log:expr, $level:expr, $($rest:tt)+) => {
        if tracing::enabled!($level) && $log.admit() {
            tracing::event!($level, plugin = $log.id(), $($rest)+);
        }
    };
}
pub(crate) use plugin_event;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_fits_then_lines_are_dropped_and_counted() {
        let log = PluginLog::new("p", 5, None);
        let at = log.bucket.guard().tokens.at();
        // The burst: 5 lines a second × 10 s.
        let fitted = (0..200).filter(|_| log.admit_at(at)).count();
        assert_eq!(fitted, 50);
        assert_eq!(log.dropped(), 150);
        let unbounded = PluginLog::new("q", 0, None);
        assert!((0..10_000).all(|_| unbounded.admit()));
        assert_eq!(unbounded.dropped(), 0);
    }

    #[test]
    fn the_budget_refills_at_its_rate_up_to_the_burst() {
        let log = PluginLog::new("p", 1000, None);
        let at = log.bucket.guard().tokens.at();
        while log.admit_at(at) {}
        let later = |ms| at + std::time::Duration::from_millis(ms);
        // 20 ms at 1000 lines a second: 20 lines.
        assert_eq!((0..100).filter(|_| log.admit_at(later(20))).count(), 20);
        // A minute later: the burst (10 s worth), not a minute's worth.
        let back = (0..20_000).filter(|_| log.admit_at(later(60_020))).count();
        assert_eq!(back, 10_000);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        // "a" then two-byte characters: byte MAX_LINE is inside one.
        let long = format!("a{}", "é".repeat(MAX_LINE));
        let cut = bounded(&long);
        let kept = MAX_LINE - 1;
        assert_eq!(
            cut,
            format!("{}… ({} bytes cut)", &long[..kept], long.len() - kept)
        );
    }
}
