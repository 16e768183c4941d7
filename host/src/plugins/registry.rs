//! The hot-reloaded set of plugins: the directory scan that loads, replaces
//! and removes them, what failed to load and why, and what `plugins.list`
//! and `health` show of them.
//!
//! It decides what is loaded, never how a call runs (that is `call`).

use crate::sync::RwLockExt;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::Plugin;
use super::{Limits, LoadError, Runtime};
use crate::metrics::Metrics;

/// A file that could not be loaded.
#[derive(Debug, Clone)]
pub struct Failure {
    pub file: String,
    pub hash: String,
    pub error: String,
    pub at: u64,
    /// The id another file provided when this one was refused for it: the
    /// file is tried again once no file provides that id.
    pub waits_for: Option<String>,
}

/// What a scan changed; serialised, it is the `plugins` event's payload
/// (`{"id", "action": "loaded" | "replaced" | "removed" | "failed", …}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Change {
    Loaded {
        id: String,
        version: String,
    },
    Replaced {
        id: String,
        version: String,
    },
    Removed {
        id: String,
    },
    Failed {
        id: String,
        file: String,
        error: String,
    },
}

/// One file in `plugins.list`: a loaded plugin (with the error of a newer
/// file that was refused, if one was), or a file that failed to load.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub id: String,
    pub file: String,
    /// `loaded` or `failed`.
    pub state: &'static str,
    /// SHA-256 of the file (of the one loaded, when a newer one failed).
    pub hash: String,
    #[serde(flatten)]
    pub loaded: Option<Loaded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<u64>,
}

/// What `plugins.list` shows of a loaded plugin.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Loaded {
    pub name: String,
    pub version: String,
    pub description: String,
    pub loaded_at: u64,
    pub network: Vec<String>,
    /// Channel → what it may reach.
    pub grants: BTreeMap<String, Vec<String>>,
    pub contract: &'static str,
    pub capabilities: Vec<&'static str>,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Plugin>>,
    /// file name → plugin id it provides.
    files: HashMap<String, String>,
    failures: BTreeMap<String, Failure>,
}

