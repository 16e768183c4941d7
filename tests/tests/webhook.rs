//! The webhook channel (plugins/webhook) in the real daemon: signed inbound
//! POSTs, rejections with their reasons, and `send` to a local HTTP server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use switchboard_tests::*;

const SECRET: &str = "s3cret";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn daemon(dir: &std::path::Path, extra: &str) -> Daemon {
    std::fs::copy(
        built_plugin("plugins", "webhook.wasm"),
        dir.join("webhook.wasm"),
    )
    .unwrap();
    Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n{extra}\n\
             [channels.webhook.accounts.default]\nsecret = \"{SECRET}\"\n\
             [channels.webhook.accounts.open]\n",
            dir.join("state").display(),
            dir.display()
        ))
        .start()
        .unwrap()
}

async fn post(d: &Daemon, account: &str, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(d.http(&format!("/hooks/webhook/{account}")))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn signed_posts_are_accepted_and_bad_ones_rejected_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "");
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let body = r#"{"chatId":"room-1","senderId":"u-7","senderName":"Ann","text":"signed hello","messageId":"m-1"}"#;
    let good = |b: &str| {
        vec![
            ("X-Switchboard-Signature", sign(b.as_bytes())),
            ("X-Switchboard-Timestamp", now().to_string()),
        ]
    };
    let (st, v) = post(&d, "default", body, &good(body)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["accepted"], true);
    assert_eq!(v["messageId"], "m-1");
    let m = watcher.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["text"], "signed hello");
    assert_eq!(m["chatId"], "room-1");
    assert_eq!(m["senderId"], "u-7");
    assert_eq!(m["senderName"], "Ann");
    assert_eq!(m["channel"], "webhook");
    assert_eq!(m["messageSeq"], v["messageSeq"]);

    // Wrong signature (signed with another body).
    let (st, v) = post(
        &d,
        "default",
        body,
        &[
            ("X-Switchboard-Signature", sign(b"other body")),
            ("X-Switchboard-Timestamp", now().to_string()),
        ],
    )
    .await;
    assert_eq!((st, v["error"].as_str().unwrap()), (401, "bad signature"));
    // Stale timestamp.
    let (st, v) = post(
        &d,
        "default",
        body,
        &[
            ("X-Switchboard-Signature", sign(body.as_bytes())),
            ("X-Switchboard-Timestamp", (now() - 600).to_string()),
        ],
    )
    .await;
    assert_eq!(st, 401);
    assert!(
        v["error"].as_str().unwrap().starts_with("stale timestamp"),
        "{v}"
    );
    // No signature at all.
    let (st, v) = post(
        &d,
        "default",
        body,
        &[("X-Switchboard-Timestamp", now().to_string())],
    )
    .await;
    assert_eq!(st, 401);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("missing x-switchboard-signature"),
        "{v}"
    );
    // Signed but malformed JSON.
    let bad = r#"{"chatId": 5"#;
    let (st, v) = post(&d, "default", bad, &good(bad)).await;
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("body must be JSON"),
        "{v}"
    );
    // None of the rejected requests produced a message event.
    assert!(watcher
        .next_event("message", Duration::from_millis(300))
        .await
        .is_err());
    // An account without a secret takes unsigned requests.
    let (st, v) = post(
        &d,
        "open",
        r#"{"chatId":"c","senderId":"s","text":"open"}"#,
        &[],
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

/// One request the test server received.
type Received = (HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Received>>>);

async fn server(seen: Seen) -> u16 {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/in",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    seen.0.lock().unwrap().push((headers, body.to_vec()));
                    axum::Json(json!({"messageId": "srv-1"}))
                }
            }),
        )
        .route(
            "/fail",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_posts_a_signed_request_to_the_account_url() {
    let seen = Seen::default();
    let port = server(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        built_plugin("plugins", "webhook.wasm"),
        dir.path().join("webhook.wasm"),
    )
    .unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n\
             [channels.webhook]\nnetwork = [\"127.0.0.1:{port}\"]\n\
             [channels.webhook.accounts.default]\nurl = \"http://127.0.0.1:{port}/in\"\nsecret = \"{SECRET}\"\n\
             [channels.webhook.accounts.failing]\nurl = \"http://127.0.0.1:{port}/fail\"\n",
            dir.path().join("state").display(),
            dir.path().display()
        ))
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let r = c
        .request("s", "send", json!({"to": "user-5", "message": "out we go", "idempotencyKey": "w1", "threadId": "t-1"}))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    assert_eq!(r["payload"]["messageId"], "srv-1");
    let (headers, body) = seen
        .0
        .lock()
        .unwrap()
        .pop()
        .expect("the server got the request");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"accountId": "default", "to": "user-5", "text": "out we go", "threadId": "t-1"})
    );
    assert_eq!(
        headers["x-switchboard-signature"].to_str().unwrap(),
        sign(&body)
    );
    let ts: u64 = headers["x-switchboard-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(now().abs_diff(ts) < 60);
    // A non-2xx answer is a clear error.
    let r = c
        .request(
            "f",
            "send",
            json!({"to": "x", "message": "m", "idempotencyKey": "w2", "accountId": "failing"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], false);
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("HTTP 500") && msg.contains("boom"), "{msg}");
}
