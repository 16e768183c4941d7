//! The system of record: everything durable. The message log: every
//! inbound message a plugin delivers and every outbound message a channel
//! accepted is a row with its `messageSeq` (the log's sequence, monotonic
//! across restarts), written before it is acknowledged; an inbound message
//! already in the log (same channel, account, chat and message id) is not
//! stored again; a `send`'s idempotency record is written in the same
//! transaction as its message. The rest ([`StateStore`]): the plugins'
//! key-value stores and the host outbox. [`MessageLog`] and [`StateStore`]
//! are the seams (a replicated backend would be a second implementation);
//! [`sqlite::SqliteLog`] is the one there is.
//!
//! It imports nothing of the crate but `sync`, `now_ms` and `config`'s
//! `SyncMode`: it knows nothing of channels, plugins or the gateway. What
//! happens after a commit (the `message` event) is the listener's business
//! ([`MessageLog::on_commit`]).

pub mod files;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `messageSeq`; 0 until stored.
    pub seq: u64,
    pub direction: Direction,
    pub channel: String,
    pub account: String,
    pub chat: String,
    pub sender: String,
    pub sender_name: Option<String>,
    pub message_id: String,
    pub text: String,
    /// The message's own time (the upstream's for inbound, the send's for
    /// outbound), ms since the epoch.
    pub ts: u64,
    /// When the gateway recorded it, ms since the epoch.
    pub received_at: u64,
    pub thread_id: Option<String>,
    pub reply_to_id: Option<String>,
    pub raw: Option<String>,
    /// The `send` request's key (outbound only).
    pub idempotency_key: Option<String>,
    /// Its attachments' metadata, a JSON array (`None`: none).
    pub attachments: Option<String>,
}

impl Message {
    /// The bytes of its text fields (what a history page is bounded by).
    pub fn size(&self) -> usize {
        let opt = |o: &Option<String>| o.as_ref().map_or(0, String::len);
        self.channel.len()
            + self.account.len()
            + self.chat.len()
            + self.sender.len()
            + opt(&self.sender_name)
            + self.message_id.len()
            + self.text.len()
            + opt(&self.thread_id)
            + opt(&self.reply_to_id)
            + opt(&self.raw)
            + opt(&self.idempotency_key)
            + opt(&self.attachments)
    }

    /// The payload of its `message` event (and of a `messages.history`
    /// entry: the same shape).
    pub fn event(&self) -> MessageEvent<'_> {
        MessageEvent {
            message_seq: self.seq,
            direction: self.direction.as_str(),
            channel: &self.channel,
            account_id: &self.account,
            chat_id: &self.chat,
            sender_id: &self.sender,
            sender_name: self.sender_name.as_deref(),
            message_id: &self.message_id,
            text: &self.text,
            ts: self.ts,
            thread_id: self.thread_id.as_deref(),
            reply_to_id: self.reply_to_id.as_deref(),
            raw: self.raw.as_deref(),
            // Written by the gateway as a JSON array; read back as is.
            attachments: self
                .attachments
                .as_deref()
                .and_then(|a| serde_json::from_str(a).ok()),
        }
    }
}

/// A `message` event's payload, borrowed from the [`Message`] (serialised
/// straight from it, no `Value` tree).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEvent<'a> {
    pub message_seq: u64,
    pub direction: &'static str,
    pub channel: &'a str,
    pub account_id: &'a str,
    pub chat_id: &'a str,
    pub sender_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<&'a str>,
    pub message_id: &'a str,
    pub text: &'a str,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<&'a str>,
    /// Attachments' metadata: `[{kind, mimeType?, fileName?, size?, fileId?, url?}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<&'a serde_json::value::RawValue>,
}

/// What `append` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// False: the message was already in the log (`seq` is the first copy's).
    pub new: bool,
}

/// A `messages.history` query.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub channel: Option<String>,
    pub account: Option<String>,
    pub chat: Option<String>,
    /// Messages after this sequence number, oldest first.
    pub after: Option<u64>,
    /// Messages before this sequence number. Without `after`, the page is
    /// the newest messages before it (or the newest of all, with neither),
    /// still returned oldest first.
    pub before: Option<u64>,
    pub limit: usize,
}

/// A page of history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub messages: Vec<Message>,
    /// More messages match beyond this page (after it when paging forward,
    /// before it when paging back).
    pub has_more: bool,
}

