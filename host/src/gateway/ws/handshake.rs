//! The handshake: `connect.challenge`, the one `connect` request read with
//! the strict pre-auth reader, its checks (protocol, rate limit, credential,
//! device proof, field sizes), and `hello-ok`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::broadcast::events;
use crate::connections::{ClientInfo, Connection};
use crate::disconnect::Disconnect;
use crate::frames::{self, ErrorShape, FrameError, RequestFrame, StateVersion, PROTOCOL_VERSION};
use crate::gateway::auth::{self, ConnectAuth, DeviceProof, SignedFields};
use crate::gateway::preauth::{self, PreauthRead};
use crate::gateway::{ConnMeta, Gateway};

// Every field of the protocol's schema is accepted (unknown ones are an
// error); some are not used by this gateway yet.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ClientParams {
    id: String,
    display_name: Option<String>,
    version: String,
    build_id: Option<String>,
    platform: String,
    device_family: Option<String>,
    model_identifier: Option<String>,
    time_zone: Option<String>,
    mode: String,
    instance_id: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConnectParams {
    min_protocol: u32,
    max_protocol: u32,
    client: ClientParams,
    #[serde(default)]
    caps: Vec<String>,
    commands: Option<Vec<String>>,
    computer_use: Option<Value>,
    worker_runs: Option<Value>,
    permissions: Option<serde_json::Map<String, Value>>,
    path_env: Option<String>,
    role: Option<String>,
    scopes: Option<Vec<String>>,
    device: Option<DeviceProof>,
    auth: Option<ConnectAuth>,
    locale: Option<String>,
    user_agent: Option<String>,
}

/// `connect.challenge`'s payload.
#[derive(Serialize)]
struct Challenge<'a> {
    nonce: &'a str,
    ts: u64,
}

/// A handshake that did not succeed: what to answer and how to close.
pub(super) struct Refusal {
    response: Option<String>,
    why: Disconnect,
    /// Counted against the remote IP's failed-auth budget.
    auth_failure: bool,
}

impl Refusal {
    fn close(why: Disconnect) -> Self {
        Self {
            response: None,
            why,
            auth_failure: false,
        }
    }
    fn answer(id: &str, err: ErrorShape, why: Disconnect) -> Self {
        Self {
            response: Some(frames::response_err(id, &err)),
            why,
            auth_failure: false,
        }
    }
    fn auth(id: &str, err: ErrorShape) -> Self {
        let why = Disconnect::Policy(err.message.clone());
        Self {
            auth_failure: true,
            ..Self::answer(id, err, why)
        }
    }
}

pub(super) struct Accepted {
    pub(super) request_id: String,
    pub(super) role: String,
    pub(super) scopes: Vec<String>,
    pub(super) device_id: Option<String>,
    pub(super) client: ClientInfo,
    pub(super) via: String,
    pub(super) credential: Option<[u8; 32]>,
}

/// The handshake of a connection just upgraded: the accepted `connect`, or
/// `None` when the client was refused (and told why) or left.
pub(super) async fn accept<S>(
    gw: &Arc<Gateway>,
    io: &mut S,
    meta: &ConnMeta,
    origin: Option<String>,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = meta.remote;
    let nonce = uuid::Uuid::new_v4().to_string();
    let challenge = frames::event_unsequenced(
        "connect.challenge",
        &Challenge {
            nonce: &nonce,
            ts: crate::now_ms(),
        },
    );
    if preauth::write_text(io, &challenge).await.is_err() {
        return None;
    }
    let (handshake_timeout_ms, exempt_loopback) = {
        let c = gw.config();
        (
            c.gateway.limits.handshake_timeout_ms,
            c.gateway.auth.exempt_loopback,
        )
    };
    // Local clients without a browser Origin are neither limited nor
    // counted; a client through a proxy is counted by its own address
    // (`forwarded`), and is local only if a trusted proxy says so.
    let peer = meta.peer;
    let rate_limited = !(exempt_loopback && peer.is_local() && origin.is_none());
    let limit_key = rate_limited.then(|| auth::LimitKey::new(peer.ip, origin.as_deref()));
    let handshake = tokio::time::timeout(
        Duration::from_millis(handshake_timeout_ms),
        handshake(gw, io, &nonce, limit_key.as_ref()),
    );
    let outcome = tokio::select! {
        r = handshake => match r {
            Ok(Ok(Some(a))) => Ok(a),
            Ok(Ok(None)) => return None, // the client left
            Ok(Err(refusal)) => Err(refusal),
            Err(_) => Err(Refusal::close(Disconnect::HandshakeTimeout)),
        },
        _ = gw.shutdown_started() => Err(Refusal::close(Disconnect::ServiceRestart)),
    };
    match outcome {
        Ok(a) => Some(a),
        Err(r) => {
            gw.metrics
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            if r.auth_failure {
                gw.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(key) = limit_key {
                    gw.limiter.record_failure(key);
                }
            }
            // An unauthenticated flood of bad handshakes must not bury the
            // log: one line per interval, with a count.
            gw.refusals.note(
                "handshake",
                &format!(
                    "from {}: close {} ({})",
                    super::super::forwarded::shown(remote, peer),
                    r.why.code(),
                    r.why.reason()
                ),
            );
            if let Some(resp) = &r.response {
                let _ = preauth::write_text(io, resp).await;
            }
            let _ = preauth::write_close(io, r.why.code(), &r.why.reason()).await;
            // Give the client a moment to read the close before the socket drops.
            let _ = tokio::time::timeout(Duration::from_millis(500), drain(io)).await;
            None
        }
    }
}

