//! The webhook plugin in the real daemon, tested the way a plugin author
//! tests theirs: through the public test kit (`switchboard-testkit`), with
//! the component built from this crate and an HTTP fake as the upstream.

use std::time::Duration;

use serde_json::json;
use switchboard_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_arrives_and_a_send_goes_out() {
    let upstream = HttpFake::start().await.unwrap();
    upstream.on("POST", "/out", 200, json!({"id": "up-1"}));
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "[channels.webhook]\nnetwork = [\"127.0.0.1:{}\"]\n\
             [channels.webhook.accounts.default]\nurl = \"{}/out\"\n",
            upstream.port,
            upstream.url()
        ))
        .with_wasm(&wasm)
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    c.wait_connected("webhook", "default", Duration::from_secs(10))
        .await
        .unwrap();

    // In: a POST to the hook becomes a message event.
    let (status, answer) = d
        .post_json(
            "/hooks/webhook/default",
            &json!({"chatId": "room-1", "senderId": "ann", "text": "in through the hook"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let m = c
        .message_with_text("in through the hook", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m["chatId"], "room-1");
    assert_eq!(m["senderId"], "ann");
    assert_eq!(m["direction"], "inbound");

    // Out: a send reaches the upstream, and its id comes back.
    let r = c
        .send_message("webhook", "room-1", "out to the upstream")
        .await
        .unwrap();
    assert_eq!(r["payload"]["messageId"], "up-1", "{r}\n{}", d.log_text());
    let got = upstream
        .wait_requests(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got[0].path, "/out");
    assert_eq!(got[0].json()["text"], "out to the upstream");
    assert_eq!(got[0].json()["to"], "room-1");
}
