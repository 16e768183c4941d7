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

/// `v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`, as senders sign.
fn sign(ts: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The headers of a request signed now.
fn signed(body: &str) -> Vec<(&'static str, String)> {
    let ts = now();
    vec![
        ("X-Switchboard-Signature", sign(ts, body.as_bytes())),
        ("X-Switchboard-Timestamp", ts.to_string()),
    ]
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn daemon(dir: &std::path::Path, extra: &str) -> Daemon {
    Daemon::builder()
        .with_plugins(
            dir,
            &[("plugins", "webhook.wasm")],
            &format!(
                "{extra}\n[channels.webhook.accounts.default]\nsecret = \"{SECRET}\"\n\
                 [channels.webhook.accounts.open]\n"
            ),
        )
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
    let (st, v) = post(&d, "default", body, &signed(body)).await;
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
            ("X-Switchboard-Signature", sign(now(), b"other body")),
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
            (
                "X-Switchboard-Signature",
                sign(now() - 600, body.as_bytes()),
            ),
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
    let (st, v) = post(&d, "default", bad, &signed(bad)).await;
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
        )
        // 9 MiB answers: one declared, one streamed without a length.
        .route("/huge", post(|| async { vec![b'x'; 9 << 20] }))
        .route(
            "/huge-stream",
            post(|| async {
                let chunks = (0..9)
                    .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1 << 20])));
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

#[tokio::test]
async fn inbound_attachments_reach_operators() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "");
    let (mut w, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let body = json!({"chatId": "c", "senderId": "s", "text": "see file", "attachments": [
        {"kind": "document", "mimeType": "application/pdf", "fileName": "a.pdf", "size": 12, "url": "https://files.example/a.pdf"}
    ]})
    .to_string();
    let (status, v) = post(&d, "open", &body, &[]).await;
    assert_eq!(status, 200, "{v}");
    let m = w
        .message_with_text("see file", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        m["attachments"],
        json!([{"kind": "document", "mimeType": "application/pdf", "fileName": "a.pdf", "size": 12, "url": "https://files.example/a.pdf"}])
    );
    // A kind it does not know is refused, naming the choices.
    let bad =
        json!({"chatId": "c", "senderId": "s", "text": "x", "attachments": [{"kind": "hologram"}]})
            .to_string();
    let (status, v) = post(&d, "open", &bad, &[]).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("hologram"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_posts_a_signed_request_to_the_account_url() {
    let seen = Seen::default();
    let port = server(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "webhook.wasm")],
            &format!(
                "[channels.webhook]\nnetwork = [\"127.0.0.1:{port}\"]\n\
                 [channels.webhook.accounts.default]\nurl = \"http://127.0.0.1:{port}/in\"\nsecret = \"{SECRET}\"\n\
                 [channels.webhook.accounts.failing]\nurl = \"http://127.0.0.1:{port}/fail\"\n\
                 [channels.webhook.accounts.huge]\nurl = \"http://127.0.0.1:{port}/huge\"\n\
                 [channels.webhook.accounts.huge-stream]\nurl = \"http://127.0.0.1:{port}/huge-stream\"\n"
            ),
        )
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    // An answer larger than the SDK reads is a clear error, not an
    // instance out of memory: refused by its declared length, or at the
    // bound while it streams in.
    for (account, says) in [
        (
            "huge",
            "the answer has 9437184 bytes; send_text reads at most 8388608",
        ),
        ("huge-stream", "the answer has more than 8388608 bytes"),
    ] {
        let r = c
            .request(
                account,
                "send",
                json!({"to": "x", "message": "m", "idempotencyKey": account, "accountId": account}),
            )
            .await
            .unwrap();
        assert_refused_saying(&r, says);
    }
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
    let ts: u64 = headers["x-switchboard-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(now().abs_diff(ts) < 60);
    assert_eq!(
        headers["x-switchboard-signature"].to_str().unwrap(),
        sign(ts, &body)
    );
    // Attachments ride in the JSON: a URL as is, bytes as base64.
    let r = c
        .request(
            "a",
            "send",
            json!({"to": "user-5", "message": "files", "idempotencyKey": "w3",
            "mediaUrl": "https://files.example/a.png", "buffer": "aGk=", "filename": "hi.txt"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let (_, body) = seen.0.lock().unwrap().pop().unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["attachments"],
        json!([{"kind": "image", "url": "https://files.example/a.png"},
               {"kind": "document", "fileName": "hi.txt", "base64": "aGk="}])
    );
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

/// The same outbound path against the test kit's scriptable HTTP fake (what
/// a plugin author's own tests use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_against_the_testkit_http_fake() {
    let fake = switchboard_testkit::HttpFake::start().await.unwrap();
    fake.on("POST", "/in", 200, json!({"id": "fake-7"})).on(
        "POST",
        "/busy",
        503,
        json!({"error": "later"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "webhook.wasm")],
            &format!(
                "[channels.webhook]\nnetwork = [\"127.0.0.1:{p}\"]\n\
                 [channels.webhook.accounts.default]\nurl = \"{u}/in\"\n\
                 [channels.webhook.accounts.busy]\nurl = \"{u}/busy\"\n",
                p = fake.port,
                u = fake.url()
            ),
        )
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let r = c
        .send_message("webhook", "user-9", "via the fake")
        .await
        .unwrap();
    assert_eq!(r["payload"]["messageId"], "fake-7", "{r}");
    let got = fake.wait_requests(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].path, "/in");
    assert_eq!(
        got[0].json(),
        json!({"accountId": "default", "to": "user-9", "text": "via the fake"})
    );
    let r = c
        .request(
            "b",
            "send",
            json!({"accountId": "busy", "to": "x", "message": "m", "idempotencyKey": "b1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["error"]["retryAfterMs"], 1000, "a 503 is temporary");
}

/// A captured request cannot be delivered again: not as it was, not with a
/// fresh timestamp (the timestamp is signed), not after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_request_is_not_accepted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), "");
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let body = r#"{"chatId":"c","senderId":"s","text":"only once","messageId":"once-1"}"#;
    let captured = signed(body);
    let (st, v) = post(&d, "default", body, &captured).await;
    assert_eq!(st, 200, "{v}");
    let first_seq = v["messageSeq"].clone();
    let m = watcher.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["text"], "only once");
    // The same request again.
    let (st, v) = post(&d, "default", body, &captured).await;
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("replayed"), "{v}");
    // The captured signature with a fresh timestamp, now ± 250 s.
    for ts in [now(), now() + 250, now() - 250] {
        let h = vec![
            ("X-Switchboard-Signature", captured[0].1.clone()),
            ("X-Switchboard-Timestamp", ts.to_string()),
        ];
        let (st, v) = post(&d, "default", body, &h).await;
        assert!(st == 401 || st == 409, "{ts}: {st} {v}");
        if ts != captured[1].1.parse::<u64>().unwrap() {
            assert_eq!((st, v["error"].as_str().unwrap()), (401, "bad signature"));
        }
    }
    // The old body-only form is refused with a pointer to the new one.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let old = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (st, v) = post(
        &d,
        "default",
        body,
        &[
            ("X-Switchboard-Signature", old),
            ("X-Switchboard-Timestamp", now().to_string()),
        ],
    )
    .await;
    assert_eq!(st, 401);
    assert!(v["error"].as_str().unwrap().contains("v1="), "{v}");
    // Remembered across a restart.
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15)).unwrap();
    drop(d);
    let d = daemon(dir.path(), "");
    let (mut watcher, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let (st, v) = post(&d, "default", body, &captured).await;
    assert_eq!(st, 409, "{v}");
    // The same message signed anew is accepted, as a redelivery: the log
    // has it already, so it keeps its number and makes no second event.
    let (st, v) = post(&d, "default", body, &signed(body)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["messageSeq"], first_seq, "{v}");
    // A new message signed now goes through, exactly once.
    let body2 = r#"{"chatId":"c","senderId":"s","text":"a new one","messageId":"once-2"}"#;
    let (st, v) = post(&d, "default", body2, &signed(body2)).await;
    assert_eq!(st, 200, "{v}");
    let m = watcher.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["text"], "a new one");
    assert!(watcher
        .next_event("message", Duration::from_millis(300))
        .await
        .is_err());
}

