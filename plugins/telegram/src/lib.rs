//! The Telegram channel (Bot API).
//!
//! `validate` calls `getMe`. In `polling` mode (the default) `run` long-polls
//! `getUpdates` from the offset stored in the KV store and advances it only
//! after `deliver` succeeded, so a crash or reload neither loses nor repeats an
//! update. In `webhook` mode `run` calls `setWebhook` with a secret token and
//! `handle_webhook` checks `X-Telegram-Bot-Api-Secret-Token`. `send` calls
//! `sendMessage`, splitting text longer than 4096 characters at line or word
//! boundaries; attachments go with `sendPhoto`, `sendDocument`, … or
//! `sendMediaGroup`, by URL or by upload (`media`). `act` reacts, edits and
//! deletes. Received photos, documents, voice notes, … arrive as attachment
//! metadata (their caption as the text).

mod media;
mod split;

use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_sdk::wstd;
use switchboard_sdk::wstd::http::{Body, Request};
use switchboard_sdk::{
    export_channel, Account, AccountState, Capabilities, Channel, ChannelError, Delivery,
    HttpRequest, HttpResponse, InboundMessage, MessageAction, OutboundMessage, PluginInfo,
};

pub const MAX_MESSAGE_CHARS: usize = 4096;

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The bot token from @BotFather.
    token: String,
    /// Bot API server (for tests and self-hosted servers).
    #[serde(default = "default_api_base")]
    api_base: String,
    /// `polling` (default) or `webhook`.
    #[serde(default = "default_mode")]
    mode: String,
    /// Long-polling timeout for getUpdates, seconds.
    #[serde(default = "default_poll_timeout")]
    poll_timeout_secs: u64,
    /// webhook mode: the public URL Telegram should POST to
    /// (`https://<gateway>/hooks/<channel>/<account>`).
    webhook_url: Option<String>,
    /// webhook mode: the secret Telegram echoes in X-Telegram-Bot-Api-Secret-Token.
    webhook_secret: Option<String>,
}

fn default_api_base() -> String {
    "https://api.telegram.org".into()
}
fn default_mode() -> String {
    "polling".into()
}
fn default_poll_timeout() -> u64 {
    25
}

/// Calls `method` with a JSON body; maps Bot API errors onto channel errors.
async fn call(
    s: &Settings,
    method: &str,
    params: Value,
    timeout_secs: u64,
) -> Result<Value, ChannelError> {
    let body = params.to_string().into_bytes();
    post(s, method, "application/json".into(), body, timeout_secs).await
}

/// Calls `method` with `params` and uploads `files` (multipart) when
/// there are any.
async fn call_with_files(s: &Settings, c: media::Call) -> Result<Value, ChannelError> {
    if c.files.is_empty() {
        return call(s, c.method, c.params, 0).await;
    }
    let (content_type, body) = media::multipart(&c.params, &c.files);
    post(s, c.method, content_type, body, 0).await
}

async fn post(
    s: &Settings,
    method: &str,
    content_type: String,
    body: Vec<u8>,
    timeout_secs: u64,
) -> Result<Value, ChannelError> {
    let url = format!(
        "{}/bot{}/{method}",
        s.api_base.trim_end_matches('/'),
        s.token
    );
    let shown = format!("{}/bot<token>/{method}", s.api_base.trim_end_matches('/'));
    let req = Request::post(&url)
        .header("content-type", content_type)
        .body(Body::from(body))
        .map_err(|e| ChannelError::InvalidConfig(format!("api_base: {e}")))?;
    // Long polls answer after up to `timeout_secs`.
    let timeout = wstd::time::Duration::from_secs(timeout_secs + 10);
    let resp = switchboard_sdk::http::send_text(req, &shown, timeout).await?;
    let (status, text) = (resp.status, resp.text);
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let desc = v["description"]
        .as_str()
        .unwrap_or(text.as_str())
        .to_string();
    match status {
        200..=299 if v["ok"] == true => Ok(v["result"].clone()),
        401 | 404 if method == "getMe" || status == 401 => Err(ChannelError::Unauthorized(
            format!("{shown}: {desc} (check the bot token)"),
        )),
        429 => Err(ChannelError::RateLimited(
            v["parameters"]["retry_after"].as_u64().unwrap_or(1) * 1000,
        )),
        400 if desc.contains("chat not found") => Err(ChannelError::NotFound(desc)),
        500..=599 => Err(ChannelError::Transient(format!(
            "{shown}: HTTP {status}: {desc}"
        ))),
        _ => Err(ChannelError::Fatal(format!(
            "{shown}: HTTP {status}: {desc}"
        ))),
    }
}

