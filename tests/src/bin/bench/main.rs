//! `make bench`: measures the release daemon over real sockets and prints a
//! table. Not a test: it asserts nothing, it reports numbers.
//!
//! - handshake: connect + challenge + `connect` + hello-ok, one after another;
//! - memory: the daemon's resident set per idle connection;
//! - connect storm: operators with the read scope connecting one after
//!   another, each change of presence sent to all of them;
//! - fan-out: messages POSTed to the echo channel's webhook, each broadcast to
//!   every held connection: deliveries per second and POST→receipt latency;
//! - send: `send` through the echo plugin (a fresh Wasm instance per call);
//! - hot reload: `plugins.reload` of a changed echo, `BENCH_RELOADS` times,
//!   and the daemon's RSS across them (no growth: nothing kept per reload);
//! - the message log: durable `deliver` throughput and latency with 1, 8 and
//!   64 accounts delivering at once (echo's `burst`), `sync = full` and
//!   `normal`; `messages.history` pages from a log of `BENCH_LOG_ROWS` rows;
//!   `send` with no idempotency records and with `BENCH_LOG_ROWS` of them.
//!
//! First the scale targets of issue 11 (`scale.rs`, each printed with its
//! target; `BENCH_ONLY=scale` runs only those, `BENCH_HELD` sets the held
//! connections, default 15000; `BENCH_FANOUT_MESSAGES` the messages of the
//! fan-out row and its floor, default 200).
//!
//! Sizes: `BENCH_CONNECTIONS` (default 1000), `BENCH_MESSAGES` (200),
//! `BENCH_SENDS` (500), `BENCH_HANDSHAKES` (300), `BENCH_RELOADS` (300),
//! `BENCH_LOG_ROWS` (1000000). `BENCH_ONLY=log` runs only the message log's
//! part (`BENCH_RATE` sets echo's `max_messages_per_second` there; default
//! 0, no bound), `BENCH_ONLY=reload` only the hot reloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use switchboard_tests::*;

mod scale;

/// Lets plugin loading and the first account start settle: one `send`
/// through echo (compiled and instantiated once).
async fn warm_up(url: &str, token: Option<&str>) -> Result<()> {
    let (mut op, _) = connect(url, token, &["operator.admin"]).await?;
    op.request(
        "w",
        "send",
        json!({"channel": "echo", "to": "warm", "message": "up", "idempotencyKey": "warm"}),
    )
    .await?;
    Ok(())
}

/// Pins this process to CPU 1 and returns the CPU for the daemon (0), when
/// there are at least two CPUs and `taskset` is installed.
fn pin() -> Option<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("(one CPU: daemon and load generator share it)");
        return None;
    }
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("(taskset is not available: nothing is pinned; apt-get install util-linux)");
        return None;
    }
    // Every daemon this run starts goes to CPU 0 (the harness reads this).
    std::env::set_var("SWITCHBOARD_BENCH_CPU", "0");
    Some(0)
}

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
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--floor") {
        let n = |i: usize, d: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
        return scale::floor_server(n(2, 1000) as usize, n(3, 1000) as usize, n(4, 0));
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "log" {
        return log_benches(sends).await;
    }
    if only == "reload" {
        println!("| benchmark | result | notes |\n|---|---|---|");
        return reload_soak(env_usize("BENCH_RELOADS", 300)).await;
    }
    println!("## Scale targets (daemon on CPU 0, load generator on CPU 1)\n");
    let cpu = pin();
    scale::run(cpu).await?;
    if only == "scale" {
        return Ok(());
    }
    println!("\n## Latency and the message log (same pinning)\n");

    let dir = tempfile::tempdir()?;
    std::fs::copy(
        built_plugin("plugins", "echo.wasm"),
        dir.path().join("echo.wasm"),
    )?;
    let d = Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[gateway.limits]\nmax_connections = {}\n[plugins]\ndir = \"{}\"\n\
             [channels.echo]\nmax_messages_per_second = 0\n\
             [channels.echo.accounts.default]\ninterval_secs = 0\n",
            dir.path().join("state").display(),
            conns + 100,
            dir.path().display()
        ))
        .start()?;
    let url = d.url();
    warm_up(&url, None).await?;
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
    let st = send_latencies(&mut op, sends, "default", "b").await?;
    latencies(
        "send via plugin",
        st,
        &format!("{sends} sequential `send` calls, each on a fresh echo instance"),
    );
    drop(op);
    drop(d);
    reload_soak(env_usize("BENCH_RELOADS", 300)).await?;
    log_benches(sends).await?;
    println!(
        "\nrelease daemon {}; daemons pinned to CPU {}, this generator to CPU 1",
        binary().display(),
        std::env::var("SWITCHBOARD_BENCH_CPU").unwrap_or_else(|_| "(none)".into())
    );
    Ok(())
}

