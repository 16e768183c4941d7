//! A minimal operator client: `switchboard call` (the handshake, one
//! method, its payload) and `switchboard tail` (the message history, then
//! live `message` events, resumed after a reconnect without gaps or doubles:
//! the recipe the README gives clients).
//!
//! It uses only `frames`; it shares no state with a running gateway.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct CallOptions {
    pub url: String,
    pub method: String,
    pub params: Value,
    pub token: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The gateway answered with an error.
    Gateway {
        code: String,
        message: String,
        details: Option<Value>,
    },
    /// Could not connect, the socket closed, or the call timed out.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Gateway {
                code,
                message,
                details,
            } => {
                write!(f, "{code}: {message}")?;
                if let Some(d) = details {
                    write!(f, " {d}")?;
                }
                Ok(())
            }
            CallError::Transport(m) => write!(f, "{m}"),
        }
    }
}

fn transport(e: impl std::fmt::Display) -> CallError {
    CallError::Transport(e.to_string())
}

pub async fn call(opts: CallOptions) -> Result<Value, CallError> {
    let timeout = opts.timeout;
    let url = opts.url.clone();
    tokio::time::timeout(timeout, call_inner(opts))
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Transport(format!(
                "timed out after {} ms talking to {url}",
                timeout.as_millis()
            )))
        })
}

async fn call_inner(opts: CallOptions) -> Result<Value, CallError> {
    let mut ws = connect(
        &opts.url,
        opts.token.as_deref(),
        opts.password.as_deref(),
        "operator.admin",
    )
    .await?;
    let payload = request(&mut ws, "call", &opts.method, opts.params, &mut |_| {}).await?;
    let _ = ws.close(None).await;
    Ok(payload)
}

/// The URL's scheme checked before connecting: the error says what to use.
fn check_scheme(url: &str) -> Result<(), CallError> {
    let (scheme, rest) = url
        .split_once("://")
        .map_or((String::new(), url), |(s, r)| (s.to_ascii_lowercase(), r));
    let instead = match scheme.as_str() {
        "ws" | "wss" => return Ok(()),
        "http" => format!("use ws://{rest}"),
        "https" => format!("use wss://{rest}"),
        _ => "the URL must look like ws://127.0.0.1:18789 or wss://host:port".to_string(),
    };
    Err(CallError::Transport(format!(
        "cannot connect to {url}: the gateway's URL starts with ws:// or wss:// ({instead})"
    )))
}

/// How to mend a failed connection, when it is plain from the error.
fn hint(e: &tokio_tungstenite::tungstenite::Error) -> &'static str {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(io)
            if io.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            " (is the gateway running there? start it with `switchboard serve`, or pass its address with --url)"
        }
        _ => "",
    }
}

/// Connects, answers the challenge and sends `connect` with `scope`.
async fn connect(
    url: &str,
    token: Option<&str>,
    password: Option<&str>,
    scope: &str,
) -> Result<Ws, CallError> {
    check_scheme(url)?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| CallError::Transport(format!("cannot connect to {url}: {e}{}", hint(&e))))?;
    // Wait for the challenge.
    loop {
        let v = next_json(&mut ws).await?;
        if v["type"] == "event" && v["event"] == "connect.challenge" {
            break;
        }
    }
    let mut auth = serde_json::Map::new();
    if let Some(t) = token {
        auth.insert("token".into(), json!(t));
    }
    if let Some(p) = password {
        auth.insert("password".into(), json!(p));
    }
    let connect = json!({
        "type": "req", "id": "connect", "method": "connect",
        "params": {
            "minProtocol": crate::frames::PROTOCOL_VERSION,
            "maxProtocol": crate::frames::PROTOCOL_VERSION,
            "client": {"id": "cli", "version": crate::VERSION, "platform": std::env::consts::OS, "mode": "cli"},
            "role": "operator",
            "scopes": [scope],
            "auth": auth,
        }
    });
    ws.send(Message::text(connect.to_string()))
        .await
        .map_err(transport)?;
    await_response(&mut ws, "connect", &mut |_| {}).await?;
    Ok(ws)
}

/// Sends one request and waits for its answer; events that arrive
/// meanwhile go to `events`.
async fn request(
    ws: &mut Ws,
    id: &str,
    method: &str,
    params: Value,
    events: &mut dyn FnMut(Value),
) -> Result<Value, CallError> {
    let req = json!({"type": "req", "id": id, "method": method, "params": params});
    ws.send(Message::text(req.to_string()))
        .await
        .map_err(transport)?;
    await_response(ws, id, events).await
}

pub struct TailOptions {
    pub url: String,
    pub token: Option<String>,
    pub password: Option<String>,
    /// Print every message after this `messageSeq`; `None`: the last `lines`.
    pub after: Option<u64>,
    pub lines: usize,
}

