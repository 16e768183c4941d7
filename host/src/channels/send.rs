//! Calls from outside: `send` (idempotency, the plugin's `send`, the
//! outbound message recorded in the log), `message.action`'s `act` (keyed
//! the same way, with no message), webhooks, and their error,
//! [`SendError`].
//!
//! Idempotency: a key's receipt is recorded in the message log in the same
//! transaction as the outbound message (an action's alone), so a retry
//! after a restart gets the first answer and sends nothing. While a first call is in flight, calls
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
use crate::store::{Message, SendRecord};

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
    /// The message log could not be read (the idempotency record) or
    /// written (the send's intent, before its channel is called).
    Store(String),
    /// An earlier run of the daemon called the channel for this key and
    /// stopped before it recorded the answer, or the host ended the
    /// plugin's call after it had reached outside the sandbox (`cut_off`:
    /// how, when this run saw it): whether the message went out is
    /// unknown, so a retry is refused rather than sent twice.
    OutcomeUnknown {
        key: String,
        channel: String,
        account: String,
        /// When the channel was called, ms since the epoch.
        at_ms: u64,
        cut_off: Option<String>,
    },
    /// The message log takes no new messages now (the disk is below
    /// `store.min_free_mb`): refused before the channel was called.
    LogFull(String),
    /// The channel is over `channels.<name>.max_messages_per_second`:
    /// a webhook refused before its plugin was called.
    RateLimited(String),
    /// The idempotency key was first used for another kind of call (`first`:
    /// "send" or an action's name) than this one (`now`).
    KeyReused {
        key: String,
        first: String,
        now: String,
    },
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
            SendError::Store(m) => f.write_str(m),
            SendError::OutcomeUnknown {
                key,
                channel,
                account,
                at_ms,
                cut_off,
            } => {
                write!(f, "the request with idempotencyKey `{key}` was interrupted {}: ", ago(*at_ms))?;
                match cut_off {
                    None => write!(f, "the gateway stopped after channel {channel} (account {account}) was called and before its answer was recorded")?,
                    Some(how) => write!(f, "the plugin of channel {channel} (account {account}) had connected out or queued the message when its call was ended ({how})")?,
                }
                f.write_str(", so whether it reached the chat is unknown; look in the chat, and to try again use a new idempotencyKey")
            }
            SendError::LogFull(m) | SendError::RateLimited(m) => f.write_str(m),
            SendError::KeyReused { key, first, now } => write!(
                f,
                "idempotencyKey `{key}` was first used for a {first}, and this request is a {now}: give each request its own idempotencyKey"
            ),
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

/// `at_ms` (ms since the epoch) in words, from now: "12 s ago".
fn ago(at_ms: u64) -> String {
    let s = crate::now_ms().saturating_sub(at_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// A keyed call whose record the log could not take yet (a send that went
/// out, an action made): its answer for retries, and the record to write.
pub struct Unrecorded {
    receipt: Receipt,
    /// The outbound message a send logs; `None` for an action.
    row: Option<Message>,
    text: String,
    /// Being written now (by its task or the stop): one writer at a time,
    /// so the outbound message is not logged twice.
    writing: bool,
}

/// A send cut off after its plugin reached out, remembered in memory when
/// the log could not mark it.
#[derive(Debug, Clone)]
pub struct CutOff {
    channel: String,
    account: String,
    at_ms: u64,
    how: String,
}

impl CutOff {
    /// What the send with `key`, and each retry of it, is answered.
    fn refusal(&self, key: &str) -> SendError {
        SendError::OutcomeUnknown {
            key: key.to_string(),
            channel: self.channel.clone(),
            account: self.account.clone(),
            at_ms: self.at_ms,
            cut_off: Some(self.how.clone()),
        }
    }
}

/// Sends that went out and whose record could not be written, at most:
/// past it, a `send` is refused before its channel is called.
pub const MAX_UNRECORDED: usize = 1024;

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

/// What `message.action` answers once a channel made a react, edit or
/// delete; kept for retries of its key as a send's receipt is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActReceipt {
    pub action: String,
    pub channel: String,
}

/// A key's first answer, as recorded (untagged: a send's receipt reads as
/// it always did).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Receipt {
    Sent(SendReceipt),
    Acted(ActReceipt),
}

