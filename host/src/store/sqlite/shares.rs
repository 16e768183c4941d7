//! The bytes each channel's messages hold in the message log ([`Shares`]),
//! for the disk floor's shares and `store.max_bytes`'s pruning.

use rusqlite::params;

use super::{uint, PRUNE_BATCH};
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

/// The bytes each channel's messages hold in the log ([`size_of`]), for the
/// disk floor's shares and `store.max_bytes`'s pruning. Counted from the
/// table in one pass the first time either needs them (the disk near its
/// floor, the log over its bound), then kept up to date in memory by each
/// insert and delete for the life of the writer; forgotten when a group
/// rolls back, to be counted again. Until then it costs nothing.
///
/// Also where the size bound's pruning of each channel goes on from
/// (`from`): no message of the channel has a lower `seq` (its older ones
/// are deleted, new ones get higher ones), so each batch reads on from the
/// last one, not again past every other channel's older messages.
#[derive(Default)]
pub(super) struct Shares {
    by_channel: Option<std::collections::HashMap<String, u64>>,
    from: std::collections::HashMap<String, i64>,
}

impl Shares {
    pub(super) fn counted(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
    ) -> rusqlite::Result<&std::collections::HashMap<String, u64>> {
        if self.by_channel.is_none() {
            let mut st = tx.prepare(&format!(
                "SELECT channel, SUM({SIZE_SQL}) FROM messages GROUP BY channel"
            ))?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, uint(r.get(1)?))))?;
            let map = rows.collect::<rusqlite::Result<_>>()?;
            self.by_channel = Some(map);
        }
        Ok(self.by_channel.get_or_insert_with(Default::default))
    }

    pub(super) fn added(&mut self, channel: &str, bytes: u64) {
        if let Some(m) = &mut self.by_channel {
            match m.get_mut(channel) {
                Some(n) => *n = n.saturating_add(bytes),
                None => {
                    m.insert(channel.to_string(), bytes);
                }
            }
        }
    }

    pub(super) fn removed(&mut self, channel: &str, bytes: u64) {
        if let Some(n) = self.by_channel.as_mut().and_then(|m| m.get_mut(channel)) {
            *n = n.saturating_sub(bytes);
        }
    }

    /// A group rolled back: the counts may hold its writes.
    pub(super) fn forget(&mut self) {
        self.by_channel = None;
        self.from.clear();
    }

    /// Deletes the oldest [`PRUNE_BATCH`] messages of the channel holding
    /// the most bytes, so that one channel delivering in a loop evicts its
    /// own history, not the others'; how many went.
    pub(super) fn prune_largest(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
    ) -> rusqlite::Result<usize> {
        let Some(channel) = self
            .counted(tx)?
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
            if let Some(m) = &mut self.by_channel {
                m.remove(&channel);
            }
        } else {
            self.removed(&channel, bytes);
        }
        self.from.insert(channel, last);
        Ok(gone)
    }
}
