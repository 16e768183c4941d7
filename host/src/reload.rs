//! Configuration hot reload: the config file is watched (the plugins
//! directory's debounced watcher, on the file's directory, so a rename over
//! it is seen) and re-read on `SIGHUP`.
//!
//! A reload validates the whole new file first; an invalid one changes
//! nothing (the error, with its key and line, goes to the log, to `health`
//! and to a `config` event). A valid one is applied as a diff: keys that
//! need a restart keep their running values and are reported by key
//! (`needsRestart`); the rest take effect live — `[channels]` account
//! by account, auth (connections whose token or password is no longer
//! accepted are closed 1008 "token revoked"), origins, hosts, limits read
//! per connection or request, liveness. Every applied change is broadcast
//! as a `config` event to `operator.admin` connections, in protocol.md's
//! shape (`{applied, changed, needsRestart, error?}`: keys) with our own
//! `ok`, `trigger` and `changes` (a line per change) beside it.
//!
//! Like `shutdown`, it orchestrates the gateway and the channel manager.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::broadcast::{events, Filter};
use crate::config::Config;
use crate::disconnect::Disconnect;
use crate::gateway::tls::Tls;
use crate::gateway::Gateway;
use crate::scopes::Scope;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What took effect, one line each.
    pub changes: Vec<String>,
    /// Keys that changed in the file but keep their running value
    /// (`gateway.port`).
    pub needs_restart: Vec<String>,
    /// Why the file was refused (nothing changed).
    pub error: Option<String>,
}

/// Keeps `running`'s value of a key that only a restart can change, and
/// notes it when the file asks for another.
fn pin<T: Clone + Debug>(name: &str, running: &T, new: &mut T, notes: &mut Vec<String>) {
    if format!("{running:?}") != format!("{new:?}") {
        notes.push(name.to_string());
        *new = running.clone();
    }
}

fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// Keeps every restart-only key of `new` at its running value; returns
/// the keys that asked to change.
fn pin_restart_keys(old: &Config, new: &mut Config) -> Vec<String> {
    let mut n = Vec::new();
    let (o, g) = (&old.gateway, &mut new.gateway);
    pin("gateway.port", &o.port, &mut g.port, &mut n);
    pin("gateway.bind", &o.bind, &mut g.bind, &mut n);
    // The certificate files themselves are re-read when they change.
    pin("gateway.tls", &o.tls, &mut g.tls, &mut n);
    pin(
        "gateway.tick_interval_ms",
        &o.tick_interval_ms,
        &mut g.tick_interval_ms,
        &mut n,
    );
    pin(
        "gateway.health_check_interval_ms",
        &o.health_check_interval_ms,
        &mut g.health_check_interval_ms,
        &mut n,
    );
    pin("gateway.presence", &o.presence, &mut g.presence, &mut n);
    pin(
        "gateway.auth.max_failures_per_minute",
        &o.auth.max_failures_per_minute,
        &mut g.auth.max_failures_per_minute,
        &mut n,
    );
    pin(
        "gateway.limits.max_connections",
        &o.limits.max_connections,
        &mut g.limits.max_connections,
        &mut n,
    );
    pin(
        "gateway.limits.max_webhook_bodies",
        &o.limits.max_webhook_bodies,
        &mut g.limits.max_webhook_bodies,
        &mut n,
    );
    pin("plugins", &old.plugins, &mut new.plugins, &mut n);
    pin("store", &old.store, &mut new.store, &mut n);
    pin("state_dir", &old.state_dir, &mut new.state_dir, &mut n);
    pin(
        "watch_config",
        &old.watch_config,
        &mut new.watch_config,
        &mut n,
    );
    n
}

