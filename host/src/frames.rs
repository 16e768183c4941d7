//! Protocol frames (`req`, `res`, `event`) and the error shape.
//!
//! Parsing is strict: unknown fields are an error, as in the protocol schema.
//! Serialisation of events is split so that the broadcaster serialises an event
//! once and each connection's writer only appends its own `seq`.
//!
//! A leaf: it imports nothing of the crate.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PROTOCOL_VERSION: u32 = 4;

pub mod codes {
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    pub const NOT_PAIRED: &str = "NOT_PAIRED";
}

/// A client request. Unknown fields are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub method: String,
    #[serde(default)]
    pub params: Option<Value>,
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Why a text frame is not a usable request.
#[derive(Debug)]
pub enum FrameError {
    /// Not JSON, not an object, or not of type `req`: nothing to answer to.
    NotARequest(String),
    /// A `req` with an id but otherwise malformed: answer with INVALID_REQUEST.
    Malformed { id: String, message: String },
}

/// A request as it is on the wire, borrowed from the frame: the fast path
/// of [`RequestFrame::parse`] (no `Value` tree for the frame; only the
/// params, when there are some, are parsed into one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
}

impl RequestFrame {
    pub fn parse(text: &str) -> Result<RequestFrame, FrameError> {
        if let Ok(w) = serde_json::from_str::<WireRequest>(text) {
            if w.kind == "req" && !w.id.is_empty() && !w.method.is_empty() {
                let params = match w.params {
                    None => None,
                    Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
                        Ok(Value::Null) => None,
                        Ok(v) => Some(v),
                        Err(_) => None,
                    },
                };
                return Ok(RequestFrame {
                    kind: w.kind.into_owned(),
                    id: w.id.into_owned(),
                    method: w.method.into_owned(),
                    params,
                    traceparent: w.traceparent.map(|t| t.into_owned()),
                });
            }
        }
        // Anything else takes the slow path, which says what is wrong.
        Self::parse_slowly(text)
    }

    fn parse_slowly(text: &str) -> Result<RequestFrame, FrameError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| FrameError::NotARequest(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| FrameError::NotARequest("frame is not a JSON object".into()))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("req") => {}
            Some(other) => {
                return Err(FrameError::NotARequest(format!(
                    "frame type `{other}` cannot be sent by a client"
                )))
            }
            None => return Err(FrameError::NotARequest("frame has no `type`".into())),
        }
        let id = obj.get("id").and_then(Value::as_str).unwrap_or_default();
        if id.is_empty() {
            return Err(FrameError::NotARequest(
                "request has no `id` string".to_string(),
            ));
        }
        let id = id.to_string();
        let frame: RequestFrame =
            serde_json::from_value(value).map_err(|e| FrameError::Malformed {
                id: id.clone(),
                message: format!("invalid request frame: {e}"),
            })?;
        if frame.method.is_empty() {
            return Err(FrameError::Malformed {
                id,
                message: "invalid request frame: empty `method`".into(),
            });
        }
        Ok(frame)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorShape {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorShape {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
            details: None,
            retryable: None,
            retry_after_ms: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_REQUEST, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(codes::UNAVAILABLE, message)
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retryable = Some(true);
        self.retry_after_ms = Some(ms);
        self
    }
    /// `FORBIDDEN` "missing scope: X" with the details the protocol defines.
    pub fn missing_scope(scope: &str) -> Self {
        Self::new(codes::FORBIDDEN, format!("missing scope: {scope}")).with_details(
            serde_json::json!({"code": "MISSING_SCOPE", "missingScope": scope, "requiredScopes": [scope]}),
        )
    }
}

#[derive(Serialize)]
struct ResponseOut<'a, P: Serialize + ?Sized> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorShape>,
}

pub fn response_ok<P: Serialize + ?Sized>(id: &str, payload: &P) -> String {
    serialize(&ResponseOut {
        kind: "res",
        id,
        ok: true,
        payload: Some(payload),
        error: None,
    })
}

pub fn response_err(id: &str, error: &ErrorShape) -> String {
    serialize(&ResponseOut::<Value> {
        kind: "res",
        id,
        ok: false,
        payload: None,
        error: Some(error),
    })
}

/// An event frame without `seq` (e.g. `connect.challenge`).
pub fn event_unsequenced(event: &str, payload: &Value) -> String {
    serialize(&serde_json::json!({"type": "event", "event": event, "payload": payload}))
}

