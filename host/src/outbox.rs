//! The host outbox behind `outbox-push`/`outbox-pop`: messages a fresh
//! `send` instance hands to the `run` loop that owns the account's
//! connection (IRC). Each queued message is a row of the store's `outbox`
//! table, committed before `push` returns. Only the queues of queue numbers
//! (and each message's size) are kept in memory: a message is read back
//! from the store when it is handed out, so an account whose server stays
//! away holds its queued bytes on disk, not in the daemon's memory.
//! `pop` hands a message out but keeps it "in flight" until `ack`
//! removes its row; `requeue_in_flight` (called
//! before each `run` of the account starts) puts unconfirmed messages back at
//! the front. So a message `send` accepted survives `run` failures, reloads
//! and restarts or crashes of the daemon, and is sent at least once. Order is
//! the queue number's, which keeps growing across restarts.
//!
//! It knows the contract's `OutboundMessage`, implements the `AccountOutbox`
//! import, and keeps its rows through `store::StateStore`.

use crate::sync::MutexExt;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::plugins::contract::{AttachmentSource, OutboundAttachment, OutboundMessage};
use crate::plugins::imports::{AccountOutbox, Writing};
use crate::store::{StateStore, StoreError};

/// Messages one account's outbox holds before `push` fails.
pub const CAPACITY: usize = 1000;

/// Bytes (as stored: the message's JSON) one account's outbox holds before
/// `push` fails: a plugin may push messages of any size, and a disk is not
/// endless either. Four operator `send`s of the largest frame fit
/// (`gateway.max_payload_bytes`, 25 MiB by default).
pub const CAPACITY_BYTES: usize = 128 * 1024 * 1024;

/// How often a message may be handed out and not confirmed before it is set
/// aside (kept in the store, marked failed): one that keeps getting the connection dropped
/// would otherwise block the account's queue for ever.
pub const MAX_ATTEMPTS: u32 = 10;

type Key = (String, String);

/// Messages an account's outbox holds (queued, or handed out and not yet
/// confirmed), and their bytes as stored.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct Depth {
    pub messages: usize,
    pub bytes: usize,
}

#[derive(Default)]
struct Account {
    /// Queue numbers waiting, oldest first (their messages are in the store).
    queued: VecDeque<u64>,
    /// Queue numbers handed out and not acknowledged.
    in_flight: BTreeSet<u64>,
    /// Hand-outs without an ack so far, by queue number (this process only).
    attempts: HashMap<u64, u32>,
    /// Each message's size as stored, by queue number, and their sum
    /// (with pushes not yet durable).
    sizes: HashMap<u64, usize>,
    bytes: usize,
}

impl Account {
    /// A message that left the outbox (acknowledged or set aside).
    fn gone(&mut self, seq: u64) {
        if let Some(n) = self.sizes.remove(&seq) {
            self.bytes = self.bytes.saturating_sub(n);
        }
    }

    fn len(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }
}

struct Queues {
    by_account: HashMap<Key, Account>,
}

pub struct Outbox {
    store: Arc<dyn StateStore>,
    queues: Arc<Mutex<Queues>>,
    /// [`CAPACITY_BYTES`] (smaller in tests).
    capacity_bytes: usize,
    /// When a message that could not be read was last logged: a failing
    /// disk is reported every [`REPORT_EVERY`], not at every `pop`.
    reported: Mutex<Option<Instant>>,
}

/// How often a failing read of a queued message is logged at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Bytes reserved by a `push` until its message is queued: released if the
/// write fails.
struct Reserved {
    queues: Arc<Mutex<Queues>>,
    key: Key,
    size: usize,
    /// Cleared by [`Reserved::keep`] once the message is queued.
    armed: bool,
}

impl Reserved {
    /// The message is queued: its bytes stay counted against its account.
    fn keep(mut self) -> (Arc<Mutex<Queues>>, Key) {
        self.armed = false;
        (self.queues.clone(), std::mem::take(&mut self.key))
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(a) = self.queues.guard().by_account.get_mut(&self.key) {
            a.bytes = a.bytes.saturating_sub(self.size);
        }
    }
}

fn to_json(m: &OutboundMessage) -> Value {
    let mut v =
        json!({"to": m.to, "text": m.text, "threadId": m.thread_id, "replyToId": m.reply_to_id});
    if !m.attachments.is_empty() {
        v["attachments"] = m.attachments.iter().map(attachment_json).collect();
    }
    v
}