/// Hot reload, `reloads` times: echo's file replaced by a copy that differs
/// in one custom section (so each is a new plugin: compiled, swapped in, its
/// account restarted), then `plugins.reload`. Reports the reload's round trip
/// and the daemon's RSS after a third of the reloads and after all of them:
/// a reload that leaked (a compiled component, a store, a task) would show
/// as growth between the two.
async fn reload_soak(reloads: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let echo = std::fs::read(built_plugin("plugins", "echo.wasm"))?;
    let file = dir.path().join("echo.wasm");
    std::fs::write(&file, &echo)?;
    let d = Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\nwatch = false\n\
             [channels.echo]\nmax_messages_per_second = 0\n\
             [channels.echo.accounts.default]\ninterval_secs = 0\n",
            dir.path().join("state").display(),
            dir.path().display()
        ))
        .start()?;
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await?;
    let mut took = Vec::with_capacity(reloads);
    let (mut third, mut threads) = (0, 0);
    for i in 1..=reloads {
        let mut wasm = echo.clone();
        wasm.extend_from_slice(&custom_section("bench-reload", i.to_string().as_bytes()));
        let tmp = dir.path().join("echo.tmp");
        std::fs::write(&tmp, &wasm)?;
        std::fs::rename(&tmp, &file)?;
        let t = Instant::now();
        let r = op.request("rl", "plugins.reload", json!({})).await?;
        took.push(t.elapsed());
        if r["payload"]["changes"][0]["action"] != "replaced" {
            bail!("reload {i} did not replace echo: {r}");
        }
        if i == reloads / 3 {
            third = rss_kib(d.pid())?;
            threads = proc_status(d.pid(), "Threads")?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = rss_kib(d.pid())?;
    latencies(
        "hot reload",
        took,
        &format!("{reloads} `plugins.reload` calls, each compiling a changed echo and restarting its account"),
    );
    let (mut cached, mut cached_bytes) = (0, 0);
    for e in std::fs::read_dir(dir.path().join("state/cache"))?.flatten() {
        cached += 1;
        cached_bytes += e.metadata().map_or(0, |m| m.len());
    }
    let grew = last as f64 - third as f64;
    row(
        "RSS across hot reloads",
        format!(
            "{:+.2} KiB per reload",
            grew / (reloads - reloads / 3).max(1) as f64
        ),
        &format!(
            "VmRSS {:.1} MiB after {} reloads, {:.1} MiB after {reloads}; threads {threads} then {}; \
             compiled-plugin cache {cached} file(s), {:.1} MiB",
            third as f64 / 1024.0,
            reloads / 3,
            last as f64 / 1024.0,
            proc_status(d.pid(), "Threads")?,
            cached_bytes as f64 / (1024.0 * 1024.0)
        ),
    );
    Ok(())
}

/// A daemon with echo accounts `a0..a{accounts}` (stopped until started),
/// each delivering `burst` messages when its `run` starts.
fn log_daemon(dir: &std::path::Path, accounts: usize, burst: usize, sync: &str) -> Result<Daemon> {
    // No delivery rate by default: the bursts measure the log. `BENCH_RATE`
    // sets one (high enough never to hold a burst back, it measures the
    // bounded path's own cost).
    let rate = env_usize("BENCH_RATE", 0);
    let mut toml =
        format!("[store]\nsync = \"{sync}\"\n[channels.echo]\nmax_messages_per_second = {rate}\n");
    for i in 0..accounts {
        toml.push_str(&format!(
            "[channels.echo.accounts.a{i}]\nenabled = false\nburst = {burst}\nchat = \"c{i}\"\n"
        ));
    }
    Daemon::builder()
        .with_plugins(dir, &[("plugins", "echo.wasm")], &toml)
        .start()
}

async fn log_benches(sends: usize) -> Result<()> {
    let rows = env_usize("BENCH_LOG_ROWS", 1_000_000);
    // Durable deliver: every account's run delivers its burst back to back.
    for sync in ["full", "normal"] {
        for (accounts, burst) in [(1usize, 4000usize), (8, 1500), (64, 400)] {
            let dir = tempfile::tempdir()?;
            let d = log_daemon(dir.path(), accounts, burst, sync)?;
            let (mut op, _) = connect(&d.url(), None, &["operator.read"]).await?;
            // Another connection starts the accounts: answers read on this
            // one would pass over message events.
            let (mut starter, _) = connect(&d.url(), None, &["operator.admin"]).await?;
            let total = accounts * burst;
            let t0 = Instant::now();
            for i in 0..accounts {
                let r = starter
                    .request(
                        &format!("st{i}"),
                        "channels.start",
                        json!({"channel": "echo", "accountId": format!("a{i}")}),
                    )
                    .await?;
                if r["ok"] != true {
                    bail!("channels.start: {r}");
                }
            }
            let mut lat = Vec::with_capacity(total);
            let mut got = 0;
            // Each account's last message reports its delivers' latency.
            let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
            while got < total + accounts {
                let m = op.next_message(Duration::from_secs(30)).await?;
                if m["messageId"]
                    .as_str()
                    .is_some_and(|id| id.ends_with("-stats"))
                {
                    let text = m["text"].as_str().unwrap_or_default();
                    let field = |k: &str| -> u64 {
                        text.split_whitespace()
                            .find_map(|w| w.strip_prefix(k))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0)
                    };
                    p50s.push(field("p50="));
                    p99s.push(field("p99="));
                    got += 1;
                    continue;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64;
                let ts = m["ts"].as_u64().unwrap_or(now);
                lat.push(Duration::from_millis(now.saturating_sub(ts)));
                got += 1;
            }
            let elapsed = t0.elapsed();
            let mut sorted = lat.clone();
            sorted.sort();
            p50s.sort_unstable();
            row(
                &format!("durable deliver, {accounts} account(s), sync = {sync}"),
                format!(
                    "{:.0} messages/s; deliver acknowledged p50 {:.2} ms, p99 {:.2} ms; deliver→event p99 {} ms",
                    total as f64 / elapsed.as_secs_f64(),
                    p50s.get(p50s.len() / 2).copied().unwrap_or(0) as f64 / 1e3,
                    p99s.iter().max().copied().unwrap_or(0) as f64 / 1e3,
                    percentile(&sorted, 0.99).as_millis()
                ),
                &format!("{total} messages, {accounts} echo `run`s delivering back to back; ack latency measured in the plugin (median account's p50, worst account's p99); event latency from the plugin's ms timestamp to one operator"),
            );
            drop(op);
            drop(starter);
            drop(d);
        }
    }
    // A big log: history pages and send with many idempotency records.
    let dir = tempfile::tempdir()?;
    let d = log_daemon(dir.path(), 1, 0, "full")?;
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await?;
    let empty_send = send_latencies(&mut op, sends, "a0", "e").await?;
    drop(op);
    drop(d);
    let t = Instant::now();
    prefill(&dir.path().join("state/switchboard.db"), rows)?;
    let fill = t.elapsed();
    let d = log_daemon(dir.path(), 1, 0, "full")?;
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await?;
    for (name, params) in [
        ("newest page", json!({"limit": 100})),
        (
            "page after the middle",
            json!({"afterSeq": rows / 2, "limit": 100}),
        ),
        (
            "newest page of one chat",
            json!({"chatId": "c42", "limit": 100}),
        ),
    ] {
        let mut v = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            let r = op
                .request(&format!("h{i}"), "messages.history", params.clone())
                .await?;
            if r["payload"]["messages"].as_array().map_or(0, |m| m.len()) != 100 {
                bail!("history: {r}");
            }
            v.push(t.elapsed());
        }
        latencies(
            &format!("messages.history, {name}"),
            v,
            &format!("100 messages from a log of {rows} rows, 200 requests one after another"),
        );
    }
    let full_send = send_latencies(&mut op, sends, "a0", "f").await?;
    latencies(
        "send, no idempotency records",
        empty_send,
        &format!("{sends} sequential `send` calls through echo on a fresh log"),
    );
    latencies(
        "send, with many idempotency records",
        full_send,
        &format!("the same with {rows} idempotency records (and {rows} messages) in the log; pre-filled in {:.1} s", fill.as_secs_f64()),
    );
    Ok(())
}

