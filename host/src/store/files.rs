//! Moves the durable state of the earlier layout into the database, once,
//! at open: the plugins' key-value files (`<state_dir>/kv/channels/<channel>/
//! <hex key>`, their claims under `claims/<sha256 of key>`, and the oldest
//! layout `kv/<plugin>/`, which each channel of that plugin gets a copy of)
//! and the host outbox (`<state_dir>/outbox/<hex channel>/<hex account>/
//! <seq>.json`, set-aside ones `.json.failed`). Everything is inserted in one
//! transaction (never over a newer value in the database); the files are
//! removed only after it commits. A key file named by a hash (keys over 100
//! bytes) cannot give its key back and stays where it is, with a warning;
//! so does an outbox file that is not JSON.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use super::sqlite::describe_error;
use super::StoreError;

fn entries(dir: &Path) -> Vec<std::fs::DirEntry> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    v.sort_by_key(|e| e.file_name());
    v
}

fn unhex(name: &str) -> Option<String> {
    String::from_utf8(hex::decode(name).ok()?).ok()
}

fn is_file(e: &std::fs::DirEntry) -> bool {
    e.file_type().is_ok_and(|t| t.is_file())
}

/// What one channel's key directory holds: keys with values, and claims
/// (hash, expiry).
struct KvDir {
    keys: Vec<(String, Vec<u8>, PathBuf)>,
    claims: Vec<(String, u64, PathBuf)>,
}

fn read_kv_dir(dir: &Path) -> KvDir {
    let mut out = KvDir {
        keys: Vec::new(),
        claims: Vec::new(),
    };
    for e in entries(dir) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if name == "claims" {
            for c in entries(&e.path()) {
                let n = c.file_name().to_string_lossy().into_owned();
                let t = std::fs::read_to_string(c.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if let (true, Some(t)) = (n.len() == 64, t) {
                    out.claims.push((n, t, c.path()));
                }
            }
            continue;
        }
        if !is_file(&e) {
            continue;
        }
        match unhex(&name) {
            Some(key) => match std::fs::read(e.path()) {
                Ok(v) => out.keys.push((key, v, e.path())),
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), "cannot read a key-value file: {err}")
                }
            },
            None => tracing::warn!(
                file = %e.path().display(),
                "a key-value file named by a hash (a key over 100 bytes) cannot be moved into the database; it stays"
            ),
        }
    }
    out
}