fn attachment_json(a: &OutboundAttachment) -> Value {
    use base64::Engine as _;
    let (key, value) = match &a.source {
        AttachmentSource::Url(u) => ("url", u.clone()),
        AttachmentSource::Bytes(b) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(b),
        ),
    };
    json!({"kind": a.kind, "mimeType": a.mime_type, "fileName": a.file_name, key: value})
}

fn attachment_from(v: &Value) -> Option<OutboundAttachment> {
    use base64::Engine as _;
    let opt = |k: &str| v[k].as_str().map(str::to_string);
    let source = match (v["url"].as_str(), v["base64"].as_str()) {
        (Some(u), _) => AttachmentSource::Url(u.to_string()),
        (None, Some(b)) => {
            AttachmentSource::Bytes(base64::engine::general_purpose::STANDARD.decode(b).ok()?)
        }
        _ => return None,
    };
    Some(OutboundAttachment {
        kind: serde_json::from_value(v["kind"].clone()).ok()?,
        mime_type: opt("mimeType"),
        file_name: opt("fileName"),
        source,
    })
}

fn from_json(v: &Value) -> Option<OutboundMessage> {
    let opt = |k: &str| v[k].as_str().map(str::to_string);
    let attachments = match v["attachments"].as_array() {
        Some(a) => a.iter().map(attachment_from).collect::<Option<Vec<_>>>()?,
        None => Vec::new(),
    };
    Some(OutboundMessage {
        to: v["to"].as_str()?.to_string(),
        text: v["text"].as_str()?.to_string(),
        thread_id: opt("threadId"),
        reply_to_id: opt("replyToId"),
        attachments,
    })
}

impl Outbox {
    /// Queues again what an earlier run left queued (its queue numbers and
    /// sizes; the messages are read when they are handed out).
    pub fn open(store: Arc<dyn StateStore>) -> Result<Outbox, StoreError> {
        let mut by_account: HashMap<Key, Account> = HashMap::new();
        for row in store.outbox_queued()? {
            let a = by_account.entry((row.channel, row.account)).or_default();
            a.queued.push_back(row.seq);
            a.sizes.insert(row.seq, row.size);
            a.bytes += row.size;
        }
        for ((channel, account), a) in &by_account {
            tracing::info!(%channel, %account, messages = a.queued.len(), "outbox messages from the last run are queued again");
        }
        Ok(Outbox {
            store,
            queues: Arc::new(Mutex::new(Queues { by_account })),
            capacity_bytes: CAPACITY_BYTES,
            reported: Mutex::new(None),
        })
    }

    /// Queues `m` for the account; resolves to its queue number once it is
    /// durable.
    pub fn push(
        &self,
        channel: &str,
        account: &str,
        m: OutboundMessage,
    ) -> Writing<Result<u64, String>> {
        let key = (channel.to_string(), account.to_string());
        let json = to_json(&m).to_string();
        drop(m);
        let size = json.len();
        // The size is reserved now, so that pushes racing each other cannot
        // pass the bound together.
        let refused = {
            let mut qs = self.queues.guard();
            let a = qs.by_account.entry(key.clone()).or_default();
            if a.len() >= CAPACITY {
                Some(format!(
                    "outbox of {channel}/{account} is full ({CAPACITY} messages): is the account connected?"
                ))
            } else if a.bytes + size > self.capacity_bytes {
                Some(format!(
                    "outbox of {channel}/{account} is full: it holds {} bytes, and this message of {size} would pass {} (messages as stored): is the account connected?",
                    a.bytes, self.capacity_bytes
                ))
            } else {
                a.bytes += size;
                None
            }
        };
        if let Some(e) = refused {
            return Box::pin(async move { Err(e) });
        }
        let writing = self.store.outbox_push(channel, account, json);
        let reserved = Reserved {
            queues: self.queues.clone(),
            key,
            size,
            armed: true,
        };
        // Queued once durable, even if the caller stops waiting (its plugin
        // call trapped): a task of its own finishes the push.
        let pushing = tokio::spawn(async move {
            let seq = writing.await.map_err(|e| format!("outbox: {e}"))?;
            let (queues, key) = reserved.keep();
            let mut qs = queues.guard();
            let a = qs.by_account.entry(key).or_default();
            a.sizes.insert(seq, size);
            // Pushes that commit together may finish in any order.
            let at = a.queued.partition_point(|s| *s < seq);
            a.queued.insert(at, seq);
            Ok(seq)
        });
        Box::pin(async move {
            pushing
                .await
                .unwrap_or_else(|e| Err(format!("outbox: the push task failed: {e}")))
        })
    }

