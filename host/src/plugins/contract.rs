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
    /// Files that came with it (metadata; none from a 0.1 plugin).
    pub attachments: Vec<InboundAttachment>,
}

/// What an attachment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    Image,
    Video,
    Audio,
    Voice,
    Document,
    Sticker,
    Animation,
    Other,
}

/// Where an outbound attachment's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentSource {
    Url(String),
    Bytes(Vec<u8>),
}

/// A file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAttachment {
    pub kind: AttachmentKind,
    pub mime_type: Option<String>,
    pub file_name: Option<String>,
    pub source: AttachmentSource,
}

/// A received file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundAttachment {
    pub kind: AttachmentKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mime_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
}

/// What a plugin can do beyond sending text (`info().capabilities`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub media: bool,
    pub reactions: bool,
    pub edit: bool,
    pub delete: bool,
    pub threads: bool,
}

impl Capabilities {
    /// Those of a contract 0.1 plugin: the contract carried a thread id
    /// and nothing else.
    pub const V0_1: Capabilities = Capabilities {
        media: false,
        reactions: false,
        edit: false,
        delete: false,
        threads: true,
    };

    /// Each capability by its name, in the contract's order.
    fn by_name(&self) -> [(&'static str, bool); 5] {
        [
            ("media", self.media),
            ("reactions", self.reactions),
            ("edit", self.edit),
            ("delete", self.delete),
            ("threads", self.threads),
        ]
    }

    /// The names of those it has, for `plugins.list`.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name()
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }

    /// Does it have the capability called `name`?
    pub fn has(&self, name: &str) -> bool {
        self.by_name().iter().any(|&(n, on)| on && n == name)
    }
}

/// A message an action is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    pub chat_id: String,
    pub message_id: String,
}

/// What `act` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    React {
        target: MessageRef,
        emoji: String,
        remove: bool,
    },
    Edit {
        target: MessageRef,
        text: String,
    },
    Delete(MessageRef),
}

impl Action {
    /// The capability it needs.
    pub fn capability(&self) -> &'static str {
        match self {
            Action::React { .. } => "reactions",
            Action::Edit { .. } => "edit",
            Action::Delete(_) => "delete",
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub to: String,
    pub text: String,
    pub thread_id: Option<String>,
    pub reply_to_id: Option<String>,
    /// Files to send (only to a plugin with the `media` capability).
    pub attachments: Vec<OutboundAttachment>,
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
    pub capabilities: Capabilities,
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
