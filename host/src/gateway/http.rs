//! The HTTP router: `GET /` (WebSocket upgrade), `GET /health`, `GET /ready`,
//! `GET /metrics`.
//!
//! It hands webhook bodies to `channels` and never calls a plugin itself.

use crate::sync::MutexExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{ConnMeta, Gateway};
use crate::channels::SendError;
use crate::plugins::CallError;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ui/{asset}", get(super::ui::asset))
        .route(
            "/health",
            get(|| async { Json(json!({"ok": true, "status": "live"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        // GET too: some services check a webhook's address with a GET
        // before they post to it (Meta's `hub.challenge`); the plugin
        // answers it.
        .route(
            "/hooks/{channel}/{account}",
            axum::routing::post(hook).get(hook),
        )
        .route(
            "/hooks/{channel}/{account}/{*rest}",
            axum::routing::post(hook).get(hook),
        )
        .with_state(gw)
}

/// 503 with `Retry-After: 1`: a webhook refused for now, to be sent again.
fn busy(message: &str) -> Response {
    let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, message.into());
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `POST` (or `GET`) `/hooks/<channel>/<account>[/rest]` → the plugin's
/// `handle-webhook`.
async fn hook(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(p): axum::extract::Path<std::collections::HashMap<String, String>>,
    req: Request,
) -> Response {
    let channel = p.get("channel").cloned().unwrap_or_default();
    let account = p.get("account").cloned().unwrap_or_default();
    let path = format!("/{}", p.get("rest").cloned().unwrap_or_default());
    let (parts, body) = req.into_parts();
    if let Some(refused) = browser_refused(&gw, &parts.headers) {
        return refused;
    }
    let Some(limit) = gw.channels.webhook_body_limit(&channel) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no channel {channel} is configured"),
        );
    };
    // Refuse a declared length over the limit before reading a byte of it.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(&channel, limit);
    }
    // Bound the bodies being read (and held) at once, whoever sends them.
    let Ok(slot) = gw.webhook_bodies.clone().try_acquire_owned() else {
        gw.metrics.webhook_busy.fetch_add(1, Ordering::Relaxed);
        gw.refusals.note(
            "webhook",
            &format!(
                "{} webhook bodies already being read (gateway.limits.max_webhook_bodies)",
                gw.config().gateway.limits.max_webhook_bodies
            ),
        );
        return busy("too many webhook requests in progress; retry shortly");
    };
    // ... and one address's share of them, so that one slow peer cannot
    // take every slot from the others.
    let per_ip = gw.config().gateway.limits.max_webhook_bodies_per_ip;
    let remote = parts
        .extensions
        .get::<ConnMeta>()
        .map(|m| gw.client(m.remote.ip(), &parts.headers).ip);
    let ip_slot = match remote {
        Some(ip) => match gw.webhook_bodies_per_ip.try_take(ip, per_ip) {
            Some(s) => Some(s),
            None => {
                gw.metrics
                    .webhook_busy_per_ip
                    .fetch_add(1, Ordering::Relaxed);
                gw.refusals.note(
                    "webhook",
                    &format!(
                        "{per_ip} webhook bodies already being read from {ip} (gateway.limits.max_webhook_bodies_per_ip)"
                    ),
                );
                return busy(
                    "too many webhook requests in progress from your address; retry shortly",
                );
            }
        },
        None => None,
    };
    let timeout = std::time::Duration::from_millis(gw.config().gateway.limits.body_read_timeout_ms);
    let body = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return too_large(&channel, limit),
        Err(_) => {
            gw.metrics.body_timeouts.fetch_add(1, Ordering::Relaxed);
            gw.refusals.note(
                "webhook",
                &format!(
                    "request body not received within {} ms (gateway.limits.body_read_timeout_ms)",
                    timeout.as_millis()
                ),
            );
            let mut r = json_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} ms",
                    timeout.as_millis()
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // A large body leaves freed memory behind; give it back after the burst.
    let big = body.len() >= 64 * 1024;
    let hr = crate::plugins::contract::HttpRequest {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: Vec::from(body),
    };
    let result = gw.channels.webhook(&channel, &account, hr).await;
    drop((slot, ip_slot));
    if big {
        crate::memory::release_soon();
    }
    match result {
        Ok(r) => plugin_response(&gw, &channel, r),
        Err(e) => webhook_error(&channel, &account, e),
    }
}

/// Headers of a plugin's webhook answer past this many bytes (names and
/// values) make it a `502`.
const MAX_PLUGIN_HEADER_BYTES: usize = 64 * 1024;

/// Headers that frame the message or the connection: the gateway's, never
/// a plugin's (RFC 9110 7.6.1 and 8.6, RFC 9112 6). A plugin's
/// `Content-Length` that does not match its body, or a `Transfer-Encoding`,
/// would make the answer unreadable or the next one on the connection
/// misread.
const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// What every plugin answer carries, whatever the plugin says: it is
/// served on the gateway's own origin, the control page's, so a page a
/// plugin answers with (a hostile plugin's, or one that echoes what it was
/// sent, such as a `hub.challenge`) must not run script there, where it
/// could open an operator connection. `sandbox` gives the page an origin of
/// its own and no script; `nosniff` keeps a browser from reading a
/// `text/plain` answer as HTML. (A plugin's own `Content-Security-Policy`
/// is kept as well: a browser enforces every policy it is given.)
const PLUGIN_ANSWER_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", "sandbox"),
    ("x-content-type-options", "nosniff"),
];

/// A plugin's webhook answer as the HTTP response: its status if it is a
/// final one (200–599; a `1xx`, `101` included, would hand the connection
/// over), its headers but the framing ones, its body unless the status
/// has none (204, 205, 304), and [`PLUGIN_ANSWER_HEADERS`]. Anything else
/// is a `502` that names it.
fn plugin_response(
    gw: &Gateway,
    channel: &str,
    r: crate::plugins::contract::HttpResponse,
) -> Response {
    let bad = |why: String| {
        // Once per interval: a webhook sender could repeat it at will.
        gw.refusals.note(
            "a plugin's webhook answer",
            &format!("channel {channel}: it {why}; answered 502 instead"),
        );
        json_error(
            StatusCode::BAD_GATEWAY,
            format!("channel {channel}: the plugin's answer {why}"),
        )
    };
    let status = match StatusCode::from_u16(r.status) {
        Ok(s) if (200..=599).contains(&r.status) => s,
        _ => return bad(format!("has status {}, not one of 200–599", r.status)),
    };
    let header_bytes: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if header_bytes > MAX_PLUGIN_HEADER_BYTES {
        return bad(format!(
            "has {header_bytes} bytes of headers, more than {MAX_PLUGIN_HEADER_BYTES}"
        ));
    }
    let mut b = Response::builder().status(status);
    for (k, v) in &r.headers {
        if FRAMING_HEADERS.iter().any(|f| k.eq_ignore_ascii_case(f))
            || k.eq_ignore_ascii_case("x-content-type-options")
        {
            continue;
        }
        b = b.header(k.as_str(), v.as_str());
    }
    for (k, v) in PLUGIN_ANSWER_HEADERS {
        b = b.header(*k, *v);
    }
    let no_body = matches!(status.as_u16(), 204 | 205 | 304);
    let body = if no_body { Vec::new() } else { r.body };
    b.body(axum::body::Body::from(body))
        .unwrap_or_else(|e| bad(format!("has a header that is not valid HTTP ({e})")))
}

/// A webhook posted by a web page in a browser: `403` unless the page's
/// origin is allowed as for a WebSocket (loopback, or listed in
/// `gateway.allowed_origins`). A page can POST to any address without
/// asking (a form, `fetch` with `no-cors`); it cannot read the answer,
/// but without this it could put messages in a channel whose webhook
/// needs no secret. Webhook senders are servers and send no `Origin`
/// (nor `Sec-Fetch-Site`, which a browser sends with every request).
///
/// A page whose name was pointed at this machine (DNS rebinding) is
/// same-origin with the gateway under that name, and a browser sends no
/// `Origin` with its `GET`s: it could read a plugin's answer to one. So a
/// same-origin browser request is taken only under a `Host` a rebinding
/// page cannot have (see [`open_endpoint_host_allowed`]). A navigation
/// the user made (`Sec-Fetch-Site: none`) is taken.
fn browser_refused(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let config = gw.config();
    let origins = "a page's origin allowed in gateway.allowed_origins may post";
    let (why, how) = match (origin, site) {
        (Some(o), _) if origin_allowed(o, &config.gateway.allowed_origins) => return None,
        (Some(o), _) => (format!("origin `{o}` not allowed"), origins),
        // A browser that sent no Origin (none does for a POST today).
        (None, Some("cross-site" | "same-site")) => (
            "a cross-site browser request with no Origin".to_string(),
            origins,
        ),
        (None, Some("same-origin")) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            if open_endpoint_host_allowed(host, &config.gateway.allowed_hosts) {
                return None;
            }
            (
                format!(
                    "a page under Host `{}`, which is not a loopback name, an IP address or one of \
                     gateway.allowed_hosts (a name pointed at this machine: DNS rebinding)",
                    host.unwrap_or("(none)")
                ),
                "a page served under a name in gateway.allowed_hosts may call",
            )
        }
        (None, _) => return None,
    };
    gw.metrics.origin_rejections.fetch_add(1, Ordering::Relaxed);
    gw.refusals.note("webhook", &why);
    Some(json_error(
        StatusCode::FORBIDDEN,
        format!("webhooks are not taken from web pages in a browser ({why}); {how}"),
    ))
}

