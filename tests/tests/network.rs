//! Network grants: a plugin reaches exactly the `host:port`s granted to it,
//! over outgoing HTTP (wasi:http) and TCP (wasi:sockets).

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A local HTTP server answering `hello` to every request.
async fn http_server() -> u16 {
    http_server_writing(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        false,
    )
    .await
}

/// A local HTTP server that sends a response's head and part of its body,
/// then holds the connection open.
async fn stalling_http_server() -> u16 {
    http_server_writing(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello", true).await
}

/// A local HTTP server that writes `response` to every request, then
/// closes the connection, or holds it until the client closes it.
async fn http_server_writing(response: &'static [u8], hold: bool) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response).await;
                if hold {
                    let _ = s.read(&mut buf).await;
                }
            });
        }
    });
    port
}

/// A local TCP server answering `pong` to `ping`.
async fn tcp_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    if &buf[..n] == b"ping\n" {
                        let _ = s.write_all(b"pong\n").await;
                    }
                }
            });
        }
    });
    port
}

fn daemon(dir: &std::path::Path, network: Option<&str>) -> Daemon {
    daemon_with(dir, network, "")
}

/// [`daemon`] with more `[plugins]` keys.
fn daemon_with(dir: &std::path::Path, network: Option<&str>, plugins: &str) -> Daemon {
    let net = network
        .map(|n| format!("network = [{n}]\n"))
        .unwrap_or_default();
    Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n{plugins}[channels.nettest]\n{net}[channels.nettest.accounts.default]\n",
            dir.join("state").display(),
            dir.display()
        ))
        .start()
        .unwrap()
}

/// A plugins directory holding the nettest plugin.
fn nettest_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        built_plugin("test-plugins", "nettest.wasm"),
        dir.path().join("nettest.wasm"),
    )
    .unwrap();
    dir
}

