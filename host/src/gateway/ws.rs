//! One WebSocket connection: the `connect.challenge` → `connect` → `hello-ok`
//! handshake (read with the strict pre-auth reader), then a reader loop in
//! this task and a writer task that owns the sink and drains the bounded
//! queue of pre-serialised frames in batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::auth::{self, ConnectAuth, DeviceProof, SignedFields};
use super::frames::{self, ErrorShape, FrameError, RequestFrame, PROTOCOL_VERSION};
use super::preauth::{self, PreauthRead};
use super::{ConnMeta, Gateway};
use crate::broadcast::{events, Filter};
use crate::connections::{
    ClientInfo, CloseReason, ConnIdentity, Connection, EnqueueError, Outbound,
};

/// How long we wait to deliver our close frame to a client that is not reading.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long we wait for the client's answer to our close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Frames written per flush at most.
const BATCH: usize = 64;

// Every field of the protocol's schema is accepted (unknown ones are an
// error); some are not used by this gateway yet.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientParams {
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
struct ConnectParams {
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

/// A handshake that did not succeed: what to answer and how to close.
struct Refusal {
    response: Option<String>,
    code: u16,
    reason: String,
    /// Counted against the remote IP's failed-auth budget.
    auth_failure: bool,
}

impl Refusal {
    fn close(code: u16, reason: &str) -> Self {
        Self {
            response: None,
            code,
            reason: reason.into(),
            auth_failure: false,
        }
    }
    fn answer(id: &str, err: ErrorShape, code: u16, reason: &str) -> Self {
        Self {
            response: Some(frames::response_err(id, &err)),
            code,
            reason: reason.into(),
            auth_failure: false,
        }
    }
    fn auth(id: &str, err: ErrorShape) -> Self {
        let reason = err.message.clone();
        Self {
            auth_failure: true,
            ..Self::answer(id, err, 1008, &reason)
        }
    }
}

struct Accepted {
    request_id: String,
    role: String,
    scopes: Vec<String>,
    device_id: Option<String>,
    client: ClientInfo,
    via: String,
}

/// Runs a connection from the upgrade to the close.
pub async fn run<S>(gw: Arc<Gateway>, mut io: S, meta: ConnMeta, origin: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = meta.remote;
    let nonce = uuid::Uuid::new_v4().to_string();
    let challenge = frames::event_unsequenced(
        "connect.challenge",
        &json!({"nonce": nonce, "ts": crate::now_ms()}),
    );
    if preauth::write_text(&mut io, &challenge).await.is_err() {
        return;
    }
    let limits = &gw.config.gateway.limits;
    // Loopback clients without a browser Origin are neither limited nor counted.
    let rate_limited =
        !(gw.config.gateway.auth.exempt_loopback && remote.ip().is_loopback() && origin.is_none());
    let limit_key = rate_limited.then(|| auth::LimitKey::new(remote.ip(), origin.as_deref()));
    let handshake = tokio::time::timeout(
        Duration::from_millis(limits.handshake_timeout_ms),
        handshake(&gw, &mut io, &nonce, limit_key.as_ref()),
    );
    let outcome = tokio::select! {
        r = handshake => match r {
            Ok(Ok(Some(a))) => Ok(a),
            Ok(Ok(None)) => return, // the client left
            Ok(Err(refusal)) => Err(refusal),
            Err(_) => Err(Refusal::close(1008, "handshake timeout")),
        },
        _ = gw.shutdown_started() => Err(Refusal::close(1012, "service restart")),
    };
    let accepted = match outcome {
        Ok(a) => a,
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
            tracing::info!(%remote, close_code = r.code, reason = %r.reason, "handshake refused");
            if let Some(resp) = &r.response {
                let _ = preauth::write_text(&mut io, resp).await;
            }
            let _ = preauth::write_close(&mut io, r.code, &r.reason).await;
            // Give the client a moment to read the close before the socket drops.
            let _ = tokio::time::timeout(Duration::from_millis(500), drain(&mut io)).await;
            return;
        }
    };
    serve_connection(gw, io, meta, accepted).await;
}

