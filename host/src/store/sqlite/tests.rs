//! Unit tests of the SQLite store: deduplication, sequence across reopen,
//! history paging, pruning, refusal of foreign files.

use super::*;
use crate::store::Settles;

fn msg(chat: &str, id: &str) -> Message {
    Message {
        seq: 0,
        direction: Direction::Inbound,
        channel: "c".into(),
        account: "a".into(),
        chat: chat.into(),
        sender: "s".into(),
        sender_name: None,
        message_id: id.into(),
        text: format!("text {id}"),
        ts: 1,
        received_at: 2,
        thread_id: None,
        reply_to_id: None,
        raw: None,
        idempotency_key: None,
        attachments: None,
    }
}

/// The message ids of the page after `seq` (oldest first), the last one's
/// `seq` (`seq` itself when the page is empty), and whether there is more.
/// One batch of pruning, once the bytes per channel are counted if it
/// needs them; the rows it deleted.
async fn prune(log: &SqliteLog, r: Retention) -> usize {
    loop {
        let p = log.prune(r).await.unwrap();
        if !p.counting {
            return p.rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits until a count of the bytes per channel is done (the writer counts
/// in steps between its groups and while it idles).
async fn counted(log: &SqliteLog) {
    let t = std::time::Instant::now();
    while log.count_hooks.landed.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed().as_secs() < 10,
            "the bytes per channel were never counted"
        );
        log.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

fn ids_after(log: &SqliteLog, seq: u64, limit: usize) -> (Vec<String>, u64, bool) {
    let p = log
        .history(&HistoryQuery {
            after: Some(seq),
            limit,
            ..Default::default()
        })
        .unwrap();
    let last = p.messages.last().map_or(seq, |m| m.seq);
    let ids = p.messages.iter().map(|m| m.message_id.clone()).collect();
    (ids, last, p.has_more)
}

#[tokio::test]
async fn appends_dedupe_and_sequence_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let a = log.append(msg("x", "1")).await.unwrap();
    let b = log.append(msg("x", "2")).await.unwrap();
    let again = log.append(msg("x", "1")).await.unwrap();
    assert_eq!((a.new, b.new, again.new), (true, true, false));
    assert_eq!(again.seq, a.seq);
    assert!(b.seq > a.seq);
    drop(log);
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let c = log.append(msg("y", "1")).await.unwrap();
    assert!(c.seq > b.seq, "{c:?} after {b:?}");
    let page = log
        .history(&HistoryQuery {
            after: Some(0),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(page.has_more);
    let back = log
        .history(&HistoryQuery {
            before: Some(c.seq + 1),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    let seqs: Vec<u64> = back.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![b.seq, c.seq]);
    assert!(back.has_more);
}

#[tokio::test]
async fn prune_removes_old_messages_expired_records_and_claims_in_batches() {
    use crate::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    for i in 0..5u64 {
        let mut m = msg("x", &i.to_string());
        m.received_at = 1_000 + i;
        log.append(m).await.unwrap();
    }
    let mut out = msg("x", "out");
    out.direction = Direction::Outbound;
    out.received_at = 1_000;
    log.record_send(out, "old-key".into(), "{}".into())
        .await
        .unwrap();
    let mut out = msg("x", "out2");
    out.direction = Direction::Outbound;
    out.received_at = 9_000;
    log.record_send(out, "new-key".into(), "{}".into())
        .await
        .unwrap();
    assert!(log.kv_claim("c", "k", 2_000, 1_000).await.unwrap());
    let r = Retention {
        before_ms: 1_003,
        idempotency_before_ms: 5_000,
        now_ms: 3_000,
        ..Retention::default()
    };
    // Messages received before 1003 (four of them), the old key's
    // record and the expired claim go; the rest stays.
    let gone = prune(&log, r).await;
    assert_eq!(gone, 4 + 1 + 1);
    assert_eq!(prune(&log, r).await, 0, "nothing left to prune");
    assert_eq!(ids_after(&log, 0, 100).0, ["3", "4", "out2"]);
    assert_eq!(log.send_record("old-key").unwrap(), None);
    assert_eq!(
        log.send_record("new-key").unwrap(),
        Some(SendRecord::Receipt("{}".into()))
    );
    assert!(
        log.kv_claim("c", "k", 9_000, 3_000).await.unwrap(),
        "expired claim forgotten"
    );
    // A size bound removes the oldest first.
    let r = Retention {
        max_bytes: 1,
        ..Retention::default()
    };
    assert!(prune(&log, r).await > 0);
    let left = log
        .history(&HistoryQuery {
            after: Some(0),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert!(left.messages.is_empty(), "{:?}", left.messages);
}

#[test]
fn refuses_a_file_that_is_not_a_database_and_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![b'x'; 8192]).unwrap();
    let e = SqliteLog::open(dir.path(), SyncMode::Full, &[])
        .err()
        .unwrap();
    assert!(e.0.contains("not a SQLite database"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let c = Connection::open(dir.path().join(FILE_NAME)).unwrap();
    c.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(c);
    let e = SqliteLog::open(dir.path(), SyncMode::Full, &[])
        .err()
        .unwrap();
    assert!(e.0.contains("newer switchboard"), "{e}");
}

/// Whether a commit is in the WAL but not yet fsynced.
fn owes_fsync(log: &SqliteLog) -> bool {
    log.unsynced.load(Ordering::Acquire)
}

#[tokio::test]
async fn key_value_writes_are_fsynced_with_the_next_acknowledged_write_or_a_settle() {
    use crate::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Full, &[]).unwrap();
    // A key-value write alone is committed without an fsync...
    log.kv_set("c", "k", b"1".to_vec()).await.unwrap();
    assert!(owes_fsync(&log));
    assert_eq!(log.kv_get("c", "k").unwrap(), Some(b"1".to_vec()));
    // ...and a message's commit (SQLite's own fsync) makes it durable too.
    log.append(msg("x", "1")).await.unwrap();
    assert!(!owes_fsync(&log));
    assert_eq!(
        log.settles(),
        Settles::default(),
        "the append's commit was the fsync"
    );

    // A settle fsyncs the WAL itself when a commit skipped it...
    assert!(log.kv_claim("c", "once", u64::MAX, 1).await.unwrap());
    assert!(owes_fsync(&log));
    log.settle().await.unwrap();
    assert!(!owes_fsync(&log));
    // (The timer's, if this thread stalled for SETTLE_WITHIN first.)
    let once = log.settles();
    assert_eq!(once.asked + once.timer, 1, "{once:?}");
    // ...and costs nothing when nothing is owed.
    log.settle().await.unwrap();
    assert_eq!(log.settles(), once);

    // A write that changes nothing (a claim already held) owes nothing.
    assert!(!log.kv_claim("c", "once", u64::MAX, 1).await.unwrap());
    assert!(!owes_fsync(&log));

    // Nobody settles: the writer does it within SETTLE_WITHIN.
    log.kv_delete("c", "k").await.unwrap();
    assert!(owes_fsync(&log));
    let start = std::time::Instant::now();
    while owes_fsync(&log) && start.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(writer::SETTLE_WITHIN / 5).await;
    }
    assert!(!owes_fsync(&log), "not settled after {:?}", start.elapsed());
    assert_eq!(
        log.settles(),
        Settles {
            timer: once.timer + 1,
            ..once
        }
    );
}

#[tokio::test]
async fn a_steady_stream_of_key_value_writes_is_still_fsynced_in_time() {
    use crate::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Full, &[]).unwrap();
    let start = std::time::Instant::now();
    let mut i = 0u64;
    // Writes keep coming ten times per SETTLE_WITHIN: the writer is never
    // idle for it, and must settle anyway.
    while log.settles().timer < 2 && start.elapsed() < std::time::Duration::from_secs(5) {
        log.kv_set("c", "k", i.to_le_bytes().to_vec())
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(writer::SETTLE_WITHIN / 10).await;
    }
    assert!(
        log.settles().timer >= 2,
        "{:?} in {:?} of writes",
        log.settles(),
        start.elapsed()
    );
}

#[tokio::test]
async fn with_sync_normal_nothing_is_owed_or_settled() {
    use crate::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    log.kv_set("c", "k", b"1".to_vec()).await.unwrap();
    assert!(!owes_fsync(&log));
    log.settle().await.unwrap();
    assert_eq!(log.settles(), Settles::default());
}

#[tokio::test]
async fn a_channel_s_key_value_store_is_bounded_and_the_others_are_not_touched() {
    use crate::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    // Room for ten entries of a 2-byte key and a 26-byte value (92 bytes
    // each with the entry overhead).
    let entry = 2 + 26 + KV_ENTRY_OVERHEAD;
    log.set_kv_max_bytes(10 * entry);
    let value = vec![b'v'; 26];
    for i in 0..10 {
        log.kv_set("full", &format!("k{i}"), value.clone())
            .await
            .unwrap();
    }
    let e = log
        .kv_set("full", "kx", value.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key-value store of channel `full` is full")
            && e.contains("store.kv_max_bytes = 920"),
        "{e}"
    );
    assert_eq!(
        log.kv_get("full", "kx").unwrap(),
        None,
        "a refused write was stored"
    );
    // Many empty values fill it too (the per-entry overhead).
    assert!(log.kv_set("full", "", Vec::new()).await.is_err());
    // Growing an entry is refused; a same-size or smaller overwrite is not.
    assert!(log.kv_set("full", "k0", vec![b'v'; 27]).await.is_err());
    log.kv_set("full", "k0", vec![b'w'; 26]).await.unwrap();
    log.kv_set("full", "k1", vec![b'w'; 6]).await.unwrap();
    // The freed 20 bytes take a write that fits in them.
    log.kv_set("full", "k2", vec![b'w'; 46]).await.unwrap();
    assert!(log.kv_set("full", "k3", vec![b'w'; 27]).await.is_err());
    // Another channel is not bounded by this one's use.
    for i in 0..10 {
        log.kv_set("other", &format!("k{i}"), value.clone())
            .await
            .unwrap();
    }
    // A delete makes room.
    log.kv_delete("full", "k9").await.unwrap();
    log.kv_set("full", "kx", value.clone()).await.unwrap();
    assert!(log.kv_set("full", "ky", value.clone()).await.is_err());
    drop(log);
    // Reopened, the use is counted again from the table.
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    log.set_kv_max_bytes(10 * entry);
    assert!(log.kv_set("full", "ky", value.clone()).await.is_err());
    log.kv_delete("full", "kx").await.unwrap();
    log.kv_set("full", "ky", value).await.unwrap();
}

#[tokio::test]
async fn claims_count_against_the_bound_until_unclaimed_or_pruned() {
    use crate::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    log.set_kv_max_bytes(4 * KV_CLAIM_BYTES);
    for i in 0..4 {
        assert!(log
            .kv_claim("c", &format!("k{i}"), 2_000, 1_000)
            .await
            .unwrap());
    }
    let e = log
        .kv_claim("c", "k4", 2_000, 1_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("store.kv_max_bytes"), "{e}");
    // A key claimed already answers as before (no new row).
    assert!(!log.kv_claim("c", "k0", 2_000, 1_000).await.unwrap());
    // An unclaim makes room.
    log.kv_unclaim("c", "k3").await.unwrap();
    assert!(log.kv_claim("c", "k4", 2_000, 1_000).await.unwrap());
    assert!(log.kv_claim("c", "k5", 2_000, 1_000).await.is_err());
    // An expired claim not yet pruned is taken over in place: it fits a
    // full store, and still counts once.
    assert!(log.kv_claim("c", "k0", 5_000, 3_000).await.unwrap());
    assert!(log.kv_claim("c", "k1", 5_000, 3_000).await.unwrap());
    assert!(log.kv_claim("c", "k5", 5_000, 3_000).await.is_err());
    // Expired claims pruned make room too.
    let r = Retention {
        now_ms: 6_000,
        ..Retention::default()
    };
    assert_eq!(prune(&log, r).await, 4);
    for i in 5..9 {
        assert!(log
            .kv_claim("c", &format!("k{i}"), 9_000, 6_000)
            .await
            .unwrap());
    }
    assert!(log.kv_claim("c", "k9", 9_000, 6_000).await.is_err());
    // Entries and claims share the one bound.
    assert!(log.kv_set("c", "v", Vec::new()).await.is_err());
}

/// Below `store.min_free_mb` a new message is refused (nothing stored,
/// `failure` says why), while a copy of a logged one is still answered and
/// a send's record (its message has gone out) is still taken; with room
/// again, messages are taken.
#[tokio::test]
async fn new_messages_are_refused_below_the_disk_floor() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let first = log.append(msg("x", "1")).await.unwrap();
    assert_eq!(log.failure(), None);
    log.set_min_free_bytes(u64::MAX);
    let e = log.append(msg("x", "2")).await.unwrap_err().0;
    assert!(e.contains("below store.min_free_mb"), "{e}");
    assert_eq!(log.refusing().as_deref(), Some(e.as_str()));
    assert_eq!(log.failure().as_deref(), Some(e.as_str()));
    let again = log.append(msg("x", "1")).await.unwrap();
    assert_eq!((again.seq, again.new), (first.seq, false));
    let mut out = msg("x", "o1");
    out.direction = Direction::Outbound;
    log.record_send(out, "k".into(), "{}".into()).await.unwrap();
    // A successful commit does not clear it: the disk is still low.
    assert!(log.failure().is_some());
    log.set_min_free_bytes(0);
    assert_eq!(log.failure(), None);
    let b = log.append(msg("x", "2")).await.unwrap();
    assert!(b.new);
    assert_eq!(ids_after(&log, 0, 10).0, ["1", "o1", "2"]);
}

/// A history page stops at `HISTORY_PAGE_BYTES` of messages whatever its
/// `limit` (saying there is more), both ways, and holds at least one
/// message even when that one alone is larger.
#[tokio::test]
async fn a_history_page_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let big = |id: &str, n: usize| {
        let mut m = msg("x", id);
        m.text = "t".repeat(n);
        m
    };
    let quarter = HISTORY_PAGE_BYTES / 4 - 100;
    for i in 0..10 {
        log.append(big(&i.to_string(), quarter)).await.unwrap();
    }
    let (forward, mut after, more) = ids_after(&log, 0, 1000);
    assert_eq!(forward, ["0", "1", "2", "3"]);
    assert!(more);
    let back = log
        .history(&HistoryQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    let back_ids: Vec<&str> = back
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(back_ids, ["6", "7", "8", "9"]);
    assert!(back.has_more);
    // Paging on reads everything once.
    let mut all = forward;
    loop {
        let (ids, last, more) = ids_after(&log, after, 1000);
        all.extend(ids);
        after = last;
        if !more {
            break;
        }
    }
    assert_eq!(all.len(), 10);
    // One message over the bound alone is still a page.
    log.append(big("huge", HISTORY_PAGE_BYTES + 1))
        .await
        .unwrap();
    let (ids, _, more) = ids_after(&log, after, 1000);
    assert_eq!(ids, ["huge"]);
    assert!(!more);
}

/// A send's intent: nothing to a lookup while its run lives; interrupted
/// after a reopen unless its record or its abandonment came first; pruned
/// with the receipts.
#[tokio::test]
async fn a_send_intent_left_by_a_stop_is_interrupted_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Full, &[]).unwrap();
    for key in ["sent", "failed", "cut", "late", "acted"] {
        log.intend_send(key.into(), "ch".into(), "acct".into())
            .await
            .unwrap();
    }
    assert_eq!(
        log.send_record("cut").unwrap(),
        None,
        "in flight in this run"
    );
    // Cut off by the host after it reached out: interrupted at once.
    log.cut_off_send("late".into()).await.unwrap();
    log.flush().await.unwrap();
    assert!(
        matches!(
            log.send_record("late").unwrap(),
            Some(SendRecord::Interrupted { cut_off: true, .. })
        ),
        "a cut-off send is not refused in its own run"
    );
    let mut out = msg("room", "m1");
    out.direction = Direction::Outbound;
    out.received_at = crate::now_ms();
    log.record_send(out, "sent".into(), "{\"r\":1}".into())
        .await
        .unwrap();
    log.abandon_send("failed".into()).await.unwrap();
    // An action's receipt, with no message logged.
    let before = log
        .history(&HistoryQuery::default())
        .unwrap()
        .messages
        .len();
    log.record_done("acted".into(), "{\"action\":\"edit\"}".into())
        .await
        .unwrap();
    assert_eq!(
        log.history(&HistoryQuery::default())
            .unwrap()
            .messages
            .len(),
        before
    );
    drop(log);
    let log = SqliteLog::open(dir.path(), SyncMode::Full, &[]).unwrap();
    assert_eq!(
        log.send_record("sent").unwrap(),
        Some(SendRecord::Receipt("{\"r\":1}".into()))
    );
    assert_eq!(
        log.send_record("acted").unwrap(),
        Some(SendRecord::Receipt("{\"action\":\"edit\"}".into())),
        "an action's intent goes with its receipt"
    );
    assert_eq!(log.send_record("failed").unwrap(), None);
    assert!(matches!(
        log.send_record("late").unwrap(),
        Some(SendRecord::Interrupted { cut_off: true, .. })
    ));
    let Some(SendRecord::Interrupted {
        channel,
        account,
        at_ms,
        cut_off: false,
    }) = log.send_record("cut").unwrap()
    else {
        panic!("the cut send is not interrupted");
    };
    assert_eq!((channel.as_str(), account.as_str()), ("ch", "acct"));
    assert!(at_ms > 0 && at_ms <= crate::now_ms());
    // A new intent of this run is not taken for an interrupted one.
    log.intend_send("new".into(), "ch".into(), "acct".into())
        .await
        .unwrap();
    assert_eq!(log.send_record("new").unwrap(), None);
    // Kept as long as receipts are, then pruned (the live one stays).
    let keep = Retention {
        idempotency_before_ms: at_ms,
        ..Retention::default()
    };
    assert_eq!(prune(&log, keep).await, 0);
    let past = Retention {
        idempotency_before_ms: crate::now_ms() + 1,
        ..keep
    };
    // The receipts of "sent" and "acted" and the interrupted "cut" and "late".
    assert_eq!(prune(&log, past).await, 4);
    assert_eq!(log.send_record("cut").unwrap(), None);
}

/// Near the disk's floor (within four times it), a channel holding more
/// than half of the log while another holds messages too is refused new
/// ones; the others are not, nor is a channel alone, nor a copy of a logged
/// message. The bytes per channel are counted from the log when the disk
/// comes near, and follow inserts and prunes while it stays near.
#[tokio::test]
async fn near_the_floor_the_channel_holding_most_of_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let on = |channel: &str, id: &str, size: usize| {
        let mut m = msg("x", id);
        m.channel = channel.into();
        m.text = "t".repeat(size);
        m
    };
    log.append(on("big", "1", 10_000)).await.unwrap();
    // What wakes the health monitor (a permit is kept until taken).
    let wake = Arc::new(tokio::sync::Notify::new());
    log.on_health_change(wake.clone());
    let woken = || {
        let w = wake.clone();
        async move {
            tokio::time::timeout(std::time::Duration::ZERO, w.notified())
                .await
                .is_ok()
        }
    };
    // Above the floor, within four times it.
    let free = disk::free_bytes(dir.path()).unwrap();
    log.set_min_free_bytes(free / 2);
    assert_eq!(log.refusing(), None);
    // Alone, a channel is not refused for its share.
    log.append(on("big", "2", 10_000)).await.unwrap();
    log.append(on("small", "s1", 100)).await.unwrap();
    // The shares are counted from the log meanwhile.
    counted(&log).await;
    let e = log.append(on("big", "3", 10)).await.unwrap_err().0;
    assert!(e.contains("channel `big` holds 99% of the log"), "{e}");
    assert!(e.contains("near store.min_free_mb"), "{e}");
    assert!(
        woken().await,
        "a channel refused for its share wakes health"
    );
    log.append(on("small", "s2", 100)).await.unwrap();
    assert!(!log.append(on("big", "1", 10_000)).await.unwrap().new);
    assert!(log.append(on("big", "3", 10)).await.is_err());
    assert!(!woken().await, "nothing health shows changed");
    // The counts are kept while the disk is not near.
    log.set_min_free_bytes(1);
    log.append(on("small", "s3", 100)).await.unwrap();
    log.set_min_free_bytes(free / 2);
    assert!(log.append(on("big", "3", 10)).await.is_err());
    // The smaller one grows past it: now it is refused, and the other not.
    log.append(on("small", "s4", 30_000)).await.unwrap();
    assert!(log.append(on("small", "s5", 10)).await.is_err());
    // Both have been refused; `big` is listed until a message of it is taken.
    let names = |log: &SqliteLog| -> Vec<String> {
        log.refused_shares().into_iter().map(|(c, _)| c).collect()
    };
    assert_eq!(names(&log), ["big", "small"]);
    assert!(woken().await);
    log.append(on("big", "3", 10)).await.unwrap();
    assert_eq!(names(&log), ["small"]);
    assert!(woken().await, "a channel taken off the list wakes health");
    // Pruned (everything), the bytes go back: each may deliver again.
    let r = Retention {
        before_ms: u64::MAX,
        ..Retention::default()
    };
    while prune(&log, r).await > 0 {}
    log.append(on("small", "s5", 10)).await.unwrap();
    log.append(on("big", "4", 10)).await.unwrap();
    assert!(log.refused_shares().is_empty());
}

fn of(channel: &str, id: usize) -> Message {
    let mut m = msg("x", &id.to_string());
    m.channel = channel.into();
    m.received_at = 1_000 + id as u64;
    m
}

#[tokio::test]
async fn a_size_bound_prunes_the_channel_holding_most_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    // The quiet channel's messages are the oldest.
    for i in 0..5 {
        log.append(of("quiet", i)).await.unwrap();
    }
    for i in 0..2500 {
        log.append(of("loud", i)).await.unwrap();
    }
    let mut out = of("quiet", 9);
    out.direction = Direction::Outbound;
    log.record_send(out, "k".into(), "{}".into()).await.unwrap();
    let r = Retention {
        max_bytes: 1,
        ..Retention::default()
    };
    let ids = |channel: &str| -> Vec<String> {
        let c = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let mut st = c
            .prepare("SELECT message_id FROM messages WHERE channel = ?1 ORDER BY seq")
            .unwrap();
        let rows = st.query_map([channel], |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    };
    // Each batch takes the oldest of the channel holding the most.
    assert_eq!(prune(&log, r).await, PRUNE_BATCH as usize);
    let loud = ids("loud");
    assert_eq!((loud.len(), loud[0].as_str()), (1500, "1000"));
    assert_eq!(prune(&log, r).await, PRUNE_BATCH as usize);
    assert_eq!(ids("loud")[0], "2000");
    assert_eq!(ids("quiet"), ["0", "1", "2", "3", "4", "9"]);
    // Counted once, the bytes are kept by each new message: the quiet
    // channel now holds the most, and goes next.
    for i in 10..810 {
        log.append(of("quiet", i)).await.unwrap();
    }
    assert_eq!(prune(&log, r).await, 806);
    assert!(ids("quiet").is_empty());
    assert_eq!(ids("loud").len(), 500);
    while prune(&log, r).await > 0 {}
    assert!(ids("loud").is_empty());
}

/// [`shares::SIZE_SQL`] and the Rust that keeps the counts agree.
#[tokio::test]
async fn a_message_counts_the_same_bytes_in_sql_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let mut full = of("c", 1);
    full.text = "héllo".into();
    full.sender_name = Some("Ünïcode".into());
    full.raw = Some("{\"raw\":true}".into());
    full.attachments = Some("[{\"url\":\"x\"}]".into());
    full.thread_id = Some("t".into());
    let plain = of("c", 2);
    let want = shares::size_of(&full) + shares::size_of(&plain);
    log.append(full).await.unwrap();
    log.append(plain).await.unwrap();
    let c = Connection::open(dir.path().join(FILE_NAME)).unwrap();
    let sql: i64 = c
        .query_row(
            &format!("SELECT SUM({}) FROM messages", shares::SIZE_SQL),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sql as u64, want);
    assert_eq!(shares::size_of(&of("c", 3)), 64 + 6 + 1 + 1 + 1);
}

