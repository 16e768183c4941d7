//! A bounded single-producer-handle, single-consumer queue that costs an idle
//! connection almost nothing.
//!
//! tokio's `mpsc` allocates a block of 32 slots per channel up front (about
//! 1 KiB per connection with 32-byte items) and never gives it back. This
//! queue is a `VecDeque` behind a mutex with a `Notify`: empty, it holds no
//! allocation; a burst grows it, and the receiver shrinks it again once it
//! is drained. Pushes never wait (a full queue is the caller's problem:
//! slow consumers are closed), so the lock is held only to push or drain.
//!
//! A leaf: it imports only `sync`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::sync::MutexExt;

/// Items kept allocated after a drain; more is given back.
const KEEP: usize = 16;

struct Inner<T> {
    items: VecDeque<T>,
    /// The sender or the receiver is gone.
    closed: bool,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
    cap: usize,
}

/// Why a push did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// The sending handle (one per queue).
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving handle.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue of at most `cap` items.
pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            closed: false,
        }),
        notify: Notify::new(),
        cap: cap.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or closed.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut q = self.0.inner.guard();
            if q.closed {
                return Err(TrySendError::Closed(item));
            }
            if q.items.len() >= self.0.cap {
                return Err(TrySendError::Full(item));
            }
            q.items.push_back(item);
        }
        self.0.notify.notify_one();
        Ok(())
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.0.inner.guard().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn max_capacity(&self) -> usize {
        self.0.cap
    }

    /// Wakes the receiver without an item (it has something else to
    /// look at: a close). See [`Receiver::recv_many_or_wake`].
    pub fn wake(&self) {
        self.0.notify.notify_one();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.inner.guard().closed = true;
        self.0.notify.notify_one();
    }
}

impl<T> Receiver<T> {
    /// Waits for items and moves up to `max` of them into `out`; `false`
    /// once the sender is gone and nothing is left.
    pub async fn recv_many(&mut self, out: &mut Vec<T>, max: usize) -> bool {
        loop {
            if let Some(more) = self.drain(out, max) {
                return more;
            }
            // A push between the check and here leaves a permit: no wake-up is lost.
            self.0.notify.notified().await;
        }
    }

    /// Moves up to `max` items into `out`: `Some(true)` if there were
    /// any, `Some(false)` if none and the sender is gone, `None` if none.
    fn drain(&mut self, out: &mut Vec<T>, max: usize) -> Option<bool> {
        self.drain_weighed(out, max, usize::MAX, |_| 0)
    }

    /// [`Receiver::drain`], stopping too once the items taken weigh
    /// `max_weight` or more (at least one is taken).
    fn drain_weighed(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        max_weight: usize,
        weigh: impl Fn(&T) -> usize,
    ) -> Option<bool> {
        let mut q = self.0.inner.guard();
        if !q.items.is_empty() {
            let mut n = 0;
            let mut weight = 0usize;
            for item in q.items.iter().take(max) {
                if n > 0 && weight >= max_weight {
                    break;
                }
                weight = weight.saturating_add(weigh(item));
                n += 1;
            }
            out.extend(q.items.drain(..n));
            if q.items.is_empty() && q.items.capacity() > KEEP {
                q.items = VecDeque::new();
            }
            return Some(true);
        }
        q.closed.then_some(false)
    }

    /// Like [`Receiver::recv_many`], but also returns (`true`, with `out`
    /// perhaps empty) when woken by [`Sender::wake`] (or by a stale
    /// wake-up: the caller re-checks what it waits for and calls again).
    /// Items are taken while they weigh less than `max_weight` together
    /// (at least one), so a batch of big items is one item.
    ///
    /// Every idle connection's writer waits in this future, so it holds only
    /// its arguments once and the wait (an `async fn` would hold them twice).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn recv_many_or_wake<'a>(
        &'a mut self,
        out: &'a mut Vec<T>,
        max: usize,
        max_weight: usize,
        weigh: impl Fn(&T) -> usize + 'a,
    ) -> impl Future<Output = bool> + 'a {
        async move {
            if let Some(more) = self.drain_weighed(out, max, max_weight, &weigh) {
                return more;
            }
            self.0.notify.notified().await;
            self.drain_weighed(out, max, max_weight, &weigh)
                .unwrap_or(true)
        }
    }

    /// Takes every item queued now (a connection closing drops them unwritten).
    pub fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.0.inner.guard().items).into()
    }

    /// One item if there is one (tests).
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.inner.guard().items.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut q = self.0.inner.guard();
        q.closed = true;
        // What was never written is freed now, not when the sender goes.
        q.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_ordered_and_closed() {
        let (tx, mut rx) = channel(3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(9), Err(TrySendError::Full(9)));
        let mut out = Vec::new();
        assert!(rx.recv_many(&mut out, 2).await);
        assert_eq!(out, [0, 1]);
        assert!(rx.recv_many(&mut out, 8).await);
        assert_eq!(out, [0, 1, 2]);
        // A waiting receiver is woken by a push.
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            let got = rx.recv_many(&mut out, 8).await;
            (got, out, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        let (got, out, rx) = waiter.await.unwrap();
        assert!(got);
        assert_eq!(out, [7]);
        drop(rx);
        assert_eq!(tx.try_send(8), Err(TrySendError::Closed(8)));
    }

    #[tokio::test]
    async fn a_dropped_sender_ends_the_receiver() {
        let (tx, mut rx) = channel::<u8>(2);
        tx.try_send(1).unwrap();
        drop(tx);
        let mut out = Vec::new();
        assert!(rx.recv_many(&mut out, 8).await);
        assert!(!rx.recv_many(&mut out, 8).await);
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = channel(1000);
        for i in 0..500 {
            tx.try_send(i).unwrap();
        }
        let mut out = Vec::new();
        while out.len() < 500 {
            rx.recv_many(&mut out, 64).await;
        }
        assert_eq!(rx.0.inner.guard().items.capacity(), 0);
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_weight_and_takes_one_item_at_least() {
        let (tx, mut rx) = channel(10);
        for w in [5usize, 100, 1, 1, 1] {
            tx.try_send(w).unwrap();
        }
        let mut out = Vec::new();
        rx.recv_many_or_wake(&mut out, 8, 10, |w| *w).await;
        assert_eq!(out, [5, 100], "taken while under 10");
        out.clear();
        rx.recv_many_or_wake(&mut out, 2, 10, |w| *w).await;
        assert_eq!(out, [1, 1], "and at most `max`");
        let (tx, mut rx) = channel(10);
        tx.try_send(1000usize).unwrap();
        tx.try_send(1).unwrap();
        out.clear();
        rx.recv_many_or_wake(&mut out, 8, 10, |w| *w).await;
        assert_eq!(out, [1000], "one item, however heavy");
    }

    #[tokio::test]
    async fn a_wake_returns_a_waiting_receiver_empty_handed() {
        let (tx, mut rx) = channel::<u8>(2);
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            let got = rx.recv_many_or_wake(&mut out, 8, usize::MAX, |_| 0).await;
            (got, out, rx)
        });
        tokio::task::yield_now().await;
        tx.wake();
        let (got, out, mut rx) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("a wake ends the wait")
            .unwrap();
        assert!(got);
        assert!(out.is_empty());
        // Items still come first, and a gone sender still ends it.
        tx.try_send(3).unwrap();
        let mut out = Vec::new();
        assert!(rx.recv_many_or_wake(&mut out, 8, usize::MAX, |_| 0).await);
        assert_eq!(out, [3]);
        drop(tx);
        assert!(!rx.recv_many_or_wake(&mut out, 8, usize::MAX, |_| 0).await);
    }
}
