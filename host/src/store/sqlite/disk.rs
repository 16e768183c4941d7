//! `store.min_free_mb`: new messages are refused while the disk holding
//! the message log has less free space than that, so that no channel (a
//! hostile plugin delivering in a loop, or a flood of webhooks) fills the
//! disk the log and the rest of the machine live on. The log is the one
//! store that grows without a bound of its own (key-value stores and
//! outboxes have theirs); refusing its new rows loses nothing: a plugin
//! whose `deliver` fails keeps its upstream offset and retries, a webhook
//! sender gets `503`, a `send` is refused before the channel sends it.

use crate::sync::MutexExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `store.min_free_mb`'s default.
pub const DEFAULT_MIN_FREE_MB: u64 = 256;

/// How long a reading of the free space is used before it is taken again.
const RECHECK: Duration = Duration::from_millis(100);

/// Within this many times the floor, the disk is near it: a channel holding
/// more than half of the log is refused then, so that the others keep the
/// room left (see [`DiskFloor::state`]).
pub const NEAR_FACTOR: u64 = 4;

/// How often a channel refused for its share is logged at most.
const SHARE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long a channel refused for its share stays listed (in `health`)
/// after its last refusal, when nothing else takes it off first: a message
/// of it taken, or the disk no longer near its floor.
const SHARE_LISTED_FOR: Duration = Duration::from_secs(30);

/// One reading of the free space: when, why new messages are refused (if
/// they are), and the free bytes (if they could be read).
type Reading = (Instant, Option<String>, Option<u64>);

pub struct DiskFloor {
    dir: PathBuf,
    /// `store.min_free_mb` in bytes; 0: no floor.
    min_free: AtomicU64,
    /// The last reading.
    last: Mutex<Option<Reading>>,
    /// When a channel refused for its share was last logged.
    share_logged: Mutex<Option<Instant>>,
    /// The channels refused for their share: when they last were, and why.
    refused: Mutex<BTreeMap<String, (Instant, String)>>,
    /// Whether `refused` holds any: read on every new message, so that the
    /// common case takes no lock.
    any_refused: AtomicBool,
    /// Woken when what `health` shows of this changes (the health monitor).
    changed: OnceLock<Arc<tokio::sync::Notify>>,
}

impl DiskFloor {
    pub fn new(dir: &Path) -> DiskFloor {
        DiskFloor {
            dir: dir.to_path_buf(),
            min_free: AtomicU64::new(DEFAULT_MIN_FREE_MB * 1024 * 1024),
            last: Mutex::new(None),
            share_logged: Mutex::new(None),
            refused: Mutex::new(BTreeMap::new()),
            any_refused: AtomicBool::new(false),
            changed: OnceLock::new(),
        }
    }

    /// Sets what is woken when the floor starts or stops refusing, or the
    /// refused channels change.
    pub fn on_change(&self, wake: Arc<tokio::sync::Notify>) {
        let _ = self.changed.set(wake);
    }