pub(super) async fn drain<S: AsyncRead + Unpin>(io: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Reads the first frame and decides. `Ok(None)`: the client went away.
pub(super) async fn handshake<S>(
    gw: &Gateway,
    io: &mut S,
    nonce: &str,
    limit_key: Option<&auth::LimitKey>,
) -> Result<Option<Accepted>, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = gw.config().gateway.limits.preauth_max_frame_bytes;
    let text = match preauth::read_message(io, max).await {
        Ok(PreauthRead::Text(t)) => t,
        Ok(PreauthRead::Closed) | Err(_) => return Ok(None),
        Ok(PreauthRead::Binary) => {
            return Err(Refusal::close(Disconnect::Policy(
                "invalid request frame".into(),
            )))
        }
        Ok(PreauthRead::TooLarge(n)) => {
            return Err(Refusal::close(Disconnect::MessageTooBig(format!(
                "frame of {n} bytes exceeds the {max}-byte limit before connect"
            ))))
        }
        Ok(PreauthRead::Protocol(why)) => {
            return Err(Refusal::close(Disconnect::ProtocolError(why.into())))
        }
    };
    gw.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
    let req = match RequestFrame::parse(&text) {
        Ok(r) => r,
        Err(FrameError::NotARequest(_)) => {
            return Err(Refusal::close(Disconnect::Policy(
                "invalid request frame".into(),
            )))
        }
        Err(FrameError::Malformed { id, message }) => {
            return Err(Refusal::answer(
                &id,
                ErrorShape::invalid(message),
                Disconnect::Policy("invalid request frame".into()),
            ))
        }
    };
    let id = req.id.into_owned();
    if req.method != "connect" {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid("invalid handshake: first request must be connect"),
            Disconnect::Policy("invalid handshake".into()),
        ));
    }
    let params: ConnectParams = match frames::parse_params(req.params) {
        Ok(p) => p,
        Err(e) => {
            return Err(Refusal::answer(
                &id,
                ErrorShape::invalid(format!(
                    "invalid connect params: {}",
                    frames::json_error(&e)
                )),
                Disconnect::Policy("invalid connect params".into()),
            ))
        }
    };
    if let Err(e) = check_fields(&params) {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid(format!("invalid connect params: {e}")),
            Disconnect::Policy("invalid connect params".into()),
        ));
    }
    if params.min_protocol > PROTOCOL_VERSION || params.max_protocol < PROTOCOL_VERSION {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid(format!(
                "protocol mismatch: this gateway speaks protocol {PROTOCOL_VERSION}, client offered {}..{}",
                params.min_protocol, params.max_protocol
            ))
            .with_details(json!({"code": "PROTOCOL_MISMATCH", "expectedProtocol": PROTOCOL_VERSION})), Disconnect::ProtocolError("protocol mismatch".into())));
    }
    if let Some(key) = limit_key {
        if let Some(retry) = gw.limiter.check(key) {
            let ip = key.ip;
            let ms = retry.as_millis().max(1) as u64;
            return Err(Refusal::answer(
                &id,
                ErrorShape::unavailable(format!(
                    "rate limited: too many failed connection attempts from {ip}; retry in {}s",
                    ms.div_ceil(1000)
                ))
                .with_details(json!({"code": "AUTH_RATE_LIMITED"}))
                .retry_after(ms),
                Disconnect::Policy("rate limited".into()),
            ));
        }
    }
    let role = params.role.clone().unwrap_or_else(|| "operator".into());
    if role != "operator" && role != "node" {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid(format!("invalid role `{role}`: use operator or node")),
            Disconnect::Policy("invalid role".into()),
        ));
    }
    let connect_auth = params.auth.unwrap_or_default();
    let grant = auth::authenticate(&gw.config().gateway.auth, &connect_auth)
        .map_err(|e| Refusal::auth(&id, e))?;
    if !grant.allows_role(&role) {
        return Err(Refusal::auth(
            &id,
            ErrorShape::invalid(format!(
                "unauthorized: this credential may not connect as {role}"
            ))
            .with_details(json!({"code": "AUTH_SCOPE_MISMATCH"})),
        ));
    }
    let requested = params.scopes.clone().unwrap_or_default();
    let device_id = match &params.device {
        None => None,
        Some(proof) => {
            let token = connect_auth
                .token
                .as_deref()
                .or(connect_auth.device_token.as_deref())
                .or(connect_auth.bootstrap_token.as_deref())
                .unwrap_or("");
            let fields = SignedFields {
                client_id: &params.client.id,
                client_mode: &params.client.mode,
                role: &role,
                scopes: &requested,
                token,
                platform: &params.client.platform,
                device_family: params.client.device_family.as_deref().unwrap_or(""),
            };
            let now = crate::now_ms() as i64;
            Some(
                auth::verify_device(proof, nonce, now, &fields)
                    .map_err(|e| Refusal::auth(&id, e))?,
            )
        }
    };
    let scopes = grant.filter_scopes(&requested);
    let c = params.client;
    Ok(Some(Accepted {
        request_id: id,
        role,
        scopes,
        device_id,
        client: ClientInfo {
            id: c.id,
            display_name: c.display_name,
            version: c.version,
            platform: c.platform,
            device_family: c.device_family,
            model_identifier: c.model_identifier,
            mode: c.mode,
            instance_id: c.instance_id,
        },
        via: grant.via,
        credential: grant.secret,
    }))
}

