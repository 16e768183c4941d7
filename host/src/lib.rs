//! Switchboard: a gateway daemon that owns messaging-channel connections,
//! serves the OpenClaw Gateway WebSocket protocol to operator clients and
//! broadcasts events to them. See ARCHITECTURE.md for the module map.

pub mod broadcast;
pub mod channels;
pub mod client;
pub mod config;
pub mod connections;
pub mod disconnect;
pub mod frames;
pub mod gateway;
pub mod health;
pub mod logsink;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod plugins;
pub mod presence;
pub mod private_fs;
pub mod queue;
pub mod rate;
pub mod reload;
pub mod rlimit;
pub mod scaffold;
pub mod scopes;
pub mod shutdown;
pub mod store;
pub mod sync;
#[cfg(test)]
pub(crate) mod test_alloc;

use std::sync::Arc;

use anyhow::{Context, Result};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the daemon and runs until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn serve(config: config::Config, source: config::Source) -> Result<()> {
    if let Some((before, now, hard)) = rlimit::raise_open_files() {
        tracing::info!(
            soft_before = before,
            soft = now,
            hard,
            "open files: soft limit {now} (was {before}, hard limit {hard}); about {} connections fit",
            now.saturating_sub(64)
        );
    }
    let addr = config.listen_addr()?;
    let tls = match &config.gateway.tls {
        Some(files) => Some(Arc::new(gateway::tls::Tls::load(files)?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another gateway running there? choose another with --port or gateway.port)")
    })?;
    let local = listener.local_addr().context("listener address")?;
    let gw = gateway::Gateway::new(config, source)?;
    let _ = gw.listening.set(local);
    let dir = gw.plugins.dir().clone();
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create the plugins directory {}", dir.display()))?;
        // A mistyped plugins.dir shows here, not as plugins gone missing.
        tracing::info!(dir = %dir.display(), "created the plugins directory (it did not exist)");
    }
    let initial = gw.reload_plugins().await;
    gw.channels.start_all();
    // Keep the watcher alive for the daemon's life.
    let _watcher = if gw.config().plugins.watch {
        let (w, mut rx) = plugins::watcher::watch(
            &dir,
            std::time::Duration::from_millis(gw.config().plugins.debounce_ms),
        )?;
        let g = gw.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                if g.is_shutting_down() {
                    break;
                }
                g.reload_plugins().await;
            }
        });
        Some(w)
    } else {
        None
    };
    let mut signals = shutdown::Signals::install();
    let reloader = reload::Reloader::install(gw.clone(), tls.clone());
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!(
        addr = %local,
        url = %format!("{scheme}://{local}"),
        auth = if gw.config().has_auth() { "required" } else { "none (loopback only)" },
        plugins_dir = %dir.display(),
        plugins = gw.plugins.loaded_count(),
        plugin_failures = initial.iter().filter(|c| matches!(c, plugins::Change::Failed { .. })).count(),
        state_dir = %gw.config().state_dir().display(),
        "gateway listening"
    );
    notify::notify(&format!("READY=1\nSTATUS=listening on {scheme}://{local}"));
    let watchdog = notify::watchdog_period().map(|p| tokio::spawn(notify::run_watchdog(p)));
    let reloader = tokio::spawn(reloader.run());
    let tls_reloader = tls
        .clone()
        .map(|t| tokio::spawn(gateway::tls::run_tls_reloader(t)));
    let acceptor = tokio::spawn(gateway::serve(gw.clone(), listener, tls));
    let ticker = tokio::spawn(health::run_ticker(
        gw.broadcaster.clone(),
        gw.config().tick_interval(),
        gw.shutdown_token(),
    ));
    let monitor = tokio::spawn(health::run_monitor(
        gw.health.clone(),
        gw.broadcaster.clone(),
        std::time::Duration::from_millis(gw.config().gateway.health_check_interval_ms),
        gw.shutdown_token(),
    ));
    let presence = tokio::spawn(gateway::ws::run_presence(gw.clone()));
    let liveness = tokio::spawn(gateway::ws::run_liveness(gw.clone()));
    let pruner = tokio::spawn(store::run_pruner(
        gw.log.clone(),
        gw.config().store.retention_days,
        gw.config().store.max_bytes,
        gw.config().store.idempotency_ttl_hours,
        std::time::Duration::from_secs(60),
        gw.shutdown_token(),
    ));
    let trimmer = tokio::spawn(memory::run_trimmer());
    let signal = signals.next().await;
    shutdown::run(gw.clone(), signal, signals, acceptor).await;
    ticker.abort();
    monitor.abort();
    presence.abort();
    liveness.abort();
    reloader.abort();
    if let Some(t) = tls_reloader {
        t.abort();
    }
    pruner.abort();
    trimmer.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let _: Arc<gateway::Gateway> = gw;
    Ok(())
}
