//! The gateway: the shared runtime state ([`Gateway`]) here; the TCP/TLS
//! accept loop ([`accept`]), the HTTP router ([`http`]), WebSocket
//! connections ([`ws`]), the pre-auth frame reader ([`preauth`]), methods
//! ([`methods`], with `send_params`: what `send` and `message.action` take) and authentication ([`auth`]) in their own modules.
//!
//! Nothing below the gateway names `Gateway` except `shutdown`, which
//! orchestrates it.

pub mod accept;
pub mod auth;
pub mod forwarded;
pub mod http;
pub mod methods;
pub mod per_ip;
pub mod preauth;
pub mod refusals;
mod send_params;
pub mod tls;
pub mod ui;
pub mod ws;

pub use accept::{serve, ConnMeta};

use crate::sync::RwLockExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broadcast::Broadcaster;
use crate::channels::ChannelManager;
use crate::config::Config;
use crate::connections::ConnectionManager;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::plugins::Limits;
use crate::plugins::PluginManager;
use crate::presence::{Entry, PresenceBook};

/// The answer to a connection refused for its address's unauthenticated
/// share ([`Gateway::take_unauthenticated`]).
pub const BUSY_PER_IP: &str = "too many unauthenticated connections from your address: gateway.limits.max_unauthenticated_per_ip reached; close some or authenticate them";

/// Everything the gateway's components share.
pub struct Gateway {
    /// The configuration in force (swapped whole by a reload: read it with
    /// [`Gateway::config`]).
    live: std::sync::RwLock<Arc<Config>>,
    /// `gateway.trusted_proxies` of the configuration in force, parsed once
    /// (when it is put in force) for every accept and request to check.
    trusted: std::sync::RwLock<Arc<[forwarded::Cidr]>>,
    /// Where the configuration is read from (again, by a reload).
    pub source: crate::config::Source,
    pub conns: Arc<ConnectionManager>,
    pub broadcaster: Arc<Broadcaster>,
    pub channels: Arc<ChannelManager>,
    pub plugins: Arc<PluginManager>,
    pub metrics: Arc<Metrics>,
    pub limiter: auth::FailureLimiter,
    /// Rate-limited log of refused connections and requests.
    pub refusals: refusals::RefusalLog,
    /// Proxy headers not believed (a proxy to add to
    /// `gateway.trusted_proxies`): advice of their own, not drowned by the
    /// refusals a proxied flood causes.
    pub proxy_notes: refusals::RefusalLog,
    /// Webhook bodies being read at once (`gateway.limits.max_webhook_bodies`).
    pub webhook_bodies: Arc<Semaphore>,
    /// Webhook bodies being read per remote address
    /// (`gateway.limits.max_webhook_bodies_per_ip`).
    pub webhook_bodies_per_ip: Arc<per_ip::PerIp>,
    /// Connections per remote address that are not authenticated WebSockets
    /// (`gateway.limits.max_unauthenticated_per_ip`).
    pub unauthenticated_per_ip: Arc<per_ip::PerIp>,
    /// The `health` snapshot and what wakes its monitor.
    pub health: Arc<Health>,
    /// The durable message log (also held by the channels' inbox).
    pub log: Arc<dyn crate::store::MessageLog>,
    /// The bounded presence list.
    pub presence: Arc<PresenceBook>,
    /// Wakes the presence broadcaster when the list's membership changes.
    pub presence_notify: Arc<Notify>,
    pub started: Instant,
    pub started_at_ms: u64,
    /// The address the gateway listens on, once bound (`status` shows its
    /// port, which `gateway.port = 0` leaves to the system).
    pub listening: std::sync::OnceLock<std::net::SocketAddr>,
    pub instance_id: String,
    pub hostname: String,
    /// Every connection task (HTTP and WebSocket), awaited at shutdown.
    pub tasks: TaskTracker,
    shutdown: CancellationToken,
    shutting_down: AtomicBool,
}