/// Longest string accepted in `connect.client` fields, `role` and each scope.
pub const MAX_FIELD_BYTES: usize = 256;
/// Most entries accepted in `scopes`, `caps` and `commands`.
pub const MAX_LIST_ENTRIES: usize = 64;

/// Bounds the fields a connection keeps for its life (and shows in
/// presence to every operator): a display name of 60,000 characters is
/// not a display name, and one with an escape sequence or a line break
/// in it is a way to redraw an operator's terminal or forge a log line.
pub(super) fn check_fields(p: &ConnectParams) -> Result<(), String> {
    let c = &p.client;
    let fields: [(&str, Option<&str>); 10] = [
        ("client.id", Some(&c.id)),
        ("client.displayName", c.display_name.as_deref()),
        ("client.version", Some(&c.version)),
        ("client.buildId", c.build_id.as_deref()),
        ("client.platform", Some(&c.platform)),
        ("client.deviceFamily", c.device_family.as_deref()),
        ("client.modelIdentifier", c.model_identifier.as_deref()),
        ("client.mode", Some(&c.mode)),
        ("client.instanceId", c.instance_id.as_deref()),
        ("role", p.role.as_deref()),
    ];
    for (name, v) in fields {
        if let Some(v) = v {
            check_field(name, v)?;
        }
    }
    let lists: [(&str, Option<&Vec<String>>); 3] = [
        ("scopes", p.scopes.as_ref()),
        ("caps", Some(&p.caps)),
        ("commands", p.commands.as_ref()),
    ];
    for (name, list) in lists {
        let Some(list) = list else { continue };
        if list.len() > MAX_LIST_ENTRIES {
            return Err(format!(
                "{name} has {} entries; at most {MAX_LIST_ENTRIES} are accepted",
                list.len()
            ));
        }
        for v in list {
            check_field(name, v).map_err(|e| format!("an entry of {e}"))?;
        }
    }
    Ok(())
}

