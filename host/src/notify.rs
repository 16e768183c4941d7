//! The systemd notification protocol (`sd_notify`), for a unit with
//! `Type=notify`: `READY=1` once the daemon listens, `RELOADING=1` and
//! `READY=1` around a configuration reload, `STOPPING=1` when the shutdown
//! starts, and `WATCHDOG=1` every half of `WatchdogSec=` from an async task
//! (so a runtime that no longer runs tasks is restarted by systemd).
//!
//! Without `NOTIFY_SOCKET` in the environment every call does nothing. A
//! leaf: it imports nothing of the crate.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Where notifications go: `NOTIFY_SOCKET` as read at start.
enum Target {
    Path(PathBuf),
    /// `@name`: Linux's abstract namespace.
    Abstract(Vec<u8>),
}

static TARGET: OnceLock<Option<(Target, UnixDatagram)>> = OnceLock::new();

fn target() -> Option<&'static (Target, UnixDatagram)> {
    TARGET
        .get_or_init(|| {
            let raw = std::env::var_os("NOTIFY_SOCKET")?;
            let raw = raw.into_encoded_bytes();
            let target = match raw.strip_prefix(b"@") {
                Some(name) => Target::Abstract(name.to_vec()),
                None if raw.first() == Some(&b'/') => {
                    Target::Path(PathBuf::from(std::ffi::OsString::from_vec(raw)))
                }
                None => {
                    tracing::warn!(
                        "NOTIFY_SOCKET is neither a path nor @name; systemd is not notified"
                    );
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((target, s)),
                Err(e) => {
                    tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Sends `state` (newline-separated `KEY=value` lines) to systemd, if it
/// asked for notifications. Failures are logged once per kind, never fatal.
pub fn notify(state: &str) {
    let Some((target, sock)) = target() else {
        return;
    };
    let sent = match target {
        Target::Path(p) => sock.send_to(state.as_bytes(), p),
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
    };
    if let Err(e) = sent {
        tracing::warn!(state, "cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

/// The watchdog's period, if systemd asked for one for this process
/// (`WATCHDOG_USEC`, and `WATCHDOG_PID` naming this process if set): half
/// the unit's `WatchdogSec=`.
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every `period` while the async runtime runs tasks.
pub async fn run_watchdog(period: Duration) {
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        notify("WATCHDOG=1");
    }
}
