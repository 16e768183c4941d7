//! The durable message log: history across restarts, exactly-once ingest,
//! idempotent `send` across a SIGKILL, acknowledged messages surviving
//! SIGKILL at random moments, `switchboard tail` across a restart, the
//! store's errors. The real daemon over real sockets throughout.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;

/// A webhook daemon (open account `open`, and `out`, which sends to
/// `out_url`) with its state in `dir`.
fn daemon_in(dir: &Path, port: u16, out_url: &str) -> Daemon {
    daemon_with(dir, port, out_url, "")
}

/// [`daemon_in`] with `more` (TOML tables) at the end of its configuration.
fn daemon_with(dir: &Path, port: u16, out_url: &str, more: &str) -> Daemon {
    let out_port = out_url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next())
        .unwrap_or("9");
    Daemon::builder()
        .port(port)
        .with_plugins(
            dir,
            &[("plugins", "webhook.wasm")],
            &format!(
                "[channels.webhook]\nnetwork = [\"127.0.0.1:{out_port}\"]\n\
                 [channels.webhook.accounts.open]\n\
                 [channels.webhook.accounts.out]\nurl = \"{out_url}\"\n{more}"
            ),
        )
        .start()
        .unwrap()
}

async fn post(d: &Daemon, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(d.http("/hooks/webhook/open"))
        .body(body.to_string())
        .send()
        .await;
    match r {
        Ok(r) => {
            let st = r.status().as_u16();
            (st, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn inbound(id: &str) -> Value {
    json!({"chatId": "room", "senderId": "u1", "text": format!("text {id}"), "messageId": id})
}

async fn history(c: &mut Client, params: Value) -> Value {
    let r = c.request("h", "messages.history", params).await.unwrap();
    assert_eq!(r["ok"], true, "{r}");
    r["payload"].clone()
}

/// A counting stand-in for the webhook channel's outbound URL that answers
/// after `delay` with message ids `<prefix>-1`, `<prefix>-2`, ….
async fn outbound_server(delay: Duration, prefix: &'static str) -> (String, Arc<AtomicU64>) {
    use axum::routing::post;
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/out",
        post(move || {
            let h = h.clone();
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                axum::Json(json!({"messageId": format!("{prefix}-{n}")}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/out"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_and_message_seq_keeps_growing() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    for i in 0..3 {
        let (st, v) = post(&d, &inbound(&format!("a{i}"))).await;
        assert_eq!(st, 200, "{v}");
    }
    drop(d);
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    let (st, v) = post(&d, &inbound("b0")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["messageSeq"], 4,
        "messageSeq continues after a restart: {v}"
    );
    let (mut c, hello) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let methods = hello["features"]["methods"].as_array().unwrap();
    assert!(methods.iter().any(|m| m == "messages.history"), "{hello}");
    let all = c.history_after(0).await.unwrap();
    let ids: Vec<&str> = all
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a0", "a1", "a2", "b0"]);
    let seqs: Vec<u64> = all
        .iter()
        .map(|m| m["messageSeq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // Each entry has the `message` event's shape.
    assert_eq!(all[0]["direction"], "inbound");
    assert_eq!(all[0]["channel"], "webhook");
    assert_eq!(all[0]["accountId"], "open");
    assert_eq!(all[0]["chatId"], "room");
    assert_eq!(all[0]["text"], "text a0");
    // Paging back from the end, and filters.
    let p = history(&mut c, json!({"limit": 2})).await;
    let ids: Vec<&str> = p["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a2", "b0"]);
    assert_eq!(p["hasMore"], true);
    let p = history(&mut c, json!({"chatId": "elsewhere"})).await;
    assert_eq!(p["messages"], json!([]));
    let r = c
        .request("x", "messages.history", json!({"limit": 5000}))
        .await
        .unwrap();
    assert_refused(&r, "INVALID_REQUEST", "1 to 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_twice_is_stored_and_broadcast_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let (_, first) = post(&d, &inbound("dup")).await;
    let (st, again) = post(&d, &inbound("dup")).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(first["messageSeq"], again["messageSeq"], "{first} {again}");
    let (_, other) = post(&d, &inbound("next")).await;
    let m = watcher.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["messageId"], "dup");
    let m = watcher.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["messageId"], "next", "the redelivery made a second event");
    assert_eq!(m["messageSeq"], other["messageSeq"]);
    let all = watcher.history_after(0).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
}

/// A clean stop checkpoints the log: with `sync = normal` (commits not
/// fsynced) everything is then in the database file, on disk, and the WAL
/// is empty; the next start finds every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_the_whole_log_in_its_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon_with(
        dir.path(),
        0,
        "http://127.0.0.1:9/out",
        "[store]\nsync = \"normal\"\n",
    );
    for i in 0..20 {
        let (st, r) = post(&d, &inbound(&format!("m{i}"))).await;
        assert_eq!(st, 200, "{r}");
    }
    let wal = dir.path().join("state/switchboard.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "nothing in the WAL to begin with"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    d.wait_log("message log checkpointed", Duration::from_secs(10))
        .await
        .unwrap();
    let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        left, 0,
        "the WAL still holds {left} bytes after a clean stop"
    );
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    assert_eq!(c.history_after(0).await.unwrap().len(), 20);
}

/// SIGKILLs `d` (`c` goes with it) and starts it again on the same state,
/// with a client that may write and read.
async fn kill_and_restart(d: Daemon, c: Client, dir: &Path, url: &str) -> (Daemon, Client) {
    d.signal("KILL");
    drop(c);
    drop(d);
    let d = daemon_in(dir, 0, url);
    let (c, _) = connect(&d.url(), None, &["operator.write", "operator.read"])
        .await
        .unwrap();
    (d, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_sigkill_is_not_sent_again() {
    let (url, hits) = outbound_server(Duration::ZERO, "remote").await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, &url);
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let params = json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "once", "idempotencyKey": "k-1"});
    let r = c.request("1", "send", params.clone()).await.unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let first = r["payload"]["messageId"].clone();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let (_d, mut c) = kill_and_restart(d, c, dir.path(), &url).await;
    let r = c.request("2", "send", params).await.unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["payload"]["messageId"], first, "{r}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent twice");
    // The outbound message is in the log once, with its key.
    let all = c.history_after(0).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["direction"], "outbound");
    assert_eq!(all[0]["messageId"], first);
    // Another key sends.
    let r = c
        .request("3", "send", json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "twice", "idempotencyKey": "k-2"}))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// Waits until `hits` reaches `n` (the stand-in got the channel's request).
async fn wait_hits(hits: &AtomicU64, n: u64) {
    for _ in 0..200 {
        if hits.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the channel's request never reached the stand-in");
}

/// The daemon SIGKILLed after the channel took the message and before its
/// answer was recorded: whether it went out is unknown to the restarted
/// daemon, so a retry with the same key is refused by name (never sent a
/// second time), the start's log names the key, and a new key sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_by_sigkill_after_its_channel_was_called_is_refused_not_sent_twice() {
    let (url, hits) = outbound_server(Duration::from_secs(3), "slow").await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, &url);
    let params = json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "once", "idempotencyKey": "k-cut"});
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    c.send_request("1", "send", params.clone()).await.unwrap();
    wait_hits(&hits, 1).await;
    let (d, mut c) = kill_and_restart(d, c, dir.path(), &url).await;
    let r = c.request("2", "send", params).await.unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    assert_eq!(r["error"]["details"]["code"], "SEND_OUTCOME_UNKNOWN", "{r}");
    assert_eq!(r["error"]["details"]["channel"], "webhook", "{r}");
    let m = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("`k-cut`") && m.contains("new idempotencyKey"),
        "{r}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent twice");
    d.wait_log("`k-cut` (webhook / out)", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        d.metric("switchboard_sends_outcome_unknown_total")
            .await
            .unwrap(),
        1
    );
    assert!(c.history_after(0).await.unwrap().is_empty());
    let r = c
        .request("3", "send", json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "again", "idempotencyKey": "k-new"}))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// The host ends a `send` (its deadline) while the channel's request is
