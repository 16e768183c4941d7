//! The control page (`GET /` without a WebSocket upgrade, assets under
//! `/ui/`): one HTML page, a script and a stylesheet, embedded in the
//! binary (no build step, nothing fetched from elsewhere). The page is an
//! ordinary operator client of the WebSocket protocol on the same origin.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles,
//! images and the WebSocket from this origin only, no inline script, no
//! framing), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer`. The `Host` check (DNS rebinding) applies
//! as to every request; the WebSocket's `Origin` rules are unchanged: a page
//! served under a non-loopback name needs that origin in
//! `gateway.allowed_origins`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Gateway;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("ui/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("ui/app.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("ui/icon.svg")),
];

fn with_headers(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Always revalidate: a new daemon version serves a new page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The page itself (the caller has checked `Host` and that this is not a
/// WebSocket upgrade).
pub fn page() -> Response {
    with_headers(StatusCode::OK, "text/html; charset=utf-8", INDEX)
}

/// `GET /ui/<asset>`.
pub async fn asset(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if let Some(refused) = super::http::check_host(&gw, req.headers(), req.extensions().get()) {
        return refused;
    }
    if !gw.config().gateway.control_ui {
        return (
            StatusCode::NOT_FOUND,
            "the control page is turned off (gateway.control_ui = false)",
        )
            .into_response();
    }
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => with_headers(StatusCode::OK, ct, body),
        None => with_headers(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no such file",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_remote_origin() {
        // The CSP would block them; this keeps them from being written.
        let lower = INDEX.to_ascii_lowercase();
        for (i, _) in lower.match_indices("<script") {
            let tag = &lower[i..i + lower[i..].find('>').unwrap_or(0)];
            assert!(
                tag.contains(" src=\"/ui/"),
                "inline or remote script: {tag}"
            );
        }
        for bad in [
            " style=",
            "<style",
            " onclick=",
            " onload=",
            "javascript:",
            "http://",
            "https://",
        ] {
            assert!(!lower.contains(bad), "index.html contains {bad}");
        }
        for (name, _, body) in ASSETS {
            // An XML namespace is a name, not a fetch.
            let body = body.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} names a remote origin"
            );
        }
        // Everything the page references is served.
        for r in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
            assert!(INDEX.contains(r));
            assert!(ASSETS.iter().any(|(n, _, _)| r.ends_with(n)));
        }
    }
}