/// The live keys (outside `[channels]`) that changed.
fn live_changes(old: &Config, new: &Config) -> Vec<String> {
    // Every key is either compared here, applied by `channels`, or pinned
    // by `pin_restart_keys`. These patterns name every field (no `..`): a
    // new key does not compile until it is placed in one of them (a key
    // placed nowhere would be taken for no change, and ignored).
    let Config {
        gateway: _,
        channels: _,
        plugins: _,
        store: _,
        state_dir: _,
        watch_config: _,
    } = new;
    let crate::config::GatewayConfig {
        // Compared here.
        auth: _,
        allowed_origins: _,
        allowed_hosts: _,
        trusted_proxies: _,
        client_ip_header: _,
        limits: _,
        ping_interval_ms: _,
        idle_timeout_ms: _,
        control_ui: _,
        // Pinned.
        port: _,
        bind: _,
        tls: _,
        tick_interval_ms: _,
        health_check_interval_ms: _,
        presence: _,
    } = &new.gateway;
    let (o, n) = (&old.gateway, &new.gateway);
    let mut c = Vec::new();
    if differs(&o.auth, &n.auth) {
        c.push("gateway.auth".to_string());
    }
    if o.allowed_origins != n.allowed_origins {
        c.push("gateway.allowed_origins".to_string());
    }
    if o.allowed_hosts != n.allowed_hosts {
        c.push("gateway.allowed_hosts".to_string());
    }
    if differs(&o.limits, &n.limits) {
        c.push("gateway.limits".to_string());
    }
    if o.ping_interval_ms != n.ping_interval_ms {
        c.push("gateway.ping_interval_ms".to_string());
    }
    if o.idle_timeout_ms != n.idle_timeout_ms {
        c.push("gateway.idle_timeout_ms".to_string());
    }
    if o.control_ui != n.control_ui {
        c.push("gateway.control_ui".to_string());
    }
    if o.trusted_proxies != n.trusted_proxies {
        c.push("gateway.trusted_proxies".to_string());
    }
    if o.client_ip_header != n.client_ip_header {
        c.push("gateway.client_ip_header".to_string());
    }
    for (name, ch) in &new.channels {
        if let Some(oc) = old.channels.get(name) {
            if oc.webhook_max_body_bytes != ch.webhook_max_body_bytes {
                c.push(format!("channels.{name}.webhook_max_body_bytes"));
            }
            if oc.max_messages_per_second != ch.max_messages_per_second {
                c.push(format!("channels.{name}.max_messages_per_second"));
            }
        }
    }
    c
}

/// Reads the configuration again and applies what changed. `trigger` says
/// why (`file changed`, `SIGHUP`), for the log and the event.
pub fn reload(gw: &Arc<Gateway>, trigger: &str) -> Outcome {
    let mut new = match gw.source.load() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("{e:#}");
            tracing::error!(
                trigger,
                "configuration not reloaded: {why}; the running configuration stays in force"
            );
            // Announced once per refused content, not at every retry.
            if gw.health.set_config_error(Some(why.clone())) {
                gw.broadcaster.broadcast(
                    events::CONFIG,
                    &json!({"applied": false, "changed": [], "needsRestart": [], "error": why,
                        "ok": false, "trigger": trigger}),
                    &Filter::scope(Scope::Admin),
                );
            }
            return Outcome {
                error: Some(why),
                ..Outcome::default()
            };
        }
    };
    let old = gw.config();
    let needs_restart = pin_restart_keys(&old, &mut new);
    // `changed`: the keys that took effect; `changes`: the same, one line
    // each, with what became of an account.
    let mut changed = live_changes(&old, &new);
    let mut changes = changed.clone();
    let channels_changed = differs(&old.channels, &new.channels);
    // A file refused before and valid now is news even if nothing else changed.
    let was_refused = gw.health.set_config_error(None);
    if changed.is_empty() && !channels_changed && needs_restart.is_empty() && !was_refused {
        tracing::debug!(trigger, "configuration unchanged");
        return Outcome::default();
    }
    let auth_changed = differs(&old.auth_view(), &new.auth_view());
    let channels = new.channels.clone();
    gw.set_config(new);
    if channels_changed {
        for (key, what) in gw.channels.reconfigure(channels) {
            changes.push(format!("{key}: {what}"));
            changed.push(key);
        }
    }
    if auth_changed {
        let auth = gw.config().gateway.auth.clone();
        let mut revoked = 0;
        gw.conns.for_each(|c| {
            if !crate::gateway::auth::still_accepts(&auth, &c.who.credential)
                && c.close_now(Disconnect::Policy("token revoked".into()))
            {
                revoked += 1;
            }
        });
        if revoked > 0 {
            changes.push(format!(
                "{revoked} connection(s) closed: their token or password was revoked"
            ));
        }
    }
    for n in &needs_restart {
        tracing::warn!(
            trigger,
            "configuration reload: {n} needs a restart (the running value stays)"
        );
    }
    tracing::info!(
        trigger,
        changes = changes.len(),
        "configuration reloaded: {}",
        if changes.is_empty() {
            "no live change".to_string()
        } else {
            changes.join("; ")
        }
    );
    gw.broadcaster.broadcast(
        events::CONFIG,
        &json!({"applied": true, "changed": changed, "needsRestart": needs_restart,
            "ok": true, "trigger": trigger, "changes": changes}),
        &Filter::scope(Scope::Admin),
    );
    Outcome {
        changes,
        needs_restart,
        error: None,
    }
}

impl Config {
    /// What decides who may connect (for telling whether to re-check the
    /// open connections).
    fn auth_view(&self) -> impl Debug + '_ {
        (
            &self.gateway.auth.token,
            &self.gateway.auth.password,
            &self.gateway.auth.tokens,
        )
    }
}

