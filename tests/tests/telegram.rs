//! The Telegram channel (plugins/telegram) in the real daemon, against a fake
//! Bot API that behaves like the real one where it matters: `/bot<token>/<method>`
//! with query, form or JSON parameters (chunked bodies too), `getUpdates` that
//! blocks up to `timeout` and confirms updates below `offset`, `sendMessage`
//! that records what it got, 401 for a wrong token, 429 with `retry_after` on demand;
//! the media methods (`sendPhoto`, `sendDocument`, …, `sendMediaGroup`) with
//! `multipart/form-data` uploads (files kept with their name and type, a
//! group's `attach://` references checked), and `setMessageReaction`,
//! `editMessageText`, `deleteMessage`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use switchboard_tests::*;
use tokio::sync::Notify;

const TOKEN: &str = "123456:TEST-token";

#[derive(Default)]
struct Fake {
    updates: Mutex<Vec<Value>>,
    sent: Mutex<Vec<Value>>,
    next_update_id: AtomicU32,
    next_message_id: AtomicU32,
    fail_429: AtomicU32,
    arrived: Notify,
    /// Every call: method and its parameters, in order.
    calls: Mutex<Vec<(String, BTreeMap<String, Value>)>>,
    /// The highest `offset` a `getUpdates` asked with: every update below it
    /// is confirmed (Telegram forgets it).
    confirmed: std::sync::atomic::AtomicI64,
    /// Files uploaded.
    uploads: Mutex<Vec<Upload>>,
}

/// An uploaded file: (method, field, file name, content type, bytes).
type Upload = (String, String, String, String, Vec<u8>);

/// A part of a `multipart/form-data` body.
struct Part {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// Splits a `multipart/form-data` body (RFC 7578) at its boundary.
fn multipart(ct: &str, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = ct.split("boundary=").nth(1) else {
        return Vec::new();
    };
    let delim = format!("--{}", boundary.trim_matches('"'));
    let mut parts = Vec::new();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut at = match find(body, delim.as_bytes(), 0) {
        Some(i) => i + delim.len(),
        None => return parts,
    };
    while body[at..].starts_with(b"\r\n") {
        let head_start = at + 2;
        let Some(head_end) = find(body, b"\r\n\r\n", head_start) else {
            break;
        };
        let head = String::from_utf8_lossy(&body[head_start..head_end]).to_string();
        let data_start = head_end + 4;
        let Some(next) = find(body, format!("\r\n{delim}").as_bytes(), data_start) else {
            break;
        };
        let disposition = head.lines().next().unwrap_or_default().to_string();
        let attr = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string)
        };
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .map(str::to_string);
        parts.push(Part {
            name: attr("name").unwrap_or_default(),
            file_name: attr("filename"),
            content_type,
            data: body[data_start..next].to_vec(),
        });
        at = next + 2 + delim.len();
    }
    parts
}

impl Fake {
    /// A photo with a caption, as Telegram sends one (three sizes).
    fn inject_photo(&self, caption: &str) -> u32 {
        let id = 1000 + self.next_update_id.fetch_add(1, Ordering::SeqCst);
        self.updates.lock().unwrap().push(json!({
            "update_id": id,
            "message": {
                "message_id": id, "date": 1_790_000_000,
                "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
                "chat": {"id": -1001, "type": "supergroup"},
                "caption": caption,
                "photo": [
                    {"file_id": "small", "file_unique_id": "u1", "width": 90, "height": 60, "file_size": 1200},
                    {"file_id": "large", "file_unique_id": "u3", "width": 1280, "height": 853, "file_size": 98765},
                    {"file_id": "medium", "file_unique_id": "u2", "width": 320, "height": 213, "file_size": 15000}
                ]
            }
        }));
        self.arrived.notify_waiters();
        id
    }

    /// A message carrying `key` (`document`, `voice`, …) = `file`, no text.
    fn inject_file(&self, key: &str, file: Value) -> u32 {
        let id = 1000 + self.next_update_id.fetch_add(1, Ordering::SeqCst);
        self.updates.lock().unwrap().push(json!({
            "update_id": id,
            "message": {
                "message_id": id, "date": 1_790_000_000,
                "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
                "chat": {"id": -1001, "type": "supergroup"},
                key: file,
            }
        }));
        self.arrived.notify_waiters();
        id
    }

