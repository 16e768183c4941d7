//! The HTTP router: `GET /` (WebSocket upgrade), `GET /health`, `GET /ready`,
//! `GET /metrics`.

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

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(root))
        .route(
            "/health",
            get(|| async { Json(json!({"ok": true, "status": "live"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/hooks/{channel}/{account}", axum::routing::post(hook))
        .route(
            "/hooks/{channel}/{account}/{*rest}",
            axum::routing::post(hook),
        )
        .with_state(gw)
}

/// `POST /hooks/<channel>/<account>[/rest]` → the plugin's `handle-webhook`.
async fn hook(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(p): axum::extract::Path<std::collections::HashMap<String, String>>,
    req: Request,
) -> Response {
    let channel = p.get("channel").cloned().unwrap_or_default();
    let account = p.get("account").cloned().unwrap_or_default();
    let path = format!("/{}", p.get("rest").cloned().unwrap_or_default());
    let (parts, body) = req.into_parts();
    let limit = gw.config.gateway.limits.max_payload_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"error": format!("body larger than {limit} bytes (gateway.limits.max_payload_bytes)")})),
            )
                .into_response()
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
    let hr = crate::plugins::runtime::HttpRequest {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.to_vec(),
    };
    match gw.channels.webhook(&channel, &account, hr).await {
        Ok(r) => {
            let mut b = Response::builder()
                .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY));
            for (k, v) in &r.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            b.body(axum::body::Body::from(r.body))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err((status, msg)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            Json(json!({"error": msg})),
        )
            .into_response(),
    }
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    let failing = crate::health::failing(&gw);
    let ok = failing.is_empty();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ok, "failing": failing}))).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        gw.metrics.render(&gw),
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

/// Is a browser `Origin` allowed: listed in `gateway.allowed_origins` (or `*`),
/// or the same host as the request's `Host`?
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(host) = host else { return false };
    match url::Url::parse(origin) {
        Ok(u) => {
            let Some(h) = u.host_str() else { return false };
            let origin_host = match u.port_or_known_default() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            };
            // Host may omit the default port.
            let default_port = match u.scheme() {
                "https" | "wss" => 443,
                _ => 80,
            };
            let host_full = if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !host.ends_with(']')
            {
                host.to_string()
            } else {
                format!("{host}:{default_port}")
            };
            origin_host.eq_ignore_ascii_case(&host_full)
        }
        Err(_) => false,
    }
}

async fn root(State(gw): State<Arc<Gateway>>, mut req: Request) -> Response {
    let headers = req.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket") {
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
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !origin_allowed(o, host, &gw.config.gateway.allowed_origins) {
            gw.metrics.origin_rejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(origin = %o, "refused WebSocket upgrade: origin not allowed");
            return plain(
                StatusCode::FORBIDDEN,
                format!("origin not allowed: {o}; add it to gateway.allowed_origins to allow it"),
            );
        }
    }
    let Some(meta) = req.extensions().get::<ConnMeta>().cloned() else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection metadata missing".into(),
        );
    };
    if gw.is_shutting_down() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down".into(),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = derive_accept_key(key.as_bytes());
    let gw2 = gw.clone();
    gw.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                super::ws::run(gw2, TokioIo::new(upgraded), meta, origin.is_some()).await;
            }
            Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
        }
    });
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
    use super::origin_allowed;

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(
            "http://127.0.0.1:18789",
            Some("127.0.0.1:18789"),
            &none
        ));
        assert!(origin_allowed("http://localhost", Some("localhost"), &none));
        assert!(!origin_allowed(
            "http://evil.example",
            Some("127.0.0.1:18789"),
            &none
        ));
        assert!(!origin_allowed("null", Some("127.0.0.1:18789"), &none));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            "https://app.example",
            Some("127.0.0.1:1"),
            &list
        ));
        assert!(origin_allowed("https://x", None, &["*".to_string()]));
    }
}
