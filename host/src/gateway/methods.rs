//! Control-plane methods: one table of (name, required scope, handler),
//! parameter validation, and the mapping from the channels' errors to the
//! protocol's error shapes.
//!
//! Handlers reach channels and plugins only through their managers' public
//! methods.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::send_params::{MessageActionParams, SendParams};
use super::Gateway;
use crate::channels::SendError;
use crate::connections::Connection;
use crate::frames::{self, ErrorShape};
use crate::plugins::contract::ChannelError;
use crate::plugins::CallError;
use crate::scopes::{SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE};

/// A method's result: JSON serialised where it was built, from typed
/// (borrowing) structs; no method builds a `Value` tree to answer.
pub enum Payload {
    Raw(Box<serde_json::value::RawValue>),
    /// JSON serialised once and shared (the presence list).
    Shared(Arc<serde_json::value::RawValue>),
}

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Raw(r) => r.serialize(s),
            Payload::Shared(r) => r.serialize(s),
        }
    }
}

/// What [`start`] answers with.
pub type Answer = Result<Payload, ErrorShape>;
/// A `Later` method's answer, once awaited.
pub type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// An answer serialised once from a typed (borrowing) struct: no `Value`
/// tree is built for it.
fn raw<T: serde::Serialize + ?Sized>(v: &T) -> Answer {
    serde_json::value::to_raw_value(v)
        .map(Payload::Raw)
        .map_err(|e| {
            ErrorShape::unavailable(format!(
                "internal error: the answer could not be serialised: {e}"
            ))
        })
}

