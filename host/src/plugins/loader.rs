//! Loading a plugin file: file checks, compile (or the on-disk cache),
//! link against the host, instantiate once and validate `info`.
//!
//! It loads and checks; it never serves a channel (its store has no imports).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{self, Pre};
use super::contract::PluginInfo;
use super::engine::*;
use super::sandbox::*;

impl Runtime {
    /// Reads a plugin file of the plugins directory: a regular file (no
    /// symlinks), within the size limit, that not every user may write
    /// (see [`Writers`]).
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>, LoadError> {
        read_plugin_file(path, self.limits.max_file_bytes, Writers::OwnerAndGroup)
    }

    /// Reads, compiles and validates a plugin file, then asks it for `info`
    /// (`switchboard plugins check`: a file anywhere, as it is).
    pub async fn load(self: &Arc<Self>, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let bytes = read_plugin_file(path, self.limits.max_file_bytes, Writers::Anyone)?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.load_bytes(&file_name, bytes).await
    }

    /// Compiles (off the async runtime), links against the host, checks the
    /// world, instantiates once and calls `info`.
    pub async fn load_bytes(
        self: &Arc<Self>,
        file_name: &str,
        bytes: Vec<u8>,
    ) -> Result<LoadedPlugin, LoadError> {
        let hash = hex::encode(Sha256::digest(&bytes));
        let rt = self.clone();
        let h = hash.clone();
        let t0 = Instant::now();
        let (component, from_cache) =
            tokio::task::spawn_blocking(move || rt.compile_cached(&h, &bytes))
                .await
                .map_err(|e| LoadError::new(format!("compiler task failed: {e}")))??;
        let compile_ms = t0.elapsed().as_millis() as u64;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::new(format!("wrong world: {}", chain(&e))))?;
        let contract = bindings::contract_of(&component, &self.engine).ok_or_else(|| {
            LoadError::new(format!(
                "wrong world: the component does not export switchboard:channel/channel at a version this host serves ({}); build it with the switchboard SDK",
                bindings::CONTRACTS.join(", ")
            ))
        })?;
        let pre = Pre::new(contract, pre).map_err(|e| {
            LoadError::new(format!(
                "wrong world: the component does not export switchboard:channel/channel@{contract} as expected: {}",
                chain(&e)
            ))
        })?;
        // A file being loaded logs under its name, within a budget of its own.
        let log = super::logs::PluginLog::new(file_name, self.limits.log_lines_per_second, None);
        let mut store = self.store(log, None, Arc::default(), Some(self.limits.call_timeout));
        let info = bindings::info(&pre, &mut store)
            .await
            .map_err(|(step, e)| LoadError::new(format!("{step}: {}", chain(&e))))?;
        validate_info(&info)?;
        Ok(LoadedPlugin {
            network: super::sandbox::Network::parse(&info.network),
            contract,
            info,
            file: file_name.to_string(),
            hash,
            pre,
            from_cache,
            compile_ms,
        })
    }

    /// The cache file for content `hash` under this engine's settings.
    fn cache_path(&self, hash: &str) -> Option<std::path::PathBuf> {
        use std::hash::{Hash, Hasher};
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        crate::VERSION.hash(&mut h);
        Some(dir.join(format!("{hash}-{:016x}.cwasm", h.finish())))
    }

    /// Removes from the cache every compiled component that is not the code
    /// of a plugin loaded now (`loaded`: their content hashes): builds since
    /// replaced or removed, code for another daemon version or engine
    /// setting, and temporary files a crash left behind. Without it each
    /// build dropped into the plugins directory would stay on disk for
    /// good (about 1 MiB per build of echo). Files not named as ours are
    /// left alone. Returns the files and bytes removed.
    pub fn prune_cache(&self, loaded: &[String]) -> (usize, u64) {
        let Some(dir) = self.cache_dir.as_ref() else {
            return (0, 0);
        };
        let keep: std::collections::HashSet<std::ffi::OsString> = loaded
            .iter()
            .filter_map(|h| self.cache_path(h)?.file_name().map(|n| n.to_owned()))
            .collect();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot list the compiled-plugin cache: {e}");
                return (0, 0);
            }
        };
        let (mut files, mut bytes) = (0, 0);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let text = name.to_string_lossy();
            let ours = text.ends_with(".cwasm") || text.contains(".tmp-");
            if !ours || keep.contains(&name) {
                continue;
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    files += 1;
                    bytes += size;
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "cannot remove a stale compiled plugin: {e}")
                }
            }
        }
        (files, bytes)
    }

    /// Compiles `bytes`, or loads the code this daemon compiled for the same
    /// content and engine before. Only files in our own cache directory, named
    /// by content hash, that no one else could have written
    /// ([`written_only_by_us`]) are ever deserialised.
    fn compile_cached(&self, hash: &str, bytes: &[u8]) -> Result<(Component, bool), LoadError> {
        let path = self.cache_path(hash);
        if let Some(p) = path.as_ref().filter(|p| p.is_file()) {
            match written_only_by_us(p) {
                // SAFETY: the file is in our private cache directory, only
                // this user could have written it (checked just above), it
                // was written by `Component::serialize` in this function,
                // and it is named by the hash of the source and the engine;
                // wasmtime still checks its header.
                Ok(()) => match unsafe { Component::deserialize_file(&self.engine, p) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(file = %p.display(), "ignoring unusable cache entry: {e:#}");
                        let _ = std::fs::remove_file(p);
                    }
                },
                Err(why) => {
                    tracing::warn!(
                        file = %p.display(),
                        "not loading a compiled plugin from the cache: {why}; compiling the plugin again (native code another user could write would run as this daemon)"
                    );
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let component = self.compile(bytes)?;
        if let Some(p) = path {
            match component.serialize() {
                Ok(code) => {
                    let tmp = p.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
                    if write_private(&tmp, &code)
                        .and_then(|_| std::fs::rename(&tmp, &p))
                        .is_err()
                    {
                        let _ = std::fs::remove_file(&tmp);
                        tracing::warn!(file = %p.display(), "could not write the compiled-component cache");
                    }
                }
                Err(e) => tracing::warn!("could not serialise a compiled component: {e:#}"),
            }
        }
        Ok((component, false))
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::new(
                "not a WebAssembly file (no `\\0asm` header); build with `cargo build --target wasm32-wasip2`",
            ));
        }
        // Byte 4..8: version + layer. Layer 0 = core module, 1 = component.
        if bytes[6] == 0 && bytes[7] == 0 {
            return Err(LoadError::new(
                "a core WebAssembly module, not a component; build with `--target wasm32-wasip2` (not wasm32-unknown-unknown or wasip1)",
            ));
        }
        Component::new(&self.engine, bytes).map_err(|e| {
            LoadError::new(format!(
                "invalid component (truncated or corrupt?): {}",
                chain(&e)
            ))
        })
    }
}

