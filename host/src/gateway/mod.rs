//! The gateway: the shared runtime state ([`Gateway`]), the TCP/TLS accept
//! loop with hyper's HTTP/1 server, the HTTP router ([`http`]), WebSocket
//! connections ([`ws`]), frames ([`frames`], [`preauth`]), methods
//! ([`methods`]) and authentication ([`auth`]).

pub mod auth;
pub mod frames;
pub mod http;
pub mod methods;
pub mod preauth;
pub mod refusals;
pub mod ws;

use crate::sync::MutexExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::broadcast::Broadcaster;
use crate::channels::{ChannelManager, GatewayHost};
use crate::config::Config;
use crate::connections::ConnectionManager;
use crate::metrics::Metrics;
use crate::plugins::kv::KvStore;
use crate::plugins::runtime::Limits;
use crate::plugins::PluginManager;

/// Everything the gateway's components share.
pub struct Gateway {
    pub config: Arc<Config>,
    pub conns: Arc<ConnectionManager>,
    pub broadcaster: Arc<Broadcaster>,
    pub channels: Arc<ChannelManager>,
    pub plugins: Arc<PluginManager>,
    pub metrics: Arc<Metrics>,
    pub limiter: auth::FailureLimiter,
    /// Rate-limited log of refused connections and requests.
    pub refusals: refusals::RefusalLog,
    /// Webhook bodies being read at once (`gateway.limits.max_webhook_bodies`).
    pub webhook_bodies: Arc<Semaphore>,
    /// Wakes the health monitor when channels or plugins change.
    pub health_notify: Arc<Notify>,
    /// Wakes the presence broadcaster when a client connects or leaves.
    pub presence_notify: Arc<Notify>,
    pub started: Instant,
    pub started_at_ms: u64,
    pub instance_id: String,
    pub hostname: String,
    /// Every connection task (HTTP and WebSocket), awaited at shutdown.
    pub tasks: TaskTracker,
    shutdown: CancellationToken,
    shutting_down: AtomicBool,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>> {
        let metrics = Arc::new(Metrics::default());
        let conns = Arc::new(ConnectionManager::new());
        let broadcaster = Arc::new(Broadcaster::new(conns.clone(), metrics.clone()));
        let health_notify = Arc::new(Notify::new());
        let kv = Arc::new(KvStore::new(&config.state_dir()));
        let host = GatewayHost::new(kv.clone());
        let limits = Limits {
            memory_bytes: config.plugins.memory_mb * 1024 * 1024,
            call_timeout: Duration::from_millis(config.plugins.call_timeout_ms),
            max_file_bytes: config.plugins.max_file_bytes,
            max_concurrent_calls: config.plugins.max_concurrent_calls,
            call_queue_timeout: Duration::from_millis(config.plugins.call_queue_timeout_ms),
        };
        // Stores are per channel now; carry over those kept per plugin.
        for (name, c) in &config.channels {
            kv.migrate_plugin_store(c.plugin.as_deref().unwrap_or(name), name);
        }
        let plugins = Arc::new(PluginManager::new(
            config.plugins.dir.clone(),
            config.state_dir().join("cache"),
            limits,
            host.clone(),
            metrics.clone(),
        )?);
        let channels = ChannelManager::new(
            config.channels.clone(),
            plugins.clone(),
            broadcaster.clone(),
            health_notify.clone(),
            crate::outbox::Outbox::open(&config.state_dir()),
        );
        host.attach(&channels);
        Ok(Arc::new(Gateway {
            limiter: auth::FailureLimiter::new(config.gateway.auth.max_failures_per_minute),
            refusals: refusals::RefusalLog::default(),
            webhook_bodies: Arc::new(Semaphore::new(config.gateway.limits.max_webhook_bodies)),
            config: Arc::new(config),
            conns,
            broadcaster,
            channels,
            plugins,
            metrics,
            health_notify,
            presence_notify: Arc::new(Notify::new()),
            started: Instant::now(),
            started_at_ms: crate::now_ms(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            hostname: hostname(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Re-reads the plugins directory (watcher, `plugins.reload`, start-up):
    /// broadcasts a `plugins` event per change and restarts affected accounts.
    pub async fn reload_plugins(&self) -> Vec<crate::plugins::Change> {
        let changes = self.plugins.rescan().await;
        for c in &changes {
            self.broadcaster.broadcast(
                crate::broadcast::events::PLUGINS,
                &c.event(),
                &crate::broadcast::Filter::scope(auth::SCOPE_READ),
            );
        }
        if !changes.is_empty() {
            self.channels.on_plugin_changes(&changes);
            self.health_notify.notify_one();
        }
        changes
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has begun.
    pub fn shutdown_started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// Step 1 of shutdown: stop accepting, tell every loop to wind down.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The gateway's own presence entry.
    pub fn self_presence(&self) -> Value {
        let ip = self
            .config
            .bind_ip()
            .map(|i| i.to_string())
            .unwrap_or_default();
        json!({
            "host": self.hostname,
            "ip": ip,
            "version": crate::VERSION,
            "platform": std::env::consts::OS,
            "mode": "gateway",
            "reason": "self",
            "instanceId": self.instance_id,
            "text": format!("Gateway: {} ({}) · switchboard {} · mode gateway", self.hostname, ip, crate::VERSION),
            "ts": self.started_at_ms,
            "onlineSince": self.started_at_ms,
        })
    }

    /// `system-presence`: the gateway itself, then every connected client.
    pub fn presence(&self) -> Vec<Value> {
        let mut v = vec![self.self_presence()];
        v.extend(self.conns.presence());
        v
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Per-TCP-connection facts handed to request handlers.
#[derive(Clone)]
pub struct ConnMeta {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The `max_connections` slot, held until the socket (or the WebSocket
    /// it was upgraded to) closes.
    pub permit: Arc<OwnedSemaphorePermit>,
}

/// Loads the TLS acceptor from `[gateway.tls]`.
pub fn tls_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(tls) = &config.gateway.tls else {
        return Ok(None);
    };
    let cert_pem = std::fs::read(&tls.cert)
        .with_context(|| format!("gateway.tls.cert: cannot read {}", tls.cert.display()))?;
    let key_pem = std::fs::read(&tls.key)
        .with_context(|| format!("gateway.tls.key: cannot read {}", tls.key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("gateway.tls.cert: {} is not PEM", tls.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "gateway.tls.cert: {} holds no certificate",
            tls.cert.display()
        );
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("gateway.tls.key: {} is not PEM", tls.key.display()))?
        .with_context(|| {
            format!(
                "gateway.tls.key: {} holds no private key",
                tls.key.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("gateway.tls: certificate and key do not match or are unsupported")?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// Accepts connections until shutdown begins.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let router = http::router(gw.clone());
    let slots = Arc::new(Semaphore::new(gw.config.gateway.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = gw.shutdown_started() => break,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        gw.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        let permit = slots.clone().try_acquire_owned();
        let gw2 = gw.clone();
        let router = router.clone();
        let tls = tls.clone();
        gw.tasks.spawn(async move {
            let Ok(permit) = permit else {
                gw2.metrics
                    .connections_rejected
                    .fetch_add(1, Ordering::Relaxed);
                gw2.refusals.note(
                    "connection",
                    &format!(
                        "gateway.limits.max_connections ({}) reached (last from {remote})",
                        gw2.config.gateway.limits.max_connections
                    ),
                );
                refuse_busy(stream, tls).await;
                return;
            };
            let _ = stream.set_nodelay(true);
            let sndbuf = gw2.config.gateway.limits.socket_send_buffer_bytes;
            if sndbuf > 0 {
                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf);
            }
            let meta = ConnMeta {
                remote,
                tls: tls.is_some(),
                permit: Arc::new(permit),
            };
            let header_timeout =
                Duration::from_millis(gw2.config.gateway.limits.header_read_timeout_ms);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_http(gw2, router, s, meta, None).await,
                        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
                None => {
                    // A second handle on the socket, kept until the first
                    // request's headers are in, to answer 408 when they
                    // never come (hyper closes such a connection silently).
                    let spare = socket2::SockRef::from(&stream)
                        .try_clone()
                        .ok()
                        .map(std::net::TcpStream::from);
                    serve_http(gw2, router, stream, meta, spare).await
                }
            }
        });
    }
    tracing::info!("stopped accepting connections");
}

/// Answers 503 to a connection over the limit (plain TCP only; a TLS client
/// just sees the socket close, as there is no slot to run a handshake in).
async fn refuse_busy(mut stream: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    if tls.is_none() {
        let body = "too many connections: gateway.limits.max_connections reached\n";
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
            body.len()
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
    }
}

async fn serve_http<I>(
    gw: Arc<Gateway>,
    router: axum::Router,
    io: I,
    meta: ConnMeta,
    spare: Option<std::net::TcpStream>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = meta.remote;
    let spare = Arc::new(std::sync::Mutex::new(spare));
    let spare2 = spare.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // Headers arrived: the spare handle is no longer needed.
        spare2.guard().take();
        req.extensions_mut().insert(meta.clone());
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            gw.config.gateway.limits.header_read_timeout_ms,
        ))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = gw.shutdown_started() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        let spare = spare.guard().take();
        match spare {
            Some(mut s) if e.is_timeout() => {
                gw.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                gw.refusals.note(
                    "connection",
                    &format!(
                        "request headers not received within {} ms (gateway.limits.header_read_timeout_ms), from {remote}",
                        gw.config.gateway.limits.header_read_timeout_ms
                    ),
                );
                use std::io::Write;
                let body = "request headers not received in time\n";
                let resp = format!(
                    "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                // The socket is non-blocking and its send buffer empty: one
                // short write either goes through at once or not at all.
                let _ = s.write_all(resp.as_bytes());
            }
            _ => tracing::debug!(%remote, "http connection ended: {e}"),
        }
    }
}
