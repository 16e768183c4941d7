//! The generic webhook channel.
//!
//! Inbound: `POST /hooks/webhook/<account>` with a JSON body
//! `{chatId, senderId, senderName?, text, messageId?, attachments?}`
//! (`attachments`: `[{kind, mimeType?, fileName?, size?, fileId?, url?}]`). When the account sets
//! `secret`, the request must carry `X-Switchboard-Timestamp: <unix seconds>`
//! within 5 minutes of now and `X-Switchboard-Signature: v1=<hex
//! HMAC-SHA256(secret, "<timestamp>.<raw body>")>` (the timestamp is signed
//! with the body, as Stripe and Slack do, so it cannot be refreshed on a
//! captured request); the signature is compared in constant time, and a
//! signature already accepted within the window is refused as a replay. The
//! answer is `200 {accepted, messageId, messageSeq}`, or `400`/`401`/`409`
//! with `{error}` saying why.
//!
//! Outbound: `send` POSTs `{accountId, to, text, threadId?, replyToId?,
//! attachments?}` (`[{kind, mimeType?, fileName?, url | base64}]`) as
//! JSON to the account's `url` (signed the same way when `secret` is set) and
//! takes the message id from the answer's `messageId` (or `id`).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_sdk::wstd;
use switchboard_sdk::wstd::http::{Body, Request};
use switchboard_sdk::{
    export_channel, Account, AccountState, AttachmentKind, AttachmentSource, Capabilities, Channel,
    ChannelError, Delivery, HttpRequest, HttpResponse, InboundAttachment, InboundMessage,
    OutboundAttachment, OutboundMessage, PluginInfo,
};

/// How far the timestamp header may be from now.
const MAX_SKEW_SECS: u64 = 300;
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
pub const TIMESTAMP_HEADER: &str = "x-switchboard-timestamp";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Where `send` POSTs messages (http or https).
    url: Option<String>,
    /// Shared secret for signatures, in and out.
    secret: Option<String>,
    /// Timeout of an outbound request, seconds.
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
}

fn default_timeout() -> u64 {
    10
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Inbound {
    chat_id: String,
    sender_id: String,
    sender_name: Option<String>,
    text: String,
    message_id: Option<String>,
    #[serde(default)]
    attachments: Vec<InboundFile>,
}

/// An attachment's metadata in an inbound body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InboundFile {
    kind: String,
    mime_type: Option<String>,
    file_name: Option<String>,
    size: Option<u64>,
    file_id: Option<String>,
    url: Option<String>,
}

/// An attachment as `send` posts it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutboundFile<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

const KINDS: &[(&str, AttachmentKind)] = &[
    ("image", AttachmentKind::Image),
    ("video", AttachmentKind::Video),
    ("audio", AttachmentKind::Audio),
    ("voice", AttachmentKind::Voice),
    ("document", AttachmentKind::Document),
    ("sticker", AttachmentKind::Sticker),
    ("animation", AttachmentKind::Animation),
    ("other", AttachmentKind::Other),
];

fn kind_name(k: AttachmentKind) -> &'static str {
    KINDS
        .iter()
        .find(|(_, x)| *x == k)
        .map_or("other", |(n, _)| n)
}

fn outbound_file(a: &OutboundAttachment) -> OutboundFile<'_> {
    use base64::Engine as _;
    let (url, base64) = match &a.source {
        AttachmentSource::Url(u) => (Some(u.as_str()), None),
        AttachmentSource::Bytes(b) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    };
    OutboundFile {
        kind: kind_name(a.kind),
        mime_type: a.mime_type.as_deref(),
        file_name: a.file_name.as_deref(),
        url,
        base64,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Outbound<'a> {
    account_id: &'a str,
    to: &'a str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<OutboundFile<'a>>,
}

fn mac(secret: &str, ts: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
pub fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, ts, body).finalize().into_bytes())
    )
}

fn verify(secret: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, ts, body).verify_slice(&sig).is_ok() // constant time
}