    /// Wakes what [`DiskFloor::on_change`] set (the writer also calls it
    /// when its writes start or stop failing).
    pub(super) fn wake(&self) {
        if let Some(n) = self.changed.get() {
            n.notify_one();
        }
    }

    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
        *self.last.guard() = None;
    }

    /// Why new messages are refused now, if they are: the free space is
    /// read at most every [`RECHECK`], so this is cheap to ask per write.
    pub fn low(&self) -> Option<String> {
        self.reading().0
    }

    /// [`DiskFloor::low`], and the free space (MiB) when the disk is within
    /// [`NEAR_FACTOR`] times the floor (and there is a floor), from one
    /// reading (one lock): what the writer asks for each new message.
    pub fn state(&self) -> (Option<String>, Option<u64>) {
        let min = self.min_free.load(Ordering::Relaxed);
        let (why, free) = self.reading();
        let near = match free {
            Some(free) if min > 0 && free < min.saturating_mul(NEAR_FACTOR) => {
                Some(free / (1024 * 1024))
            }
            _ => None,
        };
        (why, near)
    }

    /// Records `channel` as refused for its share (listed by
    /// [`DiskFloor::refused_shares`]), and logs it, at most every 10 s.
    pub fn note_share(&self, channel: &str, why: &str) {
        let listed = self
            .refused
            .guard()
            .insert(channel.to_string(), (Instant::now(), why.to_string()))
            .is_some();
        self.any_refused.store(true, Ordering::Relaxed);
        if !listed {
            self.wake();
        }
        let mut at = self.share_logged.guard();
        if at.is_none_or(|t| t.elapsed() >= SHARE_REPORT_EVERY) {
            *at = Some(Instant::now());
            tracing::error!("{why}");
        }
    }

    /// A new message of `channel` was taken: it is no longer refused.
    pub fn share_taken(&self, channel: &str) {
        if self.any_refused.load(Ordering::Relaxed) {
            let mut refused = self.refused.guard();
            let taken = refused.remove(channel).is_some();
            self.any_refused
                .store(!refused.is_empty(), Ordering::Relaxed);
            drop(refused);
            if taken {
                tracing::info!(%channel, "channel `{channel}` is below its share of the log again: its new messages are taken");
                self.wake();
            }
        }
    }

    /// The disk is not near its floor: no channel is refused for its share.
    pub fn shares_cleared(&self) {
        if self.any_refused.load(Ordering::Relaxed)
            && self.any_refused.swap(false, Ordering::Relaxed)
        {
            self.refused.guard().clear();
            tracing::info!("the message log's disk is no longer near its floor: no channel is refused for its share");
            self.wake();
        }
    }

    /// The channels refused for their share of the log within the last
    /// [`SHARE_LISTED_FOR`] (and not taken since), by name, with why.
    pub fn refused_shares(&self) -> Vec<(String, String)> {
        if !self.any_refused.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut refused = self.refused.guard();
        refused.retain(|_, (at, _)| at.elapsed() < SHARE_LISTED_FOR);
        self.any_refused
            .store(!refused.is_empty(), Ordering::Relaxed);
        refused
            .iter()
            .map(|(c, (_, why))| (c.clone(), why.clone()))
            .collect()
    }

    /// Why new messages are refused, and the free bytes.
    fn reading(&self) -> (Option<String>, Option<u64>) {
        let min = self.min_free.load(Ordering::Relaxed);
        if min == 0 {
            return (None, None);
        }
        let mut last = self.last.guard();
        if let Some((at, why, free)) = &*last {
            if at.elapsed() < RECHECK {
                return (why.clone(), *free);
            }
        }
        let read = free_bytes(&self.dir);
        let why = match read {
            Ok(free) if free < min => Some(format!(
                "the disk holding the message log ({}) has {} MiB free, below store.min_free_mb = {}: new messages are refused until there is more (free disk space, lower store.retention_days or set store.max_bytes, or lower store.min_free_mb)",
                self.dir.display(),
                free / (1024 * 1024),
                min / (1024 * 1024)
            )),
            Ok(_) => None,
            Err(ref e) => {
                // Not knowing is not a reason to refuse messages.
                if last.is_none() {
                    tracing::warn!(dir = %self.dir.display(), "cannot read the disk's free space (store.min_free_mb is not enforced): {e}");
                }
                None
            }
        };
        let was_low = last.as_ref().is_some_and(|(_, w, _)| w.is_some());
        match (&why, was_low) {
            (Some(w), false) => {
                tracing::error!("{w}");
                self.wake();
            }
            (None, true) => {
                tracing::info!("the message log's disk has room again: new messages are taken");
                self.wake();
            }
            _ => {}
        }
        let free = read.ok();
        *last = Some((Instant::now(), why.clone(), free));
        (why, free)
    }
}

/// Bytes an unprivileged process may still write on the file system
/// holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` a buffer of the
    // size `statvfs` fills; it is read only when the call succeeds.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `statvfs` returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the fields' widths differ by target
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_refuses_below_it_and_not_when_off() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let floor = DiskFloor::new(dir.path());
        floor.set_min_free_bytes(free.saturating_mul(2).max(1 << 40));
        let why = floor.low().expect("more than the disk has is refused");
        assert!(why.contains("store.min_free_mb = "), "{why}");
        assert!(why.contains(&dir.path().display().to_string()), "{why}");
        assert!(floor.state().1.is_some(), "below the floor is near it too");
        floor.set_min_free_bytes(1);
        assert_eq!(floor.low(), None);
        assert_eq!(floor.state().1, None);
        // Above the floor, within four times it: near, not low.
        floor.set_min_free_bytes(free / 2);
        assert_eq!(floor.low(), None);
        assert!(floor.state().1.is_some());
        floor.set_min_free_bytes(0);
        assert_eq!(floor.low(), None);
        assert_eq!(floor.state().1, None);
    }
}
