//! An authenticated connection: registration, `hello-ok`, the reader loop
//! (one in-flight slot taken before each frame) and the close.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::connections::{ConnIdentity, Connection, EnqueueError, Outbound};
use crate::disconnect::{Disconnect, ABNORMAL, NO_STATUS};
use crate::frames::{self, ErrorShape, FrameError, RequestFrame};
use crate::gateway::preauth;
use crate::gateway::{ConnMeta, Gateway};

use super::handshake::*;
use super::presence::*;
use super::writer::*;

/// The read buffer a connection starts with; a larger frame grows it.
pub(super) const READ_BUFFER: usize = 1024;

/// The read half, with writes swallowed: the writer task owns the socket's
/// writing, so tungstenite's own replies (pong, close) are not written
/// here (the reader queues a pong for each ping instead). It follows the
/// frames in the bytes it hands to tungstenite ([`Frames`]), for
/// [`Rebuffer`].
pub(super) struct ReadOnly<R> {
    inner: R,
    frames: Frames,
}

impl<R> ReadOnly<R> {
    pub(super) fn new(inner: R) -> Self {
        ReadOnly {
            inner,
            frames: Frames::default(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.frames.follow(&buf.filled()[before..]);
        }
        r
    }
}

/// A frame this large has grown the read buffer from [`READ_BUFFER`] to at
/// least its size; after one, the reader starts a fresh, small buffer as
/// soon as it can. Below it, a connection keeps at most about twice this
/// (tungstenite's buffer grows by doubling).
const REBUILD_AFTER: u64 = 4 * 1024;

/// The frames in the bytes handed to tungstenite, followed header by
/// header (RFC 6455 §5.2; payloads are skipped, never looked at): how many
/// messages they complete, whether the bytes end on a frame boundary
/// outside a fragmented message, and the largest frame that went by. It never
/// fails: bytes tungstenite refuses end the connection anyway.
#[derive(Default)]
pub(super) struct Frames {
    /// The current frame's header so far (2 to 14 bytes).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come, once its header
    /// is complete (more than 0: inside a payload).
    payload_left: u64,
    /// Whether the current frame ends a message: a control frame, or a
    /// data frame with FIN.
    ends_message: bool,
    /// A data message's first frame came without FIN; its last has not come.
    fragmenting: bool,
    /// Messages complete in the bytes handed: each is one tungstenite gives
    /// the reader (a text, binary, ping, pong or close message).
    completed: u64,
    /// The largest frame handed since the last rebuild (payload bytes).
    largest: u64,
}

impl Frames {
    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            // Header: 2 bytes, then the extended length and the mask.
            let need = self.header_len();
            let n = (need - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            // Its first two bytes may say it is longer than two.
            if self.head_len == self.header_len() {
                self.header_done();
            }
        }
    }

    /// The current header's length: 2 until its first two bytes are in.
    fn header_len(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let b1 = self.head[1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    fn header_done(&mut self) {
        let (b0, b1) = (self.head[0], self.head[1]);
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x08 != 0 {
            // A control frame: a message of its own, even between the
            // frames of a fragmented one.
            self.ends_message = true;
        } else {
            self.ends_message = fin;
            self.fragmenting = !fin;
        }
        self.largest = self.largest.max(len);
        self.head_len = 0;
        self.payload_left = len;
        if len == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.ends_message {
            self.completed += 1;
        }
    }

    /// The bytes handed end on a frame boundary, outside a fragmented message.
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0 && !self.fragmenting
    }
}

/// Gives a connection its small read buffer back after a big frame.
///
/// tungstenite keeps the buffer a frame grew for the connection's life
/// (its `BytesMut` reclaims the same allocation), and offers no way to
/// shrink it: up to `max_payload_bytes` (25 MiB) per connection that once
/// sent a big request. The stream can be rebuilt around the same socket
/// with a fresh buffer, but only when no read-ahead byte is buffered and
/// no message is half-assembled, which tungstenite does not tell. So the
/// reader compares: [`Frames`] counts the messages completed in the bytes
/// handed to tungstenite, and this counts the messages tungstenite gave the
/// reader. When the two are equal and the handed bytes end on a frame
/// boundary outside a fragmented message, everything handed has been given
/// back as messages, and the rebuild is safe; otherwise it waits for a
/// later message.
#[derive(Default)]
pub(super) struct Rebuffer {
    received: u64,
}

impl Rebuffer {
    /// Counts a message just received.
    pub(super) fn received(&mut self) {
        self.received += 1;
    }

