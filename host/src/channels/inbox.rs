//! The message stream: the one place where a received message enters the
//! system (stamped with its `messageSeq`, broadcast, its account's
//! `lastInboundAt` set) and where a message a channel accepted is recorded
//! (the outbound `message` event). The durable log hooks in here.
//!
//! [`AccountInbox`] is the `deliver` import of one account's instances.

use crate::sync::RwLockExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::json;

use crate::broadcast::{Broadcaster, Filter};
use crate::plugins::contract::{Delivery, InboundMessage, OutboundMessage};
use crate::scopes::SCOPE_READ;

use super::status::StatusBoard;

pub struct Inbox {
    broadcaster: Arc<Broadcaster>,
    board: Arc<StatusBoard>,
    message_seq: AtomicU64,
    /// False once shutdown stops the channels: `deliver` then refuses, so a
    /// plugin keeps its upstream offset and the next start delivers again.
    /// Held for reading across check + broadcast, so no delivery that passed
    /// the check can broadcast after the flag flips.
    accepting: RwLock<bool>,
}

impl Inbox {
    pub fn new(broadcaster: Arc<Broadcaster>, board: Arc<StatusBoard>) -> Self {
        Self {
            broadcaster,
            board,
            message_seq: AtomicU64::new(0),
            accepting: RwLock::new(true),
        }
    }

    /// From here on every `deliver` is refused (shutdown).
    pub fn close(&self) {
        *self.accepting.writer() = false;
    }

    fn next_seq(&self) -> u64 {
        self.message_seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A message received on `channel`: stamped, broadcast to readers.
    pub fn deliver(&self, channel: &str, m: InboundMessage) -> Result<u64, String> {
        let accepting = self.accepting.reader();
        if !*accepting {
            return Err("the gateway is shutting down; the message was not accepted".into());
        }
        let seq = self.next_seq();
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
        self.board.update(channel, &m.account_id, |a| {
            a.last_inbound_at = Some(crate::now_ms())
        });
        Ok(seq)
    }

    /// A message `channel` accepted for sending: stamped, broadcast to
    /// readers. Returns its sequence number and the chat it went to.
    pub fn sent(
        &self,
        channel: &str,
        account: &str,
        message: &OutboundMessage,
        delivery: &Delivery,
    ) -> (u64, String) {
        let chat_id = delivery
            .chat_id
            .clone()
            .unwrap_or_else(|| message.to.clone());
        let seq = self.next_seq();
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
        self.board.update(channel, account, |a| {
            a.last_outbound_at = Some(crate::now_ms())
        });
        (seq, chat_id)
    }
}

/// `deliver` for the instances of one account.
pub struct AccountInbox {
    pub inbox: Arc<Inbox>,
    pub channel: String,
}

impl crate::plugins::imports::Inbox for AccountInbox {
    fn deliver(&self, message: InboundMessage) -> Result<u64, String> {
        self.inbox.deliver(&self.channel, message)
    }
}
