//! What one instance gets: the host imports (`PluginHost`), network grants
//! (HTTP hook and TCP check), the store state (memory cap, deadline, a WASI
//! context with no filesystem or env, stdout/stderr to `tracing`), and the
//! one-line failure of a call.

use crate::sync::MutexExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::*;
use super::engine::*;

/// What the host does for a plugin's imports. The daemon's implementation
/// broadcasts and persists; `plugins check` uses [`NullHost`].
pub trait PluginHost: Send + Sync + 'static {
    /// `channel` is the channel the calling instance serves ("" while loading).
    fn deliver(&self, plugin: &str, channel: &str, message: InboundMessage) -> Result<u64, String>;
    fn set_state(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
        state: AccountState,
        detail: Option<String>,
    );
    fn outbox_push(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
        m: OutboundMessage,
    ) -> Result<u64, String>;
    fn outbox_pop(
        &self,
        plugin: &str,
        channel: &str,
        account: &str,
    ) -> Option<(u64, OutboundMessage)>;
    fn outbox_ack(&self, plugin: &str, channel: &str, account: &str, seq: u64);
    /// The key-value store is the channel's ("" while loading: none).
    fn kv_get(&self, channel: &str, key: &str) -> Option<Vec<u8>>;
    fn kv_set(&self, plugin: &str, channel: &str, key: &str, value: Vec<u8>);
    fn kv_delete(&self, channel: &str, key: &str);
    fn kv_claim(&self, plugin: &str, channel: &str, key: &str, ttl_ms: u64) -> bool;
    fn kv_unclaim(&self, channel: &str, key: &str);
}

/// A host with no gateway behind it (`plugins check`): `deliver` fails with
/// a clear message and the key-value store is empty.
pub struct NullHost;

impl PluginHost for NullHost {
    fn deliver(&self, _: &str, _: &str, _: InboundMessage) -> Result<u64, String> {
        Err("no gateway is running (this is `switchboard plugins check`)".into())
    }
    fn set_state(&self, _: &str, _: &str, _: &str, _: AccountState, _: Option<String>) {}
    fn outbox_push(&self, _: &str, _: &str, _: &str, _: OutboundMessage) -> Result<u64, String> {
        Err("no gateway is running (this is `switchboard plugins check`)".into())
    }
    fn outbox_pop(&self, _: &str, _: &str, _: &str) -> Option<(u64, OutboundMessage)> {
        None
    }
    fn outbox_ack(&self, _: &str, _: &str, _: &str, _: u64) {}
    fn kv_get(&self, _: &str, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn kv_set(&self, _: &str, _: &str, _: &str, _: Vec<u8>) {}
    fn kv_delete(&self, _: &str, _: &str) {}
    fn kv_claim(&self, _: &str, _: &str, _: &str, _: u64) -> bool {
        false
    }
    fn kv_unclaim(&self, _: &str, _: &str) {}
}

/// The network one instance may reach: `host:port` pairs, and where they
/// come from (for the message that says how to change them).
#[derive(Debug, Default)]
pub struct Grants {
    /// The channel the instance serves ("" while loading: nothing is granted).
    pub channel: String,
    pub allowed: Vec<(String, u16)>,
    /// The first destination refused during this call, for its error.
    denied: std::sync::Mutex<Option<String>>,
}

impl Grants {
    pub fn new(channel: &str, list: &[String]) -> Self {
        Self {
            channel: channel.to_string(),
            allowed: list
                .iter()
                .filter_map(|s| parse_host_port(s).ok())
                .collect(),
            denied: Default::default(),
        }
    }

    /// The first destination refused since these grants were made, if any.
    pub fn denied(&self) -> Option<String> {
        self.denied.guard().clone()
    }

    /// What the operator must add to allow `dest`.
    pub fn how_to_allow(&self, dest: &str) -> String {
        if self.channel.is_empty() {
            "no network is granted while a plugin is loaded".to_string()
        } else {
            format!(
                "add \"{dest}\" to `network` in [channels.{}] to allow it",
                self.channel
            )
        }
    }

    fn allows_name(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.allowed.iter().any(|(h, p)| *p == port && *h == host)
    }