async fn drain<S: AsyncRead + Unpin>(io: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Reads the first frame and decides. `Ok(None)`: the client went away.
async fn handshake<S>(
    gw: &Gateway,
    io: &mut S,
    nonce: &str,
    limit_key: Option<&auth::LimitKey>,
) -> Result<Option<Accepted>, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = gw.config.gateway.limits.preauth_max_frame_bytes;
    let text = match preauth::read_message(io, max).await {
        Ok(PreauthRead::Text(t)) => t,
        Ok(PreauthRead::Closed) | Err(_) => return Ok(None),
        Ok(PreauthRead::Binary) => return Err(Refusal::close(1008, "invalid request frame")),
        Ok(PreauthRead::TooLarge(n)) => {
            return Err(Refusal::close(
                1009,
                &format!("frame of {n} bytes exceeds the {max}-byte limit before connect"),
            ))
        }
        Ok(PreauthRead::Protocol(why)) => return Err(Refusal::close(1002, why)),
    };
    gw.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
    let req = match RequestFrame::parse(&text) {
        Ok(r) => r,
        Err(FrameError::NotARequest(_)) => {
            return Err(Refusal::close(1008, "invalid request frame"))
        }
        Err(FrameError::Malformed { id, message }) => {
            return Err(Refusal::answer(
                &id,
                ErrorShape::invalid(message),
                1008,
                "invalid request frame",
            ))
        }
    };
    let id = req.id.clone();
    if req.method != "connect" {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid("invalid handshake: first request must be connect"),
            1008,
            "invalid handshake",
        ));
    }
    let params: ConnectParams = match serde_json::from_value(req.params.unwrap_or(Value::Null)) {
        Ok(p) => p,
        Err(e) => {
            return Err(Refusal::answer(
                &id,
                ErrorShape::invalid(format!("invalid connect params: {e}")),
                1008,
                "invalid connect params",
            ))
        }
    };
    if let Err(e) = check_field_sizes(&params) {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid(format!("invalid connect params: {e}")),
            1008,
            "invalid connect params",
        ));
    }
    if params.min_protocol > PROTOCOL_VERSION || params.max_protocol < PROTOCOL_VERSION {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid(format!(
                "protocol mismatch: this gateway speaks protocol {PROTOCOL_VERSION}, client offered {}..{}",
                params.min_protocol, params.max_protocol
            ))
            .with_details(json!({"code": "PROTOCOL_MISMATCH", "expectedProtocol": PROTOCOL_VERSION})),
            1002,
            "protocol mismatch",
        ));
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
                1008,
                "rate limited",
            ));
        }
    }
    let role = params.role.clone().unwrap_or_else(|| "operator".into());
    if role != "operator" && role != "node" {
        return Err(Refusal::answer(
            &id,
            ErrorShape::invalid(format!("invalid role `{role}`: use operator or node")),
            1008,
            "invalid role",
        ));
    }
    let connect_auth = params.auth.unwrap_or_default();
    let grant = auth::authenticate(&gw.config.gateway.auth, &connect_auth)
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
    }))
}

/// Longest string accepted in `connect.client` fields, `role` and each scope.
pub const MAX_FIELD_BYTES: usize = 256;
/// Most entries accepted in `scopes`, `caps` and `commands`.
pub const MAX_LIST_ENTRIES: usize = 64;

/// Bounds the fields a connection keeps for its life (and shows in
/// presence to every operator): a display name of 60,000 characters is
/// not a display name.
fn check_field_sizes(p: &ConnectParams) -> Result<(), String> {
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
        if let Some(v) = v.filter(|v| v.len() > MAX_FIELD_BYTES) {
            return Err(format!(
                "{name} is {} bytes long; at most {MAX_FIELD_BYTES} are accepted",
                v.len()
            ));
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
        if let Some(v) = list.iter().find(|v| v.len() > MAX_FIELD_BYTES) {
            return Err(format!(
                "an entry of {name} is {} bytes long; at most {MAX_FIELD_BYTES} are accepted",
                v.len()
            ));
        }
    }
    Ok(())
}

