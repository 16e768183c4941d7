//! The writer task: owns the socket's write half and drains the bounded
//! queue of pre-serialised frames in batches, assigning each event its `seq`.
//!
//! Frames are written directly (RFC 6455 5.2: a server's frames are
//! unmasked, so a frame is a 2-, 4- or 10-byte header and the payload).
//! Every frame waiting in the queue goes into one vectored write: for an
//! event, `[header][the event's shared bytes][this connection's seq tail]`,
//! so no payload is copied per connection and nothing is allocated per
//! frame (headers and tails go into one reused scratch buffer). Pongs and
//! the close frame go through the same writer, in queue order.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::queue;

use crate::broadcast::events;
use crate::connections::{CloseReason, Connection, Outbound};
use crate::disconnect::{ABNORMAL, NO_STATUS};
use crate::frames::PreparedEvent;
use crate::gateway::Gateway;

/// How long we wait to deliver our close frame to a client that is not reading.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Frames written per vectored write at most (3 slices each, under IOV_MAX).
pub(super) const BATCH: usize = 64;
/// A batch also stops once it holds this many bytes (at least one frame):
/// what a connection being closed holds while its last write gets its
/// grace is about one batch.
pub(super) const BATCH_BYTES: usize = 1024 * 1024;
/// Buffers above these are given back after a batch: an idle connection
/// keeps little, a busy one reallocates once per batch at most.
const KEEP_SCRATCH: usize = 512;
const KEEP_ITEMS: usize = 16;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

use crate::gateway::preauth::push_header;

/// A `presence` event carries the whole list, so a later one in the same
/// batch supersedes it: a client that lags behind a burst of connects gets
/// the latest list once instead of every intermediate one. No gap appears,
/// since `seq` is assigned as frames are written.
pub(super) fn drop_superseded_presence(batch: &mut Vec<Outbound>) {
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

/// Where a slice of the next write comes from.
#[derive(Clone, Copy)]
enum Part {
    /// `scratch[start..end]` (headers, seq tails, close payloads).
    Scratch(usize, usize),
    /// The payload of `batch[i]` (a response, an event's shared bytes, a pong).
    Item(usize),
}

/// One connection's frame encoder: reused buffers, the next `seq`.
pub(super) struct Encoder {
    seq: u64,
    scratch: Vec<u8>,
    parts: Vec<Part>,
    /// The slices' vector, kept empty between batches (no allocation per
    /// batch).
    iov: Vec<IoSlice<'static>>,
}

impl Encoder {
    pub(super) fn new() -> Self {
        Self {
            seq: 0,
            scratch: Vec::new(),
            parts: Vec::new(),
            iov: Vec::new(),
        }
    }

    /// Lays out `batch` as frames; stops at a `Close` and returns it. The
    /// frames laid out are `self.parts`' count of items.
    fn encode(&mut self, batch: &[Outbound]) -> (usize, Option<CloseReason>) {
        self.scratch.clear();
        self.parts.clear();
        let mut frames = 0;
        for (i, m) in batch.iter().enumerate() {
            let start = self.scratch.len();
            match m {
                Outbound::Frame(s) | Outbound::Reply(s) => {
                    push_header(&mut self.scratch, OP_TEXT, s.len());
                    self.parts.push(Part::Scratch(start, self.scratch.len()));
                    self.parts.push(Part::Item(i));
                }
                Outbound::Event(e) => {
                    // The tail first: its length is part of the header's.
                    // (Slices are ranges of the scratch buffer, so the
                    // order they sit in it does not matter.)
                    self.seq += 1;
                    PreparedEvent::push_seq_tail(&mut self.scratch, self.seq);
                    let mid = self.scratch.len();
                    push_header(&mut self.scratch, OP_TEXT, e.prefix().len() + mid - start);
                    self.parts.push(Part::Scratch(mid, self.scratch.len()));
                    self.parts.push(Part::Item(i));
                    self.parts.push(Part::Scratch(start, mid));
                }
                Outbound::Pong(p) => {
                    push_header(&mut self.scratch, OP_PONG, p.len());
                    self.parts.push(Part::Scratch(start, self.scratch.len()));
                    self.parts.push(Part::Item(i));
                }
                Outbound::Ping => {
                    push_header(&mut self.scratch, OP_PING, 0);
                    self.parts.push(Part::Scratch(start, self.scratch.len()));
                }
                Outbound::Close(r) => return (frames, Some((**r).clone())),
            }
            frames += 1;
        }
        (frames, None)
    }

    /// The slices of the laid-out batch, in order, in `into` (an empty
    /// vector: the one the previous batch used, see [`recycle`]).
    fn slices<'a>(&'a self, batch: &'a [Outbound], mut into: Vec<IoSlice<'a>>) -> Vec<IoSlice<'a>> {
        into.extend(self.parts.iter().map(|p| match *p {
            Part::Scratch(a, b) => IoSlice::new(&self.scratch[a..b]),
            Part::Item(i) => IoSlice::new(match &batch[i] {
                Outbound::Frame(s) | Outbound::Reply(s) => s.as_bytes(),
                Outbound::Event(e) => e.prefix(),
                Outbound::Pong(p) => p,
                Outbound::Ping | Outbound::Close(..) => &[],
            }),
        }));
        into
    }

    /// Gives back buffers a burst made large.
    fn trim(&mut self) {
        if self.scratch.capacity() > KEEP_SCRATCH {
            self.scratch = Vec::new();
        }
        if self.parts.capacity() > KEEP_ITEMS * 3 {
            self.parts = Vec::new();
        }
        if self.iov.capacity() > KEEP_ITEMS * 3 {
            self.iov = Vec::new();
        }
    }
}