/// A Bot API id (a JSON number, or a string) as text.
fn id_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A message or thread id the caller gave, which Telegram wants as a number.
fn numeric_id(field: &str, v: &str) -> Result<i64, ChannelError> {
    v.trim().parse().map_err(|_| {
        ChannelError::InvalidConfig(format!(
            "{field} `{v}` is not a Telegram id (Telegram ids are integers)"
        ))
    })
}

/// The inbound message of an update, if it carries text or media.
fn to_inbound(account: &str, update: &Value) -> Option<InboundMessage> {
    let m = update
        .get("message")
        .or_else(|| update.get("edited_message"))?;
    let attachments = media::inbound(m);
    let text = match (m["text"].as_str(), m["caption"].as_str()) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) if !attachments.is_empty() => "",
        _ => return None,
    };
    let from = &m["from"];
    let name = [from["first_name"].as_str(), from["last_name"].as_str()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Some(InboundMessage {
        account_id: account.to_string(),
        chat_id: id_str(&m["chat"]["id"])?,
        sender_id: id_str(&from["id"]).unwrap_or_default(),
        sender_name: if name.is_empty() {
            from["username"].as_str().map(str::to_string)
        } else {
            Some(name)
        },
        message_id: id_str(&m["message_id"])?,
        text: text.to_string(),
        timestamp_ms: m["date"].as_u64().unwrap_or(0) * 1000,
        thread_id: m["message_thread_id"].as_i64().map(|t| t.to_string()),
        reply_to_id: m["reply_to_message"]["message_id"]
            .as_i64()
            .map(|t| t.to_string()),
        raw: Some(update.to_string()),
        attachments,
    })
}

fn offset_key(account: &str) -> String {
    format!("offset:{account}")
}

struct Telegram;