async fn serve_connection<S>(gw: Arc<Gateway>, mut io: S, meta: ConnMeta, a: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &gw.config.gateway.limits;
    let conn_id = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = mpsc::channel(limits.send_queue_frames);
    let (close_tx, close_rx) = watch::channel(None);
    let identity = ConnIdentity {
        id: conn_id.clone(),
        role: a.role.clone(),
        scopes: a.scopes.clone(),
        device_id: a.device_id.clone(),
        client: a.client.clone(),
        remote_ip: meta.remote.ip(),
        connected_at_ms: crate::now_ms(),
    };
    let conn = Arc::new(
        Connection::new(identity, tx, close_tx).with_byte_limit(limits.max_buffered_bytes),
    );
    // Register before hello so the snapshot includes this client; events
    // queued meanwhile are written after hello by the writer.
    gw.conns.register(conn.clone());
    gw.broadcaster.bump_presence();
    // Built and dropped in this statement: the snapshot holds the whole
    // presence list, and a local would live as long as the connection.
    let wrote = preauth::write_text(
        &mut io,
        &frames::response_ok(&a.request_id, &hello_ok(&gw, &conn_id, &a)),
    )
    .await;
    if wrote.is_err() {
        gw.conns.unregister(&conn_id);
        return;
    }
    gw.metrics.frames_out.fetch_add(2, Ordering::Relaxed);
    tracing::info!(
        conn_id = %conn_id, client = %a.client.id, mode = %a.client.mode, role = %a.role,
        scopes = ?a.scopes, device_id = a.device_id.as_deref().unwrap_or("-"), auth = %a.via,
        remote = %meta.remote, tls = meta.tls, "connection open"
    );
    broadcast_presence(&gw);

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_buffered_bytes.max(limits.max_payload_bytes * 2))
        .max_message_size(Some(limits.max_payload_bytes))
        .max_frame_size(Some(limits.max_payload_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
    let (sink, mut stream) = ws.split();
    let mut writer = tokio::spawn(writer(
        sink,
        rx,
        close_rx.clone(),
        gw.clone(),
        conn.queued_bytes(),
    ));
    let inflight = Arc::new(Semaphore::new(limits.max_inflight_requests));
    // A request slot, taken before the next frame is read: a client at its
    // in-flight limit is not read from (TCP backpressure) until a request
    // finishes, instead of being answered with refusals it must then read.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let mut client_close: Option<u16> = None;
    let mut close_rx = close_rx;
    let mut writer_done = None;
    loop {
        tokio::select! {
            p = inflight.clone().acquire_owned(), if slot.is_none() => {
                slot = p.ok();
            }
            msg = stream.next(), if slot.is_some() => match msg {
                None => break,
                Some(Err(WsError::Capacity(e))) => {
                    let _ = conn.close_now(1009, &format!("message too big: {e}"));
                }
                Some(Err(e)) => {
                    // A protocol violation gets its close code (RFC 6455
                    // 7.4.1); a vanished socket has nobody to tell.
                    match protocol_close(&e) {
                        Some((code, reason)) => {
                            gw.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(conn_id = %conn_id, "protocol error: {e}");
                            let _ = conn.close_now(code, reason);
                        }
                        None => tracing::debug!(conn_id = %conn_id, "read error: {e}"),
                    }
                    break;
                }
                Some(Ok(Message::Text(t))) => {
                    gw.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
                    on_text(&gw, &conn, &mut slot, t.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = conn.close_now(1003, "binary frames are not supported; send JSON text frames");
                }
                Some(Ok(Message::Close(f))) => {
                    client_close = Some(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                    break;
                }
                Some(Ok(_)) => {} // ping/pong are answered by the library
            },
            r = &mut writer => {
                writer_done = Some(r.ok().flatten());
                // Complete the closing handshake: wait (bounded) for the
                // client's close or EOF. Dropping the socket first would make
                // the kernel answer the client's close with a reset, which
                // discards frames the client has received but not yet read.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                    while let Some(Ok(m)) = stream.next().await {
                        if let Message::Close(f) = m {
                            client_close = Some(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                            break;
                        }
                    }
                })
                .await;
                break;
            }
            _ = close_rx.changed() => {
                // Our side closes: keep reading until the client answers or the
                // writer gives up, so the close handshake completes.
            }
        }
    }
    // Did we ask to close (slow consumer, shutdown, bad frame) before the loop ended?
    // (A writer that finished on its own sent our close, e.g. at shutdown.)
    let we_closed = conn.is_closing() || matches!(writer_done, Some(Some(_)));
    let our_close = match writer_done {
        Some(r) => r,
        None => {
            // The client closed or the socket failed: stop the writer.
            let _ = conn.close_now(client_close.unwrap_or(1006), "");
            match tokio::time::timeout(CLOSE_GRACE, &mut writer).await {
                Ok(r) => r.ok().flatten(),
                Err(_) => {
                    writer.abort();
                    None
                }
            }
        }
    };
    gw.conns.unregister(&conn_id);
    gw.broadcaster.bump_presence();
    let code = if we_closed {
        our_close.as_ref().map(|c| c.code).unwrap_or(1006)
    } else {
        client_close.unwrap_or(1006)
    };
    tracing::info!(
        conn_id = %conn_id, client = %a.client.id, role = %a.role, close_code = code,
        by = if we_closed { "server" } else { "client" },
        reason = our_close.as_ref().map(|c| c.reason.as_str()).unwrap_or(""),
        "connection closed"
    );
    broadcast_presence(&gw);
}

/// The close code and reason for a read error that is the client's
/// protocol violation; `None` for I/O errors (the socket is gone).
fn protocol_close(e: &WsError) -> Option<(u16, &'static str)> {
    match e {
        WsError::Utf8(_) => Some((1007, "invalid UTF-8 in a text frame")),
        WsError::Protocol(p) => {
            use tokio_tungstenite::tungstenite::error::ProtocolError as P;
            match p {
                P::ResetWithoutClosingHandshake => None,
                P::UnmaskedFrameFromClient => Some((1002, "protocol error: unmasked client frame")),
                P::NonZeroReservedBits => Some((1002, "protocol error: reserved bits set")),
                _ => Some((1002, "protocol error")),
            }
        }
        _ => None,
    }
}

/// Asks [`run_presence`] for a `presence` event.
fn broadcast_presence(gw: &Gateway) {
    gw.presence_notify.notify_one();
}

/// At most one `presence` event per this interval: a burst of connects
/// and leaves becomes one event with the latest list at each end of it.
pub const PRESENCE_COALESCE: Duration = Duration::from_millis(250);

/// Broadcasts `presence` when asked, coalescing bursts. Each event carries
/// the whole list, so one per connect would cost O(n²) bytes per n
/// connects (O(n³) for a reconnect storm of n clients); the first change
/// after a quiet spell goes out at once, later ones at most every
/// [`PRESENCE_COALESCE`], always with the current list.
pub async fn run_presence(gw: std::sync::Arc<Gateway>) {
    // Operators that may read get presence (nodes do not track it).
    let filter = Filter {
        role: Some("operator".into()),
        scope: Some(auth::SCOPE_READ.into()),
        ..Filter::default()
    };
    loop {
        gw.presence_notify.notified().await;
        gw.broadcaster.broadcast(
            events::PRESENCE,
            &json!({"presence": gw.presence()}),
            &filter,
        );
        tokio::time::sleep(PRESENCE_COALESCE).await;
    }
}

fn hello_ok(gw: &Gateway, conn_id: &str, a: &Accepted) -> Value {
    let limits = &gw.config.gateway.limits;
    json!({
        "type": "hello-ok",
        "protocol": PROTOCOL_VERSION,
        "server": {"version": crate::VERSION, "connId": conn_id},
        "features": {
            "methods": super::methods::names(),
            "events": events::ALL,
        },
        "snapshot": {
            "presence": gw.presence(),
            "health": crate::health::snapshot(gw),
            "stateVersion": gw.broadcaster.state_version(),
            "uptimeMs": gw.uptime_ms(),
        },
        "auth": {"role": a.role, "scopes": a.scopes},
        "policy": {
            "maxPayload": limits.max_payload_bytes,
            "maxBufferedBytes": limits.max_buffered_bytes,
            "tickIntervalMs": gw.config.gateway.tick_interval_ms,
        },
    })
}

fn respond(gw: &Gateway, conn: &Connection, frame: String) {
    enqueue(gw, conn, Outbound::Frame(frame))
}

fn enqueue(gw: &Gateway, conn: &Connection, item: Outbound) {
    match conn.try_send(item) {
        Ok(()) => {}
        Err(EnqueueError::Full) => crate::broadcast::close_slow_consumer(&gw.metrics, conn),
        Err(EnqueueError::Closed) => {}
    }
}

/// Handles one text frame. A request takes `slot` (the in-flight permit the
/// reader acquired before reading it) into its task.
fn on_text(
    gw: &Arc<Gateway>,
    conn: &Arc<Connection>,
    slot: &mut Option<OwnedSemaphorePermit>,
    text: &str,
) {
    let req = match RequestFrame::parse(text) {
        Ok(r) => r,
        Err(FrameError::NotARequest(why)) => {
            tracing::info!(conn_id = %conn.id, "invalid frame: {why}");
            let _ = conn.close_now(1008, "invalid request frame");
            return;
        }
        Err(FrameError::Malformed { id, message }) => {
            respond(
                gw,
                conn,
                frames::response_err(&id, &ErrorShape::invalid(message)),
            );
            return;
        }
    };
    if req.method == "connect" {
        respond(
            gw,
            conn,
            frames::response_err(&req.id, &ErrorShape::invalid("already connected")),
        );
        return;
    }
    let permit = slot.take();
    let gw = gw.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        let result = super::methods::dispatch(&gw, &conn, &req.method, req.params).await;
        let frame = match result {
            Ok(payload) => frames::response_ok(&req.id, &payload),
            Err(e) => frames::response_err(&req.id, &e),
        };
        // The slot goes with the response and is freed once it is written.
        match permit {
            Some(p) => enqueue(&gw, &conn, Outbound::Reply(frame, p)),
            None => respond(&gw, &conn, frame),
        }
    });
}

