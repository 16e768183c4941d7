//! Unit tests of the SQLite store: deduplication, sequence across reopen,
//! history paging, pruning, refusal of foreign files.

use super::*;

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
        max_bytes: 0,
        idempotency_before_ms: 5_000,
        now_ms: 3_000,
    };
    // Messages received before 1003 (four of them), the old key's
    // record and the expired claim go; the rest stays.
    let gone = log.prune(r).await.unwrap();
    assert_eq!(gone, 4 + 1 + 1);
    assert_eq!(log.prune(r).await.unwrap(), 0, "nothing left to prune");
    let left = log
        .history(&HistoryQuery {
            after: Some(0),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = left
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(ids, ["3", "4", "out2"]);
    assert_eq!(log.receipt("old-key").unwrap(), None);
    assert_eq!(log.receipt("new-key").unwrap().as_deref(), Some("{}"));
    assert!(
        log.kv_claim("c", "k", 9_000, 3_000).await.unwrap(),
        "expired claim forgotten"
    );
    // A size bound removes the oldest first.
    let r = Retention {
        before_ms: 0,
        max_bytes: 1,
        idempotency_before_ms: 0,
        now_ms: 0,
    };
    assert!(log.prune(r).await.unwrap() > 0);
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
