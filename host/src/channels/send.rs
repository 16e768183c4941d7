//! Calls from outside: `send` (idempotency, the plugin's `send`, the
//! outbound message recorded in the log) and webhooks, and their error,
//! [`SendError`].
//!
//! Idempotency: a key's receipt is recorded in the message log in the same
//! transaction as the outbound message, so a retry after a restart gets the
//! first answer and sends nothing. While a first call is in flight, calls
//! with the same key wait for it (an in-memory cell per key in flight, gone
//! when the call ends: its cost does not grow with the records kept).
//!
//! It returns its own errors; it never builds a protocol error shape.

use crate::sync::MutexExt;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::plugins::contract::{Action, HttpRequest, HttpResponse, OutboundMessage};

/// OpenClaw's name of an action.
pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::React { .. } => "react",
        Action::Edit { .. } => "edit",
        Action::Delete(_) => "delete",
    }
}
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
    /// The message log could not be read (the idempotency record).
    Store(String),
    /// The message log takes no new messages now (the disk is below
    /// `store.min_free_mb`): refused before the channel was called.
    LogFull(String),
    /// The channel's plugin does not declare the capability the request
    /// needs (`what` names the request's field or action).
    Unsupported {
        channel: String,
        plugin: String,
        capability: &'static str,
        what: String,
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
            SendError::Store(m) => write!(f, "the message log cannot be read: {m}"),
            SendError::LogFull(m) => f.write_str(m),
            SendError::Unsupported {
                channel,
                plugin,
                capability,
                what,
            } => write!(
                f,
                "channel {channel} cannot honour {what}: its plugin `{plugin}` does not declare the `{capability}` capability"
            ),
        }
    }
}

/// What `send` answers once a channel accepted a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        if let Some(r) = self.recorded(key)? {
            return Ok(r);
        }
        let cell = self
            .in_flight
            .guard()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let me = self.clone();
        let (c, a, k) = (channel.to_string(), account.to_string(), key.to_string());
        let result = cell
            .get_or_try_init(|| async move {
                // A call that finished between the check above and this
                // cell being made has recorded its receipt by now.
                if let Some(r) = me.recorded(&k)? {
                    return Ok(r);
                }
                me.send_once(&c, &a, &k, message).await
            })
            .await
            .cloned();
        // Done: later calls find the record (or, after a failure, which is
        // not remembered, send again).
        let mut m = self.in_flight.guard();
        if m.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(key);
        }
        result
    }

    /// The receipt the log holds for `key`.
    fn recorded(&self, key: &str) -> Result<Option<SendReceipt>, SendError> {
        let Some(text) = self
            .inbox
            .receipt(key)
            .map_err(|e| SendError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            SendError::Store(format!(
                "the receipt recorded for `{key}` is unreadable: {e}"
            ))
        })
    }

    async fn send_once(
        &self,
        channel: &str,
        account: &str,
        key: &str,
        message: OutboundMessage,
    ) -> Result<SendReceipt, SendError> {
        let (plugin, target, acct) = self.call_for(channel, account)?;
        // Its record could not be kept: nothing is sent.
        self.log_takes_messages()?;
        let caps = plugin.loaded.info.capabilities;
        let lacking = if !message.attachments.is_empty() && !caps.media {
            Some(("media", "attachments (`mediaUrl`, `mediaUrls`, `buffer`)"))
        } else if message.thread_id.is_some() && !caps.threads {
            Some(("threads", "`threadId`"))
        } else {
            None
        };
        if let Some((capability, what)) = lacking {
            return Err(SendError::Unsupported {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                capability,
                what: what.to_string(),
            });
        }
        let delivery = plugin
            .send(target, acct, message.clone())
            .await
            .map_err(|error| SendError::Call {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                error,
            })?;
        let chat_id = delivery
            .chat_id
            .clone()
            .unwrap_or_else(|| message.to.clone());
        let receipt = SendReceipt {
            run_id: key.to_string(),
            message_id: delivery.message_id.clone(),
            channel: channel.to_string(),
            chat_id: chat_id.clone(),
        };
        let text = serde_json::to_string(&receipt).unwrap_or_default();
        if let Err(e) = self
            .inbox
            .sent(channel, account, &chat_id, &message, &delivery, key, text)
            .await
        {
            // The channel has sent it: answering an error would make the
            // client send it again. It is answered, and not in the log.
            tracing::error!(channel, account, key, "message sent but not recorded: {e}");
        }
        Ok(receipt)
    }

    /// Refuses a call that would log messages while the log takes none
    /// (the disk below `store.min_free_mb`), before its plugin is called.
    fn log_takes_messages(&self) -> Result<(), SendError> {
        match self.inbox.refusing() {
            Some(why) => Err(SendError::LogFull(why)),
            None => Ok(()),
        }
    }

    /// `message.action`'s react, edit and delete: the plugin's `act`, once
    /// its capability is checked.
    pub async fn act(&self, channel: &str, account: &str, action: Action) -> Result<(), SendError> {
        let (plugin, target, acct) = self.call_for(channel, account)?;
        let capability = action.capability();
        if !plugin.loaded.info.capabilities.has(capability) {
            return Err(SendError::Unsupported {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                capability,
                what: format!("action {}", action_name(&action)),
            });
        }
        plugin
            .act(target, acct, action)
            .await
            .map_err(|error| SendError::Call {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                error,
            })
    }

    /// `POST /hooks/<channel>/<account>` → the plugin's `handle-webhook`.
    pub async fn webhook(
        &self,
        channel: &str,
        account: &str,
        req: HttpRequest,
    ) -> Result<HttpResponse, SendError> {
        let (plugin, target, acct) = self.call_for(channel, account)?;
        // Its messages could not be kept: the sender retries later.
        self.log_takes_messages()?;
        plugin
            .handle_webhook(target, acct, req)
            .await
            .map_err(|error| SendError::Call {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                error,
            })
    }
}