    fn inject(&self, text: &str) -> u32 {
        let id = 1000 + self.next_update_id.fetch_add(1, Ordering::SeqCst);
        self.updates.lock().unwrap().push(json!({
            "update_id": id,
            "message": {
                "message_id": id, "date": 1_790_000_000,
                "from": {"id": 42, "is_bot": false, "first_name": "Ann", "last_name": "Lee"},
                "chat": {"id": -1001, "type": "supergroup"},
                "text": text, "message_thread_id": 7,
            }
        }));
        self.arrived.notify_waiters();
        id
    }
}

fn params(query: Option<String>, headers: &HeaderMap, body: &[u8]) -> BTreeMap<String, Value> {
    let mut p = BTreeMap::new();
    let form = |s: &str, p: &mut BTreeMap<String, Value>| {
        for (k, v) in url_pairs(s) {
            p.insert(k, serde_json::from_str(&v).unwrap_or(Value::String(v)));
        }
    };
    if let Some(q) = query {
        form(&q, &mut p);
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") {
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
            p.extend(m);
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        form(&String::from_utf8_lossy(body), &mut p);
    } else if ct.starts_with("multipart/form-data") {
        // Text parts are parameters; file parts are recorded by the caller.
        for part in multipart(ct, body) {
            if part.file_name.is_none() {
                let v = String::from_utf8_lossy(&part.data).to_string();
                p.insert(
                    part.name,
                    serde_json::from_str(&v).unwrap_or(Value::String(v)),
                );
            }
        }
    }
    p
}

fn url_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn bot_api(
    State(fake): State<Arc<Fake>>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if bot.strip_prefix("bot") != Some(TOKEN) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
        )
            .into_response();
    }
    let p = params(query, &headers, &body);
    fake.calls.lock().unwrap().push((method.clone(), p.clone()));
    let ok = |result: Value| axum::Json(json!({"ok": true, "result": result})).into_response();
    match method.as_str() {
        "getMe" => ok(json!({"id": 1, "is_bot": true, "username": "fake_bot"})),
        "deleteWebhook" | "setWebhook" => ok(json!(true)),
        "getUpdates" => {
            let offset = p.get("offset").and_then(Value::as_i64).unwrap_or(0);
            fake.confirmed.fetch_max(offset, Ordering::SeqCst);
            // As the real API: at most `limit` (1-100, default 100) at a time.
            let limit = p
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 100) as usize;
            let timeout = p.get("timeout").and_then(Value::as_u64).unwrap_or(0);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                let notified = fake.arrived.notified();
                {
                    let mut u = fake.updates.lock().unwrap();
                    // Confirm everything below offset.
                    u.retain(|x| x["update_id"].as_i64().unwrap_or(0) >= offset);
                    if !u.is_empty() {
                        return ok(Value::Array(u.iter().take(limit).cloned().collect()));
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return ok(json!([]));
                }
            }
        }
        "sendMessage" => {
            if fake
                .fail_429
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(json!({"ok": false, "error_code": 429,
                        "description": "Too Many Requests: retry after 3", "parameters": {"retry_after": 3}})),
                )
                    .into_response();
            }
            let id = 5000 + fake.next_message_id.fetch_add(1, Ordering::SeqCst);
            let chat = p.get("chat_id").cloned().unwrap_or(Value::Null);
            fake.sent.lock().unwrap().push(json!(p));
            ok(json!({"message_id": id, "chat": {"id": chat}, "text": p.get("text")}))
        }
        "sendPhoto" | "sendDocument" | "sendVideo" | "sendAudio" | "sendVoice"
        | "sendAnimation" | "sendSticker" | "sendMediaGroup" => {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let files: Vec<Part> = multipart(ct, &body)
                .into_iter()
                .filter(|p| p.file_name.is_some())
                .collect();
            if method == "sendMediaGroup" {
                // Every `attach://name` must name an uploaded part.
                for m in p.get("media").and_then(Value::as_array).cloned().unwrap_or_default() {
                    let media = m["media"].as_str().unwrap_or_default();
                    if let Some(name) = media.strip_prefix("attach://") {
                        if !files.iter().any(|f| f.name == name) {
                            return (
                                StatusCode::BAD_REQUEST,
                                axum::Json(json!({"ok": false, "error_code": 400,
                                    "description": format!("Bad Request: file {name} not found")})),
                            )
                                .into_response();
                        }
                    }
                }
            }
            for f in files {
                fake.uploads.lock().unwrap().push((
                    method.clone(),
                    f.name,
                    f.file_name.unwrap_or_default(),
                    f.content_type.unwrap_or_default(),
                    f.data,
                ));
            }
            let mut rec = json!(p);
            rec["method"] = json!(method);
            fake.sent.lock().unwrap().push(rec);
            let chat = p.get("chat_id").cloned().unwrap_or(Value::Null);
            let one = || {
                let id = 5000 + fake.next_message_id.fetch_add(1, Ordering::SeqCst);
                json!({"message_id": id, "chat": {"id": chat}})
            };
            if method == "sendMediaGroup" {
                let n = p.get("media").and_then(Value::as_array).map_or(0, Vec::len);
                ok(Value::Array((0..n).map(|_| one()).collect()))
            } else {
                ok(one())
            }
        }
        "setMessageReaction" | "editMessageText" | "deleteMessage" => {
            let mut rec = json!(p);
            rec["method"] = json!(method);
            fake.sent.lock().unwrap().push(rec);
            ok(json!(true))
        }
        other => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"ok": false, "error_code": 404, "description": format!("Not Found: method {other}")})),
        )
            .into_response(),
    }
}

