//! The message log in one SQLite database, `<state_dir>/switchboard.db`, in
//! WAL mode. One writer thread owns the connection that writes: whatever
//! arrives while a transaction is being written joins the next one, so a
//! group of concurrent `deliver`s costs one transaction and one fsync.
//! Readers (history, receipts) use their own connections and never block
//! the writer. The schema is versioned with `PRAGMA user_version`; forward
//! migrations run at open; a file that is not a database, or one from a
//! newer schema, is refused, never recreated.

use crate::sync::MutexExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    Appended, Direction, HistoryQuery, Listener, Message, MessageLog, Page, Pending, Pruned,
    Retention, SendRecord, StoreError,
};
use crate::config::SyncMode;

mod disk;
mod private;
mod shares;
mod writer;

pub use disk::DEFAULT_MIN_FREE_MB;

use writer::{writer, IntentOp, KvOp, Op, OutboxOp, Shared};

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 4;
/// Writes joined into one transaction at most.
const MAX_GROUP: usize = 1024;
/// Rows removed per pruning batch.
const PRUNE_BATCH: i64 = 1000;
/// A history page stops before the message that would take it past this
/// many bytes of messages ([`Message::size`]), whatever its `limit`; it
/// holds at least one message. A page of 1000 messages of the largest size
/// a plugin may deliver would otherwise be 20 GB in memory.
pub const HISTORY_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Reader connections kept open.
const READERS: usize = 4;
/// The database file's name under the state directory.
pub const FILE_NAME: &str = "switchboard.db";

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the message log and the idempotency records.
    "CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        direction INTEGER NOT NULL,
        channel TEXT NOT NULL,
        account TEXT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_name TEXT,
        message_id TEXT NOT NULL,
        text TEXT NOT NULL,
        ts INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        thread_id TEXT,
        reply_to_id TEXT,
        raw TEXT,
        idempotency_key TEXT
    );
    CREATE UNIQUE INDEX messages_ingest ON messages (channel, account, chat, message_id)
        WHERE direction = 0;
    CREATE INDEX messages_chat ON messages (channel, account, chat, seq);
    CREATE INDEX messages_received ON messages (received_at);
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        receipt TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_created ON idempotency (created_at);",
    // 1 → 2: the plugins' key-value stores and the host outbox (they were
    // files under state_dir; `files::import` moves those in).
    "CREATE TABLE kv (
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (channel, key)
    ) WITHOUT ROWID;
    CREATE TABLE kv_claims (
        channel TEXT NOT NULL,
        key_hash TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (channel, key_hash)
    ) WITHOUT ROWID;
    CREATE INDEX kv_claims_expiry ON kv_claims (expires_at);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        account TEXT NOT NULL,
        message TEXT NOT NULL,
        failed INTEGER NOT NULL DEFAULT 0
    );",
    // 2 → 3: attachments' metadata (JSON), contract 0.2.
    "ALTER TABLE messages ADD COLUMN attachments TEXT;",
    // 3 → 4: a `send` about to call its channel (gone with its record or
    // its failure); `interrupted`: 1, the daemon stopped before either;
    // 2, the host ended the plugin's call after it reached outside.
    "CREATE TABLE send_intents (
        key TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        account TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        interrupted INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;",
];

/// Interrupted sends named in the log line at open, at most.
const NAMED_INTERRUPTED: usize = 10;

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// [`describe`] for the other store modules.
pub(crate) fn describe_error(what: &str, e: &rusqlite::Error) -> String {
    describe(what, e)
}

/// A SQLite error in words: what failed, and what the operator can do.
fn describe(what: &str, e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    let hint = match e.sqlite_error_code() {
        Some(C::DiskFull) => "the disk is full; free space and the gateway resumes by itself",
        Some(C::ReadOnly) => "the database is read-only; make the state directory writable",
        Some(C::SystemIoFailure) => "an I/O error; check the disk",
        Some(C::CannotOpen) => "it cannot be opened; check the state directory's permissions",
        Some(C::NotADatabase) => {
            "the file is not a SQLite database; move it away (it is never recreated over)"
        }
        Some(C::DatabaseCorrupt) => "the database is corrupt; restore it from a backup",
        _ => "",
    };
    if hint.is_empty() {
        format!("{what}: {e}")
    } else {
        format!("{what}: {e} ({hint})")
    }
}

