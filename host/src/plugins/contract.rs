//! The contract's types as the rest of the daemon sees them: plain Rust,
//! the same whichever contract version a plugin was built against. Each
//! `bindings` module converts between these and its generated types, so
//! nothing outside `plugins/` names a generated type.

/// An account a call is for: its id and its settings (the account's TOML
/// table as JSON, without `enabled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub settings: String,
}

/// A message a plugin received from its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    pub account_id: String,
    pub chat_id: String,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub message_id: String,
    pub text: String,
    pub timestamp_ms: u64,
    pub thread_id: Option<String>,
    pub reply_to_id: Option<String>,
    pub raw: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub to: String,
    pub text: String,
    pub thread_id: Option<String>,
    pub reply_to_id: Option<String>,
}

/// What the upstream answered to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub chat_id: Option<String>,
}

/// A plugin's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    InvalidConfig(String),
    Unauthorized(String),
    NotFound(String),
    RateLimited(u64),
    Transient(String),
    Fatal(String),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            ChannelError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            ChannelError::NotFound(m) => write!(f, "not found: {m}"),
            ChannelError::RateLimited(ms) => write!(f, "rate limited for {ms} ms"),
            ChannelError::Transient(m) => write!(f, "temporary failure: {m}"),
            ChannelError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

/// What a plugin says about itself (`info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    /// `host:port` destinations it asks for.
    pub network: Vec<String>,
}

/// A webhook request, as the plugin gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The plugin's answer to a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a plugin reports of an account's connection (`set-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountState {
    Starting,
    Connected,
    Disconnected,
    Error,
}
