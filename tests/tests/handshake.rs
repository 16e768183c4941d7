//! The handshake table of protocol.md, auth, scopes, device proofs, rate
//! limiting and Origin checks, against the real daemon.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchboard_tests::*;

const TOKEN: &str = "test-token-123";

fn daemon_with(extra: &str) -> Daemon {
    Daemon::builder()
        .config(&format!("[gateway.auth]\ntoken = \"{TOKEN}\"\n{extra}"))
        .start()
        .expect("start daemon")
}

#[tokio::test]
async fn hello_ok_has_the_protocol_shape() {
    let d = daemon_with("");
    let (_c, hello) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    assert_eq!(hello["type"], "hello-ok");
    assert_eq!(hello["protocol"], 4);
    assert!(hello["server"]["connId"].as_str().unwrap().len() > 8);
    let methods: Vec<&str> = hello["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for m in ["health", "status", "system-presence", "channels.status"] {
        assert!(methods.contains(&m), "{methods:?}");
    }
    assert!(hello["features"]["events"]
        .as_array()
        .unwrap()
        .contains(&json!("tick")));
    assert_eq!(
        hello["auth"],
        json!({"role": "operator", "scopes": ["operator.read"]})
    );
    assert_eq!(hello["policy"]["maxPayload"], 26214400);
    assert_eq!(hello["policy"]["tickIntervalMs"], 30000);
    // The snapshot's presence holds the gateway and this client.
    let presence = hello["snapshot"]["presence"].as_array().unwrap();
    assert_eq!(presence.len(), 2, "{presence:?}");
    assert_eq!(presence[0]["mode"], "gateway");
    assert_eq!(hello["snapshot"]["health"]["ok"], true);
    assert!(
        hello["snapshot"]["stateVersion"]["presence"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn protocol_mismatch_closes_1002() {
    let d = daemon_with("");
    let mut c = Client::open(&d.url()).await.unwrap();
    let mut p = connect_params(Some(TOKEN), &["operator.read"]);
    p["minProtocol"] = json!(2);
    p["maxProtocol"] = json!(3);
    let (res, closed) = connect_refused(&mut c, p).await.unwrap();
    assert_eq!(res["ok"], false);
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert!(res["error"]["message"]
        .as_str()
        .unwrap()
        .contains("protocol mismatch"));
    assert_eq!(res["error"]["details"]["code"], "PROTOCOL_MISMATCH");
    assert_eq!(res["error"]["details"]["expectedProtocol"], 4);
    assert_eq!(closed.code, 1002);
}

#[tokio::test]
async fn wrong_and_missing_token_close_1008() {
    let d = daemon_with("");
    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, closed) = connect_refused(&mut c, connect_params(Some("wrong"), &["operator.read"]))
        .await
        .unwrap();
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert!(res["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("unauthorized:"));
    assert_eq!(res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
    assert_eq!(closed.code, 1008);

    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, closed) = connect_refused(&mut c, connect_params(None, &["operator.read"]))
        .await
        .unwrap();
    assert_eq!(res["error"]["details"]["code"], "AUTH_REQUIRED");
    assert_eq!(closed.code, 1008);
    assert_eq!(
        d.metric("switchboard_auth_failures_total").await.unwrap(),
        2
    );
}

#[tokio::test]
async fn password_auth() {
    let d = Daemon::builder()
        .config("[gateway.auth]\npassword = \"pw\"\n")
        .start()
        .unwrap();
    let mut p = connect_params(None, &["operator.read"]);
    p["auth"] = json!({"password": "pw"});
    connect_with(&d.url(), p.clone()).await.unwrap();
    p["auth"] = json!({"password": "nope"});
    let mut c = Client::open(&d.url()).await.unwrap();
    let (res, closed) = connect_refused(&mut c, p).await.unwrap();
    assert_eq!(res["error"]["details"]["code"], "AUTH_PASSWORD_MISMATCH");
    assert_eq!(closed.code, 1008);
}

#[tokio::test]
async fn first_request_must_be_connect() {
    let d = daemon_with("");
    let mut c = Client::open(&d.url()).await.unwrap();
    c.send(&json!({"type": "req", "id": "x", "method": "health", "params": {}}))
        .await
        .unwrap();
    let (closed, frames) = c.expect_close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["id"], "x");
    assert_eq!(
        frames[0]["error"]["message"],
        "invalid handshake: first request must be connect"
    );
    assert_eq!(closed.code, 1008);
}

#[tokio::test]
async fn non_request_first_frames_close_1008() {
    let d = daemon_with("");
    for bad in [
        "not json at all",
        "[1,2,3]",
        r#"{"type":"event","event":"x"}"#,
        r#"{"type":"req","method":"connect"}"#,
    ] {
        let mut c = Client::open(&d.url()).await.unwrap();
        c.send_text(bad).await.unwrap();
        let (closed, frames) = c.expect_close(Duration::from_secs(5)).await.unwrap();
        assert!(frames.is_empty(), "{bad}: {frames:?}");
        assert_eq!(
            closed,
            Closed {
                code: 1008,
                reason: "invalid request frame".into()
            },
            "{bad}"
        );
    }
    // A request with unknown fields is answered, then closed.
    let mut c = Client::open(&d.url()).await.unwrap();
    c.send_text(r#"{"type":"req","id":"9","method":"connect","params":{},"bogus":1}"#)
        .await
        .unwrap();
    let (closed, frames) = c.expect_close(Duration::from_secs(5)).await.unwrap();
    assert!(frames[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bogus"));
    assert_eq!(closed.code, 1008);
}

#[tokio::test]
async fn connect_params_are_strict() {
    let d = daemon_with("");
    let mut c = Client::open(&d.url()).await.unwrap();
    let mut p = connect_params(Some(TOKEN), &["operator.read"]);
    p["client"]["favouriteColour"] = json!("blue");
    let (res, closed) = connect_refused(&mut c, p).await.unwrap();
    assert!(res["error"]["message"]
        .as_str()
        .unwrap()
        .contains("favouriteColour"));
    assert_eq!(closed.code, 1008);
}

#[tokio::test]
async fn handshake_timeout_closes_1008() {
    let d = daemon_with("[gateway.limits]\nhandshake_timeout_ms = 300\n");
    let mut c = Client::open(&d.url()).await.unwrap();
    let t0 = std::time::Instant::now();
    let (closed, _) = c.expect_close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed.code, 1008);
    assert_eq!(closed.reason, "handshake timeout");
    assert!(t0.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn preauth_frame_cap_and_post_auth_payload() {
    let d = daemon_with("");
    // 70 KiB before connect: refused before the payload is even read.
    let mut c = Client::open(&d.url()).await.unwrap();
    let big = format!(
        r#"{{"type":"req","id":"1","method":"connect","params":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    c.send_text(&big).await.unwrap();
    let (closed, _) = c.expect_close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed.code, 1009, "{closed:?}");
    // After connect the same size is accepted (and answered with a params error).
    let (mut c, _) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    let res = c
        .request("big", "health", json!({"pad": "x".repeat(70 * 1024)}))
        .await
        .unwrap();
    assert_eq!(res["ok"], false);
    assert!(res["error"]["message"].as_str().unwrap().contains("pad"));
    // The connection is still usable.
    let res = c.request("h", "health", json!({})).await.unwrap();
    assert_eq!(res["ok"], true);
}

#[tokio::test]
async fn scopes_are_enforced_and_never_gained() {
    let d = daemon_with(
        "[[gateway.auth.tokens]]\nname = \"dash\"\ntoken = \"ro-token\"\nscopes = [\"operator.read\"]\n",
    );
    // The read-only token asks for admin: it gets read only.
    let (mut c, hello) = connect(
        &d.url(),
        Some("ro-token"),
        &["operator.admin", "operator.read"],
    )
    .await
    .unwrap();
    assert_eq!(hello["auth"]["scopes"], json!(["operator.read"]));
    let res = c.request("1", "health", json!({})).await.unwrap();
    assert_eq!(res["ok"], true);
    // A client that asked for no scope cannot read.
    let (mut c, hello) = connect(&d.url(), Some(TOKEN), &[]).await.unwrap();
    assert_eq!(hello["auth"]["scopes"], json!([]));
    let res = c.request("2", "status", json!({})).await.unwrap();
    assert_eq!(res["ok"], false);
    assert_eq!(res["error"]["code"], "FORBIDDEN");
    assert_eq!(res["error"]["message"], "missing scope: operator.read");
    assert_eq!(
        res["error"]["details"],
        json!({"code": "MISSING_SCOPE", "missingScope": "operator.read", "requiredScopes": ["operator.read"]})
    );
    // write implies read.
    let (mut c, _) = connect(&d.url(), Some(TOKEN), &["operator.write"])
        .await
        .unwrap();
    assert_eq!(
        c.request("3", "channels.status", json!({})).await.unwrap()["ok"],
        true
    );
    // Unknown method.
    let res = c.request("4", "nope.nothing", json!({})).await.unwrap();
    assert_eq!(res["error"]["message"], "unknown method: nope.nothing");
    // A scoped token limited to operators cannot connect as a node.
    let mut c = Client::open(&d.url()).await.unwrap();
    let mut p = connect_params(Some("ro-token"), &["operator.read"]);
    p["role"] = json!("node");
    let (res, closed) = connect_refused(&mut c, p).await.unwrap();
    assert_eq!(res["error"]["details"]["code"], "AUTH_SCOPE_MISMATCH");
    assert_eq!(closed.code, 1008);
}

/// Builds connect params for a device and the challenge it answers.
type MakeParams = Box<dyn Fn(&Device, &Client) -> Value>;

struct Device {
    key: SigningKey,
    id: String,
    public: String,
}

fn device() -> Device {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pk = key.verifying_key().to_bytes();
    Device {
        id: hex::encode(Sha256::digest(pk)),
        public: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk),
        key,
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn signed_params(
    dev: &Device,
    signer: &SigningKey,
    nonce: &str,
    signed_at: u64,
    v3: bool,
) -> Value {
    let mut p = connect_params(Some(TOKEN), &["operator.read"]);
    let base = format!(
        "{}|{}|cli|cli|operator|operator.read|{signed_at}|{TOKEN}|{nonce}",
        if v3 { "v3" } else { "v2" },
        dev.id
    );
    let msg = if v3 {
        format!("{base}|linux|linux")
    } else {
        base
    };
    p["device"] = json!({
        "id": dev.id, "publicKey": dev.public,
        "signature": b64(&signer.sign(msg.as_bytes()).to_bytes()),
        "signedAt": signed_at, "nonce": nonce,
    });
    p
}

#[tokio::test]
async fn device_proofs_accepted_and_forgeries_rejected() {
    let d = daemon_with("");
    for v3 in [true, false] {
        let dev = device();
        let mut c = Client::open(&d.url()).await.unwrap();
        let p = signed_params(&dev, &dev.key, &c.nonce.clone(), c.challenge_ts, v3);
        let res = c.request("c1", "connect", p).await.unwrap();
        assert_eq!(res["ok"], true, "v3={v3}: {res}");
        let pres = c.request("p", "system-presence", json!({})).await.unwrap();
        assert!(pres["payload"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["deviceId"] == dev.id.as_str()));
    }
    let cases: Vec<(&str, MakeParams)> = vec![
        // Signed by another key.
        (
            "DEVICE_AUTH_SIGNATURE_INVALID",
            Box::new(|dev, c| {
                let other = SigningKey::generate(&mut rand::rngs::OsRng);
                signed_params(dev, &other, &c.nonce, c.challenge_ts, true)
            }),
        ),
        // A nonce from another challenge.
        (
            "DEVICE_AUTH_NONCE_MISMATCH",
            Box::new(|dev, c| signed_params(dev, &dev.key, "not-the-nonce", c.challenge_ts, true)),
        ),
        // Signed three minutes ago.
        (
            "DEVICE_AUTH_SIGNATURE_EXPIRED",
            Box::new(|dev, c| {
                signed_params(dev, &dev.key, &c.nonce, c.challenge_ts - 180_000, true)
            }),
        ),
        // Device id that is not the key's hash.
        (
            "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            Box::new(|dev, c| {
                let mut p = signed_params(dev, &dev.key, &c.nonce, c.challenge_ts, true);
                p["device"]["id"] = json!("00".repeat(32));
                p
            }),
        ),
        // Scopes changed after signing (asks for admin with a read signature).
        (
            "DEVICE_AUTH_SIGNATURE_INVALID",
            Box::new(|dev, c| {
                let mut p = signed_params(dev, &dev.key, &c.nonce, c.challenge_ts, true);
                p["scopes"] = json!(["operator.admin"]);
                p
            }),
        ),
    ];
    for (code, make) in cases {
        let dev = device();
        let mut c = Client::open(&d.url()).await.unwrap();
        let p = make(&dev, &c);
        let (res, closed) = connect_refused(&mut c, p).await.unwrap();
        assert_eq!(res["error"]["details"]["code"], code, "{res}");
        assert_eq!(closed.code, 1008);
    }
}

#[tokio::test]
async fn failed_auth_is_rate_limited_per_ip() {
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.auth]\ntoken = \"{TOKEN}\"\nmax_failures_per_minute = 3\n"
        ))
        .start()
        .unwrap();
    let origin = format!("http://{}", d.addr);
    // Loopback without an Origin is exempt: many failures, never limited.
    for _ in 0..5 {
        let mut c = Client::open(&d.url()).await.unwrap();
        let (res, _) = connect_refused(&mut c, connect_params(Some("bad"), &[]))
            .await
            .unwrap();
        assert_eq!(res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
    }
    // With a browser Origin, loopback is not exempt.
    for _ in 0..3 {
        let mut c = Client::open_with_origin(&d.url(), &origin).await.unwrap();
        let (res, _) = connect_refused(&mut c, connect_params(Some("bad"), &[]))
            .await
            .unwrap();
        assert_eq!(res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
    }
    // Now even the right token is refused until the window passes.
    let mut c = Client::open_with_origin(&d.url(), &origin).await.unwrap();
    let (res, closed) = connect_refused(&mut c, connect_params(Some(TOKEN), &["operator.read"]))
        .await
        .unwrap();
    assert_eq!(res["error"]["code"], "UNAVAILABLE");
    assert!(res["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("rate limited"));
    let retry = res["error"]["retryAfterMs"].as_u64().unwrap();
    assert!(retry > 50_000 && retry <= 60_000, "{retry}");
    assert_eq!(res["error"]["retryable"], true);
    assert_eq!(closed.code, 1008);
}

/// Fails `n` handshakes with a bad token through headers `via`; each must
/// be refused for the token (not yet rate limited).
async fn fail_auth(d: &Daemon, via: &[(&str, &str)], n: usize) {
    for i in 0..n {
        let mut c = Client::open_with_headers(&d.url(), via).await.unwrap();
        let (res, _) = connect_refused(&mut c, connect_params(Some("bad"), &[]))
            .await
            .unwrap();
        assert_eq!(
            res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH",
            "failure {i} via {via:?}: {res}"
        );
    }
}

/// The right token through headers `via`: refused as rate limited, or not.
async fn rate_limited(d: &Daemon, via: &[(&str, &str)]) -> bool {
    let mut c = Client::open_with_headers(&d.url(), via).await.unwrap();
    let res = c.hello(Some(TOKEN), &["operator.read"]).await.unwrap();
    if res["ok"] == true {
        return false;
    }
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("rate limited"),
        "{res}"
    );
    true
}

/// A reverse proxy on the gateway's machine makes every client look like
/// loopback. Proxy headers from a peer not in `gateway.trusted_proxies`
/// cost the loopback exemption; through a trusted proxy each client is
/// limited by the address the proxy names (right to left, so a client
/// cannot name another), and shows in presence by it.
#[tokio::test]
async fn clients_through_a_reverse_proxy_are_limited_by_their_own_address() {
    let d = daemon_with(
        "max_failures_per_minute = 2
",
    );
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Loopback without proxy headers: exempt, as before.
    fail_auth(&d, &[], 4).await;
    assert!(!rate_limited(&d, &[]).await);
    // The same peer with X-Forwarded-For, no proxy trusted: not exempt.
    fail_auth(&d, &xff("203.0.113.5"), 2).await;
    assert!(rate_limited(&d, &xff("203.0.113.5")).await);
    // ... and not believed: every such client is the proxy's address.
    assert!(rate_limited(&d, &xff("198.51.100.2")).await);
    d.wait_log("is not in gateway.trusted_proxies", Duration::from_secs(10))
        .await
        .unwrap();
    drop(d);

    let d = daemon_with(
        "max_failures_per_minute = 2
[gateway]
trusted_proxies = [\"127.0.0.1\"]
",
    );
    fail_auth(&d, &xff("203.0.113.5"), 2).await;
    assert!(rate_limited(&d, &xff("203.0.113.5")).await);
    // A client naming another address at the left is still itself: the
    // proxy appends the address it saw.
    assert!(rate_limited(&d, &xff("198.51.100.2, 203.0.113.5")).await);
    // Another client of the proxy has its own budget, and is listed by
    // its address.
    let mut c = Client::open_with_headers(&d.url(), &xff("198.51.100.2"))
        .await
        .unwrap();
    let res = c.hello(Some(TOKEN), &["operator.read"]).await.unwrap();
    assert_eq!(res["ok"], true, "{res}");
    let p = c.request("p", "system-presence", json!({})).await.unwrap();
    assert!(
        p["payload"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["ip"] == "198.51.100.2")),
        "{p}"
    );
    // A client the proxy names 127.0.0.1 is not exempt (anyone could say
    // so through a proxy that passes the header on); the machine itself,
    // directly, is.
    fail_auth(&d, &xff("127.0.0.1"), 2).await;
    assert!(rate_limited(&d, &xff("127.0.0.1")).await);
    fail_auth(&d, &[], 3).await;
    assert!(!rate_limited(&d, &[]).await);
}

/// A gateway without credentials answers only this machine: a request
/// through a proxy for anyone else is refused, even with a loopback `Host`
/// (nginx sends `Host: 127.0.0.1:<port>` unless told otherwise).
#[tokio::test]
async fn a_gateway_without_credentials_refuses_clients_through_a_proxy() {
    for trusted in ["", "[gateway]\ntrusted_proxies = [\"127.0.0.1\"]\n"] {
        let d = Daemon::builder().config(trusted).start().unwrap();
        // A client naming itself 127.0.0.1 is no better: a proxy passing
        // the header through would let anyone say so.
        for client in ["203.0.113.5", "127.0.0.1"] {
            let err = Client::open_with_headers(&d.url(), &[("X-Forwarded-For", client)])
                .await
                .err()
                .expect("refused");
            assert!(
                err.to_string().contains("403"),
                "{trusted}, {client}: {err}"
            );
        }
        let r = reqwest::Client::new()
            .get(d.http("/metrics"))
            .header("X-Real-IP", "203.0.113.5")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{trusted}");
        let body = r.text().await.unwrap();
        assert!(body.contains("set a token"), "{body}");
        // This machine, directly, is served.
        let (_c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
        assert!(
            d.metric("switchboard_proxied_rejections_total")
                .await
                .unwrap()
                >= 3
        );
    }
}

#[tokio::test]
async fn foreign_origin_gets_403_before_upgrade() {
    let d = daemon_with("[gateway]\nallowed_origins = [\"https://console.example\"]\n");
    let err = Client::open_with_origin(&d.url(), "https://evil.example")
        .await
        .err()
        .expect("must be refused");
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(
        d.metric("switchboard_origin_rejections_total")
            .await
            .unwrap(),
        1
    );
    // Listed and same-host origins are allowed.
    Client::open_with_origin(&d.url(), "https://console.example")
        .await
        .unwrap();
    Client::open_with_origin(&d.url(), &format!("http://{}", d.addr))
        .await
        .unwrap();
}
