//! When a sent message may leave the outbox. Bytes written to the socket
//! are only in the kernel: if the connection dies, the server may never
//! have read them. A server answers a PING after it has read every line
//! before it (one connection's lines are handled in order), so a message
//! is acked to the host only once a PING written after it is answered.
//! Unconfirmed messages are handed out again on the next connection (at
//! least once: the server may have read one whose PONG was lost).

use std::collections::VecDeque;

/// Messages written on one connection and not yet confirmed, and the PINGs
/// asking. Counted from the connection's start: a PING's token is the
/// number of messages written before it, so its PONG confirms that many.
#[derive(Default)]
pub struct Confirm {
    /// Queue numbers written and not confirmed, oldest first.
    written: VecDeque<u64>,
    /// Messages written on this connection, confirmed, and asked about.
    total: u64,
    confirmed: u64,
    asked: u64,
}

/// A PING is sent after this many unconfirmed messages even while more
/// are queued, so that a long queue is not all handed out again when the
/// connection drops.
pub const ASK_EVERY: u64 = 16;

/// The prefix of this plugin's PING tokens.
pub const TOKEN_PREFIX: &str = "sb-";

impl Confirm {
    /// A message's lines are all written.
    pub fn written(&mut self, seq: u64) {
        self.written.push_back(seq);
        self.total += 1;
    }

    /// Whether a PING is due: something is unasked and the queue is empty
    /// (`idle`) or [`ASK_EVERY`] are.
    pub fn due(&self, idle: bool) -> bool {
        let unasked = self.total - self.asked;
        unasked > 0 && (idle || unasked >= ASK_EVERY)
    }

    /// The token of the PING to write now, if one is due.
    pub fn ask(&mut self, idle: bool) -> Option<String> {
        if !self.due(idle) {
            return None;
        }
        self.asked = self.total;
        Some(format!("{TOKEN_PREFIX}{}", self.total))
    }

    /// A PONG's token: the queue numbers it confirms, oldest first (none
    /// for a token that is not ours).
    pub fn pong(&mut self, token: &str) -> Vec<u64> {
        let Some(n) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return Vec::new();
        };
        // Never past what was written, whatever the server says.
        let upto = n.min(self.total);
        let mut out = Vec::new();
        while self.confirmed < upto {
            match self.written.pop_front() {
                Some(seq) => out.push(seq),
                None => break,
            }
            self.confirmed += 1;
        }
        out
    }

    /// Messages written and not confirmed.
    #[cfg(test)]
    pub fn unconfirmed(&self) -> usize {
        self.written.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_confirms_what_was_written_before_its_ping() {
        let mut c = Confirm::default();
        assert_eq!(c.ask(true), None, "nothing written, nothing to ask");
        c.written(7);
        c.written(8);
        assert_eq!(c.ask(false), None, "more is queued: ask later");
        let t = c.ask(true).unwrap();
        assert_eq!(t, "sb-2");
        assert_eq!(c.ask(true), None, "asked already");
        c.written(9);
        let t2 = c.ask(true).unwrap();
        assert_eq!(c.pong("someone-else"), Vec::<u64>::new());
        assert_eq!(c.pong(&t), vec![7, 8]);
        assert_eq!(c.unconfirmed(), 1);
        assert_eq!(
            c.pong(&t),
            Vec::<u64>::new(),
            "a repeated PONG confirms nothing more"
        );
        assert_eq!(c.pong(&t2), vec![9]);
        assert_eq!(c.unconfirmed(), 0);
    }

    #[test]
    fn a_long_queue_is_asked_about_every_few_messages() {
        let mut c = Confirm::default();
        for seq in 0..ASK_EVERY - 1 {
            c.written(seq);
            assert_eq!(c.ask(false), None);
        }
        c.written(ASK_EVERY - 1);
        assert_eq!(c.ask(false), Some(format!("sb-{ASK_EVERY}")));
    }

    #[test]
    fn a_lying_server_cannot_confirm_what_was_not_written() {
        let mut c = Confirm::default();
        c.written(1);
        assert_eq!(c.pong("sb-1000"), vec![1]);
        c.written(2);
        assert_eq!(c.pong("sb-1000"), vec![2]);
        assert_eq!(c.pong("sb-x"), Vec::<u64>::new());
    }
}
