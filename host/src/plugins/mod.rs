//! Channel plugins: WebAssembly components loaded from the plugins
//! directory. [`Plugin`] is the handle the rest of the daemon calls (its
//! methods, in [`call`], are the contract); [`registry`] is the hot-reloaded
//! set; `engine`, `sandbox`, `loader` and `bindings` are the Wasm runtime
//! behind them; [`watcher`] is the hot-reload watcher.
//!
//! Plugin code runs on its own tokio runtime ([`PluginManager::spawn`]) so a
//! misbehaving plugin never stalls the gateway's sockets or timers.
//!
//! It is the only module that names wasmtime or a generated type, and it knows
//! nothing of channels, the gateway or the protocol.

mod bindings;
pub mod call;
pub mod contract;
mod engine;
pub mod imports;
mod loader;
pub mod logs;
mod registry;
mod sandbox;
mod sockets;
pub mod tls_client;
pub mod watcher;

pub use call::{CallError, Target};
pub use engine::Runtime;
pub use loader::{LoadError, LoadedPlugin};
pub use registry::{Change, Failure, Listing, PluginManager, PluginsHealth};
pub use sandbox::Network;
pub use sandbox::{parse_host_port, Limits};
pub use tls_client::Trust;

use std::sync::Arc;

use crate::metrics::Metrics;

/// A loaded plugin, shared by every call that started on it: a replacement
/// swaps the registry entry, calls already running finish on this one.
pub struct Plugin {
    pub loaded: LoadedPlugin,
    pub loaded_at: u64,
    runtime: Arc<Runtime>,
    /// The plugin runtime, where every call runs.
    exec: tokio::runtime::Handle,
    /// Slots for calls running at once (`plugins.max_concurrent_calls`):
    /// with the per-instance memory cap, this bounds the plugin's memory.
    calls: Arc<tokio::sync::Semaphore>,
    /// Where calls refused for want of a slot are counted.
    metrics: Arc<Metrics>,
    /// Its log, within `plugins.log_lines_per_second`.
    log: Arc<logs::PluginLog>,
    /// Its network connections, within `plugins.max_sockets`.
    sockets: Arc<sandbox::Sockets>,
}

impl Plugin {
    pub fn id(&self) -> &str {
        &self.loaded.info.id
    }
}