pub struct PluginManager {
    dir: PathBuf,
    pub runtime: Arc<Runtime>,
    exec: tokio::runtime::Handle,
    exec_rt: Option<tokio::runtime::Runtime>,
    registry: RwLock<Registry>,
    scan_lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Drop for PluginManager {
    fn drop(&mut self) {
        if let Some(rt) = self.exec_rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PluginManager {
    pub fn new(
        dir: PathBuf,
        cache_dir: PathBuf,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<PluginManager> {
        let exec_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("switchboard-plugin")
            .enable_all()
            .build()
            .context("start the plugin runtime")?;
        Ok(PluginManager {
            dir,
            runtime: Arc::new(Runtime::new(limits)?.with_cache(cache_dir)),
            exec: exec_rt.handle().clone(),
            exec_rt: Some(exec_rt),
            registry: RwLock::new(Registry::default()),
            scan_lock: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// Runs `fut` on the plugin runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.exec.spawn(fut)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Plugin>> {
        self.read().by_id.get(id).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.reader()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.writer()
    }

    pub fn loaded_count(&self) -> usize {
        self.read().by_id.len()
    }

    /// The `.wasm` entries the daemon considers: those directly in the
    /// directory, not hidden, and not directories. Symlinks are among them
    /// so that they are refused out loud (the loader reads regular files only).
    fn candidate_files(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let considered = entry
                .file_type()
                .map(|t| t.is_file() || t.is_symlink())
                .unwrap_or(false);
            if considered && name.ends_with(".wasm") && !name.starts_with('.') {
                out.push((name, entry.path()));
            }
        }
        out.sort();
        out
    }

    /// Re-reads the directory as the watcher does: loads new and changed
    /// files (validating fully before swapping), keeps the old version when a
    /// new one is refused, unloads plugins whose file is gone.
    pub async fn rescan(&self) -> Vec<Change> {
        let _scan = self.scan_lock.lock().await;
        let mut changes = Vec::new();
        let files = self.candidate_files();
        for (name, path) in &files {
            if let Some(c) = self.consider(name, path).await {
                changes.push(c);
            }
        }
        // Files that disappeared.
        let present: Vec<&String> = files.iter().map(|(n, _)| n).collect();
        {
            let mut reg = self.write();
            let gone: Vec<String> = reg
                .files
                .keys()
                .filter(|f| !present.contains(f))
                .cloned()
                .collect();
            for f in gone {
                if let Some(id) = reg.files.remove(&f) {
                    reg.by_id.remove(&id);
                    tracing::info!(plugin = %id, file = %f, "plugin removed");
                    changes.push(Change::Removed { id });
                }
            }
            reg.failures.retain(|f, _| present.contains(&f));
        }
        // A file refused because another provided its id is tried again
        // once no file does (that file went, or now provides another id).
        let freed: Vec<&(String, PathBuf)> = {
            let reg = self.read();
            files
                .iter()
                .filter(|(name, _)| {
                    reg.failures
                        .get(name)
                        .and_then(|f| f.waits_for.as_ref())
                        .is_some_and(|id| !reg.by_id.contains_key(id))
                })
                .collect()
        };
        for (name, path) in freed {
            self.write().failures.remove(name);
            if let Some(c) = self.consider(name, path).await {
                changes.push(c);
            }
        }
        let loaded: Vec<String> = self
            .read()
            .by_id
            .values()
            .map(|p| p.loaded.hash.clone())
            .collect();
        // Still under the scan lock: no load writes to the cache meanwhile.
        let rt = self.runtime.clone();
        match tokio::task::spawn_blocking(move || rt.prune_cache(&loaded)).await {
            Ok((0, _)) => {}
            Ok((files, bytes)) => tracing::info!(
                files,
                kib = bytes / 1024,
                "removed compiled plugins no loaded plugin uses from the cache"
            ),
            Err(e) => tracing::warn!("pruning the compiled-plugin cache failed: {e}"),
        }
        changes
    }

    /// Loads one file if it is new or changed.
    async fn consider(&self, name: &str, path: &Path) -> Option<Change> {
        let fallback_id = name.trim_end_matches(".wasm").to_string();
        let bytes = match self.runtime.read_file(path) {
            Ok(b) => b,
            Err(e) => return self.fail(name, "", &fallback_id, e.to_string()),
        };
        let hash = hex::encode(Sha256::digest(&bytes));
        {
            let reg = self.read();
            let current = reg.files.get(name).and_then(|id| reg.by_id.get(id));
            if current.is_some_and(|p| p.loaded.hash == hash)
                || reg.failures.get(name).is_some_and(|f| f.hash == hash)
            {
                return None; // unchanged
            }
        }
        let rt = self.runtime.clone();
        let file = name.to_string();
        let loaded = self
            .spawn(async move { rt.load_bytes(&file, bytes).await })
            .await
            .unwrap_or_else(|e| Err(LoadError(format!("loader task failed: {e}"))));
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                let id = self.read().files.get(name).cloned().unwrap_or(fallback_id);
                return self.fail(name, &hash, &id, e.to_string());
            }
        };
        let id = loaded.info.id.clone();
        let version = loaded.info.version.clone();
        let (cached, compile_ms) = (loaded.from_cache, loaded.compile_ms);
        let mut reg = self.write();
        if let Some((other, _)) = reg
            .files
            .iter()
            .find(|(f, i)| **i == id && f.as_str() != name)
        {
            let error = format!(
                "duplicate plugin id `{id}`: {other} already provides it (this file is loaded once {other} goes or provides another id)"
            );
            drop(reg);
            let change = self.fail(name, &hash, &id, error);
            if let Some(f) = self.write().failures.get_mut(name) {
                f.waits_for = Some(id);
            }
            return change;
        }
        reg.failures.remove(name);
        // This file may have provided another id before.
        if let Some(old) = reg.files.insert(name.to_string(), id.clone()) {
            if old != id {
                reg.by_id.remove(&old);
            }
        }
        // A new version shares its call slots, its log budget and its
        // connections with the version it replaces, whose calls may still
        // be running: a reload neither doubles the calls (and so the
        // memory) or connections a plugin may hold, nor refills its log
        // budget.
        let (calls, log, sockets) = match reg.by_id.get(&id) {
            Some(old) => (old.calls.clone(), old.log.clone(), old.sockets.clone()),
            None => (
                Arc::new(tokio::sync::Semaphore::new(
                    self.runtime.limits.max_concurrent_calls,
                )),
                super::logs::PluginLog::new(
                    &id,
                    self.runtime.limits.log_lines_per_second,
                    Some(self.metrics.clone()),
                ),
                super::sandbox::Sockets::new(self.runtime.limits.max_sockets),
            ),
        };
        let replaced = reg
            .by_id
            .insert(
                id.clone(),
                Arc::new(Plugin {
                    loaded,
                    loaded_at: crate::now_ms(),
                    runtime: self.runtime.clone(),
                    exec: self.exec.clone(),
                    calls,
                    metrics: self.metrics.clone(),
                    log,
                    sockets,
                }),
            )
            .is_some();
        tracing::info!(
            plugin = %id, %version, file = %name, replaced,
            cached, compile_ms,
            "plugin loaded"
        );
        Some(if replaced {
            Change::Replaced { id, version }
        } else {
            Change::Loaded { id, version }
        })
    }

    /// Records a refused file. A file refused again for the same reason
    /// (same content, same error) is no change: nothing is logged or
    /// broadcast again at every rescan.
    fn fail(&self, file: &str, hash: &str, id: &str, error: String) -> Option<Change> {
        let mut reg = self.write();
        if reg
            .failures
            .get(file)
            .is_some_and(|f| f.hash == hash && f.error == error)
        {
            return None;
        }
        tracing::warn!(file, plugin = id, "plugin refused: {error}");
        reg.failures.insert(
            file.to_string(),
            Failure {
                file: file.to_string(),
                hash: hash.to_string(),
                error: error.clone(),
                at: crate::now_ms(),
                waits_for: None,
            },
        );
        Some(Change::Failed {
            id: id.to_string(),
            file: file.to_string(),
            error,
        })
    }

    /// Forgets recorded failures (all, or those of `id`) so the next scan
    /// retries those files even if unchanged.
    pub fn forget_failures(&self, id: Option<&str>) {
        let mut reg = self.write();
        match id {
            None => reg.failures.clear(),
            Some(id) => {
                let stem = format!("{id}.wasm");
                let owned: Vec<String> = reg
                    .files
                    .iter()
                    .filter(|(_, i)| i.as_str() == id)
                    .map(|(f, _)| f.clone())
                    .collect();
                reg.failures.retain(|f, _| *f != stem && !owned.contains(f));
            }
        }
    }

    /// `plugins.list`: every plugin file with its state.
    pub fn list(&self, grants: impl Fn(&Plugin) -> BTreeMap<String, Vec<String>>) -> Vec<Listing> {
        let reg = self.read();
        let mut out = Vec::new();
        let mut files: Vec<(&String, &String)> = reg.files.iter().collect();
        files.sort();
        for (file, id) in files {
            let Some(p) = reg.by_id.get(id) else { continue };
            let i = &p.loaded.info;
            // A newer file that was refused; this version keeps serving.
            let failed = reg.failures.get(file);
            out.push(Listing {
                id: i.id.clone(),
                file: file.clone(),
                state: "loaded",
                hash: p.loaded.hash.clone(),
                loaded: Some(Loaded {
                    name: i.name.clone(),
                    version: i.version.clone(),
                    description: i.description.clone(),
                    loaded_at: p.loaded_at,
                    network: i.network.clone(),
                    grants: grants(p),
                    contract: p.loaded.contract,
                    capabilities: i.capabilities.names(),
                }),
                error: failed.map(|f| f.error.clone()),
                failed_at: failed.map(|f| f.at),
            });
        }
        for (file, f) in &reg.failures {
            if reg.files.contains_key(file) {
                continue;
            }
            out.push(Listing {
                id: file.trim_end_matches(".wasm").to_string(),
                file: file.clone(),
                state: "failed",
                hash: f.hash.clone(),
                loaded: None,
                error: Some(f.error.clone()),
                failed_at: Some(f.at),
            });
        }
        out
    }

    /// `health`'s `plugins` (schema: `{loaded, errors}`): the ids loaded
    /// and the files refused.
    pub fn health(&self) -> PluginsHealth {
        let reg = self.read();
        let mut loaded: Vec<String> = reg.by_id.keys().cloned().collect();
        loaded.sort();
        PluginsHealth {
            loaded,
            errors: reg
                .failures
                .values()
                .map(|f| PluginHealthError {
                    id: f.file.trim_end_matches(".wasm").to_string(),
                    origin: f.file.clone(),
                    activated: false,
                    error: f.error.clone(),
                })
                .collect(),
        }
    }
}

/// `health`'s `plugins`.
#[derive(Debug, serde::Serialize)]
pub struct PluginsHealth {
    pub loaded: Vec<String>,
    pub errors: Vec<PluginHealthError>,
}

/// A plugin file that was refused, as `health` shows it.
#[derive(Debug, serde::Serialize)]
pub struct PluginHealthError {
    pub id: String,
    pub origin: String,
    pub activated: bool,
    pub error: String,
}
