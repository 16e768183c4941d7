//! Files and directories only the daemon's user may read: the state
//! directory (every message), the compiled-plugin cache (native code), a
//! backup. One place for the modes, so that the store and the plugin
//! cache cannot drift apart. It imports nothing of the crate.

use std::path::Path;

/// Creates `dir` and every missing parent `0700` (an existing one is left
/// as it is).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Creates `p`, which must not exist, readable and writable by its owner
/// only.
pub fn create_new(p: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
}
