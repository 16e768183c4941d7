//! Configuration hot reload against the real daemon: an invalid edit
//! changes nothing (and says which key, on which line), a valid one is
//! applied account by account under a live `send` load without a failed
//! call on the accounts it does not touch; restart-only keys are reported;
//! a removed token closes its connections 1008; SIGHUP re-reads the file;
//! `config.get` redacts secrets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;

const TOKEN: &str = "reload-token";

fn rewrite(d: &Daemon, f: impl FnOnce(&str) -> String) {
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    // As an editor saving: a new file renamed over the old one.
    let tmp = d.config_path.with_extension("tmp");
    std::fs::write(&tmp, f(&text)).unwrap();
    std::fs::rename(&tmp, &d.config_path).unwrap();
}

async fn account(c: &mut Client, channel: &str, id: &str) -> Option<Value> {
    let r = c.request("st", "channels.status", json!({})).await.unwrap();
    r["payload"]["channelAccounts"][channel]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["accountId"] == id).cloned())
}

async fn until_running(c: &mut Client, channel: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = account(c, channel, id).await {
            if a["running"] == true && a["connected"] == true {
                return a;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}/{id} never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next heartbeat (echo's `interval_secs`) from `chat`.
async fn heartbeat_from(c: &mut Client, chat: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = c.next_message(left).await.unwrap();
        if m["chatId"] == chat && m["direction"] == "inbound" {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_account_by_account_under_a_live_send_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "echo.wasm")],
            &format!(
                "[gateway.auth]\ntoken = \"{TOKEN}\"\n\n[channels.echo]\n\n\
                 [channels.echo.accounts.keep]\ninterval_secs = 0\n\n\
                 [channels.echo.accounts.changed]\ninterval_secs = 1\nchat = \"before\"\n\n\
                 [channels.echo.accounts.gone]\ninterval_secs = 0\n"
            ),
        )
        .start()
        .unwrap();
    let (mut admin, _) = connect(&d.url(), Some(TOKEN), &["operator.admin"])
        .await
        .unwrap();
    let keep_before = until_running(&mut admin, "echo", "keep").await;
    until_running(&mut admin, "echo", "changed").await;
    heartbeat_from(&mut admin, "before").await;

    // A steady `send` load on the account no edit touches.
    let (mut sender, _) = connect(&d.url(), Some(TOKEN), &["operator.write"])
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut n = 0;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = sender
                    .request(
                        &format!("s{n}"),
                        "send",
                        json!({"channel": "echo", "accountId": "keep", "to": "c", "message": "m", "idempotencyKey": format!("k{n}")}),
                    )
                    .await
                    .unwrap();
                if r["ok"] == true {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(r);
                }
            }
            errors
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. An invalid edit: nothing changes; the error names key and line.
    rewrite(&d, |t| format!("{t}\n[gateway.limits]\nnot_a_limit = 5\n"));
    let ev = admin
        .next_event("config", Duration::from_secs(10))
        .await
        .unwrap();
    let err = ev["payload"]["error"].as_str().unwrap().to_string();
    assert_eq!(ev["payload"]["ok"], false, "{ev}");
    assert_eq!(ev["payload"]["applied"], false, "{ev}");
    assert_eq!(ev["payload"]["changed"], json!([]), "{ev}");
    assert!(err.contains("not_a_limit") && err.contains("line"), "{err}");
    let h = admin.request("h", "health", json!({})).await.unwrap();
    assert_eq!(h["payload"]["config"]["error"], err.as_str(), "{h}");
    let got = admin.request("g", "config.get", json!({})).await.unwrap();
    assert_eq!(got["payload"]["fileError"], err.as_str());
    assert!(got["payload"]["config"]["channels"]["echo"]["accounts"]["gone"].is_object());
    assert!(d
        .wait_log("configuration not reloaded", Duration::from_secs(1))
        .await
        .is_ok());

    // 2. A valid edit: one account's settings change, one goes, one comes,
    // and a restart-only key asks to change.
    rewrite(&d, |t| {
        let t = t.replace("\n[gateway.limits]\nnot_a_limit = 5\n", "");
        let t = t.replace("chat = \"before\"", "chat = \"after\"");
        let t = t.replace("[channels.echo.accounts.gone]\ninterval_secs = 0\n", "");
        format!("{t}\n[channels.echo.accounts.fresh]\ninterval_secs = 0\n\n[gateway]\ntick_interval_ms = 12345\n")
    });
    let ev = admin
        .next_event("config", Duration::from_secs(10))
        .await
        .unwrap();
    let p = &ev["payload"];
    assert_eq!(p["ok"], true, "{ev}");
    let changes: Vec<&str> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        changes.contains(&"channels.echo.accounts.changed: settings changed, restarted"),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"channels.echo.accounts.gone: removed, stopped"),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"channels.echo.accounts.fresh: added, started"),
        "{changes:?}"
    );
    assert!(!changes.iter().any(|c| c.contains("keep")), "{changes:?}");
    assert_eq!(p["needsRestart"], json!(["gateway.tick_interval_ms"]));
    // protocol.md's shape: applied, and the keys that took effect.
    assert_eq!(p["applied"], true, "{ev}");
    let changed = p["changed"].as_array().unwrap();
    for key in [
        "channels.echo.accounts.changed",
        "channels.echo.accounts.gone",
        "channels.echo.accounts.fresh",
    ] {
        assert!(changed.contains(&json!(key)), "{key}: {ev}");
    }
    assert_eq!(changed.len(), changes.len(), "{ev}");

    until_running(&mut admin, "echo", "fresh").await;
    assert!(account(&mut admin, "echo", "gone").await.is_none());
    // The restarted account runs with its new settings.
    heartbeat_from(&mut admin, "after").await;
    // The untouched account was never restarted.
    let keep_after = account(&mut admin, "echo", "keep").await.unwrap();
    assert_eq!(keep_after["lastStartAt"], keep_before["lastStartAt"]);
    assert_eq!(keep_after["running"], true);
    // A send to the new account works; one to the removed account is refused by name.
    let r = admin
        .request("f", "send", json!({"channel": "echo", "accountId": "fresh", "to": "c", "message": "m", "idempotencyKey": "fresh-1"}))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let r = admin
        .request("g", "send", json!({"channel": "echo", "accountId": "gone", "to": "c", "message": "m", "idempotencyKey": "gone-1"}))
        .await
        .unwrap();
    assert_refused_saying(&r, "unknown account gone");
    // The error is gone from health; the running tick interval stays.
    let h = admin.request("h2", "health", json!({})).await.unwrap();
    assert!(h["payload"]["config"].is_null(), "{h}");
    let got = admin.request("g2", "config.get", json!({})).await.unwrap();
    let cfg = &got["payload"]["config"];
    assert_eq!(cfg["gateway"]["tick_interval_ms"], 30000);
    assert_eq!(cfg["gateway"]["auth"]["token"], "<redacted>");
    assert!(!got.to_string().contains(TOKEN));
    assert_eq!(got["payload"]["path"], d.config_path.display().to_string());

    stop.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();
    assert!(
        errors.is_empty(),
        "sends to the untouched account failed: {errors:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 20,
        "{} sends",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_removed_token_closes_its_connections_1008() {
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.auth]\ntoken = \"{TOKEN}\"\n\n[[gateway.auth.tokens]]\nname = \"dash\"\ntoken = \"dash-secret\"\nscopes = [\"operator.read\"]\n"
        ))
        .start()
        .unwrap();
    let (mut main, _) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    let (mut dash, _) = connect(&d.url(), Some("dash-secret"), &["operator.read"])
        .await
        .unwrap();
    rewrite(&d, |t| {
        t.replace(
            "\n[[gateway.auth.tokens]]\nname = \"dash\"\ntoken = \"dash-secret\"\nscopes = [\"operator.read\"]\n",
            "",
        )
    });
    let (closed, _) = dash.expect_close(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "token revoked")
    );
    // The other token's connection stays; the removed token no longer connects.
    let h = main.request("h", "health", json!({})).await.unwrap();
    assert_eq!(h["ok"], true);
    assert!(connect(&d.url(), Some("dash-secret"), &["operator.read"])
        .await
        .is_err());
}

