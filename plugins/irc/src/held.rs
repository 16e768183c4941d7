//! Inbound messages the gateway's message log refused (its disk below
//! `store.min_free_mb`, say), held in memory in arrival order and offered
//! again every [`RETRY_MS`]: an IRC server does not send a line twice, so a
//! message not held here would be lost. Bounded by [`MAX_MESSAGES`] and
//! [`MAX_BYTES`]; past them the oldest held message goes (and is counted).

use std::collections::VecDeque;

/// How long after a refusal the held messages are offered again.
pub const RETRY_MS: u64 = 1000;
/// The most messages held.
pub const MAX_MESSAGES: usize = 10_000;
/// The most bytes held (as [`Held::push`]'s callers count them).
pub const MAX_BYTES: usize = 8 << 20;

pub struct Held<M> {
    queue: VecDeque<(M, usize)>,
    bytes: usize,
    /// No offer before this (ms since the epoch): the last one was refused.
    retry_at: u64,
}

/// What one [`Held::flush`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Flushed {
    /// Messages the log took.
    pub delivered: usize,
    /// Why the log refused the next one, if it did; it stays held.
    pub refused: Option<String>,
}

impl<M> Default for Held<M> {
    fn default() -> Self {
        Held {
            queue: VecDeque::new(),
            bytes: 0,
            retry_at: 0,
        }
    }
}

impl<M> Held<M> {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest held message.
    pub fn front(&self) -> Option<&M> {
        self.queue.front().map(|(m, _)| m)
    }

    /// Adds `m` (of `size` bytes) behind the others; returns how many of the
    /// oldest were dropped to stay within the bounds.
    pub fn push(&mut self, m: M, size: usize) -> usize {
        self.queue.push_back((m, size));
        self.bytes += size;
        let mut dropped = 0;
        while self.queue.len() > 1 && (self.queue.len() > MAX_MESSAGES || self.bytes > MAX_BYTES) {
            if let Some((_, s)) = self.queue.pop_front() {
                self.bytes -= s;
                dropped += 1;
            }
        }
        dropped
    }

    /// Offers the held messages in order, unless a refusal less than
    /// [`RETRY_MS`] ago says to wait; stops at the first refusal.
    pub fn flush(
        &mut self,
        now_ms: u64,
        mut deliver: impl FnMut(&M) -> Result<(), String>,
    ) -> Flushed {
        let mut done = Flushed {
            delivered: 0,
            refused: None,
        };
        if now_ms < self.retry_at {
            return done;
        }
        while let Some((m, size)) = self.queue.front() {
            match deliver(m) {
                Ok(()) => {
                    self.bytes -= *size;
                    self.queue.pop_front();
                    done.delivered += 1;
                }
                Err(e) => {
                    self.retry_at = now_ms + RETRY_MS;
                    done.refused = Some(e);
                    break;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_messages_wait_and_go_in_order() {
        let mut h = Held::default();
        let mut log: Vec<u32> = Vec::new();
        h.push(1, 10);
        let f = h.flush(1000, |_| Err("disk low".into()));
        assert_eq!(f.refused.as_deref(), Some("disk low"));
        h.push(2, 10);
        h.push(3, 10);
        // Within RETRY_MS of the refusal: nothing is offered.
        let f = h.flush(1500, |m| {
            log.push(*m);
            Ok(())
        });
        assert_eq!(f.delivered, 0);
        let f = h.flush(2000, |m| {
            log.push(*m);
            Ok(())
        });
        assert_eq!(
            f,
            Flushed {
                delivered: 3,
                refused: None
            }
        );
        assert_eq!(log, vec![1, 2, 3]);
        assert!(h.is_empty());
    }

    #[test]
    fn the_oldest_go_past_the_bounds() {
        let mut h = Held::default();
        let mut dropped = 0;
        for i in 0..MAX_MESSAGES + 5 {
            dropped += h.push(i, 1);
        }
        assert_eq!((dropped, h.len()), (5, MAX_MESSAGES));
        let mut first = None;
        h.flush(0, |m| {
            first.get_or_insert(*m);
            Err("stop".into())
        });
        assert_eq!(first, Some(5));
        // By bytes: one message larger than the bound is still kept alone.
        let mut h = Held::default();
        h.push(0, MAX_BYTES / 2);
        h.push(1, MAX_BYTES / 2);
        assert_eq!(h.push(2, MAX_BYTES), 2);
        assert_eq!(h.len(), 1);
    }
}
