//! The accept loop: TLS (`[gateway.tls]`), the `max_connections` slots,
//! and hyper's HTTP/1 server on each accepted socket (with the 408 for slow
//! headers). Requests go to [`super::http`]; upgrades to [`super::ws`].
//!
//! It knows nothing of the protocol: it hands each socket to hyper and the
//! router.

use crate::sync::MutexExt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::per_ip::IpSlot;
use super::{http, Gateway};

/// Per-TCP-connection facts handed to request handlers.
#[derive(Clone)]
pub struct ConnMeta {
    pub remote: SocketAddr,
    /// Who it is from: the peer, or for a WebSocket upgraded through a
    /// trusted proxy, the client its headers name (set per request).
    pub peer: super::forwarded::Client,
    pub tls: bool,
    /// The `max_connections` slot, held until the socket (or the WebSocket
    /// it was upgraded to) closes.
    pub permit: Arc<OwnedSemaphorePermit>,
    /// The remote address's `max_unauthenticated_per_ip` slot: held until
    /// the socket closes, or given back when it becomes an authenticated
    /// WebSocket ([`ConnMeta::authenticated`]).
    pub unauthenticated: Arc<std::sync::Mutex<Option<IpSlot>>>,
}

impl ConnMeta {
    /// The connection authenticated: it no longer counts against its
    /// address's unauthenticated share.
    pub fn authenticated(&self) {
        drop(self.unauthenticated.guard().take());
    }
}

/// Accepts connections until shutdown begins.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, tls: Option<Arc<super::tls::Tls>>) {
    let router = http::router(gw.clone());
    let slots = Arc::new(Semaphore::new(gw.config().gateway.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = gw.shutdown_started() => break,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        gw.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        let permit = slots.clone().try_acquire_owned();
        let gw2 = gw.clone();
        let router = router.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        gw.tasks.spawn(async move {
            let Ok(permit) = permit else {
                gw2.metrics
                    .connections_rejected
                    .fetch_add(1, Ordering::Relaxed);
                gw2.refusals.note(
                    "connection",
                    &format!(
                        "gateway.limits.max_connections ({}) reached (last from {remote})",
                        gw2.config().gateway.limits.max_connections
                    ),
                );
                refuse_busy(stream, tls, BUSY).await;
                return;
            };
            // A trusted proxy carries everyone's connections: its clients
            // take their shares once their requests name them.
            let ip_slot = if gw2.is_trusted_proxy(remote.ip()) {
                None
            } else if let Some(slot) = gw2.take_unauthenticated(remote.ip(), None, "connection") {
                Some(slot)
            } else {
                refuse_busy(stream, tls, super::BUSY_PER_IP).await;
                return;
            };
            let _ = stream.set_nodelay(true);
            let sndbuf = gw2.config().gateway.limits.socket_send_buffer_bytes;
            if sndbuf > 0 {
                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf);
            }
            let meta = ConnMeta {
                remote,
                peer: super::forwarded::Client::direct(remote.ip()),
                tls: tls.is_some(),
                permit: Arc::new(permit),
                unauthenticated: Arc::new(std::sync::Mutex::new(ip_slot)),
            };
            let header_timeout =
                Duration::from_millis(gw2.config().gateway.limits.header_read_timeout_ms);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_http(gw2, router, s, meta, None).await,
                        Ok(Err(e)) => {
                            gw2.metrics.tls_failures.fetch_add(1, Ordering::Relaxed);
                            gw2.refusals
                                .note("TLS handshake", &format!("failed from {remote}: {e}"));
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
                None => {
                    // A second handle on the socket, kept until the first
                    // request's headers are in, to answer 408 when they
                    // never come (hyper closes such a connection silently).
                    let spare = socket2::SockRef::from(&stream)
                        .try_clone()
                        .ok()
                        .map(std::net::TcpStream::from);
                    serve_http(gw2, router, stream, meta, spare).await
                }
            }
        });
    }
    tracing::info!("stopped accepting connections");
}

const BUSY: &str = "too many connections: gateway.limits.max_connections reached";

/// Answers 503 to a connection over a limit (plain TCP only; a TLS client
/// just sees the socket close, as there is no slot to run a handshake in).
async fn refuse_busy(
    mut stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    body: &str,
) {
    if tls.is_none() {
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}\n",
            body.len() + 1
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
    }
}

async fn serve_http<I>(
    gw: Arc<Gateway>,
    router: axum::Router,
    io: I,
    meta: ConnMeta,
    spare: Option<std::net::TcpStream>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = meta.remote;
    let spare = Arc::new(std::sync::Mutex::new(spare));
    let spare2 = spare.clone();
    let gw2 = gw.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // Headers arrived: the spare handle is no longer needed.
        spare2.guard().take();
        req.extensions_mut().insert(meta.clone());
        let refused = http::malformed(&gw2, req.headers());
        let router = router.clone();
        async move {
            match refused {
                Some(r) => Ok(r),
                None => router.oneshot(req).await,
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            gw.config().gateway.limits.header_read_timeout_ms,
        ))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = gw.shutdown_started() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        let spare = spare.guard().take();
        match spare {
            Some(mut s) if e.is_timeout() => {
                gw.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                gw.refusals.note(
                    "connection",
                    &format!(
                        "request headers not received within {} ms (gateway.limits.header_read_timeout_ms), from {remote}",
                        gw.config().gateway.limits.header_read_timeout_ms
                    ),
                );
                use std::io::Write;
                let body = "request headers not received in time\n";
                let resp = format!(
                    "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                // The socket is non-blocking and its send buffer empty: one
                // short write either goes through at once or not at all.
                let _ = s.write_all(resp.as_bytes());
            }
            _ => tracing::debug!(%remote, "http connection ended: {e}"),
        }
    }
}
