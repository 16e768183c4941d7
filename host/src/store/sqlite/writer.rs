//! The writer thread: it owns the connection that writes, takes every
//! write waiting into one transaction (group commit), calls the listener
//! with what the commit stored, then answers each write.
//!
//! With `sync = full`, a group of key-value writes alone is committed
//! without an fsync (`synchronous=NORMAL`): it is in the WAL, safe from a
//! crash of the daemon, and becomes safe from a power loss with the next
//! fsync of the WAL — which comes with the next commit that acknowledges
//! anything (a message, a send, an outbox change, a flush), with a
//! [`Op::Settle`] (the end of every plugin call that is not `run`), or at
//! the latest [`SETTLE_WITHIN`] after the commit. The WAL is one
//! sequential log: its fsync makes every earlier frame durable too, and
//! after a power loss SQLite replays a prefix of it, so a kv write is never
//! lost while a later acknowledged one is kept.

use crate::sync::MutexExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::shares::{size_of, Shares, SIZE_SQL};
use super::{describe, int, uint, MAX_GROUP, PRUNE_BATCH};
use crate::store::{Appended, Direction, Listener, Message, Pruned, Retention, StoreError};

pub(super) enum Op {
    Append(Message, oneshot::Sender<Result<Appended, StoreError>>),
    Send(
        Message,
        String,
        String,
        oneshot::Sender<Result<u64, StoreError>>,
    ),
    Prune(Retention, oneshot::Sender<Result<Pruned, StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Resolves once every commit so far is durable (an fsync of the WAL if
    /// a commit since the last one skipped it).
    Settle(oneshot::Sender<Result<(), StoreError>>),
    /// A key-value write; answers 1 for a claim taken, else 0.
    Kv(KvOp, oneshot::Sender<Result<u64, StoreError>>),
    /// An outbox write; answers the queue number of a push, else 0.
    Outbox(OutboxOp, oneshot::Sender<Result<u64, StoreError>>),
    /// A `send`'s intent; answers 0.
    Intent(IntentOp, oneshot::Sender<Result<u64, StoreError>>),
    /// After the group's commit: copy the WAL into the database file and
    /// empty it (SQLite fsyncs both), whatever `sync` is. For a clean stop.
    Checkpoint(oneshot::Sender<Result<(), StoreError>>),
}

pub(super) enum IntentOp {
    /// key, channel, account: the channel is about to be called.
    Begin(String, String, String),
    /// key: the channel answered that it did not send.
    Abandon(String),
    /// key: the host ended the call after the plugin reached outside the
    /// sandbox; whether it sent is unknown.
    CutOff(String),
    /// key, receipt: a call that logs no message (an action) was made: its
    /// receipt is kept for retries and its intent goes, in one transaction.
    Done(String, String),
}

pub(super) enum KvOp {
    /// channel, key, value.
    Set(String, String, Vec<u8>),
    /// channel, key.
    Delete(String, String),
    /// channel, key hash, expires at, now.
    Claim(String, String, u64, u64),
    /// channel, key hash.
    Unclaim(String, String),
}

pub(super) enum OutboxOp {
    /// channel, account, message.
    Push(String, String, String),
    Remove(u64),
    SetAside(u64),
}

/// What a committed op answers, and the message it stored (for the listener).
enum Done {
    Appended(Appended, Option<Message>),
    Sent(u64, Message),
    Pruned(Pruned),
    Flushed,
    State(u64),
    /// A write refused without failing its group (a channel's key-value
    /// store is full, or a new message with the disk below
    /// `store.min_free_mb`); nothing was written.
    Refused(String),
}

/// Key-value writes not yet fsynced are made durable at the latest this
/// long after their commit.
pub(crate) const SETTLE_WITHIN: Duration = Duration::from_millis(50);

impl Op {
    /// Whether this op's answer waits for the disk. Key-value writes do
    /// not (see the module's doc): nothing outside the process learns of
    /// them before something that does.
    /// An abandoned or cut-off intent does not either: lost to a power
    /// cut, it leaves the key interrupted, which refuses a retry (never
    /// sends twice).
    fn acknowledges(&self) -> bool {
        !matches!(
            self,
            Op::Kv(..) | Op::Intent(IntentOp::Abandon(_) | IntentOp::CutOff(_), _)
        )
    }
}

/// What the writer shares with the store's handle.
pub(super) struct Shared {
    pub failure: Arc<Mutex<Option<String>>>,
    pub listener: Arc<OnceLock<Listener>>,
    /// A commit is in the WAL but not yet fsynced (set before its writes
    /// are answered; a settle with it clear needs no trip to the writer).
    pub unsynced: Arc<AtomicBool>,
    /// fsyncs of the WAL the writer made itself (not SQLite's at commit).
    pub settles: Arc<SettleCounts>,
    /// `store.kv_max_bytes`: the most one channel's key-value store holds.
    pub kv_max_bytes: Arc<AtomicU64>,
    /// `store.min_free_mb`: new messages are refused below it.
    pub disk: Arc<super::disk::DiskFloor>,
    #[cfg(test)]
    pub count_hooks: super::shares::CountHooks,
}

/// What each entry of a key-value store counts against its channel's
/// bound besides its key and value: so that many empty values fill it too.
pub const KV_ENTRY_OVERHEAD: u64 = 64;

/// What each claim (`kv-claim`) counts against its channel's bound: its
/// key's hash (64 hex digits) and the entry overhead. Claims expire (24 h at
/// most) and are pruned, but a plugin claiming new keys in a loop would
/// otherwise fill the disk within that time.
pub const KV_CLAIM_BYTES: u64 = 64 + KV_ENTRY_OVERHEAD;

/// The bytes each channel's key-value store holds (keys, values and
/// [`KV_ENTRY_OVERHEAD`] per entry, [`KV_CLAIM_BYTES`] per claim), counted
/// once per channel from the tables on first use, then kept up to date by
/// each write. Forgotten when a group fails (its transaction rolled back),
/// to be counted again.
#[derive(Default)]
struct KvUsage {
    by_channel: std::collections::HashMap<String, u64>,
    /// Channels whose refusal was logged (once until a write fits again).
    warned: std::collections::HashSet<String>,
}

impl KvUsage {
    fn of(&mut self, tx: &rusqlite::Transaction<'_>, channel: &str) -> rusqlite::Result<u64> {
        if let Some(n) = self.by_channel.get(channel) {
            return Ok(*n);
        }
        let entries: i64 = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0), COUNT(*)
                 FROM kv WHERE channel = ?1",
            )?
            .query_row(params![channel], |r| {
                Ok(r.get::<_, i64>(0)? + r.get::<_, i64>(1)? * KV_ENTRY_OVERHEAD as i64)
            })?;
        let claims: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM kv_claims WHERE channel = ?1")?
            .query_row(params![channel], |r| r.get(0))?;
        let n = uint(entries).saturating_add(uint(claims).saturating_mul(KV_CLAIM_BYTES));
        self.by_channel.insert(channel.to_string(), n);
        Ok(n)
    }