pub struct SqliteLog {
    path: PathBuf,
    writes: Mutex<mpsc::Sender<Op>>,
    readers: Mutex<Vec<Connection>>,
    failure: Arc<Mutex<Option<String>>>,
    listener: Arc<OnceLock<Listener>>,
    /// A key-value commit is not yet fsynced (`writer`'s module doc).
    unsynced: Arc<AtomicBool>,
    settles: Arc<writer::SettleCounts>,
    kv_max_bytes: Arc<std::sync::atomic::AtomicU64>,
    disk: Arc<disk::DiskFloor>,
    /// Sends whose outcome became unknown since the log was opened: those
    /// the last run left, and those cut off since.
    outcome_unknown: std::sync::atomic::AtomicU64,
    #[cfg(test)]
    count_hooks: shares::CountHooks,
}

pub use writer::{KV_CLAIM_BYTES, KV_ENTRY_OVERHEAD};

/// `store.kv_max_bytes`'s default: 64 MiB per channel.
pub const DEFAULT_KV_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl SqliteLog {
    /// Opens (or creates) the log in `state_dir`, runs the migrations it
    /// needs, moves in the files of the earlier layout (`files::import`;
    /// `plugins` maps each channel to its plugin, for the oldest KV layout)
    /// and starts the writer thread.
    pub fn open(
        state_dir: &Path,
        sync: SyncMode,
        plugins: &[(String, String)],
    ) -> Result<SqliteLog, StoreError> {
        let path = state_dir.join(FILE_NAME);
        private::prepare(state_dir, &path)?;
        let shown = path.display().to_string();
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError(describe(&format!("open {shown}"), &e)))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| StoreError(describe(&format!("read {shown}"), &e)))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "{shown} was written by a newer switchboard (schema {version}; this one knows up to {SCHEMA_VERSION}); run that version, or restore a backup made by this one"
            )));
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| StoreError(describe(&format!("set WAL mode on {shown}"), &e)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError(format!(
                "{shown}: the file system does not support WAL mode (got `{mode}`); put state_dir on a local disk"
            )));
        }
        let sync_pragma = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync_pragma}; PRAGMA busy_timeout=5000;"
        ))
        .map_err(|e| StoreError(describe(&format!("configure {shown}"), &e)))?;
        for v in version..SCHEMA_VERSION {
            let tx = conn
                .transaction()
                .map_err(|e| StoreError(describe("begin a migration", &e)))?;
            let step = MIGRATIONS
                .get(usize::try_from(v).unwrap_or(usize::MAX))
                .ok_or_else(|| StoreError(format!("no migration from schema {v}")))?;
            tx.execute_batch(step)
                .and_then(|_| tx.execute_batch(&format!("PRAGMA user_version={}", v + 1)))
                .and_then(|_| tx.commit())
                .map_err(|e| {
                    StoreError(describe(
                        &format!("migrate {shown} from schema {v} to {}", v + 1),
                        &e,
                    ))
                })?;
            tracing::info!(file = %shown, schema = v + 1, "message log migrated");
        }
        super::files::import(&mut conn, state_dir, plugins)?;
        let interrupted = mark_interrupted(&conn, &shown)?;
        let (tx, rx) = mpsc::channel();
        let shared = Shared {
            failure: Arc::new(Mutex::new(None)),
            listener: Arc::new(OnceLock::new()),
            unsynced: Arc::new(AtomicBool::new(false)),
            settles: Arc::new(writer::SettleCounts::default()),
            kv_max_bytes: Arc::new(std::sync::atomic::AtomicU64::new(DEFAULT_KV_MAX_BYTES)),
            disk: Arc::new(disk::DiskFloor::new(state_dir)),
            #[cfg(test)]
            count_hooks: Default::default(),
        };
        #[cfg(test)]
        let count_hooks = shared.count_hooks.clone();
        let (failure, listener) = (shared.failure.clone(), shared.listener.clone());
        let (unsynced, settles) = (shared.unsynced.clone(), shared.settles.clone());
        let (kv_max_bytes, disk) = (shared.kv_max_bytes.clone(), shared.disk.clone());
        let full = sync == SyncMode::Full;
        let wal_path = state_dir.join(format!("{FILE_NAME}-wal"));
        std::thread::Builder::new()
            .name("switchboard-store".into())
            .spawn(move || writer(conn, rx, shared, full, wal_path))
            .map_err(|e| StoreError(format!("cannot start the store's writer thread: {e}")))?;
        Ok(SqliteLog {
            path,
            writes: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            failure,
            listener,
            unsynced,
            settles,
            kv_max_bytes,
            disk,
            outcome_unknown: std::sync::atomic::AtomicU64::new(interrupted),
            #[cfg(test)]
            count_hooks,
        })
    }

    /// New messages are refused while the state directory's disk has less
    /// free space than this (`store.min_free_mb`; 0: no floor).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.disk.set_min_free_bytes(bytes);
    }

    /// Bounds each channel's key-value store (`store.kv_max_bytes`): a
    /// `kv-set` or new claim that would grow a store past it is answered
    /// with an error (the host logs a refused `kv-set`; a refused claim
    /// answers false to the plugin); the rest of its group is unaffected.
    pub fn set_kv_max_bytes(&self, bytes: u64) {
        self.kv_max_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Pending<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.guard().send(make(tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err(StoreError("the message log's writer has stopped".into()));
            }
            rx.await
                .unwrap_or_else(|_| Err(StoreError("the message log's writer stopped".into())))
        })
    }

    /// A write whose answer (a number) the caller does not need.
    fn submit_unit(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<u64, StoreError>>) -> Op,
    ) -> Pending<()> {
        let p = self.submit(make);
        Box::pin(async move { p.await.map(|_| ()) })
    }

    /// A key-value write that answers nothing.
    fn kv(&self, op: KvOp) -> Pending<()> {
        self.submit_unit(|tx| Op::Kv(op, tx))
    }

    /// An outbox write that answers nothing.
    fn outbox(&self, op: OutboxOp) -> Pending<()> {
        self.submit_unit(|tx| Op::Outbox(op, tx))
    }

    /// Runs `f` on a reader connection (opened on first use, kept for reuse).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = match self.readers.guard().pop() {
            Some(c) => c,
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| c.busy_timeout(std::time::Duration::from_secs(5)).map(|_| c))
            .map_err(|e| StoreError(describe("open a reader of the message log", &e)))?,
        };
        let r = f(&conn).map_err(|e| StoreError(describe("read the message log", &e)));
        let mut pool = self.readers.guard();
        if pool.len() < READERS {
            pool.push(conn);
        }
        r
    }
}