/// A `presence` event carries the whole list, so a later one in the same
/// batch supersedes it: a client that lags behind a burst of connects gets
/// the latest list once instead of every intermediate one. No gap appears,
/// since `seq` is assigned as frames are written.
fn drop_superseded_presence(batch: &mut Vec<Outbound>) {
    let is_presence = |m: &Outbound| matches!(m, Outbound::Event(e) if e.event == events::PRESENCE);
    let Some(last) = batch.iter().rposition(is_presence) else {
        return;
    };
    let mut i = 0;
    batch.retain(|m| {
        let keep = i >= last || !is_presence(m);
        i += 1;
        keep
    });
}

/// Owns the sink: writes queued frames in batches (one flush per batch),
/// assigning each event this connection's next `seq`. Returns the close it sent.
async fn writer<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Outbound>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    gw: Arc<Gateway>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) -> Option<CloseReason>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let mut seq: u64 = 0;
    let reason: Option<CloseReason> = loop {
        let first = tokio::select! {
            biased;
            r = close_rx.changed() => {
                if r.is_err() { break None; }
                break close_rx.borrow().clone();
            }
            m = rx.recv() => m,
        };
        let Some(first) = first else { break None };
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let batch_bytes: usize = batch.iter().map(Outbound::size).sum();
        drop_superseded_presence(&mut batch);
        let mut close_after: Option<CloseReason> = None;
        let mut written = 0u64;
        let write = async {
            for m in batch {
                let msg = match m {
                    Outbound::Frame(s) | Outbound::Reply(s, _) => Message::text(s),
                    Outbound::Event(e) => {
                        seq += 1;
                        Message::text(e.with_seq(seq))
                    }
                    Outbound::Close(code, reason) => {
                        close_after = Some(CloseReason { code, reason });
                        break;
                    }
                };
                sink.feed(msg).await?;
                written += 1;
            }
            sink.flush().await
        };
        let res = tokio::select! {
            biased;
            r = close_rx.changed() => {
                if r.is_err() { break None; }
                break close_rx.borrow().clone();
            }
            r = write => r,
        };
        gw.metrics.frames_out.fetch_add(written, Ordering::Relaxed);
        queued.fetch_sub(batch_bytes, Ordering::AcqRel);
        if res.is_err() {
            break None;
        }
        if let Some(c) = close_after {
            break Some(c);
        }
    };
    // 1005/1006 are never sent on the wire (the client closed or vanished).
    if let Some(r) = reason.as_ref().filter(|r| r.code != 1005 && r.code != 1006) {
        let frame = CloseFrame {
            code: CloseCode::from(r.code),
            reason: r.reason.clone().into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::frames::PreparedEvent;

    fn event(name: &str, n: u64) -> Outbound {
        Outbound::Event(Arc::new(PreparedEvent::new(name, &json!({"n": n}), None)))
    }

    fn names(batch: &[Outbound]) -> Vec<String> {
        batch
            .iter()
            .map(|m| match m {
                Outbound::Event(e) => e.with_seq(0),
                Outbound::Frame(f) | Outbound::Reply(f, _) => f.clone(),
                Outbound::Close(c, _) => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn only_the_last_presence_of_a_batch_is_written() {
        let mut batch = vec![
            event(events::PRESENCE, 1),
            event(events::MESSAGE, 2),
            event(events::PRESENCE, 3),
            Outbound::Frame("res".into()),
            event(events::PRESENCE, 4),
            event(events::TICK, 5),
        ];
        drop_superseded_presence(&mut batch);
        let got = names(&batch);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].contains(r#""event":"message""#));
        assert_eq!(got[1], "res");
        assert!(
            got[2].contains(r#""presence","payload":{"n":4}"#),
            "{got:?}"
        );
        assert!(got[3].contains(r#""event":"tick""#));
        let mut none = vec![event(events::MESSAGE, 1)];
        drop_superseded_presence(&mut none);
        assert_eq!(none.len(), 1);
    }
}
