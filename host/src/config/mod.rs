//! Configuration: a TOML file (every key optional), `${VAR}` expansion from the
//! environment, then CLI flags and `SWITCHBOARD_*` environment variables on top.
//!
//! Unknown keys are an error that names the key, so that a typo never silently
//! turns a setting off.
//!
//! It uses only `scopes`, `plugins::parse_host_port` and
//! `plugins::tls_client::read_pem_certs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod load;
mod secrets;

pub use load::{describe, lossy_path, read_config_file, Described, Source};
pub use secrets::{hide_secrets, hide_secrets_in, redacted, secret_values};

pub const DEFAULT_PORT: u16 = 18789;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[store]`: the message log and the daemon's other durable state.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[channels.<name>]`: messaging channels and their accounts.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Where the daemon keeps state (switchboard.db, the compiled-plugin cache).
    /// Default: `$XDG_STATE_HOME/switchboard` or `~/.local/state/switchboard`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Reload when the config file changes (`false`: only on `SIGHUP`).
    #[serde(default = "yes")]
    pub watch_config: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway: Default::default(),
            plugins: Default::default(),
            store: Default::default(),
            channels: Default::default(),
            state_dir: None,
            watch_config: true,
        }
    }
}

/// `[channels.<name>]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The plugin id serving this channel (default: the channel's name).
    pub plugin: Option<String>,
    /// `false` keeps every account of the channel stopped.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `host:port` pairs this channel's plugin may reach; replaces the list
    /// the plugin asks for in `info().network`.
    pub network: Option<Vec<String>>,
    /// A PEM file of CA certificates the channel's TLS connections
    /// (`tls.connect`) trust besides the system roots: for servers with a
    /// private or self-signed CA. Read when the channel's configuration is
    /// applied (at start and at each reload).
    pub tls_ca: Option<PathBuf>,
    /// Largest body accepted on `POST /hooks/<channel>/...` (bytes).
    #[serde(default = "default_webhook_body")]
    pub webhook_max_body_bytes: usize,
    /// New messages the channel's accounts may deliver per second, all
    /// together, in bursts of up to 10 s worth; past it `deliver` fails
    /// (the plugin keeps the message and retries) and webhooks get `429`.
    /// 0: no bound.
    #[serde(default = "default_messages_per_second")]
    pub max_messages_per_second: u32,
    /// `[channels.<name>.accounts.<id>]`: `enabled` is the host's; every
    /// other key is handed to the plugin as its settings JSON.
    #[serde(default)]
    pub accounts: BTreeMap<String, toml::Table>,
}

fn yes() -> bool {
    true
}

/// Default of `channels.<name>.webhook_max_body_bytes`: 1 MiB.
pub const DEFAULT_WEBHOOK_BODY: usize = 1024 * 1024;

fn default_webhook_body() -> usize {
    DEFAULT_WEBHOOK_BODY
}

/// Default of `channels.<name>.max_messages_per_second`: far above what a
/// chat channel receives, low enough that one channel delivering in a loop
/// cannot take the message log and every operator's queue.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 1000;

fn default_messages_per_second() -> u32 {
    DEFAULT_MESSAGES_PER_SECOND
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// TCP port for HTTP and WebSocket (default 18789).
    pub port: u16,
    /// `loopback` (127.0.0.1), `lan` (0.0.0.0) or an IP address.
    pub bind: String,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub limits: LimitsConfig,
    /// Browser origins allowed to open a WebSocket (exact `scheme://host[:port]`, or `*`).
    /// Origins naming a loopback address (`localhost`, `127.0.0.1`, `[::1]`) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Names (the `Host` header, without port) under which the gateway may be
    /// reached besides loopback names and addresses. Checked for every
    /// request when no credentials are configured, and with credentials for
    /// `/ready` and `/metrics` (which need none; IP addresses pass too): it
    /// defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Reverse proxies (addresses or networks, `10.0.0.0/8`) whose
    /// `client_ip_header` names the client. A request with
    /// proxy headers from any other peer is taken as from that peer, and
    /// never as local.
    pub trusted_proxies: Vec<String>,
    /// The one header a trusted proxy names the client in. Only that one
    /// is read: a proxy passes the others through as the client wrote them.
    pub client_ip_header: ClientIpHeader,
    /// Interval of `tick` events (ms).
    pub tick_interval_ms: u64,
    /// How often the health monitor re-checks health when nothing notified it (ms).
    pub health_check_interval_ms: u64,
    /// A WebSocket ping goes to each authenticated connection from which
    /// nothing arrived for this long (ms).
    pub ping_interval_ms: u64,
    /// A connection from which nothing (no pong, no frame) arrived for this
    /// long is closed with 1001 (ms; more than `ping_interval_ms`).
    pub idle_timeout_ms: u64,
    /// The bounds of the presence list.
    pub presence: PresenceConfig,
    /// Serve the control page at `GET /` (and its assets under `/ui/`).
    /// `false`: `GET /` answers 426 as before; the WebSocket is unchanged.
    pub control_ui: bool,
}