/// A method answered at once.
type NowFn = fn(&Gateway, &'static str, Option<&RawValue>) -> Answer;
/// A method answered by a task: it parses its params before it returns
/// its future (a bad request is answered without a task).
type LaterFn = fn(Arc<Gateway>, &'static str, Option<&RawValue>) -> Result<Pending, ErrorShape>;

/// How a method is carried out: at once, or by a task that may wait (a
/// plugin call, a directory scan).
enum Handler {
    Now(NowFn),
    Later(LaterFn),
}

struct Method {
    name: &'static str,
    scope: &'static str,
    handler: Handler,
}

const fn now(name: &'static str, scope: &'static str, f: NowFn) -> Method {
    Method {
        name,
        scope,
        handler: Handler::Now(f),
    }
}

const fn later(name: &'static str, scope: &'static str, f: LaterFn) -> Method {
    Method {
        name,
        scope,
        handler: Handler::Later(f),
    }
}

/// Every method this gateway implements: name, required scope, handler.
const METHODS: &[Method] = &[
    now("health", SCOPE_READ, health),
    now("status", SCOPE_READ, status),
    now("system-presence", SCOPE_READ, system_presence),
    now("channels.status", SCOPE_READ, channels_status),
    now("channels.start", SCOPE_ADMIN, channels_start),
    now("channels.stop", SCOPE_ADMIN, channels_stop),
    later("send", SCOPE_WRITE, send),
    later("message.action", SCOPE_WRITE, message_action),
    now("plugins.list", SCOPE_READ, plugins_list),
    later("plugins.reload", SCOPE_ADMIN, plugins_reload),
    later("messages.history", SCOPE_READ, messages_history),
    now("config.get", SCOPE_ADMIN, config_get),
];

pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// What [`start`] did with a request.
pub enum Dispatch {
    /// Answered at once (a `Now` method, an unknown method, a missing scope).
    Done(Answer),
    /// A `Later` method: its answer, once awaited.
    Later(Pending),
}

/// Finds `method`, checks the caller's scope, and runs it: a `Now` method
/// here (the reader answers it without spawning a task), a `Later` one as
/// a future for a task.
pub fn start(
    gw: &Arc<Gateway>,
    conn: &Connection,
    method: &str,
    params: Option<&RawValue>,
) -> Dispatch {
    let Some(m) = METHODS.iter().find(|m| m.name == method) else {
        return Dispatch::Done(Err(ErrorShape::invalid(format!(
            "unknown method: {method}"
        ))));
    };
    if !conn.has_scope(m.scope) {
        return Dispatch::Done(Err(ErrorShape::missing_scope(m.scope)));
    }
    match m.handler {
        Handler::Now(f) => Dispatch::Done(f(gw, m.name, params)),
        Handler::Later(f) => match f(gw.clone(), m.name, params) {
            Ok(pending) => Dispatch::Later(pending),
            Err(e) => Dispatch::Done(Err(e)),
        },
    }
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HistoryParams {
    channel: Option<String>,
    account_id: Option<String>,
    chat_id: Option<String>,
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: Option<usize>,
}

/// `messages.history`'s page size: default and largest.
const HISTORY_LIMIT: usize = 100;
const HISTORY_MAX: usize = 1000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadParams {
    id: Option<String>,
}

/// Parses required params into the method's typed struct, straight from
/// the frame's text (absent params are an error naming the method).
fn parse_required<'a, T: Deserialize<'a>>(
    method: &str,
    params: Option<&'a RawValue>,
) -> Result<T, ErrorShape> {
    frames::parse_params(params).map_err(|e| invalid_params(method, &e))
}

/// Parses optional params (absent or `null`: the struct's default).
fn parse<'a, T: Deserialize<'a> + Default>(
    method: &str,
    params: Option<&'a RawValue>,
) -> Result<T, ErrorShape> {
    match params {
        None => Ok(T::default()),
        Some(_) => parse_required(method, params),
    }
}

fn invalid_params(method: &str, e: &serde_json::Error) -> ErrorShape {
    ErrorShape::invalid(format!(
        "invalid {method} params: {}",
        frames::json_error(e)
    ))
}

fn health(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    let _: HealthParams = parse(method, params)?;
    Ok(Payload::Raw(gw.health.snapshot_raw()))
}

fn status(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    let _: Empty = parse(method, params)?;
    let snap = gw.channels.snapshot();
    let config = gw.config();
    raw(&status_payload(gw, &snap, &config))
}

/// The presence list as serialised once per change, shared, not copied.
fn system_presence(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    let _: Empty = parse(method, params)?;
    Ok(Payload::Shared(gw.presence.list()))
}

fn channels_status(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    let p: ChannelsStatusParams = parse(method, params)?;
    let snap = gw.channels.status_snapshot();
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
    raw(&snap.status_payload(p.channel.as_deref(), crate::now_ms()))
}

fn channels_start(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    start_or_stop(gw, method, params, true)
}

fn channels_stop(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    start_or_stop(gw, method, params, false)
}

/// `channels.start`'s and `channels.stop`'s answer.
#[derive(serde::Serialize)]
struct StartedOrStopped<'a> {
    channel: &'a str,
    account: Option<crate::channels::AccountSnapshot>,
}

fn start_or_stop(gw: &Gateway, method: &str, params: Option<&RawValue>, start: bool) -> Answer {
    let p: ChannelAccountParams = parse_required(method, params)?;
    let (channel, account) = gw
        .channels
        .resolve(Some(&p.channel), p.account_id.as_deref())
        .map_err(|e| send_error(&e))?;
    if start {
        gw.channels.start(&channel, &account);
    } else {
        gw.channels.stop(&channel, &account);
    }
    raw(&StartedOrStopped {
        channel: &channel,
        account: gw.channels.account_snapshot(&channel, &account),
    })
}

fn send(
    gw: Arc<Gateway>,
    method: &'static str,
    params: Option<&RawValue>,
) -> Result<Pending, ErrorShape> {
    let p: SendParams = parse_required(method, params)?;
    Ok(Box::pin(async move {
        let (channel, account) = gw
            .channels
            .resolve(p.channel.as_deref(), p.account_id.as_deref())
            .map_err(|e| send_error(&e))?;
        let key = p.idempotency_key.clone();
        let msg = p.outbound(&channel)?;
        let receipt = gw
            .channels
            .send(&channel, &account, &key, msg)
            .await
            .map_err(|e| send_error(&e))?;
        raw(&receipt)
    }))
}

/// `message.action` (what the OpenClaw CLI's `message` commands call):
/// `send` goes the way of the `send` method (its idempotency keys kept
/// apart from `send`'s); `react`, `edit` and `delete` go to the plugin's
/// `act` when it declares the capability; anything else, or a channel
/// without the capability, is refused in OpenClaw's words.
fn message_action(
    gw: Arc<Gateway>,
    method: &'static str,
    params: Option<&RawValue>,
) -> Result<Pending, ErrorShape> {
    let p: MessageActionParams = parse_required(method, params)?;
    Ok(Box::pin(async move {
        p.check()?;
        let account = p.account();
        let (channel, account) = gw
            .channels
            .resolve(Some(&p.channel), account.as_deref())
            .map_err(|e| send_error(&e))?;
        if p.action != "send" {
            let unsupported = || {
                ErrorShape::invalid(format!(
                    "Channel {channel} does not support action {}.",
                    p.action
                ))
            };
            let Some(action) = p.act(&channel)? else {
                return Err(unsupported());
            };
            let key = format!("message.action:{}", p.idempotency_key);
            return match gw.channels.act(&channel, &account, &key, action).await {
                Ok(()) => raw(&Acted {
                    ok: true,
                    channel: &channel,
                    account_id: &account,
                    action: &p.action,
                }),
                // OpenClaw's words when the channel lacks the capability.
                Err(SendError::Unsupported { .. }) => Err(unsupported()),
                Err(e) => Err(send_error(&e)),
            };
        }
        let msg = p.send_message(&channel)?;
        let to = msg.to.clone();
        let key = format!("message.action:{}", p.idempotency_key);
        let receipt = gw
            .channels
            .send(&channel, &account, &key, msg)
            .await
            .map_err(|e| send_error(&e))?;
        raw(&ActionSent {
            ok: true,
            channel: &receipt.channel,
            account_id: &account,
            to: &to,
            message_id: &receipt.message_id,
            chat_id: &receipt.chat_id,
            run_id: &p.idempotency_key,
        })
    }))
}

/// `message.action`'s answer to `react`, `edit` or `delete`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Acted<'a> {
    ok: bool,
    channel: &'a str,
    account_id: &'a str,
    action: &'a str,
}

/// `message.action`'s answer to `send`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ActionSent<'a> {
    ok: bool,
    channel: &'a str,
    account_id: &'a str,
    to: &'a str,
    message_id: &'a str,
    chat_id: &'a str,
    run_id: &'a str,
}

