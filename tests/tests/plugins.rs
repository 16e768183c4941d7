//! Channel plugins in the real daemon: `send` and `message` events,
//! idempotency, webhooks, the key-value store, hot reload, broken and removed
//! files, and plugins that spin, hog memory or trap.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_tests::*;

struct Setup {
    daemon: Daemon,
    plugins: PathBuf,
    state: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn config(plugins: &Path, state: &Path, extra_plugins: &str, rest: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[gateway]\ntick_interval_ms = 100\n[plugins]\ndir = \"{}\"\ndebounce_ms = 100\n{extra_plugins}\n{rest}",
        state.display(),
        plugins.display()
    )
}

/// A daemon with `files` (from target/plugins or target/test-plugins) in its plugins dir.
fn setup(files: &[(&str, &str, &str)], extra_plugins: &str, channels: &str) -> Setup {
    let pdir = tempfile::tempdir().unwrap();
    let sdir = tempfile::tempdir().unwrap();
    for (dir, name, dest) in files {
        std::fs::copy(built_plugin(dir, name), pdir.path().join(dest)).unwrap();
    }
    let daemon = Daemon::builder()
        .config(&config(pdir.path(), sdir.path(), extra_plugins, channels))
        .start()
        .unwrap();
    Setup {
        daemon,
        plugins: pdir.path().to_path_buf(),
        state: sdir.path().to_path_buf(),
        _dirs: (pdir, sdir),
    }
}

const ECHO: &str = "[channels.echo.accounts.default]\n";

/// A daemon with only the misbehave test plugin, serving its `default`
/// account.
fn misbehave(extra_plugins: &str) -> Setup {
    setup(
        &[("test-plugins", "misbehave.wasm", "misbehave.wasm")],
        extra_plugins,
        "[channels.misbehave.accounts.default]\n",
    )
}

/// Has misbehave do `command` (its `send`'s message), under the idempotency
/// key `command`.
async fn ask(c: &mut Client, command: &str) -> Value {
    ask_keyed(c, command, command).await
}

/// [`ask`] under the idempotency key `key`.
async fn ask_keyed(c: &mut Client, command: &str, key: &str) -> Value {
    send(
        c,
        key,
        json!({"to": "x", "message": command, "idempotencyKey": key}),
    )
    .await
}

async fn op(d: &Daemon) -> Client {
    connect(&d.url(), None, &["operator.admin"])
        .await
        .unwrap()
        .0
}

async fn send(c: &mut Client, id: &str, params: Value) -> Value {
    c.request(id, "send", params).await.unwrap()
}

async fn next_message(c: &mut Client) -> Value {
    c.next_message(Duration::from_secs(10)).await.unwrap()
}

