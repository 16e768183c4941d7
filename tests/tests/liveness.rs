//! Liveness after the handshake: the gateway pings quiet connections and
//! closes with 1001 those from which nothing (no pong, no frame) arrived
//! for `gateway.idle_timeout_ms`; a client that answers stays.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use switchboard_tests::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_1001_and_an_answering_one_stays() {
    let d = Daemon::builder()
        .config("[gateway]\nping_interval_ms = 200\nidle_timeout_ms = 1000\n")
        .start()
        .unwrap();
    let (mut live, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    // Keeps its socket open and never reads: it answers no ping.
    let mut silent = stuck_client(&d, None).await;

    // The live client only reads (its WebSocket library answers each ping
    // with a pong) for three idle timeouts.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(100), live.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(p)))) => {
                assert!(p.is_empty(), "the gateway's pings carry no payload");
                pings += 1;
            }
            Ok(Some(Ok(Message::Close(f)))) => panic!("the answering client was closed: {f:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the answering client's socket failed: {other:?}"),
        }
    }
    assert!(
        pings >= 5,
        "pinged {pings} times in 3 s at a 200 ms interval"
    );

    assert!(
        d.wait_log("closed silent connections (1001)", Duration::from_secs(1))
            .await
            .is_ok(),
        "the silent client has been closed by now, and the close is logged"
    );
    // Its socket holds the pings it never read, then the close. Read raw
    // (a WebSocket library would answer the pings now, to a closed socket).
    let raw = {
        use tokio::io::AsyncReadExt;
        let sock = match silent.ws.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("plain TCP"),
        };
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
        buf
    };
    let (mut silent_pings, mut at) = (0, 0);
    let closed = loop {
        assert!(at + 2 <= raw.len(), "no close frame in {raw:?}");
        // Unmasked server frames (a presence event may come first).
        let (op, mut len, mut head) = (raw[at] & 0x0f, raw[at + 1] as usize, 2);
        if len == 126 {
            len = u16::from_be_bytes([raw[at + 2], raw[at + 3]]) as usize;
            head = 4;
        }
        assert!(len < 65536, "an unexpected frame: {raw:?}");
        let payload = &raw[at + head..at + head + len];
        match op {
            0x9 => silent_pings += 1,
            0x8 => break payload.to_vec(),
            _ => {}
        }
        at += head + len;
    };
    let code = u16::from_be_bytes([closed[0], closed[1]]);
    let reason = String::from_utf8_lossy(&closed[2..]);
    assert_eq!(code, 1001, "{reason}");
    assert!(
        reason.contains("idle timeout") && reason.contains("1000 ms"),
        "{reason}"
    );
    assert!(silent_pings >= 1, "the silent client was closed unpinged");
    // Its close handshake done (it answers nothing: bounded at 2 s), only
    // the live operator is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = d
            .metric("switchboard_connections{role=\"operator\"}")
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} operators still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The answering client still works.
    let res = live.request("h1", "health", json!({})).await.unwrap();
    assert_eq!(res["ok"], true, "{res}");
}

#[test]
fn an_idle_timeout_not_above_the_ping_interval_is_refused() {
    let (code, err) = Daemon::builder()
        .config("[gateway]\nping_interval_ms = 5000\nidle_timeout_ms = 5000\n")
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "gateway.idle_timeout_ms (5000) must be more than gateway.ping_interval_ms (5000)"
        ),
        "{err}"
    );
}
