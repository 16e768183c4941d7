//! Fifteen thousand sockets at once: the daemon holds them all, still
//! answers `health`, and stays small. Skipped, with the reason printed, when
//! the open-file limit cannot allow it. (Speed and memory targets are for
//! `make bench`; this checks the capability, with generous bounds.)

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_tests::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const SOCKETS: u64 = 15_000;
/// RSS above the idle daemon per connection, at most (a debug build; the
/// release target is 8 KiB).
const MAX_KIB_PER_CONNECTION: u64 = 48;

fn nofile(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let nums: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn open(
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let cfg = WebSocketConfig::default().read_buffer_size(1024);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(cfg))
            .await?;
    ws.next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no challenge"))??;
    // One instance for all: presence stays one entry.
    let mut p = connect_params(None, &["operator.read"]);
    p["client"]["instanceId"] = json!("scale-test");
    let req = json!({"type": "req", "id": "c", "method": "connect", "params": p});
    ws.send(Message::text(req.to_string())).await?;
    loop {
        match ws.next().await.ok_or_else(|| anyhow::anyhow!("closed"))?? {
            Message::Text(t) if t.contains(r#""type":"res""#) => {
                anyhow::ensure!(t.contains(r#""ok":true"#), "refused: {t}");
                return Ok(ws);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_thousand_sockets_at_once() {
    // This process needs a descriptor per socket too: raise its soft limit.
    let me = std::process::id().to_string();
    let need = SOCKETS + 500;
    let (soft, hard) = nofile(&me);
    if soft < need && hard >= need {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={me}"))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    let (soft, hard) = nofile(&me);
    if soft < need {
        println!(
            "SKIPPED: {SOCKETS} sockets need an open-file limit of at least {need}; \
             this process has {soft} (hard {hard}): raise it with `ulimit -n {need}`"
        );
        return;
    }
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.limits]\nmax_connections = {}\n",
            SOCKETS + 100
        ))
        .start()
        .unwrap();
    let idle = rss_kib(d.pid());
    let addr = d.addr;
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..SOCKETS / 32 + u64::from(t < SOCKETS % 32) {
                let ws = open(addr)
                    .await
                    .unwrap_or_else(|e| panic!("socket {i} of task {t}: {e:#}"));
                mine.push(ws);
            }
            mine
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.extend(t.await.unwrap());
    }
    assert_eq!(held.len() as u64, SOCKETS);
    // Every one is registered, and the daemon still answers.
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let h = c.request("h", "health", json!({})).await.unwrap();
    assert_eq!(h["ok"], true, "{h}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per = rss_kib(d.pid()).saturating_sub(idle) / SOCKETS;
    assert!(
        per <= MAX_KIB_PER_CONNECTION,
        "{per} KiB per connection above the idle daemon ({idle} KiB idle)"
    );
    let open_now = d
        .metric(r#"switchboard_connections{role="operator"}"#)
        .await
        .unwrap();
    assert_eq!(open_now, SOCKETS + 1, "operators registered");
    drop(held);
}
