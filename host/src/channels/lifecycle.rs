//! Starting and stopping accounts: `validate`, then `run` on a long-lived
//! instance, restarted with backoff; plugin changes restart or stop them.
//!
//! It never calls a plugin except through the `Plugin` facade.

use crate::sync::MutexExt;
use std::sync::Arc;
use std::time::Instant;

use crate::plugins::CallError;
use crate::plugins::Change;

use super::*;
use crate::sync::RwLockExt as _;

impl ChannelManager {
    /// Starts every enabled account (at start-up).
    pub fn start_all(self: &Arc<Self>) {
        let keys: Vec<Key> = {
            let s = self.board.read();
            s.iter()
                .flat_map(|(c, e)| {
                    e.accounts
                        .values()
                        .filter(|a| a.enabled)
                        .map(move |a| (c.clone(), a.account_id.clone()))
                })
                .collect()
        };
        for (c, a) in keys {
            self.start(&c, &a);
        }
    }

    /// Starts (or restarts) one account's `run` loop.
    pub fn start(self: &Arc<Self>, channel: &str, account: &str) {
        let key = (channel.to_string(), account.to_string());
        self.wanted.guard().insert(key.clone());
        let me = self.clone();
        let (c, a) = key.clone();
        let handle = self.plugins.spawn(async move { me.run_loop(c, a).await });
        if let Some(old) = self.tasks.guard().insert(key, handle.abort_handle()) {
            old.abort();
        }
    }

    /// Stops one account: cancels its `run` loop.
    pub fn stop(&self, channel: &str, account: &str) {
        let key = (channel.to_string(), account.to_string());
        self.wanted.guard().remove(&key);
        if let Some(h) = self.tasks.guard().remove(&key) {
            h.abort();
        }
        self.update(channel, account, |a| {
            if a.running {
                a.last_stop_at = Some(crate::now_ms());
            }
            a.running = false;
            a.connected = false;
        });
    }

    /// Puts a new `[channels]` in force: every account whose configuration
    /// changed starts, stops or restarts alone (nothing else is touched);
    /// calls that start from now on use the new settings and grants. An
    /// account an operator stopped (`channels.stop`) stays stopped when only
    /// its settings change. Returns each account changed, by key
    /// (`channels.<c>.accounts.<a>`), with what became of it.
    pub fn reconfigure(
        self: &Arc<Self>,
        config: BTreeMap<String, ChannelConfig>,
    ) -> Vec<(String, String)> {
        let old = self.layout();
        let changes = layout::diff(&old.config, &config);
        let enabled_in = |cfg: &BTreeMap<String, ChannelConfig>, c: &str, a: &str| {
            cfg.get(c)
                .and_then(|ch| ch.accounts.get(a).map(|t| layout::account_enabled(ch, t)))
                .unwrap_or(false)
        };
        // The board first (new accounts exist before they start; removed
        // ones are stopped below and then dropped from it).
        self.board.reshape(|b| {
            for (name, c) in &config {
                let e = b
                    .entry(name.clone())
                    .or_insert_with(|| layout::board_entry(name, c));
                e.plugin = layout::plugin_id(name, c);
                for (id, t) in &c.accounts {
                    let on = layout::account_enabled(c, t);
                    e.accounts
                        .entry(id.clone())
                        .or_insert_with(|| layout::fresh_account(id, on))
                        .enabled = on;
                }
            }
        });
        *self.layout.writer() = Arc::new(Layout::build(config.clone(), &self.handles));
        let mut lines = Vec::new();
        for (c, a, change) in changes {
            let now_on = enabled_in(&config, &c, &a);
            let key = (c.clone(), a.clone());
            let what = match &change {
                layout::AccountChange::Added if now_on => {
                    self.start(&c, &a);
                    "added, started".to_string()
                }
                layout::AccountChange::Added => "added (disabled)".to_string(),
                layout::AccountChange::Removed => {
                    self.stop(&c, &a);
                    "removed, stopped".to_string()
                }
                layout::AccountChange::Changed(why) => {
                    let was_on = enabled_in(&old.config, &c, &a);
                    let wanted = self.wanted.guard().contains(&key);
                    let verb = if !now_on {
                        self.stop(&c, &a);
                        "stopped"
                    } else if !was_on || wanted {
                        self.start(&c, &a);
                        if was_on {
                            "restarted"
                        } else {
                            "started"
                        }
                    } else {
                        "kept stopped (stopped by an operator)"
                    };
                    format!("{} changed, {verb}", why.join(", "))
                }
            };
            tracing::info!(channel = %c, account = %a, "configuration reload: {what}");
            lines.push((format!("channels.{c}.accounts.{a}"), what));
        }
        // Drop what the new configuration no longer has.
        self.board.reshape(|b| {
            b.retain(|name, _| config.contains_key(name));
            for (name, e) in b.iter_mut() {
                if let Some(c) = config.get(name) {
                    e.accounts.retain(|id, _| c.accounts.contains_key(id));
                    e.default_account = layout::default_account(&e.accounts);
                }
            }
        });
        lines
    }

