//! What `send` and `message.action` take, checked against what a channel
//! can do: every field of OpenClaw's `SendParams` and `MessageActionParams`
//! (`protocol.schema.json` of `@openclaw/gateway-protocol`) is accepted by
//! the parser, and a field the channel cannot honour is refused with an
//! error naming it — never dropped. Contract 0.1 channels send text, with a
//! thread and a reply target: media, formatting (`parseMode`) and delivery
//! options (`silent`, `asVoice`, …) are refused when set.
//!
//! Fields that route a request inside OpenClaw's agent runtime (`agentId`,
//! `sessionKey`, `sessionId`, `senderIsOwner`, `toolContext`, …) are
//! accepted and ignored: Switchboard runs no agents (documented in the
//! README).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::frames::ErrorShape;
use crate::plugins::contract::{
    Action, AttachmentKind, AttachmentSource, MessageRef, OutboundAttachment, OutboundMessage,
};

/// `send`'s params: every field of OpenClaw's `SendParams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SendParams {
    pub to: String,
    pub message: Option<String>,
    pub media_url: Option<String>,
    pub media_urls: Option<Vec<String>>,
    pub buffer: Option<String>,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub as_voice: Option<bool>,
    pub gif_playback: Option<bool>,
    pub channel: Option<String>,
    pub account_id: Option<String>,
    /// OpenClaw's agent routing; ignored (no agents here).
    #[allow(dead_code)]
    pub agent_id: Option<String>,
    pub reply_to_id: Option<String>,
    pub thread_id: Option<String>,
    pub force_document: Option<bool>,
    pub silent: Option<bool>,
    pub parse_mode: Option<String>,
    /// OpenClaw's session routing; ignored (no agents here).
    #[allow(dead_code)]
    pub session_key: Option<String>,
    pub idempotency_key: String,
}

/// Why no channel can take a field yet (the end of the error).
const NO_FIELD: &str = "the channel contract has no such option yet; remove the field";

/// All inline attachments (`buffer`) of one message together.
pub const MAX_INLINE_BYTES: usize = 16 * 1024 * 1024;

/// Longest `idempotencyKey` (bytes). OpenClaw's clients send a UUID; the key
/// is kept in the log and, while its record is owed, in memory.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 512;

/// `idempotencyKey` is set and not over [`MAX_IDEMPOTENCY_KEY_BYTES`].
fn check_key(method: &str, key: &str) -> Result<(), ErrorShape> {
    if key.is_empty() {
        return Err(ErrorShape::invalid(format!(
            "{method}: idempotencyKey must not be empty"
        )));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ErrorShape::invalid(format!(
            "{method}: idempotencyKey is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_BYTES} (a UUID is 36)",
            key.len()
        )));
    }
    Ok(())
}

/// Longest `contentType` (RFC 6838 caps a type and a subtype at 127
/// characters each) and `filename` (bytes).
const MAX_CONTENT_TYPE_BYTES: usize = 255;
const MAX_FILENAME_BYTES: usize = 1024;

/// `contentType` is a MIME type (`type/subtype`, each an HTTP token,
/// optionally `; parameters` of printable ASCII). A channel puts it in a
/// header of its own request (a multipart part's `Content-Type`), where a
/// CR or LF would start headers or parts of the caller's choosing.
fn check_content_type(method: &str, ct: &str) -> Result<(), ErrorShape> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let (essence, params) = ct.split_once(';').unwrap_or((ct, ""));
    let ok = ct.len() <= MAX_CONTENT_TYPE_BYTES
        && essence
            .trim()
            .split_once('/')
            .is_some_and(|(t, sub)| token(t) && token(sub))
        && params.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ErrorShape::invalid(format!(
            "{method}: `contentType` must be a MIME type such as `image/png` (type/subtype, at most {MAX_CONTENT_TYPE_BYTES} bytes of printable ASCII), got {:?}",
            crate::logsink::printable(&ct.chars().take(80).collect::<String>())
        )))
    }
}

