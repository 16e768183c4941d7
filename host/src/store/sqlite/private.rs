//! The state directory holds every message, the plugins' key-value data
//! and the outbox: only the daemon's user may read it. A state directory
//! the daemon creates is `0700`; the database and its `-wal` and `-shm`
//! files are `0600` (created so, or made so at open: SQLite gives new
//! `-wal`/`-shm` files the database's mode, and the default umask leaves
//! new files readable by everyone). A state directory that already exists
//! and is open to others is not changed (it may be shared on purpose) but
//! logged as a warning. Backups are created `0600` too.

use std::path::Path;

use super::StoreError;

/// Creates `state_dir` (`0700`) if it is missing and makes the database
/// files in it `0600`, creating an empty database file so when there is
/// none (SQLite then writes into it).
pub fn prepare(state_dir: &Path, db: &Path) -> Result<(), StoreError> {
    let cannot = |what: &str, p: &Path, e: std::io::Error| {
        StoreError(format!("cannot {what} {}: {e}", p.display()))
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !state_dir.exists() {
            crate::private_fs::create_dir(state_dir)
                .map_err(|e| cannot("create the state directory", state_dir, e))?;
        } else if let Ok(m) = std::fs::metadata(state_dir) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %state_dir.display(),
                    "the state directory is open to other users (mode {mode:04o}); its database files are kept private (0600), but it holds every message: chmod 700 {}",
                    state_dir.display()
                );
            }
        }
        if !db.exists() {
            crate::private_fs::create_new(db).map_err(|e| cannot("create", db, e))?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let p = db.with_file_name(format!(
                "{}{suffix}",
                db.file_name().and_then(|n| n.to_str()).unwrap_or_default()
            ));
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let mode = m.permissions().mode() & 0o777;
            if m.is_file() && mode & 0o077 != 0 {
                // A file system without Unix modes (some network or
                // foreign mounts) refuses: said, not fatal.
                match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
                    Ok(()) => {
                        tracing::info!(file = %p.display(), "made private (mode {mode:04o} → 0600): it holds messages")
                    }
                    Err(e) => {
                        tracing::warn!(file = %p.display(), "cannot make private (mode {mode:04o}; chmod 600: {e}): it holds every message")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = db;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| cannot("create the state directory", state_dir, e))?;
    }
    Ok(())
}

/// Creates `to`, which must not exist, readable by its owner only: the
/// file a backup is written into.
pub fn create_new_private(to: &Path) -> std::io::Result<()> {
    crate::private_fs::create_new(to).map(drop)
}
