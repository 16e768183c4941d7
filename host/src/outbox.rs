//! The host outbox behind `outbox-push`/`outbox-pop`: messages a fresh
//! `send` instance hands to the `run` loop that owns the account's
//! connection (IRC). Each queued message is one file,
//! `<state-dir>/outbox/<hex channel>/<hex account>/<seq>.json`, written
//! atomically before `push` returns. `pop` hands a message out but keeps it
//! "in flight" until `ack` removes the file; `requeue_in_flight` (called
//! before each `run` of the account starts) puts unconfirmed messages back at
//! the front. So a message `send` accepted survives `run` failures, reloads
//! and restarts or crashes of the daemon, and is sent at least once. Order is
//! the queue number's, which keeps growing across restarts.
//!
//! It knows the contract's `OutboundMessage` and implements the `AccountOutbox`
//! import; nothing else of the crate.

use crate::sync::MutexExt;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::plugins::contract::OutboundMessage;
use crate::plugins::imports::AccountOutbox;

/// Messages one account's outbox holds before `push` fails.
pub const CAPACITY: usize = 1000;

/// How often a message may be handed out and not confirmed before it is set
/// aside (`*.json.failed`): one that keeps getting the connection dropped
/// would otherwise block the account's queue for ever.
pub const MAX_ATTEMPTS: u32 = 10;

type Key = (String, String);

#[derive(Default)]
struct Account {
    queued: VecDeque<(u64, OutboundMessage)>,
    in_flight: std::collections::BTreeMap<u64, OutboundMessage>,
    /// Hand-outs without an ack so far, by queue number (this process only).
    attempts: HashMap<u64, u32>,
}

impl Account {
    fn len(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }
}

struct Queues {
    next_seq: u64,
    by_account: HashMap<Key, Account>,
}

pub struct Outbox {
    root: PathBuf,
    queues: Mutex<Queues>,
}

fn to_json(m: &OutboundMessage) -> Value {
    json!({"to": m.to, "text": m.text, "threadId": m.thread_id, "replyToId": m.reply_to_id})
}

fn from_json(v: &Value) -> Option<OutboundMessage> {
    let opt = |k: &str| v[k].as_str().map(str::to_string);
    Some(OutboundMessage {
        to: v["to"].as_str()?.to_string(),
        text: v["text"].as_str()?.to_string(),
        thread_id: opt("threadId"),
        reply_to_id: opt("replyToId"),
    })
}

/// The entries of a directory, or none when it cannot be read.
fn entries(dir: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().collect())
        .unwrap_or_default()
}

fn unhex(name: &std::ffi::OsStr) -> Option<String> {
    String::from_utf8(hex::decode(name.to_str()?).ok()?).ok()
}