async fn send_latencies(
    op: &mut Client,
    sends: usize,
    account: &str,
    prefix: &str,
) -> Result<Vec<Duration>> {
    let mut st = Vec::with_capacity(sends);
    for i in 0..sends {
        let t = Instant::now();
        let r = op
            .request(
                &format!("s{i}"),
                "send",
                json!({"channel": "echo", "accountId": account, "to": "bench", "message": "x", "idempotencyKey": format!("{prefix}{i}")}),
            )
            .await?;
        if r["ok"] != true {
            bail!("send failed: {r}");
        }
        st.push(t.elapsed());
    }
    Ok(st)
}

/// Writes `rows` messages and as many idempotency records straight into a
/// stopped daemon's database.
fn prefill(db: &std::path::Path, rows: usize) -> Result<()> {
    let mut c = rusqlite::Connection::open(db)?;
    c.execute_batch("PRAGMA synchronous=OFF;")?;
    let tx = c.transaction()?;
    {
        let mut m = tx.prepare(
            "INSERT INTO messages (direction, channel, account, chat, sender, message_id, text, ts, received_at)
             VALUES (0, 'echo', 'a0', ?1, 'u', ?2, 'prefilled message text', ?3, ?3)",
        )?;
        let mut k =
            tx.prepare("INSERT INTO idempotency (key, created_at, receipt) VALUES (?1, ?2, ?3)")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        for i in 0..rows {
            m.execute(rusqlite::params![
                format!("c{}", i % 100),
                format!("p{i}"),
                now
            ])?;
            k.execute(rusqlite::params![
                format!("pre-{i}"),
                now,
                r#"{"runId":"x","messageId":"y","channel":"echo","chatId":"z"}"#
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}
