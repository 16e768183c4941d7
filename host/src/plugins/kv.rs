//! The per-channel key-value store behind `kv-get`/`kv-set`/`kv-delete` and
//! `kv-claim`: one file per key under `<state-dir>/kv/channels/<channel>/`,
//! written atomically (temporary file + rename), so it survives reloads,
//! restarts and crashes.
//!
//! The store is scoped by *channel*, not by plugin: two channels served by
//! one plugin (two Telegram bots) each keep their own `offset:main`.
//! Stores of the first layout (`kv/<plugin-id>/`) are copied to each channel
//! of that plugin once, at start ([`KvStore::migrate_plugin_store`]).

use crate::sync::MutexExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Largest key (bytes) and value accepted.
pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest time a claim may be held (`kv-claim`'s `ttl-ms` is capped to it).
pub const MAX_CLAIM_TTL_MS: u64 = 24 * 3600 * 1000;
/// Expired claims are swept once per this many claims.
const SWEEP_EVERY: u64 = 256;

pub struct KvStore {
    root: PathBuf,
    /// Makes a claim's check-and-record atomic among concurrent instances.
    claim_lock: Mutex<()>,
    claims: AtomicU64,
}

/// Is `name` usable as a directory name for a channel's store?
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A key's file name: hex of the key, or of its SHA-256 when that would be
/// longer than a file name may be.
fn file_name(key: &str) -> String {
    if key.len() <= 100 {
        hex::encode(key.as_bytes())
    } else {
        format!("h-{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

impl KvStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("kv"),
            claim_lock: Mutex::new(()),
            claims: AtomicU64::new(0),
        }
    }

    fn channel_dir(&self, channel: &str) -> Option<PathBuf> {
        safe_name(channel).then(|| self.root.join("channels").join(channel))
    }

    fn path(&self, channel: &str, key: &str) -> Option<PathBuf> {
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
        Some(self.channel_dir(channel)?.join(file_name(key)))
    }

    /// Copies the store of the first layout (`kv/<plugin>/`) into
    /// `channel`'s, unless that channel already has one.
    pub fn migrate_plugin_store(&self, plugin: &str, channel: &str) {
        let Some(dest) = self.channel_dir(channel) else {
            return;
        };
        let src = self.root.join(plugin);
        if !safe_name(plugin) || !src.is_dir() || dest.exists() {
            return;
        }
        let copy = || -> std::io::Result<usize> {
            let tmp = self
                .root
                .join("channels")
                .join(format!(".migrate-{channel}"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            let mut n = 0;
            for e in std::fs::read_dir(&src)? {
                let e = e?;
                if e.file_type()?.is_file() && !e.file_name().to_string_lossy().starts_with('.') {
                    std::fs::copy(e.path(), tmp.join(e.file_name()))?;
                    n += 1;
                }
            }
            std::fs::rename(&tmp, &dest)?;
            Ok(n)
        };
        match copy() {
            Ok(n) => tracing::info!(
                plugin,
                channel,
                keys = n,
                "copied the plugin's key-value store to the channel's (stores are per channel now)"
            ),
            Err(e) => tracing::error!(
                plugin,
                channel,
                "could not migrate the key-value store: {e}"
            ),
        }
    }

    pub fn get(&self, channel: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(channel, key)?).ok()
    }

    pub fn set(&self, channel: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let Some(path) = self.path(channel, key) else {
            return Err(format!(
                "kv key longer than {MAX_KEY_BYTES} bytes, or no channel"
            ));
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "kv value of {} bytes exceeds {MAX_VALUE_BYTES}",
                value.len()
            ));
        }
        write_atomic(&path, value)
    }

    pub fn delete(&self, channel: &str, key: &str) {
        if let Some(p) = self.path(channel, key) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Records `key` as seen for `ttl_ms` unless it already is. `Ok(true)`:
    /// this call recorded it (first sight); `Ok(false)`: it was seen within
    /// its time to live. Atomic among concurrent callers, and persisted, so
    /// a restart does not reopen a replay window.
    pub fn claim(
        &self,
        channel: &str,
        key: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<bool, String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("kv-claim: key longer than {MAX_KEY_BYTES} bytes"));
        }
        let path = self
            .claim_path(channel, key)
            .ok_or("kv-claim: not available while the plugin is being loaded")?;
        let dir = path.parent().ok_or("kv-claim: path has no parent")?;
        let expires = now_ms.saturating_add(ttl_ms.min(MAX_CLAIM_TTL_MS));
        let _g = self.claim_lock.guard();
        if let Ok(s) = std::fs::read_to_string(&path) {
            if s.trim().parse::<u64>().is_ok_and(|t| t > now_ms) {
                return Ok(false);
            }
        }
        // write_atomic creates the directory.
        write_atomic(&path, expires.to_string().as_bytes())?;
        if self.claims.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            sweep(dir, now_ms);
        }
        Ok(true)
    }

    /// Forgets a claim (see [`KvStore::claim`]).
    pub fn unclaim(&self, channel: &str, key: &str) {
        if let Some(path) = self.claim_path(channel, key) {
            let _g = self.claim_lock.guard();
            let _ = std::fs::remove_file(path);
        }
    }

    /// Where `key`'s claim of `channel` is kept (any key length is a safe name).
    fn claim_path(&self, channel: &str, key: &str) -> Option<PathBuf> {
        Some(
            self.channel_dir(channel)?
                .join("claims")
                .join(hex::encode(Sha256::digest(key.as_bytes()))),
        )
    }
}