/// The HTTP answer for a webhook that did not go through. An unknown
/// account is not told what is configured (the caller is not authenticated).
fn webhook_error(channel: &str, account: &str, e: SendError) -> Response {
    match e {
        SendError::UnknownTarget(_) => json_error(
            StatusCode::NOT_FOUND,
            format!("no account {account} of channel {channel} is configured"),
        ),
        SendError::PluginNotLoaded { plugin, .. } => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("plugin `{plugin}` is not loaded"),
        ),
        SendError::Store(m) | SendError::LogFull(m) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, m)
        }
        SendError::RateLimited(m) => {
            let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, m);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        SendError::Call {
            error: CallError::Busy(m) | CallError::Unavailable(m),
            ..
        } => json_error(StatusCode::SERVICE_UNAVAILABLE, m),
        // The sender is not authenticated: it learns that the plugin
        // failed, not why (a panic's message, a denied destination and the
        // grant that would allow it). The log has the error, at WARN.
        SendError::Call { plugin, .. } => json_error(
            StatusCode::BAD_GATEWAY,
            format!("channel {channel}: plugin `{plugin}` failed on this request; the gateway's log says why"),
        ),
        // Webhooks need no capability and have no idempotency key; kept for
        // completeness.
        e @ (SendError::Unsupported { .. }
        | SendError::OutcomeUnknown { .. }
        | SendError::KeyReused { .. }) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn json_error(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

fn too_large(channel: &str, limit: usize) -> Response {
    let mut r = json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "body larger than {limit} bytes; raise channels.{channel}.webhook_max_body_bytes to accept it"
        ),
    );
    // The rest of the body is not read: end the connection after answering.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn ready(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    if let Some(refused) = check_open_endpoint(&gw, &req) {
        return refused;
    }
    let mut failing = Vec::new();
    if gw.is_shutting_down() {
        failing.push("shutting-down".to_string());
    }
    failing.extend(gw.health.failing());
    let ok = failing.is_empty();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ok, "failing": failing}))).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    if let Some(refused) = check_open_endpoint(&gw, &req) {
        return refused;
    }
    let settles = gw.log.settles();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        gw.metrics.render(
            &gw.conns.count_by_role(),
            gw.started.elapsed().as_secs(),
            (settles.asked, settles.timer),
            gw.conns.own_bytes(),
            gw.log.outcome_unknown(),
        ),
    )
        .into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn plain(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg + "\n",
    )
        .into_response()
}