/// Webhook bodies have their own small limit (per channel), checked on the
/// declared length before anything is read, and on the bytes that arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bodies_are_limited_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "");
    let big = format!(
        r#"{{"chatId":"c","senderId":"s","text":"{}"}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    // A declared length over the limit is refused before a byte of the
    // body is read: the headers alone get the answer. (A client still
    // writing the body when the connection closes may see a reset instead.)
    let (st, v) = declared_only(&d, big.len()).await;
    assert_eq!(st, 413, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("1048576") && e.contains("channels.webhook.webhook_max_body_bytes"),
        "{e}"
    );
    // Chunked (no declared length): cut at the limit as the bytes come.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let r = reqwest::Client::new()
        .post(d.http("/hooks/webhook/open"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    drop(d);
    // A channel may raise its own limit.
    let d = daemon(
        dir.path(),
        "[channels.webhook]\nwebhook_max_body_bytes = 4194304\n",
    );
    let (st, v) = post(&d, "open", &big, &[]).await;
    assert_eq!(st, 200, "{v}");
}

/// Sends only the headers of a POST declaring `len` bytes of body, and
/// reads the answer: its status and JSON body.
async fn declared_only(d: &Daemon, len: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /hooks/webhook/open HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Unauthenticated 24 MiB POSTs (16 at once, four rounds) are refused before
/// their bodies are read: the daemon's memory does not balloon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_unsigned_posts_costs_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "");
    // Warm up: one accepted request loads everything a request touches.
    let ok = r#"{"chatId":"c","senderId":"s","text":"warm"}"#;
    assert_eq!(post(&d, "default", ok, &signed(ok)).await.0, 200);
    let before = d.rss_kib();
    let body = bytes::Bytes::from(vec![b'x'; 24 * 1024 * 1024]);
    for _ in 0..4 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let url = d.http("/hooks/webhook/default");
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .header("X-Switchboard-Signature", "v1=00")
                    .header("X-Switchboard-Timestamp", now().to_string())
                    .body(body)
                    .send()
                    .await;
                // The daemon answers before the body is sent and closes:
                // the client may see the 413 or a reset while writing.
                if let Ok(r) = r {
                    assert_eq!(r.status().as_u16(), 413);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = d.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// A plugin's key-value writes are answered before they are on the disk,
/// but a call's result is not: a signed request with a bad body is
/// claimed and unclaimed (no message follows to carry them to the disk),
/// so the log fsyncs them itself before the 400 goes out. An accepted
/// request costs no such fsync: its message's commit carries its claim.
///
/// A call slower than the log's 50 ms settle timer (a loaded machine) may
/// have its claim fsynced by the timer instead, before the call ends: the
/// timer's fsyncs are counted apart, and only the sum is bounded below.
#[tokio::test]
async fn a_call_s_key_value_writes_are_on_disk_before_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "");
    let asked = "switchboard_store_settles_total{reason=\"asked\"}";
    let timer = "switchboard_store_settles_total{reason=\"timer\"}";
    let both = || async { d.metric(asked).await.unwrap() + d.metric(timer).await.unwrap() };
    let before = both().await;
    let (st, v) = post(&d, "default", "not json", &signed("not json")).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        both().await > before,
        "the 400 went out before the call's claim was fsynced"
    );
    let asked_before = d.metric(asked).await.unwrap();
    let body = r#"{"chatId":"c","senderId":"s","text":"carried","messageId":"carried-1"}"#;
    let (st, v) = post(&d, "default", body, &signed(body)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        d.metric(asked).await.unwrap(),
        asked_before,
        "an accepted request's claim needed an fsync of its own"
    );
}

/// A web page can POST to the gateway without asking (a form, `fetch` in
/// `no-cors` mode): a webhook with a browser's `Origin` not allowed (or a
/// cross-site `Sec-Fetch-Site` with none) is refused `403` before its
/// plugin is called, so a page cannot put messages into a channel whose
/// webhook needs no secret. Servers (no `Origin`), loopback pages and
/// origins in `gateway.allowed_origins` post as before.
#[tokio::test]
async fn webhooks_from_web_pages_are_refused_unless_their_origin_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(
        dir.path(),
        "[gateway]\nallowed_origins = [\"https://dash.example\"]\n",
    );
    let body = |id: &str| {
        json!({"chatId": "room", "senderId": "u1", "text": "hi", "messageId": id}).to_string()
    };
    let refused: &[(&str, &[(&str, &str)])] = &[
        ("evil", &[("origin", "http://evil.example")]),
        // A page re-pointed at 127.0.0.1 keeps its own name as its origin.
        ("rebound", &[("origin", "http://evil.example:18789")]),
        ("sandboxed", &[("origin", "null")]),
        ("no-origin", &[("sec-fetch-site", "cross-site")]),
    ];
    for (id, headers) in refused {
        let headers: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let (st, v) = post(&d, "open", &body(id), &headers).await;
        assert_eq!(st, 403, "{id}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains("not taken from web pages"), "{id}: {e}");
        assert!(e.contains("gateway.allowed_origins"), "{id}: {e}");
    }
    let taken: &[(&str, &[(&str, &str)])] = &[
        ("server", &[]),
        ("local-page", &[("origin", "http://localhost:5173")]),
        (
            "allowed",
            &[
                ("origin", "https://dash.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
    ];
    for (id, headers) in taken {
        let headers: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let (st, v) = post(&d, "open", &body(id), &headers).await;
        assert_eq!(st, 200, "{id}: {v}");
    }
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let ids = op.logged_ids().await.unwrap();
    assert_eq!(ids, ["server", "local-page", "allowed"]);
    assert_eq!(
        d.metric("switchboard_origin_rejections_total")
            .await
            .unwrap(),
        4
    );
    d.wait_log("refused webhook", Duration::from_secs(5))
        .await
        .unwrap();
}
