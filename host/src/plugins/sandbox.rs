//! What one instance gets: its store state (memory cap, deadline, a WASI
//! context with no filesystem or env, stdout/stderr to `tracing`, the
//! imports bound for its channel and account), its network grants (HTTP
//! hook and TCP check), and the one-line failure of a call.
//!
//! It does not know what the imports do: `bindings` calls the handles.

use crate::sync::MutexExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::imports::Imports;
use super::logs::{plugin_event, PluginLog, MAX_LINE};

/// A network grant list parsed once (per plugin load, per account's
/// configuration) and shared by every call: `host:port` pairs, host in
/// lower case. Entries that do not parse are left out (the configuration
/// loader refuses them first; a plugin's `info` is checked at load).
#[derive(Debug, Clone, Default)]
pub struct Network(Arc<[(String, u16)]>);

impl Network {
    pub fn parse(list: &[String]) -> Self {
        Self(
            list.iter()
                .filter_map(|s| parse_host_port(s).ok())
                .collect(),
        )
    }

    pub fn pairs(&self) -> &[(String, u16)] {
        &self.0
    }
}

/// The network connections one plugin holds open at once, all its
/// instances together (`plugins.max_sockets`): TCP sockets it creates, DNS
/// lookups of granted names while their answers are read, and the TLS
/// connections and HTTP requests the host makes for it. Each holds a file
/// descriptor of the daemon's (which its own connections need too) or a
/// blocking thread. Shared by a plugin's instances and kept across a
/// reload.
#[derive(Debug, Default)]
pub struct Sockets {
    open: AtomicUsize,
    max: usize,
}