    /// True when a big frame grew the buffer and nothing is buffered now:
    /// the stream is to be rebuilt (and the largest frame starts again).
    pub(super) fn due<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut WebSocketStream<ReadOnly<R>>,
    ) -> bool {
        let f = &mut stream.get_mut().frames;
        let due = f.largest >= REBUILD_AFTER && f.completed == self.received && f.at_boundary();
        if due {
            f.largest = 0;
        }
        due
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How long we wait for the client's answer to our close frame.
pub(super) const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// What only a connection's first steps need: its `hello-ok` answers the
/// `connect` request's id, and its first log line names how it
/// authenticated.
struct Opening {
    request_id: String,
    via: String,
}

/// The future that serves an authenticated connection: registration,
/// `hello-ok`, the reader loop (with the writer task it starts) and the
/// close. The caller spawns it.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps each argument twice for its whole life (as it came, and
/// moved into its body), and every byte of this future is paid by every
/// open connection. Only what the loop needs is captured: the handshake's
/// fields go into the connection's identity here, before the future exists
/// (its size is checked by `tests::connection_futures_stay_small`).
pub(super) fn serve_connection<S>(
    gw: Arc<Gateway>,
    mut io: S,
    meta: ConnMeta,
    a: Accepted,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = gw.config();
    let limits = &config.gateway.limits;
    let Accepted {
        request_id,
        role,
        scopes,
        device_id,
        client,
        via,
        credential,
    } = a;
    let (tx, rx) = crate::queue::channel(limits.send_queue_frames);
    let identity = ConnIdentity {
        id: uuid::Uuid::new_v4().to_string(),
        role,
        scopes,
        device_id,
        client,
        remote_ip: meta.peer.ip,
        connected_at_ms: crate::now_ms(),
        credential,
    };
    let conn = Arc::new(
        Connection::new(identity, tx)
            .with_byte_limit(limits.max_buffered_bytes)
            .with_own_total(gw.conns.own_total()),
    );
    // The configuration as of this connection's start is not kept: a
    // reload must not be held up by (or hold) every open connection.
    let max_payload = limits.max_payload_bytes;
    let inflight = Arc::new(Semaphore::new(limits.max_inflight_requests));
    drop(config);
    // Needed only until the first log line: one pointer in the future.
    let opening = Box::new(Opening { request_id, via });
    async move {
        // Register before hello so the snapshot includes this client; events
        // queued meanwhile are written after hello by the writer.
        gw.conns.register(conn.clone());
        let mut membership = Membership::join(&gw, &conn);
        // Built and dropped in this condition: the snapshot holds the whole
        // presence list. (Futures awaited once, here and at the close, are
        // boxed so that their state does not size this future.)
        if Box::pin(preauth::write_text(
            &mut io,
            &hello_ok_frame(&gw, &opening.request_id, &conn),
        ))
        .await
        .is_err()
        {
            gw.conns.unregister(&conn.who.id);
            membership.leave(&gw);
            return;
        }
        gw.metrics.frames_out.fetch_add(2, Ordering::Relaxed);
        tracing::info!(
            conn_id = %conn.who.id, client = %conn.who.client.id, mode = %conn.who.client.mode, role = %conn.who.role,
            scopes = ?conn.who.scopes, device_id = conn.who.device_id.as_deref().unwrap_or("-"), auth = %opening.via,
            remote = %crate::gateway::forwarded::shown(meta.remote, meta.peer), tls = meta.tls, "connection open"
        );
        drop(opening);
        if membership.joined_new {
            gw.presence_notify.notify_one();
        }
        // Each hello-ok frame carries the presence list: after a storm of
        // connects, what they used is free memory to give back.
        crate::memory::release_soon();
        let (rd, wr) = tokio::io::split(io);
        let mut stream = Box::pin(WebSocketStream::from_raw_socket(
            ReadOnly::new(rd),
            Role::Server,
            Some(ws_config(max_payload)),
        ))
        .await;
        let mut rebuffer = Rebuffer::default();
        let wfut = writer(wr, rx, conn.clone(), gw.clone(), inflight.clone());
        let mut writer = tokio::spawn(wfut);
        // A request slot, taken before the next frame is read: a client at its
        // in-flight limit is not read from (TCP backpressure) until a request
        // finishes, instead of being answered with refusals it must then read.
        let mut slot: Option<OwnedSemaphorePermit> = None;
        let mut client_close: Option<u16> = None;
        let mut writer_done = None;
        loop {
            tokio::select! {
                p = inflight.clone().acquire_owned(), if slot.is_none() => {
                    slot = p.ok();
                }
                msg = stream.next(), if slot.is_some() => {
                    // Any frame, a pong included, shows the client is there.
                    if let Some(Ok(_)) = &msg {
                        conn.heard(crate::now_ms());
                        rebuffer.received();
                    }
                    match msg {
                        None => break,
                        Some(Err(WsError::Capacity(e))) => {
                            let _ = conn.close_now(Disconnect::MessageTooBig(format!("message too big: {e}")));
                        }
                        Some(Err(e)) => {
                            // A protocol violation gets its close code (RFC 6455
                            // 7.4.1); a vanished socket has nobody to tell.
                            match protocol_close(&e) {
                                Some(why) => {
                                    gw.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::info!(conn_id = %conn.who.id, "protocol error: {e}");
                                    let _ = conn.close_now(why);
                                }
                                None => tracing::debug!(conn_id = %conn.who.id, "read error: {e}"),
                            }
                            break;
                        }
                        Some(Ok(Message::Text(t))) => {
                            gw.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
                            membership.active(&gw, &conn);
                            on_text(&gw, &conn, &mut slot, t.as_str());
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let _ = conn.close_now(Disconnect::BinaryFrame);
                        }
                        Some(Ok(Message::Close(f))) => {
                            client_close = Some(f.map(|f| u16::from(f.code)).unwrap_or(NO_STATUS));
                            break;
                        }
                        Some(Ok(Message::Ping(data))) => {
                            membership.active(&gw, &conn);
                            enqueue(&gw, &conn, Outbound::Pong(data.to_vec().into_boxed_slice()));
                        }
                        Some(Ok(_)) => membership.active(&gw, &conn),
                    }
                }
                r = &mut writer => {
                    writer_done = Some(r.ok().flatten());
                    break;
                }
            }
            // Outside the select, so that no frame or select output is kept
            // across this (rare) wait.
            if rebuffer.due(&mut stream) {
                // Nothing is buffered: the same socket, a small buffer.
                let rd = stream.into_inner();
                stream = Box::pin(WebSocketStream::from_raw_socket(
                    rd,
                    Role::Server,
                    Some(ws_config(max_payload)),
                ))
                .await;
                crate::memory::release_soon();
            }
        }
        if writer_done.is_some() {
            // Our close is sent. Complete the closing handshake: wait
            // (bounded) for the client's close or EOF. Dropping the socket
            // first would make the kernel answer the client's close with a
            // reset, which discards frames the client has received but not
            // yet read.
            let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE, async {
                while let Some(Ok(m)) = stream.next().await {
                    if let Message::Close(f) = m {
                        client_close = Some(f.map(|f| u16::from(f.code)).unwrap_or(NO_STATUS));
                        break;
                    }
                }
            }))
            .await;
        }
        // Did we ask to close (slow consumer, shutdown, bad frame) before the loop ended?
        // (A writer that finished on its own sent our close, e.g. at shutdown.)
        let we_closed = conn.is_closing() || matches!(writer_done, Some(Some(_)));
        let our_close = match writer_done {
            Some(r) => r,
            None => {
                // The client closed or the socket failed: stop the writer.
                let _ = conn.close_now(Disconnect::Client(client_close.unwrap_or(ABNORMAL)));
                match Box::pin(tokio::time::timeout(CLOSE_GRACE, &mut writer)).await {
                    Ok(r) => r.ok().flatten(),
                    Err(_) => {
                        writer.abort();
                        None
                    }
                }
            }
        };
        gw.conns.unregister(&conn.who.id);
        membership.leave(&gw);
        let code = if we_closed {
            our_close.as_ref().map(|c| c.code).unwrap_or(ABNORMAL)
        } else {
            client_close.unwrap_or(ABNORMAL)
        };
        tracing::info!(
            conn_id = %conn.who.id, client = %conn.who.client.id, role = %conn.who.role, close_code = code,
            by = if we_closed { "server" } else { "client" },
            reason = our_close.as_ref().map(|c| c.reason.as_str()).unwrap_or(""),
            "connection closed"
        );
        // Named whole, so that the block owns all of `meta` (a closure
        // captures only the fields it names): its `max_connections` slot
        // is held until here.
        drop(meta);
    }
}