impl Outbox {
    /// Opens the outbox under `state_dir`, loading what an earlier run left.
    /// A file that cannot be read is renamed to `*.bad` and reported, not
    /// dropped.
    pub fn open(state_dir: &Path) -> Outbox {
        let root = state_dir.join("outbox");
        let mut by_account: HashMap<Key, Account> = HashMap::new();
        let mut next_seq = 1;
        for c in entries(&root) {
            let Some(channel) = unhex(&c.file_name()) else {
                continue;
            };
            for a in entries(&c.path()) {
                let Some(account) = unhex(&a.file_name()) else {
                    continue;
                };
                let mut q: Vec<(u64, OutboundMessage)> = Vec::new();
                for f in entries(&a.path()) {
                    let path = f.path();
                    let Some(seq) = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".json"))
                        .and_then(|n| n.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let parsed = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .and_then(|v| from_json(&v));
                    match parsed {
                        Some(m) => {
                            next_seq = next_seq.max(seq + 1);
                            q.push((seq, m));
                        }
                        None => {
                            let bad = path.with_extension("json.bad");
                            let _ = std::fs::rename(&path, &bad);
                            tracing::error!(file = %bad.display(), "unreadable outbox message set aside");
                        }
                    }
                }
                if !q.is_empty() {
                    q.sort_by_key(|(s, _)| *s);
                    tracing::info!(channel = %channel, account = %account, messages = q.len(), "outbox messages from the last run are queued again");
                    by_account.insert(
                        (channel.clone(), account),
                        Account {
                            queued: q.into(),
                            in_flight: Default::default(),
                            attempts: Default::default(),
                        },
                    );
                }
            }
        }
        Outbox {
            root,
            queues: Mutex::new(Queues {
                next_seq,
                by_account,
            }),
        }
    }

    fn dir(&self, channel: &str, account: &str) -> PathBuf {
        self.root
            .join(hex::encode(channel))
            .join(hex::encode(account))
    }

    fn file(&self, channel: &str, account: &str, seq: u64) -> PathBuf {
        self.dir(channel, account).join(format!("{seq:020}.json"))
    }

    /// Queues `m` for the account; returns its queue number once it is on disk.
    pub fn push(&self, channel: &str, account: &str, m: OutboundMessage) -> Result<u64, String> {
        let mut qs = self.queues.guard();
        let key = (channel.to_string(), account.to_string());
        let len = qs.by_account.get(&key).map_or(0, Account::len);
        if len >= CAPACITY {
            return Err(format!(
                "outbox of {channel}/{account} is full ({CAPACITY} messages): is the account connected?"
            ));
        }
        let seq = qs.next_seq;
        let dir = self.dir(channel, account);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("outbox: create {}: {e}", dir.display()))?;
        let path = self.file(channel, account, seq);
        let tmp = dir.join(format!(".tmp-{seq}"));
        std::fs::write(&tmp, to_json(&m).to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("outbox: write {}: {e}", path.display())
            })?;
        qs.next_seq += 1;
        qs.by_account
            .entry(key)
            .or_default()
            .queued
            .push_back((seq, m));
        Ok(seq)
    }

    /// Hands out the account's oldest queued message; it stays on disk, in
    /// flight, until [`Outbox::ack`].
    pub fn pop(&self, channel: &str, account: &str) -> Option<(u64, OutboundMessage)> {
        self.with_account(channel, account, |a| {
            let (seq, m) = a.queued.pop_front()?;
            a.in_flight.insert(seq, m.clone());
            Some((seq, m))
        })?
    }

    /// Runs `f` on the account's queues, under the lock, if it has any.
    fn with_account<R>(
        &self,
        channel: &str,
        account: &str,
        f: impl FnOnce(&mut Account) -> R,
    ) -> Option<R> {
        let mut qs = self.queues.guard();
        qs.by_account
            .get_mut(&(channel.to_string(), account.to_string()))
            .map(f)
    }

    /// The message `seq` was sent: forget it.
    pub fn ack(&self, channel: &str, account: &str, seq: u64) {
        let was_in_flight = self.with_account(channel, account, |a| {
            a.attempts.remove(&seq);
            a.in_flight.remove(&seq).is_some()
        });
        if was_in_flight != Some(true) {
            return;
        }
        let path = self.file(channel, account, seq);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), "outbox: remove: {e}");
            }
        }
    }

    /// Puts the account's unconfirmed messages back at the front of its
    /// queue, oldest first; one unconfirmed [`MAX_ATTEMPTS`] times is set
    /// aside as `<seq>.json.failed` and logged instead.
    pub fn requeue_in_flight(&self, channel: &str, account: &str) {
        self.with_account(channel, account, |a| self.requeue(channel, account, a));
    }

    fn requeue(&self, channel: &str, account: &str, a: &mut Account) {
        for (seq, m) in std::mem::take(&mut a.in_flight).into_iter().rev() {
            let n = a.attempts.entry(seq).or_insert(0);
            *n += 1;
            if *n < MAX_ATTEMPTS {
                a.queued.push_front((seq, m));
                continue;
            }
            a.attempts.remove(&seq);
            let path = self.file(channel, account, seq);
            let failed = path.with_extension("json.failed");
            let _ = std::fs::rename(&path, &failed);
            tracing::error!(channel = %channel, account = %account, to = %m.to, file = %failed.display(),
                "outbox message set aside: sent {MAX_ATTEMPTS} times without being confirmed (the connection dropped each time)");
        }
    }

    /// How many messages the account has queued or in flight.
    pub fn len(&self, channel: &str, account: &str) -> usize {
        self.queues
            .guard()
            .by_account
            .get(&(channel.to_string(), account.to_string()))
            .map_or(0, Account::len)
    }
}

/// The outbox of one account, as its plugin instances see it.
pub struct AccountQueue {
    pub outbox: Arc<Outbox>,
    pub channel: String,
    pub account: String,
}

