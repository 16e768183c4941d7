//! Control-plane methods: the table of names and required scopes, parameter
//! validation, and dispatch.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE};
use super::frames::ErrorShape;
use super::Gateway;
use crate::connections::Connection;

/// Every method this gateway implements, with the scope it needs.
const METHODS: &[(&str, &str)] = &[
    ("health", SCOPE_READ),
    ("status", SCOPE_READ),
    ("system-presence", SCOPE_READ),
    ("channels.status", SCOPE_READ),
    ("channels.start", SCOPE_ADMIN),
    ("channels.stop", SCOPE_ADMIN),
    ("send", SCOPE_WRITE),
    ("plugins.list", SCOPE_READ),
    ("plugins.reload", SCOPE_ADMIN),
];

pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|(n, _)| *n).collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HealthParams {
    #[allow(dead_code)]
    probe: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChannelsStatusParams {
    #[allow(dead_code)]
    probe: Option<bool>,
    #[allow(dead_code)]
    timeout_ms: Option<u64>,
    channel: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChannelAccountParams {
    channel: String,
    account_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SendParams {
    to: String,
    message: String,
    idempotency_key: String,
    channel: Option<String>,
    account_id: Option<String>,
    thread_id: Option<String>,
    reply_to_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadParams {
    id: Option<String>,
}

/// Parses required params (absent params are an error naming the method).
fn parse_required<T: for<'de> Deserialize<'de>>(
    method: &str,
    params: Option<Value>,
) -> Result<T, ErrorShape> {
    serde_json::from_value(params.unwrap_or(Value::Null))
        .map_err(|e| ErrorShape::invalid(format!("invalid {method} params: {e}")))
}

fn parse<T: for<'de> Deserialize<'de> + Default>(
    method: &str,
    params: Option<Value>,
) -> Result<T, ErrorShape> {
    match params {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| ErrorShape::invalid(format!("invalid {method} params: {e}"))),
    }
}

pub async fn dispatch(
    gw: &Arc<Gateway>,
    conn: &Connection,
    method: &str,
    params: Option<Value>,
) -> Result<Value, ErrorShape> {
    let Some((_, scope)) = METHODS.iter().find(|(n, _)| *n == method) else {
        return Err(ErrorShape::invalid(format!("unknown method: {method}")));
    };
    if !conn.has_scope(scope) {
        return Err(ErrorShape::missing_scope(scope));
    }
    match method {
        "health" => {
            let _: HealthParams = parse(method, params)?;
            Ok(crate::health::snapshot(gw))
        }
        "status" => {
            let _: Empty = parse(method, params)?;
            Ok(status(gw))
        }
        "system-presence" => {
            let _: Empty = parse(method, params)?;
            Ok(Value::Array(gw.presence()))
        }
        "channels.status" => {
            let p: ChannelsStatusParams = parse(method, params)?;
            let snap = gw.channels.snapshot();
            if let Some(c) = &p.channel {
                if !snap.channels.contains_key(c) {
                    return Err(ErrorShape::invalid(format!(
                        "unknown channel: {c} (configured: {})",
                        if snap.channels.is_empty() {
                            "none".to_string()
                        } else {
                            snap.order().join(", ")
                        }
                    )));
                }
            }
            Ok(snap.status_payload(p.channel.as_deref(), crate::now_ms()))
        }
        "channels.start" | "channels.stop" => {
            let p: ChannelAccountParams = parse_required(method, params)?;
            let (channel, account) = gw
                .channels
                .resolve(Some(&p.channel), p.account_id.as_deref())?;
            if method == "channels.start" {
                gw.channels.start(&channel, &account);
            } else {
                gw.channels.stop(&channel, &account);
            }
            let snap = gw.channels.account_snapshot(&channel, &account);
            Ok(json!({"channel": channel, "account": snap}))
        }
        "send" => {
            let p: SendParams = parse_required(method, params)?;
            if p.idempotency_key.is_empty() {
                return Err(ErrorShape::invalid(
                    "send: idempotencyKey must not be empty",
                ));
            }
            let (channel, account) = gw
                .channels
                .resolve(p.channel.as_deref(), p.account_id.as_deref())?;
            let msg = crate::plugins::runtime::OutboundMessage {
                to: p.to,
                text: p.message,
                thread_id: p.thread_id,
                reply_to_id: p.reply_to_id,
            };
            gw.channels
                .send(&channel, &account, &p.idempotency_key, msg)
                .await
        }
        "plugins.list" => {
            let _: Empty = parse(method, params)?;
            Ok(
                json!({"dir": gw.plugins.dir().display().to_string(), "plugins": gw.plugins.list(|p| gw.channels.plugin_grants(p))}),
            )
        }
        "plugins.reload" => {
            let p: ReloadParams = parse(method, params)?;
            gw.plugins.forget_failures(p.id.as_deref());
            let changes = gw.reload_plugins().await;
            Ok(json!({
                "changes": changes.iter().map(|c| c.event()).collect::<Vec<_>>(),
                "plugins": gw.plugins.list(|p| gw.channels.plugin_grants(p)),
            }))
        }
        _ => Err(ErrorShape::invalid(format!("unknown method: {method}"))),
    }
}

fn status(gw: &Gateway) -> Value {
    let snap = gw.channels.snapshot();
    let accounts: usize = snap.channels.values().map(|c| c.accounts.len()).sum();
    let running: usize = snap
        .channels
        .values()
        .flat_map(|c| c.accounts.values())
        .filter(|a| a.running)
        .count();
    json!({
        "version": crate::VERSION,
        "protocol": super::frames::PROTOCOL_VERSION,
        "instanceId": gw.instance_id,
        "host": gw.hostname,
        "startedAt": gw.started_at_ms,
        "uptimeMs": gw.uptime_ms(),
        "connections": {"total": gw.conns.count(), "byRole": gw.conns.count_by_role()},
        "channels": {"count": snap.channels.len(), "accounts": accounts, "running": running},
        "plugins": {"dir": gw.plugins.dir().display().to_string(), "loaded": gw.plugins.loaded_count()},
        "gateway": crate::config::describe(&gw.config),
    })
}
