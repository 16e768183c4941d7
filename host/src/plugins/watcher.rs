//! Watches the plugins directory (not recursively) and signals, debounced,
//! that it should be re-read. What counts as a plugin file is decided by the
//! scan ([`super::PluginManager::rescan`]), not here.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Starts watching `dir`; the receiver yields once per burst of changes,
/// after `debounce` without further changes. Keep the returned watcher alive.
pub fn watch(
    dir: &Path,
    debounce: Duration,
) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if !ev.kind.is_access() => {
                let _ = raw_tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("plugin directory watcher: {e}"),
        })
        .context("start the plugin directory watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watch {}", dir.display()))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait for quiet: a copy in progress produces many events.
            loop {
                match tokio::time::timeout(debounce, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok((watcher, rx))
}