#[tokio::test]
async fn sighup_rereads_the_file_when_it_is_not_watched() {
    let d = Daemon::builder()
        .config(&format!(
            "watch_config = false\n\n[gateway.auth]\ntoken = \"{TOKEN}\"\n"
        ))
        .start()
        .unwrap();
    rewrite(&d, |t| {
        format!("{t}\n[[gateway.auth.tokens]]\nname = \"new\"\ntoken = \"new-secret\"\nscopes = [\"operator.read\"]\n")
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        connect(&d.url(), Some("new-secret"), &["operator.read"])
            .await
            .is_err(),
        "an unwatched file was applied without SIGHUP"
    );
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    let (mut c, _) = connect(&d.url(), Some("new-secret"), &["operator.read"])
        .await
        .unwrap();
    // The same process answers (SIGHUP does not end it).
    assert_eq!(
        c.request("h", "health", json!({})).await.unwrap()["ok"],
        true
    );
}

/// An edit refused because of a line that holds a secret does not show
/// that secret: the error (in `health`, which every `operator.read` client
/// may call, and in the log) gives the line and column but not the line,
/// and leaves out what the message quotes. A refused edit elsewhere still
/// shows its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_does_not_show_a_secret_to_readers() {
    let d = Daemon::builder()
        .config(&format!("[gateway.auth]\ntoken = \"{TOKEN}\"\n"))
        .start()
        .unwrap();
    let (mut reader, _) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    let original = std::fs::read_to_string(&d.config_path).unwrap();
    let mut last = String::new();
    for (edit, secret) in [
        // A numeric password (a string is expected): serde quotes the value.
        ("password = 98127364", "98127364"),
        // A missing quote: TOML shows the line.
        ("password = \"hunter2-s3cret", "hunter2-s3cret"),
        // In an inline table under a key that is not secret.
        (
            "[channels.irc.accounts.a]\nsasl = { username = \"u\", password = \"pw-0x5eed }",
            "pw-0x5eed",
        ),
        // An unterminated `${`: the expansion quoted the string.
        ("password = \"ab${c-d9d9\"", "c-d9d9"),
    ] {
        rewrite(&d, |_| format!("{original}{edit}\n"));
        let err = loop {
            let h = reader.request("h", "health", json!({})).await.unwrap();
            let e = h["payload"]["config"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !e.is_empty() && e != last {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        last = err.clone();
        assert!(
            err.contains("line") || err.contains("gateway.auth.password"),
            "{edit}: {err}"
        );
        assert!(!err.contains(secret), "{edit}: the secret is shown: {err}");
        d.wait_log(
            &err.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect::<String>(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            !d.log_text().contains(secret),
            "{edit}: the secret is in the log"
        );
    }
    // Elsewhere, the line is shown as before.
    rewrite(&d, |_| {
        format!("{original}[gateway.limits]\nnot_a_limit = 5\n")
    });
    d.wait_log("not_a_limit = 5", Duration::from_secs(5))
        .await
        .unwrap();
}

/// The addresses `system-presence` lists while a client sending `headers`
/// (proxy headers) is connected.
async fn ips_with(d: &Daemon, headers: &[(&str, &str)]) -> Vec<String> {
    let mut c = Client::open_with_headers(&d.url(), headers).await.unwrap();
    let res = c.hello(Some(TOKEN), &["operator.read"]).await.unwrap();
    assert_eq!(res["ok"], true, "{res}");
    let p = c.request("p", "system-presence", json!({})).await.unwrap();
    p["payload"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["ip"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `gateway.trusted_proxies` applies on reload: before, a client's
/// `X-Forwarded-For` is not believed (it is the proxy's address); after
/// adding the proxy, it is the client's own; after removing it, not again.
#[tokio::test]
async fn trusted_proxies_apply_on_reload() {
    let d = Daemon::builder()
        .config(&format!(
            "watch_config = false\n\n[gateway]\ntrusted_proxies = []\n\n[gateway.auth]\ntoken = \"{TOKEN}\"\n"
        ))
        .start()
        .unwrap();
    let ips = ips_with(&d, &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert!(!ips.contains(&"203.0.113.7".into()), "{ips:?}");
    let reload = |from: &'static str, to: &'static str| {
        rewrite(&d, |t| t.replace(from, to));
        d.signal("HUP");
    };
    reload("trusted_proxies = []", "trusted_proxies = [\"127.0.0.1\"]");
    d.wait_log("configuration reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    let ips = ips_with(&d, &[("X-Forwarded-For", "203.0.113.8")]).await;
    assert!(ips.contains(&"203.0.113.8".into()), "{ips:?}");
    reload("trusted_proxies = [\"127.0.0.1\"]", "trusted_proxies = []");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while d.log_text().matches("configuration reloaded").count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ips = ips_with(&d, &[("X-Forwarded-For", "203.0.113.9")]).await;
    assert!(!ips.contains(&"203.0.113.9".into()), "{ips:?}");
}

/// A trusted proxy's client is read from `gateway.client_ip_header` alone:
/// behind a proxy that sets `X-Real-IP`, a client's own `X-Forwarded-For`
/// (which such a proxy passes through) names no one. The key is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_read_from_the_one_header_named_and_it_is_live() {
    let d = Daemon::builder()
        .config(&format!(
            "watch_config = false\n\n[gateway]\ntrusted_proxies = [\"127.0.0.1\"]\n\
             client_ip_header = \"x-real-ip\"\n\n[gateway.auth]\ntoken = \"{TOKEN}\"\n"
        ))
        .start()
        .unwrap();
    let ips = ips_with(
        &d,
        &[
            ("X-Forwarded-For", "198.51.100.66"),
            ("X-Real-IP", "203.0.113.20"),
        ],
    )
    .await;
    assert!(ips.contains(&"203.0.113.20".into()), "{ips:?}");
    assert!(!ips.contains(&"198.51.100.66".into()), "{ips:?}");
    let ips = ips_with(&d, &[("X-Forwarded-For", "198.51.100.67")]).await;
    assert!(!ips.contains(&"198.51.100.67".into()), "{ips:?}");
    d.wait_log(
        "sent x-forwarded-for but no x-real-ip header, which gateway.client_ip_header names",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Now `Forwarded` (RFC 7239), and only it.
    rewrite(&d, |t| {
        t.replace(
            "client_ip_header = \"x-real-ip\"",
            "client_ip_header = \"forwarded\"",
        )
    });
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    let ips = ips_with(
        &d,
        &[
            ("X-Real-IP", "198.51.100.68"),
            ("Forwarded", "for=\"203.0.113.21:5555\";proto=http"),
        ],
    )
    .await;
    assert!(ips.contains(&"203.0.113.21".into()), "{ips:?}");
    assert!(!ips.contains(&"198.51.100.68".into()), "{ips:?}");
}