/// One field of `connect`: at most [`MAX_FIELD_BYTES`], and no control
/// character (C0, DEL, C1).
fn check_field(name: &str, v: &str) -> Result<(), String> {
    if v.len() > MAX_FIELD_BYTES {
        return Err(format!(
            "{name} is {} bytes long; at most {MAX_FIELD_BYTES} are accepted",
            v.len()
        ));
    }
    match v.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(format!(
            "{name} holds a control character (U+{:04X} at byte {at}); the client's names are shown to \
             operators and written to the log, and may hold none",
            c as u32
        )),
        None => Ok(()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HelloOk<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    protocol: u32,
    server: Server<'a>,
    features: &'a RawValue,
    snapshot: Snapshot<'a>,
    auth: AuthOut<'a>,
    policy: Policy,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Server<'a> {
    version: &'static str,
    conn_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot<'a> {
    presence: &'a RawValue,
    health: &'a RawValue,
    state_version: StateVersion,
    uptime_ms: u64,
}

#[derive(Serialize)]
struct AuthOut<'a> {
    role: &'a str,
    scopes: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Policy {
    max_payload: usize,
    max_buffered_bytes: usize,
    tick_interval_ms: u64,
}

/// `features` of hello-ok: the same for every connection, serialised once.
fn features() -> &'static RawValue {
    static FEATURES: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    FEATURES.get_or_init(|| {
        let v = json!({
            "methods": crate::gateway::methods::names(),
            "events": events::ALL,
        });
        serde_json::value::to_raw_value(&v)
            .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("{} is JSON"))
    })
}

/// The `hello-ok` response frame. Presence and health are the shared
/// serialisations of the current state (built once per change, not per
/// connection); only the connection id, auth and uptime are this
/// connection's own.
pub(super) fn hello_ok_frame(gw: &Gateway, request_id: &str, conn: &Connection) -> String {
    let config = gw.config();
    let limits = &config.gateway.limits;
    // State version first: the lists read after it are at least that new.
    let state_version = gw.broadcaster.state_version();
    let presence = gw.presence.list();
    let health = gw.health.shared();
    frames::response_ok(
        request_id,
        &HelloOk {
            kind: "hello-ok",
            protocol: PROTOCOL_VERSION,
            server: Server {
                version: crate::VERSION,
                conn_id: &conn.who.id,
            },
            features: features(),
            snapshot: Snapshot {
                presence: &presence,
                health: &health,
                state_version,
                uptime_ms: gw.uptime_ms(),
            },
            auth: AuthOut {
                role: &conn.who.role,
                scopes: &conn.who.scopes,
            },
            policy: Policy {
                max_payload: limits.max_payload_bytes,
                max_buffered_bytes: limits.max_buffered_bytes,
                tick_interval_ms: config.gateway.tick_interval_ms,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `connect` as OpenClaw's client library sends it, with a token.
    const CONNECT: &str = r#"{"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"openclaw-control-ui","displayName":"dash","version":"2026.11.2","platform":"linux","mode":"ui","instanceId":"b5e1"},"role":"operator","scopes":["operator.read"],"caps":[],"auth":{"token":"s3cret"},"locale":"en-GB","userAgent":"openclaw"}}"#;

    /// The handshake's `connect` goes from the frame's text into
    /// `ConnectParams` with one allocation per string or list it keeps: a
    /// `Value` tree between them (one node and one key per field) fails this.
    #[test]
    fn connect_params_are_parsed_without_a_value_tree() {
        let (n, params) = crate::test_alloc::allocations(|| {
            let req = RequestFrame::parse(CONNECT).ok()?;
            frames::parse_params::<ConnectParams>(req.params).ok()
        });
        let p = params.expect("the connect frame parses");
        assert_eq!(p.client.instance_id.as_deref(), Some("b5e1"));
        assert_eq!(p.auth.and_then(|a| a.token).as_deref(), Some("s3cret"));
        // Kept: client id, displayName, version, platform, mode, instanceId;
        // role; the scopes list and its one scope; the token; locale;
        // userAgent: 12. `caps` is empty and allocates nothing. One more is
        // the parser's: skipping nested params to hold them raw, it keeps
        // a stack of the brackets it is in. (Through a `Value`: 33.)
        assert!(n <= 13, "connect's params took {n} allocations");
    }
}