    /// Hands out the account's oldest queued message, read from the store;
    /// it stays on disk, in flight, until [`Outbox::ack`]. A row that is not
    /// a message is set aside and reported, and the next one handed out. One
    /// the store cannot read now stays at the head of the queue (`None`:
    /// the plugin asks again later).
    pub fn pop(&self, channel: &str, account: &str) -> Option<(u64, OutboundMessage)> {
        loop {
            let seq = self.with_account(channel, account, |a| {
                let seq = a.queued.pop_front()?;
                a.in_flight.insert(seq);
                Some(seq)
            })??;
            // Read outside the lock: other accounts' pushes go on meanwhile.
            match self.store.outbox_get(seq) {
                Ok(Some(json)) => {
                    let message = serde_json::from_str::<Value>(&json)
                        .ok()
                        .and_then(|v| from_json(&v));
                    if let Some(m) = message {
                        return Some((seq, m));
                    }
                    self.drop_from_queue(channel, account, seq);
                    drop(self.store.outbox_set_aside(seq));
                    tracing::error!(%channel, %account, seq, "unreadable outbox message set aside (kept in the store, marked failed)");
                }
                Ok(None) => {
                    self.drop_from_queue(channel, account, seq);
                    tracing::warn!(%channel, %account, seq, "an outbox message was no longer in the store; skipped");
                }
                Err(e) => {
                    self.with_account(channel, account, |a| {
                        if a.in_flight.remove(&seq) {
                            a.queued.push_front(seq);
                        }
                    });
                    let mut reported = self.reported.guard();
                    if reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                        *reported = Some(Instant::now());
                        tracing::error!(%channel, %account, seq, "an outbox message could not be read; it stays queued and is tried again: {e}");
                    }
                    return None;
                }
            }
        }
    }

    /// A message handed out that will not be sent (not a message, or gone
    /// from the store) leaves the account's queue and its bound.
    fn drop_from_queue(&self, channel: &str, account: &str, seq: u64) {
        self.with_account(channel, account, |a| {
            a.in_flight.remove(&seq);
            a.attempts.remove(&seq);
            a.gone(seq);
        });
    }

    /// Runs `f` on the account's queues, under the lock, if it has any.
    fn with_account<R>(
        &self,
        channel: &str,
        account: &str,
        f: impl FnOnce(&mut Account) -> R,
    ) -> Option<R> {
        let mut qs = self.queues.guard();
        qs.by_account
            .get_mut(&(channel.to_string(), account.to_string()))
            .map(f)
    }

    /// The message `seq` was sent: forget it.
    pub fn ack(&self, channel: &str, account: &str, seq: u64) {
        let was_in_flight = self.with_account(channel, account, |a| {
            a.attempts.remove(&seq);
            let was = a.in_flight.remove(&seq);
            if was {
                a.gone(seq);
            }
            was
        });
        if was_in_flight != Some(true) {
            return;
        }
        // Not awaited: the queue in memory is the truth while the daemon
        // runs; a row left behind by a crash is sent again (at least once).
        drop(self.store.outbox_remove(seq));
    }

    /// Puts the account's unconfirmed messages back at the front of its
    /// queue, oldest first; one unconfirmed [`MAX_ATTEMPTS`] times is set
    /// aside as `<seq>.json.failed` and logged instead.
    pub fn requeue_in_flight(&self, channel: &str, account: &str) {
        self.with_account(channel, account, |a| self.requeue(channel, account, a));
    }

    fn requeue(&self, channel: &str, account: &str, a: &mut Account) {
        for seq in std::mem::take(&mut a.in_flight).into_iter().rev() {
            let n = a.attempts.entry(seq).or_insert(0);
            *n += 1;
            if *n < MAX_ATTEMPTS {
                a.queued.push_front(seq);
                continue;
            }
            a.attempts.remove(&seq);
            a.gone(seq);
            drop(self.store.outbox_set_aside(seq));
            tracing::error!(channel = %channel, account = %account, seq,
                "outbox message set aside (kept in the store, marked failed): sent {MAX_ATTEMPTS} times without being confirmed (the connection dropped each time)");
        }
    }

    /// What the account's outbox holds, if it has ever had one in this run
    /// or the last.
    pub fn depth(&self, channel: &str, account: &str) -> Option<Depth> {
        self.with_account(channel, account, |a| Depth {
            messages: a.len(),
            bytes: a.bytes,
        })
    }

    /// How many messages the account has queued or in flight.
    pub fn len(&self, channel: &str, account: &str) -> usize {
        self.depth(channel, account).map_or(0, |d| d.messages)
    }
}

