//! The channel manager: messaging-channel accounts from `[channels.<name>]`,
//! their lifecycle (start = `validate` then the `run` loop, restarted with
//! backoff; stop = cancel), `send` with idempotency, webhooks, inbound
//! `deliver`, and the runtime snapshot behind `channels.status` and `health`.
//!
//! Plugin code always runs on the plugin runtime; a `run` loop is one task
//! there, cancelled by aborting it (which drops its store).

use crate::sync::{MutexExt, RwLockExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{Notify, OnceCell};

use crate::broadcast::{Broadcaster, Filter};
use crate::config::ChannelConfig;
use crate::gateway::auth::SCOPE_READ;
use crate::gateway::frames::ErrorShape;
use crate::outbox::Outbox;
use crate::plugins::call::{CallError, Target};
use crate::plugins::kv::KvStore;
use crate::plugins::runtime::{
    Account, AccountState, ChannelError, HttpRequest, HttpResponse, InboundMessage,
    OutboundMessage, PluginHost,
};
use crate::plugins::{Change, Plugin, PluginManager};

/// Backoff of a failing `run` loop: 1 s doubling to 5 min.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A `run` that lasted this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long a `send` result is remembered for its idempotency key.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

/// One account's runtime state, as `channels.status` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccountSnapshot {
    pub account_id: String,
    pub enabled: bool,
    pub configured: bool,
    pub running: bool,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_start_at: Option<u64>,
    pub last_stop_at: Option<u64>,
    pub reconnect_attempts: u64,
    pub last_inbound_at: Option<u64>,
    pub last_outbound_at: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ChannelEntry {
    pub label: String,
    pub plugin: String,
    pub default_account: Option<String>,
    pub accounts: BTreeMap<String, AccountSnapshot>,
}

/// The runtime snapshot of every channel, ordered by channel id.
#[derive(Debug, Clone, Default)]
pub struct ChannelsSnapshot {
    pub channels: BTreeMap<String, ChannelEntry>,
}

type Key = (String, String);
/// idempotency key → (first seen, the result once there is one).
type IdempotencyMap = HashMap<String, (Instant, Arc<OnceCell<Value>>)>;

pub struct ChannelManager {
    config: BTreeMap<String, ChannelConfig>,
    plugins: Arc<PluginManager>,
    broadcaster: Arc<Broadcaster>,
    health: Arc<Notify>,
    state: RwLock<BTreeMap<String, ChannelEntry>>,
    /// Running `run` loops.
    tasks: Mutex<HashMap<Key, tokio::task::AbortHandle>>,
    /// Accounts an operator or the config wants running.
    wanted: Mutex<std::collections::HashSet<Key>>,
    idempotency: Mutex<IdempotencyMap>,
    message_seq: AtomicU64,
    /// False once shutdown stops the channels: `deliver` then refuses, so a
    /// plugin keeps its upstream offset and the next start delivers again.
    /// Held for reading across check + broadcast, so no delivery that passed
    /// the check can broadcast after the flag flips.
    accepting: RwLock<bool>,
    /// Messages `send` handed to a `run` loop (`outbox-push`/`outbox-pop`),
    /// kept on disk until taken.
    outbox: Outbox,
}

/// The host side of a plugin's imports in the daemon.
pub struct GatewayHost {
    channels: std::sync::OnceLock<Weak<ChannelManager>>,
    kv: Arc<KvStore>,
}

impl GatewayHost {
    pub fn new(kv: Arc<KvStore>) -> Arc<Self> {
        Arc::new(Self {
            channels: std::sync::OnceLock::new(),
            kv,
        })
    }

    pub fn attach(&self, channels: &Arc<ChannelManager>) {
        let _ = self.channels.set(Arc::downgrade(channels));
    }

    fn channels(&self) -> Option<Arc<ChannelManager>> {
        self.channels.get().and_then(Weak::upgrade)
    }
}

impl PluginHost for GatewayHost {
    fn deliver(&self, plugin: &str, channel: &str, m: InboundMessage) -> Result<u64, String> {
        let cm = self.channels().ok_or("the gateway is shutting down")?;
        cm.deliver(plugin, channel, m)
    }

    fn set_state(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
        state: AccountState,
        detail: Option<String>,
    ) {
        if let Some(cm) = self.channels() {
            cm.set_state(plugin, channel, account, state, detail);
        }
    }

    fn outbox_push(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
        m: OutboundMessage,
    ) -> Result<u64, String> {
        let cm = self.channels().ok_or("the gateway is shutting down")?;
        cm.outbox_push(plugin, channel, account, m)
    }

    fn outbox_pop(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
    ) -> Option<(u64, OutboundMessage)> {
        self.channels()?.outbox_pop(plugin, channel, account)
    }

    fn outbox_ack(&self, plugin: &str, channel: &str, account: &str, seq: u64) {
        if let Some(cm) = self.channels() {
            cm.outbox_ack(plugin, channel, account, seq);
        }
    }

    fn kv_get(&self, channel: &str, key: &str) -> Option<Vec<u8>> {
        self.kv.get(channel, key)
    }

    fn kv_set(&self, plugin: &str, channel: &str, key: &str, value: Vec<u8>) {
        if let Err(e) = self.kv.set(channel, key, &value) {
            tracing::error!(plugin, channel, "kv-set failed: {e}");
        }
    }

    fn kv_delete(&self, channel: &str, key: &str) {
        self.kv.delete(channel, key)
    }

    fn kv_claim(&self, plugin: &str, channel: &str, key: &str, ttl_ms: u64) -> bool {
        match self.kv.claim(channel, key, ttl_ms, crate::now_ms()) {
            Ok(first) => first,
            Err(e) => {
                tracing::error!(plugin, channel, "kv-claim failed: {e}");
                false
            }
        }
    }

    fn kv_unclaim(&self, channel: &str, key: &str) {
        self.kv.unclaim(channel, key)
    }
}

fn settings_json(table: &toml::Table) -> String {
    let mut t = table.clone();
    t.remove("enabled");
    serde_json::to_string(&t).unwrap_or_else(|_| "{}".into())
}

/// The protocol error for a channel error.
pub fn channel_error(channel: &str, e: &ChannelError) -> ErrorShape {
    match e {
        ChannelError::InvalidConfig(m) => {
            ErrorShape::invalid(format!("{channel}: invalid config: {m}"))
        }
        ChannelError::Unauthorized(m) => {
            ErrorShape::unavailable(format!("{channel}: unauthorized: {m}"))
        }
        ChannelError::NotFound(m) => ErrorShape::invalid(format!("{channel}: not found: {m}")),
        ChannelError::RateLimited(ms) => {
            ErrorShape::unavailable(format!("{channel}: rate limited, retry in {ms} ms"))
                .retry_after(*ms)
        }
        ChannelError::Transient(m) => {
            ErrorShape::unavailable(format!("{channel}: temporary failure: {m}")).retry_after(1000)
        }
        ChannelError::Fatal(m) => ErrorShape::unavailable(format!("{channel}: {m}")),
    }
}

/// The protocol error for a failed plugin call of `channel`.
pub fn call_error(channel: &str, e: &CallError) -> ErrorShape {
    match e {
        CallError::Channel(c) => channel_error(channel, c),
        CallError::NetworkDenied { destination, .. } => {
            ErrorShape::invalid(format!("channel {channel}: {e}"))
                .with_details(json!({"code": "NETWORK_DENIED", "destination": destination}))
        }
        CallError::Busy(_) => {
            ErrorShape::unavailable(format!("channel {channel}: {e}")).retry_after(1000)
        }
        CallError::Failed(_) | CallError::Unavailable(_) => {
            ErrorShape::unavailable(format!("channel {channel}: {e}"))
        }
    }
}

impl ChannelManager {
    pub fn new(
        config: BTreeMap<String, ChannelConfig>,
        plugins: Arc<PluginManager>,
        broadcaster: Arc<Broadcaster>,
        health: Arc<Notify>,
        outbox: Outbox,
    ) -> Arc<Self> {
        let mut state = BTreeMap::new();
        for (name, c) in &config {
            let accounts = c
                .accounts
                .iter()
                .map(|(id, t)| {
                    let enabled =
                        c.enabled && t.get("enabled").and_then(|v| v.as_bool()).unwrap_or(true);
                    (
                        id.clone(),
                        AccountSnapshot {
                            account_id: id.clone(),
                            enabled,
                            configured: true,
                            running: false,
                            connected: false,
                            last_error: None,
                            last_start_at: None,
                            last_stop_at: None,
                            reconnect_attempts: 0,
                            last_inbound_at: None,
                            last_outbound_at: None,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>();
            let default_account = if accounts.contains_key("default") {
                Some("default".to_string())
            } else {
                accounts.keys().next().cloned()
            };
            state.insert(
                name.clone(),
                ChannelEntry {
                    label: name.clone(),
                    plugin: c.plugin.clone().unwrap_or_else(|| name.clone()),
                    default_account,
                    accounts,
                },
            );
        }
        Arc::new(Self {
            config,
            plugins,
            broadcaster,
            health,
            state: RwLock::new(state),
            tasks: Mutex::new(HashMap::new()),
            wanted: Mutex::new(Default::default()),
            idempotency: Mutex::new(HashMap::new()),
            message_seq: AtomicU64::new(0),
            accepting: RwLock::new(true),
            outbox,
        })
    }

    pub fn snapshot(&self) -> ChannelsSnapshot {
        ChannelsSnapshot {
            channels: self.state.reader().clone(),
        }
    }

    fn update(&self, channel: &str, account: &str, f: impl FnOnce(&mut AccountSnapshot)) {
        let mut s = self.state.writer();
        if let Some(a) = s.get_mut(channel).and_then(|c| c.accounts.get_mut(account)) {
            f(a);
        }
        drop(s);
        self.health.notify_one();
    }

    fn plugin_of(&self, channel: &str) -> Option<String> {
        self.state.reader().get(channel).map(|c| c.plugin.clone())
    }

    /// The network `channel` may reach: its own `network` list, else what
    /// its plugin asks for. Per channel: two channels of one plugin never
    /// share grants.
    pub fn grants_for(&self, channel: &str, plugin: &Plugin) -> Vec<String> {
        self.config
            .get(channel)
            .and_then(|c| c.network.clone())
            .unwrap_or_else(|| plugin.loaded.info.network.clone())
    }

    /// `plugins.list`'s `grants` of a plugin: channel → what it may reach.
    pub fn plugin_grants(&self, plugin: &Plugin) -> Value {
        let s = self.state.reader();
        Value::Object(
            s.iter()
                .filter(|(_, e)| e.plugin == plugin.id())
                .map(|(c, _)| (c.clone(), json!(self.grants_for(c, plugin))))
                .collect(),
        )
    }

    /// `channels.<name>.webhook_max_body_bytes`, or `None` for an unknown channel.
    pub fn webhook_body_limit(&self, channel: &str) -> Option<usize> {
        self.config.get(channel).map(|c| c.webhook_max_body_bytes)
    }

    fn account_wit(&self, channel: &str, account: &str) -> Option<Account> {
        let t = self.config.get(channel)?.accounts.get(account)?;
        Some(Account {
            id: account.to_string(),
            settings: settings_json(t),
        })
    }

    /// Resolves `channel`/`accountId` of a request (defaults when there is one choice).
    pub fn resolve(
        &self,
        channel: Option<&str>,
        account: Option<&str>,
    ) -> Result<(String, String), ErrorShape> {
        let s = self.state.reader();
        let channel = match channel {
            Some(c) => c.to_string(),
            None if s.len() == 1 => s.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(ErrorShape::invalid(format!(
                    "channel is required (configured: {})",
                    if s.is_empty() {
                        "none".to_string()
                    } else {
                        s.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                )))
            }
        };
        let entry = s.get(&channel).ok_or_else(|| {
            ErrorShape::invalid(format!(
                "unknown channel: {channel}; add [channels.{channel}] to the config"
            ))
        })?;
        let account = match account {
            Some(a) => a.to_string(),
            None => entry.default_account.clone().ok_or_else(|| {
                ErrorShape::invalid(format!(
                    "channel {channel} has no accounts; add [channels.{channel}.accounts.default]"
                ))
            })?,
        };
        if !entry.accounts.contains_key(&account) {
            return Err(ErrorShape::invalid(format!(
                "unknown account {account} of channel {channel} (configured: {})",
                entry
                    .accounts
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok((channel, account))
    }

    // ---- lifecycle ----

    /// Starts every enabled account (at start-up).
    pub fn start_all(self: &Arc<Self>) {
        let keys: Vec<Key> = {
            let s = self.state.reader();
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
        *self.accepting.writer() = false;
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
                let s = self.state.reader();
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
                Err(e) => e,
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
        let plugin_id = self.plugin_of(channel).ok_or("channel not configured")?;
        let plugin = self.plugins.get(&plugin_id).ok_or_else(|| {
            format!(
                "plugin `{plugin_id}` is not loaded (no {plugin_id}.wasm in the plugins directory)"
            )
        })?;
        let acct = self
            .account_wit(channel, account)
            .ok_or("account not configured")?;
        // Whatever an earlier `run` of this account took and did not confirm
        // goes out again, before anything newer.
        self.outbox.requeue_in_flight(channel, account);
        self.update(channel, account, |a| {
            a.running = true;
            a.last_start_at = Some(crate::now_ms());
        });
        let network = self.grants_for(channel, &plugin);
        let target = || Target {
            channel,
            network: &network,
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

    // ---- calls from plugins ----

    fn deliver(&self, plugin: &str, channel: &str, m: InboundMessage) -> Result<u64, String> {
        self.serves(plugin, channel, &m.account_id)?;
        let accepting = self.accepting.reader();
        if !*accepting {
            return Err("the gateway is shutting down; the message was not accepted".into());
        }
        let seq = self.message_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut ev = json!({
            "messageSeq": seq, "direction": "inbound", "channel": channel, "accountId": m.account_id,
            "chatId": m.chat_id, "senderId": m.sender_id, "messageId": m.message_id, "text": m.text,
            "ts": m.timestamp_ms,
        });
        if let Some(v) = m.sender_name {
            ev["senderName"] = json!(v);
        }
        if let Some(v) = m.thread_id {
            ev["threadId"] = json!(v);
        }
        if let Some(v) = m.reply_to_id {
            ev["replyToId"] = json!(v);
        }
        if let Some(v) = m.raw {
            ev["raw"] = json!(v);
        }
        self.broadcaster.broadcast(
            crate::broadcast::events::MESSAGE,
            &ev,
            &Filter::scope(SCOPE_READ),
        );
        self.update(channel, &m.account_id, |a| {
            a.last_inbound_at = Some(crate::now_ms())
        });
        Ok(seq)
    }

    /// Checks that `plugin` serves `channel` and it has `account`.
    fn serves(&self, plugin: &str, channel: &str, account: &str) -> Result<(), String> {
        if channel.is_empty() {
            return Err("not available while the plugin is being loaded".into());
        }
        let s = self.state.reader();
        match s.get(channel) {
            Some(c) if c.plugin == plugin && c.accounts.contains_key(account) => Ok(()),
            Some(c) if c.plugin == plugin => {
                Err(format!("unknown account `{account}` of channel {channel}"))
            }
            _ => Err(format!("plugin {plugin} does not serve channel {channel}")),
        }
    }

    fn outbox_push(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
        m: OutboundMessage,
    ) -> Result<u64, String> {
        self.serves(plugin, channel, account)?;
        self.outbox.push(channel, account, m)
    }

    fn outbox_pop(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
    ) -> Option<(u64, OutboundMessage)> {
        self.serves(plugin, channel, account).ok()?;
        self.outbox.pop(channel, account)
    }

    fn outbox_ack(&self, plugin: &str, channel: &str, account: &str, seq: u64) {
        if self.serves(plugin, channel, account).is_ok() {
            self.outbox.ack(channel, account, seq);
        }
    }

    fn set_state(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
        state: AccountState,
        detail: Option<String>,
    ) {
        if self.serves(plugin, channel, account).is_err() {
            return;
        }
        self.update(channel, account, |a| {
            a.connected = matches!(state, AccountState::Connected);
            match state {
                AccountState::Error => a.last_error = detail.or(Some("error".into())),
                AccountState::Connected => a.last_error = None,
                _ => {
                    if detail.is_some() {
                        a.last_error = detail;
                    }
                }
            }
        });
    }

    // ---- calls from operators ----

    /// `send`: routes to the plugin's `send` on a fresh instance; the same
    /// idempotency key returns the first result without sending again.
    pub async fn send(
        self: &Arc<Self>,
        channel: &str,
        account: &str,
        key: &str,
        message: OutboundMessage,
    ) -> Result<Value, ErrorShape> {
        let cell = {
            let mut m = self.idempotency.guard();
            m.retain(|_, (t, _)| t.elapsed() < IDEMPOTENCY_TTL);
            m.entry(key.to_string())
                .or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new())))
                .1
                .clone()
        };
        let me = self.clone();
        let (c, a, k) = (channel.to_string(), account.to_string(), key.to_string());
        let result = cell
            .get_or_try_init(|| async move { me.send_once(&c, &a, &k, message).await })
            .await
            .cloned();
        if result.is_err() {
            // Failures are not remembered: a retry with the same key sends again.
            self.idempotency.guard().remove(key);
        }
        result
    }

    async fn send_once(
        &self,
        channel: &str,
        account: &str,
        key: &str,
        message: OutboundMessage,
    ) -> Result<Value, ErrorShape> {
        let plugin_id = self.plugin_of(channel).unwrap_or_default();
        let plugin = self.plugins.get(&plugin_id).ok_or_else(|| {
            ErrorShape::unavailable(format!(
                "channel {channel}: plugin `{plugin_id}` is not loaded"
            ))
            .retry_after(1000)
        })?;
        let acct = self
            .account_wit(channel, account)
            .ok_or_else(|| ErrorShape::invalid(format!("unknown account {account}")))?;
        let network = self.grants_for(channel, &plugin);
        let target = Target {
            channel,
            network: &network,
        };
        let delivery = plugin
            .send(target, acct, message.clone())
            .await
            .map_err(|e| call_error(channel, &e))?;
        let chat_id = delivery
            .chat_id
            .clone()
            .unwrap_or_else(|| message.to.clone());
        let seq = self.message_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut ev = json!({
            "messageSeq": seq, "direction": "outbound", "channel": channel, "accountId": account,
            "chatId": chat_id, "senderId": account, "messageId": delivery.message_id,
            "text": message.text, "ts": crate::now_ms(),
        });
        if let Some(t) = &message.thread_id {
            ev["threadId"] = json!(t);
        }
        if let Some(r) = &message.reply_to_id {
            ev["replyToId"] = json!(r);
        }
        self.broadcaster.broadcast(
            crate::broadcast::events::MESSAGE,
            &ev,
            &Filter::scope(SCOPE_READ),
        );
        self.update(channel, account, |a| {
            a.last_outbound_at = Some(crate::now_ms())
        });
        Ok(
            json!({"runId": key, "messageId": delivery.message_id, "channel": channel, "chatId": chat_id}),
        )
    }

    /// `POST /hooks/<channel>/<account>` → the plugin's `handle-webhook`.
    pub async fn webhook(
        &self,
        channel: &str,
        account: &str,
        req: HttpRequest,
    ) -> Result<HttpResponse, (u16, String)> {
        if !self
            .state
            .reader()
            .get(channel)
            .is_some_and(|c| c.accounts.contains_key(account))
        {
            return Err((
                404,
                format!("no account {account} of channel {channel} is configured"),
            ));
        }
        let plugin_id = self.plugin_of(channel).unwrap_or_default();
        let plugin = self
            .plugins
            .get(&plugin_id)
            .ok_or_else(|| (503, format!("plugin `{plugin_id}` is not loaded")))?;
        let acct = self
            .account_wit(channel, account)
            .ok_or((404, "unknown account".to_string()))?;
        let network = self.grants_for(channel, &plugin);
        let target = Target {
            channel,
            network: &network,
        };
        plugin
            .handle_webhook(target, acct, req)
            .await
            .map_err(|e| match e {
                CallError::Busy(m) | CallError::Unavailable(m) => (503, m),
                other => (502, format!("plugin `{plugin_id}`: {other}")),
            })
    }
}

impl ChannelsSnapshot {
    pub fn order(&self) -> Vec<String> {
        self.channels.keys().cloned().collect()
    }

    pub fn labels(&self) -> Value {
        Value::Object(
            self.channels
                .iter()
                .map(|(k, e)| (k.clone(), json!(e.label)))
                .collect(),
        )
    }

    /// The `channels.status` result, optionally for one channel.
    pub fn status_payload(&self, only: Option<&str>, ts: u64) -> Value {
        let selected: Vec<(&String, &ChannelEntry)> = self
            .channels
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
            .collect();
        let mut channels = serde_json::Map::new();
        let mut accounts = serde_json::Map::new();
        let mut defaults = serde_json::Map::new();
        let mut labels = serde_json::Map::new();
        for (id, e) in &selected {
            let list: Vec<&AccountSnapshot> = e.accounts.values().collect();
            let running = list.iter().filter(|a| a.running).count();
            let connected = list.iter().filter(|a| a.connected).count();
            channels.insert(
                (*id).clone(),
                json!({"configured": !list.is_empty(), "running": running > 0, "connected": connected > 0,
                       "plugin": e.plugin, "accounts": list.len(), "runningAccounts": running, "connectedAccounts": connected}),
            );
            accounts.insert((*id).clone(), json!(list));
            labels.insert((*id).clone(), json!(e.label));
            if let Some(d) = &e.default_account {
                defaults.insert((*id).clone(), json!(d));
            }
        }
        json!({
            "ts": ts,
            "channelOrder": selected.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "channelLabels": labels,
            "channels": channels,
            "channelAccounts": accounts,
            "channelDefaultAccountId": defaults,
        })
    }

    /// The `channels` object of `health`: per account running/connected/lastError.
    pub fn health_payload(&self) -> Value {
        Value::Object(
            self.channels
                .iter()
                .map(|(k, e)| {
                    let accts: serde_json::Map<String, Value> = e
                        .accounts
                        .iter()
                        .map(|(id, a)| {
                            let mut v = json!({"running": a.running, "connected": a.connected});
                            if let Some(err) = &a.last_error {
                                v["lastError"] = json!(err);
                            }
                            (id.clone(), v)
                        })
                        .collect();
                    (k.clone(), json!({"accounts": accts}))
                })
                .collect(),
        )
    }

    /// Accounts that should be running and are in error (for `/ready`).
    pub fn failing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, e) in &self.channels {
            for (id, a) in &e.accounts {
                if a.enabled && a.last_error.is_some() && !a.connected {
                    out.push(format!("channel:{k}/{id}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_map_to_protocol_errors() {
        let e = call_error("tg", &CallError::Channel(ChannelError::RateLimited(1500)));
        assert_eq!(e.code, "UNAVAILABLE");
        assert_eq!(e.retryable, Some(true));
        assert!(e.message.contains("retry in 1500 ms"), "{}", e.message);

        let e = call_error(
            "tg",
            &CallError::NetworkDenied {
                destination: "api.x:443".into(),
                how: "add \"api.x:443\" to `network` in [channels.tg] to allow it".into(),
            },
        );
        assert_eq!(e.code, "INVALID_REQUEST");
        assert_ne!(e.retryable, Some(true));
        assert_eq!(
            e.message,
            "channel tg: network access to api.x:443 was denied; add \"api.x:443\" to `network` in [channels.tg] to allow it"
        );
        assert_eq!(
            e.details.as_ref().map(|d| d["code"].clone()),
            Some(json!("NETWORK_DENIED"))
        );

        let e = call_error("tg", &CallError::Busy("plugin `t` is busy".into()));
        assert_eq!((e.code.as_str(), e.retryable), ("UNAVAILABLE", Some(true)));

        let e = call_error("tg", &CallError::Failed("plugin panicked: boom".into()));
        assert_eq!(e.message, "channel tg: plugin panicked: boom");
        assert_ne!(e.retryable, Some(true));
    }
}
