//! Presence is bounded the way OpenClaw bounds it: 300 instances connect and
//! the list holds 200 of them (plus the gateway), the least recently
//! refreshed go first, silent entries expire, and several sockets of one
//! instance are one entry.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;

/// Entries expire this long after their last refresh; active sockets
/// refresh every fifth of it.
const TTL_MS: u64 = 8_000;

async fn open(url: &str, instance: &str) -> Client {
    let mut p = connect_params(None, &["operator.read"]);
    p["client"]["instanceId"] = json!(instance);
    connect_with(url, p).await.unwrap().0
}

async fn listed(c: &mut Client) -> Vec<Value> {
    let res = c.request("p", "system-presence", json!({})).await.unwrap();
    res["payload"].as_array().unwrap().clone()
}

fn instances(list: &[Value]) -> Vec<String> {
    list.iter()
        .skip(1)
        .map(|e| e["instanceId"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_bounded_keyed_and_expires() {
    let d = Daemon::builder()
        .config(&format!("[gateway.presence]\nttl_ms = {TTL_MS}\n"))
        .start()
        .unwrap();
    let url = d.url();
    let mut socks = Vec::new();
    for i in 0..300 {
        socks.push(open(&url, &format!("i-{i:03}")).await);
    }
    // 200 entries plus the gateway: the 100 connected first are gone, the
    // newest is listed first.
    let list = listed(&mut socks[299]).await;
    assert_eq!(list.len(), 201, "{}", list.len());
    assert_eq!(list[0]["mode"], "gateway");
    let got = instances(&list);
    let want: Vec<String> = (100..300).rev().map(|i| format!("i-{i:03}")).collect();
    assert_eq!(got, want);
    assert!(list.iter().all(|e| e.to_string().len() < 2048));

    // Two more sockets of i-299 are the same entry, and it stays while any
    // of its sockets is open.
    let extra = vec![open(&url, "I-299").await, open(&url, "i-299").await];
    let list = listed(&mut socks[298]).await;
    assert_eq!(list.len(), 201);
    assert_eq!(
        instances(&list)
            .iter()
            .filter(|i| i.eq_ignore_ascii_case("i-299"))
            .count(),
        1
    );
    drop(extra);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(instances(&listed(&mut socks[298]).await).contains(&"i-299".to_string()));

    // i-100 is active after the refresh interval: it moves to the front, and
    // the next newcomer evicts i-101 (now the least recently refreshed).
    tokio::time::sleep(Duration::from_millis(TTL_MS / 5 + 100)).await;
    let list = listed(&mut socks[100]).await;
    assert_eq!(instances(&list)[0], "i-100", "a refresh moves it first");
    let _newcomer = open(&url, "newcomer").await;
    let got: HashSet<String> = instances(&listed(&mut socks[100]).await)
        .into_iter()
        .collect();
    assert!(got.contains("i-100") && got.contains("newcomer"));
    assert!(!got.contains("i-101"), "i-101 should have been evicted");
    assert_eq!(got.len(), 200);

    // A socket that closes takes its entry with it.
    socks.pop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!instances(&listed(&mut socks[100]).await).contains(&"i-299".to_string()));

    // Silent entries expire; an active one (i-100, asking every second)
    // stays, and the others get a `presence` event without them.
    let (mut watcher, _) = connect(&url, None, &["operator.read"]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(TTL_MS * 2);
    loop {
        let list = listed(&mut socks[100]).await;
        if list.len() == 2 {
            assert_eq!(instances(&list), ["i-100"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "silent entries never expired: {} listed",
            list.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut saw_short_list = false;
    while let Ok(ev) = watcher
        .next_event("presence", Duration::from_millis(2_000))
        .await
    {
        if ev["payload"]["presence"].as_array().unwrap().len() <= 3 {
            saw_short_list = true;
            break;
        }
    }
    assert!(saw_short_list, "no presence event announced the expiry");
    // An expired instance that is active again comes back.
    let list = listed(&mut socks[150]).await;
    assert!(instances(&list).contains(&"i-150".to_string()));
}