/// `config.get`: the configuration in force, secrets redacted, the file
/// it came from, and why the file on disk was refused if it was.
///
/// The configuration is the one `Value` tree a method still builds: its
/// redaction walks every key at any depth, whatever the configuration's
/// shape becomes. It is an admin method, called by hand.
fn config_get(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    let _: Empty = parse(method, params)?;
    raw(&ConfigAnswer {
        path: gw.source.file().map(|p| p.display().to_string()),
        config: crate::config::redacted(&gw.config()),
        file_error: gw.health.config_error(),
    })
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigAnswer {
    path: Option<String>,
    config: Value,
    file_error: Option<String>,
}

/// `plugins.list`'s answer (and `plugins.reload`'s, with `changes`).
#[derive(serde::Serialize)]
struct PluginsAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<&'a [crate::plugins::Change]>,
    #[serde(serialize_with = "crate::config::lossy_path")]
    dir: &'a std::path::Path,
    plugins: Vec<crate::plugins::Listing>,
}

fn plugins_answer(gw: &Gateway, changes: Option<&[crate::plugins::Change]>) -> Answer {
    raw(&PluginsAnswer {
        changes,
        dir: gw.plugins.dir(),
        plugins: gw.plugins.list(|p| gw.channels.plugin_grants(p)),
    })
}

fn plugins_list(gw: &Gateway, method: &'static str, params: Option<&RawValue>) -> Answer {
    let _: Empty = parse(method, params)?;
    plugins_answer(gw, None)
}

fn plugins_reload(
    gw: Arc<Gateway>,
    method: &'static str,
    params: Option<&RawValue>,
) -> Result<Pending, ErrorShape> {
    let p: ReloadParams = parse(method, params)?;
    Ok(Box::pin(async move {
        gw.plugins.forget_failures(p.id.as_deref());
        let changes = gw.reload_plugins().await;
        plugins_answer(&gw, Some(&changes))
    }))
}

/// `messages.history`'s answer, borrowing the page's messages.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryPage<'a> {
    messages: Vec<crate::store::MessageEvent<'a>>,
    has_more: bool,
}

fn messages_history(
    gw: Arc<Gateway>,
    method: &'static str,
    params: Option<&RawValue>,
) -> Result<Pending, ErrorShape> {
    let p: HistoryParams = parse(method, params)?;
    Ok(Box::pin(async move {
        let limit = p.limit.unwrap_or(HISTORY_LIMIT);
        if limit == 0 || limit > HISTORY_MAX {
            return Err(ErrorShape::invalid(format!(
                "messages.history: limit must be 1 to {HISTORY_MAX} (got {limit})"
            )));
        }
        let q = crate::store::HistoryQuery {
            channel: p.channel,
            account: p.account_id,
            chat: p.chat_id,
            after: p.after_seq,
            before: p.before_seq,
            limit,
        };
        let page = gw
            .channels
            .history(q)
            .await
            .map_err(|e| ErrorShape::unavailable(format!("messages.history: {e}")))?;
        raw(&HistoryPage {
            messages: page.messages.iter().map(|m| m.event()).collect(),
            has_more: page.has_more,
        })
    }))
}