/// `filename` and media URLs hold no control characters (CR, LF, NUL, …):
/// a channel puts them in headers and lines of its own requests.
fn check_no_controls(method: &str, field: &str, v: &str, max: usize) -> Result<(), ErrorShape> {
    if v.len() > max {
        return Err(ErrorShape::invalid(format!(
            "{method}: `{field}` is {} bytes long; at most {max}",
            v.len()
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ErrorShape::invalid(format!(
            "{method}: `{field}` holds a control character (such as CR, LF or NUL); remove it"
        )));
    }
    Ok(())
}

/// The media fields of a request, as OpenClaw names them.
#[derive(Default)]
struct Media {
    /// `mediaUrl`, `mediaUrls` (and `message.action`'s `media`).
    urls: Vec<(&'static str, String)>,
    /// `buffer`: base64.
    buffer: Option<String>,
    filename: Option<String>,
    content_type: Option<String>,
    as_voice: bool,
    gif_playback: bool,
    force_document: bool,
}

impl Media {
    /// The attachments, or an error naming the field that is wrong.
    fn attachments(self, method: &str) -> Result<Vec<OutboundAttachment>, ErrorShape> {
        let none = self.urls.is_empty() && self.buffer.is_none();
        for (field, on) in [
            ("filename", self.filename.is_some()),
            ("contentType", self.content_type.is_some()),
            ("asVoice", self.as_voice),
            ("gifPlayback", self.gif_playback),
            ("forceDocument", self.force_document),
        ] {
            if none && on {
                return Err(ErrorShape::invalid(format!(
                    "{method}: `{field}` describes an attachment, and there is none (give `mediaUrl`, `mediaUrls` or `buffer`)"
                )));
            }
        }
        if let Some(ct) = &self.content_type {
            check_content_type(method, ct)?;
        }
        if let Some(name) = &self.filename {
            check_no_controls(method, "filename", name, MAX_FILENAME_BYTES)?;
        }
        let single = self.urls.len() + usize::from(self.buffer.is_some()) == 1;
        let kind = |mime: Option<&str>, name: &str| {
            kind_of(
                mime,
                name,
                self.as_voice,
                self.gif_playback,
                self.force_document,
            )
        };
        let mut out = Vec::new();
        for (field, url) in &self.urls {
            check_no_controls(method, field, url, usize::MAX)?;
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                return Err(ErrorShape::invalid(format!(
                    "{method}: `{field}` must be an http(s) URL (got `{url}`): the gateway cannot read files on the client's machine; send the content as `buffer` (base64) instead"
                )));
            }
            let (mime, name) = if single {
                (self.content_type.clone(), self.filename.clone())
            } else {
                (None, None)
            };
            let path = lower
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_string();
            out.push(OutboundAttachment {
                kind: kind(mime.as_deref(), name.as_deref().unwrap_or(&path)),
                mime_type: mime,
                file_name: name,
                source: AttachmentSource::Url(url.clone()),
            });
        }
        if let Some(b64) = &self.buffer {
            use base64::Engine as _;
            if b64.len() > MAX_INLINE_BYTES / 3 * 4 + 4 {
                return Err(ErrorShape::invalid(format!(
                    "{method}: `buffer` is over {} MiB; send a URL instead",
                    MAX_INLINE_BYTES >> 20
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ErrorShape::invalid(format!("{method}: `buffer` is not base64: {e}"))
                })?;
            let name = self.filename.clone();
            out.push(OutboundAttachment {
                kind: kind(self.content_type.as_deref(), name.as_deref().unwrap_or("")),
                mime_type: self.content_type.clone(),
                file_name: name,
                source: AttachmentSource::Bytes(bytes),
            });
        }
        Ok(out)
    }
}

/// What an attachment is, from its MIME type or else its name's extension.
fn kind_of(
    mime: Option<&str>,
    name: &str,
    voice: bool,
    gif: bool,
    document: bool,
) -> AttachmentKind {
    if document {
        return AttachmentKind::Document;
    }
    let ext = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mime = match mime {
        Some(m) => m.to_ascii_lowercase(),
        None => match ext.as_str() {
            "png" | "jpg" | "jpeg" | "webp" | "bmp" => "image/x".into(),
            "gif" => "image/gif".into(),
            "mp4" | "mov" | "webm" | "mkv" => "video/x".into(),
            "mp3" | "m4a" | "wav" | "flac" | "aac" => "audio/x".into(),
            "ogg" | "oga" | "opus" => "audio/ogg".into(),
            _ => String::new(),
        },
    };
    match mime.split('/').next().unwrap_or_default() {
        _ if mime == "image/gif" && gif => AttachmentKind::Animation,
        "image" => AttachmentKind::Image,
        "video" if gif => AttachmentKind::Animation,
        "video" => AttachmentKind::Video,
        "audio" if voice => AttachmentKind::Voice,
        "audio" => AttachmentKind::Audio,
        _ => AttachmentKind::Document,
    }
}

impl SendParams {
    /// The message for `channel`, or an error naming the first field it
    /// cannot honour. (Whether the channel takes attachments and thread ids
    /// is the channel manager's to check: it knows the plugin.)
    pub fn outbound(self, channel: &str) -> Result<OutboundMessage, ErrorShape> {
        check_key("send", &self.idempotency_key)?;
        if self.to.is_empty() {
            return Err(ErrorShape::invalid("send: to must not be empty"));
        }
        if self.silent == Some(true) {
            return Err(cannot_honour("send", "silent", channel));
        }
        if self.parse_mode.is_some() {
            return Err(cannot_honour("send", "parseMode", channel));
        }
        let mut urls: Vec<(&'static str, String)> = self
            .media_url
            .into_iter()
            .map(|u| ("mediaUrl", u))
            .collect();
        urls.extend(
            self.media_urls
                .unwrap_or_default()
                .into_iter()
                .map(|u| ("mediaUrls", u)),
        );
        let attachments = Media {
            urls,
            buffer: self.buffer,
            filename: self.filename,
            content_type: self.content_type,
            as_voice: self.as_voice == Some(true),
            gif_playback: self.gif_playback == Some(true),
            force_document: self.force_document == Some(true),
        }
        .attachments("send")?;
        let text = self.message.unwrap_or_default();
        if text.is_empty() && attachments.is_empty() {
            return Err(ErrorShape::invalid(
                "send: nothing to send: give `message`, or media (`mediaUrl`, `mediaUrls`, `buffer`)",
            ));
        }
        Ok(OutboundMessage {
            to: self.to,
            text,
            thread_id: self.thread_id,
            reply_to_id: self.reply_to_id,
            attachments,
        })
    }
}

fn cannot_honour(method: &str, field: &str, channel: &str) -> ErrorShape {
    ErrorShape::invalid(format!(
        "{method}: channel {channel} cannot honour `{field}`: {NO_FIELD}"
    ))
    .with_details(serde_json::json!({"code": "UNSUPPORTED_FIELD", "field": field}))
}

/// `message.action`'s params: OpenClaw's `MessageActionParams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // the agent-routing fields are accepted and ignored
pub struct MessageActionParams {
    pub channel: String,
    pub action: String,
    pub params: Map<String, Value>,
    pub reply: Option<ActionReply>,
    pub account_id: Option<String>,
    requester_account_id: Option<String>,
    requester_sender_id: Option<String>,
    sender_is_owner: Option<bool>,
    session_key: Option<String>,
    session_id: Option<String>,
    inbound_turn_kind: Option<InboundTurnKind>,
    agent_id: Option<String>,
    tool_context: Option<Map<String, Value>>,
    conversation_read_origin: Option<ReadOrigin>,
    pub idempotency_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InboundTurnKind {
    UserRequest,
    RoomEvent,
}

#[derive(Debug, Deserialize)]
enum ReadOrigin {
    #[serde(rename = "direct-operator")]
    DirectOperator,
}

/// `message.action`'s `reply`: what the message answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActionReply {
    pub reply_to_id: String,
    #[allow(dead_code)]
    source: ReplySource,
    #[allow(dead_code)]
    mode: Option<ReplyMode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReplySource {
    Explicit,
    Implicit,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReplyMode {
    First,
    All,
}

/// Keys of every action's `params` this gateway reads.
const ACTION_READS: &[&str] = &["target", "to", "chatId", "accountId", "channel", "action"];
/// Keys of a `send` action's `params` this gateway reads besides those.
const SEND_READS: &[&str] = &[
    "message",
    "replyTo",
    "replyToId",
    "threadId",
    "media",
    "mediaUrl",
    "mediaUrls",
    "buffer",
    "filename",
    "contentType",
    "asVoice",
    "gifPlayback",
    "forceDocument",
];
/// Keys of `react`, `edit` and `delete` this gateway reads besides those.
const ACT_READS: &[&str] = &[
    "messageId",
    "emoji",
    "remove",
    "message",
    "text",
    "threadId",
];
/// Keys that only steer the OpenClaw CLI itself (output format, logging).
const CLIENT_SIDE: &[&str] = &["json", "verbose"];
/// Keys that ask for something no channel contract has.
const NO_SUCH_OPTION: &[&str] = &[
    "silent",
    "pin",
    "parseMode",
    "presentation",
    "buttons",
    "card",
    "components",
    "embeds",
];

impl MessageActionParams {
    /// Checks the envelope (the parser has checked its shape).
    pub fn check(&self) -> Result<(), ErrorShape> {
        if self.channel.is_empty() || self.action.is_empty() || self.idempotency_key.is_empty() {
            return Err(ErrorShape::invalid(
                "message.action: channel, action and idempotencyKey must not be empty",
            ));
        }
        check_key("message.action", &self.idempotency_key)
    }

    /// The account an action is for: the request's, else its params'.
    pub fn account(&self) -> Option<String> {
        self.account_id.clone().or_else(|| {
            self.params
                .get("accountId")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    /// `params.<k>` as a string (numbers as their text).
    fn s(&self, k: &str) -> Result<Option<String>, ErrorShape> {
        match self.params.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(ErrorShape::invalid(format!(
                "message.action {}: params.{k} must be a string, not {other}",
                self.action
            ))),
        }
    }

    fn flag(&self, k: &str) -> bool {
        self.params.get(k).and_then(Value::as_bool) == Some(true)
    }

    /// Refuses every parameter that is set and not read for this action.
    fn check_params(&self, reads: &[&str], channel: &str) -> Result<(), ErrorShape> {
        let what = format!("message.action {}", self.action);
        if let Some(a) = self.s("action")? {
            if a != self.action {
                return Err(ErrorShape::invalid(format!(
                    "message.action: params.action `{a}` contradicts action `{}`",
                    self.action
                )));
            }
        }
        if let Some(c) = self.s("channel")? {
            if c != self.channel {
                return Err(ErrorShape::invalid(format!(
                    "message.action: params.channel `{c}` contradicts channel `{}`",
                    self.channel
                )));
            }
        }
        for (k, v) in &self.params {
            if ACTION_READS.contains(&k.as_str())
                || reads.contains(&k.as_str())
                || CLIENT_SIDE.contains(&k.as_str())
                || k.starts_with("__")
                || is_unset(v)
            {
                continue;
            }
            if NO_SUCH_OPTION.contains(&k.as_str()) {
                return Err(cannot_honour(&what, &format!("params.{k}"), channel));
            }
            if k == "dryRun" {
                return Err(ErrorShape::invalid(format!(
                    "{what}: params.dryRun is not supported: a gateway acts; a dry run is the client's to do"
                )));
            }
            return Err(ErrorShape::invalid(format!(
                "{what}: params.{k} is not supported by this gateway; remove it"
            ))
            .with_details(
                serde_json::json!({"code": "UNSUPPORTED_FIELD", "field": format!("params.{k}")}),
            ));
        }
        Ok(())
    }

    /// The chat: `target`, else `to` without the channel's prefix
    /// (`telegram:4242`), else `chatId`.
    fn chat(&self) -> Result<String, ErrorShape> {
        let prefix = format!("{}:", self.channel);
        match (self.s("target")?, self.s("to")?, self.s("chatId")?) {
            (Some(t), _, _) if !t.is_empty() => Ok(t),
            (_, Some(t), _) if !t.is_empty() => {
                Ok(t.strip_prefix(&prefix).unwrap_or(&t).to_string())
            }
            (_, _, Some(t)) if !t.is_empty() => Ok(t),
            _ => Err(ErrorShape::invalid(format!(
                "message.action {}: params.target (or params.to) is required",
                self.action
            ))),
        }
    }

    /// The message of a `send` action for `channel`, or an error naming the
    /// first parameter it cannot honour.
    pub fn send_message(&self, channel: &str) -> Result<OutboundMessage, ErrorShape> {
        self.check_params(SEND_READS, channel)?;
        let to = self.chat()?;
        let mut urls: Vec<(&'static str, String)> = Vec::new();
        for (field, key) in [("params.media", "media"), ("params.mediaUrl", "mediaUrl")] {
            if let Some(u) = self.s(key)?.filter(|u| !u.is_empty()) {
                urls.push((field, u));
            }
        }
        if let Some(list) = self.params.get("mediaUrls").and_then(Value::as_array) {
            for u in list {
                let u = u.as_str().ok_or_else(|| {
                    ErrorShape::invalid("message.action send: params.mediaUrls must be strings")
                })?;
                urls.push(("params.mediaUrls", u.to_string()));
            }
        }
        let attachments = Media {
            urls,
            buffer: self.s("buffer")?.filter(|b| !b.is_empty()),
            filename: self.s("filename")?.filter(|b| !b.is_empty()),
            content_type: self.s("contentType")?.filter(|b| !b.is_empty()),
            as_voice: self.flag("asVoice"),
            gif_playback: self.flag("gifPlayback"),
            force_document: self.flag("forceDocument"),
        }
        .attachments("message.action send")?;
        let text = self.s("message")?.unwrap_or_default();
        if text.is_empty() && attachments.is_empty() {
            return Err(ErrorShape::invalid(
                "message.action send: params.message (or media) is required",
            ));
        }
        let reply_to_id = match &self.reply {
            Some(r) => Some(r.reply_to_id.clone()),
            None => self.s("replyTo")?.or(self.s("replyToId")?),
        };
        Ok(OutboundMessage {
            to,
            text,
            thread_id: self.s("threadId")?,
            reply_to_id,
            attachments,
        })
    }

    /// `react`, `edit` or `delete` as a contract action (`None` for an
    /// action this gateway does not map), or an error naming what is wrong.
    pub fn act(&self, channel: &str) -> Result<Option<Action>, ErrorShape> {
        if !matches!(self.action.as_str(), "react" | "edit" | "delete") {
            return Ok(None);
        }
        self.check_params(ACT_READS, channel)?;
        let message_id = self
            .s("messageId")?
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ErrorShape::invalid(format!(
                    "message.action {}: params.messageId is required",
                    self.action
                ))
            })?;
        let target = MessageRef {
            chat_id: self.chat()?,
            message_id,
        };
        let required = |k: &str| -> Result<String, ErrorShape> {
            self.s(k)?.filter(|v| !v.is_empty()).ok_or_else(|| {
                ErrorShape::invalid(format!(
                    "message.action {}: params.{k} is required",
                    self.action
                ))
            })
        };
        Ok(Some(match self.action.as_str() {
            "react" => Action::React {
                target,
                emoji: required("emoji")?,
                remove: self.flag("remove"),
            },
            "edit" => Action::Edit {
                target,
                text: match self.s("message")?.filter(|t| !t.is_empty()) {
                    Some(t) => t,
                    None => required("text")?,
                },
            },
            _ => Action::Delete(target),
        }))
    }
}

/// A parameter the CLI sends with its default value asks for nothing.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The frame the OpenClaw CLI sends for `openclaw message send`, verbatim.
    fn cli_frame() -> Value {
        json!({"channel":"telegram","action":"send",
            "params":{"pin":false,"gifPlayback":false,"forceDocument":false,"silent":false,"json":false,"dryRun":false,
             "verbose":false,"channel":"telegram","target":"4242","message":"hi there","action":"send","to":"telegram:4242",
             "__sessionKey":"agent:main:main","__agentId":"main"},"senderIsOwner":true,"agentId":"main",
            "conversationReadOrigin":"direct-operator","idempotencyKey":"7536"})
    }

    #[test]
    fn media_fields_that_would_reach_a_header_are_checked() {
        let send = |extra: Value| {
            let mut p = json!({"to": "4242", "idempotencyKey": "k", "buffer": "aGk="});
            p.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<SendParams>(p)
                .unwrap()
                .outbound("telegram")
        };
        for ct in [
            "image/png",
            "text/plain; charset=utf-8",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ] {
            send(json!({"contentType": ct})).unwrap();
        }
        for ct in [
            "application/pdf\r\n\r\nx\r\n--switchboard-0000000000005eed\r\nContent-Disposition: form-data; name=\"chat_id\"",
            "image/png\nX-Injected: 1",
            "png",
            "",
            "image/",
            "a b/c",
            "text/plain; charset=\u{0}",
            "image/pñg",
        ] {
            let e = send(json!({"contentType": ct})).unwrap_err();
            assert!(e.message.contains("`contentType` must be a MIME type"), "{ct:?}: {}", e.message);
            assert!(!e.message.contains(['\r', '\n', '\0']), "{:?}", e.message);
        }
        send(json!({"contentType": format!("a/{}", "b".repeat(254))})).unwrap_err();
        send(json!({"filename": "résumé 2026.pdf"})).unwrap();
        for name in ["a\r\nb.pdf", "a\0.pdf", "a\u{85}.pdf"] {
            let e = send(json!({"filename": name})).unwrap_err();
            assert!(
                e.message.contains("`filename` holds a control character"),
                "{}",
                e.message
            );
        }
        let e = send(json!({"filename": "x".repeat(1025)})).unwrap_err();
        assert!(
            e.message.contains("`filename` is 1025 bytes long"),
            "{}",
            e.message
        );
        let e = send(json!({"mediaUrl": "https://img.example/a.png\r\nHost: evil"})).unwrap_err();
        assert!(
            e.message.contains("`mediaUrl` holds a control character"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_cli_frame_becomes_a_text_message() {
        let p: MessageActionParams = serde_json::from_value(cli_frame()).unwrap();
        p.check().unwrap();
        let m = p.send_message("telegram").unwrap();
        assert_eq!((m.to.as_str(), m.text.as_str()), ("4242", "hi there"));
        assert_eq!((m.thread_id, m.reply_to_id), (None, None));
    }

    #[test]
    fn set_options_and_media_are_refused_by_name() {
        for (k, v) in [
            ("pin", json!(true)),
            ("media", json!("/home/me/photo.png")),
            ("silent", json!(true)),
            ("buttons", json!([[{"text": "a"}]])),
            ("somethingNew", json!(1)),
        ] {
            let mut f = cli_frame();
            f["params"][k] = v;
            let p: MessageActionParams = serde_json::from_value(f).unwrap();
            let e = p.send_message("telegram").unwrap_err();
            assert!(
                e.message.contains(&format!("params.{k}")),
                "{k}: {}",
                e.message
            );
        }
    }

    #[test]
    fn react_edit_and_delete_map_onto_actions() {
        let frame = |action: &str, params: Value| {
            serde_json::from_value::<MessageActionParams>(json!({"channel": "telegram",
                "action": action, "params": params, "idempotencyKey": "k"}))
            .unwrap()
        };
        let p = frame(
            "react",
            json!({"target": "4242", "messageId": "7", "emoji": "👍", "remove": false, "fromMe": false}),
        );
        let target = MessageRef {
            chat_id: "4242".into(),
            message_id: "7".into(),
        };
        assert_eq!(
            p.act("telegram").unwrap(),
            Some(Action::React {
                target: target.clone(),
                emoji: "👍".into(),
                remove: false
            })
        );
        let p = frame(
            "edit",
            json!({"to": "telegram:4242", "messageId": "7", "message": "new"}),
        );
        assert_eq!(
            p.act("telegram").unwrap(),
            Some(Action::Edit {
                target: target.clone(),
                text: "new".into()
            })
        );
        let p = frame("delete", json!({"target": "4242", "messageId": "7"}));
        assert_eq!(p.act("telegram").unwrap(), Some(Action::Delete(target)));
        let p = frame("delete", json!({"target": "4242"}));
        assert!(p
            .act("telegram")
            .unwrap_err()
            .message
            .contains("params.messageId"));
        let p = frame("poll", json!({"target": "4242"}));
        assert_eq!(p.act("telegram").unwrap(), None);
    }

    #[test]
    fn to_loses_the_channel_prefix_and_reply_comes_from_the_envelope() {
        let mut f = cli_frame();
        f["params"].as_object_mut().unwrap().remove("target");
        f["reply"] = json!({"replyToId": "77", "source": "explicit"});
        f["params"]["threadId"] = json!(9);
        let p: MessageActionParams = serde_json::from_value(f).unwrap();
        let m = p.send_message("telegram").unwrap();
        assert_eq!(m.to, "4242");
        assert_eq!(m.reply_to_id.as_deref(), Some("77"));
        assert_eq!(m.thread_id.as_deref(), Some("9"));
    }

    #[test]
    fn the_envelope_is_strict() {
        let mut f = cli_frame();
        f["bogus"] = json!(1);
        assert!(serde_json::from_value::<MessageActionParams>(f).is_err());
        let mut f = cli_frame();
        f["conversationReadOrigin"] = json!("elsewhere");
        assert!(serde_json::from_value::<MessageActionParams>(f).is_err());
    }

    #[test]
    fn an_idempotency_key_is_bounded() {
        let send = |key: &str| {
            let p: SendParams =
                serde_json::from_value(json!({"to": "c", "message": "m", "idempotencyKey": key}))
                    .unwrap();
            p.outbound("echo").map(|_| ())
        };
        assert!(send(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)).is_ok());
        let e = send(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1)).unwrap_err();
        assert!(
            e.message
                .contains("idempotencyKey is 513 bytes long; at most 512"),
            "{e:?}"
        );
        let mut f = cli_frame();
        f["idempotencyKey"] = json!("k".repeat(4096));
        let p: MessageActionParams = serde_json::from_value(f).unwrap();
        let e = p.check().unwrap_err();
        assert!(
            e.message
                .starts_with("message.action: idempotencyKey is 4096 bytes"),
            "{e:?}"
        );
    }

    #[test]
    fn media_fields_become_attachments() {
        let p: SendParams = serde_json::from_value(json!({"to": "c", "idempotencyKey": "k",
            "mediaUrls": ["https://x.example/a.JPG?size=2", "https://x.example/b.ogg"],
            "buffer": "AAEC/w==", "filename": "notes.txt"}))
        .unwrap();
        let m = p.outbound("echo").unwrap();
        let kinds: Vec<_> = m.attachments.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [
                AttachmentKind::Image,
                AttachmentKind::Audio,
                AttachmentKind::Document
            ]
        );
        assert_eq!(
            m.attachments[2].source,
            AttachmentSource::Bytes(vec![0, 1, 2, 255])
        );
        assert_eq!(m.attachments[2].file_name.as_deref(), Some("notes.txt"));
        let p: SendParams = serde_json::from_value(json!({"to": "c", "idempotencyKey": "k",
            "mediaUrl": "https://x.example/v.ogg", "asVoice": true, "contentType": "audio/ogg"}))
        .unwrap();
        let m = p.outbound("echo").unwrap();
        assert_eq!(m.attachments[0].kind, AttachmentKind::Voice);
        assert_eq!(m.attachments[0].mime_type.as_deref(), Some("audio/ogg"));
    }

    #[test]
    fn send_refuses_what_no_channel_can_carry() {
        let base = json!({"to": "c", "message": "m", "idempotencyKey": "k"});
        let ok: SendParams = serde_json::from_value(base.clone()).unwrap();
        assert_eq!(ok.outbound("echo").unwrap().text, "m");
        for (k, v) in [
            ("mediaUrl", json!("file:///etc/passwd")),
            ("buffer", json!("not base64!")),
            ("asVoice", json!(true)),
            ("parseMode", json!("HTML")),
            ("silent", json!(true)),
        ] {
            let mut f = base.clone();
            f[k] = v;
            let p: SendParams = serde_json::from_value(f).unwrap();
            let e = p.outbound("echo").unwrap_err();
            assert!(e.message.contains(&format!("`{k}`")), "{}", e.message);
        }
        let mut f = base.clone();
        f["silent"] = json!(false);
        f["agentId"] = json!("main");
        let p: SendParams = serde_json::from_value(f).unwrap();
        assert!(p.outbound("echo").is_ok());
    }
}
