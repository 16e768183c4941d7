//! Calls from outside: `send` (idempotency, the plugin's `send`, the
//! outbound `message` event) and webhooks, and their error, [`SendError`].
//!
//! It returns its own errors; it never builds a protocol error shape.

use crate::sync::MutexExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::plugins::contract::{HttpRequest, HttpResponse, OutboundMessage};
use crate::plugins::CallError;

use super::*;

/// Why a `send` or a webhook did not go through. `gateway` maps it to the
/// protocol's error shape or an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The request names no configured channel or account (the message
    /// says which, and what is configured).
    UnknownTarget(String),
    /// The channel's plugin is not loaded.
    PluginNotLoaded { channel: String, plugin: String },
    /// The plugin's call failed.
    Call {
        channel: String,
        plugin: String,
        error: CallError,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::UnknownTarget(m) => f.write_str(m),
            SendError::PluginNotLoaded { channel, plugin } => write!(
                f,
                "channel {channel}: plugin `{plugin}` is not loaded (no {plugin}.wasm in the plugins directory)"
            ),
            SendError::Call { channel, error, .. } => write!(f, "channel {channel}: {error}"),
        }
    }
}

/// What `send` answers once a channel accepted a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendReceipt {
    /// The request's idempotency key.
    pub run_id: String,
    pub message_id: String,
    pub channel: String,
    pub chat_id: String,
}

impl ChannelManager {
    /// `send`: routes to the plugin's `send` on a fresh instance; the same
    /// idempotency key returns the first result without sending again.
    pub async fn send(
        self: &Arc<Self>,
        channel: &str,
        account: &str,
        key: &str,
        message: OutboundMessage,
    ) -> Result<SendReceipt, SendError> {
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
    ) -> Result<SendReceipt, SendError> {
        let (plugin, acct) = self.call_for(channel, account)?;
        let network = self.grants_for(channel, &plugin);
        let delivery = plugin
            .send(
                self.target(channel, account, &network),
                acct,
                message.clone(),
            )
            .await
            .map_err(|error| SendError::Call {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                error,
            })?;
        let (_, chat_id) = self.inbox.sent(channel, account, &message, &delivery);
        Ok(SendReceipt {
            run_id: key.to_string(),
            message_id: delivery.message_id,
            channel: channel.to_string(),
            chat_id,
        })
    }

    /// The plugin serving `channel` and the account's settings for a call.
    fn call_for(&self, channel: &str, account: &str) -> Result<(Arc<Plugin>, Account), SendError> {
        let (channel, account) = self.resolve(Some(channel), Some(account))?;
        let plugin_id = self.plugin_of(&channel).unwrap_or_default();
        let plugin = self
            .plugins
            .get(&plugin_id)
            .ok_or_else(|| SendError::PluginNotLoaded {
                channel: channel.clone(),
                plugin: plugin_id,
            })?;
        let acct = self.account_wit(&channel, &account).ok_or_else(|| {
            SendError::UnknownTarget(format!("unknown account {account} of channel {channel}"))
        })?;
        Ok((plugin, acct))
    }

    /// `POST /hooks/<channel>/<account>` → the plugin's `handle-webhook`.
    pub async fn webhook(
        &self,
        channel: &str,
        account: &str,
        req: HttpRequest,
    ) -> Result<HttpResponse, SendError> {
        let (plugin, acct) = self.call_for(channel, account)?;
        let network = self.grants_for(channel, &plugin);
        plugin
            .handle_webhook(self.target(channel, account, &network), acct, req)
            .await
            .map_err(|error| SendError::Call {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                error,
            })
    }
}