    /// A write of `bytes` refused: logged once until a write fits again.
    fn refuse(&mut self, channel: &str, used: u64, bytes: u64, kv_max: u64) -> Done {
        if self.warned.insert(channel.to_string()) {
            tracing::warn!(
                %channel, used, limit = kv_max,
                "a plugin's key-value store is full: its writes that grow it are refused"
            );
        }
        Done::Refused(format!(
            "the key-value store of channel `{channel}` is full: it holds {used} bytes and this write of {bytes} would pass store.kv_max_bytes = {kv_max} (keys, values and {KV_ENTRY_OVERHEAD} bytes per entry count, {KV_CLAIM_BYTES} per claim); delete keys, or raise store.kv_max_bytes"
        ))
    }

    /// `bytes` of a channel's store went (when it is counted).
    fn freed(&mut self, channel: &str, bytes: u64) {
        if let Some(n) = self.by_channel.get_mut(channel) {
            *n = n.saturating_sub(bytes);
        }
    }

    /// Applies a key-value write within the channel's bound: a write that
    /// would grow the store past `kv_max` is refused (nothing written, the
    /// group goes on). Each arm reads the row it replaces once.
    fn write(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        op: &KvOp,
        kv_max: u64,
    ) -> rusqlite::Result<Done> {
        match op {
            KvOp::Set(c, k, v) => {
                let used = self.of(tx, c)?;
                let old: Option<i64> = tx
                    .prepare_cached(
                        "SELECT length(CAST(key AS BLOB)) + length(value) FROM kv
                         WHERE channel = ?1 AND key = ?2",
                    )?
                    .query_row(params![c, k], |r| r.get(0))
                    .optional()?;
                let old = old.map_or(0, |n| uint(n) + KV_ENTRY_OVERHEAD);
                let new = (k.len() + v.len()) as u64 + KV_ENTRY_OVERHEAD;
                let after = used.saturating_sub(old).saturating_add(new);
                // A write that does not grow the store is always taken (the
                // bound may have been lowered below what a store holds).
                if new > old && after > kv_max {
                    return Ok(self.refuse(c, used, new, kv_max));
                }
                tx.prepare_cached(
                    "INSERT INTO kv (channel, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (channel, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![c, k, v])?;
                self.by_channel.insert(c.clone(), after);
                self.warned.remove(c);
                Ok(Done::State(0))
            }
            KvOp::Delete(c, k) => {
                self.of(tx, c)?;
                let gone: Option<i64> = tx
                    .prepare_cached(
                        "DELETE FROM kv WHERE channel = ?1 AND key = ?2
                         RETURNING length(CAST(key AS BLOB)) + length(value)",
                    )?
                    .query_row(params![c, k], |r| r.get(0))
                    .optional()?;
                if let Some(n) = gone {
                    self.freed(c, uint(n) + KV_ENTRY_OVERHEAD);
                }
                Ok(Done::State(0))
            }
            KvOp::Claim(c, h, expires, now) => {
                let used = self.of(tx, c)?;
                let held: Option<i64> = tx
                    .prepare_cached(
                        "SELECT expires_at FROM kv_claims WHERE channel = ?1 AND key_hash = ?2",
                    )?
                    .query_row(params![c, h], |r| r.get(0))
                    .optional()?;
                if held.is_some_and(|t| uint(t) > *now) {
                    return Ok(Done::State(0));
                }
                // An expired claim's row is taken over: it is counted already.
                let new = held.is_none();
                if new && used.saturating_add(KV_CLAIM_BYTES) > kv_max {
                    return Ok(self.refuse(c, used, KV_CLAIM_BYTES, kv_max));
                }
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO kv_claims (channel, key_hash, expires_at)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![c, h, int(*expires)])?;
                if new {
                    self.by_channel.insert(c.clone(), used + KV_CLAIM_BYTES);
                    self.warned.remove(c);
                }
                Ok(Done::State(1))
            }
            KvOp::Unclaim(c, h) => {
                self.of(tx, c)?;
                let gone = tx
                    .prepare_cached("DELETE FROM kv_claims WHERE channel = ?1 AND key_hash = ?2")?
                    .execute(params![c, h])?;
                if gone > 0 {
                    self.freed(c, KV_CLAIM_BYTES);
                }
                Ok(Done::State(0))
            }
        }
    }
}