/// The bytes per channel are counted in steps between the writer's groups
/// (here: one step of 1000 rows, then a pause), from the lowest `seq` up to
/// the highest when the count began: the writer goes on meanwhile, a new
/// message is added as it comes, and a deleted one is taken off only if a
/// step had counted it.
#[tokio::test]
async fn the_bytes_per_channel_are_counted_in_steps_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path(), SyncMode::Normal, &[]).unwrap();
    let sized = |channel: &str, id: usize, size: usize, received_at: u64| {
        let mut m = of(channel, id);
        m.text = "t".repeat(size);
        m.received_at = received_at;
        m
    };
    // seq 1..=5.
    for i in 0..5 {
        log.append(sized("quiet", 5000 + i, 10, 10_000))
            .await
            .unwrap();
    }
    // seq 6..=2005, about 275 bytes each; the first 100 and the last 500
    // are old.
    for i in 0..2000 {
        let old = !(100..1500).contains(&i);
        let at = if old { 100 } else { 10_000 };
        log.append(sized("loud", i, 200, at)).await.unwrap();
    }
    // seq 2006.
    log.append(sized("mid", 9000, 120_000, 10_000))
        .await
        .unwrap();
    log.count_hooks.step_rows.store(1000, Ordering::SeqCst);
    log.count_hooks.steps_left.store(1, Ordering::SeqCst);
    let bound = Retention {
        max_bytes: 1,
        ..Retention::default()
    };
    let counting = Pruned {
        rows: 0,
        counting: true,
    };
    // Over the bound: the count is asked for (its first step counts seq
    // 0..1000), and nothing goes until it lands.
    assert_eq!(log.prune(bound).await.unwrap(), counting);
    // The count waits; the writer does not. `quiet` gets 330 KB more, and
    // the old `loud` messages go: 100 counted, 500 not yet.
    for i in 0..3 {
        log.append(sized("quiet", 6000 + i, 110_000, 10_000))
            .await
            .unwrap();
    }
    let old = Retention {
        before_ms: 5000,
        ..Retention::default()
    };
    assert_eq!(prune(&log, old).await, 600);
    assert_eq!(log.prune(bound).await.unwrap(), counting, "still counting");
    assert_eq!(log.count_hooks.landed.load(Ordering::SeqCst), 0);
    log.count_hooks.steps_left.store(i64::MAX, Ordering::SeqCst);
    // The writer takes the steps left while nothing else is written: the
    // count is done without another write.
    let t = std::time::Instant::now();
    while log.count_hooks.landed.load(Ordering::SeqCst) == 0 {
        assert!(t.elapsed().as_secs() < 5, "an idle writer does not count");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Counted, with the writes made meanwhile: `loud` holds 1400 messages
    // (385 KB), `quiet` 330 KB, `mid` 120 KB. Each batch takes the oldest
    // 1000 of the largest: `loud` (110 KB left), `quiet`, `mid`, `loud`.
    let left = |channel: &str| -> i64 {
        let c = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        c.query_row(
            "SELECT count(*) FROM messages WHERE channel = ?1",
            [channel],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(prune(&log, bound).await, 1000);
    assert_eq!(left("loud"), 400);
    assert_eq!(prune(&log, bound).await, 8);
    assert_eq!(left("quiet"), 0);
    assert_eq!(prune(&log, bound).await, 1);
    assert_eq!(left("mid"), 0);
    assert_eq!(prune(&log, bound).await, 400);
    assert_eq!(prune(&log, bound).await, 0);
    assert_eq!(
        log.count_hooks.landed.load(Ordering::SeqCst),
        1,
        "counted once"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_state_directory_and_its_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let top = tempfile::tempdir().unwrap();
    // Created by the log: 0700, and the database files 0600.
    let dir = top.path().join("a/state");
    let log = SqliteLog::open(&dir, SyncMode::Normal, &[]).unwrap();
    log.append(msg("x", "1")).await.unwrap();
    assert_eq!(mode(&dir), 0o700);
    for f in ["switchboard.db", "switchboard.db-wal", "switchboard.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    drop(log);
    // Files left readable by an earlier version are made private at open;
    // a directory that exists keeps its mode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["switchboard.db", "switchboard.db-wal", "switchboard.db-shm"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let log = SqliteLog::open(&dir, SyncMode::Normal, &[]).unwrap();
    log.append(msg("x", "2")).await.unwrap();
    assert_eq!(mode(&dir), 0o755);
    for f in ["switchboard.db", "switchboard.db-wal", "switchboard.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // A backup is private, and one that fails leaves nothing behind.
    let copy = top.path().join("copy.db");
    backup(&dir, &copy).unwrap();
    assert_eq!(mode(&copy), 0o600);
    let e = backup(&dir, &copy).unwrap_err();
    assert!(e.0.contains("already exists"), "{e:?}");
    let nowhere = top.path().join("missing-dir/copy.db");
    assert!(backup(&dir, &nowhere).is_err());
    assert!(!nowhere.exists());
}