/// `[gateway.presence]`: OpenClaw's own bounds by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Entries listed besides the gateway's own; past it the least
    /// recently refreshed goes.
    pub max_entries: usize,
    /// An entry not refreshed (connect or activity of one of its sockets)
    /// for this long is dropped (ms).
    pub ttl_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            max_entries: 200,
            ttl_ms: 300_000,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            bind: "loopback".into(),
            auth: AuthConfig::default(),
            tls: None,
            limits: LimitsConfig::default(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::XForwardedFor,
            tick_interval_ms: 30_000,
            health_check_interval_ms: 5_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            presence: PresenceConfig::default(),
            control_ui: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared token: grants every scope of every role.
    pub token: Option<String>,
    /// Shared password: grants every scope of every role.
    pub password: Option<String>,
    /// Extra tokens limited to some scopes (e.g. a read-only dashboard).
    pub tokens: Vec<ScopedToken>,
    /// Failed handshakes allowed per remote IP per minute before `rate limited`.
    pub max_failures_per_minute: u32,
    /// Loopback clients without a browser `Origin` are not rate limited.
    pub exempt_loopback: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token: None,
            password: None,
            tokens: Vec::new(),
            max_failures_per_minute: 10,
            exempt_loopback: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// A label for logs.
    pub name: String,
    pub token: String,
    /// Roles this token may take (default: operator).
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Scopes this token may be granted.
    pub scopes: Vec<String>,
}

fn default_roles() -> Vec<String> {
    vec!["operator".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate(s): when set, every client must present a
    /// certificate signed by one of them (mutual TLS), or its TLS handshake
    /// fails. Token or password authentication still applies on top.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open TCP connections (HTTP and WebSocket) at once; held for the socket's life.
    pub max_connections: usize,
    /// Largest frame accepted before the handshake completes.
    pub preauth_max_frame_bytes: usize,
    /// Largest frame accepted after the handshake (advertised as `policy.maxPayload`).
    pub max_payload_bytes: usize,
    /// Bytes queued for one connection before it is closed as a slow
    /// consumer (advertised as `policy.maxBufferedBytes`).
    pub max_buffered_bytes: usize,
    /// Bytes of responses waiting to be written, all connections together:
    /// past it, the connections holding the most are closed as slow
    /// consumers (broadcast events, shared by every connection, do not count).
    pub max_reply_bytes_total: usize,
    /// Frames queued for one connection before it is closed as a slow consumer.
    pub send_queue_frames: usize,
    /// Kernel send buffer per WebSocket (bytes, 0 = OS default/autotuning).
    pub socket_send_buffer_bytes: usize,
    /// Time allowed between the upgrade and a successful `connect`.
    pub handshake_timeout_ms: u64,
    /// Time allowed for a client to send complete HTTP request headers.
    pub header_read_timeout_ms: u64,
    /// Time allowed for a client to send a whole request body (webhooks).
    pub body_read_timeout_ms: u64,
    /// Webhook request bodies read at once, across all channels; more get 503.
    pub max_webhook_bodies: usize,
    /// Webhook request bodies one remote address (an IPv6 /64) may have
    /// being read at once; more get 503 (0: no limit but the global one).
    pub max_webhook_bodies_per_ip: usize,
    /// Connections one remote address (an IPv6 /64) may hold open while
    /// they are not authenticated WebSockets (before `hello-ok`, and plain
    /// HTTP such as webhooks); more are refused at accept (0: no limit).
    pub max_unauthenticated_per_ip: usize,
    /// Requests one connection may have in flight at once.
    pub max_inflight_requests: usize,
    /// Bound on graceful shutdown.
    pub shutdown_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            preauth_max_frame_bytes: 64 * 1024,
            max_payload_bytes: 25 * 1024 * 1024,
            max_buffered_bytes: 50 * 1024 * 1024,
            max_reply_bytes_total: 512 * 1024 * 1024,
            send_queue_frames: 1024,
            socket_send_buffer_bytes: 256 * 1024,
            handshake_timeout_ms: 15_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_webhook_bodies: 16,
            max_webhook_bodies_per_ip: 8,
            max_unauthenticated_per_ip: 256,
            max_inflight_requests: 32,
            shutdown_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory watched for channel plugins (`*.wasm`).
    pub dir: PathBuf,
    /// Reload plugins when files in `dir` change.
    pub watch: bool,
    /// Linear memory per plugin instance (MiB).
    pub memory_mb: usize,
    /// Bound on one `validate`, `send` or `handle-webhook` call (ms).
    pub call_timeout_ms: u64,
    /// Largest plugin file accepted (bytes).
    pub max_file_bytes: u64,
    /// Quiet time after a change in `dir` before it is re-read (ms).
    pub debounce_ms: u64,
    /// Calls (`send`, `validate`, `handle-webhook`) of one plugin running at
    /// once; with `memory_mb` this bounds the plugin's memory.
    pub max_concurrent_calls: usize,
    /// How long a call waits for one of those slots before it is refused (ms).
    pub call_queue_timeout_ms: u64,
    /// Lines one plugin may log per second (its `log` import, stdout,
    /// stderr, and what the daemon logs about it), in bursts of up to 10
    /// seconds' worth; lines past it are dropped and counted. 0: no bound.
    pub log_lines_per_second: u32,
    /// Network connections one plugin holds at once, all its instances
    /// together: TCP sockets, TLS connections, HTTP requests, and DNS
    /// lookups while their answer is read.
    pub max_sockets: usize,
    /// Where compiled plugins are cached, a directory of their own (made
    /// `0700`). Default: `<state_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("plugins"),
            watch: true,
            memory_mb: 64,
            call_timeout_ms: 30_000,
            max_file_bytes: 64 * 1024 * 1024,
            debounce_ms: 200,
            max_concurrent_calls: 16,
            call_queue_timeout_ms: 5_000,
            log_lines_per_second: 50,
            max_sockets: 256,
            cache_dir: None,
        }
    }
}