/// fsyncs of the WAL the writer made itself, by why (`store::Settles`).
#[derive(Default)]
pub(crate) struct SettleCounts {
    pub asked: AtomicU64,
    pub timer: AtomicU64,
}

/// The writer's durability state, with `sync = full`.
struct Durability {
    /// `sync = full`: else every commit is NORMAL and nothing is settled.
    full: bool,
    /// The `synchronous` setting the connection has now.
    fsyncing: bool,
    /// When the oldest commit not yet fsynced was made.
    since: Option<Instant>,
    wal_path: PathBuf,
    wal: Option<std::fs::File>,
}

impl Durability {
    /// Sets `synchronous` for a group that `wants` an fsync at commit.
    fn prepare(&mut self, conn: &Connection, wants: bool) -> rusqlite::Result<()> {
        if self.full && wants != self.fsyncing {
            conn.pragma_update(None, "synchronous", if wants { "FULL" } else { "NORMAL" })?;
            self.fsyncing = wants;
        }
        Ok(())
    }

    /// fsyncs the WAL if a commit is owed one: every frame written so far
    /// becomes durable. `asked`: a write waiting for the disk wants it
    /// (else the writer's timer), for the count.
    fn sync_owed(&mut self, shared: &Shared, asked: bool) -> std::io::Result<()> {
        if self.since.is_none() {
            return Ok(());
        }
        let wal = match &self.wal {
            Some(f) => f,
            None => self.wal.insert(std::fs::File::open(&self.wal_path)?),
        };
        wal.sync_all()?;
        let count = if asked {
            &shared.settles.asked
        } else {
            &shared.settles.timer
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.synced(shared);
        Ok(())
    }

    /// Nothing committed is owed an fsync any more.
    fn synced(&mut self, shared: &Shared) {
        self.since = None;
        shared.unsynced.store(false, Ordering::Release);
    }

    /// After a commit: `wanted` an fsync, `changed` whether it wrote
    /// anything (an empty commit makes SQLite sync nothing).
    fn committed(&mut self, wanted: bool, changed: bool, shared: &Shared) -> std::io::Result<()> {
        if !self.full {
            return Ok(());
        }
        if wanted {
            if changed {
                // SQLite's own fsync at commit covered the earlier frames.
                self.synced(shared);
            } else {
                self.sync_owed(shared, true)?;
            }
        } else if changed && self.since.is_none() {
            self.since = Some(Instant::now());
            shared.unsynced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// How long the writer may wait for the next op before it must settle.
    fn deadline(&self) -> Option<Duration> {
        self.since
            .map(|t| SETTLE_WITHIN.saturating_sub(t.elapsed()))
    }

    /// Settles now (the deadline passed with nothing to write).
    fn settle(&mut self, shared: &Shared) {
        if let Err(e) = self.sync_owed(shared, false) {
            // Tried again at the next deadline; writes that wait for the
            // disk fail meanwhile if the disk does.
            self.since = Some(Instant::now());
            let why = format!("sync the message log's WAL: {e}");
            if shared.failure.guard().replace(why.clone()).is_none() {
                tracing::error!("{why}");
                shared.disk.wake();
            }
        }
    }
}

fn insert(tx: &rusqlite::Transaction<'_>, m: &Message) -> rusqlite::Result<u64> {
    tx.prepare_cached(
        "INSERT INTO messages (direction, channel, account, chat, sender, sender_name, message_id,
                               text, ts, received_at, thread_id, reply_to_id, raw, idempotency_key,
                               attachments)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        if m.direction == Direction::Inbound {
            0
        } else {
            1
        },
        m.channel,
        m.account,
        m.chat,
        m.sender,
        m.sender_name,
        m.message_id,
        m.text,
        int(m.ts),
        int(m.received_at),
        m.thread_id,
        m.reply_to_id,
        m.raw,
        m.idempotency_key,
        m.attachments,
    ])?;
    Ok(uint(tx.last_insert_rowid()))
}

/// Near the disk's floor, a channel holding more than half of the log while
/// another channel holds messages too is refused new ones, so that one
/// channel delivering in a loop (a hostile or broken plugin) cannot take the
/// last room from every other. Why, when it is.
fn over_share(shares: &mut Shares, channel: &str, free_mb: u64) -> Option<String> {
    let Some(counted) = shares.counts() else {
        // Counting: nothing is refused for its share until the count is done.
        return None;
    };
    let held = counted.get(channel).copied().unwrap_or(0);
    let total: u64 = counted.values().sum();
    if held == 0 || held >= total || held.saturating_mul(2) <= total {
        return None;
    }
    Some(format!(
        "the disk holding the message log is near store.min_free_mb ({free_mb} MiB free), and channel `{channel}` \
         holds {}% of the log ({} of {} KiB): its new messages are refused so that the other channels keep \
         the room left (free disk space, lower store.retention_days or set store.max_bytes, or find out why \
         `{channel}` delivers so much)",
        held.saturating_mul(100) / total.max(1),
        held / 1024,
        total / 1024
    ))
}

/// Deletes the messages `which` selects, taking their bytes off [`Shares`]
/// when it counts; how many went.
fn delete_messages(
    tx: &rusqlite::Transaction<'_>,
    shares: &mut Shares,
    which: &str,
    p: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<usize> {
    let mut st = tx.prepare_cached(&format!(
        "DELETE FROM messages WHERE {which} RETURNING seq, channel, {SIZE_SQL}"
    ))?;
    let mut rows = st.query(p)?;
    let mut gone = 0;
    while let Some(row) = rows.next()? {
        let channel: String = row.get(1)?;
        shares.removed(&channel, row.get(0)?, uint(row.get(2)?));
        gone += 1;
    }
    Ok(gone)
}

/// One op inside the group's transaction.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    shares: &mut Shares,
    kv: &mut KvUsage,
    kv_max: u64,
    disk: &super::disk::DiskFloor,
) -> rusqlite::Result<Done> {
    match op {
        Op::Append(m, _) => {
            let existing: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM messages WHERE channel = ?1 AND account = ?2 AND chat = ?3
                     AND message_id = ?4 AND direction = 0",
                )?
                .query_row(params![m.channel, m.account, m.chat, m.message_id], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(seq) = existing {
                return Ok(Done::Appended(
                    Appended {
                        seq: uint(seq),
                        new: false,
                    },
                    None,
                ));
            }
            // A send's record is always taken: its message has gone out.
            let (low, near) = disk.state();
            if let Some(why) = low {
                return Ok(Done::Refused(why));
            }
            match near {
                Some(free_mb) => {
                    if let Some(why) = over_share(shares, &m.channel, free_mb) {
                        disk.note_share(&m.channel, &why);
                        return Ok(Done::Refused(why));
                    }
                }
                None => disk.shares_cleared(),
            }
            let seq = insert(tx, m)?;
            shares.added(&m.channel, size_of(m));
            disk.share_taken(&m.channel);
            let mut stored = m.clone();
            stored.seq = seq;
            Ok(Done::Appended(Appended { seq, new: true }, Some(stored)))
        }
        Op::Send(m, key, receipt, _) => {
            let seq = insert(tx, m)?;
            shares.added(&m.channel, size_of(m));
            tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (key, created_at, receipt) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, int(m.received_at), receipt])?;
            tx.prepare_cached("DELETE FROM send_intents WHERE key = ?1")?
                .execute(params![key])?;
            let mut stored = m.clone();
            stored.seq = seq;
            Ok(Done::Sent(seq, stored))
        }
        Op::Prune(r, _) => {
            let (mut gone, mut counting) = (0, false);
            if r.before_ms > 0 {
                gone += delete_messages(
                    tx,
                    shares,
                    "seq IN (SELECT seq FROM messages WHERE received_at < ?1 ORDER BY seq LIMIT ?2)",
                    params![int(r.before_ms), PRUNE_BATCH],
                )?;
            }
            if r.max_bytes > 0 && gone == 0 {
                let used: i64 = tx.query_row(
                    "SELECT (page_count - freelist_count) * page_size
                     FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
                    [],
                    |row| row.get(0),
                )?;
                if uint(used) > r.max_bytes {
                    gone += shares.prune_largest(tx)?;
                    counting = shares.counting();
                }
            }
            {
                let mut expired = tx.prepare_cached(
                    "DELETE FROM kv_claims WHERE (channel, key_hash) IN
                     (SELECT channel, key_hash FROM kv_claims WHERE expires_at < ?1 LIMIT ?2)
                     RETURNING channel",
                )?;
                let mut rows = expired.query(params![int(r.now_ms), PRUNE_BATCH])?;
                while let Some(row) = rows.next()? {
                    let channel: String = row.get(0)?;
                    kv.freed(&channel, KV_CLAIM_BYTES);
                    gone += 1;
                }
            }
            gone += tx
                .prepare_cached(
                    "DELETE FROM idempotency WHERE key IN
                     (SELECT key FROM idempotency WHERE created_at < ?1 LIMIT ?2)",
                )?
                .execute(params![int(r.idempotency_before_ms), PRUNE_BATCH])?;
            // Interrupted sends are kept as long as receipts are.
            gone += tx
                .prepare_cached(
                    "DELETE FROM send_intents WHERE key IN
                     (SELECT key FROM send_intents WHERE interrupted > 0 AND created_at < ?1
                      LIMIT ?2)",
                )?
                .execute(params![int(r.idempotency_before_ms), PRUNE_BATCH])?;
            Ok(Done::Pruned(Pruned {
                rows: gone,
                counting,
            }))
        }
        Op::Flush(_) | Op::Settle(_) | Op::Checkpoint(_) => Ok(Done::Flushed),
        Op::Kv(op, _) => kv.write(tx, op, kv_max),
        Op::Outbox(op, _) => outbox(tx, op).map(Done::State),
        Op::Intent(IntentOp::Begin(key, channel, account), _) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO send_intents (key, channel, account, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, channel, account, int(crate::now_ms())])?;
            Ok(Done::State(0))
        }
        Op::Intent(IntentOp::Done(key, receipt), _) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (key, created_at, receipt) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, int(crate::now_ms()), receipt])?;
            tx.prepare_cached("DELETE FROM send_intents WHERE key = ?1")?
                .execute(params![key])?;
            Ok(Done::State(0))
        }
        Op::Intent(IntentOp::Abandon(key), _) => {
            tx.prepare_cached("DELETE FROM send_intents WHERE key = ?1")?
                .execute(params![key])?;
            Ok(Done::State(0))
        }
        Op::Intent(IntentOp::CutOff(key), _) => {
            tx.prepare_cached(
                "UPDATE send_intents SET interrupted = 2 WHERE key = ?1 AND interrupted = 0",
            )?
            .execute(params![key])?;
            Ok(Done::State(0))
        }
    }
}