fn write_atomic(path: &Path, value: &[u8]) -> Result<(), String> {
    let dir = path.parent().ok_or("kv path has no parent")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&tmp, value).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("rename into {}: {e}", path.display())
    })
}

/// Removes expired claims.
fn sweep(dir: &Path, now_ms: u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let expired = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_none_or(|t| t <= now_ms);
        if expired {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_isolation() {
        let dir = tempfile_dir();
        let kv = KvStore::new(&dir);
        assert_eq!(kv.get("a", "k"), None);
        kv.set("a", "k/../x", b"v1").unwrap();
        assert_eq!(kv.get("a", "k/../x").as_deref(), Some(&b"v1"[..]));
        assert_eq!(kv.get("b", "k/../x"), None);
        kv.set("a", "k/../x", b"v2").unwrap();
        assert_eq!(kv.get("a", "k/../x").as_deref(), Some(&b"v2"[..]));
        kv.delete("a", "k/../x");
        assert_eq!(kv.get("a", "k/../x"), None);
        assert!(kv.set("a", &"x".repeat(MAX_KEY_BYTES + 1), b"").is_err());
        // Long keys (hex would pass the file-name limit) work too.
        let long = "k".repeat(MAX_KEY_BYTES);
        kv.set("a", &long, b"v").unwrap();
        assert_eq!(kv.get("a", &long).as_deref(), Some(&b"v"[..]));
        // No store while loading (no channel), nor for unsafe names.
        assert!(kv.set("", "k", b"v").is_err());
        assert!(kv.set("../x", "k", b"v").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn claims_are_once_per_ttl_and_survive_reopen() {
        let dir = tempfile_dir();
        let kv = KvStore::new(&dir);
        assert!(kv.claim("a", "sig", 1000, 10_000).unwrap());
        assert!(!kv.claim("a", "sig", 1000, 10_500).unwrap());
        assert!(kv.claim("b", "sig", 1000, 10_500).unwrap(), "per channel");
        let kv = KvStore::new(&dir);
        assert!(!kv.claim("a", "sig", 1000, 10_999).unwrap(), "persisted");
        assert!(kv.claim("a", "sig", 1000, 11_000).unwrap(), "expired");
        kv.unclaim("a", "sig");
        assert!(kv.claim("a", "sig", 1000, 11_001).unwrap(), "released");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn plugin_store_is_copied_to_each_channel_once() {
        let dir = tempfile_dir();
        let old = dir.join("kv").join("telegram");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(hex::encode("offset:main")), b"42").unwrap();
        let kv = KvStore::new(&dir);
        kv.migrate_plugin_store("telegram", "tgsales");
        kv.migrate_plugin_store("telegram", "tgsupport");
        assert_eq!(
            kv.get("tgsales", "offset:main").as_deref(),
            Some(&b"42"[..])
        );
        kv.set("tgsales", "offset:main", b"43").unwrap();
        kv.migrate_plugin_store("telegram", "tgsales");
        assert_eq!(
            kv.get("tgsales", "offset:main").as_deref(),
            Some(&b"43"[..])
        );
        assert_eq!(
            kv.get("tgsupport", "offset:main").as_deref(),
            Some(&b"42"[..])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sb-kv-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
