//! The bytes each channel's messages hold in the message log ([`Shares`]),
//! for the disk floor's shares and `store.max_bytes`'s pruning.

use std::collections::HashMap;
#[cfg(test)]
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::{describe, uint, PRUNE_BATCH};
use crate::store::Message;

/// A message's bytes in the log, as [`Shares`] counts them (the SQL of
/// [`SIZE_SQL`], in Rust): its strings, and 64 for the rest of its row and
/// its index entries, so that many empty messages count too.
pub(super) fn size_of(m: &Message) -> u64 {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    (64 + m.text.len()
        + m.chat.len()
        + m.sender.len()
        + m.message_id.len()
        + opt(&m.sender_name)
        + opt(&m.raw)
        + opt(&m.attachments)) as u64
}

/// A row's bytes in the log, as [`size_of`] counts them.
pub(super) const SIZE_SQL: &str = "(64 + length(CAST(text AS BLOB)) + length(CAST(chat AS BLOB)) \
     + length(CAST(sender AS BLOB)) + length(CAST(message_id AS BLOB)) \
     + coalesce(length(CAST(sender_name AS BLOB)), 0) + coalesce(length(CAST(raw AS BLOB)), 0) \
     + coalesce(length(CAST(attachments AS BLOB)), 0))";

/// How long a count that failed is not tried again.
const RETRY_COUNT: Duration = Duration::from_secs(60);

/// Rows of `messages` (a range of `seq`) one step of the count reads: a few
/// milliseconds of the writer's time.
const COUNT_STEP: i64 = 2048;

type Counts = HashMap<String, u64>;

/// The bytes each channel's messages hold in the log ([`size_of`]), for the
/// disk floor's shares and `store.max_bytes`'s pruning. Until either needs
/// them (the disk near its floor, the log over its bound) it costs nothing.
/// Then they are counted from the table once, in steps of [`COUNT_STEP`]
/// rows by `seq` between the writer's groups ([`Shares::tend`]), up to the
/// highest `seq` when the count began, so that deliveries never wait for
/// more than one step; a new message (a higher `seq`) is added as it comes,
/// a deleted one taken off if its step was counted. From then on each
/// insert and delete keeps them up to date in memory for the life of the
/// writer; they are forgotten when a group rolls back, to be counted again.
/// While the count runs, [`Shares::counts`] has none: the floor's shares
/// refuse nothing, and the size bound's pruning waits
/// ([`Shares::prune_largest`]).
///
/// Also where the size bound's pruning of each channel goes on from
/// (`from`): no message of the channel has a lower `seq` (its older ones
/// are deleted, new ones get higher ones), so each batch reads on from the
/// last one, not again past every other channel's older messages.
#[derive(Default)]
pub(super) struct Shares {
    count: Count,
    from: HashMap<String, i64>,
    #[cfg(test)]
    pub(super) hooks: CountHooks,
}

/// Tests' hold on the count.
#[cfg(test)]
#[derive(Clone)]
pub(super) struct CountHooks {
    /// Rows per step (0: [`COUNT_STEP`]).
    pub step_rows: Arc<AtomicI64>,
    /// Steps the count may still take (0: it waits).
    pub steps_left: Arc<AtomicI64>,
    /// Counts that landed.
    pub landed: Arc<AtomicUsize>,
}

#[cfg(test)]
impl Default for CountHooks {
    fn default() -> Self {
        CountHooks {
            step_rows: Arc::default(),
            steps_left: Arc::new(AtomicI64::new(i64::MAX)),
            landed: Arc::default(),
        }
    }
}

#[derive(Default)]
enum Count {
    /// Not needed yet.
    #[default]
    Idle,
    /// Needed: the count starts after this group.
    Wanted,
    /// `counts` holds the messages with a `seq` below `next`, and every
    /// message newer than `end` (the highest `seq` when the count began).
    Running {
        counts: Counts,
        next: i64,
        end: i64,
        started: Instant,
    },
    Counted(Counts),
    /// The count failed then; tried again [`RETRY_COUNT`] later.
    Failed(Instant),
}

impl Shares {
    /// Between two groups (after a group's writes are answered, and while
    /// the writer waits with a count running): starts a count that is
    /// wanted, or counts its next step.
    pub(super) fn tend(&mut self, conn: &Connection) {
        if let Err(e) = self.step(conn) {
            tracing::warn!(
                "counting the bytes per channel of the message log failed: {}; \
                 store.max_bytes prunes nothing and the disk floor's shares refuse nothing \
                 until a count succeeds (tried again in {} s)",
                describe("count", &e),
                RETRY_COUNT.as_secs()
            );
            self.count = Count::Failed(Instant::now());
        }
    }