/// The reader's tungstenite settings. The reader keeps tokio-tungstenite
/// (framing checks, UTF-8, limits); the writer writes frames itself.
/// Whatever tungstenite would write (its automatic pong and close replies)
/// goes nowhere: the reader queues pongs and the writer sends the close, in
/// order with the rest.
fn ws_config(max_payload: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload))
}

/// The close code and reason for a read error that is the client's
/// protocol violation; `None` for I/O errors (the socket is gone).
pub(super) fn protocol_close(e: &WsError) -> Option<Disconnect> {
    match e {
        WsError::Utf8(_) => Some(Disconnect::InvalidUtf8),
        WsError::Protocol(p) => {
            use tokio_tungstenite::tungstenite::error::ProtocolError as P;
            let why = match p {
                P::ResetWithoutClosingHandshake => return None,
                P::UnmaskedFrameFromClient => "protocol error: unmasked client frame",
                P::NonZeroReservedBits => "protocol error: reserved bits set",
                _ => "protocol error",
            };
            Some(Disconnect::ProtocolError(why.into()))
        }
        _ => None,
    }
}

pub(super) fn respond(gw: &Gateway, conn: &Connection, frame: String) {
    enqueue(gw, conn, Outbound::Frame(frame.into()))
}

pub(super) fn enqueue(gw: &Gateway, conn: &Connection, item: Outbound) {
    let own = matches!(item, Outbound::Frame(_) | Outbound::Reply(_));
    match conn.try_send(item) {
        Ok(()) if own => crate::broadcast::shed_replies(&gw.metrics, &gw.conns),
        Ok(()) => {}
        Err(EnqueueError::Full) => crate::broadcast::close_slow_consumer(&gw.metrics, conn),
        Err(EnqueueError::Closed) => {}
    }
}