fn serialize<T: Serialize + ?Sized>(v: &T) -> String {
    // Serialising our own Value/String-only structures cannot fail.
    serde_json::to_string(v).unwrap_or_else(|e| {
        tracing::error!("frame serialisation failed: {e}");
        String::from("{}")
    })
}

/// An event serialised once for all its recipients: everything but the
/// closing `,"seq":N}` that each connection's writer appends.
#[derive(Debug)]
pub struct PreparedEvent {
    pub event: String,
    /// `{"type":"event","event":…,"payload":…[,"stateVersion":…]` (no closing brace).
    prefix: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StateVersion {
    pub presence: u64,
    pub health: u64,
}

impl PreparedEvent {
    pub fn new<P: Serialize + ?Sized>(
        event: &str,
        payload: &P,
        state_version: Option<StateVersion>,
    ) -> Self {
        let mut prefix = String::with_capacity(64);
        prefix.push_str(r#"{"type":"event","event":"#);
        prefix.push_str(&serialize(&event));
        prefix.push_str(r#","payload":"#);
        prefix.push_str(&serialize(payload));
        if let Some(sv) = state_version {
            prefix.push_str(r#","stateVersion":"#);
            prefix.push_str(&serialize(&sv));
        }
        Self {
            event: event.to_string(),
            prefix,
        }
    }

    /// The shared bytes: the frame without its closing `,"seq":N}`.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_bytes()
    }

    /// Appends the frame's end for one connection, `,"seq":N}`, to `out`
    /// (no allocation once `out` has room).
    pub fn push_seq_tail(out: &mut Vec<u8>, seq: u64) {
        out.extend_from_slice(br#","seq":"#);
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = seq;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[i..]);
        out.push(b'}');
    }

    /// The complete frame for one connection (the reference the writer's
    /// scatter-gather layout is tested against).
    #[cfg(test)]
    pub fn with_seq(&self, seq: u64) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 24);
        s.push_str(&self.prefix);
        s.push_str(r#","seq":"#);
        s.push_str(&seq.to_string());
        s.push('}');
        s
    }

    pub fn len(&self) -> usize {
        self.prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_event_is_valid_json_with_seq() {
        let e = PreparedEvent::new(
            "tick",
            &serde_json::json!({"ts": 5}),
            Some(StateVersion {
                presence: 1,
                health: 2,
            }),
        );
        let v: Value = serde_json::from_str(&e.with_seq(7)).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["event"], "tick");
        assert_eq!(v["payload"]["ts"], 5);
        assert_eq!(v["stateVersion"]["health"], 2);
        for seq in [0, 9, 10, 1234567890123, u64::MAX] {
            let mut out = e.prefix().to_vec();
            PreparedEvent::push_seq_tail(&mut out, seq);
            assert_eq!(out, e.with_seq(seq).as_bytes());
        }
    }

    #[test]
    fn strict_parsing() {
        assert!(matches!(
            RequestFrame::parse("nope"),
            Err(FrameError::NotARequest(_))
        ));
        assert!(matches!(
            RequestFrame::parse(r#"{"type":"event","event":"x"}"#),
            Err(FrameError::NotARequest(_))
        ));
        match RequestFrame::parse(r#"{"type":"req","id":"1","method":"health","extra":1}"#) {
            Err(FrameError::Malformed { id, message }) => {
                assert_eq!(id, "1");
                assert!(message.contains("extra"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let ok = RequestFrame::parse(r#"{"type":"req","id":"1","method":"health","params":{}}"#)
            .unwrap();
        assert_eq!(ok.method, "health");
        // Escapes in the borrowed fields, null params, and the slow path's
        // verdicts agree with the fast path's.
        let ok = RequestFrame::parse(
            r#"{"type":"req","id":"a\"b","method":"send","params":{"x":[1]},"traceparent":"t"}"#,
        )
        .unwrap();
        assert_eq!(ok.id, "a\"b");
        assert_eq!(ok.params, Some(serde_json::json!({"x": [1]})));
        let ok =
            RequestFrame::parse(r#"{"type":"req","id":"1","method":"m","params":null}"#).unwrap();
        assert_eq!(ok.params, None);
        assert!(matches!(
            RequestFrame::parse(r#"{"type":"req","id":"","method":"m"}"#),
            Err(FrameError::NotARequest(_))
        ));
        assert!(matches!(
            RequestFrame::parse(r#"{"type":"req","id":"1","method":""}"#),
            Err(FrameError::Malformed { .. })
        ));
    }
}