    /// Does a granted name resolve to `addr`? (Names are resolved by the host.)
    async fn allows_addr(&self, addr: std::net::SocketAddr) -> bool {
        for (h, p) in &self.allowed {
            if *p != addr.port() {
                continue;
            }
            if let Ok(ip) = h.parse::<std::net::IpAddr>() {
                if ip == addr.ip() {
                    return true;
                }
                continue;
            }
            if let Ok(addrs) = tokio::net::lookup_host((h.as_str(), *p)).await {
                if addrs.into_iter().any(|a| a.ip() == addr.ip()) {
                    return true;
                }
            }
        }
        false
    }

    fn deny(&self, plugin: &str, what: &str, dest: &str) {
        self.denied.guard().get_or_insert_with(|| dest.to_string());
        let how = self.how_to_allow(dest);
        tracing::warn!(plugin, channel = %self.channel, destination = dest, "denied {what} to {dest}: {how}");
    }
}

/// `wasi:http` hooks: every outgoing request is checked against the grants.
struct GrantHooks {
    plugin: Arc<str>,
    grants: Arc<Grants>,
}

impl WasiHttpHooks for GrantHooks {
    fn send_request(
        &mut self,
        request: axum::http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        axum::http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<
                            dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                                + Send,
                        >,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let _ = fut;
        let uri = request.uri();
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !self.grants.allows_name(&host, port) {
            self.grants
                .deny(&self.plugin, "outgoing HTTP", &format!("{host}:{port}"));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// The data of one store: one instance of one plugin.
pub struct PluginState {
    plugin: String,
    channel: String,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: GrantHooks,
    table: ResourceTable,
    limits: StoreLimits,
    host: Arc<dyn PluginHost>,
    /// When the current call must end; `None` = no bound (the `run` loop).
    deadline: Option<Instant>,
    panic: LastPanic,
}

impl PluginState {
    /// The message of the last panic the guest printed, if any.
    pub fn last_panic(&self) -> Option<String> {
        self.panic.guard().clone()
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl switchboard::channel::types::Host for PluginState {}

impl switchboard::channel::host::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        let p = self.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin = p, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin = p, "{message}"),
            LogLevel::Info => tracing::info!(plugin = p, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin = p, "{message}"),
            LogLevel::Error => tracing::error!(plugin = p, "{message}"),
        }
    }
    fn deliver(&mut self, message: InboundMessage) -> Result<u64, String> {
        self.host.deliver(&self.plugin, &self.channel, message)
    }
    fn set_state(&mut self, account_id: String, state: AccountState, detail: Option<String>) {
        self.host
            .set_state(&self.plugin, &self.channel, &account_id, state, detail)
    }
    fn outbox_push(
        &mut self,
        account_id: String,
        message: switchboard::channel::types::OutboundMessage,
    ) -> Result<u64, String> {
        self.host
            .outbox_push(&self.plugin, &self.channel, &account_id, message)
    }
    fn outbox_pop(
        &mut self,
        account_id: String,
    ) -> Option<(u64, switchboard::channel::types::OutboundMessage)> {
        self.host
            .outbox_pop(&self.plugin, &self.channel, &account_id)
    }
    fn outbox_ack(&mut self, account_id: String, seq: u64) {
        self.host
            .outbox_ack(&self.plugin, &self.channel, &account_id, seq)
    }
    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.host.kv_get(&self.channel, &key)
    }
    fn kv_set(&mut self, key: String, value: Vec<u8>) {
        self.host.kv_set(&self.plugin, &self.channel, &key, value)
    }
    fn kv_delete(&mut self, key: String) {
        self.host.kv_delete(&self.channel, &key)
    }
    fn kv_claim(&mut self, key: String, ttl_ms: u64) -> bool {
        self.host
            .kv_claim(&self.plugin, &self.channel, &key, ttl_ms)
    }
    fn kv_unclaim(&mut self, key: String) {
        self.host.kv_unclaim(&self.channel, &key)
    }
}

/// The message of the last panic a store's guest printed (shared between
/// its stderr writer and its state, for the call's one-line error).
pub type LastPanic = Arc<std::sync::Mutex<Option<String>>>;

/// Plugin stdout/stderr: each line becomes a `tracing` event under the
/// plugin's id (stdout at INFO, stderr at WARN). A Rust panic's report
/// (`thread … panicked at …`, the message, the backtrace note) becomes one
/// WARN line, and its message is kept for the call's error.
#[derive(Clone)]
struct LogOutput {
    plugin: Arc<str>,
    stream: &'static str,
    panic: LastPanic,
}

impl wasmtime_wasi::cli::IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            buf: Vec::new(),
            panic_at: None,
        })
    }
}

