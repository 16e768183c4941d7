//! Broadcasting: filters by role and scope, presence (coalesced) and tick
//! events, and a slow consumer closed with 1008 while 1000 others receive
//! every event.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;

const TOKEN: &str = "bt";

fn seqs_contiguous(seqs: &[u64]) -> bool {
    seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1)
}

#[tokio::test]
async fn presence_on_connect_and_disconnect() {
    let d = Daemon::builder()
        .config(&format!("[gateway.auth]\ntoken = \"{TOKEN}\"\n"))
        .start()
        .unwrap();
    let (mut watcher, hello) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    let v0 = hello["snapshot"]["stateVersion"]["presence"]
        .as_u64()
        .unwrap();
    let mut p = connect_params(Some(TOKEN), &["operator.read"]);
    p["client"]["instanceId"] = json!("visitor-1");
    p["client"]["displayName"] = json!("visitor");
    let (visitor, _) = connect_with(&d.url(), p).await.unwrap();
    // Presence events carry the whole list; a burst of changes is coalesced,
    // so wait for the list that shows the visitor.
    let has_visitor = |ev: &Value| {
        ev["payload"]["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["instanceId"] == "visitor-1")
    };
    let mut seq = 0;
    let ev = loop {
        let ev = watcher
            .next_event("presence", Duration::from_secs(5))
            .await
            .unwrap();
        seq += 1;
        assert_eq!(ev["seq"], seq, "events arrive with contiguous seqs");
        if has_visitor(&ev) {
            break ev;
        }
    };
    let list = ev["payload"]["presence"].as_array().unwrap();
    let entry = list
        .iter()
        .find(|e| e["instanceId"] == "visitor-1")
        .expect("visitor in presence");
    assert_eq!(entry["host"], "visitor");
    assert_eq!(entry["mode"], "cli");
    assert_eq!(entry["roles"], json!(["operator"]));
    let v1 = ev["stateVersion"]["presence"].as_u64().unwrap();
    assert!(v1 > v0);
    drop(visitor);
    let ev = watcher
        .next_event("presence", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!has_visitor(&ev), "{ev}");
    assert_eq!(ev["seq"], seq + 1);
    assert!(ev["stateVersion"]["presence"].as_u64().unwrap() > v1);
    // system-presence agrees.
    let res = watcher
        .request("sp", "system-presence", json!({}))
        .await
        .unwrap();
    assert_eq!(res["payload"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn ticks_arrive_with_rising_seq() {
    let d = Daemon::builder()
        .config("[gateway]\ntick_interval_ms = 100\n")
        .start()
        .unwrap();
    let (mut c, hello) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    assert_eq!(hello["policy"]["tickIntervalMs"], 100);
    let mut last_ts = 0;
    let mut last_seq = 0;
    for _ in 0..4 {
        let ev = c.next_event("tick", Duration::from_secs(2)).await.unwrap();
        let ts = ev["payload"]["ts"].as_u64().unwrap();
        let seq = ev["seq"].as_u64().unwrap();
        assert!(ts > last_ts);
        assert!(seq > last_seq);
        last_ts = ts;
        last_seq = seq;
    }
}

#[tokio::test]
async fn filters_by_role_and_scope() {
    let d = Daemon::builder()
        .config(&format!(
            "[gateway]\ntick_interval_ms = 150\n[gateway.auth]\ntoken = \"{TOKEN}\"\n\
             [[gateway.auth.tokens]]\nname = \"node\"\ntoken = \"node-token\"\nroles = [\"node\"]\nscopes = [\"operator.read\"]\n"
        ))
        .start()
        .unwrap();
    let mut np = connect_params(Some("node-token"), &["operator.read"]);
    np["role"] = json!("node");
    np["client"]["mode"] = json!("node");
    let (mut node, hello) = connect_with(&d.url(), np).await.unwrap();
    assert_eq!(hello["auth"]["role"], "node");
    let (mut blind, _) = connect(&d.url(), Some(TOKEN), &[]).await.unwrap();
    let (mut reader, _) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    // Trigger presence events.
    let (other, _) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    drop(other);
    reader
        .next_event("presence", Duration::from_secs(5))
        .await
        .unwrap();
    // Until two ticks have passed, the node (read scope, wrong role) and the
    // scope-less operator must see only ticks.
    for (name, c) in [("node", &mut node), ("blind", &mut blind)] {
        let mut ticks = 0;
        while ticks < 2 {
            let v = c.recv_timeout(Duration::from_secs(3)).await.unwrap();
            assert_eq!(v["event"], "tick", "{name} got {v}");
            ticks += 1;
        }
    }
}

/// Reads events until the presence list shows the marker client; returns
/// the seqs and the texts of the message events.
async fn watch(mut c: Client) -> anyhow::Result<(Vec<u64>, Vec<String>, Client)> {
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    loop {
        let v: Value = c.recv_timeout(Duration::from_secs(30)).await?;
        if v["type"] != "event" {
            continue;
        }
        seqs.push(v["seq"].as_u64().unwrap_or(0));
        if v["event"] == "message" {
            texts.push(v["payload"]["text"].as_str().unwrap_or("").to_string());
        }
        if v["event"] == "presence"
            && v["payload"]["presence"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["host"] == "final-marker"))
        {
            return Ok((seqs, texts, c));
        }
    }
}

/// Watchers that must each get every event.
const WATCHERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_while_1000_others_get_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "echo.wasm")],
            &format!(
                "[gateway.auth]\ntoken = \"{TOKEN}\"\n\
                 [gateway.limits]\nsend_queue_frames = 256\nsocket_send_buffer_bytes = 8192\n\
                 [channels.echo.accounts.default]\ninterval_secs = 0\n"
            ),
        )
        .start()
        .unwrap();
    let mut stuck = stuck_client(&d, Some(TOKEN)).await;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        // One instance, so one presence entry: presence events stay small.
        let mut p = connect_params(Some(TOKEN), &["operator.read"]);
        p["client"]["instanceId"] = json!("watchers");
        let (c, _) = connect_with(&d.url(), p).await.unwrap();
        watchers.push(tokio::spawn(watch(c)));
    }
    // Messages through the echo channel's webhook, each broadcast to all.
    let http = reqwest::Client::new();
    let filler = "x".repeat(200);
    let mut posted = Vec::new();
    let mut closed = false;
    for i in 0..3000 {
        let text = format!("m{i} {filler}");
        let r = http
            .post(d.http("/hooks/echo/default"))
            .json(&json!({"chatId": "load", "text": text}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        posted.push(text);
        if d.metric("switchboard_slow_consumer_closes_total")
            .await
            .unwrap()
            > 0
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the stuck client was never closed");
    eprintln!("stuck client closed after {} posts", posted.len());
    // Read what the stuck client was sent: contiguous seqs, then 1008.
    let (close, frames) = stuck.expect_close(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        close,
        Closed {
            code: 1008,
            reason: "slow consumer".into()
        }
    );
    let stuck_seqs: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs_contiguous(&stuck_seqs), "{stuck_seqs:?}");
    // A last event everybody must see.
    let mut p = connect_params(Some(TOKEN), &["operator.read"]);
    p["client"]["displayName"] = json!("final-marker");
    let (_marker, _) = connect_with(&d.url(), p).await.unwrap();
    let mut open = Vec::new();
    for w in watchers {
        let (seqs, texts, c) = w.await.unwrap().expect("watcher kept receiving");
        assert!(seqs_contiguous(&seqs), "gap in {seqs:?}");
        assert!(
            texts == posted,
            "a watcher missed messages: got {} of {}",
            texts.len(),
            posted.len()
        );
        open.push(c); // still connected: closing now would make more events
    }
    // Exactly one slow consumer: none of the others was dropped.
    assert_eq!(
        d.metric("switchboard_slow_consumer_closes_total")
            .await
            .unwrap(),
        1
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_is_coalesced_into_few_presence_events() {
    let d = Daemon::builder().start().unwrap();
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    // Let the watcher's own arrival go out first.
    watcher
        .next_event("presence", Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut held = Vec::new();
    for i in 0..40 {
        let mut p = connect_params(None, &["operator.read"]);
        p["client"]["instanceId"] = json!(format!("burst-{i}"));
        held.push(connect_with(&d.url(), p).await.unwrap().0);
    }
    // Events until the list shows all 41 clients: few of them, nothing lost.
    let mut events = 0;
    loop {
        let ev = watcher
            .next_event("presence", Duration::from_secs(5))
            .await
            .unwrap();
        events += 1;
        let n = ev["payload"]["presence"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["instanceId"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("burst-"))
            })
            .count();
        if n == 40 {
            break;
        }
    }
    assert!(
        events <= 10,
        "{events} presence events for a burst of 40 connects"
    );
}
