//! Calls from plugins: `deliver` (the one place a received message enters
//! the system: stamped, broadcast), `set-state`, the outbox and the KV store,
//! each checked against the channel and accounts the instance serves.

use crate::sync::RwLockExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde_json::json;

use crate::broadcast::Filter;
use crate::plugins::kv::KvStore;
use crate::plugins::runtime::{AccountState, InboundMessage, OutboundMessage, PluginHost};
use crate::scopes::SCOPE_READ;

use super::*;

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

impl ChannelManager {
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
}