/// Could only this daemon's user have written `p`, a compiled plugin in the
/// cache? It must be a regular file (not a link) owned by this user that no
/// group or other user may write, in a directory of the same kind: the
/// file is native code, run as it is.
fn written_only_by_us(p: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let dir = p.parent().unwrap_or(Path::new("."));
        for (what, path) in [("the file", p), ("its directory", dir)] {
            let m = std::fs::symlink_metadata(path).map_err(|e| format!("{what}: {e}"))?;
            let kind_ok = if what == "the file" {
                m.file_type().is_file()
            } else {
                m.file_type().is_dir()
            };
            if !kind_ok {
                return Err(format!(
                    "{what} is a link or not a regular {}",
                    if what == "the file" {
                        "file"
                    } else {
                        "directory"
                    }
                ));
            }
            if m.uid() != me {
                return Err(format!(
                    "{what} is owned by user {}, not this daemon's user {me}",
                    m.uid()
                ));
            }
            if m.mode() & 0o022 != 0 {
                return Err(format!(
                    "{what} may be written by others (mode {:04o})",
                    m.mode() & 0o7777
                ));
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file `p` that only this user may read or write.
fn write_private(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    crate::private_fs::create_new(p)?.write_all(bytes)
}

fn validate_info(info: &PluginInfo) -> Result<(), LoadError> {
    let id_ok = !info.id.is_empty()
        && info.id.len() <= 64
        && info
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !id_ok {
        return Err(LoadError::new(format!(
            "plugin id `{}` is invalid: use 1-64 characters of [a-z0-9-]",
            info.id
        )));
    }
    // They reach `plugins.list`, the `plugins` events and the log.
    for (field, len, max) in [
        ("name", info.name.len(), MAX_INFO_NAME),
        ("version", info.version.len(), MAX_INFO_NAME),
        ("description", info.description.len(), MAX_INFO_DESCRIPTION),
        ("network", info.network.len(), MAX_INFO_NETWORK),
    ] {
        if len > max {
            let unit = if field == "network" {
                "entries"
            } else {
                "bytes"
            };
            return Err(LoadError::new(format!(
                "info.{field} has {len} {unit}; the limit is {max}: shorten it and rebuild the plugin"
            )));
        }
    }
    for n in &info.network {
        parse_host_port(n).map_err(|e| LoadError::new(format!("info.network: {e}")))?;
    }
    Ok(())
}

/// Bounds on what `info` answers: its name and version (bytes each), its
/// description (bytes), its network list (entries, each a `host:port`).
const MAX_INFO_NAME: usize = 256;
const MAX_INFO_DESCRIPTION: usize = 4096;
const MAX_INFO_NETWORK: usize = 256;

/// A plugin file that compiled, linked and answered `info`.
pub struct LoadedPlugin {
    pub info: PluginInfo,
    /// `info.network`, parsed once: what its channels may reach when their
    /// configuration grants nothing else.
    pub network: super::sandbox::Network,
    /// The contract version it was built for (`switchboard:channel@…`).
    pub contract: &'static str,
    pub file: String,
    /// SHA-256 of the file.
    pub hash: String,
    pub pre: Pre,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// Time to compile (or load from the cache).
    pub compile_ms: u64,
}

/// Why a plugin file was refused.
#[derive(Debug, Clone)]
pub struct LoadError(pub String);

impl LoadError {
    fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

/// Who may write a plugin file the daemon runs. A plugin runs with its
/// channel's settings (bot tokens, passwords) and network grants, so a
/// file, or a plugins directory, that every user may write would let any
/// local user run code with them. The daemon refuses both
/// (`OwnerAndGroup`: a group, such as an admins' one, may write);
/// `plugins check` reads any file (`Anyone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    OwnerAndGroup,
    Anyone,
}

/// Reads the plugin file at `path`: a regular file (not a symbolic link, a
/// pipe or a device), of at most `max` bytes, that only the `writers`
/// allowed may write (the file and its directory). The checks are made on
/// the file opened, and the read stops past `max`: a file swapped for a
/// link or a pipe after a check, or one that grows while it is read (or
/// reports no size, as on some file systems), cannot make the loader read
/// without bound or wait for ever.
pub fn read_plugin_file(path: &Path, max: u64, writers: Writers) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable =
        |e: std::io::Error| LoadError::new(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A pipe opened for reading would wait for a writer.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => LoadError::new(format!(
                "{} is a symbolic link: plugins are loaded from regular files only (a link could point anywhere); copy the file into the plugins directory instead",
                path.display()
            )),
            _ => unreadable(e),
        })?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.file_type().is_file() {
        return Err(LoadError::new(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if writers == Writers::OwnerAndGroup {
        use std::os::unix::fs::PermissionsExt;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir_mode = std::fs::metadata(dir)
            .map_err(unreadable)?
            .permissions()
            .mode();
        for (what, shown, mode) in [
            ("the plugins directory", dir, dir_mode),
            ("the file", path, meta.permissions().mode()),
        ] {
            if mode & 0o002 != 0 {
                return Err(LoadError::new(format!(
                    "{what} {} is writable by every user (mode {:04o}): anyone could run code there with the channel's settings and network grants; `chmod o-w {}`",
                    shown.display(),
                    mode & 0o7777,
                    shown.display()
                )));
            }
        }
    }
    if meta.len() > max {
        return Err(LoadError::new(format!(
            "file too large: {} bytes, the limit is {max} (plugins.max_file_bytes)",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max {
        return Err(LoadError::new(format!(
            "file too large: more than {max} bytes (plugins.max_file_bytes); it grew while it was read"
        )));
    }
    Ok(bytes)
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::contract::Capabilities;

    #[cfg(unix)]
    #[test]
    fn only_code_no_one_else_could_write_is_taken_from_the_cache() {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        set(&cache, 0o700);
        let f = cache.join("a.cwasm");
        write_private(&f, b"code").unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        written_only_by_us(&f).unwrap();
        // Not a second time: a file already there is not written over.
        assert!(write_private(&f, b"other").is_err());
        set(&f, 0o620);
        let e = written_only_by_us(&f).unwrap_err();
        assert!(
            e.contains("the file may be written by others (mode 0620)"),
            "{e}"
        );
        set(&f, 0o600);
        set(&cache, 0o777);
        let e = written_only_by_us(&f).unwrap_err();
        assert!(e.contains("its directory may be written by others"), "{e}");
        set(&cache, 0o700);
        let link = cache.join("b.cwasm");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = written_only_by_us(&link).unwrap_err();
        assert!(e.contains("is a link"), "{e}");
    }

    fn info() -> PluginInfo {
        PluginInfo {
            id: "p".into(),
            name: "P".into(),
            version: "1.0.0".into(),
            description: "d".into(),
            network: vec!["api.example.org:443".into()],
            capabilities: Capabilities::default(),
        }
    }

    #[test]
    fn a_plugin_file_every_user_may_write_is_refused_by_the_daemon() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.wasm");
        std::fs::write(&file, b"\0asm").unwrap();
        let daemon = || read_plugin_file(&file, 8, Writers::OwnerAndGroup);
        chmod(&file, 0o664);
        daemon().unwrap();
        chmod(&file, 0o666);
        let e = daemon().unwrap_err().0;
        assert!(
            e.contains("the file") && e.contains("is writable by every user (mode 0666)"),
            "{e}"
        );
        assert!(
            e.contains(&format!("`chmod o-w {}`", file.display())),
            "{e}"
        );
        // `plugins check` reads it as it is.
        read_plugin_file(&file, 8, Writers::Anyone).unwrap();
        chmod(&file, 0o644);
        for m in [0o777, 0o1777] {
            chmod(dir.path(), m);
            let e = daemon().unwrap_err().0;
            assert!(e.contains("the plugins directory"), "{e}");
            assert!(e.contains(&format!("(mode {m:04o})")), "{e}");
        }
        chmod(dir.path(), 0o775);
        daemon().unwrap();
    }

    #[test]
    fn a_plugin_file_is_read_only_when_it_is_a_regular_file_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.wasm");
        std::fs::write(&file, b"\0asm0123").unwrap();
        assert_eq!(
            read_plugin_file(&file, 8, Writers::OwnerAndGroup).unwrap(),
            b"\0asm0123"
        );
        let e = read_plugin_file(&file, 7, Writers::OwnerAndGroup)
            .unwrap_err()
            .0;
        assert!(e.contains("file too large: 8 bytes, the limit is 7"), "{e}");
        let link = dir.path().join("l.wasm");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = read_plugin_file(&link, 8, Writers::OwnerAndGroup)
            .unwrap_err()
            .0;
        assert!(e.contains("is a symbolic link"), "{e}");
        // A pipe: refused at once, not waited on for a writer.
        let fifo = dir.path().join("f.wasm");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_plugin_file(&fifo, 8, Writers::OwnerAndGroup)
            .unwrap_err()
            .0;
        assert!(e.contains("is not a regular file"), "{e}");
        let e = read_plugin_file(&dir.path().join("none.wasm"), 8, Writers::OwnerAndGroup)
            .unwrap_err()
            .0;
        assert!(e.contains("cannot read"), "{e}");
        // A regular file that reports no size but has more (procfs; some
        // network file systems; a file growing while it is read): the
        // read stops past the limit.
        let e = read_plugin_file(Path::new("/proc/self/maps"), 16, Writers::Anyone)
            .unwrap_err()
            .0;
        assert!(e.contains("more than 16 bytes"), "{e}");
    }

    #[test]
    fn info_is_bounded_and_the_refusal_names_the_field() {
        assert!(validate_info(&info()).is_ok());
        let long = |n| "x".repeat(n);
        let cases: [(&str, PluginInfo); 5] = [
            (
                "info.name has 257 bytes; the limit is 256",
                PluginInfo {
                    name: long(257),
                    ..info()
                },
            ),
            (
                "info.version has 257 bytes",
                PluginInfo {
                    version: long(257),
                    ..info()
                },
            ),
            (
                "info.description has 4097 bytes; the limit is 4096",
                PluginInfo {
                    description: long(4097),
                    ..info()
                },
            ),
            (
                "info.network has 257 entries; the limit is 256",
                PluginInfo {
                    network: vec!["a:1".into(); 257],
                    ..info()
                },
            ),
            (
                "a destination of 1002 bytes is not host:port",
                PluginInfo {
                    network: vec![format!("{}:1", long(1000))],
                    ..info()
                },
            ),
        ];
        for (want, i) in cases {
            let e = validate_info(&i).unwrap_err().0;
            assert!(e.contains(want), "{e}");
            assert!(e.len() < 200, "{e}");
        }
        // At the limits, accepted.
        let at = PluginInfo {
            name: long(256),
            description: long(4096),
            network: vec!["a:1".into(); 256],
            ..info()
        };
        assert!(validate_info(&at).is_ok());
    }
}