fn outbox(tx: &rusqlite::Transaction<'_>, op: &OutboxOp) -> rusqlite::Result<u64> {
    match op {
        OutboxOp::Push(c, a, m) => {
            tx.prepare_cached(
                "INSERT INTO outbox (channel, account, message) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![c, a, m])?;
            Ok(uint(tx.last_insert_rowid()))
        }
        OutboxOp::Remove(seq) => {
            tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                .execute(params![int(*seq)])?;
            Ok(0)
        }
        OutboxOp::SetAside(seq) => {
            tx.prepare_cached("UPDATE outbox SET failed = 1 WHERE seq = ?1")?
                .execute(params![int(*seq)])?;
            Ok(0)
        }
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: every committed frame into the
/// database file, then the WAL emptied; SQLite fsyncs the WAL before and
/// the database file after, so nothing committed is owed an fsync.
fn checkpoint(conn: &Connection, d: &mut Durability, shared: &Shared) -> Result<(), StoreError> {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(|e| StoreError(describe("checkpoint the message log", &e)))?;
    if busy != 0 {
        return Err(StoreError(
            "checkpoint the message log: a reader still holds it; the WAL stays as it is".into(),
        ));
    }
    d.synced(shared);
    Ok(())
}

fn write_group(
    conn: &mut Connection,
    ops: &[Op],
    d: &mut Durability,
    shared: &Shared,
    shares: &mut Shares,
    kv: &mut KvUsage,
) -> Result<Vec<Done>, String> {
    let kv_max = shared.kv_max_bytes.load(Ordering::Relaxed);
    let wants = ops.iter().any(Op::acknowledges);
    let mut commit =
        |conn: &mut Connection, d: &mut Durability| -> rusqlite::Result<(Vec<Done>, bool)> {
            d.prepare(conn, wants)?;
            let before = conn.total_changes();
            let tx = conn.transaction()?;
            let mut done = Vec::with_capacity(ops.len());
            for op in ops {
                done.push(apply(&tx, op, shares, kv, kv_max, &shared.disk)?);
            }
            tx.commit()?;
            Ok((done, conn.total_changes() != before))
        };
    let (done, changed) = commit(conn, d).map_err(|e| {
        // Rolled back: the counts may hold this group's writes.
        kv.by_channel.clear();
        shares.forget();
        describe("write to the message log", &e)
    })?;
    d.committed(wants, changed, shared)
        .map_err(|e| format!("sync the message log's WAL: {e}"))?;
    Ok(done)
}

/// The writer thread: takes every op waiting, writes them in one
/// transaction, answers each once the commit is durable (a key-value
/// write: once it is committed), then tells the listener about the stored
/// messages in order.
pub(super) fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Op>,
    shared: Shared,
    full: bool,
    wal_path: PathBuf,
) {
    let mut kv = KvUsage::default();
    let mut shares = Shares::default();
    #[cfg(test)]
    {
        shares.hooks = shared.count_hooks.clone();
    }
    let mut d = Durability {
        full,
        fsyncing: full,
        since: None,
        wal_path,
        wal: None,
    };
    loop {
        // A count of the bytes per channel that runs takes its steps while
        // nothing waits to be written.
        let wait = match (d.deadline(), shares.running().then_some(Duration::ZERO)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let first = match wait {
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => break,
            },
            Some(left) => match rx.recv_timeout(left) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if d.deadline().is_some_and(|left| left.is_zero()) {
                        d.settle(&shared);
                    }
                    shares.tend(&conn);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if d.deadline().is_some() {
                        d.settle(&shared);
                    }
                    break;
                }
            },
        };
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // A steady stream of key-value writes alone still settles in time.
        if d.deadline().is_some_and(|left| left.is_zero()) {
            d.settle(&shared);
        }
        match write_group(&mut conn, &ops, &mut d, &shared, &mut shares, &mut kv) {
            Ok(done) => {
                if shared.failure.guard().take().is_some() {
                    tracing::info!("message log writes succeed again");
                    shared.disk.wake();
                }
                let checkpointed = ops
                    .iter()
                    .any(|o| matches!(o, Op::Checkpoint(_)))
                    .then(|| checkpoint(&conn, &mut d, &shared));
                // The listener first (the `message` events, in order), then
                // the answers: once a write resolves, its event is queued.
                if let Some(l) = shared.listener.get() {
                    for d in &done {
                        match d {
                            Done::Appended(_, Some(m)) | Done::Sent(_, m) => l(m),
                            _ => {}
                        }
                    }
                }
                for (op, d) in ops.into_iter().zip(done) {
                    match (op, d) {
                        (Op::Append(_, reply), Done::Appended(a, _)) => {
                            let _ = reply.send(Ok(a));
                        }
                        (Op::Send(.., reply), Done::Sent(seq, _)) => {
                            let _ = reply.send(Ok(seq));
                        }
                        (Op::Prune(_, reply), Done::Pruned(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        (Op::Flush(reply) | Op::Settle(reply), Done::Flushed) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Op::Checkpoint(reply), Done::Flushed) => {
                            let _ = reply.send(checkpointed.clone().unwrap_or(Ok(())));
                        }
                        (
                            Op::Kv(_, reply) | Op::Outbox(_, reply) | Op::Intent(_, reply),
                            Done::State(n),
                        ) => {
                            let _ = reply.send(Ok(n));
                        }
                        (Op::Kv(_, reply), Done::Refused(why)) => {
                            let _ = reply.send(Err(StoreError(why)));
                        }
                        (Op::Append(_, reply), Done::Refused(why)) => {
                            let _ = reply.send(Err(StoreError(why)));
                        }
                        _ => {}
                    }
                }
            }
            Err(why) => {
                let first_failure = shared.failure.guard().replace(why.clone()).is_none();
                if first_failure {
                    tracing::error!("{why}");
                    shared.disk.wake();
                }
                for op in ops {
                    match op {
                        Op::Append(_, reply) => {
                            let _ = reply.send(Err(StoreError(why.clone())));
                        }
                        Op::Send(.., reply) => {
                            let _ = reply.send(Err(StoreError(why.clone())));
                        }
                        Op::Prune(_, reply) => {
                            let _ = reply.send(Err(StoreError(why.clone())));
                        }
                        Op::Flush(reply) | Op::Settle(reply) | Op::Checkpoint(reply) => {
                            let _ = reply.send(Err(StoreError(why.clone())));
                        }
                        Op::Kv(_, reply) | Op::Outbox(_, reply) | Op::Intent(_, reply) => {
                            let _ = reply.send(Err(StoreError(why.clone())));
                        }
                    }
                }
            }
        }
        // Once every write of the group is answered: a count of the bytes
        // per channel this group asked for starts from its commit; one that
        // runs takes a step.
        shares.tend(&conn);
    }
}