/// Empties `v` and hands its allocation on with another lifetime (same
/// layout: the standard library collects in place), so the writer reuses
/// one vector of slices for every batch without `unsafe`.
fn recycle<'a, 'b>(mut v: Vec<IoSlice<'a>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| IoSlice::new(&[])).collect()
}

/// Responses in `batch` (each holds an in-flight slot until written).
fn replies(batch: &[Outbound]) -> usize {
    batch
        .iter()
        .filter(|m| matches!(m, Outbound::Reply(_)))
        .count()
}

/// Writes every byte of `bufs` with as few system calls as the socket
/// allows, then flushes; `bufs` is advanced past what is written, so the
/// write can be polled again after `Pending`. A poll function rather than
/// an `async fn`: its state is the two references the caller holds.
fn poll_write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut &mut [IoSlice<'_>],
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    IoSlice::advance_slices(bufs, 0);
    while !bufs.is_empty() {
        let n = ready!(Pin::new(&mut *w).poll_write_vectored(cx, bufs))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(bufs, n);
    }
    Pin::new(w).poll_flush(cx)
}

/// A close frame: the code and the reason (truncated to fit 125 bytes on
/// a character boundary); an empty one answers a close without a status.
pub(super) fn close_frame(r: &CloseReason) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + r.reason.len());
    if r.code == NO_STATUS {
        push_header(&mut out, OP_CLOSE, 0);
        return out;
    }
    let mut reason = r.reason.as_str();
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    push_header(&mut out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&r.code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

/// Owns the write half: writes queued frames in batches (one vectored
/// write and one flush per batch), assigning each event this connection's
/// next `seq`. Returns the close it sent.
///
/// Every open connection holds this future in its writer task, so it is
/// kept small: a function returning an `async move` block (an `async fn`
/// keeps its arguments twice), and the waits that are rare (a write the
/// socket cannot take at once, the close frame) are boxed instead of sizing
/// it (checked by `reader::tests::connection_futures_stay_small`).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn writer<W>(
    mut wr: W,
    mut rx: queue::Receiver<Outbound>,
    conn: Arc<Connection>,
    gw: Arc<Gateway>,
    inflight: Arc<tokio::sync::Semaphore>,
) -> impl Future<Output = Option<CloseReason>> + Send + 'static
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let mut enc = Encoder::new();
        let mut batch: Vec<Outbound> = Vec::new();
        let mut stream_ok = true;
        // The writer waits on its queue alone: a close wakes it through the
        // queue (`Connection::close_now`), so an idle connection's wait costs
        // no registration with the close signal per frame.
        let reason: Option<CloseReason> = loop {
            if let Some(c) = conn.close_reason() {
                break Some(c);
            }
            let more = rx
                .recv_many_or_wake(&mut batch, BATCH, BATCH_BYTES, Outbound::size)
                .await;
            if let Some(c) = conn.close_reason() {
                // What was drained is dropped unwritten, as if still queued;
                // its replies' in-flight slots are given back.
                inflight.add_permits(replies(&batch));
                batch.clear();
                break Some(c);
            }
            if !more {
                break None;
            }
            if batch.is_empty() {
                continue;
            }
            let batch_bytes: usize = batch.iter().map(Outbound::size).sum();
            drop_superseded_presence(&mut batch);
            let (frames, close_after) = enc.encode(&batch);
            // A close that arrives mid-write waits (bounded) for the batch to be
            // written: a frame cut short would make the close frame garbage.
            let mut closing: Option<CloseReason> = None;
            let iov = recycle(std::mem::take(&mut enc.iov));
            let mut slices = enc.slices(&batch, iov);
            let res = {
                let mut bufs: &mut [IoSlice<'_>] = &mut slices;
                let mut write = std::future::poll_fn(|cx| poll_write_all(&mut wr, &mut bufs, cx));
                // Most writes finish at once; only one that has to wait for
                // the socket also watches for a close.
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut write).poll(cx))).await {
                    Poll::Ready(r) => r,
                    Poll::Pending => {
                        Box::pin(async {
                            tokio::select! {
                            biased;
                            _ = conn.close_asked() => {
                                closing = conn.close_reason();
                                // Nothing more is written: what waits is freed now,
                                // not after the grace below (its replies' slots
                                // given back).
                                inflight.add_permits(replies(&rx.take_all()));
                                match tokio::time::timeout(CLOSE_GRACE, &mut write).await {
                                    Ok(r) => r,
                                    Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                                }
                            }
                            r = &mut write => r,
                            }
                        })
                        .await
                    }
                }
            };
            enc.iov = recycle(slices);
            // Written: responses give their in-flight slots back (even when the
            // write failed: the reader may be waiting for one to see the close),
            // events their shared bytes.
            inflight.add_permits(replies(&batch));
            batch.clear();
            if batch.capacity() > KEEP_ITEMS {
                batch = Vec::new();
            }
            enc.trim();
            gw.metrics
                .frames_out
                .fetch_add(frames as u64, Ordering::Relaxed);
            conn.written(batch_bytes);
            if res.is_err() {
                // The socket failed or a frame is cut short: no close frame can
                // follow. Report the close that was asked for, if any.
                stream_ok = false;
                break closing;
            }
            if let Some(c) = closing {
                break Some(c);
            }
            if let Some(c) = close_after {
                break Some(c);
            }
        };
        // What is still queued is never written: freed before the close frame
        // waits for a socket that may not take it.
        drop(rx);
        // 1006 is never sent on the wire (the socket vanished).
        if let Some(r) = reason.as_ref().filter(|r| stream_ok && r.code != ABNORMAL) {
            let frame = close_frame(r);
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                wr.write_all(&frame).await?;
                wr.flush().await
            }))
            .await;
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::PreparedEvent;
    use serde_json::json;

    fn event(name: &str, n: u64) -> Outbound {
        Outbound::Event(Arc::new(PreparedEvent::new(name, &json!({"n": n}), None)))
    }

    fn names(batch: &[Outbound]) -> Vec<String> {
        batch
            .iter()
            .map(|m| match m {
                Outbound::Event(e) => e.with_seq(0),
                Outbound::Frame(f) | Outbound::Reply(f) => f.to_string(),
                Outbound::Close(c) => c.code.to_string(),
                Outbound::Pong(_) => "pong".into(),
                Outbound::Ping => "ping".into(),
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

    #[test]
    fn batches_reuse_one_vector_of_slices() {
        let mut enc = Encoder::new();
        let mut first = None;
        for n in 0..3 {
            let batch = vec![event(events::MESSAGE, n), Outbound::Frame("res".into())];
            enc.encode(&batch);
            let iov = recycle(std::mem::take(&mut enc.iov));
            let slices = enc.slices(&batch, iov);
            let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains(&format!(r#""seq":{}}}"#, n + 1)), "{text}");
            assert!(text.ends_with("res"), "{text}");
            let at = slices.as_ptr() as usize;
            assert_eq!(*first.get_or_insert(at), at, "batch {n} allocated anew");
            enc.iov = recycle(slices);
        }
    }
}
