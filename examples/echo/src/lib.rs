//! The echo channel: `send` delivers the text back as an inbound message from
//! the same chat (its attachments as the metadata a channel would report);
//! `act` delivers a message saying what it did to which message (every
//! capability is declared, so the host's handling of each can be tested);
//! `run` reports `connected` and, when the account sets
//! `interval_secs`, delivers a heartbeat message at that interval. With
//! `burst = N`, `run` first delivers N messages back to back (ids
//! `burst-<account>-<i>`), then one more, `burst-<account>-stats`, whose
//! text gives how long each deliver took to be acknowledged (µs, p50, p99,
//! max): the message log's benchmark.

use serde::Deserialize;
use switchboard_sdk::wstd;
use switchboard_sdk::{
    export_channel, Account, AccountState, AttachmentSource, Channel, ChannelError, Delivery,
    HttpRequest, HttpResponse, InboundAttachment, InboundMessage, MessageAction,
    OutboundAttachment, OutboundMessage, PluginInfo,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Deliver a heartbeat message every this many seconds (0 = never).
    #[serde(default)]
    interval_secs: u64,
    /// The chat heartbeats come from.
    #[serde(default = "default_chat")]
    chat: String,
    /// Messages to deliver back to back when `run` starts.
    #[serde(default)]
    burst: u64,
}

fn default_chat() -> String {
    "heartbeat".into()
}

struct Echo;

/// A message id unique to this channel: `<prefix>-<n>`. Instances running
/// at once may read the same counter, so each number is claimed (atomic in
/// the host) before it is used: the gateway's log treats a repeated id in
/// one chat as a redelivery.
fn next_id(prefix: &str) -> String {
    let mut n = switchboard_sdk::kv::get("counter")
        .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0)
        + 1;
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let mut tries = 0;
    while !switchboard_sdk::kv::claim(&format!("id:{n}"), DAY_MS) {
        tries += 1;
        if tries == 64 {
            // The host cannot record claims (its disk?): unique by time.
            return format!("{prefix}-{n}-{}", now_nanos());
        }
        n += 1;
    }
    switchboard_sdk::kv::set("counter", &n.to_le_bytes());
    format!("{prefix}-{n}")
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Channel for Echo {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "echo".into(),
            name: "Echo".into(),
            // ECHO_VERSION lets the tests build a second, newer copy.
            version: option_env!("ECHO_VERSION")
                .unwrap_or(env!("CARGO_PKG_VERSION"))
                .into(),
            description: "Echoes every sent message back as an inbound message".into(),
            network: vec![],
            capabilities: switchboard_sdk::Capabilities::all(),
        }
    }

    fn validate(account: Account) -> Result<(), ChannelError> {
        account.settings::<Settings>().map(|_| ())
    }

    fn run(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        switchboard_sdk::set_state(&account.id, AccountState::Connected, None);
        let mut took = Vec::with_capacity(s.burst as usize);
        for i in 0..s.burst {
            let m = InboundMessage {
                account_id: account.id.clone(),
                chat_id: s.chat.clone(),
                sender_id: "echo".into(),
                sender_name: None,
                message_id: format!("burst-{}-{i}", account.id),
                text: i.to_string(),
                timestamp_ms: switchboard_sdk::now_ms(),
                thread_id: None,
                reply_to_id: None,
                raw: None,
                attachments: vec![],
            };
            // Retried until the gateway has it, as any channel would.
            let t = std::time::Instant::now();
            // (The sleep is made inside the runtime: `wstd::task::sleep`
            // needs its reactor when called, not only when awaited.)
            while switchboard_sdk::deliver(m.clone()).is_err() {
                wstd::runtime::block_on(async {
                    wstd::task::sleep(wstd::time::Duration::from_millis(100)).await
                });
            }
            took.push(t.elapsed().as_micros() as u64);
        }
        if !took.is_empty() {
            // How long each deliver took to be acknowledged (durable), for
            // the benchmark: one more message, `burst-<account>-stats`.
            took.sort_unstable();
            let at = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize];
            let text = format!(
                "deliver-us p50={} p99={} max={}",
                at(0.5),
                at(0.99),
                took[took.len() - 1]
            );
            let _ = switchboard_sdk::deliver(InboundMessage {
                account_id: account.id.clone(),
                chat_id: s.chat.clone(),
                sender_id: "echo".into(),
                sender_name: None,
                message_id: format!("burst-{}-stats", account.id),
                text,
                timestamp_ms: switchboard_sdk::now_ms(),
                thread_id: None,
                reply_to_id: None,
                raw: None,
                attachments: vec![],
            });
        }
        wstd::runtime::block_on(async {
            loop {
                let secs = if s.interval_secs == 0 {
                    3600
                } else {
                    s.interval_secs
                };
                wstd::task::sleep(wstd::time::Duration::from_secs(secs)).await;
                if s.interval_secs > 0 {
                    let id = next_id("hb");
                    switchboard_sdk::deliver(InboundMessage {
                        account_id: account.id.clone(),
                        chat_id: s.chat.clone(),
                        sender_id: "echo".into(),
                        sender_name: Some("Echo".into()),
                        message_id: id,
                        text: "heartbeat".into(),
                        timestamp_ms: switchboard_sdk::now_ms(),
                        thread_id: None,
                        reply_to_id: None,
                        raw: None,
                        attachments: vec![],
                    })
                    .map_err(ChannelError::Transient)?;
                }
            }
        })
    }

    fn handle_webhook(account: Account, request: HttpRequest) -> HttpResponse {
        Echo::hook(account, request)
    }

    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        let id = next_id("echo");
        switchboard_sdk::deliver(InboundMessage {
            account_id: account.id.clone(),
            chat_id: message.to.clone(),
            sender_id: message.to.clone(),
            sender_name: None,
            message_id: id.clone(),
            text: message.text,
            timestamp_ms: switchboard_sdk::now_ms(),
            thread_id: message.thread_id,
            reply_to_id: message.reply_to_id,
            raw: None,
            // Each attachment comes back as the metadata a channel reports.
            attachments: message.attachments.iter().map(echoed).collect(),
        })
        .map_err(ChannelError::Transient)?;
        Ok(Delivery {
            message_id: id,
            chat_id: Some(message.to),
        })
    }

    /// Every action comes back as a message saying what was done to which.
    fn act(account: Account, action: MessageAction) -> Result<(), ChannelError> {
        let (target, text) = match action {
            MessageAction::React(r) => (
                r.target,
                format!("{} {}", if r.remove { "unreact" } else { "react" }, r.emoji),
            ),
            MessageAction::Edit(e) => (e.target, format!("edit {}", e.text)),
            MessageAction::Delete(t) => (t, "delete".to_string()),
        };
        switchboard_sdk::deliver(InboundMessage {
            account_id: account.id,
            chat_id: target.chat_id,
            sender_id: "echo".into(),
            sender_name: None,
            message_id: next_id("act"),
            text: format!("{text} on {}", target.message_id),
            timestamp_ms: switchboard_sdk::now_ms(),
            thread_id: None,
            reply_to_id: Some(target.message_id),
            raw: None,
            attachments: vec![],
        })
        .map(|_| ())
        .map_err(ChannelError::Transient)
    }
}