impl Receipt {
    /// What the key was first used for: "send", or the action's name.
    fn what(&self) -> &str {
        match self {
            Receipt::Sent(_) => "send",
            Receipt::Acted(a) => &a.action,
        }
    }
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
        let me = self.clone();
        let (c, a, k) = (channel.to_string(), account.to_string(), key.to_string());
        let first = self
            .keyed(key, async move { me.send_once(&c, &a, &k, message).await })
            .await?;
        match first {
            Receipt::Sent(r) => Ok(r),
            other => Err(SendError::KeyReused {
                key: key.to_string(),
                first: other.what().to_string(),
                now: "send".into(),
            }),
        }
    }

    /// A keyed call: the first answer recorded for `key`, or `once`'s.
    /// While one call runs, calls with the same key wait for it; a failure
    /// is not remembered, so a retry after one calls again.
    async fn keyed(
        self: &Arc<Self>,
        key: &str,
        once: impl std::future::Future<Output = Result<Receipt, SendError>>,
    ) -> Result<Receipt, SendError> {
        if let Some(r) = self.recorded(key)? {
            return Ok(r);
        }
        let cell = self
            .in_flight
            .guard()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let result = cell
            .get_or_try_init(|| async move {
                // A call that finished between the check above and this
                // cell being made has recorded its receipt by now.
                if let Some(r) = self.recorded(key)? {
                    return Ok(r);
                }
                once.await
            })
            .await
            .cloned();
        // Done: later calls find the record (or, after a failure, which is
        // not remembered, call again).
        let mut m = self.in_flight.guard();
        if m.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(key);
        }
        result
    }

    /// The receipt for `key`: one waiting to be recorded, or the log's.
    /// A key whose call an earlier run interrupted is an error.
    fn recorded(&self, key: &str) -> Result<Option<Receipt>, SendError> {
        if let Some(u) = self.unrecorded.guard().get(key) {
            return Ok(Some(u.receipt.clone()));
        }
        if let Some(c) = self.cut_off.guard().get(key) {
            return Err(c.refusal(key));
        }
        let record = self
            .inbox
            .send_record(key)
            .map_err(|e| SendError::Store(e.to_string()))?;
        match record {
            None => Ok(None),
            Some(SendRecord::Receipt(text)) => serde_json::from_str(&text).map(Some).map_err(|e| {
                SendError::Store(format!(
                    "the receipt recorded for `{key}` is unreadable: {e}"
                ))
            }),
            Some(SendRecord::Interrupted {
                channel,
                account,
                at_ms,
                cut_off,
            }) => Err(SendError::OutcomeUnknown {
                key: key.to_string(),
                channel,
                account,
                at_ms,
                cut_off: cut_off.then(|| "it trapped, ran out of time or memory".to_string()),
            }),
        }
    }

    async fn send_once(
        self: &Arc<Self>,
        channel: &str,
        account: &str,
        key: &str,
        message: OutboundMessage,
    ) -> Result<Receipt, SendError> {
        let (plugin, target, acct) = self.call_for(channel, account)?;
        // Its record could not be kept: nothing is sent.
        self.log_takes_messages()?;
        let plugin_id = plugin.id().to_string();
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
        let at_ms = self.intend(key, channel, account).await?;
        let called = plugin.send(target, acct, message.clone()).await;
        let delivery = self
            .called(key, channel, account, &plugin_id, at_ms, called)
            .await?;
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
        let receipt = Receipt::Sent(receipt);
        let text = serde_json::to_string(&receipt).unwrap_or_default();
        let row = || Inbox::sent_message(channel, account, &chat_id, &message, &delivery, key);
        if let Err(e) = self.inbox.sent(row(), key, text.clone()).await {
            // The channel has sent it: answering an error would make the
            // client send it again. It is answered, retries get the same
            // answer, and the record is written once the log can be.
            tracing::error!(
                channel,
                account,
                key,
                "message sent but not recorded yet (retried until it is): {e}"
            );
            self.record_later(Some(row()), key, receipt.clone(), text);
        }
        Ok(receipt)
    }

    /// Before a keyed call reaches its channel: room to remember its
    /// answer, and its intent durable, so that a stop between the call and
    /// its record leaves the key interrupted, and a retry is refused
    /// instead of made twice. Returns when the channel is called (ms).
    async fn intend(&self, key: &str, channel: &str, account: &str) -> Result<u64, SendError> {
        let waiting = self.unrecorded.guard().len() + self.cut_off.guard().len();
        if waiting >= MAX_UNRECORDED {
            return Err(SendError::Store(format!(
                "{waiting} calls that went out wait to be recorded in the message log (it cannot be written; see `health`): nothing more is sent until they are"
            )));
        }
        self.inbox
            .intend(key, channel, account)
            .await
            .map_err(|e| SendError::Store(format!("{e}; nothing was sent")))?;
        Ok(crate::now_ms())
    }

    /// A keyed call's outcome: a call the host cut off after its plugin
    /// reached out is marked so (its retries are refused, never made); one
    /// the channel failed drops its intent (a retry may call again).
    async fn called<T>(
        &self,
        key: &str,
        channel: &str,
        account: &str,
        plugin: &str,
        at_ms: u64,
        result: Result<T, CallError>,
    ) -> Result<T, SendError> {
        match result {
            Ok(t) => Ok(t),
            Err(CallError::Interrupted(how)) => {
                tracing::warn!(
                    channel,
                    account,
                    key,
                    "a call was cut off after its plugin reached out ({how}): whether it went out is unknown; retries of its idempotencyKey are refused"
                );
                let cut = CutOff {
                    channel: channel.to_string(),
                    account: account.to_string(),
                    at_ms,
                    how,
                };
                if let Err(e) = self.inbox.cut_off(key).await {
                    tracing::warn!(
                        channel,
                        account,
                        key,
                        "marking a cut-off call: {e}; remembered until the daemon stops"
                    );
                    self.cut_off.guard().insert(key.to_string(), cut.clone());
                }
                Err(cut.refusal(key))
            }
            Err(error) => {
                // Kept if this fails, which refuses retries after a restart.
                if let Err(e) = self.inbox.abandon(key).await {
                    tracing::warn!(
                        channel,
                        account,
                        key,
                        "dropping a failed call's intent: {e}"
                    );
                }
                Err(SendError::Call {
                    channel: channel.to_string(),
                    plugin: plugin.to_string(),
                    error: error.map_message(|m| self.hide_secrets(channel, account, m)),
                })
            }
        }
    }

    /// Keeps `receipt` for retries of `key` and writes the call's record
    /// (with `row`, a send's outbound message) once the log takes it
    /// (every 0.5 s at first, then up to every 10 s; and once more when
    /// the daemon stops: [`ChannelManager::record_owed`]).
    fn record_later(
        self: &Arc<Self>,
        row: Option<Message>,
        key: &str,
        receipt: Receipt,
        text: String,
    ) {
        let owed = Unrecorded {
            receipt,
            row,
            text,
            writing: false,
        };
        self.unrecorded.guard().insert(key.to_string(), owed);
        let me = Arc::downgrade(self);
        let key = key.to_string();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_millis(500);
            loop {
                tokio::time::sleep(wait).await;
                let Some(me) = me.upgrade() else { return };
                match me.write_owed(&key).await {
                    Some(true) => {
                        tracing::info!(key, "a sent message's record is written at last");
                        return;
                    }
                    None => return,
                    Some(false) => {}
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
        });
    }

    /// Tries once to write the owed record of `key`: `Some(true)` written,
    /// `Some(false)` not (or another writer has it now), `None` nothing is
    /// owed for it any more.
    async fn write_owed(&self, key: &str) -> Option<bool> {
        let (row, text) = {
            let mut owed = self.unrecorded.guard();
            let u = owed.get_mut(key)?;
            if u.writing {
                return Some(false);
            }
            u.writing = true;
            (u.row.clone(), u.text.clone())
        };
        let written = match row {
            Some(row) => self.inbox.sent(row, key, text).await.map(|_| ()),
            None => self.inbox.acted(key, text).await,
        }
        .is_ok();
        let mut owed = self.unrecorded.guard();
        if written {
            owed.remove(key);
        } else if let Some(u) = owed.get_mut(key) {
            u.writing = false;
        }
        Some(written)
    }

    /// At a stop: tries once more to write every record still owed (they
    /// are otherwise lost with the process, and their keys refused as
    /// `SEND_OUTCOME_UNKNOWN` after the restart). Returns the keys left.
    pub async fn record_owed(&self) -> Vec<String> {
        let keys: Vec<String> = self.unrecorded.guard().keys().cloned().collect();
        let mut left = Vec::new();
        for key in keys {
            if self.write_owed(&key).await == Some(false) {
                left.push(key);
            }
        }
        left
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
    /// its capability is checked. Keyed as `send` is: a retry of `key`
    /// after the action was made gets the first answer and acts no more.
    pub async fn act(
        self: &Arc<Self>,
        channel: &str,
        account: &str,
        key: &str,
        action: Action,
    ) -> Result<(), SendError> {
        let name = action_name(&action);
        let (plugin, _, _) = self.call_for(channel, account)?;
        let capability = action.capability();
        if !plugin.loaded.info.capabilities.has(capability) {
            return Err(SendError::Unsupported {
                channel: channel.to_string(),
                plugin: plugin.id().to_string(),
                capability,
                what: format!("action {name}"),
            });
        }
        let me = self.clone();
        let (c, a, k) = (channel.to_string(), account.to_string(), key.to_string());
        let first = self
            .keyed(key, async move { me.act_once(&c, &a, &k, action).await })
            .await?;
        match first {
            Receipt::Acted(r) if r.action == name => Ok(()),
            other => Err(SendError::KeyReused {
                key: key.to_string(),
                first: other.what().to_string(),
                now: name.to_string(),
            }),
        }
    }

    async fn act_once(
        self: &Arc<Self>,
        channel: &str,
        account: &str,
        key: &str,
        action: Action,
    ) -> Result<Receipt, SendError> {
        let (plugin, target, acct) = self.call_for(channel, account)?;
        let plugin_id = plugin.id().to_string();
        let name = action_name(&action);
        let at_ms = self.intend(key, channel, account).await?;
        let called = plugin.act(target, acct, action).await;
        self.called(key, channel, account, &plugin_id, at_ms, called)
            .await?;
        let receipt = Receipt::Acted(ActReceipt {
            action: name.to_string(),
            channel: channel.to_string(),
        });
        let text = serde_json::to_string(&receipt).unwrap_or_default();
        if let Err(e) = self.inbox.acted(key, text.clone()).await {
            // Made: answering an error would make the client act again.
            tracing::error!(
                channel,
                account,
                key,
                "{name} made but not recorded yet (retried until it is): {e}"
            );
            self.record_later(None, key, receipt.clone(), text);
        }
        Ok(receipt)
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
        if let Some(why) = self.inbox.rate_exhausted(channel) {
            return Err(SendError::RateLimited(why));
        }
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