/// A store error, in words that say what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// What the log holds for a `send`'s idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendRecord {
    /// The send's answer (JSON), recorded with its outbound message.
    Receipt(String),
    /// An earlier run of the daemon called the channel and stopped before
    /// it recorded the answer, or (`cut_off`) the host ended the plugin's
    /// call after it had reached outside the sandbox: whether the message
    /// went out is unknown.
    Interrupted {
        channel: String,
        account: String,
        /// When the channel was called, ms since the epoch.
        at_ms: u64,
        cut_off: bool,
    },
}

/// A write on its way to the disk; resolves once it is durable.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Called after each commit with the messages it stored, in `seq` order.
pub type Listener = Box<dyn Fn(&Message) + Send + Sync>;

/// What one batch of [`MessageLog::prune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted (messages, records, claims).
    pub rows: usize,
    /// The log is over `store.max_bytes`, and the bytes per channel that
    /// choose what goes are still being counted: prune again shortly.
    pub counting: bool,
}

/// Retention of the log (`[store]`); the default keeps everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Messages recorded before this (ms since the epoch) go; 0: none.
    pub before_ms: u64,
    /// The oldest messages go while the log is larger; 0: no bound.
    pub max_bytes: u64,
    /// Idempotency records made before this go.
    pub idempotency_before_ms: u64,
    /// Now: key-value claims that expired go.
    pub now_ms: u64,
}

/// The message log.
pub trait MessageLog: Send + Sync {
    /// Stores an inbound message unless one with the same channel, account,
    /// chat and message id is already there. Resolves once the row is
    /// durable.
    fn append(&self, message: Message) -> Pending<Appended>;

    /// Stores an outbound message a channel accepted together with the
    /// `send`'s idempotency record (`key` → `receipt`), in one transaction.
    fn record_send(&self, message: Message, key: String, receipt: String) -> Pending<u64>;

    /// What the log holds for a `send`'s idempotency key: its receipt,
    /// or that a run of the daemon stopped while it was being sent. A send
    /// in flight in this run is neither.
    fn send_record(&self, key: &str) -> Result<Option<SendRecord>, StoreError>;

    /// Records that a `send` is about to call its channel, before it does.
    /// Resolves once durable: a stop before the send's record (or its
    /// [`MessageLog::abandon_send`]) leaves the key interrupted at the next
    /// start, and its retries are refused instead of sent twice.
    fn intend_send(&self, key: String, channel: String, account: String) -> Pending<()>;

    /// A keyed call that logs no message (`message.action`'s react, edit,
    /// delete) was made: `receipt` answers the key's retries from now on
    /// and its intent goes. Resolves once durable.
    fn record_done(&self, key: String, receipt: String) -> Pending<()>;

    /// The channel answered that it did not send: the intent goes, and a
    /// retry sends.
    fn abandon_send(&self, key: String) -> Pending<()>;

    /// The host ended the channel's call after the plugin reached outside
    /// the sandbox: the key is interrupted from now on (its retries are
    /// refused). Not waited for on the disk: lost, the intent is marked
    /// interrupted at the next start anyway.
    fn cut_off_send(&self, key: String) -> Pending<()>;

    /// Sends whose outcome became unknown since the log was opened: the
    /// intents the last run left, and the sends cut off since.
    fn outcome_unknown(&self) -> u64;

    /// A page of history.
    fn history(&self, query: &HistoryQuery) -> Result<Page, StoreError>;

    /// Removes one small batch of what `retention` no longer keeps; resolves
    /// to how many rows went (0 and not `counting`: nothing left to prune).
    fn prune(&self, retention: Retention) -> Pending<Pruned>;

    /// Why writes are failing now (disk full, read-only, I/O error), if
    /// they are, cleared by the next successful commit; or why new
    /// messages are refused ([`MessageLog::refusing`]).
    fn failure(&self) -> Option<String>;

    /// Why new messages are refused now, if they are (the disk has less
    /// free space than `store.min_free_mb`): `append` fails with it, and a
    /// `send` or webhook is refused before its channel is called.
    fn refusing(&self) -> Option<String>;

    /// The channels whose new messages were refused, in the last 30 s, for
    /// holding more than half of the log near the disk's floor (and have
    /// had none taken since), by name, with why.
    fn refused_shares(&self) -> Vec<(String, String)>;

    /// Resolves once every write submitted before it is committed and
    /// its listener called.
    fn flush(&self) -> Pending<()>;

    /// Copies everything committed into the database file and empties the
    /// WAL, both on disk whatever `store.sync` is: after it the database
    /// file alone holds the log. For a clean stop.
    fn checkpoint(&self) -> Pending<()>;