/// The outbox of one account, as its plugin instances see it.
pub struct AccountQueue {
    pub outbox: Arc<Outbox>,
    pub channel: String,
    pub account: String,
}

impl AccountOutbox for AccountQueue {
    fn push(&self, m: OutboundMessage) -> Writing<Result<u64, String>> {
        self.outbox.push(&self.channel, &self.account, m)
    }
    fn pop(&self) -> Option<(u64, OutboundMessage)> {
        self.outbox.pop(&self.channel, &self.account)
    }
    fn ack(&self, seq: u64) {
        self.outbox.ack(&self.channel, &self.account, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;
    use crate::store::sqlite::SqliteLog;
    use crate::store::MessageLog;

    fn msg(to: &str, text: &str) -> OutboundMessage {
        OutboundMessage {
            to: to.into(),
            text: text.into(),
            thread_id: None,
            reply_to_id: Some("r1".into()),
            attachments: vec![
                OutboundAttachment {
                    kind: crate::plugins::contract::AttachmentKind::Image,
                    mime_type: Some("image/png".into()),
                    file_name: None,
                    source: AttachmentSource::Url("https://x.example/a.png".into()),
                },
                OutboundAttachment {
                    kind: crate::plugins::contract::AttachmentKind::Document,
                    mime_type: None,
                    file_name: Some("n.txt".into()),
                    source: AttachmentSource::Bytes(vec![0, 1, 2, 255]),
                },
            ],
        }
    }

    fn open(dir: &std::path::Path) -> (Outbox, Arc<SqliteLog>) {
        let log = Arc::new(SqliteLog::open(dir, SyncMode::Normal, &[]).unwrap());
        (Outbox::open(log.clone()).unwrap(), log)
    }

    /// Waits for the writes in flight, then closes.
    async fn close(ob: Outbox, log: Arc<SqliteLog>) {
        log.flush().await.unwrap();
        drop(ob);
        drop(log);
        // The writer thread ends once its queue is empty.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn survives_a_reopen_in_order_and_numbers_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, log) = open(dir.path());
        let a = ob.push("irc", "default", msg("#a", "one")).await.unwrap();
        let b = ob.push("irc", "default", msg("#a", "two")).await.unwrap();
        ob.push("irc", "other", msg("#b", "elsewhere"))
            .await
            .unwrap();
        assert!(b > a);
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!(m.text, "one");
        ob.ack("irc", "default", n);
        close(ob, log).await;

        let (ob, log) = open(dir.path());
        assert_eq!(ob.len("irc", "default"), 1);
        let c = ob.push("irc", "default", msg("#a", "three")).await.unwrap();
        assert!(c > b, "queue numbers reused after a restart");
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!((n, m.text.as_str(), m.to.as_str()), (b, "two", "#a"));
        assert_eq!(m, msg("#a", "two"), "attachments and all survive a reopen");
        ob.ack("irc", "default", n);
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!(m.text, "three");
        ob.ack("irc", "default", n);
        assert!(ob.pop("irc", "default").is_none());
        let (n, m) = ob.pop("irc", "other").unwrap();
        assert_eq!(m.text, "elsewhere");
        ob.ack("irc", "other", n);
        close(ob, log).await;
        // Confirmed messages are gone from the store too.
        let (ob, _log) = open(dir.path());
        assert_eq!(ob.len("irc", "default") + ob.len("irc", "other"), 0);
    }

    #[tokio::test]
    async fn unconfirmed_messages_come_back_first_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, log) = open(dir.path());
        for t in ["a", "b", "c"] {
            ob.push("irc", "x", msg("#r", t)).await.unwrap();
        }
        let (na, _) = ob.pop("irc", "x").unwrap();
        let (nb, _) = ob.pop("irc", "x").unwrap();
        ob.ack("irc", "x", na);
        ob.ack("irc", "x", na); // twice is harmless
        assert_eq!(ob.len("irc", "x"), 2);
        // The run ended before b was confirmed: b goes out again, before c.
        ob.requeue_in_flight("irc", "x");
        let (n, m) = ob.pop("irc", "x").unwrap();
        assert_eq!((n, m.text.as_str()), (nb, "b"));
        // The daemon dies with b in flight: the next one sends b and c.
        close(ob, log).await;
        let (ob, _log) = open(dir.path());
        let texts: Vec<String> = std::iter::from_fn(|| ob.pop("irc", "x"))
            .map(|(_, m)| m.text)
            .collect();
        assert_eq!(texts, ["b", "c"]);
    }