/// The name part of a `Host` header or URL authority: the port and the
/// brackets of an IPv6 literal removed.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

/// Does `host` (a `Host` header or a URL host, with or without port) name
/// this machine's loopback interface?
pub fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host).trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Is a browser `Origin` allowed: listed in `gateway.allowed_origins` (or
/// `*`), or naming a loopback address? The request's `Host` is not trusted
/// here: a DNS-rebinding page controls it as well as its own origin.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    match url::Url::parse(origin) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {
            u.host_str().is_some_and(is_loopback_host)
        }
        _ => false,
    }
}

/// Is the `Host` header acceptable? When the gateway has no credentials,
/// only loopback names and addresses and `gateway.allowed_hosts` are: a
/// page whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own
/// name. With credentials, any name is (the page cannot authenticate).
pub fn host_allowed(host: Option<&str>, has_auth: bool, allowed: &[String]) -> bool {
    if has_auth {
        return true;
    }
    let Some(host) = host else { return false };
    is_loopback_host(host) || host_listed(host, allowed)
}

/// Is `host` one of `gateway.allowed_hosts`?
fn host_listed(host: &str, allowed: &[String]) -> bool {
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host_name(host)) || a.eq_ignore_ascii_case(host))
}

/// May an endpoint that needs no credentials (`/metrics`, `/ready`) answer
/// a request whose `Host` is `host`, on a gateway that has credentials? A
/// loopback name, an IP address or a name in `gateway.allowed_hosts` may
/// be answered; any other name may be a web page's own, pointed at this
/// machine (DNS rebinding), which could then read the answer. The page
/// cannot send an IP address as its `Host`: it is reached under its name.
pub fn open_endpoint_host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    host.is_some_and(|h| {
        is_loopback_host(h)
            || host_name(h).parse::<std::net::IpAddr>().is_ok()
            || host_listed(h, allowed)
    })
}