/// One connection counted against [`Sockets`] until dropped.
#[derive(Debug)]
pub struct SocketSlot(Arc<Sockets>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sockets {
    pub fn new(max: usize) -> Arc<Sockets> {
        Arc::new(Sockets {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more connection, or why there is none.
    pub fn take(self: &Arc<Self>) -> Result<SocketSlot, String> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(SocketSlot(self.clone())),
            Err(n) => Err(format!(
                "the plugin holds {n} network connections, plugins.max_sockets = {}: close some, or raise plugins.max_sockets",
                self.max
            )),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A connection that keeps its [`SocketSlot`] while it lives.
pub struct Held<S> {
    stream: S,
    _slot: SocketSlot,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The network one instance may reach: `host:port` pairs, and where they
/// come from (for the message that says how to change them).
#[derive(Debug, Default)]
pub struct Grants {
    /// The channel the instance serves ("" while loading: nothing is granted).
    pub channel: String,
    pub allowed: Network,
    /// What TLS connections (`tls.connect`) trust.
    pub trust: super::tls_client::Trust,
    /// The plugin's connections (none while loading).
    pub sockets: Arc<Sockets>,
    /// The first destination refused during this call, for its error.
    denied: std::sync::Mutex<Option<String>>,
    /// The call was granted a connection out (TCP, TLS, HTTP) or queued a
    /// message in its outbox: if the host ends it, what it did outside the
    /// sandbox is unknown.
    reached: std::sync::atomic::AtomicBool,
}

impl Grants {
    pub fn new(
        channel: &str,
        allowed: Network,
        trust: super::tls_client::Trust,
        sockets: Arc<Sockets>,
    ) -> Self {
        Self {
            channel: channel.to_string(),
            allowed,
            trust,
            sockets,
            denied: Default::default(),
            reached: Default::default(),
        }
    }

    /// Notes that the call may have acted outside the sandbox (a
    /// connection out was granted, a message was queued).
    pub(super) fn reached_out(&self) {
        self.reached.store(true, Ordering::Relaxed);
    }

    /// Whether the call may have acted outside the sandbox.
    pub fn has_reached_out(&self) -> bool {
        self.reached.load(Ordering::Relaxed)
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

    pub(super) fn allows_name(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.allowed
            .pairs()
            .iter()
            .any(|(h, p)| *p == port && *h == host)
    }

    /// Does a granted name resolve to `addr`? (Names are resolved by the host.)
    async fn allows_addr(&self, addr: std::net::SocketAddr) -> bool {
        for (h, p) in self.allowed.pairs() {
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

    /// A slot for one more connection of the plugin; a refusal is logged.
    pub(super) fn socket(&self, log: &PluginLog, what: &str) -> Result<SocketSlot, String> {
        self.sockets.take().inspect_err(|why| {
            plugin_event!(log, tracing::Level::WARN, channel = %self.channel, "{what} refused: {why}");
        })
    }

    pub(super) fn deny(&self, log: &PluginLog, what: &str, dest: &str) {
        self.denied.guard().get_or_insert_with(|| dest.to_string());
        let how = self.how_to_allow(dest);
        plugin_event!(log, tracing::Level::WARN, channel = %self.channel, destination = dest, "denied {what} to {dest}: {how}");
    }
}

/// `wasi:http` hooks: every outgoing request is checked against the grants.
struct GrantHooks {
    log: Arc<PluginLog>,
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
                .deny(&self.log, "outgoing HTTP", &format!("{host}:{port}"));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let slot = match self.grants.socket(&self.log, "outgoing HTTP") {
            Ok(slot) => slot,
            Err(_) => {
                return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) })
            }
        };
        self.grants.reached_out();
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            // The connection lives until `io` ends (the response body read
            // or dropped): so does its slot.
            let io = async move {
                let _slot = slot;
                io.await
            };
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// Limits applied to every store.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// Wall-clock bound on one call (`info`, `validate`, `send`, `handle-webhook`).
    pub call_timeout: Duration,
    /// Largest `.wasm` file accepted.
    pub max_file_bytes: u64,
    /// Calls of one plugin running at once (`plugins.max_concurrent_calls`).
    pub max_concurrent_calls: usize,
    /// How long a call waits for a slot before it is refused.
    pub call_queue_timeout: Duration,
    /// Lines one plugin may log per second (`plugins.log_lines_per_second`;
    /// 0: no bound).
    pub log_lines_per_second: u32,
    /// Network connections one plugin holds at once (`plugins.max_sockets`).
    pub max_sockets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            call_timeout: Duration::from_secs(30),
            max_file_bytes: 64 * 1024 * 1024,
            max_concurrent_calls: 16,
            call_queue_timeout: Duration::from_secs(5),
            log_lines_per_second: 50,
            max_sockets: 256,
        }
    }
}

/// The data of one store: one instance of one plugin.
pub struct PluginState {
    /// The plugin's id and its log.
    pub(super) log: Arc<PluginLog>,
    /// `None` while the plugin is being loaded: no import reaches anything.
    imports: Option<Imports>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: GrantHooks,
    table: ResourceTable,
    limits: StoreLimits,
    /// When the current call must end; `None` = no bound (the `run` loop).
    deadline: Option<Instant>,
    panic: LastPanic,
    /// The slots of the TCP sockets and name lookups this instance holds,
    /// by resource (a table index: unique among live resources of any
    /// type): freed when the plugin drops one, and all with the instance.
    pub(super) slots: std::collections::HashMap<u32, SocketSlot>,
}

impl PluginState {
    /// The message of the last panic the guest printed, if any.
    pub fn last_panic(&self) -> Option<String> {
        self.panic.guard().clone()
    }

    /// The imports bound to this store, or why there are none.
    pub(super) fn imports(&self) -> Result<&Imports, String> {
        self.imports
            .as_ref()
            .ok_or_else(|| "not available while the plugin is being loaded".to_string())
    }

    /// The imports, if they serve `account` (a mismatch is logged).
    pub(super) fn imports_of(&self, account: &str) -> Option<&Imports> {
        match self.imports().and_then(|i| i.of(account)) {
            Ok(i) => Some(i),
            Err(e) => {
                plugin_event!(self.log, tracing::Level::DEBUG, "host call refused: {e}");
                None
            }
        }
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

/// What `sockets` works with in an instance's state.
pub(super) struct SocketsView<'a> {
    pub wasi: wasmtime_wasi::sockets::WasiSocketsCtxView<'a>,
    pub grants: &'a Grants,
    pub log: &'a PluginLog,
    pub slots: &'a mut std::collections::HashMap<u32, SocketSlot>,
}

impl PluginState {
    /// A slot for one more connection of this instance's plugin (`what`
    /// names it in the log line of a refusal).
    pub(super) fn socket_slot(&self, what: &str) -> Result<SocketSlot, String> {
        self.hooks.grants.socket(&self.hooks.log, what)
    }

    /// WASI's sockets beside this instance's grants and the slots it
    /// holds (`sockets`).
    pub(super) fn sockets_and_grants(&mut self) -> SocketsView<'_> {
        SocketsView {
            wasi: wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            grants: &self.hooks.grants,
            log: &self.hooks.log,
            slots: &mut self.slots,
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

/// The message of the last panic a store's guest printed (shared between
/// its stderr writer and its state, for the call's one-line error).
pub type LastPanic = Arc<std::sync::Mutex<Option<String>>>;

/// Plugin stdout/stderr: each line becomes a `tracing` event under the
/// plugin's id (stdout at INFO, stderr at WARN), within its log budget, cut
/// to [`MAX_LINE`] bytes. A Rust panic's report (`thread … panicked at …`,
/// the message, the backtrace note) becomes one WARN line, and its message
/// is kept for the call's error.
#[derive(Clone)]
struct LogOutput {
    log: Arc<PluginLog>,
    stream: &'static str,
    panic: LastPanic,
    /// The account's secrets, hidden in what the guest prints.
    secrets: Arc<[String]>,
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
            cut: 0,
            panic_at: None,
        })
    }
}

struct LineWriter {
    out: LogOutput,
    /// The line so far: at most [`MAX_LINE`] bytes.
    buf: Vec<u8>,
    /// Bytes of the line past [`MAX_LINE`], dropped (said at its end).
    cut: usize,
    /// `panicked at <location>` seen; the message is on the next line.
    panic_at: Option<String>,
}

impl LineWriter {
    /// Takes `data` into the current line, ending a line at each `\n`.
    fn take(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (part, ended) = match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let part = &data[..i];
                    data = &data[i + 1..];
                    (part, true)
                }
                None => (std::mem::take(&mut data), false),
            };
            let keep = part.len().min(MAX_LINE.saturating_sub(self.buf.len()));
            self.buf.extend_from_slice(&part[..keep]);
            self.cut += part.len() - keep;
            if ended {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.buf);
        let cut = std::mem::take(&mut self.cut);
        self.emit(&line, cut);
        self.buf = line;
        self.buf.clear();
    }

    fn emit(&mut self, line: &[u8], cut: usize) {
        let text = String::from_utf8_lossy(line);
        let text = crate::config::hide_secrets_in(text.trim_end(), &self.out.secrets);
        let text = &*text;
        let cut = if cut > 0 {
            format!("… ({cut} bytes cut)")
        } else {
            String::new()
        };
        let log = &self.out.log;
        if let Some(at) = self.panic_at.take() {
            *self.out.panic.guard() = Some(format!("{text}{cut}"));
            plugin_event!(
                log,
                tracing::Level::WARN,
                "plugin panicked at {at}: {text}{cut}"
            );
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
            plugin_event!(log, tracing::Level::WARN, stream = "stderr", "{text}{cut}");
        } else {
            plugin_event!(log, tracing::Level::INFO, stream = "stdout", "{text}{cut}");
        }
    }

    fn finish(&mut self) {
        if !self.buf.is_empty() || self.cut > 0 {
            self.end_line();
        }
        if let Some(at) = self.panic_at.take() {
            plugin_event!(
                self.out.log,
                tracing::Level::WARN,
                "plugin panicked at {at}"
            );
        }
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(data);
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

pub fn chain(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

/// One line for an operator about a failed call: the trap (or the panic
/// message the guest printed), never the wasm backtrace. The whole error
/// goes to the log at WARN.
pub fn call_failure(log: &PluginLog, e: &wasmtime::Error, state: &PluginState) -> String {
    let panic = state.last_panic();
    let secrets = state.imports().map_or(&[][..], |i| &i.secrets[..]);
    plugin_event!(
        log,
        tracing::Level::WARN,
        "plugin call failed: {}",
        crate::config::hide_secrets_in(&chain(e), secrets)
    );
    if let Some(msg) = panic {
        return format!("plugin panicked: {msg}");
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return format!("plugin trapped: {trap}");
    }
    let root = e.root_cause().to_string();
    let line = root.lines().next().unwrap_or("plugin failed");
    // The host's own bounds, said with their values.
    if e.downcast_ref::<wasmtime::component::ResourceTableError>()
        .is_some_and(|t| matches!(t, wasmtime::component::ResourceTableError::Full))
    {
        return format!(
            "{line}: an instance holds at most {MAX_RESOURCES} resources at once (sockets, streams, HTTP fields and requests, pollables)"
        );
    }
    if line == "total size of fields exceeds limit" {
        return format!(
            "{line}: a plugin's wasi:http fields hold at most {MAX_FIELDS_BYTES} bytes each"
        );
    }
    line.to_string()
}

/// The most resources (sockets, streams, HTTP requests and fields,
/// pollables, …) one instance holds at once: what it keeps in the host's
/// memory, outside its own memory cap, is bounded by this and by
/// [`MAX_FIELDS_BYTES`].
pub const MAX_RESOURCES: usize = 1024;

/// The most bytes (names and values) one `wasi:http` fields resource a
/// plugin builds holds.
pub const MAX_FIELDS_BYTES: usize = 16 * 1024;

impl PluginState {
    /// The state of a fresh store for one instance of `plugin` with these
    /// imports (none while loading), with the call deadline set (`None`: no
    /// deadline, for `run`).
    pub fn new(
        log: Arc<PluginLog>,
        imports: Option<Imports>,
        grants: Arc<Grants>,
        limits: &Limits,
        timeout: Option<Duration>,
    ) -> PluginState {
        let check_grants = grants.clone();
        let check_log = log.clone();
        let panic = LastPanic::default();
        let secrets: Arc<[String]> = imports
            .as_ref()
            .map_or_else(|| Arc::from([]), |i| i.secrets.clone());
        let wasi = WasiCtxBuilder::new()
            .stdout(LogOutput {
                log: log.clone(),
                stream: "stdout",
                panic: panic.clone(),
                secrets: secrets.clone(),
            })
            .stderr(LogOutput {
                log: log.clone(),
                stream: "stderr",
                panic: panic.clone(),
                secrets,
            })
            .allow_tcp(true)
            .allow_udp(false)
            .allow_ip_name_lookup(true)
            .socket_addr_check(move |addr, usage| {
                let grants = check_grants.clone();
                let log = check_log.clone();
                Box::pin(async move {
                    match usage {
                        // The implicit bind before a connect.
                        SocketAddrUse::TcpBind => true,
                        SocketAddrUse::TcpConnect => {
                            let ok = grants.allows_addr(addr).await;
                            if ok {
                                grants.reached_out();
                            } else {
                                grants.deny(&log, "TCP connection", &addr.to_string());
                            }
                            ok
                        }
                        _ => {
                            grants.deny(&log, "listening socket or UDP", &addr.to_string());
                            false
                        }
                    }
                })
            })
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .trap_on_grow_failure(true)
            .instances(16)
            .tables(64)
            .memories(16)
            .build();
        PluginState {
            log: log.clone(),
            imports,
            wasi,
            http: {
                let mut http = WasiHttpCtx::new();
                http.set_field_size_limit(MAX_FIELDS_BYTES);
                http
            },
            hooks: GrantHooks { log, grants },
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            limits,
            deadline: timeout.map(|t| Instant::now() + t),
            panic,
            slots: Default::default(),
        }
    }

    /// This call's grants (shared with the caller, which reads what the
    /// call reached).
    pub(super) fn grants(&self) -> &Arc<Grants> {
        &self.hooks.grants
    }

    /// Whether the current call has run past its deadline.
    pub(super) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub(super) fn store_limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    /// `tls.connect`: checked against this instance's grants, trusting
    /// what its channel trusts. Refused while the plugin is being loaded.
    pub(super) fn tls_connect(
        &self,
        host: String,
        port: u16,
    ) -> impl std::future::Future<
        Output = Result<Held<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String>,
    > + Send
           + 'static {
        let grants = self.hooks.grants.clone();
        let log = self.hooks.log.clone();
        async move {
            let slot = grants.socket(&log, "TLS connection")?;
            // Marked once granted (below), before a byte is written.
            let stream = grants.trust.connect(&log, &grants, &host, port).await?;
            Ok(Held {
                stream,
                _slot: slot,
            })
        }
    }

    /// The two halves of a connection as `wasi:io` streams in this
    /// instance's resource table (dropped with the instance).
    pub(super) fn push_streams<S>(
        &mut self,
        stream: S,
    ) -> Result<
        (
            wasmtime::component::Resource<wasmtime_wasi::p2::DynInputStream>,
            wasmtime::component::Resource<wasmtime_wasi::p2::DynOutputStream>,
        ),
        String,
    >
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let input: wasmtime_wasi::p2::DynInputStream =
            Box::new(wasmtime_wasi::p2::pipe::AsyncReadStream::new(r));
        let output: wasmtime_wasi::p2::DynOutputStream = Box::new(
            wasmtime_wasi::p2::pipe::AsyncWriteStream::new(STREAM_WRITE_BUDGET, w),
        );
        let input = self
            .table
            .push(input)
            .map_err(|e| format!("too many open streams: {e}"))?;
        let output = self
            .table
            .push(output)
            .map_err(|e| format!("too many open streams: {e}"))?;
        Ok((input, output))
    }
}

/// Bytes a plugin may hand a TLS output stream before it must wait for them
/// to be written (the write budget `check-write` reports).
const STREAM_WRITE_BUDGET: usize = 64 * 1024;

/// Splits `host:port` (IPv6 in brackets).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    // A host name has at most 253 bytes, an IPv6 address in brackets 47.
    if s.len() > 260 {
        return Err(format!(
            "a destination of {} bytes is not host:port (a host name has at most 253)",
            s.len()
        ));
    }
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

#[cfg(test)]
mod socket_tests {
    use super::*;

    #[test]
    fn sockets_are_bounded_and_a_dropped_slot_is_free_again() {
        let s = Sockets::new(2);
        let a = s.take().unwrap();
        let _b = s.take().unwrap();
        let e = s.take().unwrap_err();
        assert!(
            e.contains("holds 2 network connections, plugins.max_sockets = 2"),
            "{e}"
        );
        drop(a);
        assert_eq!(s.open(), 1);
        let _c = s.take().unwrap();
        assert_eq!(s.open(), 2);
        // While loading, nothing.
        assert!(Grants::default().sockets.take().is_err());
    }
}
