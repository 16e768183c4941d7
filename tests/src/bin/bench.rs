//! `make bench`: measures the release daemon over real sockets and prints a
//! table. Not a test: it asserts nothing, it reports numbers.
//!
//! - handshake: connect + challenge + `connect` + hello-ok, one after another;
//! - memory: the daemon's resident set per idle connection;
//! - connect storm: operators with the read scope connecting one after
//!   another, each change of presence sent to all of them;
//! - fan-out: messages POSTed to the echo channel's webhook, each broadcast to
//!   every held connection: deliveries per second and POST→receipt latency;
//! - send: `send` through the echo plugin (a fresh Wasm instance per call).
//!
//! Sizes: `BENCH_CONNECTIONS` (default 1000), `BENCH_MESSAGES` (200),
//! `BENCH_SENDS` (500), `BENCH_HANDSHAKES` (300).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use switchboard_tests::*;

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A number from /proc/<pid>/status (`VmRSS` in KiB, `Threads`).
fn proc_status(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> Result<u64> {
    proc_status(pid, "VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(name: &str, value: String, note: &str) {
    println!("| {name} | {value} | {note} |");
}

fn latencies(name: &str, mut v: Vec<Duration>, note: &str) {
    v.sort();
    row(
        name,
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&v, 0.5).as_secs_f64() * 1e3,
            percentile(&v, 0.99).as_secs_f64() * 1e3,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        ),
        note,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let conns = env_usize("BENCH_CONNECTIONS", 1000);
    let messages = env_usize("BENCH_MESSAGES", 200);
    let sends = env_usize("BENCH_SENDS", 500);
    let handshakes = env_usize("BENCH_HANDSHAKES", 300);

    let dir = tempfile::tempdir()?;
    std::fs::copy(
        built_plugin("plugins", "echo.wasm"),
        dir.path().join("echo.wasm"),
    )?;
    let d = Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[gateway.limits]\nmax_connections = {}\n[plugins]\ndir = \"{}\"\n\
             [channels.echo.accounts.default]\ninterval_secs = 0\n",
            dir.path().join("state").display(),
            conns + 100,
            dir.path().display()
        ))
        .start()?;
    let url = d.url();
    // Let plugin loading and the first account start settle.
    let (mut op, _) = connect(&url, None, &["operator.admin"]).await?;
    op.request(
        "w",
        "send",
        json!({"channel": "echo", "to": "warm", "message": "up", "idempotencyKey": "warm"}),
    )
    .await?;
    drop(op);
    let idle_kib = rss_kib(d.pid())?;

    println!("| benchmark | result | notes |");
    println!("|---|---|---|");

    // Handshakes, one after another.
    let mut hs = Vec::with_capacity(handshakes);
    let t0 = Instant::now();
    for _ in 0..handshakes {
        let t = Instant::now();
        let (c, _) = connect(&url, None, &["operator.read"]).await?;
        hs.push(t.elapsed());
        drop(c);
    }
    let rate = handshakes as f64 / t0.elapsed().as_secs_f64();
    latencies(
        "handshake",
        hs,
        &format!("{handshakes} sequential, {rate:.0}/s, TCP + WebSocket + connect"),
    );

    // Idle connections: operators without the read scope get neither
    // presence nor message events, so this is what a connection itself costs.
    let before = rss_kib(d.pid())?;
    let mut quiet = Vec::with_capacity(conns);
    for i in 0..conns {
        let (c, _) = connect(&url, None, &[])
            .await
            .with_context(|| format!("quiet connection {i}"))?;
        quiet.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(d.pid())?;
    row(
        "memory per idle connection",
        format!(
            "{:.1} KiB",
            after.saturating_sub(before) as f64 / conns.max(1) as f64
        ),
        &format!(
            "daemon VmRSS {:.1} MiB at start (echo plugin loaded), {:.1} MiB with {conns} connections; {} threads",
            idle_kib as f64 / 1024.0,
            after as f64 / 1024.0,
            proc_status(d.pid(), "Threads")?
        ),
    );
    drop(quiet);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Hold `conns` operator connections, each counting message events.
    let received = Arc::new(AtomicU64::new(0));
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut readers = Vec::with_capacity(conns);
    let t_hold = Instant::now();
    for i in 0..conns {
        let (mut c, _) = connect(&url, None, &["operator.read"])
            .await
            .with_context(|| format!("connection {i}"))?;
        let received = received.clone();
        let first_tx = (i == 0).then(|| first_tx.clone());
        readers.push(tokio::spawn(async move {
            let mut got = 0usize;
            while got < messages {
                // Presence events are large (the whole list): only parse
                // what is needed, as a lean client would.
                let Ok(t) = c.recv_text(Duration::from_secs(60)).await else {
                    break;
                };
                if !t.contains(r#""event":"message""#) {
                    continue;
                }
                got += 1;
                received.fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = &first_tx {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if let Some(n) = v["payload"]["text"].as_str() {
                        let _ = tx.send((n.parse().unwrap_or(0), Instant::now()));
                    }
                }
            }
            (got, c)
        }));
    }
    let hold_time = t_hold.elapsed();
    // Let the last presence events drain before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held_kib = rss_kib(d.pid())?;

    row(
        "connect storm",
        format!("{:.1} s", hold_time.as_secs_f64()),
        &format!(
            "{conns} operator.read clients connecting one after another; each connect changes presence, \
             whose event carries the whole list to every operator (coalesced, at most one per 250 ms); \
             daemon VmRSS afterwards {:.1} MiB (allocator high-water mark of those frames)",
            held_kib as f64 / 1024.0
        ),
    );

    // Fan-out: POST messages to the echo webhook; every connection gets each.
    let http = reqwest::Client::new();
    let hook = d.http("/hooks/echo/default");
    let mut sent_at = Vec::with_capacity(messages);
    let t0 = Instant::now();
    for i in 0..messages {
        sent_at.push(Instant::now());
        let r = http
            .post(&hook)
            .json(&json!({"chatId": "bench", "text": i.to_string()}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("webhook answered {}", r.status());
        }
    }
    let want = (messages * conns) as u64;
    let mut lost = 0;
    for r in readers {
        let (got, _c) = r.await?;
        lost += messages - got;
    }
    let elapsed = t0.elapsed();
    let delivered = received.load(Ordering::Relaxed);
    drop(first_tx);
    let mut lat = Vec::new();
    while let Ok((n, at)) = first_rx.try_recv() {
        if let Some(s) = sent_at.get(n as usize) {
            lat.push(at.saturating_duration_since(*s));
        }
    }
    row(
        "broadcast fan-out",
        format!(
            "{:.0} deliveries/s",
            delivered as f64 / elapsed.as_secs_f64()
        ),
        &format!(
            "{messages} messages x {conns} connections in {:.2} s; {delivered}/{want} delivered, {lost} missing",
            elapsed.as_secs_f64()
        ),
    );
    latencies(
        "webhook → operator",
        lat,
        "POST /hooks/echo → plugin handle-webhook → deliver → message event at one of the connections",
    );

    // send through the plugin, one after another.
    let (mut op, _) = connect(&url, None, &["operator.admin"]).await?;
    let mut st = Vec::with_capacity(sends);
    for i in 0..sends {
        let t = Instant::now();
        let r = op
            .request(
                &format!("s{i}"),
                "send",
                json!({"channel": "echo", "to": "bench", "message": "x", "idempotencyKey": format!("b{i}")}),
            )
            .await?;
        if r["ok"] != true {
            bail!("send failed: {r}");
        }
        st.push(t.elapsed());
    }
    latencies(
        "send via plugin",
        st,
        &format!("{sends} sequential `send` calls, each on a fresh echo instance"),
    );
    println!(
        "\nrelease daemon {}, on {} CPUs",
        binary().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}