/// The config file's watcher and the `SIGHUP` listener, installed before the
/// daemon says it is listening (so no edit made after that is missed).
pub struct Reloader {
    gw: Arc<Gateway>,
    tls: Option<Arc<Tls>>,
    file: Option<std::path::PathBuf>,
    _watcher: Option<notify::RecommendedWatcher>,
    changed: Option<tokio::sync::mpsc::Receiver<()>>,
    hup: Option<tokio::signal::unix::Signal>,
    /// The config file is not a regular file (a pipe): it is never re-read.
    piped: bool,
}

impl Reloader {
    /// Watches the config file's directory (unless `watch_config = false`)
    /// and listens for `SIGHUP`. Without a config file only `SIGHUP` (for TLS
    /// and the environment's overrides) is listened to.
    pub fn install(gw: Arc<Gateway>, tls: Option<Arc<Tls>>) -> Self {
        let mut file = gw.source.file();
        let piped = file.as_ref().is_some_and(|f| !f.is_file());
        if let Some(f) = file.as_ref().filter(|_| piped) {
            // `--config <(…)`: read once at start; reading it again would
            // wait for a writer that is gone.
            tracing::warn!(
                file = %f.display(),
                "the config file is not a regular file (a pipe?): it is not watched, and SIGHUP re-reads only the TLS files; restart to change the configuration"
            );
            file = None;
        }
        let debounce = Duration::from_millis(gw.config().plugins.debounce_ms.max(50));
        let watched = file
            .as_ref()
            .filter(|_| gw.config().watch_config)
            .and_then(|f| {
                f.parent().map(|d| {
                    if d.as_os_str().is_empty() {
                        std::path::Path::new(".")
                    } else {
                        d
                    }
                })
            })
            .map(|dir| crate::plugins::watcher::watch(dir, debounce));
        let (_watcher, changed) = match watched {
            Some(Ok((w, rx))) => (Some(w), Some(rx)),
            Some(Err(e)) => {
                tracing::warn!("the config file is not watched ({e:#}); reload it with SIGHUP");
                (None, None)
            }
            None => (None, None),
        };
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("SIGHUP cannot be listened to: {e}");
                None
            }
        };
        Reloader {
            gw,
            tls,
            file,
            _watcher,
            changed,
            hup,
            piped,
        }
    }

    /// Reloads when the config file's bytes differ from those last read
    /// (debounced; other files in its directory do not reload) and on
    /// `SIGHUP` (which also re-reads the TLS files); runs until the daemon
    /// stops. An edit made between the first load and [`Reloader::install`]
    /// is applied at once.
    pub async fn run(mut self) {
        let mut first = self.changed.is_some();
        loop {
            let trigger = if std::mem::take(&mut first) {
                "file changed"
            } else {
                tokio::select! {
                    Some(()) = async { match self.changed.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => "file changed",
                    Some(()) = async { match self.hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                }
            };
            if trigger == "SIGHUP" {
                if let Some(t) = &self.tls {
                    crate::gateway::tls::reload_logged(t, true, "SIGHUP").await;
                }
            }
            if self.piped {
                continue;
            }
            let asked = trigger == "SIGHUP";
            let (g, file) = (self.gw.clone(), self.file.clone());
            // Off the async threads: the file may be slow to read.
            let run = move || {
                let read = file.and_then(|p| crate::config::read_config_file(&p, true).ok());
                if !asked && read == g.source.last_read() {
                    return;
                }
                reload(&g, trigger);
            };
            // systemd (`ExecReload=`) waits for the reload it asked for.
            if asked {
                crate::notify::notify("RELOADING=1");
            }
            if let Err(e) = tokio::task::spawn_blocking(run).await {
                tracing::error!("configuration reload failed: {e}");
            }
            if asked {
                crate::notify::notify("READY=1");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_keep_their_running_values() {
        let old = Config::from_toml_str("[gateway]\nport = 1000\n", |_| None).unwrap();
        let mut new = Config::from_toml_str(
            "[gateway]\nport = 2000\nallowed_origins = [\"https://a.example\"]\n[gateway.limits]\nmax_connections = 5\n",
            |_| None,
        )
        .unwrap();
        let n = pin_restart_keys(&old, &mut new);
        assert_eq!(n, vec!["gateway.port", "gateway.limits.max_connections"]);
        assert_eq!(new.gateway.port, 1000);
        assert_eq!(
            new.gateway.limits.max_connections,
            old.gateway.limits.max_connections
        );
        assert_eq!(live_changes(&old, &new), vec!["gateway.allowed_origins"]);
    }
}
