//! The message stream: the one place where a received message enters the
//! system and where a message a channel accepted is recorded. Both go into
//! the durable message log first; once a commit is durable, the log's
//! listener (set here) broadcasts each stored message as a `message` event,
//! in `messageSeq` order, and sets its account's `lastInboundAt` /
//! `lastOutboundAt`. A redelivered inbound message (same channel, account,
//! chat and message id) gets its first sequence number back and no event.
//!
//! [`AccountInbox`] is the `deliver` import of one account's instances;
//! each channel's accounts share a [`DeliveryRate`]
//! (`channels.<name>.max_messages_per_second`).
//!
//! It knows the log only through [`MessageLog`]; it never names SQLite.

use crate::sync::{MutexExt, RwLockExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::rate::{TokenBucket, BURST_SECONDS};

use crate::broadcast::{Broadcaster, Filter};
use crate::plugins::contract::{
    AttachmentSource, Delivery, InboundAttachment, InboundMessage, OutboundAttachment,
    OutboundMessage,
};
use crate::plugins::imports::Delivering;
use crate::scopes::Scope;
use crate::store::{Direction, HistoryQuery, Message, MessageLog, Page, SendRecord, StoreError};

use super::status::StatusBoard;

pub struct Inbox {
    log: Arc<dyn MessageLog>,
    /// False once shutdown stops the channels: `deliver` then refuses, so a
    /// plugin keeps its upstream offset and the next start delivers again.
    /// Held for reading across check + submit, so that `close` knows every
    /// write it must wait for.
    accepting: RwLock<bool>,
    /// Each channel's delivery rate, kept across reloads (a reload sets its
    /// bound; the tokens left stay).
    rates: Mutex<HashMap<String, Arc<DeliveryRate>>>,
    /// Where the rates count their refusals.
    metrics: Arc<crate::metrics::Metrics>,
}

/// How often a channel over its delivery rate is logged at most.
const RATE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// `channels.<name>.max_messages_per_second`: the new messages all the
/// accounts of one channel may deliver, so that one (a hostile or broken
/// plugin delivering in a loop) cannot take the message log's writer and
/// every operator's queue from the others.
pub struct DeliveryRate {
    channel: String,
    metrics: Arc<crate::metrics::Metrics>,
    /// 0: no bound.
    per_second: AtomicU32,
    state: Mutex<RateState>,
}

struct RateState {
    bucket: TokenBucket,
    /// Redeliveries' allowance ([`DeliveryRate::refund`]).
    redelivered: TokenBucket,
    /// Refused since the last log line, and when that was.
    refused: u64,
    logged: Option<Instant>,
}

impl DeliveryRate {
    fn new(channel: &str, per_second: u32, metrics: Arc<crate::metrics::Metrics>) -> DeliveryRate {
        DeliveryRate {
            channel: channel.to_string(),
            metrics,
            per_second: AtomicU32::new(per_second),
            state: Mutex::new(RateState {
                bucket: TokenBucket::full(per_second, Instant::now()),
                redelivered: TokenBucket::full(per_second, Instant::now()),
                refused: 0,
                logged: None,
            }),
        }
    }

    fn why(&self, per_second: u32) -> String {
        format!(
            "channel `{}` delivers more than channels.{}.max_messages_per_second = {per_second} (in bursts of up \
             to {BURST_SECONDS} s worth): this message was not stored; keep it and retry later (or raise the bound)",
            self.channel, self.channel
        )
    }

    /// Takes one message's room, or says why there is none (logged, at
    /// most every 10 s, with how many were refused).
    pub fn admit(&self) -> Result<(), String> {
        let per_second = self.per_second.load(Ordering::Relaxed);
        if per_second == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut st = self.state.guard();
        if st.bucket.take(per_second, now) {
            return Ok(());
        }
        st.refused += 1;
        self.metrics
            .deliveries_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        let why = self.why(per_second);
        if st
            .logged
            .is_none_or(|t| now.duration_since(t) >= RATE_REPORT_EVERY)
        {
            let refused = std::mem::take(&mut st.refused);
            st.logged = Some(now);
            drop(st);
            tracing::warn!(channel = %self.channel, refused, "{why} ({refused} refused since the last such line)");
        }
        Err(why)
    }

    /// Gives back the room [`DeliveryRate::admit`] took for a message the
    /// log already held (a redelivery): only new messages count.
    /// Redeliveries have an allowance of their own, at the same rate: past
    /// it they count as new, so that a plugin delivering one message in a
    /// loop is still held to twice the rate on the log's writer.
    fn refund(&self) {
        let per_second = self.per_second.load(Ordering::Relaxed);
        if per_second == 0 {
            return;
        }
        let mut st = self.state.guard();
        if st.redelivered.take(per_second, Instant::now()) {
            st.bucket.give_back(per_second);
        }
    }

    /// Why a message would be refused now, if it would (counted as a
    /// refusal), taking no room: a webhook is refused before its plugin is
    /// called.
    pub fn exhausted(&self) -> Option<String> {
        let per_second = self.per_second.load(Ordering::Relaxed);
        if per_second == 0 {
            return None;
        }
        let mut st = self.state.guard();
        if st.bucket.has(per_second, Instant::now()) {
            return None;
        }
        drop(st);
        self.metrics
            .deliveries_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        Some(self.why(per_second))
    }
}

impl Inbox {
    pub fn new(
        log: Arc<dyn MessageLog>,
        broadcaster: Arc<Broadcaster>,
        board: Arc<StatusBoard>,
    ) -> Self {
        let metrics = broadcaster.metrics().clone();
        log.on_health_change(board.health_notify());
        log.on_commit(Box::new(move |m: &Message| {
            broadcaster.broadcast(
                crate::broadcast::events::MESSAGE,
                &m.event(),
                &Filter::scope(Scope::Read),
            );
            board.update(&m.channel, &m.account, |a| match m.direction {
                Direction::Inbound => a.last_inbound_at = Some(m.received_at),
                Direction::Outbound => a.last_outbound_at = Some(m.received_at),
            });
        }));
        Self {
            log,
            accepting: RwLock::new(true),
            rates: Mutex::default(),
            metrics,
        }
    }

    /// Channel `channel`'s delivery rate, bounded to `per_second` from now
    /// on (the same one across reloads).
    pub fn rate(&self, channel: &str, per_second: u32) -> Arc<DeliveryRate> {
        let mut rates = self.rates.guard();
        let r = rates.entry(channel.to_string()).or_insert_with(|| {
            Arc::new(DeliveryRate::new(channel, per_second, self.metrics.clone()))
        });
        r.per_second.store(per_second, Ordering::Relaxed);
        r.clone()
    }

    /// Why channel `channel` takes no new message now, if it does not: over
    /// its delivery rate.
    pub fn rate_exhausted(&self, channel: &str) -> Option<String> {
        let rate = self.rates.guard().get(channel).cloned();
        rate.and_then(|r| r.exhausted())
    }

    /// From here on every `deliver` is refused (shutdown); resolves once
    /// every message accepted before is committed and its event queued, so
    /// no event of an acknowledged message can come after the sockets'
    /// close frames.
    pub async fn close(&self) {
        *self.accepting.writer() = false;
        if let Err(e) = self.log.flush().await {
            tracing::warn!("flushing the message log at shutdown: {e}");
        }
    }

    /// A message received on `channel`, within `rate`: resolves to its
    /// sequence number once it is durable in the log. A redelivery (the
    /// log holds it already) gives its room in `rate` back.
    pub fn deliver(
        &self,
        channel: &str,
        rate: &Arc<DeliveryRate>,
        m: InboundMessage,
    ) -> Delivering {
        if let Err(e) = check_sizes(&m) {
            return Box::pin(async move { Err(e) });
        }
        if let Err(why) = rate.admit() {
            return Box::pin(async move { Err(why) });
        }
        let accepting = self.accepting.reader();
        if !*accepting {
            return Box::pin(async {
                Err("the gateway is shutting down; the message was not accepted".to_string())
            });
        }
        let now = crate::now_ms();
        let pending = self.log.append(Message {
            seq: 0,
            direction: Direction::Inbound,
            channel: channel.to_string(),
            account: m.account_id,
            chat: m.chat_id,
            sender: m.sender_id,
            sender_name: m.sender_name,
            message_id: m.message_id,
            text: m.text,
            ts: m.timestamp_ms,
            received_at: now,
            thread_id: m.thread_id,
            reply_to_id: m.reply_to_id,
            raw: m.raw,
            idempotency_key: None,
            attachments: attachments_json(&m.attachments),
        });
        drop(accepting);
        let rate = rate.clone();
        Box::pin(async move {
            let appended = pending.await.map_err(|e| {
                format!("the message was not stored ({e}); keep it and retry later")
            })?;
            if !appended.new {
                rate.refund();
            }
            Ok(appended.seq)
        })
    }

    /// The log's row for a message `channel` accepted for sending.
    pub fn sent_message(
        channel: &str,
        account: &str,
        chat: &str,
        message: &OutboundMessage,
        delivery: &Delivery,
        key: &str,
    ) -> Message {
        let now = crate::now_ms();
        Message {
            seq: 0,
            direction: Direction::Outbound,
            channel: channel.to_string(),
            account: account.to_string(),
            chat: chat.to_string(),
            sender: account.to_string(),
            sender_name: None,
            message_id: delivery.message_id.clone(),
            text: message.text.clone(),
            ts: now,
            received_at: now,
            thread_id: message.thread_id.clone(),
            reply_to_id: message.reply_to_id.clone(),
            raw: None,
            idempotency_key: Some(key.to_string()),
            attachments: attachments_json(
                &message
                    .attachments
                    .iter()
                    .map(sent_attachment)
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// A message a channel accepted ([`Inbox::sent_message`]), with the
    /// `send`'s idempotency record (`key` → `receipt`): resolves to its
    /// sequence number once both are durable (and the key's intent gone).
    pub async fn sent(
        &self,
        message: Message,
        key: &str,
        receipt: String,
    ) -> Result<u64, StoreError> {
        self.log
            .record_send(message, key.to_string(), receipt)
            .await
    }

    /// What the log holds for a `send`'s idempotency key.
    pub fn send_record(&self, key: &str) -> Result<Option<SendRecord>, StoreError> {
        self.log.send_record(key)
    }

    /// A `send` is about to call its channel: resolves once that is durable.
    pub async fn intend(&self, key: &str, channel: &str, account: &str) -> Result<(), StoreError> {
        self.log
            .intend_send(key.to_string(), channel.to_string(), account.to_string())
            .await
    }

    /// A keyed action was made: `receipt` answers retries of `key`.
    pub async fn acted(&self, key: &str, receipt: String) -> Result<(), StoreError> {
        self.log.record_done(key.to_string(), receipt).await
    }

    /// The channel did not send: a retry of `key` may.
    pub async fn abandon(&self, key: &str) -> Result<(), StoreError> {
        self.log.abandon_send(key.to_string()).await
    }

    /// The channel's call was cut off after it reached out: retries of
    /// `key` are refused from now on.
    pub async fn cut_off(&self, key: &str) -> Result<(), StoreError> {
        self.log.cut_off_send(key.to_string()).await
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<Page, StoreError> {
        self.log.history(q)
    }

    /// Why the log cannot be written now, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.log.failure()
    }

    /// Why new messages are refused now, if they are.
    pub fn refusing(&self) -> Option<String> {
        self.log.refusing()
    }

    /// The channels refused for their share of the log, with why.
    pub fn refused_shares(&self) -> Vec<(String, String)> {
        self.log.refused_shares()
    }
}

/// Largest id (account, chat, sender, message, thread, reply) and sender
/// name a plugin may deliver, and largest text and raw payload: every
/// field that reaches the log and every operator is bounded.
pub const MAX_ID_BYTES: usize = 1024;
pub const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_RAW_BYTES: usize = 16 * 1024 * 1024;

/// Attachments' metadata as the log and `message` events carry it.
fn attachments_json(a: &[InboundAttachment]) -> Option<String> {
    if a.is_empty() {
        None
    } else {
        serde_json::to_string(a).ok()
    }
}

/// What the log keeps of an attachment that was sent: its metadata, the
/// URL it was sent from or the size of its bytes (never the bytes).
fn sent_attachment(a: &OutboundAttachment) -> InboundAttachment {
    let (size, url) = match &a.source {
        AttachmentSource::Url(u) => (None, Some(u.clone())),
        AttachmentSource::Bytes(b) => (Some(b.len() as u64), None),
    };
    InboundAttachment {
        kind: a.kind,
        mime_type: a.mime_type.clone(),
        file_name: a.file_name.clone(),
        size,
        file_id: None,
        url,
    }
}

/// Most attachments one received message may carry.
pub const MAX_ATTACHMENTS: usize = 64;

fn check_sizes(m: &InboundMessage) -> Result<(), String> {
    if m.attachments.len() > MAX_ATTACHMENTS {
        return Err(format!(
            "the message has {} attachments; the limit is {MAX_ATTACHMENTS}: the message was not accepted",
            m.attachments.len()
        ));
    }
    for a in &m.attachments {
        let fields = [
            ("attachments.mimeType", a.mime_type.as_deref()),
            ("attachments.fileName", a.file_name.as_deref()),
            ("attachments.fileId", a.file_id.as_deref()),
            ("attachments.url", a.url.as_deref()),
        ];
        for (name, v) in fields {
            let len = v.map_or(0, str::len);
            if len > MAX_ID_BYTES * 8 {
                return Err(format!(
                    "the message's `{name}` is {len} bytes; the limit is {}: the message was not accepted",
                    MAX_ID_BYTES * 8
                ));
            }
        }
    }
    let fields = [
        ("accountId", m.account_id.len(), MAX_ID_BYTES),
        ("chatId", m.chat_id.len(), MAX_ID_BYTES),
        ("senderId", m.sender_id.len(), MAX_ID_BYTES),
        ("messageId", m.message_id.len(), MAX_ID_BYTES),
        (
            "senderName",
            m.sender_name.as_ref().map_or(0, String::len),
            MAX_ID_BYTES,
        ),
        (
            "threadId",
            m.thread_id.as_ref().map_or(0, String::len),
            MAX_ID_BYTES,
        ),
        (
            "replyToId",
            m.reply_to_id.as_ref().map_or(0, String::len),
            MAX_ID_BYTES,
        ),
        ("text", m.text.len(), MAX_TEXT_BYTES),
        ("raw", m.raw.as_ref().map_or(0, String::len), MAX_RAW_BYTES),
    ];
    for (name, len, max) in fields {
        if len > max {
            return Err(format!(
                "the message's `{name}` is {len} bytes; the limit is {max}: the message was not accepted"
            ));
        }
    }
    Ok(())
}

/// `deliver` for the instances of one account.
pub struct AccountInbox {
    pub inbox: Arc<Inbox>,
    pub channel: String,
    /// Shared by the channel's accounts.
    pub rate: Arc<DeliveryRate>,
}

impl crate::plugins::imports::Inbox for AccountInbox {
    fn deliver(&self, message: InboundMessage) -> Delivering {
        self.inbox.deliver(&self.channel, &self.rate, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_fields_are_refused_by_name() {
        let mut m = InboundMessage {
            account_id: "a".into(),
            chat_id: "c".into(),
            sender_id: "s".into(),
            sender_name: None,
            message_id: "m".into(),
            text: "hi".into(),
            timestamp_ms: 0,
            thread_id: None,
            reply_to_id: None,
            raw: None,
            attachments: vec![],
        };
        assert!(check_sizes(&m).is_ok());
        m.chat_id = "c".repeat(MAX_ID_BYTES + 1);
        assert!(check_sizes(&m)
            .unwrap_err()
            .contains("`chatId` is 1025 bytes"));
        m.chat_id = "c".into();
        m.text = "t".repeat(MAX_TEXT_BYTES + 1);
        assert!(check_sizes(&m).unwrap_err().contains("`text`"));
    }
}
