//! The writer task: owns the sink and drains the bounded queue of
//! pre-serialised frames in batches, assigning each event its `seq`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::broadcast::events;
use crate::connections::{CloseReason, Outbound};
use crate::gateway::Gateway;

/// How long we wait to deliver our close frame to a client that is not reading.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Frames written per flush at most.
pub(super) const BATCH: usize = 64;

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

/// Owns the sink: writes queued frames in batches (one flush per batch),
/// assigning each event this connection's next `seq`. Returns the close it sent.
pub(super) async fn writer<S>(
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
    if let Some(r) = reason
        .as_ref()
        .filter(|r| !crate::disconnect::Disconnect::is_local_only(r.code))
    {
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
