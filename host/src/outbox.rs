//! The host outbox behind `outbox-push`/`outbox-pop`: messages a fresh
//! `send` instance hands to the `run` loop that owns the account's
//! connection (IRC). Each queued message is one file,
//! `<state-dir>/outbox/<hex channel>/<hex account>/<seq>.json`, written
//! atomically before `push` returns and removed by `pop`, so a message that
//! `send` accepted survives a restart or crash of the daemon until a `run`
//! loop takes it. Order is the queue number's, which keeps growing across
//! restarts.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::plugins::runtime::OutboundMessage;

/// Messages one account's outbox holds before `push` fails.
pub const CAPACITY: usize = 1000;

type Key = (String, String);

struct Queues {
    next_seq: u64,
    by_account: HashMap<Key, VecDeque<(u64, OutboundMessage)>>,
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
        let mut by_account: HashMap<Key, VecDeque<(u64, OutboundMessage)>> = HashMap::new();
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
                    by_account.insert((channel.clone(), account), q.into());
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
        let mut qs = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let key = (channel.to_string(), account.to_string());
        let len = qs.by_account.get(&key).map_or(0, VecDeque::len);
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
        qs.by_account.entry(key).or_default().push_back((seq, m));
        Ok(seq)
    }

    /// Takes the account's oldest message off the queue (and off the disk).
    pub fn pop(&self, channel: &str, account: &str) -> Option<(u64, OutboundMessage)> {
        let mut qs = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, m) = qs
            .by_account
            .get_mut(&(channel.to_string(), account.to_string()))?
            .pop_front()?;
        let path = self.file(channel, account, seq);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), "outbox: remove: {e}");
            }
        }
        Some((seq, m))
    }

    /// How many messages wait for the account.
    pub fn len(&self, channel: &str, account: &str) -> usize {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_account
            .get(&(channel.to_string(), account.to_string()))
            .map_or(0, VecDeque::len)
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
        assert_eq!(ob.pop("irc", "default").unwrap().1.text, "one");
        drop(ob);

        let ob = Outbox::open(dir.path());
        assert_eq!(ob.len("irc", "default"), 1);
        let c = ob.push("irc", "default", msg("#a", "three")).unwrap();
        assert!(c > b, "queue numbers reused after a restart");
        let (n, m) = ob.pop("irc", "default").unwrap();
        assert_eq!((n, m.text.as_str(), m.to.as_str()), (b, "two", "#a"));
        assert_eq!(m.reply_to_id.as_deref(), Some("r1"));
        assert_eq!(ob.pop("irc", "default").unwrap().1.text, "three");
        assert!(ob.pop("irc", "default").is_none());
        assert_eq!(ob.pop("irc", "other").unwrap().1.text, "elsewhere");
        drop(ob);
        // Popped messages are gone from disk too.
        let ob = Outbox::open(dir.path());
        assert_eq!(ob.len("irc", "default") + ob.len("irc", "other"), 0);
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