impl AccountOutbox for AccountQueue {
    fn push(&self, m: OutboundMessage) -> Result<u64, String> {
        self.outbox.push(&self.channel, &self.account, m)
    }
    fn pop(&self) -> Option<(u64, OutboundMessage)> {
        self.outbox.pop(&self.channel, &self.account)
    }
    fn ack(&self, seq: u64) {
        self.outbox.ack(&self.channel, &self.account, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str, text: &str) -> OutboundMessage {
        OutboundMessage {
            to: to.into(),
            text: text.into(),
            thread_id: None,
            reply_to_id: Some("r1".into()),
        }
    }

    #[test]
    fn survives_a_reopen_in_order_and_numbers_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path());
        let a = ob.push("irc", "default", msg("#a", "one")).unwrap();
        let b = ob.push("irc", "default", msg("#a", "two")).unwrap();
        ob.push("irc", "other", msg("#b", "elsewhere")).unwrap();
        assert!(b > a);
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!(m.text, "one");
        ob.ack("irc", "default", n);
        drop(ob);

        let ob = Outbox::open(dir.path());
        assert_eq!(ob.len("irc", "default"), 1);
        let c = ob.push("irc", "default", msg("#a", "three")).unwrap();
        assert!(c > b, "queue numbers reused after a restart");
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!((n, m.text.as_str(), m.to.as_str()), (b, "two", "#a"));
        assert_eq!(m.reply_to_id.as_deref(), Some("r1"));
        ob.ack("irc", "default", n);
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!(m.text, "three");
        ob.ack("irc", "default", n);
        assert!(ob.pop("irc", "default").is_none());
        let (n, m) = ob.pop("irc", "other").unwrap();
        assert_eq!(m.text, "elsewhere");
        ob.ack("irc", "other", n);
        drop(ob);
        // Confirmed messages are gone from disk too.
        let ob = Outbox::open(dir.path());
        assert_eq!(ob.len("irc", "default") + ob.len("irc", "other"), 0);
    }

    #[test]
    fn unconfirmed_messages_come_back_first_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path());
        for t in ["a", "b", "c"] {
            ob.push("irc", "x", msg("#r", t)).unwrap();
        }
        let (na, _) = ob.pop("irc", "x").unwrap();
        let (nb, _) = ob.pop("irc", "x").unwrap();
        ob.ack("irc", "x", na);
        ob.ack("irc", "x", na); // twice is harmless
        assert_eq!(ob.len("irc", "x"), 2);
        // The run ended before b was confirmed: b goes out again, before c.
        ob.requeue_in_flight("irc", "x");
        let (n, m) = ob.pop("irc", "x").unwrap();
        assert_eq!((n, m.text.as_str()), (nb, "b"));
        // The daemon dies with b in flight: the next one sends b and c.
        drop(ob);
        let ob = Outbox::open(dir.path());
        let texts: Vec<String> = std::iter::from_fn(|| ob.pop("irc", "x"))
            .map(|(_, m)| m.text)
            .collect();
        assert_eq!(texts, ["b", "c"]);
    }

    #[test]
    fn a_message_never_confirmed_is_set_aside_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path());
        let poison = ob.push("irc", "x", msg("#r", "poison")).unwrap();
        ob.push("irc", "x", msg("#r", "next")).unwrap();
        for _ in 0..MAX_ATTEMPTS {
            let (n, m) = ob.pop("irc", "x").unwrap();
            assert_eq!((n, m.text.as_str()), (poison, "poison"));
            ob.requeue_in_flight("irc", "x");
        }
        let (_, m) = ob.pop("irc", "x").unwrap();
        assert_eq!(m.text, "next", "the queue is unblocked");
        let failed = ob.file("irc", "x", poison).with_extension("json.failed");
        assert!(failed.exists(), "the message is kept for an operator");
        // A restart does not bring it back.
        drop(ob);
        let ob = Outbox::open(dir.path());
        assert_eq!(ob.pop("irc", "x").unwrap().1.text, "next");
    }

    #[test]
    fn a_full_outbox_refuses_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path());
        for i in 0..CAPACITY {
            ob.push("irc", "a", msg("#x", &i.to_string())).unwrap();
        }
        let e = ob.push("irc", "a", msg("#x", "over")).unwrap_err();
        assert!(e.contains("full"), "{e}");
        let first = ob.file("irc", "a", 1);
        std::fs::write(&first, b"{not json").unwrap();
        drop(ob);
        let ob = Outbox::open(dir.path());
        assert_eq!(ob.len("irc", "a"), CAPACITY - 1);
        assert!(first.with_extension("json.bad").exists());
    }
}
