//! `switchboard call`: a minimal operator client that performs the handshake,
//! calls one method and returns its payload.
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
    let (mut ws, _) = tokio_tungstenite::connect_async(opts.url.as_str())
        .await
        .map_err(|e| CallError::Transport(format!("cannot connect to {}: {e}", opts.url)))?;
    // Wait for the challenge.
    loop {
        let v = next_json(&mut ws).await?;
        if v["type"] == "event" && v["event"] == "connect.challenge" {
            break;
        }
    }
    let mut auth = serde_json::Map::new();
    if let Some(t) = &opts.token {
        auth.insert("token".into(), json!(t));
    }
    if let Some(p) = &opts.password {
        auth.insert("password".into(), json!(p));
    }
    let connect = json!({
        "type": "req", "id": "connect", "method": "connect",
        "params": {
            "minProtocol": crate::frames::PROTOCOL_VERSION,
            "maxProtocol": crate::frames::PROTOCOL_VERSION,
            "client": {"id": "cli", "version": crate::VERSION, "platform": std::env::consts::OS, "mode": "cli"},
            "role": "operator",
            "scopes": ["operator.admin"],
            "auth": auth,
        }
    });
    ws.send(Message::text(connect.to_string()))
        .await
        .map_err(transport)?;
    await_response(&mut ws, "connect").await?;
    let req = json!({"type": "req", "id": "call", "method": opts.method, "params": opts.params});
    ws.send(Message::text(req.to_string()))
        .await
        .map_err(transport)?;
    let payload = await_response(&mut ws, "call").await?;
    let _ = ws.close(None).await;
    Ok(payload)
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

async fn await_response(ws: &mut Ws, id: &str) -> Result<Value, CallError> {
    loop {
        let v = next_json(ws).await?;
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