async fn echo_version(c: &mut Client) -> Option<String> {
    let r = c.request("pl", "plugins.list", json!({})).await.unwrap();
    r["payload"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "echo" && p["state"] == "loaded")
        .map(|p| p["version"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn send_returns_an_id_and_both_message_events_reach_operators() {
    let s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let mut c = op(&s.daemon).await;
    let r = send(
        &mut c,
        "s1",
        json!({"to": "chat-9", "message": "hello", "idempotencyKey": "k-1", "channel": "echo"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["payload"],
        json!({"runId": "k-1", "messageId": "echo-1", "channel": "echo", "chatId": "chat-9"})
    );
    let a = next_message(&mut watcher).await;
    let b = next_message(&mut watcher).await;
    let (inbound, outbound) = if a["direction"] == "inbound" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(inbound["direction"], "inbound");
    assert_eq!(inbound["text"], "hello");
    assert_eq!(inbound["chatId"], "chat-9");
    assert_eq!(inbound["accountId"], "default");
    assert_eq!(outbound["direction"], "outbound");
    assert_eq!(outbound["messageId"], "echo-1");
    assert_ne!(inbound["messageSeq"], outbound["messageSeq"]);

    // Same key: the first result, nothing sent again.
    let again = send(
        &mut c,
        "s2",
        json!({"to": "chat-9", "message": "hello", "idempotencyKey": "k-1"}),
    )
    .await;
    assert_eq!(again["payload"], r["payload"]);
    let next = send(
        &mut c,
        "s3",
        json!({"to": "chat-9", "message": "second", "idempotencyKey": "k-2"}),
    )
    .await;
    assert_eq!(
        next["payload"]["messageId"], "echo-2",
        "the repeat must not have reached the plugin"
    );
    let m = next_message(&mut watcher).await;
    assert_eq!(
        m["text"], "second",
        "the repeat produced a message event: {m}"
    );

    // Scope, unknown channel and account.
    let mut reader = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let r = send(
        &mut reader,
        "s4",
        json!({"to": "x", "message": "m", "idempotencyKey": "k-3"}),
    )
    .await;
    assert_eq!(r["error"]["message"], "missing scope: operator.write");
    let r = send(
        &mut c,
        "s5",
        json!({"to": "x", "message": "m", "idempotencyKey": "k-4", "channel": "nope"}),
    )
    .await;
    assert_refused_saying(&r, "unknown channel: nope");
    let r = send(
        &mut c,
        "s6",
        json!({"to": "x", "message": "m", "idempotencyKey": "k-5", "accountId": "zz"}),
    )
    .await;
    assert_refused_saying(&r, "unknown account zz");
    // The run loop reports the account connected.
    let st = c
        .request("cs", "channels.status", json!({"channel": "echo"}))
        .await
        .unwrap();
    let acct = &st["payload"]["channelAccounts"]["echo"][0];
    assert_eq!(acct["running"], true, "{st}");
    assert_eq!(acct["connected"], true, "{st}");
}

#[tokio::test]
async fn webhook_post_reaches_handle_webhook() {
    let s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let http = reqwest::Client::new();
    let r = http
        .post(s.daemon.http("/hooks/echo/default"))
        .body(r#"{"chatId":"room","text":"from hook"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["accepted"].as_str().unwrap().starts_with("hook-"),
        "{body}"
    );
    let m = next_message(&mut watcher).await;
    assert_eq!(m["text"], "from hook");
    assert_eq!(m["chatId"], "room");
    assert_eq!(m["messageSeq"], body["messageSeq"]);
    // The plugin's own 400 for malformed JSON.
    let r = http
        .post(s.daemon.http("/hooks/echo/default"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown account: the gateway's 404.
    let r = http
        .post(s.daemon.http("/hooks/echo/other"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("no account other"),
        "{e}"
    );
}

async fn wait_version(c: &mut Client, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if echo_version(c).await.as_deref() == Some(want) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "echo never reached version {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kv_survives_reload_and_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut c = op(&s.daemon).await;
    let r = send(
        &mut c,
        "1",
        json!({"to": "a", "message": "m", "idempotencyKey": "a1"}),
    )
    .await;
    assert_eq!(r["payload"]["messageId"], "echo-1");
    std::fs::copy(
        built_plugin("test-plugins", "echo-v2.wasm"),
        s.plugins.join("echo.wasm"),
    )
    .unwrap();
    wait_version(&mut c, "0.2.0", Duration::from_secs(10)).await;
    let r = send(
        &mut c,
        "2",
        json!({"to": "a", "message": "m", "idempotencyKey": "a2"}),
    )
    .await;
    assert_eq!(
        r["payload"]["messageId"], "echo-2",
        "counter lost across reload: {r}"
    );
    drop(c);
    s.daemon.signal("TERM");
    assert_eq!(s.daemon.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    let mut d2 = Daemon::builder()
        .config(&config(&s.plugins, &s.state, "", ECHO))
        .start()
        .unwrap();
    let mut c = op(&d2).await;
    let r = send(
        &mut c,
        "3",
        json!({"to": "a", "message": "m", "idempotencyKey": "a3"}),
    )
    .await;
    assert_eq!(
        r["payload"]["messageId"], "echo-3",
        "counter lost across restart: {r}"
    );
    // The first daemon compiled echo; the restart took it from the on-disk cache.
    s.daemon
        .wait_log("cached=false", Duration::from_secs(10))
        .await
        .unwrap();
    let line = d2
        .wait_log("plugin loaded", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(line.contains("cached=true"), "{line}");
    eprintln!("restart: {line}");
    // Code in the cache that another user could have written is not run:
    // echo is compiled again, and its new code is written private.
    drop(c);
    d2.signal("TERM");
    assert_eq!(d2.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    let cache = s.state.join("cache");
    let cwasm: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(cwasm.len(), 1, "{cwasm:?}");
    std::fs::set_permissions(&cwasm[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    let d3 = Daemon::builder()
        .config(&config(&s.plugins, &s.state, "", ECHO))
        .start()
        .unwrap();
    let line = d3
        .wait_log("plugin loaded", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(line.contains("cached=false"), "{line}");
    let warned = d3
        .wait_log(
            "not loading a compiled plugin from the cache",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(
        warned.contains("may be written by others (mode 0666)"),
        "{warned}"
    );
    let mode = std::fs::metadata(&cwasm[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the code compiled again is not private");
}

/// A plugin that writes key after key into its key-value store fills only
/// its own share (`store.kv_max_bytes`), not the disk the message log is
/// on: its writes past the bound are refused and logged once, and another
/// channel's store and the message log go on working.
#[tokio::test]
async fn a_plugin_cannot_fill_the_disk_through_its_key_value_store() {
    // The smallest bound allowed: one entry of the largest size, ~1 MiB.
    let s = setup(
        &[
            ("test-plugins", "misbehave.wasm", "misbehave.wasm"),
            ("plugins", "echo.wasm", "echo.wasm"),
        ],
        "",
        "[store]\nkv_max_bytes = 1049152\n[channels.misbehave.accounts.default]\n[channels.echo.accounts.default]\n",
    );
    let mut c = op(&s.daemon).await;
    let r = send(
        &mut c,
        "fill",
        json!({"channel": "misbehave", "to": "x", "message": "kvfill:30", "idempotencyKey": "fill"}),
    )
    .await;
    // 100 KiB values plus key and overhead: ten fit in 1 049 152 bytes.
    assert_eq!(r["payload"]["messageId"], "kept 10 of 30", "{r}");
    let warned = s
        .daemon
        .wait_log("key-value store is full", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(warned.contains("channel=misbehave"), "{warned}");
    // Echo's store (its message counter) and the log still take writes.
    for i in 1..=3 {
        let r = send(
            &mut c,
            &format!("e{i}"),
            json!({"channel": "echo", "to": "a", "message": "m", "idempotencyKey": format!("e{i}")}),
        )
        .await;
        assert_eq!(r["payload"]["messageId"], format!("echo-{i}"), "{r}");
    }
    // The bound is per channel and kept across calls: still full.
    let r = send(
        &mut c,
        "fill2",
        json!({"channel": "misbehave", "to": "x", "message": "kvfill:12", "idempotencyKey": "fill2"}),
    )
    .await;
    assert_eq!(r["payload"]["messageId"], "kept 10 of 12", "{r}");
}

/// `plugins.cache_dir` puts the compiled-plugin cache where it says, made
/// private, and nothing in the state directory.
#[tokio::test]
async fn plugins_cache_dir_puts_the_cache_where_it_says() {
    use std::os::unix::fs::PermissionsExt;
    let elsewhere = tempfile::tempdir().unwrap();
    let cache = elsewhere.path().join("compiled");
    let s = setup(
        &[("plugins", "echo.wasm", "echo.wasm")],
        &format!("cache_dir = \"{}\"", cache.display()),
        ECHO,
    );
    s.daemon
        .wait_log("plugin loaded", Duration::from_secs(10))
        .await
        .unwrap();
    let cwasm: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert_eq!(cwasm.len(), 1, "{cwasm:?}");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(
        !s.state.join("cache").exists(),
        "the default cache was used too"
    );
}

/// The compiled-plugin cache keeps only the code of the plugins loaded now:
/// a replaced build, a removed plugin, code an older daemon left and a
/// crash's temporary file are removed, so that plugin builds dropped in one
/// after another do not fill the disk (about 1 MiB each).
#[tokio::test]
async fn the_compiled_plugin_cache_keeps_only_what_is_loaded() {
    let pdir = tempfile::tempdir().unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let cache = sdir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    // What an older daemon version and a crash mid-write left behind, and a
    // file that is not ours.
    let stale = [
        "0123abcd-0000000000000000.cwasm",
        "0123abcd-0000000000000000.tmp-1",
    ];
    for f in stale {
        std::fs::write(cache.join(f), b"old code").unwrap();
    }
    std::fs::write(cache.join("README"), b"not ours").unwrap();
    let cwasm = || {
        let mut v: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "README")
            .collect();
        v.sort();
        v
    };
    std::fs::copy(
        built_plugin("plugins", "echo.wasm"),
        pdir.path().join("echo.wasm"),
    )
    .unwrap();
    let d = Daemon::builder()
        .config(&config(pdir.path(), sdir.path(), "", ECHO))
        .start()
        .unwrap();
    let mut c = op(&d).await;
    let first = cwasm();
    assert_eq!(first.len(), 1, "want echo's code alone: {first:?}");
    assert!(first[0].ends_with(".cwasm"), "{first:?}");
    assert!(cache.join("README").exists(), "a file not ours was removed");
    // A new build: its code replaces the old one's.
    std::fs::copy(
        built_plugin("test-plugins", "echo-v2.wasm"),
        pdir.path().join("echo.wasm"),
    )
    .unwrap();
    wait_version(&mut c, "0.2.0", Duration::from_secs(10)).await;
    // The swap is visible before the rescan that made it has pruned.
    let t0 = Instant::now();
    while cwasm().len() > 1 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = cwasm();
    assert_eq!(
        second.len(),
        1,
        "want the new build's code alone: {second:?}"
    );
    assert_ne!(second, first, "the new build's code was not cached");
    // The plugin removed: its code goes too.
    std::fs::remove_file(pdir.path().join("echo.wasm")).unwrap();
    let t0 = Instant::now();
    while !cwasm().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a removed plugin's code stayed in the cache: {:?}",
            cwasm()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.wait_log(
        "removed compiled plugins no loaded plugin uses",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_send_load_loses_no_call() {
    let s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let url = s.daemon.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = tokio::spawn(async move {
        let mut c = connect(&url, None, &["operator.write"]).await.unwrap().0;
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut i = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let r = c
                .request(
                    &format!("r{i}"),
                    "send",
                    json!({"to": "t", "message": "m", "idempotencyKey": format!("load-{i}")}),
                )
                .await
                .unwrap();
            if r["ok"] == true {
                ok += 1;
            } else {
                failed.push(r);
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A plain copy over the live file, as a user would do.
    let t0 = Instant::now();
    std::fs::copy(
        built_plugin("test-plugins", "echo-v2.wasm"),
        s.plugins.join("echo.wasm"),
    )
    .unwrap();
    let ev = loop {
        let ev = watcher
            .next_event("plugins", Duration::from_secs(10))
            .await
            .unwrap();
        if ev["payload"]["action"] == "replaced" {
            break ev;
        }
    };
    let swap = t0.elapsed();
    assert_eq!(
        ev["payload"],
        json!({"id": "echo", "action": "replaced", "version": "0.2.0"})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    eprintln!("hot reload: swapped in {swap:?}; {ok} sends succeeded during the test");
    assert!(failed.is_empty(), "failed sends: {failed:?}");
    assert!(ok > 10, "only {ok} sends");
    assert!(swap < Duration::from_secs(2), "swap took {swap:?}");
    let mut c = op(&s.daemon).await;
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.2.0"));
}

#[tokio::test]
async fn broken_files_are_refused_and_the_old_version_keeps_serving() {
    let s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let mut c = op(&s.daemon).await;
    let good = std::fs::read(built_plugin("test-plugins", "echo-v2.wasm")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not a WebAssembly file",
            b"garbage bytes, definitely not wasm".to_vec(),
        ),
        ("core WebAssembly module", b"\0asm\x01\0\0\0".to_vec()),
        (
            "does not export switchboard:channel/channel",
            std::fs::read(built_plugin("test-plugins", "wrong-export.wasm")).unwrap(),
        ),
        ("truncated or corrupt", good[..good.len() / 2].to_vec()),
    ];
    for (i, (reason, bytes)) in cases.into_iter().enumerate() {
        std::fs::write(s.plugins.join("echo.wasm"), &bytes).unwrap();
        loop {
            let ev = watcher
                .next_event("plugins", Duration::from_secs(10))
                .await
                .unwrap();
            let p = &ev["payload"];
            if p["action"] == "failed" && p["error"].as_str().unwrap().contains(reason) {
                assert_eq!(p["id"], "echo");
                break;
            }
        }
        // The old version keeps serving.
        let r = send(
            &mut c,
            &format!("b{i}"),
            json!({"to": "x", "message": "still here", "idempotencyKey": format!("b{i}")}),
        )
        .await;
        assert_eq!(r["ok"], true, "{reason}: {r}");
        let list = c.request("l", "plugins.list", json!({})).await.unwrap();
        let echo = &list["payload"]["plugins"][0];
        assert_eq!(echo["version"], "0.1.0");
        assert_eq!(echo["state"], "loaded");
        assert!(echo["error"].as_str().unwrap().contains(reason), "{list}");
        let h = c.request("h", "health", json!({})).await.unwrap();
        assert_eq!(h["payload"]["plugins"]["loaded"], json!(["echo"]));
        assert!(!h["payload"]["plugins"]["errors"]
            .as_array()
            .unwrap()
            .is_empty());
    }
}

/// A plugin runs with its channel's secrets and network grants: a plugin
/// file, or a plugins directory, that every user may write is refused by
/// name (with the `chmod` that mends it), and the version loaded keeps
/// serving.
#[tokio::test]
async fn a_plugin_every_user_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut c = op(&s.daemon).await;
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.1.0"));
    let echo_error = |list: &Value| {
        list["payload"]["plugins"][0]["error"]
            .as_str()
            .map(str::to_string)
    };

    // A new version dropped in, writable by anyone.
    let tmp = s.plugins.join(".echo.tmp");
    std::fs::copy(built_plugin("test-plugins", "echo-v2.wasm"), &tmp).unwrap();
    chmod(&tmp, 0o666);
    std::fs::rename(&tmp, s.plugins.join("echo.wasm")).unwrap();
    let r = c.request("r", "plugins.reload", json!({})).await.unwrap();
    let e = echo_error(&r).unwrap_or_default();
    assert!(
        e.contains("is writable by every user (mode 0666)") && e.contains("chmod o-w"),
        "{r}"
    );
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.1.0"));
    let r = send(
        &mut c,
        "w1",
        json!({"to": "x", "message": "old", "idempotencyKey": "w1"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");

    // Mended: it loads.
    chmod(&s.plugins.join("echo.wasm"), 0o644);
    c.request("r", "plugins.reload", json!({})).await.unwrap();
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.2.0"));

    // A plugins directory anyone may write to: nothing in it is loaded anew.
    chmod(&s.plugins, 0o1777);
    std::fs::copy(
        built_plugin("plugins", "echo.wasm"),
        s.plugins.join("echo.wasm"),
    )
    .unwrap();
    let r = c.request("r", "plugins.reload", json!({})).await.unwrap();
    let e = echo_error(&r).unwrap_or_default();
    assert!(
        e.contains("the plugins directory") && e.contains("(mode 1777)"),
        "{r}"
    );
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.2.0"));
    chmod(&s.plugins, 0o700);
    c.request("r", "plugins.reload", json!({})).await.unwrap();
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.1.0"));
}

#[tokio::test]
async fn removing_the_file_unloads_the_plugin() {
    let s = setup(&[("plugins", "echo.wasm", "echo.wasm")], "", ECHO);
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    std::fs::remove_file(s.plugins.join("echo.wasm")).unwrap();
    loop {
        let ev = watcher
            .next_event("plugins", Duration::from_secs(10))
            .await
            .unwrap();
        if ev["payload"]["action"] == "removed" {
            assert_eq!(ev["payload"]["id"], "echo");
            break;
        }
    }
    let mut c = op(&s.daemon).await;
    let r = send(
        &mut c,
        "1",
        json!({"to": "x", "message": "m", "idempotencyKey": "r1"}),
    )
    .await;
    assert_refused(&r, "UNAVAILABLE", "not loaded");
    let st = c.request("cs", "channels.status", json!({})).await.unwrap();
    let acct = &st["payload"]["channelAccounts"]["echo"][0];
    assert_eq!(acct["running"], false);
    assert_eq!(acct["lastError"], "plugin `echo` was removed");
    let list = c.request("l", "plugins.list", json!({})).await.unwrap();
    assert_eq!(list["payload"]["plugins"], json!([]));
}

const MISBEHAVE: &str = "[channels.misbehave.accounts.default]\n[channels.echo.accounts.default]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_is_interrupted_while_ticks_and_others_go_on() {
    let s = setup(
        &[
            ("plugins", "echo.wasm", "echo.wasm"),
            ("test-plugins", "misbehave.wasm", "misbehave.wasm"),
        ],
        "call_timeout_ms = 1500",
        MISBEHAVE,
    );
    let url = s.daemon.url();
    let spinner = tokio::spawn(async move {
        let mut c = connect(&url, None, &["operator.write"]).await.unwrap().0;
        let t0 = Instant::now();
        let r = c
            .request("spin", "send", json!({"to": "x", "message": "spin", "idempotencyKey": "spin", "channel": "misbehave"}))
            .await
            .unwrap();
        (r, t0.elapsed())
    });
    // Ticks keep arriving on time and echo keeps answering meanwhile.
    let mut c = op(&s.daemon).await;
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let t0 = Instant::now();
    let mut echoes = 0;
    while t0.elapsed() < Duration::from_millis(1200) {
        let v = c.recv_timeout(Duration::from_secs(2)).await.unwrap();
        if v["event"] == "tick" {
            max_gap = max_gap.max(last.elapsed());
            last = Instant::now();
            let r = send(&mut c, &format!("e{echoes}"), json!({"to": "x", "message": "m", "idempotencyKey": format!("e{echoes}"), "channel": "echo"})).await;
            assert_eq!(r["ok"], true, "{r}");
            echoes += 1;
        }
    }
    let (r, took) = spinner.await.unwrap();
    eprintln!("spin: interrupted after {took:?}; largest tick gap {max_gap:?} (interval 100ms); {echoes} echo sends meanwhile");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("deadline"),
        "{r}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(max_gap < Duration::from_millis(400), "tick gap {max_gap:?}");
    assert!(echoes >= 5);
}

#[tokio::test]
async fn a_plugin_allocating_without_bound_traps_at_its_cap() {
    let s = misbehave("memory_mb = 16");
    let mut c = op(&s.daemon).await;
    let r = ask(&mut c, "hog").await;
    assert_eq!(r["ok"], false);
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("channel misbehave: "), "{r}");
    // One line for the operator; the backtrace stays in the log.
    assert!(!msg.contains('\n') && !msg.contains("backtrace"), "{msg}");
    // A panic is reported with its message; the plugin still answers afterwards.
    let r = ask(&mut c, "trap").await;
    assert_eq!(r["ok"], false);
    assert_eq!(
        r["error"]["message"], "channel misbehave: plugin panicked: trapped on purpose",
        "{r}"
    );
    // It trapped before reaching outside: it cannot have sent, so a retry
    // with the same key calls it again (and it traps again).
    let again = ask(&mut c, "trap").await;
    assert_eq!(again["error"], r["error"], "{again}");
    // The guest's panic report is one WARN line in the log, not four at INFO.
    let line = s
        .daemon
        .wait_log("plugin panicked at", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("trapped on purpose"),
        "{line}"
    );
    assert!(!s.daemon.log_text().contains("RUST_BACKTRACE"));
    let r = ask(&mut c, "fine").await;
    assert_eq!(r["ok"], true, "{r}");
}

#[tokio::test]
async fn a_trapping_run_is_restarted_with_backoff_and_reported() {
    let s = setup(
        &[("test-plugins", "misbehave.wasm", "misbehave.wasm")],
        "",
        "[channels.misbehave.accounts.default]\ncrash_run = true\n",
    );
    let mut c = op(&s.daemon).await;
    let t0 = Instant::now();
    let acct = loop {
        let st = c.request("cs", "channels.status", json!({})).await.unwrap();
        let acct = st["payload"]["channelAccounts"]["misbehave"][0].clone();
        if acct["reconnectAttempts"].as_u64().unwrap() >= 3 {
            break acct;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{acct}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Three failures need 1 s + 2 s of backoff between them.
    assert!(
        t0.elapsed() >= Duration::from_millis(2800),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        acct["lastError"]
            .as_str()
            .unwrap()
            .contains("run failed: plugin panicked: run crashed on purpose"),
        "{acct}"
    );
    assert_eq!(acct["connected"], false);
    let h = c.request("h", "health", json!({})).await.unwrap();
    assert!(h["payload"]["channels"]["misbehave"]["accounts"]["default"]["lastError"].is_string());
    let ready = reqwest::get(s.daemon.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn channels_start_stop_and_plugins_reload() {
    let s = setup(
        &[("plugins", "echo.wasm", "echo.wasm")],
        "watch = false",
        ECHO,
    );
    let mut c = op(&s.daemon).await;
    let r = c
        .request("stop", "channels.stop", json!({"channel": "echo"}))
        .await
        .unwrap();
    assert_eq!(r["payload"]["account"]["running"], false, "{r}");
    assert!(r["payload"]["account"]["lastStopAt"].is_u64(), "{r}");
    let r = c
        .request(
            "start",
            "channels.start",
            json!({"channel": "echo", "accountId": "default"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let t0 = Instant::now();
    loop {
        let st = c.request("cs", "channels.status", json!({})).await.unwrap();
        if st["payload"]["channelAccounts"]["echo"][0]["connected"] == true {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only admins may start and stop.
    let mut w = connect(&s.daemon.url(), None, &["operator.write"])
        .await
        .unwrap()
        .0;
    let r = w
        .request("x", "channels.stop", json!({"channel": "echo"}))
        .await
        .unwrap();
    assert_eq!(r["error"]["message"], "missing scope: operator.admin");
    // With the watcher off, a new file is picked up by plugins.reload.
    std::fs::copy(
        built_plugin("test-plugins", "echo-v2.wasm"),
        s.plugins.join("echo.wasm"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.1.0"));
    let r = c.request("rl", "plugins.reload", json!({})).await.unwrap();
    assert_eq!(
        r["payload"]["changes"],
        json!([{"id": "echo", "action": "replaced", "version": "0.2.0"}]),
        "{r}"
    );
    // Beside the changes, the list as `plugins.list` answers it.
    let list = c.request("l", "plugins.list", json!({})).await.unwrap();
    assert_eq!(r["payload"]["dir"], list["payload"]["dir"], "{r}");
    assert_eq!(r["payload"]["dir"], s.plugins.display().to_string(), "{r}");
    assert_eq!(r["payload"]["plugins"], list["payload"]["plugins"], "{r}");
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.2.0"));
}

/// Calls of one plugin running at once are bounded (and with them its
/// memory): calls beyond the bound wait briefly, then are refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_a_plugin_are_bounded() {
    let s = misbehave("max_concurrent_calls = 2\ncall_queue_timeout_ms = 300");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = s.daemon.url();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url, None, &["operator.write"]).await.unwrap().0;
            c.request(
                "s",
                "send",
                json!({"to": "x", "message": "sleep:1500", "idempotencyKey": format!("sl{i}")}),
            )
            .await
            .unwrap()
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r["ok"] == true {
            assert_eq!(r["payload"]["messageId"], "slept");
            ok += 1;
        } else {
            let msg = r["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains("is busy") && msg.contains("plugins.max_concurrent_calls"),
                "{r}"
            );
            assert_eq!(r["error"]["retryable"], true, "{r}");
            busy += 1;
        }
    }
    assert_eq!((ok, busy), (2, 4));
    assert!(
        s.daemon
            .metric("switchboard_plugin_busy_total")
            .await
            .unwrap()
            >= 4
    );
    // Once they are done, calls go through again.
    let mut c = op(&s.daemon).await;
    let r = ask_keyed(&mut c, "fine", "after").await;
    assert_eq!(r["ok"], true, "{r}");
}

/// A symlink in the plugins directory is refused out loud (log,
/// `plugins.list`, `health`), once: later rescans do not repeat it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_plugin_is_refused_and_reported_once() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("echo.wasm");
    std::fs::copy(built_plugin("plugins", "echo.wasm"), &target).unwrap();
    let pdir = tempfile::tempdir().unwrap();
    let sdir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&target, pdir.path().join("linked.wasm")).unwrap();
    let d = Daemon::builder()
        .config(&config(pdir.path(), sdir.path(), "", ECHO))
        .start()
        .unwrap();
    let mut c = op(&d).await;
    let l = c.request("l", "plugins.list", json!({})).await.unwrap();
    let entry = l["payload"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"] == "linked.wasm")
        .cloned()
        .unwrap_or_else(|| panic!("linked.wasm not listed: {l}"));
    assert_eq!(entry["state"], "failed");
    assert!(
        entry["error"].as_str().unwrap().contains("symbolic link"),
        "{entry}"
    );
    let h = c.request("h", "health", json!({})).await.unwrap();
    let errors = h["payload"]["plugins"]["errors"].to_string();
    assert!(
        errors.contains("linked.wasm") && errors.contains("symbolic link"),
        "{h}"
    );
    d.wait_log("symbolic link", Duration::from_secs(5))
        .await
        .unwrap();
    // Another file appears: the watcher rescans; the link is not re-reported.
    let tmp = pdir.path().join(".echo.tmp");
    std::fs::copy(built_plugin("plugins", "echo.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, pdir.path().join("echo.wasm")).unwrap();
    loop {
        let ev = c
            .next_event("plugins", Duration::from_secs(10))
            .await
            .unwrap();
        assert_ne!(ev["payload"]["action"], "failed", "{ev}");
        if ev["payload"]["id"] == "echo" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refusals = d
        .log_text()
        .lines()
        .filter(|l| l.contains("plugin refused") && l.contains("linked.wasm"))
        .count();
    assert_eq!(refusals, 1, "{}", d.log_text());
}

/// A store's imports are bound to the one account it serves: an instance
/// of `default` cannot deliver or queue in the name of `other`.
#[tokio::test]
async fn an_instance_acts_only_for_the_account_it_serves() {
    let s = setup(
        &[("test-plugins", "misbehave.wasm", "misbehave.wasm")],
        "",
        "[channels.misbehave.accounts.default]\n[channels.misbehave.accounts.other]\n",
    );
    let mut c = op(&s.daemon).await;
    let r = send(
        &mut c,
        "x",
        json!({"to": "x", "message": "as:other", "idempotencyKey": "as-other", "accountId": "default"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let said = r["payload"]["messageId"].as_str().unwrap();
    let refusal = "this instance serves account `default` of channel misbehave, not `other`";
    assert_eq!(
        said,
        format!("deliver: Err(\"{refusal}\"); outbox-push: Err(\"{refusal}\")"),
        "{r}"
    );
    // In its own name it may.
    let r = send(
        &mut c,
        "y",
        json!({"to": "x", "message": "as:default", "idempotencyKey": "as-default", "accountId": "default"}),
    )
    .await;
    let said = r["payload"]["messageId"].as_str().unwrap();
    assert!(
        said.starts_with("deliver: Ok(") && said.contains("outbox-push: Ok("),
        "{r}"
    );
}

/// A plugin that logs in a loop is held to `plugins.log_lines_per_second`
/// (in bursts of 10 seconds' worth), through the `log` import and stdout
/// alike: the lines past it are dropped, counted at `GET /metrics`, and
/// their number is said before its next line that fits. A long line is cut
/// to 8 KiB.
#[tokio::test]
async fn a_plugin_cannot_flood_the_daemon_s_log() {
    let s = misbehave("log_lines_per_second = 5\n");
    let mut c = op(&s.daemon).await;
    let spam = |id: &str, n: u32| json!({"channel": "misbehave", "to": "x", "message": format!("logspam:{n}"), "idempotencyKey": id});
    // Within the budget: one long line each way, each cut to 8 KiB.
    let r = send(&mut c, "l0", spam("l0", 0)).await;
    assert_eq!(r["payload"]["messageId"], "logged 2", "{r}");
    for (prefix, len) in [("long ", 100_005), ("outlong ", 100_008)] {
        let line = s
            .daemon
            .wait_log(
                &format!("… ({} bytes cut)", len - 8192),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(line.contains(prefix), "{line}");
        assert!(line.len() < 8192 + 300, "{} bytes", line.len());
    }
    // 2002 lines at once: about the burst (50) is kept.
    let r = send(&mut c, "l1", spam("l1", 1000)).await;
    assert_eq!(r["payload"]["messageId"], "logged 2002", "{r}");
    s.daemon
        .wait_log("out 999", Duration::from_millis(500))
        .await
        .expect_err("the last lines of the burst must be dropped");
    let is_spam = |l: &str| {
        l.split(|c: char| !c.is_ascii_alphanumeric())
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| (w[0] == "spam" || w[0] == "out") && w[1].parse::<u32>().is_ok())
    };
    let kept = s.daemon.log_text().lines().filter(|l| is_spam(l)).count();
    let dropped = s
        .daemon
        .metric("switchboard_plugin_log_dropped_total")
        .await
        .unwrap();
    assert!((30..=60).contains(&kept), "{kept} spam lines kept");
    assert!(dropped >= 1940, "{dropped} dropped");
    // A second later the budget has room again: the next line is preceded
    // by the count of those dropped.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(&mut c, "l2", spam("l2", 0)).await;
    let warned = s
        .daemon
        .wait_log("of its lines were dropped", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        warned.contains(&format!("{dropped} of its lines were dropped")),
        "{warned}"
    );
    assert!(
        warned.contains("plugins.log_lines_per_second = 5"),
        "{warned}"
    );
}

/// Two files providing one id: the first by name is loaded, the second is
/// refused and says why. Once the first goes, the second is loaded without
/// being touched (it used to stay refused until it changed).
#[tokio::test]
async fn a_file_refused_for_a_duplicate_id_is_loaded_once_the_id_is_free() {
    let s = setup(
        &[
            ("plugins", "echo.wasm", "a-echo.wasm"),
            ("test-plugins", "echo-v2.wasm", "b-echo.wasm"),
        ],
        "",
        ECHO,
    );
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let mut c = op(&s.daemon).await;
    let list = c.request("l", "plugins.list", json!({})).await.unwrap();
    let files = &list["payload"]["plugins"];
    assert_eq!(files[0]["file"], "a-echo.wasm", "{list}");
    assert_eq!(files[0]["state"], "loaded", "{list}");
    assert_eq!(files[1]["file"], "b-echo.wasm", "{list}");
    assert_eq!(files[1]["state"], "failed", "{list}");
    let error = files[1]["error"].as_str().unwrap();
    assert!(
        error.contains("duplicate plugin id `echo`: a-echo.wasm already provides it"),
        "{error}"
    );
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.1.0"));
    std::fs::remove_file(s.plugins.join("a-echo.wasm")).unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&"loaded".to_string()) {
        let ev = watcher
            .next_event("plugins", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(ev["payload"]["id"], "echo", "{ev}");
        seen.push(ev["payload"]["action"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["removed", "loaded"]);
    assert_eq!(echo_version(&mut c).await.as_deref(), Some("0.2.0"));
    let list = c.request("l2", "plugins.list", json!({})).await.unwrap();
    let files = &list["payload"]["plugins"];
    assert_eq!(files.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(files[0]["file"], "b-echo.wasm", "{list}");
    assert!(files[0].get("error").is_none(), "{list}");
    let r = send(
        &mut c,
        "s",
        json!({"to": "x", "message": "m", "idempotencyKey": "after"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
}

/// A new version of a plugin shares its call slots with the version it
/// replaces, whose calls may still be running: a reload does not double the
/// calls, and so the memory, a plugin may hold (`max_concurrent_calls`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_add_call_slots_while_old_calls_run() {
    let s = misbehave("max_concurrent_calls = 1\ncall_queue_timeout_ms = 300");
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let url = s.daemon.url();
    let sleeper = tokio::spawn(async move {
        let mut c = connect(&url, None, &["operator.write"]).await.unwrap().0;
        c.request(
            "s",
            "send",
            json!({"to": "x", "message": "sleep:6000", "idempotencyKey": "sleep"}),
        )
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same plugin, one custom section longer: a new version to load.
    let file = s.plugins.join("misbehave.wasm");
    let mut wasm = std::fs::read(&file).unwrap();
    wasm.extend_from_slice(&custom_section("reload", b"1"));
    std::fs::write(&file, wasm).unwrap();
    loop {
        let ev = watcher
            .next_event("plugins", Duration::from_secs(10))
            .await
            .unwrap();
        if ev["payload"]["action"] == "replaced" {
            break;
        }
    }
    // The old version's call still holds the one slot.
    assert!(
        !sleeper.is_finished(),
        "the reload took longer than the call"
    );
    let mut c = op(&s.daemon).await;
    let r = ask_keyed(&mut c, "fine", "busy").await;
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("is busy"), "{r}");
    let r = sleeper.await.unwrap();
    assert_eq!(r["payload"]["messageId"], "slept", "{r}");
    let r = ask_keyed(&mut c, "fine", "after").await;
    assert_eq!(r["ok"], true, "{r}");
}

/// What a plugin answers reaches operators, the log and every `health`
/// event, so the host keeps a bounded part of it: an error message and a
/// state detail are cut to 4 KiB, a send's ids to 1 KiB (the message was
/// sent: the send succeeds). The cut is said.
#[tokio::test]
async fn a_plugin_s_long_answers_are_cut() {
    let s = misbehave("");
    let mut c = op(&s.daemon).await;
    let r = ask(&mut c, "longerr").await;
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.len() < 4096 + 200, "{} bytes", msg.len());
    assert!(
        msg.contains(&format!("… ({} bytes cut)", 100_000 - 4096)),
        "{msg:.200}"
    );
    let r = ask(&mut c, "longid").await;
    assert_eq!(r["ok"], true, "{r:.300}");
    for field in ["messageId", "chatId"] {
        let id = r["payload"][field].as_str().unwrap();
        assert!(id.len() < 1024 + 40, "{field}: {} bytes", id.len());
        assert!(
            id.ends_with(&format!("… ({} bytes cut)", 5000 - 1024)),
            "{id:.100}"
        );
    }
    s.daemon
        .wait_log("an id longer than 1024 bytes", Duration::from_secs(5))
        .await
        .unwrap();
    let r = ask(&mut c, "longstate").await;
    assert_eq!(r["payload"]["messageId"], "stated", "{r:.300}");
    let st = c.request("cs", "channels.status", json!({})).await.unwrap();
    let detail = st["payload"]["channelAccounts"]["misbehave"][0]["lastError"]
        .as_str()
        .unwrap();
    assert!(detail.len() < 4096 + 40, "{} bytes", detail.len());
    assert!(
        detail.ends_with(&format!("… ({} bytes cut)", 100_000 - 4096)),
        "{detail:.100}"
    );
}

/// A plugin flipping its account's state in a loop costs operators at most
/// a few `health` events a second (one per 250 ms), and the last state is
/// the one shown.
#[tokio::test]
async fn a_flapping_account_state_is_folded_into_few_health_events() {
    let s = misbehave("");
    let mut watcher = connect(&s.daemon.url(), None, &["operator.read"])
        .await
        .unwrap()
        .0;
    let mut c = op(&s.daemon).await;
    // Let the account's start settle (its health events go by).
    let settle = Instant::now() + Duration::from_millis(800);
    while Instant::now() < settle {
        let _ = watcher.recv_timeout(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    let r = ask(&mut c, "flap:201").await;
    assert_eq!(r["payload"]["messageId"], "flapped 201", "{r}");
    let flapping = t0.elapsed();
    // The events of the flapping, and of the 600 ms after it (ticks come
    // every 100 ms meanwhile).
    let mut events = 0;
    let mut last = Value::Null;
    let end = Instant::now() + Duration::from_millis(600);
    while Instant::now() < end {
        let Ok(v) = watcher.recv_timeout(Duration::from_millis(100)).await else {
            continue;
        };
        if v["event"] == "health" {
            events += 1;
            last = v;
        }
    }
    // One per 250 ms, the first at once, one after the last change.
    let bound = (flapping.as_millis() / 250) as usize + 4;
    eprintln!("{events} health events for 201 changes over {flapping:?} (bound {bound})");
    assert!(
        events >= 1 && events <= bound,
        "{events} events in {flapping:?}"
    );
    // The last change (200: disconnected, "flap 200") is what the last
    // event and channels.status show.
    let text = last.to_string();
    assert!(text.contains("flap 200"), "{text:.2000}");
    let st = c.request("cs", "channels.status", json!({})).await.unwrap();
    let acct = &st["payload"]["channelAccounts"]["misbehave"][0];
    assert_eq!(acct["connected"], false, "{acct}");
    assert_eq!(acct["lastError"], "flap 200", "{acct}");
}

/// What a plugin holds in the host's memory through `wasi:http` (fields,
/// outside its own memory cap) is bounded too: an instance holds at most
/// 1024 resources, a fields resource at most 16 KiB. A plugin creating
/// fields in a loop fails its call, saying the bound, before the host's
/// memory grows by more than that; the plugin still answers after. (Before
/// the bounds one call held 464 MiB of the host's memory with 4000 fields
/// of 100 KiB, and nothing stopped it at more.)
#[tokio::test]
async fn a_plugin_cannot_hold_unbounded_host_memory_through_resources() {
    let s = misbehave("");
    let mut c = op(&s.daemon).await;
    // Within the bounds: held, then freed with the instance.
    let r = ask(&mut c, "fields:100:8").await;
    assert_eq!(
        r["payload"]["messageId"], "held 100 fields of 819200 bytes; refused: None",
        "{r}"
    );
    // A fields resource past 16 KiB fails the call, saying the bound.
    let r = ask(&mut c, "fields:1:64").await;
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("fields hold at most 16384 bytes each"), "{r}");
    let before = s.daemon.peak_rss_kib();
    // 4000 fields of 12 KiB would be 48 MiB of the host's memory, and a
    // loop of them as much as the host has.
    let r = ask(&mut c, "fields:4000:12").await;
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("an instance holds at most 1024 resources at once"),
        "{r}"
    );
    let grew = s.daemon.peak_rss_kib().saturating_sub(before);
    assert!(
        grew < 24 * 1024,
        "the daemon's peak memory grew by {grew} KiB"
    );
    let r = ask(&mut c, "fine").await;
    assert_eq!(r["ok"], true, "{r}");
}

/// A plugin's webhook answer cannot frame the HTTP connection: its
/// `Content-Length`, `Transfer-Encoding`, `Connection` and `Upgrade` are
/// dropped (the gateway frames the body itself), a body on a 204 or 304 is
/// not sent, and a status outside 200–599 (a `101` would hand the
/// connection over) or a header that is not valid HTTP is a `502` naming
/// it. Each is checked on a keep-alive connection followed by a second
/// request, whose answer must still be read as its own.
#[tokio::test]
async fn a_plugin_s_webhook_answer_cannot_frame_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = misbehave("");
    let d = &s.daemon;
    // (what misbehave is told to answer, what the first response must
    // hold, what it must not)
    let big = format!("200\nx-big: {}\n\nhello", "b".repeat(70 * 1024));
    let cases: &[(&str, &str, &str)] = &[
        (&big, "HTTP/1.1 502 Bad Gateway\r\n", "x-big"),
        (
            "200\ncontent-length: 3\n\nhello world",
            "HTTP/1.1 200 OK\r\n",
            "content-length: 3\r\n",
        ),
        (
            "200\ntransfer-encoding: chunked\n\nhello world",
            "HTTP/1.1 200 OK\r\n",
            "transfer-encoding",
        ),
        (
            "101\nupgrade: websocket\nconnection: upgrade\n\nx",
            "HTTP/1.1 502 Bad Gateway\r\n",
            "101 Switching",
        ),
        (
            "204\n\nbody on 204",
            "HTTP/1.1 204 No Content\r\n",
            "content-length",
        ),
        (
            "200\nx-bad: a\rb\n\nhello",
            "HTTP/1.1 502 Bad Gateway\r\n",
            "x-bad",
        ),
        // A plugin cannot lift the sandbox nor ask for sniffing.
        (
            "200\nx-content-type-options: sniff\ncontent-security-policy: default-src *\n\nhello",
            "content-security-policy: sandbox\r\n",
            "x-content-type-options: sniff",
        ),
        (
            "200\nx-fine: yes\nconnection: close\n\nhello world",
            "x-fine: yes\r\n",
            "connection: close",
        ),
    ];
    for (said, must, must_not) in cases {
        let mut c = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        let req = format!(
            "POST /hooks/misbehave/default HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{said}\
             GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            said.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .expect("the connection ends after the second answer")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        let said = &said[..said.len().min(60)];
        // Two answers, each framed by its own Content-Length.
        let second = out.find("HTTP/1.1 200 OK\r\ncontent-type: application/json");
        let second = out.rfind("HTTP/1.1 ").filter(|i| Some(*i) == second);
        let Some(at) = second else {
            panic!("{said:?}: no second answer of its own in {out:?}");
        };
        let (first, rest) = out.split_at(at);
        assert!(
            rest.ends_with(r#"{"ok":true,"status":"live"}"#),
            "{said:?}: {out:?}"
        );
        assert!(
            first.starts_with(must) || first.contains(must),
            "{said:?}: {first:?}"
        );
        assert!(
            !first.to_ascii_lowercase().contains(must_not),
            "{said:?}: {first:?}"
        );
        let (head, body) = first.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        assert_eq!(declared, body.len(), "{said:?}: {first:?}");
    }
    d.wait_log("refused a plugin's webhook answer", Duration::from_secs(5))
        .await
        .unwrap();
}

/// What a plugin says reaches no one it should not. A webhook sender (not
/// authenticated) learns that the plugin failed, not why (the panic here
/// quotes the account's settings, a token among them); the log has the
/// error. And what a plugin says about an account (a state detail, an
/// error, a log line, its stdout) has the account's secrets hidden:
/// `channels.status` is answered to every `operator.read` client, and a
/// log may be shipped elsewhere.
#[tokio::test]
async fn a_plugin_s_words_do_not_hand_out_its_secrets() {
    let s = setup(
        &[("test-plugins", "misbehave.wasm", "misbehave.wasm")],
        "",
        "[channels.misbehave.accounts.default]\napi_token = \"tok-5eed-cafe-0042\"\n\
         auth = { password = 98127364 }\nnick = \"misbot\"\n\
         credentials = { login = \"ops-login-77\" }\n",
    );
    let d = &s.daemon;
    let mut c = op(d).await;
    // Each secret is one: under a key that names one, a number, and all of
    // a table under such a key.
    let secrets = ["tok-5eed", "98127364", "ops-login-77"];
    let shown = |said: &str| secrets.iter().find(|s| said.contains(*s)).copied();
    let got = c.request("g", "config.get", json!({})).await.unwrap();
    assert_eq!(got["ok"], true, "{got}");
    assert_eq!(shown(&got.to_string()), None, "config.get: {got}");
    let r = ask(&mut c, "leak").await;
    let e = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(e.contains("failed with settings"), "{r}");
    let (mut reader, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let detail = reader
        .wait_account_error(
            "misbehave",
            "default",
            "state with settings",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    for said in [&e, &detail] {
        assert_eq!(shown(said), None, "a secret is shown: {said}");
        assert!(
            said.contains("<redacted>") && said.contains("misbot"),
            "{said}"
        );
    }
    let r = reqwest::Client::new()
        .post(d.http("/hooks/misbehave/default"))
        .body("panic")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("plugin `misbehave` failed on this request; the gateway's log says why"),
        "{body}"
    );
    assert!(
        !body.contains("tok-5eed") && !body.contains("panicked"),
        "{body}"
    );
    d.wait_log("webhook panicked", Duration::from_secs(5))
        .await
        .unwrap();
    // Nor in the log: what the plugin logged and printed, its panic, the
    // errors of its send and of its webhook call.
    for line in ["logged settings", "printed settings", "webhook panicked"] {
        let l = d.wait_log(line, Duration::from_secs(5)).await.unwrap();
        assert!(l.contains("<redacted>"), "{l}");
    }
    let log = d.log_text();
    assert_eq!(shown(&log), None, "a secret is in the log:\n{log}");
}

/// `GET /hooks/…` reaches the plugin's `handle-webhook` too (a service
/// that checks a webhook's address first, as Meta's `hub.challenge`),
/// with its method, path and query; a GET a web page makes (an image, a
/// link: cross-site, no `Origin`; or same-origin under a rebound name) is
/// refused like a POST.
#[tokio::test]
async fn a_webhook_get_reaches_the_plugin_with_its_query() {
    let s = misbehave("");
    let d = &s.daemon;
    let url = d.http("/hooks/misbehave/default/verify?hub.mode=subscribe&hub.challenge=1158201444");
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "GET /verify?hub.mode=subscribe&hub.challenge=1158201444"
    );
    let r = reqwest::Client::new()
        .get(&url)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A page whose name was pointed at this machine (DNS rebinding) is
    // same-origin with the gateway under that name, and its GET carries
    // no Origin: it would read the plugin's answer.
    let page = |host: &str, site: &str| {
        reqwest::Client::new()
            .get(&url)
            .header("host", host.to_string())
            .header("sec-fetch-site", site.to_string())
            .send()
    };
    let r = page("evil.example:18789", "same-origin").await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("evil.example:18789") && body.contains("gateway.allowed_hosts"),
        "{body}"
    );
    assert!(!body.contains("hub.challenge"), "{body}");
    // Under a loopback name the page is the gateway's own; a navigation
    // the user made (`none`) is taken under any name.
    for (host, site) in [
        (format!("127.0.0.1:{}", d.port()), "same-origin"),
        ("localhost".to_string(), "same-origin"),
        ("hooks.example".to_string(), "none"),
    ] {
        let r = page(&host, site).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{host} {site}");
    }
    // Other methods are not routed.
    let r = reqwest::Client::new().put(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
}