/// out: whether the message went out is unknown, so the answer says so and
/// retries are refused by name, in this run and the next, and nothing is
/// sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_host_cut_off_after_its_request_went_out_is_never_sent_again() {
    let (url, hits) = outbound_server(Duration::from_secs(4), "slow").await;
    let dir = tempfile::tempdir().unwrap();
    let start =
        || {
            Daemon::builder()
                .with_plugins(
                    dir.path(),
                    &[("plugins", "webhook.wasm")],
                    &format!(
                    "call_timeout_ms = 1000\n[channels.webhook]\nnetwork = [\"127.0.0.1:{}\"]\n\
                     [channels.webhook.accounts.out]\nurl = \"{url}\"\n",
                    url.split(':').nth(2).and_then(|p| p.split('/').next()).unwrap()
                ),
                )
                .start()
                .unwrap()
        };
    let d = start();
    let params = json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "once", "idempotencyKey": "k-late"});
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let refused = |r: &Value| {
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
        assert_eq!(r["error"]["details"]["code"], "SEND_OUTCOME_UNKNOWN", "{r}");
        let m = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("`k-late`") && m.contains("new idempotencyKey"),
            "{r}"
        );
        m.to_string()
    };
    let first = c.request("1", "send", params.clone()).await.unwrap();
    let m = refused(&first);
    assert!(m.contains("deadline"), "{first}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let again = c.request("2", "send", params.clone()).await.unwrap();
    refused(&again);
    assert_eq!(
        d.metric("switchboard_sends_outcome_unknown_total")
            .await
            .unwrap(),
        1
    );
    // Past the stand-in's delay: a retry that had been sent would show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent twice");
    d.signal("KILL");
    drop((c, d));
    let d = start();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let after = c.request("3", "send", params).await.unwrap();
    refused(&after);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent twice");
}