/// `switchboard tail`: prints messages (each a `message` event's payload)
/// to `print`, oldest first, then follows; reconnects by itself, resuming
/// after the last message printed. Returns only on a gateway error that a
/// retry cannot fix (an unknown method, a missing scope, bad credentials)
/// or on a URL that is not the gateway's (not ws:// or wss://).
pub async fn tail(opts: TailOptions, print: &mut dyn FnMut(&Value)) -> CallError {
    if let Err(e) = check_scheme(&opts.url) {
        return e;
    }
    let mut last = opts.after;
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = std::time::Instant::now();
        let e = tail_once(&opts, &mut last, print).await;
        if let CallError::Gateway { .. } = e {
            return e;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(250);
        }
        eprintln!(
            "tail: {}; reconnecting in {} ms (resuming after messageSeq {})",
            crate::logsink::printable(&e.to_string()),
            backoff.as_millis(),
            last.unwrap_or(0)
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn tail_once(
    opts: &TailOptions,
    last: &mut Option<u64>,
    print: &mut dyn FnMut(&Value),
) -> CallError {
    let mut ws = match connect(
        &opts.url,
        opts.token.as_deref(),
        opts.password.as_deref(),
        "operator.read",
    )
    .await
    {
        Ok(ws) => ws,
        Err(CallError::Gateway { code, message, .. }) if code == "UNAVAILABLE" => {
            return CallError::Transport(message)
        }
        Err(e) => return e,
    };
    // Live events that arrive while the history is read wait here.
    let mut live: Vec<Value> = Vec::new();
    let mut n = 0u64;
    loop {
        // Catch up: pages after the last message printed (the newest
        // `lines` the first time, without --after).
        let params = match *last {
            Some(seq) => json!({"afterSeq": seq, "limit": 1000}),
            None => json!({"limit": opts.lines.clamp(1, 1000)}),
        };
        n += 1;
        let mut keep = |v: Value| live.push(v);
        let page = match request(
            &mut ws,
            &format!("h{n}"),
            "messages.history",
            params,
            &mut keep,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => return e,
        };
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            emit(m, last, print);
        }
        if last.is_none() {
            *last = Some(0);
        }
        if page["hasMore"] == true && !messages.is_empty() {
            continue;
        }
        // Caught up: the events that came meanwhile, then live ones. A gap
        // in `messageSeq` means something was missed: read history again.
        let mut gap = false;
        for ev in live.drain(..) {
            gap |= !follow(&ev, last, print);
        }
        while !gap {
            match next_json(&mut ws).await {
                Ok(ev) => gap = !follow(&ev, last, print),
                Err(e) => return e,
            }
        }
    }
}

/// Prints a message unless it was printed already; advances `last`.
fn emit(m: &Value, last: &mut Option<u64>, print: &mut dyn FnMut(&Value)) {
    let Some(seq) = m["messageSeq"].as_u64() else {
        return;
    };
    if last.is_some_and(|l| seq <= l) {
        return;
    }
    print(m);
    *last = Some(seq);
}

/// Handles one frame while following; `false` when a `message` event shows
/// a gap (the history must be read again).
fn follow(ev: &Value, last: &mut Option<u64>, print: &mut dyn FnMut(&Value)) -> bool {
    if ev["type"] != "event" || ev["event"] != "message" {
        return true;
    }
    let p = &ev["payload"];
    let Some(seq) = p["messageSeq"].as_u64() else {
        return true;
    };
    let l = last.unwrap_or(0);
    if seq > l + 1 {
        return false;
    }
    emit(p, last, print);
    true
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Result<Value, CallError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| CallError::Transport(format!("gateway sent invalid JSON: {e}")))
            }
            Some(Ok(Message::Close(f))) => {
                return Err(CallError::Transport(match f {
                    Some(f) => format!(
                        "gateway closed the connection ({}: {})",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => "gateway closed the connection".into(),
                }))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(transport(e)),
            None => return Err(CallError::Transport("connection closed".into())),
        }
    }
}

async fn await_response(
    ws: &mut Ws,
    id: &str,
    events: &mut dyn FnMut(Value),
) -> Result<Value, CallError> {
    loop {
        let v = next_json(ws).await?;
        if v["type"] == "event" {
            events(v);
            continue;
        }
        if v["type"] != "res" || v["id"] != id {
            continue;
        }
        if v["ok"] == true {
            return Ok(v.get("payload").cloned().unwrap_or(Value::Null));
        }
        let e = &v["error"];
        return Err(CallError::Gateway {
            code: e["code"].as_str().unwrap_or("UNKNOWN").to_string(),
            message: e["message"].as_str().unwrap_or("").to_string(),
            details: e.get("details").cloned(),
        });
    }
}