    /// Sets the listener called after each commit (before the commit's
    /// writes resolve).
    fn on_commit(&self, listener: Listener);

    /// Sets what is woken when something `health` shows of the log changes:
    /// the disk falls below its floor or has room again, a channel is
    /// refused for its share of the log or no longer is.
    fn on_health_change(&self, wake: std::sync::Arc<tokio::sync::Notify>);

    /// How many times the log fsynced itself to make key-value writes
    /// durable that no acknowledged write had.
    fn settles(&self) -> Settles;
}

/// The log's own fsyncs for key-value writes (see [`MessageLog::settles`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settles {
    /// Asked for: a write that waits for the disk (`StateStore::settle` at
    /// the end of a plugin call, a flush, an acknowledged write that
    /// changed nothing) found the WAL owing an fsync.
    pub asked: u64,
    /// The writer's own: nobody asked within the settle deadline, or the
    /// writer closed.
    pub timer: u64,
}

/// An outbox message waiting in the store, without the message itself
/// (read with [`StateStore::outbox_get`] when it is handed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: u64,
    pub channel: String,
    pub account: String,
    /// The message's size as stored (its JSON), in bytes.
    pub size: usize,
}

/// The daemon's other durable state, in the same database: the plugins'
/// key-value stores (per channel) and the host outbox. They join the
/// message log's group commits. Outbox writes resolve once they are
/// durable; key-value writes once they are committed, safe from a crash of
/// the daemon, and durable (safe from a power loss) with the next write
/// that acknowledges anything, with [`StateStore::settle`], or within
/// 50 ms (`sqlite::SETTLE_WITHIN`).
pub trait StateStore: Send + Sync {
    fn kv_get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn kv_set(&self, channel: &str, key: &str, value: Vec<u8>) -> Pending<()>;
    fn kv_delete(&self, channel: &str, key: &str) -> Pending<()>;
    /// Records `key` as seen until `expires_at` unless it already is (and
    /// has not expired by `now`); `true`: this call recorded it. Atomic.
    fn kv_claim(&self, channel: &str, key: &str, expires_at: u64, now: u64) -> Pending<bool>;
    fn kv_unclaim(&self, channel: &str, key: &str) -> Pending<()>;
    /// Resolves once every key-value write committed so far is durable
    /// (at once when it already is).
    fn settle(&self) -> Pending<()>;
    /// Queues a message (JSON); resolves to its queue number.
    fn outbox_push(&self, channel: &str, account: &str, message: String) -> Pending<u64>;
    fn outbox_remove(&self, seq: u64) -> Pending<()>;
    /// Keeps a message that cannot be delivered, out of the queue.
    fn outbox_set_aside(&self, seq: u64) -> Pending<()>;
    /// Every queued message (not set aside), in queue order.
    fn outbox_queued(&self) -> Result<Vec<OutboxRow>, StoreError>;
    /// The message (JSON) queued as `seq`, if it still is.
    fn outbox_get(&self, seq: u64) -> Result<Option<String>, StoreError>;
}

/// Prunes what `[store]` no longer keeps, in small batches, at start and then
/// every `every`, until `stop`. Each batch is one short transaction of the
/// writer, so `deliver` never waits long behind it; while the bytes per
/// channel that `max_bytes` needs are counted (in steps, by the writer), it
/// asks again every 50 ms.
pub async fn run_pruner(
    log: std::sync::Arc<dyn MessageLog>,
    retention_days: u64,
    max_bytes: u64,
    idempotency_ttl_hours: u64,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    loop {
        let now = crate::now_ms();
        let r = Retention {
            before_ms: if retention_days == 0 {
                0
            } else {
                now.saturating_sub(retention_days.saturating_mul(DAY_MS))
            },
            max_bytes,
            idempotency_before_ms: now
                .saturating_sub(idempotency_ttl_hours.saturating_mul(3600 * 1000)),
            now_ms: now,
        };
        let mut total = 0;
        loop {
            match log.prune(r).await {
                Ok(Pruned {
                    rows: 0,
                    counting: false,
                }) => break,
                Ok(Pruned { rows, counting }) => {
                    total += rows;
                    if counting {
                        // The writer counts in steps between its groups;
                        // ask again later, deliveries go on meanwhile.
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("pruning the message log failed: {e}");
                    break;
                }
            }
            if stop.is_cancelled() {
                return;
            }
            // Let deliveries in between batches.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if total > 0 {
            tracing::info!(rows = total, "pruned the message log");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
