//! The scale targets of `make bench` (issue 11): the daemon pinned to one
//! core (`taskset`), this load generator to the other. Each figure is
//! printed with its target. Server CPU is read from `/proc/<pid>/stat`
//! (user + system), the generator's own from `/proc/self/stat`, so a reader
//! can see whether the generator was the bottleneck.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_tests::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const TOKEN: &str = "bench-token";

type Ws = WebSocketStream<TcpStream>;

/// CPU seconds (user + system) of a process, from /proc.
pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn target_row(name: &str, value: String, target: &str, ok: bool, note: &str) {
    let mark = if ok { "met" } else { "MISSED" };
    println!("| {name} | {value} | {target} | {mark} | {note} |");
}

/// A lean operator: small read buffer, token auth, its own instance id.
async fn operator(addr: std::net::SocketAddr, instance: &str, scopes: &[&str]) -> Result<Ws> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let cfg = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(cfg))
            .await?;
    let _challenge = ws.next().await.context("no challenge")??;
    let mut p = connect_params(Some(TOKEN), scopes);
    p["client"]["instanceId"] = json!(instance);
    let req = json!({"type": "req", "id": "c", "method": "connect", "params": p});
    ws.send(Message::text(req.to_string())).await?;
    loop {
        match ws.next().await.context("closed before hello-ok")?? {
            Message::Text(t) if t.contains(r#""type":"res""#) => {
                if !t.contains(r#""ok":true"#) {
                    bail!("connect refused: {t}");
                }
                return Ok(ws);
            }
            _ => {}
        }
    }
}

/// Opens `n` operators, `parallel` at a time.
async fn open_many(
    addr: std::net::SocketAddr,
    n: usize,
    parallel: usize,
    prefix: &str,
) -> Result<Vec<Ws>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(mine);
                }
                mine.push(operator(addr, &format!("{prefix}-{i}"), &["operator.read"]).await?);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Keeps reading a held connection (presence, ticks), dropping what it reads.
fn drain(mut ws: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
}

