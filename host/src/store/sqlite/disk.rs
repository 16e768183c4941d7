//! `store.min_free_mb`: new messages are refused while the disk holding
//! the message log has less free space than that, so that no channel (a
//! hostile plugin delivering in a loop, or a flood of webhooks) fills the
//! disk the log and the rest of the machine live on. The log is the one
//! store that grows without a bound of its own (key-value stores and
//! outboxes have theirs); refusing its new rows loses nothing: a plugin
//! whose `deliver` fails keeps its upstream offset and retries, a webhook
//! sender gets `503`, a `send` is refused before the channel sends it.

use crate::sync::MutexExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `store.min_free_mb`'s default.
pub const DEFAULT_MIN_FREE_MB: u64 = 256;

/// How long a reading of the free space is used before it is taken again.
const RECHECK: Duration = Duration::from_millis(100);

pub struct DiskFloor {
    dir: PathBuf,
    /// `store.min_free_mb` in bytes; 0: no floor.
    min_free: AtomicU64,
    /// The last reading: when, and why new messages are refused (if they
    /// are).
    last: Mutex<Option<(Instant, Option<String>)>>,
}

impl DiskFloor {
    pub fn new(dir: &Path) -> DiskFloor {
        DiskFloor {
            dir: dir.to_path_buf(),
            min_free: AtomicU64::new(DEFAULT_MIN_FREE_MB * 1024 * 1024),
            last: Mutex::new(None),
        }
    }

    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
        *self.last.guard() = None;
    }

    /// Why new messages are refused now, if they are: the free space is
    /// read at most every [`RECHECK`], so this is cheap to ask per write.
    pub fn low(&self) -> Option<String> {
        let min = self.min_free.load(Ordering::Relaxed);
        if min == 0 {
            return None;
        }
        let mut last = self.last.guard();
        if let Some((at, why)) = &*last {
            if at.elapsed() < RECHECK {
                return why.clone();
            }
        }
        let why = match free_bytes(&self.dir) {
            Ok(free) if free < min => Some(format!(
                "the disk holding the message log ({}) has {} MiB free, below store.min_free_mb = {}: new messages are refused until there is more (free disk space, lower store.retention_days or set store.max_bytes, or lower store.min_free_mb)",
                self.dir.display(),
                free / (1024 * 1024),
                min / (1024 * 1024)
            )),
            Ok(_) => None,
            Err(e) => {
                // Not knowing is not a reason to refuse messages.
                if last.is_none() {
                    tracing::warn!(dir = %self.dir.display(), "cannot read the disk's free space (store.min_free_mb is not enforced): {e}");
                }
                None
            }
        };
        let was_low = last.as_ref().is_some_and(|(_, w)| w.is_some());
        match (&why, was_low) {
            (Some(w), false) => tracing::error!("{w}"),
            (None, true) => {
                tracing::info!("the message log's disk has room again: new messages are taken")
            }
            _ => {}
        }
        *last = Some((Instant::now(), why.clone()));
        why
    }
}

/// Bytes an unprivileged process may still write on the file system
/// holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
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
        floor.set_min_free_bytes(1);
        assert_eq!(floor.low(), None);
        floor.set_min_free_bytes(0);
        assert_eq!(floor.low(), None);
    }
}