    pub fn account_snapshot(&self, channel: &str, account: &str) -> Option<AccountSnapshot> {
        self.snapshot()
            .channels
            .get(channel)?
            .accounts
            .get(account)
            .cloned()
    }

    /// Stops every account (shutdown step 3). Returns how many were running.
    /// From here on `deliver` refuses messages (see `accepting`).
    pub async fn stop_all(&self) -> usize {
        self.inbox.close().await;
        let keys: Vec<Key> = self.tasks.guard().keys().cloned().collect();
        for (c, a) in &keys {
            self.stop(c, a);
        }
        keys.len()
    }

    /// Applies plugin changes: restart the accounts of a loaded or replaced
    /// plugin on the new version; stop those of a removed one.
    pub fn on_plugin_changes(self: &Arc<Self>, changes: &[Change]) {
        for ch in changes {
            let (id, restart) = match ch {
                Change::Loaded { id, .. } | Change::Replaced { id, .. } => (id, true),
                Change::Removed { id } => (id, false),
                Change::Failed { .. } => continue,
            };
            let affected: Vec<Key> = {
                let s = self.board.read();
                s.iter()
                    .filter(|(_, e)| &e.plugin == id)
                    .flat_map(|(c, e)| e.accounts.keys().map(move |a| (c.clone(), a.clone())))
                    .collect()
            };
            let wanted = self.wanted.guard().clone();
            for (c, a) in affected {
                if !wanted.contains(&(c.clone(), a.clone())) {
                    continue;
                }
                if restart {
                    tracing::info!(channel = %c, account = %a, plugin = %id, "restarting account on the new plugin version");
                    self.start(&c, &a);
                } else {
                    if let Some(h) = self.tasks.guard().remove(&(c.clone(), a.clone())) {
                        h.abort();
                    }
                    self.update(&c, &a, |s| {
                        s.running = false;
                        s.connected = false;
                        s.last_stop_at = Some(crate::now_ms());
                        s.last_error = Some(format!("plugin `{id}` was removed"));
                    });
                }
            }
        }
    }

    async fn run_loop(self: Arc<Self>, channel: String, account: String) {
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            let outcome = self.run_once(&channel, &account).await;
            let err = match outcome {
                Ok(()) => "run returned; restarting".to_string(),
                Err(e) => self.hide_secrets(&channel, &account, e),
            };
            tracing::warn!(channel = %channel, account = %account, retry_in_ms = backoff.as_millis() as u64, "account stopped: {err}");
            if started.elapsed() >= STABLE_RUN {
                backoff = BACKOFF_START;
            }
            self.update(&channel, &account, |a| {
                a.running = false;
                a.connected = false;
                a.last_stop_at = Some(crate::now_ms());
                a.last_error = Some(err.clone());
                a.reconnect_attempts += 1;
            });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One attempt: `validate` on a fresh instance, then `run` on a long-lived one.
    async fn run_once(&self, channel: &str, account: &str) -> Result<(), String> {
        let (plugin, target, acct) = self.call_for(channel, account).map_err(|e| match e {
            SendError::PluginNotLoaded { plugin, .. } => format!(
                "plugin `{plugin}` is not loaded (no {plugin}.wasm in the plugins directory)"
            ),
            other => other.to_string(),
        })?;
        // Whatever an earlier `run` of this account took and did not confirm
        // goes out again, before anything newer.
        self.outbox.requeue_in_flight(channel, account);
        self.update(channel, account, |a| {
            a.running = true;
            a.last_start_at = Some(crate::now_ms());
        });
        let Target {
            imports,
            network,
            trust,
        } = target;
        let target = || Target {
            imports: imports.clone(),
            network: network.clone(),
            trust: trust.clone(),
        };
        let in_words = |what: &str, e: CallError| match e {
            CallError::Failed(m) => format!("{what} failed: {m}"),
            other => other.to_string(),
        };
        plugin
            .validate(target(), acct.clone())
            .await
            .map_err(|e| in_words("validate", e))?;
        self.update(channel, account, |a| a.last_error = None);
        // run: no deadline, interrupted only by cancellation.
        plugin
            .run(target(), acct)
            .await
            .map_err(|e| in_words("run", e))
    }
}
