//! Graceful shutdown on SIGINT/SIGTERM, in the seed's order: stop accepting,
//! broadcast `shutdown`, stop channels, close every socket with 1012, exit —
//! within `gateway.limits.shutdown_timeout_ms`, with a log line per step.
//!
//! It is the one module below `gateway` that names `Gateway`: it orchestrates
//! the gateway's parts.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use crate::broadcast::{events, Filter};
use crate::gateway::Gateway;

/// Resolves with the signal's name when SIGINT or SIGTERM arrives.
pub async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Runs the shutdown sequence. `acceptor` is the accept loop's task.
pub async fn run(gw: Arc<Gateway>, signal: &str, acceptor: JoinHandle<()>) {
    let bound = Duration::from_millis(gw.config().gateway.limits.shutdown_timeout_ms);
    let deadline = tokio::time::Instant::now() + bound;
    tracing::info!(signal, "shutdown 1/5: stop accepting connections");
    gw.begin_shutdown();
    let _ = tokio::time::timeout_at(deadline, acceptor).await;

    tracing::info!(
        connections = gw.conns.count(),
        "shutdown 2/5: broadcast shutdown event"
    );
    gw.broadcaster.broadcast(
        events::SHUTDOWN,
        &json!({"reason": format!("gateway stopping ({signal})")}),
        &Filter::default(),
    );

    let stopped = tokio::time::timeout_at(deadline, gw.channels.stop_all()).await;
    tracing::info!(
        accounts = stopped.unwrap_or(0),
        "shutdown 3/5: channels stopped"
    );

    let conns = gw.conns.all();
    tracing::info!(
        connections = conns.len(),
        "shutdown 4/5: closing sockets with 1012"
    );
    for c in &conns {
        c.close_after_queue(crate::disconnect::Disconnect::ServiceRestart);
    }
    gw.tasks.close();
    if tokio::time::timeout_at(deadline, gw.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = gw.conns.count(),
            "shutdown bound ({} ms) reached; dropping remaining connections",
            bound.as_millis()
        );
    }
    tracing::info!("shutdown 5/5: exit");
}
