//! Calls from operators: `send` (idempotency, the plugin's `send`, the
//! outbound `message` event), webhooks, and the protocol errors of both.

use crate::sync::{MutexExt, RwLockExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::broadcast::Filter;
use crate::gateway::frames::ErrorShape;
use crate::plugins::call::{CallError, Target};
use crate::plugins::runtime::{ChannelError, HttpRequest, HttpResponse, OutboundMessage};
use crate::scopes::SCOPE_READ;

use super::*;

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
