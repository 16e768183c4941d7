//! Contract `switchboard:channel@0.2.0` next to 0.1.0: a plugin built
//! against the frozen 0.1.0 WIT (`tests/plugins/legacy01`, wit-bindgen
//! directly, as SDK 0.1 built them) loads, sends and delivers beside 0.2
//! plugins; capabilities are checked before a plugin is called, with errors
//! naming them; attachments reach the plugin and come back in `message`
//! events and the log; `message.action` react/edit/delete reach `act`.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;

const T: Duration = Duration::from_secs(10);

fn daemon(dir: &std::path::Path) -> Daemon {
    Daemon::builder()
        .with_plugins(
            dir,
            &[
                ("plugins", "echo.wasm"),
                ("test-plugins", "legacy01.wasm"),
                ("test-plugins", "nettest.wasm"),
            ],
            "[channels.echo.accounts.default]\ninterval_secs = 0\n\
             [channels.legacy.accounts.default]\n\
             [channels.nettest.accounts.default]\n",
        )
        .start()
        .unwrap()
}

async fn call(c: &mut Client, method: &str, params: Value) -> Value {
    c.request("r", method, params).await.unwrap()
}

fn error_message(r: &Value) -> String {
    assert_eq!(r["ok"], false, "{r}");
    r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_plugin_is_served_next_to_0_2_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    // Events are read on their own connection (`request` skips them).
    let (mut w, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();

    // Each plugin's contract version and capabilities.
    let l = call(&mut c, "plugins.list", json!({})).await;
    let by_id = |id: &str| -> Value {
        l["payload"]["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {l}"))
    };
    assert_eq!(by_id("legacy")["contract"], "0.1.0");
    assert_eq!(by_id("legacy")["capabilities"], json!(["threads"]));
    assert_eq!(by_id("echo")["contract"], "0.2.0");
    assert_eq!(
        by_id("echo")["capabilities"],
        json!(["media", "reactions", "edit", "delete", "threads"])
    );
    assert_eq!(by_id("nettest")["capabilities"], json!([]));

    // The 0.1 plugin sends and delivers (a thread id too: 0.1 carried it).
    let r = call(
        &mut c,
        "send",
        json!({"channel": "legacy", "to": "room", "message": "old", "threadId": "t1", "idempotencyKey": "l1"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    let m = w.message_with_text("legacy: old", T).await.unwrap();
    assert_eq!(
        (m["channel"].clone(), m["threadId"].clone()),
        (json!("legacy"), json!("t1"))
    );
    assert!(m.get("attachments").is_none(), "{m}");
    // …and the 0.2 one beside it.
    let r = call(
        &mut c,
        "send",
        json!({"channel": "echo", "to": "room", "message": "new", "idempotencyKey": "e1"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    w.message_with_text("new", T).await.unwrap();

    // What 0.1 cannot do is refused before it is called, naming the capability.
    let r = call(
        &mut c,
        "send",
        json!({"channel": "legacy", "to": "room", "mediaUrl": "https://x.example/a.png", "idempotencyKey": "l2"}),
    )
    .await;
    let msg = error_message(&r);
    assert!(
        msg.contains("`media` capability") && msg.contains("legacy"),
        "{msg}"
    );
    assert_eq!(r["error"]["details"]["capability"], "media");
    let r = call(
        &mut c,
        "message.action",
        json!({"channel": "legacy", "action": "react", "idempotencyKey": "l3",
               "params": {"target": "room", "messageId": "1", "emoji": "👍"}}),
    )
    .await;
    assert_eq!(
        error_message(&r),
        "Channel legacy does not support action react."
    );
    // A 0.2 plugin without `threads` is refused a thread id by name.
    let r = call(
        &mut c,
        "send",
        json!({"channel": "nettest", "to": "x", "message": "m", "threadId": "t", "idempotencyKey": "n1"}),
    )
    .await;
    let msg = error_message(&r);
    assert!(
        msg.contains("`threadId`") && msg.contains("`threads` capability"),
        "{msg}"
    );

    // `plugins check` names the contract too.
    let out = std::process::Command::new(binary())
        .args(["plugins", "check"])
        .arg(dir.path().join("legacy01.wasm"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("contract: switchboard:channel@0.1.0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_and_actions_reach_a_0_2_plugin_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    // Events are read on their own connection (`request` skips them).
    let (mut w, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();

    let r = call(
        &mut c,
        "send",
        json!({"channel": "echo", "to": "room", "message": "look", "idempotencyKey": "a1",
               "mediaUrls": ["https://x.example/cat.png"], "buffer": "aGVsbG8=", "filename": "hello.txt",
               "contentType": "text/plain"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}\n{}", d.log_text());
    // Echo reports each attachment it was given as a channel would.
    let back = w.message_with_text("look", T).await.unwrap();
    assert_eq!(back["direction"], "inbound");
    // The outbound message's event lists what was sent (metadata, no bytes).
    let out = w.next_message(T).await.unwrap();
    assert_eq!(out["direction"], "outbound", "{out}");
    assert_eq!(
        out["attachments"],
        json!([
            {"kind": "image", "url": "https://x.example/cat.png"},
            {"kind": "document", "mimeType": "text/plain", "fileName": "hello.txt", "size": 5}
        ])
    );
    assert_eq!(back["attachments"], out["attachments"]);
    // The log keeps them.
    let h = call(&mut c, "messages.history", json!({"channel": "echo"})).await;
    let msgs = h["payload"]["messages"].as_array().unwrap();
    assert!(
        msgs.iter().all(|m| m["attachments"] == out["attachments"]),
        "{msgs:?}"
    );

    // react, edit and delete reach `act` (echo says what it did).
    for (action, params, says) in [
        (
            "react",
            json!({"messageId": "7", "emoji": "👍"}),
            "react 👍 on 7",
        ),
        (
            "react",
            json!({"messageId": "7", "emoji": "👍", "remove": true}),
            "unreact 👍 on 7",
        ),
        (
            "edit",
            json!({"messageId": "7", "message": "fixed"}),
            "edit fixed on 7",
        ),
        ("delete", json!({"messageId": "7"}), "delete on 7"),
    ] {
        let mut p = params.clone();
        p["target"] = json!("room");
        let r = call(
            &mut c,
            "message.action",
            json!({"channel": "echo", "action": action, "params": p, "idempotencyKey": format!("x-{says}")}),
        )
        .await;
        assert_eq!(r["ok"], true, "{action}: {r}");
        let m = w.message_with_text(says, T).await.unwrap();
        assert_eq!(
            (m["chatId"].clone(), m["replyToId"].clone()),
            (json!("room"), json!("7"))
        );
    }
    // An action the gateway does not map is refused in OpenClaw's words.
    let r = call(
        &mut c,
        "message.action",
        json!({"channel": "echo", "action": "poll", "params": {"target": "room"}, "idempotencyKey": "p"}),
    )
    .await;
    assert_eq!(
        error_message(&r),
        "Channel echo does not support action poll."
    );
}