impl Channel for Telegram {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "telegram".into(),
            name: "Telegram".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Telegram Bot API: long polling or webhook".into(),
            network: vec!["api.telegram.org:443".into()],
            capabilities: Capabilities::MEDIA
                | Capabilities::REACTIONS
                | Capabilities::EDIT
                | Capabilities::DELETE
                | Capabilities::THREADS,
        }
    }

    fn validate(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        if s.mode != "polling" && s.mode != "webhook" {
            return Err(ChannelError::InvalidConfig(format!(
                "account `{}`: mode must be `polling` or `webhook`, not `{}`",
                account.id, s.mode
            )));
        }
        if s.mode == "webhook" && (s.webhook_url.is_none() || s.webhook_secret.is_none()) {
            return Err(ChannelError::InvalidConfig(format!(
                "account `{}`: webhook mode needs webhook_url and webhook_secret",
                account.id
            )));
        }
        if let Some(secret) = &s.webhook_secret {
            let ok_chars = secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if secret.is_empty() || secret.len() > 256 || !ok_chars {
                return Err(ChannelError::InvalidConfig(format!(
                    "account `{}`: webhook_secret must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)",
                    account.id
                )));
            }
        }
        wstd::runtime::block_on(call(&s, "getMe", json!({}), 0)).map(|_| ())
    }

    fn run(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        wstd::runtime::block_on(async {
            if s.mode == "webhook" {
                let params = json!({
                    "url": s.webhook_url, "secret_token": s.webhook_secret,
                    "allowed_updates": ["message", "edited_message"],
                });
                call(&s, "setWebhook", params, 0).await?;
                switchboard_sdk::set_state(&account.id, AccountState::Connected, None);
                loop {
                    wstd::task::sleep(wstd::time::Duration::from_secs(3600)).await;
                }
            }
            // Polling: a webhook would make getUpdates fail.
            call(&s, "deleteWebhook", json!({}), 0).await?;
            switchboard_sdk::set_state(&account.id, AccountState::Connected, None);
            let key = offset_key(&account.id);
            loop {
                let offset: i64 = switchboard_sdk::kv::get(&key)
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let updates = call(
                    &s,
                    "getUpdates",
                    json!({"offset": offset, "timeout": s.poll_timeout_secs, "allowed_updates": ["message", "edited_message"]}),
                    s.poll_timeout_secs,
                )
                .await?;
                for u in updates.as_array().cloned().unwrap_or_default() {
                    let Some(id) = u["update_id"].as_i64() else {
                        continue;
                    };
                    if let Some(m) = to_inbound(&account.id, &u) {
                        // Not accepted: stop here; the same update comes again.
                        switchboard_sdk::deliver(m).map_err(ChannelError::Transient)?;
                    }
                    // Advance only after the gateway accepted the message.
                    switchboard_sdk::kv::set(&key, (id + 1).to_string().as_bytes());
                }
            }
        })
    }

    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        let s: Settings = account.settings()?;
        // The text rides as the first attachment's caption when it fits;
        // otherwise it goes first as messages of its own.
        let with_media = !message.attachments.is_empty();
        let as_caption = with_media && message.text.chars().count() <= media::MAX_CAPTION_CHARS;
        let parts = if as_caption || message.text.is_empty() {
            Vec::new()
        } else {
            split::split(&message.text, MAX_MESSAGE_CHARS)
        };
        wstd::runtime::block_on(async {
            let mut last = Value::Null;
            if with_media {
                let mut base = json!({"chat_id": message.to});
                if let Some(t) = &message.thread_id {
                    base["message_thread_id"] = json!(numeric_id("threadId", t)?);
                }
                if let (true, Some(r)) = (parts.is_empty(), &message.reply_to_id) {
                    base["reply_to_message_id"] = json!(numeric_id("replyToId", r)?);
                }
                let caption = as_caption.then_some(message.text.as_str());
                // The text first when it could not be the caption.
                for part in &parts {
                    let mut p = base.clone();
                    p["text"] = json!(part);
                    if let Some(r) = &message.reply_to_id {
                        p["reply_to_message_id"] = json!(numeric_id("replyToId", r)?);
                    }
                    last = call(&s, "sendMessage", p, 0).await?;
                }
                for c in media::calls(&base, &message.attachments, caption) {
                    last = call_with_files(&s, c).await?;
                }
                // A media group answers with its messages: the last one counts.
                if let Some(a) = last.as_array() {
                    last = a.last().cloned().unwrap_or(Value::Null);
                }
                return Ok(Delivery {
                    message_id: id_str(&last["message_id"]).unwrap_or_default(),
                    chat_id: id_str(&last["chat"]["id"]),
                });
            }
            for (i, part) in parts.iter().enumerate() {
                let mut p = json!({"chat_id": message.to, "text": part});
                if let Some(t) = &message.thread_id {
                    p["message_thread_id"] = json!(numeric_id("threadId", t)?);
                }
                // Only the first part replies to the original message.
                if let (0, Some(r)) = (i, &message.reply_to_id) {
                    p["reply_to_message_id"] = json!(numeric_id("replyToId", r)?);
                }
                last = call(&s, "sendMessage", p, 0).await?;
            }
            Ok(Delivery {
                message_id: id_str(&last["message_id"]).unwrap_or_default(),
                chat_id: id_str(&last["chat"]["id"]),
            })
        })
    }

    fn act(account: Account, action: MessageAction) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        let (method, params) = media::action_call(action, numeric_id)?;
        wstd::runtime::block_on(call(&s, method, params, 0)).map(|_| ())
    }

    fn handle_webhook(account: Account, req: HttpRequest) -> HttpResponse {
        let reply = |status: u16, body: Value| HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        };
        let Ok(s) = account.settings::<Settings>() else {
            return reply(500, json!({"error": "account misconfigured"}));
        };
        let Some(secret) = s.webhook_secret.as_deref().filter(|_| s.mode == "webhook") else {
            return reply(404, json!({"error": "this account is not in webhook mode"}));
        };
        let given = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-telegram-bot-api-secret-token"))
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
            return reply(
                401,
                json!({"error": "bad or missing X-Telegram-Bot-Api-Secret-Token"}),
            );
        }
        let Ok(update) = serde_json::from_slice::<Value>(&req.body) else {
            return reply(400, json!({"error": "body is not a JSON update"}));
        };
        match to_inbound(&account.id, &update) {
            None => reply(200, json!({"ignored": true})),
            Some(m) => match switchboard_sdk::deliver(m) {
                Ok(seq) => reply(200, json!({"messageSeq": seq})),
                // Non-2xx makes Telegram retry later: nothing is lost.
                Err(e) => reply(503, json!({"error": e})),
            },
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

export_channel!(Telegram);