/// The protocol error for a failed `send` (or `channels.start`/`stop`).
pub fn send_error(e: &SendError) -> ErrorShape {
    match e {
        SendError::UnknownTarget(m) => ErrorShape::invalid(m.clone()),
        SendError::KeyReused { .. } => ErrorShape::invalid(e.to_string())
            .with_details(json!({"code": "IDEMPOTENCY_KEY_REUSED"})),
        SendError::PluginNotLoaded { .. } | SendError::Store(_) => {
            ErrorShape::unavailable(e.to_string()).retry_after(1000)
        }
        SendError::LogFull(m) => ErrorShape::unavailable(m.clone()).retry_after(5000),
        SendError::RateLimited(m) => ErrorShape::unavailable(m.clone()).retry_after(1000),
        SendError::OutcomeUnknown {
            channel, account, ..
        } => ErrorShape::invalid(e.to_string()).with_details(
            json!({"code": "SEND_OUTCOME_UNKNOWN", "channel": channel, "accountId": account}),
        ),
        SendError::Call { channel, error, .. } => call_error(channel, error),
        SendError::Unsupported { capability, .. } => ErrorShape::invalid(e.to_string())
            .with_details(json!({"code": "UNSUPPORTED", "capability": capability})),
    }
}

/// The protocol error for a channel error.
fn channel_error(channel: &str, e: &ChannelError) -> ErrorShape {
    match e {
        ChannelError::InvalidConfig(m) => {
            ErrorShape::invalid(format!("{channel}: invalid config: {m}"))
        }
        ChannelError::Unauthorized(m) => {
            ErrorShape::unavailable(format!("{channel}: unauthorized: {m}"))
        }
        ChannelError::NotFound(m) => ErrorShape::invalid(format!("{channel}: not found: {m}")),
        ChannelError::RateLimited(ms) => {
            ErrorShape::unavailable(format!("{channel}: rate limited, retry in {ms} ms"))
                .retry_after(*ms)
        }
        ChannelError::Transient(m) => {
            ErrorShape::unavailable(format!("{channel}: temporary failure: {m}")).retry_after(1000)
        }
        ChannelError::Fatal(m) => ErrorShape::unavailable(format!("{channel}: {m}")),
    }
}

/// The protocol error for a failed plugin call of `channel`.
fn call_error(channel: &str, e: &CallError) -> ErrorShape {
    match e {
        CallError::Channel(c) => channel_error(channel, c),
        CallError::NetworkDenied { destination, .. } => {
            ErrorShape::invalid(format!("channel {channel}: {e}"))
                .with_details(json!({"code": "NETWORK_DENIED", "destination": destination}))
        }
        CallError::Busy(_) => {
            ErrorShape::unavailable(format!("channel {channel}: {e}")).retry_after(1000)
        }
        CallError::Failed(_) | CallError::Unavailable(_) => {
            ErrorShape::unavailable(format!("channel {channel}: {e}"))
        }
        CallError::Interrupted(_) => ErrorShape::invalid(format!("channel {channel}: {e}"))
            .with_details(json!({"code": "SEND_OUTCOME_UNKNOWN", "channel": channel})),
    }
}

/// `status`'s answer.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    version: &'static str,
    protocol: u32,
    instance_id: &'a str,
    host: &'a str,
    started_at: u64,
    uptime_ms: u64,
    connections: StatusConnections,
    channels: StatusChannels,
    plugins: StatusPlugins<'a>,
    gateway: crate::config::Described<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusConnections {
    total: usize,
    by_role: std::collections::HashMap<String, usize>,
}

#[derive(serde::Serialize)]
struct StatusChannels {
    count: usize,
    accounts: usize,
    running: usize,
}

#[derive(serde::Serialize)]
struct StatusPlugins<'a> {
    #[serde(serialize_with = "crate::config::lossy_path")]
    dir: &'a std::path::Path,
    loaded: usize,
}

