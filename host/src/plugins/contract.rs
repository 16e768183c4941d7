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

/// The longest error message or account-state detail kept from a plugin
/// (bytes): they reach operators, the log and every `health` event.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The longest id kept from a plugin's `send` answer (bytes), as for an
/// inbound message's ids.
pub const MAX_ID_BYTES: usize = 1024;

/// `text` cut to `max` bytes on a character boundary, saying how much was
/// cut (so the result may be a little longer than `max`).
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… ({} bytes cut)",
        &text[..end],
        text.len() - end
    ))
}

/// `text` cut to `max` bytes (see [`cut`]), reusing it when it fits.
pub fn cut_owned(text: String, max: usize) -> String {
    match cut(&text, max) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(c) => c,
    }
}

impl Delivery {
    /// Its ids cut to [`MAX_ID_BYTES`], and whether any was (the message
    /// was sent: a send is never failed for its answer's length, which
    /// would have it sent again).
    pub fn bounded(self) -> (Self, bool) {
        let long = self.message_id.len() > MAX_ID_BYTES
            || self
                .chat_id
                .as_ref()
                .is_some_and(|c| c.len() > MAX_ID_BYTES);
        let d = Delivery {
            message_id: cut_owned(self.message_id, MAX_ID_BYTES),
            chat_id: self.chat_id.map(|c| cut_owned(c, MAX_ID_BYTES)),
        };
        (d, long)
    }
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

impl ChannelError {
    /// Its message cut to [`MAX_MESSAGE_BYTES`].
    pub fn bounded(self) -> Self {
        self.map_message(|m| cut_owned(m, MAX_MESSAGE_BYTES))
    }

    /// The same error with `f` applied to its message.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            ChannelError::InvalidConfig(m) => ChannelError::InvalidConfig(f(m)),
            ChannelError::Unauthorized(m) => ChannelError::Unauthorized(f(m)),
            ChannelError::NotFound(m) => ChannelError::NotFound(f(m)),
            ChannelError::RateLimited(ms) => ChannelError::RateLimited(ms),
            ChannelError::Transient(m) => ChannelError::Transient(f(m)),
            ChannelError::Fatal(m) => ChannelError::Fatal(f(m)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_are_cut_on_a_character_boundary_and_say_so() {
        assert_eq!(cut("short", 8), "short");
        // "a" then two-byte characters: byte 8 is inside one.
        let text = format!("a{}", "é".repeat(10));
        assert_eq!(
            cut(&text, 8),
            format!("aééé… ({} bytes cut)", text.len() - 7)
        );
        let e = ChannelError::Fatal("e".repeat(MAX_MESSAGE_BYTES + 10)).bounded();
        assert_eq!(
            e,
            ChannelError::Fatal(format!("{}… (10 bytes cut)", "e".repeat(MAX_MESSAGE_BYTES)))
        );
        let fits = Delivery {
            message_id: "m".repeat(MAX_ID_BYTES),
            chat_id: None,
        };
        assert_eq!(fits.clone().bounded(), (fits, false));
        let (d, cut) = Delivery {
            message_id: "m".into(),
            chat_id: Some("c".repeat(MAX_ID_BYTES + 1)),
        }
        .bounded();
        assert!(cut);
        assert_eq!(d.message_id, "m");
        assert_eq!(
            d.chat_id.unwrap(),
            format!("{}… (1 bytes cut)", "c".repeat(MAX_ID_BYTES))
        );
    }
}
