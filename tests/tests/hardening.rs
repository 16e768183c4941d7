//! The holes a hostile client finds in an afternoon, each closed: DNS
//! rebinding, stalled bodies and headers, queues bounded by bytes, request
//! bursts, length overflows before auth, protocol errors after it, and the
//! noise that hid them. Raw sockets where a library would refuse to misbehave.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "hardening-token";

/// Sends raw bytes, returns what comes back until EOF or `t`.
async fn raw(d: &Daemon, req: &[u8], t: Duration) -> String {
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(req).await.unwrap();
    read_until_eof(&mut s, t).await
}

async fn read_until_eof(s: &mut TcpStream, t: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(t, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn upgrade_request(host: &str, origin: Option<&str>) -> Vec<u8> {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// The status code of an upgrade attempt.
async fn upgrade_status(d: &Daemon, host: &str, origin: Option<&str>) -> u16 {
    let resp = raw(
        d,
        &upgrade_request(host, origin),
        Duration::from_millis(500),
    )
    .await;
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"))
}

/// DNS rebinding: a page whose name was pointed at 127.0.0.1 sends its own
/// name as `Host` (and as its origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_is_refused() {
    let d = Daemon::builder().config("").start().unwrap();
    let port = d.addr.port();
    let evil = format!("rebind.evil.example:{port}");
    let evil_origin = format!("http://{evil}");
    // The attack: the page's own name in Host and Origin.
    assert_eq!(upgrade_status(&d, &evil, Some(&evil_origin)).await, 421);
    // Non-browser clients naming a foreign host too.
    assert_eq!(upgrade_status(&d, &evil, None).await, 421);
    // A foreign origin, whatever the Host.
    let local = format!("127.0.0.1:{port}");
    assert_eq!(upgrade_status(&d, &local, Some(&evil_origin)).await, 403);
    // Loopback names and origins are served.
    assert_eq!(upgrade_status(&d, &local, None).await, 101);
    assert_eq!(
        upgrade_status(
            &d,
            &format!("localhost:{port}"),
            Some("http://localhost:5173")
        )
        .await,
        101
    );
    assert_eq!(
        upgrade_status(&d, &format!("[::1]:{port}"), None).await,
        101
    );
    // /metrics and /ready answer loopback names only, too.
    let resp = raw(
        &d,
        format!("GET /metrics HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    assert!(resp.contains("gateway.allowed_hosts"), "{resp}");
    assert!(d.metric("switchboard_host_rejections_total").await.unwrap() >= 3);
    // A request with two Host headers is refused whatever their order: the
    // checks here read the first, a proxy in front may have read the other.
    for (path, first, second) in [
        ("/", &local, &evil),
        ("/ready", &local, &evil),
        ("/hooks/webhook/open", &evil, &local),
    ] {
        let resp = raw(
            &d,
            format!("GET {path} HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
        assert!(resp.contains("2 Host headers"), "{path}: {resp}");
    }
    assert_eq!(upgrade_status(&d, &local, None).await, 101);
    drop(d);

    // A configured name is served without a token.
    let d = Daemon::builder()
        .config("[gateway]\nallowed_hosts = [\"gw.internal\"]\n")
        .start()
        .unwrap();
    let port = d.addr.port();
    assert_eq!(
        upgrade_status(&d, &format!("gw.internal:{port}"), None).await,
        101
    );
    drop(d);

    // With a token, any Host may upgrade (the page cannot authenticate), but
    // a foreign Origin still may not.
    let d = Daemon::builder()
        .config(&format!("[gateway.auth]\ntoken = \"{TOKEN}\"\n"))
        .start()
        .unwrap();
    let port = d.addr.port();
    let evil = format!("rebind.evil.example:{port}");
    assert_eq!(upgrade_status(&d, &evil, None).await, 101);
    assert_eq!(
        upgrade_status(&d, &evil, Some(&format!("http://{evil}"))).await,
        403
    );
    // But what needs no token even then (/metrics, /ready) is not read
    // under a page's own name: only under loopback names, IP addresses
    // and the names listed.
    let status_of = |path: &'static str, host: String| {
        let d = &d;
        async move {
            let resp = raw(
                d,
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
                Duration::from_secs(2),
            )
            .await;
            let code: u16 = resp
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no status in {resp:?}"));
            (code, resp)
        }
    };
    for path in ["/metrics", "/ready"] {
        let (code, resp) = status_of(path, evil.clone()).await;
        assert_eq!(code, 421, "{path}: {resp}");
        assert!(
            resp.contains("add the name to gateway.allowed_hosts") && resp.contains(path),
            "{resp}"
        );
        for host in [format!("127.0.0.1:{port}"), format!("192.0.2.7:{port}")] {
            let (code, resp) = status_of(path, host).await;
            assert_eq!(code, 200, "{path}: {resp}");
        }
    }
    drop(d);
    let d = Daemon::builder()
        .config(&format!(
            "[gateway]\nallowed_hosts = [\"gw.internal\"]\n[gateway.auth]\ntoken = \"{TOKEN}\"\n"
        ))
        .start()
        .unwrap();
    let resp = raw(
        &d,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: gw.internal:{}\r\nConnection: close\r\n\r\n",
            d.addr.port()
        )
        .as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

const WEBHOOK: &str = "[channels.webhook.accounts.open]\n";

fn webhook_daemon(dir: &std::path::Path, gateway: &str) -> Daemon {
    Daemon::builder()
        .with_plugins(
            dir,
            &[("plugins", "webhook.wasm")],
            &format!("[gateway]\n{gateway}\n{WEBHOOK}"),
        )
        .start()
        .unwrap()
}

fn stalled_post(host: &str) -> Vec<u8> {
    stalled_post_with(host, "")
}

/// A webhook POST whose body stops early, with `headers` (each ending in
/// CRLF) added.
fn stalled_post_with(host: &str, headers: &str) -> Vec<u8> {
    format!(
        "POST /hooks/webhook/open HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: 1000\r\n\r\n{{\"chatId\":"
    )
    .into_bytes()
}

/// Bodies that never finish are cut with 408 and free their slot; bodies
/// being read at once are bounded; headers that never finish get 408 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_headers_get_408_and_free_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let d = webhook_daemon(
        dir.path(),
        "[gateway.limits]\nmax_connections = 4\nbody_read_timeout_ms = 1500\n\
         header_read_timeout_ms = 1500\nmax_webhook_bodies = 2\n",
    );
    // Headers that never end.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let resp = read_until_eof(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    // Logged (the first refusal of a quiet spell is; later ones are counted).
    d.wait_log("request headers not received", Duration::from_secs(2))
        .await
        .unwrap();
    let host = d.addr.to_string();
    let t0 = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(&stalled_post(&host)).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third body while two are being read: refused at once.
    let busy = raw(&d, &stalled_post(&host), Duration::from_millis(800)).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("retry-after: 1"), "{busy}");
    // The stalled ones get 408 and their sockets are closed.
    for mut s in stalled {
        let resp = read_until_eof(&mut s, Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    }
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    // Every slot is free again: four clients at once are served.
    for _ in 0..4 {
        let r = reqwest::get(d.http("/health")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(d.metric("switchboard_body_timeouts_total").await.unwrap() >= 2);
    assert!(d.metric("switchboard_header_timeouts_total").await.unwrap() >= 1);
    assert!(d.metric("switchboard_webhook_busy_total").await.unwrap() >= 1);
}

fn long_name_params(len: usize) -> Value {
    let mut p = connect_params(None, &["operator.read"]);
    p["client"]["displayName"] = json!("n".repeat(len));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_control_character_client_fields_are_refused_and_unknown_scopes_dropped() {
    let d = Daemon::builder().config("").start().unwrap();
    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, closed) = connect_refused(&mut c, long_name_params(60_000))
        .await
        .unwrap();
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    let msg = res["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("client.displayName is 60000 bytes long; at most 256"),
        "{msg}"
    );
    assert_eq!(closed.code, 1008);
    let mut p = connect_params(None, &["operator.read"]);
    p["scopes"] = json!((0..100).map(|i| format!("s{i}")).collect::<Vec<_>>());
    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, _) = connect_refused(&mut c, p).await.unwrap();
    assert_refused_saying(&res, "scopes has 100 entries");
    // Control characters: an escape sequence to redraw an operator's
    // terminal, a line break to forge a log line.
    let mut p = connect_params(None, &["operator.read"]);
    p["client"]["displayName"] = json!("desk\u{1b}[2J");
    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, _) = connect_refused(&mut c, p).await.unwrap();
    assert_refused_saying(
        &res,
        "client.displayName holds a control character (U+001B at byte 4)",
    );
    let mut p = connect_params(None, &["operator.read", "operator.write\nINFO forged"]);
    p["client"]["id"] = json!("cli");
    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, _) = connect_refused(&mut c, p).await.unwrap();
    assert_refused_saying(&res, "an entry of scopes holds a control character (U+000A");
    // Any other character is a name's own.
    let mut p = connect_params(None, &["operator.read"]);
    p["client"]["displayName"] = json!("Zoë’s Mac — 東京 🖥");
    let (_, hello) = connect_with(&d.url(), p).await.unwrap();
    assert_eq!(hello["type"], "hello-ok");
    // A name of normal length is fine; made-up scopes are not echoed back.
    let (_, hello) = connect_with(&d.url(), long_name_params(200)).await.unwrap();
    assert_eq!(hello["auth"]["scopes"], json!(["operator.read"]));
    let mut p = connect_params(None, &["operator.read", "operator.godmode", "x"]);
    p["client"]["id"] = json!("cli");
    let (_, hello) = connect_with(&d.url(), p).await.unwrap();
    assert_eq!(hello["auth"]["scopes"], json!(["operator.read"]));
}

/// A reader that never reads is closed once its queue holds
/// `max_buffered_bytes`, long before `send_queue_frames` frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = webhook_daemon(
        dir.path(),
        "[gateway.limits]\nmax_buffered_bytes = 262144\nsend_queue_frames = 100000\n\
         socket_send_buffer_bytes = 4096\n",
    );
    let stuck = stuck_client(&d, None).await;
    // 100 messages of 16 KiB: 1.6 MB for it, in 100 frames.
    let http = reqwest::Client::new();
    let text = "m".repeat(16 * 1024);
    for i in 0..100 {
        let r = http
            .post(d.http("/hooks/webhook/open"))
            .body(
                json!({"chatId": "c", "senderId": "s", "text": text, "messageId": format!("b{i}")})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if d.metric("switchboard_slow_consumer_closes_total")
            .await
            .unwrap()
            >= 1
        {
            break;
        }
    }
    assert_eq!(
        d.metric("switchboard_slow_consumer_closes_total")
            .await
            .unwrap(),
        1,
        "{}",
        d.log_text()
    );
    drop(stuck);
}

/// Clients that ask for large responses and never read them are each within
/// their own `max_buffered_bytes`, but together past
/// `max_reply_bytes_total`: those holding the most are closed as slow
/// consumers, so what the daemon holds for all of them stays near the bound;
/// a client that reads is served throughout, and once the hoarders are gone
/// nothing is counted any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_held_for_all_connections_are_bounded_together() {
    const PER_CONN: u64 = 8 << 20;
    const TOTAL: u64 = 12 << 20;
    let dir = tempfile::tempdir().unwrap();
    let d = webhook_daemon(
        dir.path(),
        &format!(
            "[gateway.limits]\nmax_buffered_bytes = {PER_CONN}\nmax_reply_bytes_total = {TOTAL}\n\
             socket_send_buffer_bytes = 4096\n"
        ),
    );
    // 24 messages of 40 KiB (and their raw body): each history page is
    // about 2 MB.
    let http = reqwest::Client::new();
    let text = "h".repeat(40 * 1024);
    for i in 0..24 {
        let r = http
            .post(d.http("/hooks/webhook/open"))
            .body(
                json!({"chatId": "c", "senderId": "s", "text": text, "messageId": format!("h{i}")})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Six hoarders ask for 3 pages each (about 6 MB, within their own
    // bound) and read nothing: 36 MB together.
    let mut hoarders = Vec::new();
    for _ in 0..6 {
        let mut c = stuck_client(&d, None).await;
        for i in 0..3 {
            c.send_request(&format!("p{i}"), "messages.history", json!({"afterSeq": 0}))
                .await
                .unwrap();
        }
        hoarders.push(c);
    }
    let mut closes = 0;
    for _ in 0..100 {
        closes = d
            .metric("switchboard_slow_consumer_closes_total")
            .await
            .unwrap();
        if closes >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closes >= 2, "{closes} hoarders closed\n{}", d.log_text());
    d.wait_log(
        "pass gateway.limits.max_reply_bytes_total",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // A reader is served meanwhile.
    let (mut reader, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let r = reader
        .request("h", "messages.history", json!({"afterSeq": 0}))
        .await
        .unwrap();
    assert_eq!(r["payload"]["messages"].as_array().map(Vec::len), Some(24));
    // Once the hoarders' requests are all answered (what is held stops
    // changing), the connections left hold at most the bound, and each one
    // being closed at most the one frame its last write is given a grace
    // for (its queue is freed at once).
    let page = r.to_string().len() as u64 + 1024;
    let settled = |d: &Daemon| {
        let url = d.http("/metrics");
        async move {
            let (mut held, mut same) = (u64::MAX, 0);
            for _ in 0..60 {
                let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
                let now = text
                    .lines()
                    .find_map(|l| l.strip_prefix("switchboard_reply_bytes "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                same = if now == held { same + 1 } else { 0 };
                held = now;
                if same == 5 {
                    return held;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("what is held never settled ({held})");
        }
    };
    let closes = d
        .metric("switchboard_slow_consumer_closes_total")
        .await
        .unwrap();
    let held = settled(&d).await;
    assert!(
        held <= TOTAL + closes * page,
        "{held} bytes of responses held: past {TOTAL} and one page ({page}) for each of {closes} closed"
    );
    // The last writes' grace over (5 s, and 5 s for the close frame), the bound alone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let held = settled(&d).await;
    assert!(
        held <= TOTAL,
        "{held} bytes of responses held, past {TOTAL}"
    );
    drop(hoarders);
    let mut held = u64::MAX;
    for _ in 0..100 {
        held = d.metric("switchboard_reply_bytes").await.unwrap();
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        held, 0,
        "responses still counted after their connections went"
    );
}

/// A client that reads everything but writes thousands of requests back to
/// back is slowed down (not read while at its in-flight limit), never
/// refused or closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_served_not_refused() {
    let d = Daemon::builder()
        .config("[gateway.limits]\nmax_inflight_requests = 4\nsend_queue_frames = 64\n")
        .start()
        .unwrap();
    let (c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let (mut sink, mut stream) = c.ws.split();
    const N: usize = 3000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let f = json!({"type": "req", "id": format!("r{i}"), "method": "health", "params": {}});
            sink.feed(Message::text(f.to_string())).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    let mut ok = 0;
    while ok < N {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("responses stopped")
            .expect("connection ended")
            .unwrap();
        let Message::Text(t) = m else {
            panic!("after {ok} responses: {m:?}");
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "res" {
            assert_eq!(v["ok"], true, "after {ok}: {v}");
            ok += 1;
        }
    }
    let _sink = writer.await.unwrap();
    assert_eq!(
        d.metric("switchboard_slow_consumer_closes_total")
            .await
            .unwrap(),
        0
    );
}

/// A raw WebSocket after our own upgrade: frames as an attacker writes them.
struct RawWs {
    s: TcpStream,
}

impl RawWs {
    async fn open(d: &Daemon) -> RawWs {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(&upgrade_request(&d.addr.to_string(), None))
            .await
            .unwrap();
        // Read the response head byte by byte: nothing past it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        let mut ws = RawWs { s };
        let (op, challenge) = ws.read_frame().await.unwrap();
        assert_eq!(op, 1);
        assert!(String::from_utf8_lossy(&challenge).contains("connect.challenge"));
        ws
    }

    /// Opens and authenticates with `connect`.
    async fn login(d: &Daemon) -> RawWs {
        let mut ws = Self::open(d).await;
        let req = json!({"type": "req", "id": "c1", "method": "connect", "params": connect_params(None, &["operator.read"])});
        ws.write(0x81, req.to_string().as_bytes(), true).await;
        loop {
            let (_, p) = ws.read_frame().await.unwrap();
            let v: Value = serde_json::from_slice(&p).unwrap();
            if v["id"] == "c1" {
                assert_eq!(v["ok"], true, "{v}");
                return ws;
            }
        }
    }

    async fn write(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut f = vec![first];
        let m = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(m | payload.len() as u8);
        } else {
            f.push(m | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mask = [7u8, 1, 9, 3];
        if masked {
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f).await.unwrap();
    }

    /// One server frame (unmasked): (opcode, payload); `None` at EOF.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b0 = self.s.read_u8().await.ok()?;
        let b1 = self.s.read_u8().await.ok()?;
        let len = match b1 & 0x7f {
            126 => self.s.read_u16().await.ok()? as usize,
            127 => self.s.read_u64().await.ok()? as usize,
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).await.ok()?;
        Some((b0 & 0x0f, p))
    }

    /// Reads frames until a close frame; its code (`None`: the socket
    /// ended without one).
    async fn close_code(&mut self) -> Option<u16> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((op, p)) = self.read_frame().await {
                if op == 8 {
                    return Some(u16::from_be_bytes([p[0], p[1]]));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }
}

/// After the challenge: a 10-byte fragment, then a continuation declaring
/// 0xFFFFFFFFFFFFFFFB bytes. It panicked a worker ("capacity overflow").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preauth_length_overflow_is_closed_1009_not_a_panic() {
    let d = Daemon::builder().config("").start().unwrap();
    let mut ws = RawWs::open(&d).await;
    ws.write(0x01, b"0123456789", true).await;
    let mut cont = vec![0x80, 0x80 | 127];
    cont.extend_from_slice(&0xFFFF_FFFF_FFFF_FFFBu64.to_be_bytes());
    cont.extend_from_slice(&[1, 2, 3, 4]);
    ws.s.write_all(&cont).await.unwrap();
    assert_eq!(ws.close_code().await, Some(1009));
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    // The daemon is whole.
    connect(&d.url(), None, &["operator.read"]).await.unwrap();
}

/// Protocol violations after login get the close code RFC 6455 names, and
/// the log says the server closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_after_login_get_1002_or_1007() {
    let d = Daemon::builder().config("").start().unwrap();
    // Invalid UTF-8 in a text frame.
    let mut ws = RawWs::login(&d).await;
    ws.write(0x81, &[0x7b, 0xff, 0xfe, 0x7d], true).await;
    assert_eq!(ws.close_code().await, Some(1007));
    // An unmasked client frame.
    let mut ws = RawWs::login(&d).await;
    ws.write(0x81, b"{}", false).await;
    assert_eq!(ws.close_code().await, Some(1002));
    // RSV1 set without an extension.
    let mut ws = RawWs::login(&d).await;
    ws.write(0xC1, b"{}", true).await;
    assert_eq!(ws.close_code().await, Some(1002));
    let line = d
        .wait_log("close_code=1007", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains("by=\"server\"") || line.contains("by=server"),
        "{line}"
    );
    assert!(d.metric("switchboard_protocol_errors_total").await.unwrap() >= 3);
}

/// A flood of refused connections is one log line (with a count), not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_logged_once_per_interval() {
    let d = Daemon::builder()
        .config("[gateway.limits]\nmax_connections = 1\n")
        .start()
        .unwrap();
    let (_held, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    for _ in 0..50 {
        let resp = raw(
            &d,
            b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    }
    drop(_held);
    // The slot frees once the held connection's close completes.
    let t0 = Instant::now();
    let rejected = loop {
        if let Ok(n) = d.metric("switchboard_connections_rejected_total").await {
            break n;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rejected >= 50, "{rejected}");
    // The line is written by the daemon's log thread: wait for it.
    d.wait_log("refused connection", Duration::from_secs(10))
        .await
        .unwrap();
    let lines = d
        .log_text()
        .lines()
        .filter(|l| l.contains("refused connection"))
        .count();
    assert_eq!(lines, 1, "{}", d.log_text());
}

/// Refused handshakes cost an unauthenticated peer no log line each: a
/// flood of them is one line (with the reason), the rest are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_logged_once_per_interval() {
    let d = Daemon::builder().config("").start().unwrap();
    for _ in 0..50 {
        let mut ws = RawWs::open(&d).await;
        // Not a `connect` request.
        ws.write(
            0x81,
            b"{\"type\":\"req\",\"id\":\"x\",\"method\":\"health\"}",
            true,
        )
        .await;
        assert!(ws.close_code().await.is_some());
    }
    assert!(
        d.metric("switchboard_handshake_failures_total")
            .await
            .unwrap()
            >= 50
    );
    d.wait_log("refused handshake", Duration::from_secs(10))
        .await
        .unwrap();
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused handshake"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", d.log_text());
    assert!(lines[0].contains("from 127.0.0.1:"), "{}", lines[0]);
}

/// A page that burns the failure budget of 127.0.0.1 locks out only its own
/// origin: the user's control page, with the right token, still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_lockout_does_not_lock_out_other_origins() {
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.auth]\ntoken = \"{TOKEN}\"\nmax_failures_per_minute = 3\n"
        ))
        .start()
        .unwrap();
    let hostile = "http://localhost:3000";
    let ui = format!("http://{}", d.addr);
    for _ in 0..3 {
        let mut c = Client::open_with_origin(&d.url(), hostile).await.unwrap();
        let (res, _) = connect_refused(&mut c, connect_params(Some("wrong"), &["operator.read"]))
            .await
            .unwrap();
        assert_eq!(
            res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH",
            "{res}"
        );
    }
    let mut c = Client::open_with_origin(&d.url(), hostile).await.unwrap();
    let (res, _) = connect_refused(&mut c, connect_params(Some(TOKEN), &["operator.read"]))
        .await
        .unwrap();
    assert_eq!(
        res["error"]["details"]["code"], "AUTH_RATE_LIMITED",
        "{res}"
    );
    let mut c = Client::open_with_origin(&d.url(), &ui).await.unwrap();
    let res = c.hello(Some(TOKEN), &["operator.read"]).await.unwrap();
    assert_eq!(res["ok"], true, "{res}");
}

/// A TCP connection to the daemon from `from`, another loopback address
/// (all of 127.0.0.0/8 is this machine's), so that one test can be several
/// peers.
async fn tcp_from(d: &Daemon, from: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(d.addr).await.unwrap()
}

async fn get_health_from(d: &Daemon, from: &str) -> String {
    let mut s = tcp_from(d, from).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_until_eof(&mut s, Duration::from_secs(3)).await
}

/// One address holding idle, unauthenticated sockets cannot take every
/// connection slot: past `max_unauthenticated_per_ip` it is refused 503,
/// while other addresses, and its own authenticated WebSockets, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_unauthenticated_slot() {
    let d = Daemon::builder()
        .config("[gateway.limits]\nmax_unauthenticated_per_ip = 4\n")
        .start()
        .unwrap();
    // Four sockets that send nothing, as a slow-loris peer's.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tcp_from(&d, "127.0.0.2").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = get_health_from(&d, "127.0.0.2").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("max_unauthenticated_per_ip"),
        "the refusal names the limit: {refused}"
    );
    // Another address is served meanwhile.
    let other = get_health_from(&d, "127.0.0.1").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // Authenticated WebSockets give their share back: six of them from
    // one address, held at once, with a bound of four.
    let mut operators = Vec::new();
    for i in 0..6 {
        let stream = tcp_from(&d, "127.0.0.3").await;
        let (ws, _) = tokio_tungstenite::client_async(
            d.url(),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap_or_else(|e| panic!("operator {i} refused: {e}"));
        let mut c = Client::after_upgrade(ws).await.unwrap();
        let res = c.hello(None, &["operator.read"]).await.unwrap();
        assert_eq!(res["ok"], true, "{res}");
        operators.push(c);
    }
    let health = operators[5]
        .request("h", "health", json!({}))
        .await
        .unwrap();
    assert_eq!(health["ok"], true, "{health}");
    // A closed idle socket frees its slot.
    drop(idle.pop());
    let t0 = Instant::now();
    loop {
        let again = get_health_from(&d, "127.0.0.2").await;
        if again.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{again}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        d.metric("switchboard_connections_refused_per_ip_total")
            .await
            .unwrap()
            >= 1
    );
    d.wait_log(
        "unauthenticated connections already open from 127.0.0.2",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

/// A WebSocket from `from` as a reverse proxy would open it for `client`.
async fn upgrade_through(d: &Daemon, from: &str, client: &str) -> anyhow::Result<Client> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tcp_from(d, from).await;
    let mut req = d.url().into_client_request()?;
    req.headers_mut().insert("X-Forwarded-For", client.parse()?);
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Client::after_upgrade(ws).await
}

/// Behind a trusted proxy the unauthenticated share is each client's, by
/// the address the proxy names: the proxy itself (everyone's connections)
/// is not one address holding too many, and one client past its share does
/// not shut out another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_share() {
    let d = Daemon::builder()
        .config(&format!(
            "[gateway]\ntrusted_proxies = [\"127.0.0.4\"]\n[gateway.auth]\ntoken = \"{TOKEN}\"\n\
                 [gateway.limits]\nmax_unauthenticated_per_ip = 2\n"
        ))
        .start()
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tcp_from(&d, "127.0.0.4").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = get_health_from(&d, "127.0.0.4").await;
    assert!(
        served.starts_with("HTTP/1.1 200"),
        "the proxy is not one peer: {served}"
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            upgrade_through(&d, "127.0.0.4", "203.0.113.5")
                .await
                .unwrap(),
        );
    }
    let refused = upgrade_through(&d, "127.0.0.4", "203.0.113.5")
        .await
        .err()
        .expect("a third unauthenticated WebSocket of one client is refused");
    assert!(refused.to_string().contains("503"), "{refused}");
    let mut other = upgrade_through(&d, "127.0.0.4", "203.0.113.6")
        .await
        .unwrap();
    let res = other.hello(Some(TOKEN), &["operator.read"]).await.unwrap();
    assert_eq!(res["ok"], true, "{res}");
    // Authenticating gives the share back.
    let res = held[0]
        .hello(Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    assert_eq!(res["ok"], true, "{res}");
    upgrade_through(&d, "127.0.0.4", "203.0.113.5")
        .await
        .unwrap();
    d.wait_log(
        "203.0.113.5 (through the proxy 127.0.0.4",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

/// One address cannot take every webhook body slot with stalled bodies:
/// past `max_webhook_bodies_per_ip` it gets 503, another address's webhook
/// is still taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_webhook_body_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = webhook_daemon(
        dir.path(),
        "[gateway.limits]\nmax_webhook_bodies = 16\nmax_webhook_bodies_per_ip = 2\n",
    );
    let host = d.addr.to_string();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = tcp_from(&d, "127.0.0.2").await;
        s.write_all(&stalled_post(&host)).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = tcp_from(&d, "127.0.0.2").await;
    third.write_all(&stalled_post(&host)).await.unwrap();
    let busy = read_until_eof(&mut third, Duration::from_millis(800)).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("from your address"), "{busy}");
    assert!(busy.contains("retry-after: 1"), "{busy}");
    // Another peer's webhook goes in while those two stall.
    let r = reqwest::Client::new()
        .post(d.http("/hooks/webhook/open"))
        .body(json!({"chatId": "c", "senderId": "s", "text": "in", "messageId": "m1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        d.metric("switchboard_webhook_busy_per_ip_total")
            .await
            .unwrap()
            >= 1
    );
    d.wait_log(
        "webhook bodies already being read from 127.0.0.2",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    drop(stalled);
}

/// Through a trusted proxy, webhook bodies are shared per client, by the
/// address the proxy names: one client stalling its share does not refuse
/// another client of the same proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_webhook_bodies_are_shared_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = webhook_daemon(
        dir.path(),
        "trusted_proxies = [\"127.0.0.4\"]\n\
         [gateway.limits]\nmax_webhook_bodies = 16\nmax_webhook_bodies_per_ip = 2\n",
    );
    let host = d.addr.to_string();
    let via = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = tcp_from(&d, "127.0.0.4").await;
        s.write_all(&stalled_post_with(&host, &via("198.51.100.9")))
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = tcp_from(&d, "127.0.0.4").await;
    third
        .write_all(&stalled_post_with(&host, &via("198.51.100.9")))
        .await
        .unwrap();
    let busy = read_until_eof(&mut third, Duration::from_millis(800)).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    // Another client of the same proxy is taken in meanwhile.
    let body = json!({"chatId": "c", "senderId": "s", "text": "in", "messageId": "m2"}).to_string();
    let mut other = tcp_from(&d, "127.0.0.4").await;
    other
        .write_all(
            format!(
                "POST /hooks/webhook/open HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 {}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                via("198.51.100.10"),
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let ok = read_until_eof(&mut other, Duration::from_secs(3)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    d.wait_log(
        "webhook bodies already being read from 198.51.100.9",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    drop(stalled);
}

/// Posts message `id` ("hi" from u1 in room) to the webhook channel's
/// `open` account: the status, `Retry-After` and the body.
async fn post_hi(d: &Daemon, id: String) -> (u16, Option<String>, String) {
    let body = json!({"chatId": "room", "senderId": "u1", "text": "hi", "messageId": id});
    let r = reqwest::Client::new()
        .post(d.http("/hooks/webhook/open"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (
        r.status().as_u16(),
        retry,
        r.text().await.unwrap_or_default(),
    )
}

/// `channels.<name>.max_messages_per_second`: a plugin delivering in a loop
/// gets its burst, then `deliver` fails until there is room again (the
/// plugin keeps each message and retries: nothing lost, nothing doubled);
/// a webhook past its channel's rate gets `429` before the plugin is
/// called. Another channel is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_delivering_in_a_loop_is_held_to_its_rate_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // echo: a burst of 10 s × 20 = 200 at once, then 20 a second; its
    // `run` delivers 300 back to back, retrying every 100 ms when refused.
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "echo.wasm"), ("plugins", "webhook.wasm")],
            "[channels.echo]\nmax_messages_per_second = 20\n\
             [channels.echo.accounts.a]\nenabled = false\nburst = 300\nchat = \"c\"\n\
             [channels.webhook]\nmax_messages_per_second = 1\n[channels.webhook.accounts.open]\n",
        )
        .start()
        .unwrap();
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let post = |id: String| post_hi(&d, id);
    // The webhook channel: 10 at once, then refused before its plugin.
    for i in 0..10 {
        let (st, _, body) = post(format!("w{i}")).await;
        assert_eq!(st, 200, "{body}");
    }
    let (st, retry, body) = post("w10".into()).await;
    assert_eq!((st, retry.as_deref()), (429, Some("1")), "{body}");
    assert!(
        body.contains("channels.webhook.max_messages_per_second = 1"),
        "{body}"
    );
    let t0 = Instant::now();
    let r = op
        .request(
            "st",
            "channels.start",
            json!({"channel": "echo", "accountId": "a"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    // (echo's last message, its latency statistics, is delivered once and
    // not retried: refused here, it is echo's to drop.)
    let mut ids = Vec::new();
    while ids.len() < 300 {
        let m = op
            .next_message(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e} after {ids:?}\n{}", d.log_text()));
        let id = m["messageId"].as_str().unwrap_or_default();
        if m["channel"] == "echo" && id != "burst-a-stats" {
            ids.push(id.to_string());
        }
    }
    // The 100 past the burst came at 20 a second at most.
    assert!(
        t0.elapsed() >= Duration::from_millis(4500),
        "{:?}",
        t0.elapsed()
    );
    let want: Vec<String> = (0..300).map(|i| format!("burst-a-{i}")).collect();
    assert_eq!(ids, want, "every message once, in order");
    d.wait_log(
        "channel `echo` delivers more than channels.echo.max_messages_per_second = 20",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The webhook's 429 and echo's refused delivers, counted.
    let refused = d
        .metric("switchboard_deliveries_rate_limited_total")
        .await
        .unwrap();
    assert!(refused >= 2, "{refused}");
    // The webhook channel's refused message is taken once there is room.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, body) = post("w10".into()).await;
    assert_eq!(st, 200, "{body}");
    let webhook: Vec<String> = op
        .history_after(0)
        .await
        .unwrap()
        .iter()
        .filter(|m| m["channel"] == "webhook")
        .map(|m| m["messageId"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(webhook.len(), 11, "{webhook:?}");
    // The bound is live: lifted by a reload, a burst past it goes through.
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let tmp = d.config_path.with_extension("tmp");
    std::fs::write(
        &tmp,
        text.replace(
            "[channels.webhook]\nmax_messages_per_second = 1",
            "[channels.webhook]\nmax_messages_per_second = 0",
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &d.config_path).unwrap();
    d.signal("HUP");
    let line = d
        .wait_log("configuration reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains("channels.webhook.max_messages_per_second"),
        "{line}"
    );
    for i in 11..40 {
        let (st, _, body) = post(format!("w{i}")).await;
        assert_eq!(st, 200, "{body}");
    }
}

/// A redelivery (a message the log holds already: a webhook sender's
/// retry, a plugin fetching again after a restart) does not take a new
/// message's room in `max_messages_per_second`, up to an allowance of the
/// same rate; past it, redeliveries count too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_do_not_take_new_messages_room_up_to_their_own_allowance() {
    let dir = tempfile::tempdir().unwrap();
    // A burst of 10 s × 1 = 10 new messages, and 10 redeliveries.
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "webhook.wasm")],
            "[channels.webhook]\nmax_messages_per_second = 1\n[channels.webhook.accounts.open]\n",
        )
        .start()
        .unwrap();
    let post = |id: &str| post_hi(&d, id.to_string());
    let t0 = Instant::now();
    let (st, _, body) = post("w0").await;
    assert_eq!(st, 200, "{body}");
    // 15 redeliveries of w0: all taken (a redelivery is never refused
    // while there is room); the first 10 cost nothing, the last 5 count.
    for i in 0..15 {
        let (st, _, body) = post("w0").await;
        assert_eq!(st, 200, "redelivery {i}: {body}");
    }
    // Room is left for 10 - 1 - 5 = 4 new messages (and whatever the rate
    // gave back since t0, one a second).
    let mut taken = 0;
    loop {
        let (st, _, body) = post(&format!("w{}", taken + 1)).await;
        if st == 429 {
            assert!(body.contains("max_messages_per_second = 1"), "{body}");
            break;
        }
        assert_eq!(st, 200, "{body}");
        taken += 1;
        assert!(taken < 20, "never refused");
    }
    let refilled = t0.elapsed().as_secs_f64() as usize;
    assert!(
        (4..=4 + refilled).contains(&taken),
        "{taken} new messages taken after 15 redeliveries ({refilled} s of refill)"
    );
    // w0 is in the log once.
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let ids = op.logged_ids().await.unwrap();
    assert_eq!(ids.iter().filter(|i| *i == "w0").count(), 1, "{ids:?}");
    assert_eq!(ids.len(), 1 + taken, "{ids:?}");
}

fn token_daemon() -> Daemon {
    Daemon::builder()
        .config(&format!("[gateway.auth]\ntoken = \"{TOKEN}\"\n"))
        .start()
        .unwrap()
}

/// Connects `n` clients one after another (`params(i)` for the i-th) and
/// closes each; panics when one hangs.
async fn connect_and_close(url: &str, n: usize, params: impl Fn(usize) -> Value) {
    for i in 0..n {
        let step = async {
            let (mut c, _) = connect_with(url, params(i)).await?;
            c.ws.close(None).await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(10), step)
            .await
            .unwrap_or_else(|_| panic!("connection {i} hung with the log's reader stalled"))
            .unwrap();
    }
}

/// A reader of the daemon's log that stops draining it (`switchboard | less`
/// left on a page, a stuck log shipper) must not stop the gateway: with
/// the log written from the tasks, the pipe fills after a few hundred
/// lines and every task that logs blocks on it, the handshakes and the
/// `health` below with them. Once the reader drains again, every line
/// is there, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_does_not_stop_the_gateway() {
    let d = token_daemon();
    let url = d.url();
    let stall = d.stall_log();
    // Each connection logs two lines of about 200 bytes (open, closed):
    // 600 connections are several times what a pipe holds.
    let n = 600;
    connect_and_close(&url, n, |_| connect_params(Some(TOKEN), &["operator.read"])).await;
    let (mut c, _) = connect(&url, Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    let health = tokio::time::timeout(Duration::from_secs(10), c.request("h", "health", json!({})))
        .await
        .expect("health hung with the log's reader stalled")
        .unwrap();
    assert_eq!(health["payload"]["ok"], true, "{health}");
    drop(stall);
    // Nothing was dropped (well under the buffer's bound) and the order held.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let closed = d.log_text().matches("connection closed").count();
        if closed >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closed} of {n} `connection closed` lines:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log_text();
    assert!(!log.contains("log lines were dropped"), "{log}");
    let first_open = log.find("connection open").unwrap();
    let first_closed = log.find("connection closed").unwrap();
    assert!(first_open < first_closed);
}

/// Past the log's bound (1 MiB of lines held for a stalled reader), lines
/// are dropped, not waited for, and the log says how many once its reader
/// drains again; logging goes on after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_past_the_bound_are_dropped_and_counted() {
    let d = token_daemon();
    let url = d.url();
    let stall = d.stall_log();
    // Connect with a long client id until the lines logged pass the bound
    // and what a pipe holds (each connection logs its client id twice).
    let id = "x".repeat(250);
    let params = |i: usize| {
        let mut p = connect_params(Some(TOKEN), &["operator.read"]);
        p["client"]["id"] = json!(id);
        p["client"]["instanceId"] = json!(format!("i{i}"));
        p
    };
    let n = 1 + (1024 * 1024 + 64 * 1024) / 500;
    connect_and_close(&url, n, params).await;
    drop(stall);
    let notice = d
        .wait_log("log lines were dropped", Duration::from_secs(20))
        .await
        .unwrap();
    let dropped: usize = notice
        .split("dropped=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no count in {notice}"));
    let kept = d.log_text().matches("connection closed").count();
    assert!(
        dropped > 0 && kept < n,
        "{dropped} dropped, {kept} of {n} kept"
    );
    // The log goes on.
    let (c, _) = connect(&url, Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches("connection closed").count() <= kept {
        assert!(Instant::now() < deadline, "no line logged after the notice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Text from outside that reaches the log (here the `type` of a frame a
/// client sent, quoted in the line that says why it was refused) cannot
/// forge a line of its own nor send a terminal escape sequence: each
/// event is one line, its control characters escaped. (A client's names,
/// which every line about its connection carries, may hold none at all:
/// `connect` refuses them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_log_lines() {
    let d = Daemon::builder().config("").start().unwrap();
    let forged = "2026-11-29T00:00:00.000000Z  INFO switchboard: FORGED";
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let kind = format!("x\n{forged}\x1b]0;owned\x07\r");
    c.send_text(&json!({"type": kind, "id": "1"}).to_string())
        .await
        .unwrap();
    let line = d
        .wait_log("invalid frame", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains(&format!("`x\\n{forged}\\x1b]0;owned\\x07\\r`")),
        "{line}"
    );
    let log = d.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line: {log}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
}