async fn send(d: &Daemon, text: &str) -> Value {
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    c.request(
        "s",
        "send",
        json!({"to": "x", "message": text, "idempotencyKey": text}),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_are_denied_without_a_grant_and_allowed_with_one() {
    let hp = http_server().await;
    let tp = tcp_server().await;
    let dir = nettest_dir();

    let d = daemon(dir.path(), None);
    let r = send(&d, &format!("http:http://127.0.0.1:{hp}/")).await;
    assert_denied(&r, "nettest", &format!("127.0.0.1:{hp}"));
    let line = d
        .wait_log("denied outgoing HTTP", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains(&format!(
            "add \"127.0.0.1:{hp}\" to `network` in [channels.nettest]"
        )),
        "{line}"
    );
    let r = send(&d, &format!("tcp:127.0.0.1:{tp}")).await;
    assert_denied(&r, "nettest", &format!("127.0.0.1:{tp}"));
    let line = d
        .wait_log("denied TCP connection", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(line.contains(&format!("127.0.0.1:{tp}")), "{line}");
    drop(d);

    // Granted by IP (HTTP) and by a host name the host resolves (TCP).
    let d = daemon(
        dir.path(),
        Some(&format!("\"127.0.0.1:{hp}\", \"localhost:{tp}\"")),
    );
    let r = send(&d, &format!("http:http://127.0.0.1:{hp}/")).await;
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    assert_eq!(r["payload"]["messageId"], "hello");
    let r = send(&d, &format!("tcp:127.0.0.1:{tp}")).await;
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    assert_eq!(r["payload"]["messageId"], "pong");
    // The plugin may look the granted name up itself.
    let r = send(&d, &format!("tcp:localhost:{tp}")).await;
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    assert_eq!(r["payload"]["messageId"], "pong");
    // A port that is not granted stays closed.
    let r = send(&d, &format!("http:http://127.0.0.1:{tp}/")).await;
    assert_eq!(r["ok"], false, "{r}");
    // plugins.list shows the grants.
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let l = c.request("l", "plugins.list", json!({})).await.unwrap();
    assert_eq!(
        l["payload"]["plugins"][0]["grants"],
        json!({"nettest": [format!("127.0.0.1:{hp}"), format!("localhost:{tp}")]})
    );
    assert_eq!(l["payload"]["plugins"][0]["contract"], "0.2.0");
}

/// A plugin looks up only the names its grants name: any other lookup
/// would carry the name to DNS servers past the grants (a way to hand
/// data out), so it is refused before any query and reported like a
/// denied destination — even for a name that resolves to a granted
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_looks_up_only_the_names_it_is_granted() {
    let tp = tcp_server().await;
    let dir = nettest_dir();
    let d = daemon(dir.path(), Some(&format!("\"127.0.0.1:{tp}\"")));
    let r = send(&d, &format!("tcp:127.0.0.1:{tp}")).await;
    assert_eq!(r["payload"]["messageId"], "pong", "{r}");
    for name in ["localhost", "secret-data.exfil.example"] {
        let r = send(&d, &format!("tcp:{name}:{tp}")).await;
        assert_denied(&r, "nettest", &format!("{name}:<port>"));
    }
    let line = d
        .wait_log("denied name lookup", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(line.contains("localhost:<port>"), "{line}");
}

/// A plugin holds at most `plugins.max_sockets` network connections at
/// once, all its instances together: TCP sockets it opens, HTTP requests
/// the host makes for it, name lookups while they are read. Past the bound
/// it gets an error (and the log says why); a socket it closes, and everything an instance held when it
/// ends, is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_holds_at_most_max_sockets_connections() {
    let tp = tcp_server().await;
    let hp = stalling_http_server().await;
    let dir = nettest_dir();
    let d = daemon_with(
        dir.path(),
        Some(&format!(
            "\"127.0.0.1:{tp}\", \"localhost:{tp}\", \"127.0.0.1:{hp}\""
        )),
        "max_sockets = 4\n",
    );
    let r = send(&d, &format!("tcphold:6:127.0.0.1:{tp}")).await;
    let id = r["payload"]["messageId"].as_str().unwrap_or_default();
    assert!(id.starts_with("opened 4; error: Some("), "{r}");
    let line = d
        .wait_log("TCP socket refused", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains("the plugin holds 4 network connections, plugins.max_sockets = 4"),
        "{line}"
    );
    // The call's instance is gone: its sockets are free.
    let r = send(&d, &format!("tcphold:4:127.0.0.1:{tp}")).await;
    assert_eq!(r["payload"]["messageId"], "opened 4; error: None", "{r}");
    // A name lookup holds a slot while its answer is read: the fifth
    // connect by name fails at its lookup; the four before got theirs.
    let r = send(&d, &format!("tcphold:6:localhost:{tp}")).await;
    let id = r["payload"]["messageId"].as_str().unwrap_or_default();
    assert!(id.starts_with("opened 4; error: Some("), "{r}");
    let line = d
        .wait_log("name lookup refused", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(line.contains("plugins.max_sockets = 4"), "{line}");
    // Closed sockets free their slots within a call.
    let r = send(&d, &format!("tcpcycle:10:127.0.0.1:{tp}")).await;
    assert_eq!(r["payload"]["messageId"], "opened 10; error: None", "{r}");
    // HTTP requests count while their connection is open.
    let r = send(&d, &format!("httphold:6:http://127.0.0.1:{hp}/")).await;
    let id = r["payload"]["messageId"].as_str().unwrap_or_default();
    assert!(id.starts_with("opened 4; error: Some("), "{r}");
    let line = d
        .wait_log("outgoing HTTP refused", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(line.contains("plugins.max_sockets = 4"), "{line}");
    let r = send(&d, &format!("tcp:127.0.0.1:{tp}")).await;
    assert_eq!(r["payload"]["messageId"], "pong", "{r}");
}

/// A denied request is the operator's to fix: a non-retryable error naming
/// the destination and the `network` line to add (the plugin itself only
/// saw a failed connection and called it transient).
fn assert_denied(r: &Value, channel: &str, dest: &str) {
    assert_eq!(r["ok"], false, "{r}");
    let e = &r["error"];
    assert_eq!(e["code"], "INVALID_REQUEST", "{r}");
    assert_ne!(e["retryable"], true, "{r}");
    assert_eq!(e["details"]["destination"], dest, "{r}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("network access to {dest} was denied"))
            && msg.contains(&format!(
                "add \"{dest}\" to `network` in [channels.{channel}]"
            )),
        "{msg}"
    );
}

/// Two channels served by one plugin: grants and the key-value store are
/// each channel's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_of_one_plugin_keep_their_own_grants_and_store() {
    let hp = http_server().await;
    let dir = tempfile::tempdir().unwrap();
    // `netno` sorts first: it used to hand its (absent) list to both, or
    // `netyes` its list to `netno`.
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("test-plugins", "nettest.wasm")],
            &format!(
                "[channels.netno]\nplugin = \"nettest\"\n[channels.netno.accounts.main]\n\
                 [channels.netyes]\nplugin = \"nettest\"\nnetwork = [\"127.0.0.1:{hp}\"]\n[channels.netyes.accounts.main]\n"
            ),
        )
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let r = c
        .request("1", "send", json!({"channel": "netyes", "to": "x", "message": format!("http:http://127.0.0.1:{hp}/"), "idempotencyKey": "k1"}))
        .await
        .unwrap();
    assert_eq!(r["payload"]["messageId"], "hello", "{r}");
    let r = c
        .request("2", "send", json!({"channel": "netno", "to": "x", "message": format!("http:http://127.0.0.1:{hp}/"), "idempotencyKey": "k2"}))
        .await
        .unwrap();
    assert_denied(&r, "netno", &format!("127.0.0.1:{hp}"));
    // Both accounts are called `main`; each channel has its own `k`.
    for (i, (ch, text)) in [("netno", "kv-set:no"), ("netyes", "kv-set:yes")]
        .into_iter()
        .enumerate()
    {
        let r = c
            .request(&format!("s{i}"), "send", json!({"channel": ch, "to": "x", "message": text, "idempotencyKey": format!("set-{ch}")}))
            .await
            .unwrap();
        assert_eq!(r["ok"], true, "{r}");
    }
    for (ch, want) in [("netno", "value:no"), ("netyes", "value:yes")] {
        let r = c
            .request("g", "send", json!({"channel": ch, "to": "x", "message": "kv-get", "idempotencyKey": format!("get-{ch}")}))
            .await
            .unwrap();
        assert_eq!(r["payload"]["messageId"], want, "{r}");
    }
    let l = c.request("l", "plugins.list", json!({})).await.unwrap();
    assert_eq!(
        l["payload"]["plugins"][0]["grants"],
        json!({"netno": [], "netyes": [format!("127.0.0.1:{hp}")]})
    );
}

/// A grant added to the config file while the daemon runs applies to the
/// next call; removed again, the call after that is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_edited_in_the_config_applies_to_the_next_call() {
    let hp = http_server().await;
    let dir = nettest_dir();
    let d = daemon(dir.path(), Some("\"127.0.0.1:1\""));
    let (mut admin, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let target = format!("http:http://127.0.0.1:{hp}/");
    assert_denied(
        &send(&d, &format!("{target}#1")).await,
        "nettest",
        &format!("127.0.0.1:{hp}"),
    );

    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&d.config_path).unwrap();
        std::fs::write(&d.config_path, text.replace(from, to)).unwrap();
    };
    edit("\"127.0.0.1:1\"", &format!("\"127.0.0.1:{hp}\""));
    let ev = admin
        .next_event("config", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        ev["payload"]["changes"]
            .as_array()
            .unwrap()
            .contains(&json!(
                "channels.nettest.accounts.default: network changed, restarted"
            )),
        "{ev}"
    );
    let r = send(&d, &format!("{target}#2")).await;
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());

    edit(&format!("\"127.0.0.1:{hp}\""), "\"127.0.0.1:1\"");
    admin
        .next_event("config", Duration::from_secs(10))
        .await
        .unwrap();
    assert_denied(
        &send(&d, &format!("{target}#3")).await,
        "nettest",
        &format!("127.0.0.1:{hp}"),
    );
}