fn status_payload<'a>(
    gw: &'a Gateway,
    snap: &crate::channels::ChannelsSnapshot,
    config: &'a crate::config::Config,
) -> Status<'a> {
    let accounts: usize = snap.channels.values().map(|c| c.accounts.len()).sum();
    let running: usize = snap
        .channels
        .values()
        .flat_map(|c| c.accounts.values())
        .filter(|a| a.running)
        .count();
    Status {
        version: crate::VERSION,
        protocol: crate::frames::PROTOCOL_VERSION,
        instance_id: &gw.instance_id,
        host: &gw.hostname,
        started_at: gw.started_at_ms,
        uptime_ms: gw.uptime_ms(),
        connections: StatusConnections {
            total: gw.conns.count(),
            by_role: gw.conns.count_by_role(),
        },
        channels: StatusChannels {
            count: snap.channels.len(),
            accounts,
            running,
        },
        plugins: StatusPlugins {
            dir: gw.plugins.dir(),
            loaded: gw.plugins.loaded_count(),
        },
        gateway: {
            let mut d = crate::config::describe(config);
            // The port bound, which `port = 0` leaves to the system.
            if let Some(a) = gw.listening.get() {
                d.port = a.port();
            }
            d
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Params go from the frame's text into the method's typed struct:
    /// no `Value` tree between them, so `health`'s parse allocates nothing
    /// and `send`'s one allocation per string it keeps.
    #[test]
    fn params_are_parsed_into_typed_structs_without_a_value_tree() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let health = raw(r#"{"probe":true}"#);
        let (n, p) = crate::test_alloc::allocations(|| {
            parse::<HealthParams>("health", Some(&health)).is_ok()
        });
        assert!(p);
        assert_eq!(n, 0, "health's params took {n} allocations");
        let (n, p) = crate::test_alloc::allocations(|| parse::<Empty>("status", None).is_ok());
        assert_eq!((n, p), (0, true));
        let send = raw(
            r#"{"to":"telegram:42","message":"hello","channel":"telegram","idempotencyKey":"6f1d2c1e"}"#,
        );
        let (n, p) = crate::test_alloc::allocations(|| {
            parse_required::<SendParams>("send", Some(&send)).map(|p| p.to.len())
        });
        assert_eq!(p.ok(), Some(11));
        assert_eq!(n, 4, "send's four strings took {n} allocations");
        // Errors name the method and the field, without a position that
        // would count from the start of the params.
        let bad = raw(r#"{"to":"x","idempotencyKey":"k","colour":1}"#);
        let e = parse_required::<SendParams>("send", Some(&bad)).unwrap_err();
        assert!(
            e.message
                .starts_with("invalid send params: unknown field `colour`"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("column"), "{}", e.message);
        let e = parse_required::<SendParams>("send", None).unwrap_err();
        assert!(
            e.message
                .contains("invalid send params: invalid type: null"),
            "{}",
            e.message
        );
    }

    #[test]
    fn call_errors_map_to_protocol_errors() {
        let e = send_error(&SendError::PluginNotLoaded {
            channel: "tg".into(),
            plugin: "telegram".into(),
        });
        assert_eq!((e.code.as_str(), e.retryable), ("UNAVAILABLE", Some(true)));
        assert!(e.message.contains("no telegram.wasm"), "{}", e.message);
        let e = send_error(&SendError::UnknownTarget("unknown channel: x".into()));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("INVALID_REQUEST", "unknown channel: x")
        );

        let e = call_error("tg", &CallError::Channel(ChannelError::RateLimited(1500)));
        assert_eq!(e.code, "UNAVAILABLE");
        assert_eq!(e.retryable, Some(true));
        assert!(e.message.contains("retry in 1500 ms"), "{}", e.message);

        let e = call_error(
            "tg",
            &CallError::NetworkDenied {
                destination: "api.x:443".into(),
                how: "add \"api.x:443\" to `network` in [channels.tg] to allow it".into(),
            },
        );
        assert_eq!(e.code, "INVALID_REQUEST");
        assert_ne!(e.retryable, Some(true));
        assert_eq!(
            e.message,
            "channel tg: network access to api.x:443 was denied; add \"api.x:443\" to `network` in [channels.tg] to allow it"
        );
        assert_eq!(
            e.details.as_ref().map(|d| d["code"].clone()),
            Some(json!("NETWORK_DENIED"))
        );

        let e = call_error("tg", &CallError::Busy("plugin `t` is busy".into()));
        assert_eq!((e.code.as_str(), e.retryable), ("UNAVAILABLE", Some(true)));

        let e = call_error("tg", &CallError::Failed("plugin panicked: boom".into()));
        assert_eq!(e.message, "channel tg: plugin panicked: boom");
        assert_ne!(e.retryable, Some(true));
    }
}