/// The message number in a `message` event's text, without parsing JSON.
fn message_number(t: &str) -> Option<usize> {
    if !t.contains(r#""event":"message""#) {
        return None;
    }
    let i = t.find(r#""text":"n"#)? + 9;
    let end = t[i..].find('"')? + i;
    t[i..end].parse().ok()
}

/// Wall-clock nanoseconds since the Unix epoch (the clock the kernel's
/// receive timestamps use).
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reads a held operator connection below the WebSocket library and takes
/// each `message` event's arrival time from the kernel (`SO_TIMESTAMPNS`:
/// when the segment reached the socket), not from when this generator got
/// round to it: with 1000 sockets on one core the generator's own
/// processing would otherwise be part of the figure. See [`stamped_tcp`].
fn stamped_reader(
    ws: Ws,
    messages: usize,
    delivered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<(usize, u64, u64)>> {
    stamped_tcp(ws.into_inner(), messages, delivered)
}

/// Reads a socket's byte stream without parsing frames: it is searched for
/// each message's marker (`"text":"n<i>"`), each number counted once.
/// Returns, per message seen, (its number, when the kernel received it,
/// when this generator read it), both in ns since the epoch (the kernel's
/// time is the read's when it gave none).
fn stamped_tcp(
    stream: TcpStream,
    messages: usize,
    delivered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<(usize, u64, u64)>> {
    use std::os::fd::AsRawFd;
    tokio::spawn(async move {
        let fd = stream.as_raw_fd();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut seen = vec![false; messages];
        let mut got = 0;
        let mut out = Vec::with_capacity(messages);
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(120);
        while got < messages && Instant::now() < deadline {
            if tokio::time::timeout(Duration::from_secs(5), stream.readable())
                .await
                .is_err()
            {
                continue;
            }
            let r = stream.try_io(tokio::io::Interest::READABLE, || recv_stamped(fd, &mut buf));
            let (n, kernel_ns) = match r {
                Ok((0, _)) => break,
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            let read_ns = realtime_ns();
            // Keep the tail of the previous read: a marker may straddle two.
            let keep = carry.len().saturating_sub(32);
            carry.drain(..keep);
            let start = carry.len();
            carry.extend_from_slice(&buf[..n]);
            let pat = br#""text":"n"#;
            let mut i = 0;
            while let Some(p) = carry[i..].windows(pat.len()).position(|w| w == pat) {
                let d0 = i + p + pat.len();
                let digits = carry[d0..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                i = d0;
                // Only markers that end in this read, complete with the quote.
                if digits == 0 || carry.get(d0 + digits) != Some(&b'"') || d0 + digits < start {
                    continue;
                }
                let Some(num) = std::str::from_utf8(&carry[d0..d0 + digits])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    continue;
                };
                if num >= messages || seen[num] {
                    continue;
                }
                seen[num] = true;
                got += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
                let at = if kernel_ns > 0 { kernel_ns } else { read_ns };
                out.push((num, at, read_ns));
            }
        }
        out
    })
}

/// `recvmsg` with room for one `SCM_TIMESTAMPNS`: (bytes, its timestamp in
/// ns since the epoch, 0 when there was none).
fn recv_stamped(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, u64)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: zeroed msghdr is valid; pointers and lengths describe live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: as above; MSG_DONTWAIT, the socket is non-blocking anyway.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ts = 0u64;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                ts = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, ts))
}

struct FanOut {
    deliveries: u64,
    server_cpu: f64,
    client_cpu: f64,
    wall: Duration,
    /// POST → arrival at each operator's socket (kernel timestamp) in the
    /// latency run; POST → read by the generator otherwise.
    latencies: Vec<Duration>,
    /// POST → read by the generator.
    read_latencies: Vec<Duration>,
    /// Per message, its earliest arrival (the first operator served).
    first_latencies: Vec<Duration>,
}

/// Whose webhook the fan-out's messages are posted to.
#[derive(Clone, Copy)]
enum Hook {
    /// echo's: it numbers each message in its key-value store (a claim and
    /// a set, two more commits) before it delivers it.
    Echo,
    /// The first-party `webhook` channel, unsigned: one `deliver`.
    Webhook,
}

/// `conns` operators each receive `messages` webhook messages, posted
/// `every` apart (or as fast as 16 posters go when `None`).
async fn fan_out(
    d: &Daemon,
    conns: usize,
    messages: usize,
    every: Option<Duration>,
    tag: &str,
    hook: Hook,
) -> Result<FanOut> {
    let pid = d.pid().to_string();
    let socks = open_many(d.addr, conns, 32, tag).await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // presence settles
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..messages).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for mut ws in socks {
        let delivered = delivered.clone();
        if every.is_some() {
            readers.push(stamped_reader(ws, messages, delivered));
            continue;
        }
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(messages);
            let mut got = 0;
            while got < messages {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_secs(60), ws.next()).await
                else {
                    break;
                };
                let Message::Text(t) = m else { continue };
                if let Some(n) = message_number(t.as_str()) {
                    got += 1;
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let now = realtime_ns();
                    lat.push((n, now, now));
                }
            }
            lat
        }));
    }
    let http = reqwest::Client::new();
    let (url, sender) = match hook {
        Hook::Echo => (d.http("/hooks/echo/default"), None),
        Hook::Webhook => (d.http("/hooks/webhook/bench"), Some("bench")),
    };
    let cpu0 = cpu_secs(&pid);
    let me0 = cpu_secs("self");
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let posters = if every.is_some() { 1 } else { 16 };
    let mut tasks = Vec::new();
    for _ in 0..posters {
        let (http, url, next, sent) = (http.clone(), url.clone(), next.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = every.map(tokio::time::interval);
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    return Ok::<_, anyhow::Error>(());
                }
                sent[i].store(realtime_ns(), Ordering::Relaxed);
                let mut body = json!({"chatId": "bench", "text": format!("n{i}")});
                if let Some(s) = sender {
                    body["senderId"] = json!(s);
                }
                let r = http.post(&url).json(&body).send().await?;
                if !r.status().is_success() {
                    let status = r.status();
                    bail!(
                        "webhook answered {status}: {}",
                        r.text().await.unwrap_or_default()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (mut latencies, mut read_latencies) = (Vec::new(), Vec::new());
    let mut first = vec![Duration::MAX; messages];
    let since = |n: usize, at: u64| {
        Duration::from_nanos(
            at.saturating_sub(sent.get(n).map_or(at, |s| s.load(Ordering::Relaxed))),
        )
    };
    for r in readers {
        for (n, k, u) in r.await? {
            let k = since(n, k);
            latencies.push(k);
            read_latencies.push(since(n, u));
            if let Some(f) = first.get_mut(n) {
                *f = (*f).min(k);
            }
        }
    }
    let mut first_latencies: Vec<Duration> =
        first.into_iter().filter(|d| *d != Duration::MAX).collect();
    first_latencies.sort();
    let wall = t0.elapsed();
    latencies.sort();
    read_latencies.sort();
    Ok(FanOut {
        deliveries: delivered.load(Ordering::Relaxed),
        server_cpu: cpu_secs(&pid) - cpu0,
        client_cpu: cpu_secs("self") - me0,
        wall,
        latencies,
        read_latencies,
        first_latencies,
    })
}

/// The physical floor: a plain TCP server (this binary, `--floor`, pinned
/// to the daemon's core) writing one small frame per socket per event to
/// `conns` sockets, as fast as it can (`every` = `None`) or one event every
/// `every`.
struct Floor {
    /// Deliveries per server CPU-second.
    rate: f64,
    cpu: f64,
    /// Paced only: from the start of each event's writes to its arrival at
    /// each socket (kernel receive timestamp), sorted.
    latencies: Vec<Duration>,
}

async fn floor(
    conns: usize,
    events: usize,
    every: Option<Duration>,
    cpu: Option<usize>,
) -> Result<Floor> {
    let exe = std::env::current_exe()?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut c2 = std::process::Command::new("taskset");
            c2.arg("-c").arg(c.to_string()).arg(exe);
            c2
        }
        None => std::process::Command::new(exe),
    };
    let every_us = every.map_or(0, |d| d.as_micros() as u64);
    let mut child = cmd
        .arg("--floor")
        .arg(conns.to_string())
        .arg(events.to_string())
        .arg(every_us.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    let port: u16 = line.trim().parse().context("floor server port")?;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut stamped = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..conns {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        if every.is_some() {
            stamped.push(stamped_tcp(s, events, delivered.clone()));
            continue;
        }
        plain.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }));
    }
    for r in plain {
        r.await?;
    }
    let mut arrivals = Vec::new();
    for r in stamped {
        arrivals.extend(r.await?);
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    let cpu_s: f64 = line.trim().parse().unwrap_or(0.0);
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    let _ = child.wait();
    let starts: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut latencies: Vec<Duration> = arrivals
        .into_iter()
        .filter_map(|(n, at, _)| {
            starts
                .get(n)
                .map(|s| Duration::from_nanos(at.saturating_sub(*s)))
        })
        .collect();
    latencies.sort();
    Ok(Floor {
        rate: (conns * events) as f64 / cpu_s.max(1e-6),
        cpu: cpu_s,
        latencies,
    })
}

