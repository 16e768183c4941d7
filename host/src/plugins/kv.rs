//! The per-plugin key-value store behind `kv-get`/`kv-set`/`kv-delete`:
//! one file per key under `<state-dir>/kv/<plugin-id>/`, written atomically
//! (temporary file + rename), so it survives reloads, restarts and crashes.

use std::path::{Path, PathBuf};

/// Largest key (bytes) and value accepted.
pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

pub struct KvStore {
    root: PathBuf,
}

impl KvStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("kv"),
        }
    }

    fn path(&self, plugin: &str, key: &str) -> Option<PathBuf> {
        if key.len() > MAX_KEY_BYTES || plugin.is_empty() || plugin.contains(['/', '\\', '.']) {
            return None;
        }
        // Hex keeps any key a safe file name.
        Some(self.root.join(plugin).join(hex::encode(key.as_bytes())))
    }

    pub fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(plugin, key)?).ok()
    }

    pub fn set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let Some(path) = self.path(plugin, key) else {
            return Err(format!("kv key longer than {MAX_KEY_BYTES} bytes"));
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "kv value of {} bytes exceeds {MAX_VALUE_BYTES}",
                value.len()
            ));
        }
        let dir = path.parent().ok_or("kv path has no parent")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, value).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("rename into {}: {e}", path.display())
        })
    }

    pub fn delete(&self, plugin: &str, key: &str) {
        if let Some(p) = self.path(plugin, key) {
            let _ = std::fs::remove_file(p);
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
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sb-kv-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