/// Handles one text frame. A request takes `slot` (the in-flight permit the
/// reader acquired before reading it) into its task.
pub(super) fn on_text(
    gw: &Arc<Gateway>,
    conn: &Arc<Connection>,
    slot: &mut Option<OwnedSemaphorePermit>,
    text: &str,
) {
    let req = match RequestFrame::parse(text) {
        Ok(r) => r,
        Err(FrameError::NotARequest(why)) => {
            tracing::info!(conn_id = %conn.who.id, "invalid frame: {why}");
            let _ = conn.close_now(Disconnect::Policy("invalid request frame".into()));
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
    let pending = match crate::gateway::methods::start(gw, conn, &req.method, req.params) {
        crate::gateway::methods::Dispatch::Done(answer) => {
            reply(gw, conn, &req.id, answer, permit);
            return;
        }
        crate::gateway::methods::Dispatch::Later(p) => p,
    };
    let gw = gw.clone();
    let conn = conn.clone();
    let id = req.id.into_owned();
    tokio::spawn(async move {
        let answer = pending.await;
        reply(&gw, &conn, &id, answer, permit);
    });
}

/// Queues the response to request `id`; the request's slot goes with it
/// and is freed once it is written.
fn reply(
    gw: &Gateway,
    conn: &Connection,
    id: &str,
    answer: crate::gateway::methods::Answer,
    permit: Option<OwnedSemaphorePermit>,
) {
    let frame = match answer {
        Ok(payload) => frames::response_ok(id, &payload),
        Err(e) => frames::response_err(id, &e),
    };
    match permit {
        Some(p) => {
            // The writer gives the slot back once the reply is written.
            p.forget();
            enqueue(gw, conn, Outbound::Reply(frame.into()))
        }
        None => respond(gw, conn, frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One client frame: FIN, opcode, payload length, and how its length
    /// is written (0: minimal, 1: 16-bit, 2: 64-bit, whatever fits).
    fn frame(fin: bool, opcode: u8, len: usize, padded: u8, masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match (len, padded) {
            (0..=125, 0) => f.push(m | len as u8),
            (0..=65535, 0 | 1) => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    /// A message as frames: a data message in `parts` fragments (a ping
    /// between two of them when `ping`), or a control frame.
    #[derive(Debug, Clone)]
    enum Msg {
        Data {
            sizes: Vec<usize>,
            padded: u8,
            ping: bool,
        },
        Ping(usize),
    }

    fn bytes_of(m: &Msg, masked: bool) -> (Vec<u8>, u64) {
        match m {
            Msg::Ping(n) => (frame(true, 0x9, *n, 0, masked), 1),
            Msg::Data {
                sizes,
                padded,
                ping,
            } => {
                let mut out = Vec::new();
                let mut messages = 1;
                for (i, &n) in sizes.iter().enumerate() {
                    let last = i + 1 == sizes.len();
                    let op = if i == 0 { 0x1 } else { 0x0 };
                    out.extend(frame(last, op, n, *padded, masked));
                    if *ping && !last && i == 0 {
                        out.extend(frame(true, 0x9, 3, 0, masked));
                        messages += 1;
                    }
                }
                (out, messages)
            }
        }
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (0usize..126).prop_map(Msg::Ping),
            (
                prop::collection::vec(
                    prop_oneof![
                        0usize..200,
                        125usize..130,
                        65530usize..65540,
                        70000usize..70010
                    ],
                    1..4
                ),
                0u8..3,
                any::<bool>()
            )
                .prop_map(|(sizes, padded, ping)| Msg::Data {
                    sizes,
                    padded,
                    ping
                }),
        ]
    }

    proptest! {
        /// However the bytes are split, the frames are followed exactly:
        /// at each message's end the count is right and the bytes end on a
        /// boundary; inside a message (a fragmented one included) they do
        /// not; the largest frame is known.
        #[test]
        fn frames_are_followed_across_any_split(
            msgs in prop::collection::vec(msg(), 1..6),
            cuts in prop::collection::vec(1usize..5000, 1..40),
            masked in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            // (offset where a message ends, messages complete by then)
            let mut ends = Vec::new();
            let mut count = 0;
            let mut largest = 0u64;
            for m in &msgs {
                let (b, n) = bytes_of(m, masked);
                stream.extend(b);
                count += n;
                ends.push((stream.len(), count));
                largest = largest.max(match m {
                    Msg::Ping(n) => *n as u64,
                    Msg::Data { sizes, ping, .. } => sizes
                        .iter()
                        .map(|&s| s as u64)
                        .chain(ping.then_some(3).filter(|_| sizes.len() > 1))
                        .max()
                        .unwrap_or(0),
                });
            }
            let mut f = Frames::default();
            let (mut at, mut cut) = (0, 0);
            while at < stream.len() {
                let n = cuts[cut % cuts.len()].min(stream.len() - at);
                cut += 1;
                f.follow(&stream[at..at + n]);
                at += n;
                match ends.iter().find(|(e, _)| *e == at) {
                    Some(&(_, c)) => {
                        prop_assert!(f.at_boundary(), "at {at}");
                        prop_assert_eq!(f.completed, c);
                    }
                    None => prop_assert!(!f.at_boundary(), "at {at}, inside a message"),
                }
            }
            prop_assert_eq!(f.completed, count);
            prop_assert_eq!(f.largest, largest);
        }
    }

    /// Each open connection holds one reader future and one writer future
    /// for its whole life: their size is most of what an idle connection
    /// costs (`make bench`'s RSS row).
    #[test]
    fn connection_futures_stay_small() {
        type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;
        fn size4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn size5<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let reader = size4(serve_connection::<Io>);
        let writer = size5(super::writer::<tokio::io::WriteHalf<Io>>);
        // 776 and 408 bytes on 2026-11-29 with Rust 1.95 (2120 and 696 when
        // both were `async fn`s), in tokio task cells of 896 and 512 bytes
        // (128-byte steps: a reader over about 780 bytes takes 1024, a
        // writer over about 410 takes 640). The bounds leave room for a
        // field or two.
        assert!(reader <= 840, "the reader's future is {reader} bytes");
        assert!(writer <= 440, "the writer's future is {writer} bytes");
    }

    #[test]
    fn byte_by_byte() {
        let mut stream = frame(false, 0x1, 70_000, 2, true);
        stream.extend(frame(true, 0xA, 0, 0, true));
        stream.extend(frame(true, 0x0, 5, 1, true));
        let mut f = Frames::default();
        for (i, b) in stream.iter().enumerate() {
            f.follow(std::slice::from_ref(b));
            assert_eq!(f.at_boundary(), i + 1 == stream.len(), "at {i}");
        }
        // The pong and the text message.
        assert_eq!(f.completed, 2);
        assert_eq!(f.largest, 70_000);
    }
}