/// [`check_host`] for an endpoint that needs no credentials even on a
/// gateway that has them (`/metrics`, `/ready`): there the `Host` must
/// pass [`open_endpoint_host_allowed`] too.
fn check_open_endpoint(gw: &Gateway, req: &Request) -> Option<Response> {
    let headers = req.headers();
    if let Some(refused) = check_host(gw, headers, req.extensions().get()) {
        return Some(refused);
    }
    let config = gw.config();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !config.has_auth() || open_endpoint_host_allowed(host, &config.gateway.allowed_hosts) {
        return None;
    }
    let (shown, path) = (host.unwrap_or("(none)"), req.uri().path());
    Some(misdirected(
        gw,
        &format!(
            "Host `{shown}` for {path} is not a loopback name, an IP address or one of gateway.allowed_hosts"
        ),
        format!(
            "Host `{shown}` is not allowed here: {path} needs no token, so it answers only loopback names, IP \
             addresses and the names in gateway.allowed_hosts (a web page whose name was pointed at this \
             machine, DNS rebinding, could read it otherwise); add the name to gateway.allowed_hosts"
        ),
    ))
}

/// `400` for a request no route may see: one with more than one `Host`
/// (RFC 9112 §3.2: a server answers it 400). Each check here reads the
/// first; a proxy in front may have read another.
pub(super) fn malformed(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts <= 1 {
        return None;
    }
    gw.refusals
        .note("request", &format!("{hosts} Host headers in one request"));
    Some(plain(
        StatusCode::BAD_REQUEST,
        format!("the request has {hosts} Host headers; a request names exactly one host"),
    ))
}

/// `421` for a `Host` the gateway does not answer: counted, noted in the
/// refusal log (`why`), and told to the client (`message`).
fn misdirected(gw: &Gateway, why: &str, message: String) -> Response {
    gw.metrics.host_rejections.fetch_add(1, Ordering::Relaxed);
    gw.refusals.note("request", why);
    plain(StatusCode::MISDIRECTED_REQUEST, message)
}

/// The refusal for a control-plane request whose `Host` is not acceptable
/// (see [`host_allowed`]), or, when the gateway has no credentials, which
/// came through a reverse proxy: a gateway
/// without credentials answers only this machine, and a proxy on it would
/// otherwise pass anyone off as local.
pub(super) fn check_host(
    gw: &Gateway,
    headers: &HeaderMap,
    meta: Option<&ConnMeta>,
) -> Option<Response> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let has_auth = gw.config().has_auth();
    if host_allowed(host, has_auth, &gw.config().gateway.allowed_hosts) {
        let peer = match meta {
            Some(m) if !has_auth => gw.client(m.remote.ip(), headers),
            _ => return None,
        };
        if peer.is_local() {
            return None;
        }
        gw.metrics
            .proxied_rejections
            .fetch_add(1, Ordering::Relaxed);
        return Some(plain(
            StatusCode::FORBIDDEN,
            format!(
                "this gateway has no token or password, so it answers only this machine, and this request came \
                 through a proxy for {}: set a token ([gateway.auth] token) before serving the gateway through a \
                 proxy (and list the proxy in gateway.trusted_proxies)",
                peer.ip
            ),
        ));
    }
    let shown = host.unwrap_or("(none)");
    Some(misdirected(
        gw,
        &format!("Host `{shown}` is not a loopback name and the gateway has no credentials"),
        format!(
            "Host `{shown}` is not allowed: this gateway has no token, so it answers only to loopback names \
             (localhost, 127.0.0.1, [::1]); add the name to gateway.allowed_hosts or set a token"
        ),
    ))
}