impl Gateway {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.live.reader().clone()
    }

    /// `gateway.trusted_proxies`, parsed.
    fn trusted_proxies(&self) -> Arc<[forwarded::Cidr]> {
        self.trusted.reader().clone()
    }

    /// Is `peer` one of `gateway.trusted_proxies`?
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        let trusted = self.trusted.reader();
        !trusted.is_empty() && forwarded::trusts(&trusted, peer)
    }

    /// A slot of `client`'s unauthenticated share
    /// (`gateway.limits.max_unauthenticated_per_ip`), or, when it holds
    /// them all, the refusal counted and logged (rate-limited) as `what`;
    /// `proxy`: the trusted proxy it came through. The caller answers with
    /// [`BUSY_PER_IP`].
    pub fn take_unauthenticated(
        &self,
        client: std::net::IpAddr,
        proxy: Option<std::net::SocketAddr>,
        what: &str,
    ) -> Option<per_ip::IpSlot> {
        let max = self.config().gateway.limits.max_unauthenticated_per_ip;
        let slot = self.unauthenticated_per_ip.try_take(client, max);
        if slot.is_none() {
            self.metrics
                .connections_refused_per_ip
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let via = proxy
                .map(|p| format!("through the proxy {p}; "))
                .unwrap_or_default();
            self.refusals.note(
                what,
                &format!(
                    "{max} unauthenticated connections already open from {client} ({via}gateway.limits.max_unauthenticated_per_ip)"
                ),
            );
        }
        slot
    }

    /// Who a request from `peer` with `headers` came from (see
    /// [`forwarded`]). Proxy headers from a peer not trusted are reported
    /// (rate-limited): that is a proxy the gateway should be told about.
    pub fn client(
        &self,
        peer: std::net::IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> forwarded::Client {
        if !forwarded::has_proxy_headers(headers) {
            return forwarded::Client::direct(peer);
        }
        let trusted = self.trusted_proxies();
        let header = self.config().gateway.client_ip_header;
        let c = forwarded::client(peer, headers, &trusted, header);
        if c.vouched {
            return c;
        }
        let why = if forwarded::trusts(&trusted, peer) {
            let name = header.name();
            if headers.contains_key(name) {
                format!(
                    "the trusted proxy {peer} sent a {name} header that names no client it vouches for (an entry \
                     that is not an address, such as `unknown`): the request is taken as from {}, and not as local",
                    c.ip
                )
            } else {
                let sent: Vec<&str> = forwarded::PROXY_HEADERS
                    .into_iter()
                    .filter(|h| headers.contains_key(*h))
                    .collect();
                format!(
                    "the trusted proxy {peer} sent {} but no {name} header, which gateway.client_ip_header names: \
                     the request is taken as from {peer}, and not as local; set gateway.client_ip_header to the \
                     header the proxy sets (never one it passes through from clients), or have it set {name}",
                    sent.join(", ")
                )
            }
        } else {
            format!(
                "a request from {peer} carries X-Forwarded-For, X-Real-IP or Forwarded, and {peer} is not in \
                 gateway.trusted_proxies: it is taken as from {peer}, and not as local; if {peer} is your \
                 reverse proxy, add it to gateway.trusted_proxies"
            )
        };
        self.proxy_notes.note("proxy headers", &why);
        c
    }

    /// Puts `config` in force (a reload has validated it and kept the keys
    /// that need a restart); returns the one it replaces.
    pub fn set_config(&self, config: Config) -> Arc<Config> {
        self.conns
            .set_own_budget(config.gateway.limits.max_reply_bytes_total);
        *self.trusted.writer() = parsed_proxies(&config);
        std::mem::replace(&mut *self.live.writer(), Arc::new(config))
    }

    pub fn new(config: Config, source: crate::config::Source) -> Result<Arc<Gateway>> {
        let metrics = Arc::new(Metrics::default());
        let conns = Arc::new(ConnectionManager::new());
        conns.set_own_budget(config.gateway.limits.max_reply_bytes_total);
        let broadcaster = Arc::new(Broadcaster::new(conns.clone(), metrics.clone()));
        let health_notify = Arc::new(Notify::new());
        let limits = Limits {
            memory_bytes: config.plugins.memory_mb * 1024 * 1024,
            call_timeout: Duration::from_millis(config.plugins.call_timeout_ms),
            max_file_bytes: config.plugins.max_file_bytes,
            max_concurrent_calls: config.plugins.max_concurrent_calls,
            call_queue_timeout: Duration::from_millis(config.plugins.call_queue_timeout_ms),
            log_lines_per_second: config.plugins.log_lines_per_second,
            max_sockets: config.plugins.max_sockets,
        };
        let plugins = Arc::new(PluginManager::new(
            config.plugins.dir.clone(),
            config
                .plugins
                .cache_dir
                .clone()
                .unwrap_or_else(|| config.state_dir().join("cache")),
            limits,
            metrics.clone(),
        )?);
        // channel -> plugin, for key-value stores of the oldest layout.
        let plugin_of: Vec<(String, String)> = config
            .channels
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    c.plugin.clone().unwrap_or_else(|| name.clone()),
                )
            })
            .collect();
        let store = Arc::new(
            crate::store::sqlite::SqliteLog::open(
                &config.state_dir(),
                config.store.sync,
                &plugin_of,
            )
            .map_err(|e| anyhow::anyhow!("message log: {e}"))?,
        );
        store.set_kv_max_bytes(config.store.kv_max_bytes);
        store.set_min_free_bytes(config.store.min_free_mb.saturating_mul(1024 * 1024));
        let log: Arc<dyn crate::store::MessageLog> = store.clone();
        let state: Arc<dyn crate::store::StateStore> = store;
        let outbox = crate::outbox::Outbox::open(state.clone())
            .map_err(|e| anyhow::anyhow!("outbox: {e}"))?;
        let channels = ChannelManager::new(
            config.channels.clone(),
            plugins.clone(),
            broadcaster.clone(),
            health_notify.clone(),
            outbox,
            log.clone(),
            state,
        );
        let health = Arc::new(Health {
            channels: channels.clone(),
            plugins: plugins.clone(),
            heartbeat_seconds: config.gateway.tick_interval_ms / 1000,
            notify: health_notify,
            shared: Default::default(),
            config_error: Default::default(),
        });
        let started_at_ms = crate::now_ms();
        let instance_id = uuid::Uuid::new_v4().to_string();
        let hostname = hostname();
        let presence = Arc::new(PresenceBook::new(
            self_presence(&config, &hostname, &instance_id, started_at_ms),
            config.gateway.presence.max_entries,
            Duration::from_millis(config.gateway.presence.ttl_ms),
        ));
        Ok(Arc::new(Gateway {
            limiter: auth::FailureLimiter::new(config.gateway.auth.max_failures_per_minute),
            refusals: refusals::RefusalLog::default(),
            proxy_notes: refusals::RefusalLog::default(),
            webhook_bodies: Arc::new(Semaphore::new(config.gateway.limits.max_webhook_bodies)),
            webhook_bodies_per_ip: Arc::default(),
            unauthenticated_per_ip: Arc::default(),
            trusted: std::sync::RwLock::new(parsed_proxies(&config)),
            live: std::sync::RwLock::new(Arc::new(config)),
            source,
            conns,
            broadcaster,
            channels,
            plugins,
            metrics,
            health,
            log,
            presence,
            presence_notify: Arc::new(Notify::new()),
            started: Instant::now(),
            started_at_ms,
            listening: std::sync::OnceLock::new(),
            instance_id,
            hostname,
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
                c,
                &crate::broadcast::Filter::scope(crate::scopes::Scope::Read),
            );
        }
        if !changes.is_empty() {
            self.channels.on_plugin_changes(&changes);
            self.health.notify.notify_one();
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

    /// A token cancelled when shutdown begins, for loops that do not hold
    /// the gateway.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Step 1 of shutdown: stop accepting, tell every loop to wind down.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// `config`'s `gateway.trusted_proxies`, parsed (validated when it was
/// loaded: an entry that is not an address or a network stopped the load).
fn parsed_proxies(config: &Config) -> Arc<[forwarded::Cidr]> {
    forwarded::parse_list(&config.gateway.trusted_proxies)
        .unwrap_or_default()
        .into()
}

/// The gateway's own presence entry (always first in the list).
fn self_presence(config: &Config, hostname: &str, instance_id: &str, at_ms: u64) -> Entry {
    let ip = config.bind_ip().map(|i| i.to_string()).unwrap_or_default();
    Entry {
        text: format!(
            "Gateway: {hostname} ({ip}) · switchboard {} · mode gateway",
            crate::VERSION
        ),
        host: hostname.to_string(),
        ip,
        version: crate::VERSION.to_string(),
        platform: std::env::consts::OS.to_string(),
        mode: "gateway".into(),
        reason: "self",
        instance_id: Some(instance_id.to_string()),
        ts: at_ms,
        online_since: at_ms,
        ..Entry::default()
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