/// Every `send` intent left by an earlier run is one whose outcome is
/// unknown (the daemon stopped between calling its channel and recording
/// what it answered): marked, and named in the log.
/// Returns how many it marked.
fn mark_interrupted(conn: &Connection, shown: &str) -> Result<u64, StoreError> {
    let fail = |e: rusqlite::Error| StoreError(describe(&format!("read {shown}"), &e));
    let n = conn
        .execute(
            "UPDATE send_intents SET interrupted = 1 WHERE interrupted = 0",
            [],
        )
        .map_err(fail)?;
    if n == 0 {
        return Ok(0);
    }
    let mut q = conn
        .prepare("SELECT key, channel, account FROM send_intents WHERE interrupted = 1 ORDER BY created_at DESC LIMIT ?1")
        .map_err(fail)?;
    let named = q
        .query_map([NAMED_INTERRUPTED as i64], |r| {
            Ok(format!(
                "`{}` ({} / {})",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(fail)?;
    tracing::warn!(
        count = n,
        "{n} send(s) were interrupted by the last stop after their channel was called and before its answer was recorded: whether they went out is unknown; a retry with the same idempotencyKey is refused (look in the chat, and send again with a new key if it is not there). Newest: {}",
        named.join(", ")
    );
    Ok(n as u64)
}

impl MessageLog for SqliteLog {
    fn append(&self, message: Message) -> Pending<Appended> {
        self.submit(|tx| Op::Append(message, tx))
    }

    fn record_send(&self, message: Message, key: String, receipt: String) -> Pending<u64> {
        self.submit(|tx| Op::Send(message, key, receipt, tx))
    }

    fn send_record(&self, key: &str) -> Result<Option<SendRecord>, StoreError> {
        self.read(|c| {
            let receipt = c
                .prepare_cached("SELECT receipt FROM idempotency WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            if let Some(r) = receipt {
                return Ok(Some(SendRecord::Receipt(r)));
            }
            c.prepare_cached(
                "SELECT channel, account, created_at, interrupted FROM send_intents
                 WHERE key = ?1 AND interrupted > 0",
            )?
            .query_row([key], |r| {
                Ok(SendRecord::Interrupted {
                    channel: r.get(0)?,
                    account: r.get(1)?,
                    at_ms: uint(r.get(2)?),
                    cut_off: r.get::<_, i64>(3)? == 2,
                })
            })
            .optional()
        })
    }

    fn intend_send(&self, key: String, channel: String, account: String) -> Pending<()> {
        self.submit_unit(|tx| Op::Intent(IntentOp::Begin(key, channel, account), tx))
    }

    fn record_done(&self, key: String, receipt: String) -> Pending<()> {
        self.submit_unit(|tx| Op::Intent(IntentOp::Done(key, receipt), tx))
    }

    fn abandon_send(&self, key: String) -> Pending<()> {
        self.submit_unit(|tx| Op::Intent(IntentOp::Abandon(key), tx))
    }

    fn cut_off_send(&self, key: String) -> Pending<()> {
        self.outcome_unknown.fetch_add(1, Ordering::Relaxed);
        self.submit_unit(|tx| Op::Intent(IntentOp::CutOff(key), tx))
    }

    fn history(&self, q: &HistoryQuery) -> Result<Page, StoreError> {
        let limit = q.limit.clamp(1, 1000);
        // Forward (`after`): oldest first. Otherwise the newest before
        // `before` (or the end), newest first, reversed below.
        let back = q.after.is_none();
        let after = int(q.after.unwrap_or(0));
        let before = int(q.before.unwrap_or(u64::MAX));
        let sql = format!(
            "SELECT seq, direction, channel, account, chat, sender, sender_name, message_id, text,
                    ts, received_at, thread_id, reply_to_id, raw, idempotency_key, attachments
             FROM messages
             WHERE seq > ?1 AND seq < ?2
               AND (?3 IS NULL OR channel = ?3) AND (?4 IS NULL OR account = ?4)
               AND (?5 IS NULL OR chat = ?5)
             ORDER BY seq {} LIMIT ?6",
            if back { "DESC" } else { "ASC" }
        );
        // Rows are read one at a time: a page stops at its byte bound
        // without reading the rest.
        let (mut rows, cut) = self.read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let it = st.query_map(
                params![
                    after,
                    before,
                    q.channel,
                    q.account,
                    q.chat,
                    (limit + 1) as i64
                ],
                row_message,
            )?;
            let mut page = Vec::new();
            let mut bytes = 0usize;
            for m in it {
                let m = m?;
                let size = m.size();
                if !page.is_empty() && bytes.saturating_add(size) > HISTORY_PAGE_BYTES {
                    return Ok((page, true));
                }
                bytes = bytes.saturating_add(size);
                page.push(m);
            }
            Ok((page, false))
        })?;
        let has_more = cut || rows.len() > limit;
        rows.truncate(limit);
        if back {
            rows.reverse();
        }
        Ok(Page {
            messages: rows,
            has_more,
        })
    }

    fn prune(&self, retention: Retention) -> Pending<Pruned> {
        self.submit(|tx| Op::Prune(retention, tx))
    }

    fn failure(&self) -> Option<String> {
        self.failure.guard().clone().or_else(|| self.refusing())
    }

    fn refusing(&self) -> Option<String> {
        self.disk.low()
    }

    fn refused_shares(&self) -> Vec<(String, String)> {
        self.disk.refused_shares()
    }

    fn checkpoint(&self) -> Pending<()> {
        self.submit(Op::Checkpoint)
    }

    fn flush(&self) -> Pending<()> {
        self.submit(Op::Flush)
    }

    fn on_commit(&self, listener: Listener) {
        let _ = self.listener.set(listener);
    }

    fn on_health_change(&self, wake: Arc<tokio::sync::Notify>) {
        self.disk.on_change(wake);
    }

    fn outcome_unknown(&self) -> u64 {
        self.outcome_unknown.load(Ordering::Relaxed)
    }

    fn settles(&self) -> crate::store::Settles {
        crate::store::Settles {
            asked: self.settles.asked.load(Ordering::Relaxed),
            timer: self.settles.timer.load(Ordering::Relaxed),
        }
    }
}

impl super::StateStore for SqliteLog {
    fn kv_get(&self, channel: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE channel = ?1 AND key = ?2")?
                .query_row([channel, key], |r| r.get(0))
                .optional()
        })
    }

    fn kv_set(&self, channel: &str, key: &str, value: Vec<u8>) -> Pending<()> {
        self.kv(KvOp::Set(channel.into(), key.into(), value))
    }

    fn kv_delete(&self, channel: &str, key: &str) -> Pending<()> {
        self.kv(KvOp::Delete(channel.into(), key.into()))
    }

    fn kv_claim(&self, channel: &str, key: &str, expires_at: u64, now: u64) -> Pending<bool> {
        let p = self.submit(|tx| {
            Op::Kv(
                KvOp::Claim(channel.into(), claim_hash(key), expires_at, now),
                tx,
            )
        });
        Box::pin(async move { p.await.map(|n| n == 1) })
    }

    fn kv_unclaim(&self, channel: &str, key: &str) -> Pending<()> {
        self.kv(KvOp::Unclaim(channel.into(), claim_hash(key)))
    }

    fn settle(&self) -> Pending<()> {
        if !self.unsynced.load(Ordering::Acquire) {
            return Box::pin(async { Ok(()) });
        }
        self.submit(Op::Settle)
    }

    fn outbox_push(&self, channel: &str, account: &str, message: String) -> Pending<u64> {
        self.submit(|tx| Op::Outbox(OutboxOp::Push(channel.into(), account.into(), message), tx))
    }

    fn outbox_remove(&self, seq: u64) -> Pending<()> {
        self.outbox(OutboxOp::Remove(seq))
    }

    fn outbox_set_aside(&self, seq: u64) -> Pending<()> {
        self.outbox(OutboxOp::SetAside(seq))
    }

    fn outbox_queued(&self) -> Result<Vec<super::OutboxRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, channel, account, length(CAST(message AS BLOB)) FROM outbox \
                 WHERE failed = 0 ORDER BY seq",
            )?;
            let rows = st.query_map([], |r| {
                Ok(super::OutboxRow {
                    seq: uint(r.get(0)?),
                    channel: r.get(1)?,
                    account: r.get(2)?,
                    size: usize::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
    }

    fn outbox_get(&self, seq: u64) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT message FROM outbox WHERE seq = ?1 AND failed = 0")?
                .query_row([i64::try_from(seq).unwrap_or(i64::MAX)], |r| r.get(0))
                .optional()
        })
    }
}