async fn root(State(gw): State<Arc<Gateway>>, mut req: Request) -> Response {
    let headers = req.headers();
    if let Some(refused) = check_host(&gw, headers, req.extensions().get()) {
        return refused;
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        if gw.config().gateway.control_ui {
            return super::ui::page();
        }
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "Switchboard gateway: connect with a WebSocket client (OpenClaw Gateway protocol v4) at this URL"
                .into(),
        );
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing `Connection: upgrade`".into(),
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version (only 13)".into(),
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key".into());
    };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(o) = &origin {
        if !origin_allowed(o, &gw.config().gateway.allowed_origins) {
            gw.metrics.origin_rejections.fetch_add(1, Ordering::Relaxed);
            gw.refusals
                .note("WebSocket upgrade", &format!("origin `{o}` not allowed"));
            return plain(
                StatusCode::FORBIDDEN,
                format!("origin not allowed: {o}; add it to gateway.allowed_origins to allow it"),
            );
        }
    }
    let Some(mut meta) = req.extensions().get::<ConnMeta>().cloned() else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection metadata missing".into(),
        );
    };
    meta.peer = gw.client(meta.remote.ip(), headers);
    // Through a trusted proxy, the client takes its unauthenticated share
    // now that its address is known (the proxy took none at accept; a
    // request naming no client counts as the proxy's own).
    if gw.is_trusted_proxy(meta.remote.ip()) {
        match gw.take_unauthenticated(meta.peer.ip, Some(meta.remote), "WebSocket upgrade") {
            Some(slot) => *meta.unauthenticated.guard() = Some(slot),
            None => return busy(super::BUSY_PER_IP),
        }
    }
    if gw.is_shutting_down() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down".into(),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = derive_accept_key(key.as_bytes());
    let gw2 = gw.clone();
    let fut = async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                super::ws::run(gw2, TokioIo::new(upgraded), meta, origin).await;
            }
            Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
        }
    };
    gw.tasks.spawn(fut);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::{host_allowed, is_loopback_host, open_endpoint_host_allowed, origin_allowed};

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed("http://127.0.0.1:18789", &none));
        assert!(origin_allowed("http://localhost", &none));
        assert!(origin_allowed("http://[::1]:3000", &none));
        assert!(origin_allowed("https://app.localhost:8443", &none));
        assert!(!origin_allowed("http://evil.example", &none));
        // DNS rebinding: the page's own name, whatever Host it sends.
        assert!(!origin_allowed("http://rebind.evil.example:18789", &none));
        assert!(!origin_allowed("http://127.0.0.1.evil.example", &none));
        assert!(!origin_allowed("null", &none));
        assert!(!origin_allowed("file://", &none));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed("https://app.example", &list));
        assert!(!origin_allowed("https://app.example.evil", &list));
        assert!(origin_allowed("https://x", &["*".to_string()]));
    }

    #[test]
    fn hosts() {
        for h in [
            "127.0.0.1:18789",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9",
            "127.1.2.3",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "rebind.evil.example:18789",
            "10.0.0.1",
            "localhost.evil",
            "",
            "[::2]",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let none: Vec<String> = vec![];
        assert!(!host_allowed(
            Some("rebind.evil.example:18789"),
            false,
            &none
        ));
        assert!(!host_allowed(None, false, &none));
        assert!(host_allowed(Some("rebind.evil.example:18789"), true, &none));
        let list = vec!["gw.internal".to_string()];
        assert!(host_allowed(Some("gw.internal:18789"), false, &list));
        // What needs no token answers a page's own name on no gateway.
        for h in [
            "127.0.0.1:1",
            "localhost",
            "10.0.0.5:18789",
            "[2001:db8::7]:80",
            "gw.internal",
        ] {
            assert!(open_endpoint_host_allowed(Some(h), &list), "{h}");
        }
        for h in [
            "rebind.evil.example:18789",
            "127.0.0.1.nip.io",
            "10.0.0.5.evil",
            "",
        ] {
            assert!(!open_endpoint_host_allowed(Some(h), &list), "{h}");
        }
        assert!(!open_endpoint_host_allowed(None, &list));
    }
}