async fn fake_api() -> (Arc<Fake>, u16) {
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/{bot}/{method}", axum::routing::any(bot_api))
        .with_state(fake.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (fake, port)
}

fn config(dir: &std::path::Path, port: u16, token: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n[channels.telegram]\nnetwork = [\"127.0.0.1:{port}\"]\n\
         [channels.telegram.accounts.default]\ntoken = \"{token}\"\napi_base = \"http://127.0.0.1:{port}\"\npoll_timeout_secs = 2\n",
        dir.join("state").display(),
        dir.display()
    )
}

fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        built_plugin("plugins", "telegram.wasm"),
        dir.path().join("telegram.wasm"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_operators_and_send_reaches_the_api() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let d = Daemon::builder()
        .config(&config(dir.path(), port, TOKEN))
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let id = fake.inject("hi bot");
    let m = c.next_message(Duration::from_secs(10)).await.unwrap();
    assert_eq!(m["text"], "hi bot");
    assert_eq!(m["chatId"], "-1001");
    assert_eq!(m["senderId"], "42");
    assert_eq!(m["senderName"], "Ann Lee");
    assert_eq!(m["messageId"], id.to_string());
    assert_eq!(m["threadId"], "7");
    assert_eq!(m["ts"], 1_790_000_000_000u64);

    let r = c
        .request("s", "send", json!({"to": "-1001", "message": "hello there", "idempotencyKey": "t1", "replyToId": "77", "threadId": "7"}))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    assert_eq!(r["payload"]["chatId"], "-1001");
    let sent = fake.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["chat_id"], "-1001");
    assert_eq!(sent[0]["text"], "hello there");
    assert_eq!(sent[0]["reply_to_message_id"], 77);
    assert_eq!(sent[0]["message_thread_id"], 7);

    // 5000 characters arrive as two messages, split between words.
    let long = "word ".repeat(1000);
    let r = c
        .request(
            "l",
            "send",
            json!({"to": "-1001", "message": long.trim_end(), "idempotencyKey": "t2"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let sent = fake.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    let (a, b) = (
        sent[1]["text"].as_str().unwrap(),
        sent[2]["text"].as_str().unwrap(),
    );
    assert!(a.chars().count() <= 4096 && b.chars().count() <= 4096);
    assert!(
        a.ends_with("word") && b.starts_with("word"),
        "split inside a word"
    );
    assert_eq!(format!("{a} {b}"), long.trim_end());

    // 429 becomes a retry hint.
    fake.fail_429.store(1, Ordering::SeqCst);
    let r = c
        .request(
            "r",
            "send",
            json!({"to": "-1001", "message": "again", "idempotencyKey": "t3"}),
        )
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["error"]["retryAfterMs"], 3000);

    // A thread id Telegram cannot take is refused before anything is sent.
    let before = fake.sent.lock().unwrap().len();
    let r = c
        .request(
            "b",
            "send",
            json!({"to": "-1001", "message": "x", "threadId": "general", "idempotencyKey": "t4"}),
        )
        .await
        .unwrap();
    assert_refused(&r, "INVALID_REQUEST", "threadId `general`");
    assert_eq!(fake.sent.lock().unwrap().len(), before);
}

/// Runs the real `openclaw` CLI (npm package `openclaw`, on Node 24) with
/// a temporary `HOME` whose `~/.openclaw/openclaw.json` points it at `d`.
fn openclaw(home: &std::path::Path, args: &[&str]) -> (bool, String) {
    let bin = interop_dir().join("node_modules/openclaw/openclaw.mjs");
    assert!(
        bin.exists(),
        "{} is missing: run `make interop-deps`",
        bin.display()
    );
    let node = node24();
    let path = format!(
        "{}:{}",
        node.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(&node)
        .arg(&bin)
        .args(args)
        .env("HOME", home)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env_remove("OPENCLAW_GATEWAY_URL")
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .output()
        .expect("run the openclaw CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openclaw_cli_sends_through_telegram() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let d = Daemon::builder()
        .config(&format!(
            "{}[gateway.auth]\ntoken = \"cli-token\"\n",
            config(dir.path(), port, TOKEN)
        ))
        .start()
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".openclaw")).unwrap();
    std::fs::write(
        home.path().join(".openclaw/openclaw.json"),
        json!({"gateway": {"mode": "remote", "remote": {"url": d.url(), "token": "cli-token"}}})
            .to_string(),
    )
    .unwrap();
    let (mut watcher, _) = connect(&d.url(), Some("cli-token"), &["operator.read"])
        .await
        .unwrap();

    let (ok, out) = openclaw(
        home.path(),
        &[
            "message",
            "send",
            "--channel",
            "telegram",
            "--target",
            "4242",
            "--message",
            "hi there",
        ],
    );
    assert!(
        ok,
        "openclaw message send failed:\n{out}\ndaemon:\n{}",
        d.log_text()
    );
    let sent = fake.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0]["chat_id"].clone(), sent[0]["text"].clone()),
        (json!("4242"), json!("hi there"))
    );
    // It prints the message id the Bot API gave.
    assert!(
        out.contains("Sent via") && out.contains("Message ID: 5000"),
        "{out}"
    );
    // Operators see the outbound message, and the log keeps it.
    let m = watcher.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m["direction"].clone(), m["text"].clone()),
        (json!("outbound"), json!("hi there"))
    );
    assert_eq!(m["chatId"], "4242");

    // A reaction goes to the Bot API (`act`, contract 0.2).
    let (ok, out) = openclaw(
        home.path(),
        &[
            "message",
            "react",
            "--channel",
            "telegram",
            "--target",
            "4242",
            "--message-id",
            "5000",
            "--emoji",
            "👍",
        ],
    );
    assert!(
        ok,
        "openclaw message react failed:\n{out}\ndaemon:\n{}",
        d.log_text()
    );
    let react = fake.sent.lock().unwrap()[1].clone();
    assert_eq!(react["method"], "setMessageReaction", "{react}");
    assert_eq!(
        (
            react["chat_id"].clone(),
            react["message_id"].clone(),
            react["reaction"].clone()
        ),
        (
            json!("4242"),
            json!(5000),
            json!([{"type": "emoji", "emoji": "👍"}])
        )
    );

    // An action no channel contract has: OpenClaw's own words, exit code 1.
    let (ok, out) = openclaw(
        home.path(),
        &[
            "message",
            "pin",
            "--channel",
            "telegram",
            "--target",
            "4242",
            "--message-id",
            "5000",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("Channel telegram does not support action pin."),
        "{out}"
    );
    assert_eq!(fake.sent.lock().unwrap().len(), 2, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_and_actions_go_through_the_bot_api() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let d = Daemon::builder()
        .config(&config(dir.path(), port, TOKEN))
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let (mut w, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let sent = |i: usize| fake.sent.lock().unwrap()[i].clone();

    // A photo by URL, the text as its caption.
    let r = c
        .request(
            "p",
            "send",
            json!({"to": "-1001", "message": "look", "idempotencyKey": "m1",
            "mediaUrl": "https://img.example/cat.png", "replyToId": "77"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    let p = sent(0);
    assert_eq!(p["method"], "sendPhoto");
    assert_eq!(
        (p["photo"].clone(), p["caption"].clone()),
        (json!("https://img.example/cat.png"), json!("look"))
    );
    assert_eq!(p["reply_to_message_id"], 77);
    assert_eq!(r["payload"]["messageId"], "5000");

    // A document uploaded from bytes (multipart).
    let pdf = b"%PDF-1.4 fake\r\n--not-a-boundary\r\n".to_vec();
    use base64::Engine as _;
    let r = c
        .request(
            "d",
            "send",
            json!({"to": "-1001", "idempotencyKey": "m2",
            "buffer": base64::engine::general_purpose::STANDARD.encode(&pdf),
            "filename": "report.pdf", "contentType": "application/pdf"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    assert_eq!(sent(1)["method"], "sendDocument");
    {
        let up = fake.uploads.lock().unwrap();
        assert_eq!(up.len(), 1);
        let (method, field, name, ct, bytes) = &up[0];
        assert_eq!(
            (method.as_str(), field.as_str(), name.as_str(), ct.as_str()),
            ("sendDocument", "document", "report.pdf", "application/pdf")
        );
        assert_eq!(bytes, &pdf, "the upload arrives byte for byte");
    }

    // A content type that would add a part of the caller's own to the
    // upload (here a second `chat_id`: another chat) is refused by the
    // gateway before the channel sees it.
    let r = c
        .request(
            "x",
            "send",
            json!({"to": "-1001", "idempotencyKey": "m2x",
            "buffer": base64::engine::general_purpose::STANDARD.encode(&pdf),
            "filename": "report.pdf",
            "contentType": "application/pdf\r\n\r\nx\r\n--switchboard-0000000000005eed\r\n\
                            Content-Disposition: form-data; name=\"chat_id\"\r\n\r\n-999"}),
        )
        .await
        .unwrap();
    assert_refused(&r, "INVALID_REQUEST", "`contentType` must be a MIME type");
    assert_eq!(fake.sent.lock().unwrap().len(), 2, "nothing more was sent");

    // Two photos, one by URL and one uploaded: one media group.
    let r = c
        .request("g", "send", json!({"to": "-1001", "message": "both", "idempotencyKey": "m3",
            "mediaUrls": ["https://img.example/a.jpg"], "buffer": "iVBORw0KGgo=", "contentType": "image/png"}))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    let g = sent(2);
    assert_eq!(g["method"], "sendMediaGroup");
    assert_eq!(
        g["media"],
        json!([{"type": "photo", "media": "https://img.example/a.jpg", "caption": "both"},
               {"type": "photo", "media": "attach://file1"}])
    );
    assert_eq!(fake.uploads.lock().unwrap()[1].1, "file1");

    // A received photo: its largest size as attachment metadata, the caption as text.
    let id = fake.inject_photo("a cat");
    let m = w
        .message_with_text("a cat", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m["messageId"], id.to_string());
    assert_eq!(
        m["attachments"],
        json!([{"kind": "image", "fileId": "large", "size": 98765}])
    );

    // A document and a voice note without text: their metadata, empty text.
    for (key, file, want) in [
        (
            "document",
            json!({"file_id": "doc-1", "file_unique_id": "d", "file_name": "plan.pdf", "mime_type": "application/pdf", "file_size": 4321}),
            json!([{"kind": "document", "mimeType": "application/pdf", "fileName": "plan.pdf", "size": 4321, "fileId": "doc-1"}]),
        ),
        (
            "voice",
            json!({"file_id": "v-1", "file_unique_id": "v", "duration": 3, "mime_type": "audio/ogg", "file_size": 999}),
            json!([{"kind": "voice", "mimeType": "audio/ogg", "size": 999, "fileId": "v-1"}]),
        ),
    ] {
        let id = fake.inject_file(key, file);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let m = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = w.next_message(left).await.unwrap();
            if m["messageId"].as_str().and_then(|s| s.parse::<u32>().ok()) == Some(id) {
                break m;
            }
        };
        assert_eq!(
            (m["text"].clone(), m["attachments"].clone()),
            (json!(""), want),
            "{key}"
        );
    }

    // react, edit, delete.
    for (i, (action, params, method)) in [
        (
            "react",
            json!({"messageId": "5000", "emoji": "👍"}),
            "setMessageReaction",
        ),
        (
            "react",
            json!({"messageId": "5000", "emoji": "👍", "remove": true}),
            "setMessageReaction",
        ),
        (
            "edit",
            json!({"messageId": "5000", "message": "better"}),
            "editMessageText",
        ),
        ("delete", json!({"messageId": "5000"}), "deleteMessage"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = params;
        p["target"] = json!("-1001");
        let r = c
            .request(
                "a",
                "message.action",
                json!({"channel": "telegram", "action": action,
                "params": p, "idempotencyKey": format!("act-{i}")}),
            )
            .await
            .unwrap();
        assert_eq!(r["ok"], true, "{action}: {r}\n{}", d.log_text());
        let call = sent(3 + i);
        assert_eq!(call["method"], method);
        assert_eq!(
            (call["chat_id"].clone(), call["message_id"].clone()),
            (json!("-1001"), json!(5000))
        );
    }
    assert_eq!(
        sent(3)["reaction"],
        json!([{"type": "emoji", "emoji": "👍"}])
    );
    assert_eq!(sent(4)["reaction"], json!([]));
    assert_eq!(sent(5)["text"], "better");
}

async fn collect(c: &mut Client, want: usize, seen: &mut Vec<String>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event("message", left).await {
            Ok(m) => seen.push(m["payload"]["messageId"].as_str().unwrap().to_string()),
            Err(_) => break,
        }
    }
}

/// A `message` event's `(messageSeq, messageId)`.
fn seq_and_id(event: &Value) -> (u64, String) {
    let p = &event["payload"];
    let seq = p["messageSeq"].as_u64().expect("messageSeq");
    (seq, p["messageId"].as_str().expect("messageId").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_neither_loses_nor_repeats_an_update() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let mut d1 = Daemon::builder()
        .config(&config(dir.path(), port, TOKEN))
        .start()
        .unwrap();
    let (mut w1, _) = connect(&d1.url(), None, &["operator.read"]).await.unwrap();
    let mut injected = Vec::new();
    for i in 0..5 {
        injected.push(fake.inject(&format!("first {i}")).to_string());
    }
    // Every `message` event an operator saw live, as (messageSeq, messageId).
    let mut live = Vec::new();
    while live.len() < 5 {
        match w1.next_event("message", Duration::from_secs(10)).await {
            Ok(e) => live.push(seq_and_id(&e)),
            Err(e) => panic!("only {} of 5 updates arrived: {e}", live.len()),
        }
    }
    // More updates while the daemon goes down.
    for i in 0..5 {
        injected.push(fake.inject(&format!("during {i}")).to_string());
    }
    d1.signal("TERM");
    // Whatever the first daemon delivered before closing still reaches w1
    // (every frame read counts, however the connection ends).
    for f in w1.frames_until_end(Duration::from_secs(15)).await {
        if f["event"] == "message" {
            live.push(seq_and_id(&f));
        }
    }
    assert_eq!(d1.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    let last_before_restart = live.iter().map(|(s, _)| *s).max().unwrap_or(0);
    let d2 = Daemon::builder()
        .config(&config(dir.path(), port, TOKEN))
        .start()
        .unwrap();
    // The second daemon may deliver the updates the first one left before
    // this operator is connected: it closes that gap the way every client
    // does, with the resume recipe (history after the last `messageSeq` it
    // saw, then live events).
    let (mut w2, _) = connect(&d2.url(), None, &["operator.read"]).await.unwrap();
    for i in 0..3 {
        injected.push(fake.inject(&format!("after {i}")).to_string());
    }
    // Injected after w2 connected, so it arrives live; updates are delivered
    // in order, so every earlier one is in the log by then.
    let newest = injected.last().unwrap().clone();
    loop {
        match w2.next_event("message", Duration::from_secs(15)).await {
            Ok(e) => {
                let (seq, id) = seq_and_id(&e);
                live.push((seq, id.clone()));
                if id == newest {
                    break;
                }
            }
            Err(e) => panic!("update {newest} never arrived live: {e}; live so far {live:?}"),
        }
    }
    let ids = |v: &[(u64, String)]| {
        let mut ids: Vec<String> = v.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids
    };
    let mut want = injected.clone();
    want.sort();
    // Live events: none twice (a message broadcast again would have a new seq).
    let live_ids = ids(&live);
    let unique: HashSet<&String> = live_ids.iter().collect();
    assert_eq!(
        unique.len(),
        live_ids.len(),
        "an update was broadcast twice: {live:?}"
    );
    // The log: every update exactly once.
    let logged: Vec<(u64, String)> = w2
        .history_after(0)
        .await
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["messageSeq"].as_u64().unwrap(),
                m["messageId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ids(&logged), want, "the log lost or doubled an update");
    // What the operators hold after the recipe: live events plus history
    // after the last seq seen before the restart, one entry per seq.
    let mut held: BTreeMap<u64, String> = live.iter().cloned().collect();
    for (seq, id) in logged.iter().filter(|(s, _)| *s > last_before_restart) {
        assert!(
            held.insert(*seq, id.clone()).is_none_or(|old| old == *id),
            "messageSeq {seq} names two messages"
        );
    }
    let held: Vec<(u64, String)> = held.into_iter().collect();
    assert_eq!(
        ids(&held),
        want,
        "lost or doubled after the resume recipe (live {live:?}, log {logged:?})"
    );
}

#[tokio::test]
async fn a_bad_token_shows_in_channels_status() {
    let (_fake, port) = fake_api().await;
    let dir = plugin_dir();
    let d = Daemon::builder()
        .config(&config(dir.path(), port, "999:wrong"))
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let e = c
        .wait_account_error(
            "telegram",
            "default",
            "unauthorized",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(e.contains("check the bot token"), "{e}");
}

impl Fake {
    fn called(&self, method: &str) -> Vec<BTreeMap<String, Value>> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

const HOOK_SECRET: &str = "hook-Secret_42";

async fn post_update(d: &Daemon, secret: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(d.http("/hooks/telegram/default"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_sets_the_webhook_and_checks_the_secret_token() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let cfg = format!(
        "{}mode = \"webhook\"\nwebhook_url = \"https://bot.example/hooks/telegram/default\"\nwebhook_secret = \"{HOOK_SECRET}\"\n",
        config(dir.path(), port, TOKEN)
    );
    let d = Daemon::builder().config(&cfg).start().unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();

    // run registers the webhook with its secret and reports connected.
    let t0 = std::time::Instant::now();
    let set = loop {
        if let Some(p) = fake.called("setWebhook").pop() {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "setWebhook never called\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(set["url"], "https://bot.example/hooks/telegram/default");
    assert_eq!(set["secret_token"], HOOK_SECRET);

    let update = json!({
        "update_id": 77,
        "message": {"message_id": 9, "date": 1_790_000_100, "from": {"id": 5, "first_name": "Bo"},
                    "chat": {"id": 314, "type": "private"}, "text": "via webhook"}
    })
    .to_string();
    // Missing or wrong secret: refused, nothing delivered.
    let (st, v) = post_update(&d, None, &update).await;
    assert_eq!(st, 401, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("X-Telegram-Bot-Api-Secret-Token"));
    let (st, _) = post_update(&d, Some("hook-Secret_43"), &update).await;
    assert_eq!(st, 401);
    // Right secret but not an update.
    let (st, v) = post_update(&d, Some(HOOK_SECRET), "{not json").await;
    assert_eq!(st, 400, "{v}");
    // Right secret: the update reaches operators, once.
    let (st, v) = post_update(&d, Some(HOOK_SECRET), &update).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["messageSeq"].as_u64().is_some(), "{v}");
    let m = c.next_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["text"], "via webhook");
    assert_eq!(m["chatId"], "314");
    assert_eq!(m["senderName"], "Bo");
    assert!(
        c.next_event("message", Duration::from_millis(300))
            .await
            .is_err(),
        "a refused update was delivered"
    );
    // Webhook mode never polls (Telegram refuses getUpdates while a webhook is set).
    assert!(fake.called("getUpdates").is_empty());
    assert!(fake.called("deleteWebhook").is_empty());
}

#[tokio::test]
async fn webhook_mode_without_a_secret_is_a_config_error() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let cfg = format!(
        "{}mode = \"webhook\"\nwebhook_url = \"https://bot.example/hooks/telegram/default\"\n",
        config(dir.path(), port, TOKEN)
    );
    let d = Daemon::builder().config(&cfg).start().unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    c.wait_account_error(
        "telegram",
        "default",
        "webhook_secret",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(fake.called("setWebhook").is_empty());
}

/// The fake reads parameters the ways the Bot API accepts them, chunked
/// request bodies included (a client that streams its body sends those).
#[tokio::test]
async fn the_fake_reads_query_form_json_and_chunked_parameters() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (fake, port) = fake_api().await;
    let raw = |head: &str, body: &str| {
        format!("{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\n{body}")
    };
    let json_body = r#"{"chat_id":-5,"text":"chunked json"}"#;
    let (a, b) = json_body.split_at(10);
    let requests = [
        raw(
            &format!("POST /bot{TOKEN}/sendMessage?chat_id=-1&text=from%20query HTTP/1.1"),
            "Content-Length: 0\r\n\r\n",
        ),
        raw(
            &format!("POST /bot{TOKEN}/sendMessage HTTP/1.1"),
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 25\r\n\r\nchat_id=-2&text=from+form",
        ),
        raw(
            &format!("POST /bot{TOKEN}/sendMessage HTTP/1.1"),
            &format!(
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            ),
        ),
    ];
    for r in requests {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(r.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    let sent = fake.sent.lock().unwrap().clone();
    let got: Vec<(Value, Value)> = sent
        .iter()
        .map(|p| (p["chat_id"].clone(), p["text"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!(-1), json!("from query")),
            (json!(-2), json!("from form")),
            (json!(-5), json!("chunked json")),
        ]
    );
}

/// The daemon is SIGKILLed at random moments while the fake Bot API serves
/// 2000 updates a round, five rounds: after each restart every update the
/// fake saw confirmed (an offset past it) is in the message log exactly once
/// and in order, and in the end every update is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_of_updates_loses_and_doubles_nothing() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let total = 10_000;
    let mut ids: Vec<String> = Vec::new();
    let history = |d: &Daemon| {
        let url = d.url();
        async move {
            let (mut c, _) = connect(&url, None, &["operator.read"]).await.unwrap();
            let all = c.history_after(0).await.unwrap();
            all.iter()
                .map(|m| m["messageId"].as_str().unwrap().to_string())
                .collect::<Vec<String>>()
        }
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..5 {
        // 2000 more updates each round, the daemon killed while it takes them.
        for i in 0..total / 5 {
            ids.push(fake.inject(&format!("burst {round}/{i}")).to_string());
        }
        let d = Daemon::builder()
            .config(&config(dir.path(), port, TOKEN))
            .start()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(100 + rng % 600)).await;
        d.signal("KILL");
        drop(d);
        let confirmed = fake.confirmed.load(Ordering::SeqCst);
        let d = Daemon::builder()
            .config(&config(dir.path(), port, TOKEN))
            .start()
            .unwrap();
        let got = history(&d).await;
        let want_prefix: Vec<String> = ids
            .iter()
            .filter(|id| id.parse::<i64>().unwrap() < confirmed)
            .cloned()
            .collect();
        eprintln!(
            "round {round}: {} confirmed, {} in the log",
            want_prefix.len(),
            got.len()
        );
        assert!(
            got.len() >= want_prefix.len() && got[..want_prefix.len()] == want_prefix[..],
            "round {round}: a confirmed update is missing, doubled or out of order"
        );
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "round {round}: an update is doubled"
        );
        d.signal("KILL");
    }
    let d = Daemon::builder()
        .config(&config(dir.path(), port, TOKEN))
        .start()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = history(&d).await;
        if got.len() >= total || std::time::Instant::now() > deadline {
            assert_eq!(got, ids, "every update once, in order");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A full disk under a polling Telegram account: the update is not stored,
/// so the plugin does not move its offset (the fake sees it unconfirmed);
/// once space returns it arrives, each update once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_updates_unconfirmed_until_space_returns() {
    let (fake, port) = fake_api().await;
    let dir = plugin_dir();
    let state = dir.path().join("state");
    let _unmount = Tmpfs::mount(&state, "16m");
    // The disk itself fills (no floor of free space kept).
    let toml = config(dir.path(), port, TOKEN) + "[store]\nmin_free_mb = 0\n";
    let d = Daemon::builder().config(&toml).start().unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(fake.inject(&format!("before {i}")).to_string());
    }
    let mut seen = Vec::new();
    collect(&mut c, 3, &mut seen, Duration::from_secs(10)).await;
    assert_eq!(seen, ids);
    fill(&state.join("filler"));
    let first_new = fake.inject("while full");
    ids.push(first_new.to_string());
    ids.push(fake.inject("while full 2").to_string());
    // The plugin keeps retrying; the update stays unconfirmed.
    let r = c
        .wait_account_error("telegram", "default", "not stored", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(r.contains("not stored"), "{r}");
    assert!(
        fake.confirmed.load(Ordering::SeqCst) <= first_new as i64,
        "the offset moved past an update that was not stored"
    );
    let ready = reqwest::get(d.http("/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    std::fs::remove_file(state.join("filler")).unwrap();
    collect(&mut c, 5, &mut seen, Duration::from_secs(30)).await;
    assert_eq!(seen, ids, "each update once, in order");
}
