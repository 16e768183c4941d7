//! The plugin manager: channel plugins are WebAssembly components loaded from
//! the plugins directory (engine, loader, sandbox, host imports and watcher
//! live in this folder as they are built).
//!
//! So far this holds the registry that `health` reports (`plugins.loaded`,
//! `plugins.errors`); the Wasm runtime itself is not implemented yet (see
//! README, "Status").

pub mod runtime;

use std::path::PathBuf;
use std::sync::RwLock;

use serde_json::{json, Value};

/// A plugin file that could not be loaded.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub id: String,
    pub file: String,
    pub error: String,
}

#[derive(Default)]
struct Registry {
    loaded: Vec<String>,
    errors: Vec<PluginError>,
}

pub struct PluginManager {
    dir: PathBuf,
    registry: RwLock<Registry>,
}

impl PluginManager {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            registry: RwLock::new(Registry::default()),
        }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// The `plugins` object of `health` (schema: `{loaded, errors}`).
    pub fn health_payload(&self) -> Value {
        let r = self.registry.read().unwrap_or_else(|p| p.into_inner());
        json!({
            "loaded": r.loaded,
            "errors": r.errors.iter().map(|e| json!({
                "id": e.id, "origin": e.file, "activated": false, "error": e.error,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn loaded_count(&self) -> usize {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .loaded
            .len()
    }
}