/// Where a trusted proxy names the client (`gateway.client_ip_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1`: each proxy appends the address it
    /// saw (nginx's `$proxy_add_x_forwarded_for`, Caddy, Traefik, HAProxy's
    /// `option forwardfor`).
    #[serde(rename = "x-forwarded-for", alias = "X-Forwarded-For")]
    XForwardedFor,
    /// `X-Real-IP: client`: one address, set by the proxy (nginx's
    /// `proxy_set_header X-Real-IP $remote_addr`).
    #[serde(rename = "x-real-ip", alias = "X-Real-IP")]
    XRealIp,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]"`
    /// (HAProxy's `option forwarded`, Envoy, …).
    #[serde(rename = "forwarded", alias = "Forwarded")]
    Forwarded,
}

impl ClientIpHeader {
    /// The header's name, lowercase.
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::XRealIp => "x-real-ip",
            ClientIpHeader::Forwarded => "forwarded",
        }
    }
}

/// When a commit is durable (`[store] sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Each commit is on the disk before it is acknowledged: survives a
    /// power loss (`PRAGMA synchronous=FULL`).
    Full,
    /// Each commit is in the operating system before it is acknowledged:
    /// survives a crash of the daemon, not of the machine
    /// (`PRAGMA synchronous=NORMAL`).
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub sync: SyncMode,
    /// How long a `send`'s idempotency record is kept (hours).
    pub idempotency_ttl_hours: u64,
    /// Messages older than this are pruned (days; 0 keeps them for ever).
    pub retention_days: u64,
    /// The oldest messages are pruned while the log is larger than this
    /// (bytes; 0: no bound).
    pub max_bytes: u64,
    /// The most one channel's key-value store holds: keys, values and 64
    /// bytes per entry, 128 per claim (bytes).
    pub kv_max_bytes: u64,
    /// New messages are refused while the state directory's disk has less
    /// free space than this (MiB; 0: no floor).
    pub min_free_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sync: SyncMode::Full,
            idempotency_ttl_hours: 24,
            retention_days: 30,
            max_bytes: 0,
            kv_max_bytes: crate::store::sqlite::DEFAULT_KV_MAX_BYTES,
            min_free_mb: crate::store::sqlite::DEFAULT_MIN_FREE_MB,
        }
    }
}

/// Values from CLI flags and environment variables; `None` leaves the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub port: Option<u16>,
    pub bind: Option<String>,
    pub token: Option<String>,
    pub password: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}
