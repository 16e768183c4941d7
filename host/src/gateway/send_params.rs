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
use crate::plugins::contract::OutboundMessage;

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

/// Why a text-only channel cannot take a field (the end of the error).
const TEXT_ONLY: &str = "its plugin sends text only (contract 0.1: no media, formatting or delivery options); remove the field";

impl SendParams {
    /// The message for `channel`, or an error naming the first field it
    /// cannot honour.
    pub fn outbound(self, channel: &str) -> Result<OutboundMessage, ErrorShape> {
        if self.idempotency_key.is_empty() {
            return Err(ErrorShape::invalid(
                "send: idempotencyKey must not be empty",
            ));
        }
        if self.to.is_empty() {
            return Err(ErrorShape::invalid("send: to must not be empty"));
        }
        let set = |b: Option<bool>| b == Some(true);
        let refused = [
            ("mediaUrl", self.media_url.is_some()),
            (
                "mediaUrls",
                self.media_urls.as_ref().is_some_and(|v| !v.is_empty()),
            ),
            ("buffer", self.buffer.is_some()),
            ("filename", self.filename.is_some()),
            ("contentType", self.content_type.is_some()),
            ("asVoice", set(self.as_voice)),
            ("gifPlayback", set(self.gif_playback)),
            ("forceDocument", set(self.force_document)),
            ("silent", set(self.silent)),
            ("parseMode", self.parse_mode.is_some()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, on)| *on) {
            return Err(cannot_honour("send", field, channel));
        }
        let text = self.message.unwrap_or_default();
        if text.is_empty() {
            return Err(ErrorShape::invalid(
                "send: message is required: there is nothing else to send (media is not supported yet)",
            ));
        }
        Ok(OutboundMessage {
            to: self.to,
            text,
            thread_id: self.thread_id,
            reply_to_id: self.reply_to_id,
        })
    }
}

fn cannot_honour(method: &str, field: &str, channel: &str) -> ErrorShape {
    ErrorShape::invalid(format!(
        "{method}: channel {channel} cannot honour `{field}`: {TEXT_ONLY}"
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

/// Keys of a `send` action's `params` this gateway reads.
const ACTION_SEND_READS: &[&str] = &[
    "target",
    "to",
    "message",
    "replyTo",
    "replyToId",
    "threadId",
    "accountId",
    "channel",
    "action",
];
/// Keys that only steer the OpenClaw CLI itself (output format, logging).
const CLIENT_SIDE: &[&str] = &["json", "verbose"];
/// Keys that ask for media, formatting or a delivery option.
const MEDIA_OR_OPTIONS: &[&str] = &[
    "media",
    "mediaUrl",
    "mediaUrls",
    "path",
    "filePath",
    "buffer",
    "filename",
    "contentType",
    "asVoice",
    "gifPlayback",
    "forceDocument",
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
        Ok(())
    }

    /// The account a `send` action is for: the request's, else its params'.
    pub fn account(&self) -> Option<String> {
        self.account_id.clone().or_else(|| {
            self.params
                .get("accountId")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    /// The message of a `send` action for `channel`, or an error naming the
    /// first parameter it cannot honour.
    pub fn send_message(&self, channel: &str) -> Result<OutboundMessage, ErrorShape> {
        let p = &self.params;
        let s = |k: &str| -> Result<Option<String>, ErrorShape> {
            match p.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(other) => Err(ErrorShape::invalid(format!(
                    "message.action send: params.{k} must be a string, not {other}"
                ))),
            }
        };
        if let Some(a) = s("action")? {
            if a != "send" {
                return Err(ErrorShape::invalid(format!(
                    "message.action: params.action `{a}` contradicts action `send`"
                )));
            }
        }
        if let Some(c) = s("channel")? {
            if c != self.channel {
                return Err(ErrorShape::invalid(format!(
                    "message.action: params.channel `{c}` contradicts channel `{}`",
                    self.channel
                )));
            }
        }
        for (k, v) in p {
            if ACTION_SEND_READS.contains(&k.as_str())
                || CLIENT_SIDE.contains(&k.as_str())
                || k.starts_with("__")
                || is_unset(v)
            {
                continue;
            }
            if MEDIA_OR_OPTIONS.contains(&k.as_str()) {
                return Err(cannot_honour(
                    "message.action send",
                    &format!("params.{k}"),
                    channel,
                ));
            }
            if k == "dryRun" {
                return Err(ErrorShape::invalid(
                    "message.action send: params.dryRun is not supported: a gateway sends; a dry run is the client's to do",
                ));
            }
            return Err(ErrorShape::invalid(format!(
                "message.action send: params.{k} is not supported by this gateway; remove it"
            ))
            .with_details(
                serde_json::json!({"code": "UNSUPPORTED_FIELD", "field": format!("params.{k}")}),
            ));
        }
        // `target` is the bare target; `to` may carry the channel's prefix
        // (`telegram:4242`).
        let prefix = format!("{}:", self.channel);
        let to = match (s("target")?, s("to")?) {
            (Some(t), _) if !t.is_empty() => t,
            (_, Some(t)) if !t.is_empty() => t.strip_prefix(&prefix).unwrap_or(&t).to_string(),
            _ => {
                return Err(ErrorShape::invalid(
                    "message.action send: params.target (or params.to) is required",
                ))
            }
        };
        let text = s("message")?.unwrap_or_default();
        if text.is_empty() {
            return Err(ErrorShape::invalid(
                "message.action send: params.message is required (media is not supported yet)",
            ));
        }
        let reply_to_id = match &self.reply {
            Some(r) => Some(r.reply_to_id.clone()),
            None => s("replyTo")?.or(s("replyToId")?),
        };
        Ok(OutboundMessage {
            to,
            text,
            thread_id: s("threadId")?,
            reply_to_id,
        })
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
            ("media", json!("https://x/y.png")),
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
    fn send_refuses_what_text_cannot_carry() {
        let base = json!({"to": "c", "message": "m", "idempotencyKey": "k"});
        let ok: SendParams = serde_json::from_value(base.clone()).unwrap();
        assert_eq!(ok.outbound("echo").unwrap().text, "m");
        for (k, v) in [
            ("mediaUrl", json!("https://x/y.png")),
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