/// A `send` whose channel answers after the log's disk filled up (a
/// 16 MiB tmpfs, `min_free_mb = 0`): the daemon, its admin client, the
/// request and its answer (already checked to be the stand-in's `<prefix>-1`).
struct SentOnAFullDisk {
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
    _unmount: Tmpfs,
    url: String,
    hits: Arc<AtomicU64>,
    d: Daemon,
    /// The client that sent it (`None` once closed).
    c: Option<Client>,
    params: Value,
    r: Value,
}

impl SentOnAFullDisk {
    async fn new(prefix: &'static str, key: &str) -> SentOnAFullDisk {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let _unmount = Tmpfs::mount(&state, "16m");
        let (url, hits) = outbound_server(Duration::from_millis(1500), prefix).await;
        let d = Self::daemon(dir.path(), &url);
        // A text larger than the log's WAL: its record needs new disk space.
        let text = "x".repeat(1 << 20);
        let params = json!({"channel": "webhook", "accountId": "out", "to": "x", "message": text, "idempotencyKey": key});
        let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
        c.send_request("1", "send", params.clone()).await.unwrap();
        wait_hits(&hits, 1).await;
        fill(&state.join("filler"));
        let r = c.response("1").await.unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["payload"]["messageId"], format!("{prefix}-1"), "{r}");
        SentOnAFullDisk {
            dir,
            state,
            _unmount,
            url,
            hits,
            d,
            c: Some(c),
            params,
            r,
        }
    }

    fn daemon(dir: &Path, url: &str) -> Daemon {
        daemon_with(dir, 0, url, "[store]\nmin_free_mb = 0\n")
    }

    /// Another daemon on the same state, and an admin client of it.
    async fn restart(&self) -> (Daemon, Client) {
        let d = Self::daemon(self.dir.path(), &self.url);
        let (c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
        (d, c)
    }

    /// On a restarted daemon, a retry of the send gets its first answer
    /// without sending, and the log holds the message once.
    async fn restarted_retry_gets_the_first_answer(&self) {
        let (_d, mut c) = self.restart().await;
        let after = c
            .request("retry", "send", self.params.clone())
            .await
            .unwrap();
        assert_eq!(after["payload"], self.r["payload"], "{after}");
        assert_eq!(self.hits.load(Ordering::SeqCst), 1, "sent twice");
        assert_eq!(c.history_after(0).await.unwrap().len(), 1);
    }

    fn free(&self) {
        std::fs::remove_file(self.state.join("filler")).unwrap();
    }
}