/// What echo reports of an attachment it was sent.
fn echoed(a: &OutboundAttachment) -> InboundAttachment {
    let (size, url) = match &a.source {
        AttachmentSource::Url(u) => (None, Some(u.clone())),
        AttachmentSource::Bytes(b) => (Some(b.len() as u64), None),
    };
    InboundAttachment {
        kind: a.kind,
        mime_type: a.mime_type.clone(),
        file_name: a.file_name.clone(),
        size,
        file_id: None,
        url,
    }
}

/// The body `POST /hooks/echo/<account>` accepts.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Hook {
    chat_id: String,
    text: String,
}

fn json_response(status: u16, body: String) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
    }
}

impl Echo {
    fn hook(account: Account, request: HttpRequest) -> HttpResponse {
        let hook: Hook = match serde_json::from_slice(&request.body) {
            Ok(h) => h,
            Err(e) => {
                return json_response(400, serde_json::json!({"error": e.to_string()}).to_string())
            }
        };
        let id = next_id("hook");
        match switchboard_sdk::deliver(InboundMessage {
            account_id: account.id,
            chat_id: hook.chat_id,
            sender_id: "webhook".into(),
            sender_name: None,
            message_id: id.clone(),
            text: hook.text,
            timestamp_ms: switchboard_sdk::now_ms(),
            thread_id: None,
            reply_to_id: None,
            raw: None,
            attachments: vec![],
        }) {
            Ok(seq) => json_response(
                200,
                serde_json::json!({"accepted": id, "messageSeq": seq}).to_string(),
            ),
            Err(e) => json_response(503, serde_json::json!({"error": e}).to_string()),
        }
    }
}

export_channel!(Echo);