/// `--floor <conns> <events> [<every_us>]`: accept `conns` sockets, then
/// write `events` 100-byte WebSocket text frames to each, one event at a
/// time (every `every_us` µs when not 0; the frame carries the event's
/// marker, `"text":"n<i>"`); print the port first, then the CPU seconds
/// used, then each event's start (ns since the epoch) on one line.
pub fn floor_server(conns: usize, events: usize, every_us: u64) -> Result<()> {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut socks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (s, _) = l.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let mut starts = Vec::with_capacity(events);
    let cpu0 = cpu_secs("self");
    let t0 = Instant::now();
    for i in 0..events {
        if every_us > 0 {
            let at = t0 + Duration::from_micros(every_us * i as u64);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let mut payload =
            format!(r#"{{"type":"event","event":"message","payload":{{"text":"n{i}"}}"#);
        while payload.len() < 97 {
            payload.push(' ');
        }
        payload.push('}');
        let mut frame = vec![0x81u8, payload.len() as u8];
        frame.extend_from_slice(payload.as_bytes());
        starts.push(realtime_ns());
        for s in socks.iter_mut() {
            s.write_all(&frame)?;
        }
    }
    let used = cpu_secs("self") - cpu0;
    drop(socks);
    println!("{used}");
    let starts: Vec<String> = starts.iter().map(u64::to_string).collect();
    println!("{}", starts.join(" "));
    Ok(())
}

/// Runs every target and prints a table.
pub async fn run(daemon_cpu: Option<usize>) -> Result<()> {
    let held = super::env_usize("BENCH_HELD", 15_000);
    // BENCH_STORE_SYNC=normal shows what the per-commit fsync costs.
    let sync = std::env::var("BENCH_STORE_SYNC").unwrap_or_else(|_| "full".into());
    let dir = tempfile::tempdir()?;
    // One address posts the fan-out's webhooks, 16 at once: no per-address
    // share (8 by default would answer the rest 503).
    let mut b = Daemon::builder().with_plugins(
        dir.path(),
        &[("plugins", "echo.wasm"), ("plugins", "webhook.wasm")],
        &format!(
            "[gateway.auth]\ntoken = \"{TOKEN}\"\n[gateway.limits]\nmax_connections = {}\n\
             max_webhook_bodies_per_ip = 0\n\
             [store]\nsync = \"{sync}\"\n\
             [channels.echo]\nmax_messages_per_second = 0\n\
             [channels.echo.accounts.default]\ninterval_secs = 0\n\
             [channels.webhook]\nmax_messages_per_second = 0\n\
             [channels.webhook.accounts.bench]\n",
            held + 2000
        ),
    );
    println!("(store.sync = {sync})\n");
    if let Some(c) = daemon_cpu {
        b = b.pin_cpu(c);
    }
    let d = b.start()?;
    let url = d.url();
    super::warm_up(&url, Some(TOKEN)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!("| figure | result | target | | notes |");
    println!("|---|---|---|---|---|");

    // BENCH_PART=rpc: only the two RPC rows (quick A/B runs);
    // BENCH_PART=fanout: only fan-out, its floor and latency;
    // BENCH_PART=handshake: only the handshake row.
    match std::env::var("BENCH_PART").as_deref() {
        Ok("rpc") => {}
        Ok("fanout") => return fan_out_rows(&d, daemon_cpu).await,
        Ok("handshake") => return handshake_row(&d).await,
        _ => connections_and_fan_out(&d, held, daemon_cpu).await?,
    }
    rpcs(&d).await
}

/// Handshakes per second: token auth, 64 in flight.
async fn handshake_row(d: &Daemon) -> Result<()> {
    let spid = d.pid().to_string();
    let hs_total = 20_000usize;
    let cpu0 = cpu_secs(&spid);
    let me0 = cpu_secs("self");
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let next = next.clone();
        let addr = d.addr;
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < hs_total {
                let ws = operator(addr, "handshakes", &["operator.read"]).await?;
                drop(ws);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wall = t0.elapsed().as_secs_f64();
    let rate = hs_total as f64 / wall;
    target_row(
        "handshakes per second (token auth, 64 in flight)",
        format!("{rate:.0}/s"),
        "≥ 10,000/s",
        rate >= 10_000.0,
        &format!(
            "{hs_total} handshakes in {wall:.2} s; server CPU {:.2} s, generator CPU {:.2} s",
            cpu_secs(&spid) - cpu0,
            cpu_secs("self") - me0
        ),
    );
    Ok(())
}

async fn connections_and_fan_out(d: &Daemon, held: usize, daemon_cpu: Option<usize>) -> Result<()> {
    let pid = d.pid();
    let spid = pid.to_string();
    let url = d.url();
    handshake_row(d).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 15,000 operator.read connections held at once.
    let idle = rss_kib(pid);
    let cpu0 = cpu_secs(&spid);
    let me0 = cpu_secs("self");
    let t0 = Instant::now();
    let socks = open_many(d.addr, held, 64, "held").await;
    let connect_wall = t0.elapsed().as_secs_f64();
    let (socks, opened) = match socks {
        Ok(s) => {
            let n = s.len();
            (s, n)
        }
        Err(e) => {
            println!(
                "| operator.read connections held at once | failed: {e:#} | 15,000 | MISSED | |"
            );
            (Vec::new(), 0)
        }
    };
    let connect_cpu = cpu_secs(&spid) - cpu0;
    let gen_cpu = cpu_secs("self") - me0;
    let drains: Vec<_> = socks.into_iter().map(drain).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_rss = rss_kib(pid);
    // The daemon still answers.
    let (mut probe, _) = connect(&url, Some(TOKEN), &["operator.read"]).await?;
    let h = probe.request("h", "health", json!({})).await?;
    let healthy = h["ok"] == true;
    drop(probe);
    target_row(
        "operator.read connections held at once",
        format!("{opened}"),
        "15,000",
        opened >= 15_000 && healthy,
        &format!("health answered ok={healthy} with all of them open"),
    );
    let per = (held_rss.saturating_sub(idle)) as f64 / opened.max(1) as f64;
    target_row(
        "RSS per idle connection (above the idle daemon)",
        format!("{per:.1} KiB"),
        "≤ 8 KiB",
        per <= 8.0,
        &format!(
            "VmRSS {:.1} MiB idle, {:.1} MiB with {opened} connections",
            idle as f64 / 1024.0,
            held_rss as f64 / 1024.0
        ),
    );
    target_row(
        "server CPU to connect them",
        format!("{connect_cpu:.2} s"),
        "≤ 5 s",
        connect_cpu <= 5.0,
        &format!(
            "{connect_wall:.1} s wall, 64 connecting at once, each its own instance (presence changes on each); generator CPU {gen_cpu:.2} s"
        ),
    );
    for t in drains {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    fan_out_rows(d, daemon_cpu).await
}

/// Fan-out per CPU-second, the physical floor, and latency at 50 messages/s.
async fn fan_out_rows(d: &Daemon, daemon_cpu: Option<usize>) -> Result<()> {
    // Fan-out as fast as the messages come (`BENCH_FANOUT_MESSAGES`, 200:
    // more for A/B runs, where 200 messages are half a CPU-second and the
    // host's noise as large as any difference).
    let messages = super::env_usize("BENCH_FANOUT_MESSAGES", 200);
    let f = fan_out(d, 1000, messages, None, "fan", Hook::Echo).await?;
    let per_cpu = f.deliveries as f64 / f.server_cpu.max(1e-6);
    target_row(
        "fan-out: deliveries per server CPU-second",
        format!("{per_cpu:.0}"),
        "≥ 300,000",
        per_cpu >= 300_000.0,
        &format!(
            "1000 operators × {messages} webhook messages, 16 posters: {} deliveries in {:.2} s, server CPU {:.2} s, generator CPU {:.2} s",
            f.deliveries,
            f.wall.as_secs_f64(),
            f.server_cpu,
            f.client_cpu
        ),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fl = floor(1000, messages, None, daemon_cpu).await?;
    let (floor_rate, floor_cpu) = (fl.rate, fl.cpu);
    println!(
        "| physical floor: plain TCP server, one 100-byte frame per socket per event | {floor_rate:.0} per CPU-second | | | 1000 sockets × {messages} events, {floor_cpu:.2} s CPU on the daemon's core: the fan-out above is {:.0}% of it |",
        per_cpu / floor_rate * 100.0
    );

    // Latency at 50 messages per second, through echo's hook and then the
    // first-party `webhook` channel.
    let mut first = Duration::ZERO;
    for (hook, tag, what) in [
        (
            Hook::Echo,
            "lat",
            "echo's hook: two key-value commits, then `deliver`",
        ),
        (
            Hook::Webhook,
            "latw",
            "the `webhook` channel, unsigned: one `deliver`",
        ),
    ] {
        let f = fan_out(d, 1000, 200, Some(Duration::from_millis(20)), tag, hook).await?;
        let (p50, p99) = (pct(&f.latencies, 0.5), pct(&f.latencies, 0.99));
        first = pct(&f.first_latencies, 0.5);
        target_row(
            &format!("latency webhook POST → every operator (1000 operators, 50 messages/s; {what})"),
            format!("p50 {} p99 {}", ms(p50), ms(p99)),
            "p50 ≤ 3 ms, p99 ≤ 10 ms",
            p50 <= Duration::from_millis(3) && p99 <= Duration::from_millis(10),
            &format!(
                "{} deliveries (first operator p50 {}), arrival at each socket by the kernel's receive timestamp; as read by this generator (1000 sockets on its one core): p50 {} p99 {}; server CPU {:.2} s, generator CPU {:.2} s over {:.1} s",
                f.latencies.len(),
                ms(first),
                ms(pct(&f.read_latencies, 0.5)),
                ms(pct(&f.read_latencies, 0.99)),
                f.server_cpu,
                f.client_cpu,
                f.wall.as_secs_f64()
            ),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The same with nothing but the kernel's work: how late the median
    // socket is when one core writes 1000 idle sockets in turn.
    let fl = floor(1000, 200, Some(Duration::from_millis(20)), daemon_cpu).await?;
    println!(
        "| latency floor: plain TCP server, one 100-byte frame per socket per event, 1000 idle sockets, 50 events/s | p50 {} p99 {} | | | from the start of each event's writes to its arrival at each socket (kernel receive timestamp), {} arrivals, {:.2} s CPU ({:.1} µs per write): the `webhook` channel's latency above has its first operator's p50 ({}) before its fan-out starts |",
        ms(pct(&fl.latencies, 0.5)),
        ms(pct(&fl.latencies, 0.99)),
        fl.latencies.len(),
        fl.cpu,
        fl.cpu * 1e6 / 200_000.0,
        ms(first),
    );

    Ok(())
}

async fn rpcs(d: &Daemon) -> Result<()> {
    let spid = d.pid().to_string();
    let url = d.url();
    // health RPC on 8 connections.
    let secs = 3.0;
    let mut tasks = Vec::new();
    let cpu0 = cpu_secs(&spid);
    let me0 = cpu_secs("self");
    for i in 0..8 {
        let addr = d.addr;
        tasks.push(tokio::spawn(async move {
            let mut ws = operator(addr, &format!("health-{i}"), &["operator.read"]).await?;
            let mut lat = Vec::new();
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed().as_secs_f64() < secs {
                let t = Instant::now();
                let req = format!(r#"{{"type":"req","id":"h{n}","method":"health"}}"#);
                ws.send(Message::text(req)).await?;
                loop {
                    match ws.next().await.context("closed")?? {
                        Message::Text(t) if t.contains(r#""type":"res""#) => break,
                        _ => {}
                    }
                }
                lat.push(t.elapsed());
                n += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    lat.sort();
    let rate = lat.len() as f64 / secs;
    let p99 = pct(&lat, 0.99);
    target_row(
        "`health` RPC, 8 connections",
        format!("{rate:.0}/s, p99 {}", ms(p99)),
        "≥ 100,000/s, p99 < 0.5 ms",
        rate >= 100_000.0 && p99 < Duration::from_micros(500),
        &format!(
            "server CPU {:.2} s, generator CPU {:.2} s in {secs} s",
            cpu_secs(&spid) - cpu0,
            cpu_secs("self") - me0
        ),
    );

    // send through echo minus health, on one connection.
    let (mut op, _) = connect(&url, Some(TOKEN), &["operator.admin"]).await?;
    let mut hl = Vec::new();
    let mut sl = Vec::new();
    // BENCH_SEND_PAIRS: more pairs for a profile of the send path.
    let pairs = super::env_usize("BENCH_SEND_PAIRS", 1000);
    for i in 0..pairs {
        let t = Instant::now();
        op.request(&format!("h{i}"), "health", json!({})).await?;
        hl.push(t.elapsed());
        let t = Instant::now();
        let r: Value = op
            .request(
                &format!("s{i}"),
                "send",
                json!({"channel": "echo", "to": "bench", "message": "x", "idempotencyKey": format!("k{i}")}),
            )
            .await?;
        if r["ok"] != true {
            bail!("send failed: {r}");
        }
        sl.push(t.elapsed());
    }
    hl.sort();
    sl.sort();
    let fsync = fsync_p50()?;
    let diff = pct(&sl, 0.5).saturating_sub(pct(&hl, 0.5));
    target_row(
        "`send` through echo minus `health`, p50, one connection",
        format!("{:.0} µs", diff.as_secs_f64() * 1e6),
        "≤ 50 µs",
        diff <= Duration::from_micros(50),
        &format!(
            "send p50 {}, health p50 {} ({pairs} each, alternating; a send is a durable log write and a fresh echo instance)",
            ms(pct(&sl, 0.5)),
            ms(pct(&hl, 0.5))
        ),
    );
    println!(
        "| physical floor: one 4 KiB overwrite + fsync on the state directory's disk | p50 {:.0} µs | | | a lower bound for each commit that waits for the disk (a commit syncs several pages); a `send` through echo waits for three with `store.sync = full`: the send's intent before the channel is called, echo's `deliver`, and the gateway's record with its idempotency key (BENCH_STORE_SYNC=normal: none) |",
        fsync.as_secs_f64() * 1e6
    );
    Ok(())
}

/// The median time to overwrite 4 KiB of a file and `fsync` it, in a
/// temporary directory (on the same disk as the daemon's state directory):
/// what each acknowledged commit of the message log pays at least.
fn fsync_p50() -> Result<Duration> {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("probe"))?;
    let page = [7u8; 4096];
    f.write_all(&page)?;
    f.sync_all()?;
    let mut took = Vec::with_capacity(300);
    for _ in 0..300 {
        let t = Instant::now();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&page)?;
        f.sync_all()?;
        took.push(t.elapsed());
    }
    took.sort();
    Ok(pct(&took, 0.5))
}