/// Imports what the files of the earlier layout hold; `plugins` maps each
/// configured channel to its plugin.
pub fn import(
    conn: &mut Connection,
    state_dir: &Path,
    plugins: &[(String, String)],
) -> Result<(), StoreError> {
    let kv_root = state_dir.join("kv");
    let outbox_root = state_dir.join("outbox");
    if !kv_root.is_dir() && !outbox_root.is_dir() {
        return Ok(());
    }
    let mut remove: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut kv: Vec<(String, KvDir)> = Vec::new();
    for e in entries(&kv_root.join("channels")) {
        let channel = e.file_name().to_string_lossy().into_owned();
        if channel.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        dirs.push(e.path());
        kv.push((channel, read_kv_dir(&e.path())));
    }
    // The oldest layout: one store per plugin, copied to each of its channels
    // that has none of its own.
    for (channel, plugin) in plugins {
        let src = kv_root.join(plugin);
        if plugin == "channels" || !src.is_dir() || kv.iter().any(|(c, _)| c == channel) {
            continue;
        }
        dirs.push(src.clone());
        kv.push((channel.clone(), read_kv_dir(&src)));
    }
    let mut outbox: Vec<(u64, String, String, String, bool, PathBuf)> = Vec::new();
    for c in entries(&outbox_root) {
        let Some(channel) = unhex(&c.file_name().to_string_lossy()) else {
            continue;
        };
        for a in entries(&c.path()) {
            let Some(account) = unhex(&a.file_name().to_string_lossy()) else {
                continue;
            };
            dirs.push(a.path());
            for f in entries(&a.path()) {
                let name = f.file_name().to_string_lossy().into_owned();
                let (stem, failed) = match name.strip_suffix(".json.failed") {
                    Some(s) => (s.to_string(), true),
                    None => match name.strip_suffix(".json") {
                        Some(s) => (s.to_string(), false),
                        None => continue,
                    },
                };
                let Ok(seq) = stem.parse::<u64>() else {
                    continue;
                };
                let text = std::fs::read_to_string(f.path()).ok();
                match text.filter(|t| serde_json::from_str::<serde_json::Value>(t).is_ok()) {
                    Some(t) => {
                        outbox.push((seq, channel.clone(), account.clone(), t, failed, f.path()))
                    }
                    None => {
                        tracing::warn!(file = %f.path().display(), "an outbox file that is not JSON stays where it is")
                    }
                }
            }
        }
    }
    let what = "move the files of the earlier layout into the database";
    let tx = conn
        .transaction()
        .map_err(|e| StoreError(describe_error(what, &e)))?;
    let (mut keys, mut claims) = (0, 0);
    for (channel, d) in &kv {
        for (k, v, path) in &d.keys {
            tx.execute(
                "INSERT OR IGNORE INTO kv (channel, key, value) VALUES (?1, ?2, ?3)",
                params![channel, k, v],
            )
            .map_err(|e| StoreError(describe_error(what, &e)))?;
            keys += 1;
            remove.push(path.clone());
        }
        for (h, t, path) in &d.claims {
            tx.execute(
                "INSERT OR IGNORE INTO kv_claims (channel, key_hash, expires_at) VALUES (?1, ?2, ?3)",
                params![channel, h, i64::try_from(*t).unwrap_or(i64::MAX)],
            )
            .map_err(|e| StoreError(describe_error(what, &e)))?;
            claims += 1;
            remove.push(path.clone());
        }
    }
    for (seq, channel, account, message, failed, path) in &outbox {
        tx.execute(
            "INSERT OR IGNORE INTO outbox (seq, channel, account, message, failed) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![i64::try_from(*seq).unwrap_or(i64::MAX), channel, account, message, *failed as i64],
        )
        .map_err(|e| StoreError(describe_error(what, &e)))?;
        remove.push(path.clone());
    }
    tx.commit()
        .map_err(|e| StoreError(describe_error(what, &e)))?;
    // Only once the database has them.
    for p in &remove {
        let _ = std::fs::remove_file(p);
    }
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d.join("claims"));
        let _ = std::fs::remove_dir(d);
    }
    for d in [kv_root.join("channels"), kv_root.clone()] {
        let _ = std::fs::remove_dir(d);
    }
    for c in entries(&outbox_root) {
        let _ = std::fs::remove_dir(c.path());
    }
    let _ = std::fs::remove_dir(&outbox_root);
    if keys + claims + outbox.len() > 0 {
        tracing::info!(
            keys,
            claims,
            outbox = outbox.len(),
            "moved the key-value stores and the outbox from files into the database"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::SyncMode;
    use crate::store::sqlite::{claim_hash, SqliteLog};
    use crate::store::StateStore;

    #[tokio::test]
    async fn files_of_the_earlier_layout_move_in_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let ch = s.join("kv/channels/tg");
        std::fs::create_dir_all(ch.join("claims")).unwrap();
        std::fs::write(ch.join(hex::encode("offset:main")), b"42").unwrap();
        std::fs::write(ch.join("h-abcdef"), b"long").unwrap();
        std::fs::write(
            ch.join("claims").join(claim_hash("sig-1")),
            u64::MAX.to_string(),
        )
        .unwrap();
        let old = s.join("kv/telegram");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(hex::encode("offset:main")), b"7").unwrap();
        let ob = s
            .join("outbox")
            .join(hex::encode("irc"))
            .join(hex::encode("default"));
        std::fs::create_dir_all(&ob).unwrap();
        std::fs::write(
            ob.join("00000000000000000003.json"),
            r##"{"to":"#room","text":"hi"}"##,
        )
        .unwrap();
        std::fs::write(
            ob.join("00000000000000000002.json.failed"),
            r#"{"to":"x","text":"no"}"#,
        )
        .unwrap();
        std::fs::write(ob.join("00000000000000000004.json"), "not json").unwrap();
        let plugins = vec![
            ("tg".to_string(), "telegram".to_string()),
            ("tg2".to_string(), "telegram".to_string()),
        ];
        let log = SqliteLog::open(s, SyncMode::Normal, &plugins).unwrap();
        assert_eq!(
            log.kv_get("tg", "offset:main").unwrap().as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(
            log.kv_get("tg2", "offset:main").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        assert!(
            !log.kv_claim("tg", "sig-1", 10, 5).await.unwrap(),
            "claim kept"
        );
        assert!(log.kv_claim("tg", "sig-2", 10, 5).await.unwrap());
        let q = log.outbox_queued().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].seq, q[0].channel.as_str(), q[0].account.as_str()),
            (3, "irc", "default")
        );
        assert_eq!(
            log.outbox_get(3).unwrap().as_deref(),
            Some(r##"{"to":"#room","text":"hi"}"##)
        );
        // The next queue number follows the imported ones.
        assert_eq!(
            log.outbox_push("irc", "default", "{}".into())
                .await
                .unwrap(),
            4
        );
        // Moved files are gone; what could not move stays.
        assert!(!ch.join(hex::encode("offset:main")).exists());
        assert!(ch.join("h-abcdef").exists());
        assert!(!old.exists());
        assert!(ob.join("00000000000000000004.json").exists());
        assert!(!ob.join("00000000000000000003.json").exists());
        drop(log);
        // A second open imports nothing more and keeps the values.
        let log = SqliteLog::open(s, SyncMode::Normal, &plugins).unwrap();
        assert_eq!(
            log.kv_get("tg", "offset:main").unwrap().as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(log.outbox_queued().unwrap().len(), 2);
    }
}
