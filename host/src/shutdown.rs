//! Graceful shutdown on SIGINT/SIGTERM, in the seed's order: stop accepting,
//! broadcast `shutdown`, stop channels, close every socket with 1012, exit —
//! within `gateway.limits.shutdown_timeout_ms`, with a log line per step.
//!
//! It is the one module below `gateway` that names `Gateway`: it orchestrates
//! the gateway's parts.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use crate::broadcast::{events, Filter};
use crate::gateway::Gateway;

/// The stop signals, listened to from start-up to exit: the first starts
/// the shutdown, a second during it ends the process at once.
pub struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers. Call it before the daemon says it listens, so
    /// a signal sent as soon as it does is a graceful stop, not the default
    /// action's kill.
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Signals {
                    streams: Some((term, int)),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(
                        "SIGTERM cannot be listened to ({e}); stop the daemon with SIGINT"
                    );
                    Signals { streams: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves with the signal's name when SIGINT or SIGTERM arrives.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// The step the shutdown is at (1–5; 0 before it starts), for the watchdog.
static STEP: AtomicU8 = AtomicU8::new(0);

/// How long past `shutdown_timeout_ms` the watchdog waits for the process
/// to end on its own: the sequence's own steps are bounded by the timeout;
/// this covers what comes after them (dropping the gateway, the runtime).
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(2);

/// Ends the process with exit code 1 if it is still running `after` from
/// now, logging the step it was stuck at. Nothing is lost by it: every
/// acknowledged message is already in the log, and the log is built to
/// survive a process that stops at any instant.
fn arm_watchdog(after: Duration, exit: impl FnOnce(u8) + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("switchboard-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(after);
            exit(STEP.load(Ordering::Relaxed));
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the shutdown watchdog ({e}); the shutdown is bounded only by its own steps");
    }
}

/// How long an exit that cannot wait (a second signal, the watchdog)
/// still waits for its log lines to be written.
const EXIT_LOG_GRACE: Duration = Duration::from_millis(300);

/// At least this long for the stop's checkpoint of the message log, past
/// the bound if need be (the watchdog allows [`WATCHDOG_GRACE`]).
const CHECKPOINT_GRACE: Duration = Duration::from_millis(1000);

fn step(n: u8, started: tokio::time::Instant) -> u64 {
    STEP.store(n, Ordering::Relaxed);
    started.elapsed().as_millis() as u64
}

/// Runs the shutdown sequence. `acceptor` is the accept loop's task;
/// `signals` keep listening: a second stop signal ends the process at once
/// (exit code 1). A watchdog ends it (exit code 1) if it is still running
/// [`WATCHDOG_GRACE`] past the bound.
pub async fn run(gw: Arc<Gateway>, signal: &str, mut signals: Signals, acceptor: JoinHandle<()>) {
    let bound = Duration::from_millis(gw.config().gateway.limits.shutdown_timeout_ms);
    let started = tokio::time::Instant::now();
    let deadline = started + bound;
    arm_watchdog(bound + WATCHDOG_GRACE, move |stuck| {
        tracing::error!(
            step = stuck,
            "shutdown still running {} ms after the signal (gateway.limits.shutdown_timeout_ms = {} plus {} ms of grace); exiting now",
            (bound + WATCHDOG_GRACE).as_millis(),
            bound.as_millis(),
            WATCHDOG_GRACE.as_millis()
        );
        crate::logsink::flush(EXIT_LOG_GRACE);
        std::process::exit(1);
    });
    tokio::spawn(async move {
        let again = signals.next().await;
        tracing::warn!(
            signal = again,
            step = STEP.load(Ordering::Relaxed),
            "second stop signal during the shutdown: exiting now without waiting for connections and channels"
        );
        crate::logsink::flush(EXIT_LOG_GRACE);
        std::process::exit(1);
    });
    crate::notify::notify("STOPPING=1");
    tracing::info!(
        signal,
        ms = step(1, started),
        "shutdown 1/5: stop accepting connections"
    );
    gw.begin_shutdown();
    let _ = tokio::time::timeout_at(deadline, acceptor).await;

    tracing::info!(
        connections = gw.conns.count(),
        ms = step(2, started),
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
        ms = step(3, started),
        "shutdown 3/5: channels stopped"
    );

    // Records of sends that went out while the log could not take them:
    // lost with the process otherwise (their keys would be refused after
    // the restart, never sent twice).
    match tokio::time::timeout_at(deadline, gw.channels.record_owed()).await {
        Ok(left) if !left.is_empty() => tracing::error!(
            count = left.len(),
            "{} sent message(s) could not be recorded before the stop (the message log still fails); after the restart a retry of their idempotencyKey is refused as SEND_OUTCOME_UNKNOWN: {}",
            left.len(),
            left.iter().take(10).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
        Ok(_) => {}
        Err(_) => tracing::warn!("shutdown bound reached while recording sent messages"),
    }

    let conns = gw.conns.all();
    tracing::info!(
        connections = conns.len(),
        ms = step(4, started),
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
    // Everything committed into the database file, on disk even with
    // `store.sync = normal` (within the watchdog's grace if the bound is
    // spent).
    let until = deadline.max(tokio::time::Instant::now() + CHECKPOINT_GRACE);
    match tokio::time::timeout_at(until, gw.log.checkpoint()).await {
        Ok(Ok(())) => tracing::info!("message log checkpointed: its database file holds everything"),
        Ok(Err(e)) => tracing::warn!("{e}"),
        Err(_) => tracing::warn!("the message log's checkpoint did not finish in time; the WAL keeps what it holds (read at the next start)"),
    }
    tracing::info!(ms = step(5, started), "shutdown 5/5: exit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_fires_after_its_bound_with_the_step() {
        STEP.store(4, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = std::time::Instant::now();
        arm_watchdog(Duration::from_millis(200), move |s| {
            let _ = tx.send((s, t0.elapsed()));
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        let (s, at) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(s, 4);
        assert!(at >= Duration::from_millis(200), "{at:?}");
    }
}