/// The disk fills while the channel sends: the message went out, so the
/// `send` is answered; a retry gets the same answer without sending; once
/// there is room the record is written by itself, and after a restart the
/// retry still gets the first answer. The message is in the log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_record_fails_is_answered_once_and_recorded_when_the_disk_has_room() {
    let mut s = SentOnAFullDisk::new("late", "k-full").await;
    let ready: Value = reqwest::get(s.d.http("/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["failing"].to_string().contains("disk is full"),
        "the record did not fail: {ready}"
    );
    let mut c = s.c.take().unwrap();
    let again = c.request("2", "send", s.params.clone()).await.unwrap();
    assert_eq!(again["payload"], s.r["payload"], "{again}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 1, "sent twice");
    s.free();
    let mut recorded = Vec::new();
    for _ in 0..60 {
        recorded = c.history_after(0).await.unwrap();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["messageId"], "late-1");
    s.d.signal("KILL");
    let _ = s.d.wait_exit(Duration::from_secs(10));
    s.restarted_retry_gets_the_first_answer().await;
}

/// The daemon is stopped (SIGTERM) while a sent message's record is still
/// owed (the disk was full when the channel answered, and has room again
/// before the next retry): the stop writes it, so after the restart a retry
/// gets the first answer instead of being refused as SEND_OUTCOME_UNKNOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_still_owed_at_a_stop_is_written_by_the_stop() {
    let mut s = SentOnAFullDisk::new("owed", "k-owed").await;
    // The record's own retries (0.5 s, then 1 s later) fail on the full
    // disk; the next is 2 s later. Room comes back, and the stop, first.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    s.free();
    s.c = None;
    s.d.signal("TERM");
    assert_eq!(s.d.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    assert!(
        !s.d.log_text()
            .contains("could not be recorded before the stop"),
        "{}",
        s.d.log_text()
    );
    s.restarted_retry_gets_the_first_answer().await;
}

/// Posts numbered messages as an upstream would (retrying until answered
/// 200) while the daemon is SIGKILLed at random moments: every message
/// answered 200 before a kill is in the log after the restart, and after
/// the upstream redelivers the rest, each is there exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let total = 3000u64;
    let mut acked = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..5 {
        let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
        // Redeliver from the first unacknowledged message, as an upstream
        // that keeps its offset would.
        let mut next = acked;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = Duration::from_millis(50 + rng % 400);
        let started = std::time::Instant::now();
        let killer = {
            let pid = d.pid();
            std::thread::spawn(move || {
                std::thread::sleep(kill_after);
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            })
        };
        while next < total {
            let (st, _) = post(&d, &inbound(&format!("m{next:05}"))).await;
            if st != 200 {
                break;
            }
            next += 1;
            acked = next;
        }
        killer.join().unwrap();
        eprintln!(
            "round {round}: killed after {kill_after:?} ({:?} elapsed), {acked} acknowledged",
            started.elapsed()
        );
        drop(d);
        // After the kill, everything acknowledged is there.
        let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
        let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
        let all = c.history_after(0).await.unwrap();
        let ids: Vec<String> = all
            .iter()
            .map(|m| m["messageId"].as_str().unwrap().to_string())
            .collect();
        for i in 0..acked {
            assert!(
                ids.binary_search(&format!("m{i:05}")).is_ok(),
                "round {round}: acknowledged m{i:05} is missing"
            );
        }
        let mut dedup = ids.clone();
        dedup.dedup();
        assert_eq!(
            dedup.len(),
            ids.len(),
            "round {round}: a message is doubled"
        );
        drop(c);
        d.signal("KILL");
    }
    // The upstream delivers the rest.
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    for i in acked..total {
        let (st, v) = post(&d, &inbound(&format!("m{i:05}"))).await;
        assert_eq!(st, 200, "{v}");
    }
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let all = c.history_after(0).await.unwrap();
    let ids: Vec<String> = all
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..total).map(|i| format!("m{i:05}")).collect();
    assert_eq!(ids, want, "every message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_message_once_across_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = daemon_in(dir.path(), port, "http://127.0.0.1:9/out");
    for i in 0..3 {
        post(&d, &inbound(&format!("t{i}"))).await;
    }
    let mut tail = std::process::Command::new(binary())
        .args(["tail", "--after", "1", "--url", &d.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next_id = |rx: &std::sync::mpsc::Receiver<String>| -> String {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("tail printed nothing");
        let v: Value = serde_json::from_str(&line).unwrap();
        v["messageId"].as_str().unwrap().to_string()
    };
    // History after seq 1, then live.
    assert_eq!(next_id(&rx), "t1");
    assert_eq!(next_id(&rx), "t2");
    post(&d, &inbound("t3")).await;
    assert_eq!(next_id(&rx), "t3");
    // Restart on the same port; messages arrive meanwhile.
    d.signal("KILL");
    drop(d);
    let d = daemon_in(dir.path(), port, "http://127.0.0.1:9/out");
    for i in 4..7 {
        post(&d, &inbound(&format!("t{i}"))).await;
    }
    for i in 4..7 {
        assert_eq!(next_id(&rx), format!("t{i}"));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "tail printed a message twice"
    );
    let _ = tail.kill();
    let _ = tail.wait();
}

#[tokio::test]
async fn a_file_that_is_not_a_database_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("switchboard.db"), vec![b'z'; 4096]).unwrap();
    let (code, log) = Daemon::builder()
        .with_plugins(dir.path(), &[], "")
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(log.contains("not a SQLite database"), "{log}");
    // Never recreated over.
    assert_eq!(
        std::fs::read(state.join("switchboard.db")).unwrap(),
        vec![b'z'; 4096]
    );
}

#[tokio::test]
async fn store_backup_copies_the_log_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    post(&d, &inbound("kept")).await;
    let copy = dir.path().join("copy.db");
    let out = std::process::Command::new(binary())
        .args(["store", "backup"])
        .arg(&copy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The log and its copy hold every message: their owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&copy), 0o600);
    assert_eq!(mode(&dir.path().join("state/switchboard.db")), 0o600);
    // The copy, as a state directory of its own, serves the history.
    let restored = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(restored.path().join("state")).unwrap();
    std::fs::copy(&copy, restored.path().join("state/switchboard.db")).unwrap();
    let d2 = daemon_in(restored.path(), 0, "http://127.0.0.1:9/out");
    let (mut c, _) = connect(&d2.url(), None, &["operator.read"]).await.unwrap();
    let all = c.history_after(0).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["messageId"], "kept");
    // An existing file is not overwritten.
    let out = std::process::Command::new(binary())
        .args(["store", "backup"])
        .arg(&copy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    drop(d);
}