/// Claims are kept by the SHA-256 of their key (any length fits, and the
/// files of the earlier layout were named so).
pub(crate) fn claim_hash(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn row_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        seq: uint(r.get(0)?),
        direction: if r.get::<_, i64>(1)? == 0 {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        channel: r.get(2)?,
        account: r.get(3)?,
        chat: r.get(4)?,
        sender: r.get(5)?,
        sender_name: r.get(6)?,
        message_id: r.get(7)?,
        text: r.get(8)?,
        ts: uint(r.get(9)?),
        received_at: uint(r.get(10)?),
        thread_id: r.get(11)?,
        reply_to_id: r.get(12)?,
        raw: r.get(13)?,
        idempotency_key: r.get(14)?,
        attachments: r.get(15)?,
    })
}

/// `switchboard store backup FILE`: a consistent copy of the log made while
/// the daemon runs (`VACUUM INTO` on a read-only connection).
pub fn backup(state_dir: &Path, to: &Path) -> Result<(), StoreError> {
    let path = state_dir.join(FILE_NAME);
    if !path.is_file() {
        return Err(StoreError(format!(
            "no message log at {} (is state_dir right?)",
            path.display()
        )));
    }
    // Created here, empty and private (VACUUM INTO writes into an empty
    // file and keeps its mode): a backup holds every message.
    private::create_new_private(to).map_err(|e| {
        StoreError(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} already exists; choose a new file", to.display())
        } else {
            format!("cannot create {}: {e}", to.display())
        })
    })?;
    let copy = || {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError(describe(&format!("open {}", path.display()), &e)))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| StoreError(describe("set a busy timeout", &e)))?;
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy().to_string()])
            .map_err(|e| StoreError(describe(&format!("back up into {}", to.display()), &e)))
    };
    copy().map(drop).inspect_err(|_| {
        // Not left behind half written, nor empty to block a retry.
        let _ = std::fs::remove_file(to);
    })
}

#[cfg(test)]
mod tests;
