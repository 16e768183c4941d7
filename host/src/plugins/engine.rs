//! The one engine: pooling allocator, epoch interruption and its ticker
//! thread, the linker every plugin is checked against, and the limits.
//!
//! It holds no per-plugin state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, UpdateDeadline};

use super::bindings;
use super::imports::Imports;
use super::logs::PluginLog;
use super::sandbox::{Grants, Limits, PluginState};

/// Component instances that can exist at once (running accounts plus calls in flight).
pub const POOL_INSTANCES: u32 = 256;

/// How often the epoch ticker advances the engine's epoch.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process-wide engine plus the linker every plugin is checked against.
pub struct Runtime {
    pub engine: Engine,
    pub(super) linker: Linker<PluginState>,
    pub limits: Limits,
    /// Compiled components, keyed by content hash and engine (see `compile`).
    pub(super) cache_dir: Option<std::path::PathBuf>,
    _ticker: EpochTicker,
}

/// Advances the engine's epoch on its own thread, so that a plugin spinning
/// in a loop is interrupted even when every async worker is busy.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(1024 * 1024);
        // Fresh instances per call come from a pool of pre-reserved slots.
        // Each slot reserves only the memory cap (plus a guard) of address
        // space, so bounds checks are explicit; the pool bounds how many
        // instances can exist at once (calls beyond it fail, never block).
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 8)
            .total_memories(POOL_INSTANCES * 4)
            .total_tables(POOL_INSTANCES * 8)
            .total_stacks(POOL_INSTANCES)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_core_instances_per_component(32)
            .max_memory_size(limits.memory_bytes);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        config.memory_reservation(limits.memory_bytes as u64);
        config.memory_guard_size(64 * 1024);
        let engine = ctx(Engine::new(&config), "create the Wasm engine")?;
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        ctx(
            wasmtime_wasi::p2::add_to_linker_async(&mut linker),
            "link WASI",
        )?;
        ctx(
            super::sockets::add_to_linker(&mut linker),
            "link wasi:sockets/ip-name-lookup",
        )?;
        ctx(
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker),
            "link wasi:http",
        )?;
        ctx(
            bindings::add_to_linker(&mut linker),
            "link the switchboard host interface",
        )?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("switchboard-epoch".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .context("start the epoch thread")?;
        Ok(Runtime {
            engine,
            linker,
            limits,
            cache_dir: None,
            _ticker: EpochTicker { stop },
        })
    }

    /// A fresh store for one instance of `plugin` with these imports (none
    /// while loading), with the call deadline set (`None`: no deadline, for
    /// `run`).
    pub fn store(
        &self,
        log: Arc<PluginLog>,
        imports: Option<Imports>,
        grants: Arc<Grants>,
        timeout: Option<Duration>,
    ) -> Store<PluginState> {
        let state = PluginState::new(log, imports, grants, &self.limits, timeout);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s.store_limits());
        // Every tick: past the deadline → trap; otherwise yield to the executor
        // so a busy plugin never monopolises a worker thread.
        store.epoch_deadline_callback(|ctx| {
            if ctx.data().past_deadline() {
                return Err(wasmtime::Error::msg(
                    "deadline exceeded: the call ran longer than its time limit",
                ));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store
    }

    /// Keeps compiled components in `dir` (created 0700: whoever can write
    /// there can make the daemon run native code, so it must be ours alone).
    pub fn with_cache(mut self, dir: std::path::PathBuf) -> Self {
        match create_private_dir(&dir) {
            Ok(()) => self.cache_dir = Some(dir),
            Err(e) => tracing::warn!("compiled-component cache disabled: {e}"),
        }
        self
    }
}

fn ctx<T>(r: wasmtime::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e:#}"))
}

/// Creates `dir` and every missing parent `0700`: the cache lives in the
/// state directory, which it may be the first to create, and which holds
/// every message.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    crate::private_fs::create_dir(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