fn now_secs() -> u64 {
    switchboard_sdk::now_ms() / 1000
}

fn reply(status: u16, body: serde_json::Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Checks timestamp and signature; returns the signature (the replay key).
fn check_signature(secret: &str, req: &HttpRequest) -> Result<String, String> {
    let ts_text = header(req, TIMESTAMP_HEADER)
        .ok_or_else(|| format!("missing {TIMESTAMP_HEADER} header (unix seconds)"))?
        .trim();
    let ts: u64 = ts_text
        .parse()
        .map_err(|_| format!("{TIMESTAMP_HEADER} is not a number of seconds"))?;
    if now_secs().abs_diff(ts) > MAX_SKEW_SECS {
        return Err(format!(
            "stale timestamp: more than {MAX_SKEW_SECS} s from the gateway's clock"
        ));
    }
    let sig = header(req, SIGNATURE_HEADER).ok_or_else(|| {
        format!(
            "missing {SIGNATURE_HEADER} header (v1=<hex HMAC-SHA256 of \"<timestamp>.<body>\">)"
        )
    })?;
    if !sig.trim().starts_with("v1=") {
        return Err(format!(
            "{SIGNATURE_HEADER} must be v1=<hex HMAC-SHA256 of \"<timestamp>.<body>\"> (the body-only sha256= form is no longer accepted: it could be replayed)"
        ));
    }
    if !verify(secret, ts_text, &req.body, sig) {
        return Err("bad signature".into());
    }
    Ok(sig.trim().to_ascii_lowercase())
}

struct Webhook;

impl Channel for Webhook {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "webhook".into(),
            name: "Webhook".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Generic HTTP webhook channel (JSON in and out, optional HMAC-SHA256 signatures)"
                    .into(),
            // The destination is per account (`url`); grant it with
            // `[channels.webhook] network = ["host:port"]`.
            network: vec![],
            capabilities: Capabilities::MEDIA | Capabilities::THREADS,
        }
    }

    fn validate(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        if let Some(url) = &s.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ChannelError::InvalidConfig(format!(
                    "account `{}`: url must start with http:// or https://",
                    account.id
                )));
            }
        }
        if s.secret.as_deref() == Some("") {
            return Err(ChannelError::InvalidConfig(format!(
                "account `{}`: secret is empty; remove it or set a value",
                account.id
            )));
        }
        Ok(())
    }

    fn run(account: Account) -> Result<(), ChannelError> {
        let _: Settings = account.settings()?;
        // Nothing to poll: messages arrive through handle_webhook.
        switchboard_sdk::set_state(&account.id, AccountState::Connected, None);
        wstd::runtime::block_on(async {
            loop {
                wstd::task::sleep(wstd::time::Duration::from_secs(3600)).await;
            }
        })
    }

    fn handle_webhook(account: Account, req: HttpRequest) -> HttpResponse {
        let s: Settings = match account.settings() {
            Ok(s) => s,
            Err(_) => return reply(500, serde_json::json!({"error": "account misconfigured"})),
        };
        if req.method != "POST" {
            return reply(405, serde_json::json!({"error": "use POST"}));
        }
        // The key under which this request's signature is remembered.
        let mut claimed: Option<String> = None;
        if let Some(secret) = &s.secret {
            let sig = match check_signature(secret, &req) {
                Ok(sig) => sig,
                Err(e) => return reply(401, serde_json::json!({"error": e})),
            };
            // A timestamp is accepted for MAX_SKEW_SECS either side of now:
            // remember the signature for that whole span.
            let key = format!("replay:{sig}");
            if !switchboard_sdk::kv::claim(&key, 2 * MAX_SKEW_SECS * 1000) {
                return reply(
                    409,
                    serde_json::json!({"error": "replayed request: a request with this signature was already accepted; sign each new request with a fresh timestamp"}),
                );
            }
            claimed = Some(key);
        }
        // A request refused below was not accepted: its retry must be.
        let refuse = |status: u16, body: serde_json::Value| {
            if let Some(k) = &claimed {
                switchboard_sdk::kv::unclaim(k);
            }
            reply(status, body)
        };
        let m: Inbound = match serde_json::from_slice(&req.body) {
            Ok(m) => m,
            Err(e) => {
                return refuse(
                    400,
                    serde_json::json!({
                        "error": format!("body must be JSON {{chatId, senderId, senderName?, text, messageId?, attachments?}}: {e}")
                    }),
                )
            }
        };
        let mut attachments = Vec::new();
        for f in m.attachments {
            let Some(&(_, kind)) = KINDS.iter().find(|(n, _)| *n == f.kind) else {
                let names: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
                return refuse(
                    400,
                    serde_json::json!({"error": format!("attachments: kind `{}` is not one of {}", f.kind, names.join(", "))}),
                );
            };
            attachments.push(InboundAttachment {
                kind,
                mime_type: f.mime_type,
                file_name: f.file_name,
                size: f.size,
                file_id: f.file_id,
                url: f.url,
            });
        }
        // Without an id from the sender, one unique to this request: the
        // gateway's log treats a repeated id in one chat as a redelivery.
        let message_id = m.message_id.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let digest = Sha256::digest(&req.body);
            format!("wh-{nanos}-{}", hex::encode(&digest[..6]))
        });
        match switchboard_sdk::deliver(InboundMessage {
            account_id: account.id,
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            message_id: message_id.clone(),
            text: m.text,
            timestamp_ms: switchboard_sdk::now_ms(),
            thread_id: None,
            reply_to_id: None,
            raw: Some(String::from_utf8_lossy(&req.body).into_owned()),
            attachments,
        }) {
            Ok(seq) => reply(
                200,
                serde_json::json!({"accepted": true, "messageId": message_id, "messageSeq": seq}),
            ),
            Err(e) => refuse(503, serde_json::json!({"error": e})),
        }
    }

    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        let s: Settings = account.settings()?;
        let url = s.url.clone().ok_or_else(|| {
            ChannelError::InvalidConfig(format!("account `{}` has no `url` to send to", account.id))
        })?;
        let body = serde_json::to_vec(&Outbound {
            account_id: &account.id,
            to: &message.to,
            text: &message.text,
            thread_id: message.thread_id.as_deref(),
            reply_to_id: message.reply_to_id.as_deref(),
            attachments: message.attachments.iter().map(outbound_file).collect(),
        })
        .map_err(|e| ChannelError::Fatal(e.to_string()))?;
        let mut builder = Request::post(&url).header("content-type", "application/json");
        if let Some(secret) = &s.secret {
            let ts = now_secs().to_string();
            builder = builder
                .header(SIGNATURE_HEADER, sign(secret, &ts, &body))
                .header(TIMESTAMP_HEADER, ts);
        }
        let req = builder
            .body(Body::from(body))
            .map_err(|e| ChannelError::InvalidConfig(format!("url `{url}`: {e}")))?;
        wstd::runtime::block_on(async move {
            let timeout = wstd::time::Duration::from_secs(s.timeout_secs);
            let resp =
                switchboard_sdk::http::send_text(req, &format!("POST {url}"), timeout).await?;
            let (status, text) = (resp.status, resp.text);
            if status == 429 {
                return Err(ChannelError::RateLimited(1000));
            }
            if (500..=599).contains(&status) {
                return Err(ChannelError::Transient(format!(
                    "POST {url}: HTTP {status}: {text}"
                )));
            }
            if !(200..=299).contains(&status) {
                return Err(ChannelError::Fatal(format!(
                    "POST {url}: HTTP {status}: {text}"
                )));
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let id = v["messageId"]
                .as_str()
                .or(v["id"].as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    ChannelError::Fatal(format!(
                        "POST {url}: the answer has no `messageId` (or `id`): {text}"
                    ))
                })?;
            Ok(Delivery {
                message_id: id,
                chat_id: Some(message.to),
            })
        })
    }
}

export_channel!(Webhook);