/// The state directory on a small tmpfs that a filler file then fills:
/// deliveries are refused (503 to the webhook sender, who keeps the
/// message), `/ready` and `health` name the cause, and once space returns
/// everything is accepted, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_deliveries_and_recovers_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _unmount = Tmpfs::mount(&state, "16m");
    // The disk itself fills (no floor of free space kept).
    let d = daemon_with(
        dir.path(),
        0,
        "http://127.0.0.1:9/out",
        // `health` events only when something wakes the monitor.
        "[store]\nmin_free_mb = 0\n[gateway]\nhealth_check_interval_ms = 600000\n",
    );
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let mut posted = Vec::new();
    for i in 0..5 {
        let id = format!("d{i:03}");
        let (st, v) = post(&d, &inbound(&id)).await;
        assert_eq!(st, 200, "{v}");
        posted.push(id);
    }
    fill(&state.join("filler"));
    let mut refused_at = None;
    for i in 5..2000 {
        let id = format!("d{i:03}");
        let (st, v) = post(&d, &inbound(&id)).await;
        if st == 200 {
            posted.push(id);
            continue;
        }
        assert_eq!(st, 503, "{v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("not stored") && e.contains("disk is full"),
            "{v}"
        );
        refused_at = Some(i);
        break;
    }
    let refused_at = refused_at.expect("no delivery was refused on a full disk");
    let r = reqwest::get(d.http("/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let ready: Value = r.json().await.unwrap();
    let failing = ready["failing"].to_string();
    assert!(
        failing.contains("store:") && failing.contains("disk is full"),
        "{ready}"
    );
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let h = c.request("h", "health", json!({})).await.unwrap();
    let q = h["payload"]["deliveryQueues"]["failed"][0]["queueName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(q.starts_with("message-log: "), "{h}");
    // The failing writes woke the health monitor.
    health_event_listing(&mut watcher, "message-log: ", true).await;
    // Space returns: the sender retries from the refused message on.
    std::fs::remove_file(state.join("filler")).unwrap();
    for i in refused_at..refused_at + 5 {
        let id = format!("d{i:03}");
        let (st, v) = post(&d, &inbound(&id)).await;
        assert_eq!(st, 200, "{v}");
        posted.push(id);
    }
    let r = reqwest::get(d.http("/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(health_event_listing(&mut watcher, "message-log: ", false)
        .await
        .is_empty());
    let all = c.history_after(0).await.unwrap();
    let ids: Vec<String> = all
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, posted, "every accepted message once, in order");
    drop(c);
    drop(d);
}

/// `store.min_free_mb`: with less free space than that on the state
/// directory's disk, a webhook's messages are refused (503, the sender keeps
/// them) and a `send` is refused before its channel sends anything; `/ready`
/// and `health` name the cause. The disk never fills, and once it has room
/// again everything is taken, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_disk_floor_new_messages_are_refused_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _unmount = Tmpfs::mount(&state, "64m");
    let (url, hits) = outbound_server(Duration::ZERO, "m").await;
    let d = daemon_with(
        dir.path(),
        0,
        &url,
        "[store]\nmin_free_mb = 32\n[gateway]\nhealth_check_interval_ms = 600000\n",
    );
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let mut posted = Vec::new();
    for i in 0..3 {
        let id = format!("d{i}");
        let (st, v) = post(&d, &inbound(&id)).await;
        assert_eq!(st, 200, "{v}");
        posted.push(id);
    }
    // 40 of the 64 MiB taken: less than 32 left.
    std::fs::write(state.join("filler"), vec![1u8; 40 << 20]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (st, v) = post(&d, &inbound("d3")).await;
    assert_eq!(st, 503, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("MiB free, below store.min_free_mb = 32"), "{v}");
    let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let hi = json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "hi", "idempotencyKey": "k1"});
    let r = c.request("s", "send", hi.clone()).await.unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["error"]["retryAfterMs"], 5000, "{r}");
    assert_refused_saying(&r, "below store.min_free_mb");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing was sent");
    let r = reqwest::get(d.http("/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let ready: Value = r.json().await.unwrap();
    assert!(
        ready["failing"].to_string().contains("min_free_mb"),
        "{ready}"
    );
    let h = c.request("h", "health", json!({})).await.unwrap();
    let q = h["payload"]["deliveryQueues"]["failed"][0]["queueName"].to_string();
    assert!(q.contains("min_free_mb"), "{h}");
    // The refusal woke the health monitor.
    health_event_listing(&mut watcher, "message-log: ", true).await;
    // Room again: the sender's retry and the send go through.
    std::fs::remove_file(state.join("filler")).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (st, v) = post(&d, &inbound("d3")).await;
    assert_eq!(st, 200, "{v}");
    posted.push("d3".into());
    let r = c.request("s", "send", hi).await.unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let r = reqwest::get(d.http("/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let all = c.history_after(0).await.unwrap();
    let inbound_ids: Vec<String> = all
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inbound_ids, posted, "every accepted message once, in order");
    assert_eq!(all.len(), posted.len() + 1, "and the one sent");
    assert!(health_event_listing(&mut watcher, "message-log: ", false)
        .await
        .is_empty());
}

/// The message ids of the whole log, oldest first.
async fn history_ids(c: &mut Client) -> Vec<String> {
    c.history_after(0)
        .await
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// POSTs a message of `size` bytes of text to `channel`'s account `open`:
/// the status and the answer.
async fn post_sized(d: &Daemon, channel: &str, id: &str, size: usize) -> (u16, Value) {
    let body =
        json!({"chatId": "room", "senderId": "u1", "text": "t".repeat(size), "messageId": id});
    d.post_json(&format!("/hooks/{channel}/open"), &body)
        .await
        .unwrap()
}

/// Waits (5 s at most) for a `health` event whose failed delivery queues
/// list one starting with `prefix` (`listed`) or none; those queues' names.
async fn health_event_listing(watcher: &mut Client, prefix: &str, listed: bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = watcher.next_event("health", left).await.unwrap();
        let q: Vec<String> = e["payload"]["deliveryQueues"]["failed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|q| q["queueName"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if q.iter().any(|n| n.starts_with(prefix)) == listed {
            return q;
        }
    }
}

/// Near the disk's floor (within four times `store.min_free_mb`), the
/// channel holding most of the log is refused (its webhook gets 503 naming
/// it, the sender keeps the message) while another channel's messages are
/// still taken; with room again, both are, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_disk_floor_the_channel_holding_most_of_the_log_is_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _unmount = Tmpfs::mount(&state, "64m");
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "webhook.wasm")],
            // No periodic check within the test: `health` events come
            // only when something wakes the monitor.
            "[gateway]\nhealth_check_interval_ms = 600000\n\
             [store]\nmin_free_mb = 8\n[channels.webhook.accounts.open]\n\
             [channels.quiet]\nplugin = \"webhook\"\n[channels.quiet.accounts.open]\n",
        )
        .start()
        .unwrap();
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    for i in 0..4 {
        let (st, v) = post_sized(&d, "webhook", &format!("w{i}"), 200_000).await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, v) = post_sized(&d, "quiet", "q0", 100).await;
    assert_eq!(st, 200, "{v}");
    // 40 of the 64 MiB taken: between the floor (8) and four times it (32).
    std::fs::write(state.join("filler"), vec![1u8; 40 << 20]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The first message near the floor has the bytes per channel counted,
    // in steps between the log's writes; it is taken meanwhile.
    let (st, v) = post_sized(&d, "quiet", "q1", 100).await;
    assert_eq!(st, 200, "{v}");
    let line = d
        .wait_log("counted the bytes per channel", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", d.log_text()));
    assert!(line.contains("channels=2"), "{line}");
    let (st, v) = post_sized(&d, "webhook", "w4", 100).await;
    assert_eq!(st, 503, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("near store.min_free_mb")
            && e.contains("channel `webhook` holds 99% of the log"),
        "{v}"
    );
    let (st, v) = post_sized(&d, "quiet", "q2", 100).await;
    assert_eq!(st, 200, "the other channel keeps the room left: {v}");
    d.wait_log(
        "its new messages are refused so that the other channels",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // `health` names the refused channel (and only it) as a failed queue;
    // `/ready` stays ready: the other channels work.
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let failed = |h: Value| -> Vec<String> {
        h["payload"]["deliveryQueues"]["failed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|q| q["queueName"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let q = failed(c.request("h1", "health", json!({})).await.unwrap());
    assert!(
        q.len() == 1
            && q[0].starts_with("channel:webhook: ")
            && q[0].contains("holds 99% of the log"),
        "{q:?}"
    );
    // The refusal woke the health monitor: a `health` event says so.
    assert_eq!(
        health_event_listing(&mut watcher, "channel:webhook: ", true)
            .await
            .len(),
        1
    );
    assert_eq!(
        reqwest::get(d.http("/ready"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // Room again: the sender's retry is taken, and `health` lists nothing.
    std::fs::remove_file(state.join("filler")).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (st, v) = post_sized(&d, "webhook", "w4", 100).await;
    assert_eq!(st, 200, "{v}");
    let q = failed(c.request("h2", "health", json!({})).await.unwrap());
    assert!(q.is_empty(), "{q:?}");
    assert!(
        health_event_listing(&mut watcher, "channel:webhook: ", false)
            .await
            .is_empty()
    );
    let ids = history_ids(&mut c).await;
    assert_eq!(ids, ["w0", "w1", "w2", "w3", "q0", "q1", "q2", "w4"]);
}

/// `store.max_bytes` prunes the channel holding the most of the log first:
/// one channel delivering a lot evicts its own history, not a quiet
/// channel's older messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_bound_prunes_the_busiest_channel_not_the_oldest_messages() {
    let dir = tempfile::tempdir().unwrap();
    let start = |store: &str| {
        Daemon::builder()
            .with_plugins(
                dir.path(),
                &[("plugins", "webhook.wasm")],
                &format!(
                    "{store}[channels.webhook.accounts.open]\n\
                     [channels.quiet]\nplugin = \"webhook\"\n[channels.quiet.accounts.open]\n"
                ),
            )
            .start()
            .unwrap()
    };
    let d = start("");
    // The quiet channel's messages are the oldest; the busy one's take 3 MB.
    for i in 0..3 {
        let (st, v) = post_sized(&d, "quiet", &format!("q{i}"), 100).await;
        assert_eq!(st, 200, "{v}");
    }
    for i in 0..15 {
        let (st, v) = post_sized(&d, "webhook", &format!("w{i}"), 200_000).await;
        assert_eq!(st, 200, "{v}");
    }
    drop(d);
    // Over a bound of 1 MiB, the pruner at start takes the busy channel's.
    let d = start("[store]\nmax_bytes = 1048576\n");
    d.wait_log("pruned the message log", Duration::from_secs(20))
        .await
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let ids = history_ids(&mut c).await;
    assert_eq!(ids, ["q0", "q1", "q2"]);
    // The quiet channel goes on, under the bound.
    let (st, v) = post_sized(&d, "quiet", "q3", 100).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.history_after(0).await.unwrap().len(), 4);
}

/// The echo plugin numbers its messages with a counter in its key-value
/// store: a counter written in the earlier layout (one file per key) is
/// moved into the database and goes on from there, across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_files_of_the_earlier_layout_move_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("state/kv/channels/echo");
    std::fs::create_dir_all(&old).unwrap();
    let file = old.join(hex::encode("counter"));
    std::fs::write(&file, 41u64.to_le_bytes()).unwrap();
    let start = || {
        Daemon::builder()
            .with_plugins(
                dir.path(),
                &[("plugins", "echo.wasm")],
                "[channels.echo.accounts.default]\ninterval_secs = 0\n",
            )
            .start()
            .unwrap()
    };
    let d = start();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let r = c
        .request(
            "1",
            "send",
            json!({"to": "x", "message": "m", "idempotencyKey": "a"}),
        )
        .await
        .unwrap();
    assert_eq!(r["payload"]["messageId"], "echo-42", "{r}");
    assert!(!file.exists(), "the moved file is removed");
    drop(c);
    drop(d);
    let d = start();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let r = c
        .request(
            "2",
            "send",
            json!({"to": "x", "message": "m", "idempotencyKey": "b"}),
        )
        .await
        .unwrap();
    assert_eq!(r["payload"]["messageId"], "echo-43", "{r}");
}

/// Two `send`s with one key at once: the second waits for the first's
/// result instead of sending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_with_the_key_of_one_in_flight_waits_for_it() {
    let (url, hits) = outbound_server(Duration::from_millis(400), "slow").await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, &url);
    let params = json!({"channel": "webhook", "accountId": "out", "to": "x", "message": "m", "idempotencyKey": "same"});
    let one = async {
        let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
        c.request("1", "send", params.clone()).await.unwrap()
    };
    let two = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
        c.request("2", "send", params.clone()).await.unwrap()
    };
    let (a, b) = tokio::join!(one, two);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["payload"]["messageId"], "slow-1");
    assert_eq!(b["payload"], a["payload"], "{b}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// The daemon's threads now.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A burst of `messages.history` requests for pages of a megabyte, from
/// several connections at once, is answered in full, and never holds more
/// than a few threads (each page read holds one, with a reader connection
/// and the page): the rest wait their turn without a thread. Unbounded, the
/// burst took a blocking thread per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_history_pages_holds_a_few_threads() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    let text = "h".repeat(40 * 1024);
    for i in 0..24 {
        let body = json!({"chatId": "room", "senderId": "u1", "text": text, "messageId": format!("big{i}")});
        let (st, v) = post(&d, &body).await;
        assert_eq!(st, 200, "{v}");
    }
    let before = threads(d.pid());
    let (conns, each) = (16, 8);
    let mut all = Vec::new();
    for _ in 0..conns {
        let (c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
        all.push(c);
    }
    let peak = Arc::new(AtomicU64::new(before));
    let pid = d.pid();
    let watching = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(threads(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let runs = all.into_iter().map(|mut c| async move {
        for i in 0..each {
            c.send_request(&i.to_string(), "messages.history", json!({"afterSeq": 0}))
                .await
                .unwrap();
        }
        // Answers come in the order they are ready (events skipped).
        let mut answered = 0;
        while answered < each {
            let r = c.recv().await.unwrap();
            if r["type"] != "res" {
                continue;
            }
            answered += 1;
            assert_eq!(r["ok"], true, "{r:.300}");
            let n = r["payload"]["messages"].as_array().unwrap().len();
            assert_eq!(n, 24, "a page of {n} messages");
        }
    });
    futures_util::future::join_all(runs).await;
    watching.abort();
    let grown = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!("threads: {before} before, {grown} more at the peak");
    assert!(
        grown <= 8,
        "{} history requests took {grown} more threads",
        conns * each
    );
}

/// Every field a plugin delivers is bounded before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_field_is_refused_by_name_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_in(dir.path(), 0, "http://127.0.0.1:9/out");
    let body =
        json!({"chatId": "c".repeat(2000), "senderId": "u", "text": "t", "messageId": "big"});
    let (st, v) = post(&d, &body).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`chatId` is 2000 bytes"),
        "{v}"
    );
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    assert!(c.history_after(0).await.unwrap().is_empty());
}

/// An echo daemon with its state in `dir` (echo's `act` delivers a line
/// saying what it did, so the log counts the actions made).
fn echo_daemon(dir: &Path) -> Daemon {
    Daemon::builder()
        .with_plugins(
            dir,
            &[("plugins", "echo.wasm")],
            "[channels.echo.accounts.default]\ninterval_secs = 0\n",
        )
        .start()
        .unwrap()
}

async fn count_text(c: &mut Client, text: &str) -> usize {
    c.history_after(0)
        .await
        .unwrap()
        .iter()
        .filter(|m| m["text"] == text)
        .count()
}

/// `message.action`'s react, edit and delete are keyed as `send` is: a
/// retry of a key whose action was made (at once, after it, after a
/// SIGKILL and restart) gets the first answer and acts no more; a key
/// first used for another action is refused by name and acts not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_is_made_once_per_idempotency_key_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = echo_daemon(dir.path());
    let scopes = ["operator.write", "operator.read"];
    let (mut c, _) = connect(&d.url(), None, &scopes).await.unwrap();
    let edit = json!({"channel": "echo", "action": "edit", "idempotencyKey": "e-1",
        "params": {"target": "room", "messageId": "7", "message": "fixed"}});
    // Two at once, then a third after them.
    c.send_request("a", "message.action", edit.clone())
        .await
        .unwrap();
    c.send_request("b", "message.action", edit.clone())
        .await
        .unwrap();
    // Answered in either order.
    let mut answered = 0;
    while answered < 2 {
        let r = c.recv().await.unwrap();
        if r["type"] == "res" {
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["payload"]["action"], "edit", "{r}");
            answered += 1;
        }
    }
    let r = c
        .request("c", "message.action", edit.clone())
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        count_text(&mut c, "edit fixed on 7").await,
        1,
        "edited twice"
    );

    d.signal("KILL");
    drop((c, d));
    let d = echo_daemon(dir.path());
    let (mut c, _) = connect(&d.url(), None, &scopes).await.unwrap();
    let r = c.request("d", "message.action", edit).await.unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        count_text(&mut c, "edit fixed on 7").await,
        1,
        "edited again after the restart"
    );
    // The key of the edit, reused for a delete.
    let delete = |key: &str| {
        json!({"channel": "echo", "action": "delete", "idempotencyKey": key,
            "params": {"target": "room", "messageId": "7"}})
    };
    let r = c
        .request("e", "message.action", delete("e-1"))
        .await
        .unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        r["error"]["details"]["code"], "IDEMPOTENCY_KEY_REUSED",
        "{r}"
    );
    let m = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("`message.action:e-1`") && m.contains("edit") && m.contains("delete"),
        "{m}"
    );
    assert_eq!(count_text(&mut c, "delete on 7").await, 0);
    let r = c
        .request("f", "message.action", delete("d-1"))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(count_text(&mut c, "delete on 7").await, 1);
    // A key is an identifier, bounded: one of 513 bytes is refused by name
    // and nothing is done.
    let long = "k".repeat(513);
    let r = c
        .request("g", "message.action", delete(&long))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    let m = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("idempotencyKey is 513 bytes long; at most 512"),
        "{m}"
    );
    let r = c
        .request(
            "h",
            "send",
            json!({"channel": "echo", "to": "room", "message": "long key", "idempotencyKey": long}),
        )
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    assert_eq!(count_text(&mut c, "delete on 7").await, 1);
    assert_eq!(count_text(&mut c, "long key").await, 0);
}
