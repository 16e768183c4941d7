//! Protocol frames (`req`, `res`, `event`) and the error shape.
//!
//! Parsing is strict: unknown fields are an error, as in the protocol schema.
//! Serialisation of events is split so that the broadcaster serialises an event
//! once and each connection's writer only appends its own `seq`.
//!
//! A leaf: it imports nothing of the crate.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub const PROTOCOL_VERSION: u32 = 4;

pub mod codes {
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    pub const NOT_PAIRED: &str = "NOT_PAIRED";
}

/// A client request, borrowed from its frame's text: no `Value` tree is
/// built for it; its `params` stay raw JSON until the method's handler
/// parses them into its own typed struct. Unknown fields are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// `None` when absent or `null`.
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
    /// Accepted (the schema has it); not used yet.
    #[allow(dead_code)]
    #[serde(default, borrow)]
    traceparent: Option<Cow<'a, str>>,
}

/// A JSON error without its position: params are parsed on their own, so
/// serde_json's "at line 1 column N" would count from the start of the
/// params, not of the frame the client sent, and mislead.
pub fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&at) {
        Some(message) => message.to_string(),
        None => full,
    }
}

/// Params parsed into a method's typed struct (`null` when absent).
pub fn parse_params<'a, T: Deserialize<'a>>(
    params: Option<&'a RawValue>,
) -> Result<T, serde_json::Error> {
    serde_json::from_str(params.map_or("null", RawValue::get))
}

/// Why a text frame is not a usable request.
#[derive(Debug)]
pub enum FrameError {
    /// Not JSON, not an object, or not of type `req`: nothing to answer to.
    NotARequest(String),
    /// A `req` with an id but otherwise malformed: answer with INVALID_REQUEST.
    Malformed { id: String, message: String },
}

impl<'a> RequestFrame<'a> {
    pub fn parse(text: &'a str) -> Result<RequestFrame<'a>, FrameError> {
        match serde_json::from_str::<RequestFrame>(text) {
            Ok(r) if r.kind == "req" && !r.id.is_empty() && !r.method.is_empty() => Ok(r),
            // Anything else is looked at again, to say what is wrong.
            parsed => Err(Self::explain(text, parsed.err())),
        }
    }

    /// What is wrong with a frame that is not a usable request (`error`:
    /// the typed parser's, when it failed).
    #[cold]
    fn explain(text: &str, error: Option<serde_json::Error>) -> FrameError {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return FrameError::NotARequest(format!("not JSON: {e}")),
        };
        let Some(obj) = value.as_object() else {
            return FrameError::NotARequest("frame is not a JSON object".into());
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("req") => {}
            Some(other) => {
                return FrameError::NotARequest(format!(
                    "frame type `{other}` cannot be sent by a client"
                ))
            }
            None => return FrameError::NotARequest("frame has no `type`".into()),
        }
        let id = obj.get("id").and_then(Value::as_str).unwrap_or_default();
        if id.is_empty() {
            return FrameError::NotARequest("request has no `id` string".to_string());
        }
        let message = match error {
            Some(e) => format!("invalid request frame: {e}"),
            None => "invalid request frame: empty `method`".into(),
        };
        FrameError::Malformed {
            id: id.to_string(),
            message,
        }
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
pub fn event_unsequenced<P: Serialize + ?Sized>(event: &str, payload: &P) -> String {
    #[derive(Serialize)]
    struct Unsequenced<'a, P: ?Sized> {
        #[serde(rename = "type")]
        kind: &'static str,
        event: &'a str,
        payload: &'a P,
    }
    serialize(&Unsequenced {
        kind: "event",
        event,
        payload,
    })
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

    /// A request is read where it lies in the frame: parsing one allocates
    /// nothing unless a field has an escape to undo. A `Value` tree, or
    /// owned copies of the id and method, would fail this.
    #[test]
    fn a_request_is_parsed_without_allocating() {
        let text = r#"{"type":"req","id":"7f3c","method":"send","params":{"to":"42","message":"hi","idempotencyKey":"k"}}"#;
        let (n, parsed) = crate::test_alloc::allocations(|| RequestFrame::parse(text).is_ok());
        assert!(parsed);
        assert_eq!(n, 0, "parsing a request allocated {n} times");
        // The id's escape is undone in the parser's scratch buffer, then
        // copied into a string of its own.
        let text = r#"{"type":"req","id":"a\"b","method":"health"}"#;
        let (n, id) = crate::test_alloc::allocations(|| {
            RequestFrame::parse(text).map(|r| r.id.len()).unwrap_or(0)
        });
        assert_eq!((n, id), (2, 3));
    }

    #[test]
    fn params_errors_do_not_count_from_the_params() {
        let raw = RawValue::from_string(r#"[1, "x"]"#.into()).unwrap();
        let e = parse_params::<Vec<u8>>(Some(&raw)).unwrap_err();
        assert!(e.to_string().contains("line 1 column"), "{e}");
        let m = json_error(&e);
        assert!(!m.contains("column") && !m.is_empty(), "{m}");
        let e = parse_params::<Vec<u8>>(None).unwrap_err();
        assert_eq!(json_error(&e), "invalid type: null, expected a sequence");
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
        assert_eq!(ok.params.map(RawValue::get), Some(r#"{"x":[1]}"#));
        let ok =
            RequestFrame::parse(r#"{"type":"req","id":"1","method":"m","params":null}"#).unwrap();
        assert!(ok.params.is_none());
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