    #[tokio::test]
    async fn a_message_never_confirmed_is_set_aside_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, log) = open(dir.path());
        let poison = ob.push("irc", "x", msg("#r", "poison")).await.unwrap();
        ob.push("irc", "x", msg("#r", "next")).await.unwrap();
        for _ in 0..MAX_ATTEMPTS {
            let (n, m) = ob.pop("irc", "x").unwrap();
            assert_eq!((n, m.text.as_str()), (poison, "poison"));
            ob.requeue_in_flight("irc", "x");
        }
        let (_, m) = ob.pop("irc", "x").unwrap();
        assert_eq!(m.text, "next", "the queue is unblocked");
        close(ob, log).await;
        // A restart does not bring it back; the store keeps it, marked.
        let (ob, log) = open(dir.path());
        assert_eq!(ob.pop("irc", "x").unwrap().1.text, "next");
        let failed: i64 = rusqlite::Connection::open(log.path())
            .unwrap()
            .query_row(
                "SELECT failed FROM outbox WHERE seq = ?1",
                [poison as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(failed, 1, "the message is kept for an operator");
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_and_an_unreadable_row_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, log) = open(dir.path());
        for i in 0..CAPACITY {
            ob.push("irc", "a", msg("#x", &i.to_string()))
                .await
                .unwrap();
        }
        let e = ob.push("irc", "a", msg("#x", "over")).await.unwrap_err();
        assert!(e.contains("full"), "{e}");
        log.outbox_push("irc", "b", "{not json".into())
            .await
            .unwrap();
        close(ob, log).await;
        let (ob, log) = open(dir.path());
        assert_eq!(ob.len("irc", "a"), CAPACITY);
        // The row is read when it is handed out: not a message, so it is
        // set aside then, and the queue goes on.
        assert_eq!(ob.len("irc", "b"), 1);
        ob.push("irc", "b", msg("#y", "after")).await.unwrap();
        assert_eq!(ob.pop("irc", "b").unwrap().1.text, "after");
        assert_eq!(ob.len("irc", "b"), 1, "only the message handed out is left");
        close(ob, log).await;
        let (ob, _log) = open(dir.path());
        assert_eq!(ob.len("irc", "b"), 1, "the bad row stays set aside");
    }

    /// The real store, except that its outbox pushes fail while `fail` is
    /// set (as on a full or read-only disk).
    struct Refusing {
        inner: Arc<SqliteLog>,
        fail: std::sync::atomic::AtomicBool,
        /// Reads of queued messages fail too (a failing disk).
        fail_reads: std::sync::atomic::AtomicBool,
    }

    impl StateStore for Refusing {
        fn kv_get(&self, c: &str, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.kv_get(c, k)
        }
        fn kv_set(&self, c: &str, k: &str, v: Vec<u8>) -> crate::store::Pending<()> {
            self.inner.kv_set(c, k, v)
        }
        fn kv_delete(&self, c: &str, k: &str) -> crate::store::Pending<()> {
            self.inner.kv_delete(c, k)
        }
        fn kv_claim(&self, c: &str, k: &str, e: u64, n: u64) -> crate::store::Pending<bool> {
            self.inner.kv_claim(c, k, e, n)
        }
        fn kv_unclaim(&self, c: &str, k: &str) -> crate::store::Pending<()> {
            self.inner.kv_unclaim(c, k)
        }
        fn settle(&self) -> crate::store::Pending<()> {
            self.inner.settle()
        }
        fn outbox_push(&self, c: &str, a: &str, m: String) -> crate::store::Pending<u64> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Box::pin(async { Err(StoreError("disk full".into())) });
            }
            self.inner.outbox_push(c, a, m)
        }
        fn outbox_remove(&self, seq: u64) -> crate::store::Pending<()> {
            self.inner.outbox_remove(seq)
        }
        fn outbox_set_aside(&self, seq: u64) -> crate::store::Pending<()> {
            self.inner.outbox_set_aside(seq)
        }
        fn outbox_queued(&self) -> Result<Vec<crate::store::OutboxRow>, StoreError> {
            self.inner.outbox_queued()
        }
        fn outbox_get(&self, seq: u64) -> Result<Option<String>, StoreError> {
            if self.fail_reads.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError("disk I/O error".into()));
            }
            self.inner.outbox_get(seq)
        }
    }

    #[tokio::test]
    async fn a_push_the_store_refuses_frees_what_it_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap());
        let store = Arc::new(Refusing {
            inner,
            fail: true.into(),
            fail_reads: false.into(),
        });
        let mut ob = Outbox::open(store.clone()).unwrap();
        let m = || msg("#x", &"t".repeat(1000));
        let size = to_json(&m()).to_string().len();
        ob.capacity_bytes = 2 * size;
        for _ in 0..3 {
            let e = ob.push("irc", "a", m()).await.unwrap_err();
            assert!(e.contains("disk full"), "{e}");
        }
        assert_eq!(ob.len("irc", "a"), 0);
        // Had the failed pushes kept their bytes, the bound would refuse.
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2 {
            ob.push("irc", "a", m()).await.unwrap();
        }
        assert_eq!(ob.len("irc", "a"), 2);
    }

    #[tokio::test]
    async fn a_message_the_store_cannot_read_now_stays_at_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap());
        let store = Arc::new(Refusing {
            inner,
            fail: false.into(),
            fail_reads: false.into(),
        });
        let ob = Outbox::open(store.clone()).unwrap();
        for t in ["first", "second"] {
            ob.push("irc", "a", msg("#x", t)).await.unwrap();
        }
        store
            .fail_reads
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            assert!(ob.pop("irc", "a").is_none());
        }
        assert_eq!(ob.len("irc", "a"), 2, "nothing lost");
        store
            .fail_reads
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let texts: Vec<String> = std::iter::from_fn(|| ob.pop("irc", "a"))
            .map(|(_, m)| m.text)
            .collect();
        assert_eq!(texts, ["first", "second"], "in order, once each");
    }

    #[tokio::test]
    async fn an_outbox_is_bounded_in_bytes_and_frees_what_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, log) = open(dir.path());
        let big = |n: usize| OutboundMessage {
            to: "#x".into(),
            text: "t".repeat(n),
            thread_id: None,
            reply_to_id: None,
            attachments: vec![],
        };
        let size = to_json(&big(1000)).to_string().len();
        ob.capacity_bytes = 3 * size;
        // A push whose caller stops waiting (its plugin call trapped) is
        // still queued once durable.
        drop(ob.push("irc", "a", big(1000)));
        let queued = async {
            while ob.len("irc", "a") < 1 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), queued)
            .await
            .expect("a dropped push is queued once durable");
        for _ in 0..2 {
            ob.push("irc", "a", big(1000)).await.unwrap();
        }
        let e = ob.push("irc", "a", big(1000)).await.unwrap_err();
        assert!(
            e.contains(&format!("this message of {size} would pass")),
            "{e}"
        );
        // Per account.
        ob.push("irc", "b", big(1000)).await.unwrap();
        // A message handed out still counts; acknowledged, it is freed.
        let (seq, _) = ob.pop("irc", "a").unwrap();
        assert!(ob.push("irc", "a", big(1000)).await.is_err());
        ob.ack("irc", "a", seq);
        ob.push("irc", "a", big(1000)).await.unwrap();
        assert!(ob.push("irc", "a", big(10)).await.is_err());
        // Set aside after MAX_ATTEMPTS hand-outs without an ack: freed too.
        for _ in 0..MAX_ATTEMPTS {
            let _ = ob.pop("irc", "a").unwrap();
            ob.requeue_in_flight("irc", "a");
        }
        assert_eq!(ob.len("irc", "a"), 2);
        ob.push("irc", "a", big(1000)).await.unwrap();
        // After a restart the queued messages count again.
        close(ob, log).await;
        let (mut ob, _log) = open(dir.path());
        ob.capacity_bytes = 3 * size;
        assert_eq!(ob.len("irc", "a"), 3);
        assert!(ob.push("irc", "a", big(10)).await.is_err());
    }
}