    fn step(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if let Count::Wanted = self.count {
            let end = conn.query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |r| {
                r.get::<_, i64>(0)
            })?;
            self.count = Count::Running {
                counts: HashMap::new(),
                next: 0,
                end,
                started: Instant::now(),
            };
        }
        if !self.running() {
            return Ok(());
        }
        #[cfg(test)]
        let rows = {
            if self.hooks.steps_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
                self.hooks.steps_left.store(0, Ordering::SeqCst);
                return Ok(());
            }
            match self.hooks.step_rows.load(Ordering::SeqCst) {
                0 => COUNT_STEP,
                n => n,
            }
        };
        #[cfg(not(test))]
        let rows = COUNT_STEP;
        let Count::Running {
            counts,
            next,
            end,
            started,
        } = &mut self.count
        else {
            return Ok(());
        };
        let upto = next.saturating_add(rows).min(end.saturating_add(1));
        // NOT INDEXED: the rowid range, not the channel's index.
        let mut st = conn.prepare_cached(&format!(
            "SELECT channel, SUM({SIZE_SQL}) FROM messages NOT INDEXED
             WHERE seq >= ?1 AND seq < ?2 GROUP BY channel"
        ))?;
        let mut found = st.query(params![*next, upto])?;
        while let Some(row) = found.next()? {
            let channel: String = row.get(0)?;
            add(counts, &channel, uint(row.get(1)?));
        }
        *next = upto;
        if *next > *end {
            tracing::info!(
                channels = counts.len(),
                ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "counted the bytes per channel of the message log"
            );
            self.count = Count::Counted(std::mem::take(counts));
            #[cfg(test)]
            self.hooks.landed.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The bytes per channel, if counted; else the count is wanted (or
    /// runs) and this has none yet.
    pub(super) fn counts(&mut self) -> Option<&Counts> {
        match &self.count {
            Count::Idle => self.count = Count::Wanted,
            Count::Failed(at) if at.elapsed() >= RETRY_COUNT => self.count = Count::Wanted,
            _ => {}
        }
        match &self.count {
            Count::Counted(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the bytes are being counted (or are to be, after this group).
    pub(super) fn counting(&self) -> bool {
        matches!(self.count, Count::Wanted | Count::Running { .. })
    }

    /// Whether a count runs, to be taken on while the writer has nothing
    /// else to do.
    pub(super) fn running(&self) -> bool {
        matches!(self.count, Count::Running { .. })
    }

    /// A new message (its `seq` is higher than any before).
    pub(super) fn added(&mut self, channel: &str, bytes: u64) {
        match &mut self.count {
            Count::Counted(counts) | Count::Running { counts, .. } => add(counts, channel, bytes),
            _ => {}
        }
    }

    pub(super) fn removed(&mut self, channel: &str, seq: i64, bytes: u64) {
        match &mut self.count {
            Count::Counted(counts) => sub(counts, channel, bytes),
            // A message no step has read yet is not counted.
            Count::Running { counts, next, .. } if seq < *next => sub(counts, channel, bytes),
            _ => {}
        }
    }

    /// A group rolled back: the counts may hold its writes.
    pub(super) fn forget(&mut self) {
        self.count = Count::Idle;
        self.from.clear();
    }

    /// Deletes the oldest [`PRUNE_BATCH`] messages of the channel holding
    /// the most bytes, so that one channel delivering in a loop evicts its
    /// own history, not the others'; how many went. Nothing goes while the
    /// bytes are counted ([`Shares::counting`]).
    pub(super) fn prune_largest(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
    ) -> rusqlite::Result<usize> {
        let Some(counts) = self.counts() else {
            return Ok(0);
        };
        let Some(channel) = counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(c, _)| c.clone())
        else {
            return Ok(0);
        };
        let from = self.from.get(&channel).copied().unwrap_or(0);
        // NOT INDEXED: by `seq` (the rowid) from `from`, stopping at the
        // batch's end, rather than all of the channel's rows sorted.
        let mut st = tx.prepare_cached(&format!(
            "DELETE FROM messages WHERE seq IN
             (SELECT seq FROM messages NOT INDEXED WHERE seq >= ?1 AND channel = ?2
              ORDER BY seq LIMIT ?3)
             RETURNING seq, {SIZE_SQL}"
        ))?;
        let mut rows = st.query(params![from, channel, PRUNE_BATCH])?;
        let (mut gone, mut last, mut bytes) = (0, from, 0u64);
        while let Some(row) = rows.next()? {
            last = last.max(row.get::<_, i64>(0)?.saturating_add(1));
            bytes = bytes.saturating_add(uint(row.get(1)?));
            gone += 1;
        }
        drop(rows);
        if gone == 0 {
            // Counted bytes with no message left: never so, but the next
            // batch must not pick it again.
            if let Count::Counted(m) = &mut self.count {
                m.remove(&channel);
            }
        } else if let Count::Counted(counts) = &mut self.count {
            sub(counts, &channel, bytes);
        }
        self.from.insert(channel, last);
        Ok(gone)
    }
}

fn add(counts: &mut Counts, channel: &str, bytes: u64) {
    match counts.get_mut(channel) {
        Some(n) => *n = n.saturating_add(bytes),
        None => {
            counts.insert(channel.to_string(), bytes);
        }
    }
}

fn sub(counts: &mut Counts, channel: &str, bytes: u64) {
    if let Some(n) = counts.get_mut(channel) {
        *n = n.saturating_sub(bytes);
    }
}