struct LineWriter {
    out: LogOutput,
    buf: Vec<u8>,
    /// `panicked at <location>` seen; the message is on the next line.
    panic_at: Option<String>,
}

impl LineWriter {
    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        let plugin = &*self.out.plugin;
        if let Some(at) = self.panic_at.take() {
            tracing::warn!(plugin, "plugin panicked at {at}: {text}");
            *self.out.panic.guard() = Some(text.to_string());
            return;
        }
        if text.starts_with("thread '") {
            if let Some((_, at)) = text.split_once("panicked at ") {
                self.panic_at = Some(at.trim_end_matches(':').to_string());
                return;
            }
        }
        if text.starts_with("note: run with `RUST_BACKTRACE=1`") {
            return;
        }
        if self.out.stream == "stderr" {
            tracing::warn!(plugin, stream = "stderr", "{text}");
        } else {
            tracing::info!(plugin, stream = "stdout", "{text}");
        }
    }

    fn finish(&mut self) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        if let Some(at) = self.panic_at.take() {
            tracing::warn!(plugin = &*self.out.plugin, "plugin panicked at {at}");
        }
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.emit(&line);
        }
        // Bound a line that never ends.
        if self.buf.len() > 8192 {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One line for an operator about a failed call: the trap (or the panic
/// message the guest printed), never the wasm backtrace. The whole error
/// goes to the log at WARN.
pub fn call_failure(plugin: &str, e: &wasmtime::Error, panic: Option<String>) -> String {
    tracing::warn!(plugin, "plugin call failed: {}", chain(e));
    if let Some(msg) = panic {
        return format!("plugin panicked: {msg}");
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return format!("plugin trapped: {trap}");
    }
    let root = e.root_cause().to_string();
    root.lines().next().unwrap_or("plugin failed").to_string()
}

impl Runtime {
    /// A fresh store for one instance of `plugin` serving `channel`, with the
    /// call deadline set (`None`: no deadline, for `run`).
    pub fn store(
        &self,
        plugin: &str,
        channel: &str,
        grants: Arc<Grants>,
        timeout: Option<Duration>,
    ) -> Store<PluginState> {
        let name: Arc<str> = Arc::from(plugin);
        let check_grants = grants.clone();
        let check_name = name.clone();
        let panic = LastPanic::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(LogOutput {
                plugin: name.clone(),
                stream: "stdout",
                panic: panic.clone(),
            })
            .stderr(LogOutput {
                plugin: name.clone(),
                stream: "stderr",
                panic: panic.clone(),
            })
            .allow_tcp(true)
            .allow_udp(false)
            .allow_ip_name_lookup(true)
            .socket_addr_check(move |addr, usage| {
                let grants = check_grants.clone();
                let plugin = check_name.clone();
                Box::pin(async move {
                    match usage {
                        // The implicit bind before a connect.
                        SocketAddrUse::TcpBind => true,
                        SocketAddrUse::TcpConnect => {
                            let ok = grants.allows_addr(addr).await;
                            if !ok {
                                grants.deny(&plugin, "TCP connection", &addr.to_string());
                            }
                            ok
                        }
                        _ => {
                            grants.deny(&plugin, "listening socket or UDP", &addr.to_string());
                            false
                        }
                    }
                })
            })
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .instances(16)
            .tables(64)
            .memories(16)
            .build();
        let mut store = Store::new(
            &self.engine,
            PluginState {
                plugin: plugin.to_string(),
                channel: channel.to_string(),
                wasi,
                http: WasiHttpCtx::new(),
                hooks: GrantHooks {
                    plugin: name,
                    grants,
                },
                table: ResourceTable::new(),
                limits,
                host: self.host.clone(),
                deadline: timeout.map(|t| Instant::now() + t),
                panic,
            },
        );
        store.limiter(|s| &mut s.limits);
        // Every tick: past the deadline → trap; otherwise yield to the executor
        // so a busy plugin never monopolises a worker thread.
        store.epoch_deadline_callback(|ctx| {
            if ctx.data().deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(wasmtime::Error::msg(
                    "deadline exceeded: the call ran longer than its time limit",
                ));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store
    }
}

/// Splits `host:port` (IPv6 in brackets).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{s}`: `{port}` is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok((host.to_ascii_lowercase(), port))
}
