//! Presence: who is connected, bounded the way OpenClaw's gateway bounds its
//! system-presence list.
//!
//! Entries are keyed by device id, else instance id, else host (trimmed,
//! lowercased): several sockets of one instance are one entry. An entry is
//! refreshed when one of its sockets connects or is active (at most once per
//! [`PresenceBook::refresh_every`]), expires `ttl` after its last refresh, and
//! past `max` entries the least recently refreshed goes first. An entry whose
//! last socket closes is removed at once. The gateway's own entry is always
//! first and never counted, expired or evicted. The rest are newest first.
//!
//! The list is serialised once per change and shared (hello-ok snapshots,
//! `presence` events, `system-presence`); a refresh that only moves an
//! entry's `ts` re-serialises lazily and does not count as a change (no
//! event, same state version), so active clients cost no broadcasts.
//!
//! A leaf: it imports only `sync`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::sync::MutexExt;

/// One entry of `system-presence` (the protocol's `PresenceEntry`).
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub host: String,
    pub ip: String,
    pub version: String,
    pub platform: String,
    pub mode: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub text: String,
    pub ts: u64,
    pub online_since: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_identifier: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Set by the book: its refresh count when this entry was last refreshed.
    #[serde(skip)]
    pub refreshed: u64,
    /// Set by the book: this entry as JSON, kept until the entry changes,
    /// so that a new list (one per connect of a new instance) is these
    /// pieces copied, not 200 entries serialised again.
    #[serde(skip)]
    pub json: Option<Box<RawValue>>,
}

impl Entry {
    /// The key OpenClaw uses: device id, else instance id, else host.
    pub fn key(&self) -> String {
        let k = self
            .device_id
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .or(self.instance_id.as_deref().filter(|s| !s.trim().is_empty()))
            .unwrap_or(&self.host);
        k.trim().to_lowercase()
    }
}

struct Book {
    /// Listed entries (at most `max`), by key.
    entries: HashMap<String, Entry>,
    /// Open sockets per key (listed or not), so that an evicted or expired
    /// instance comes back on its next refresh and leaves with its last socket.
    sockets: HashMap<String, u32>,
    /// The serialised list; `None` when it must be rebuilt.
    cache: Option<Arc<RawValue>>,
    /// Counts refreshes: orders entries refreshed in the same millisecond.
    clock: u64,
}

/// The bounded presence list.
pub struct PresenceBook {
    /// The gateway's own entry, serialised once.
    me_json: Box<RawValue>,
    max: usize,
    ttl_ms: u64,
    inner: Mutex<Book>,
}

/// What a call changed in the list's membership or content.
pub type Changed = bool;

impl PresenceBook {
    /// `me` is the gateway's own entry; at most `max` others, each kept
    /// `ttl` after its last refresh.
    pub fn new(me: Entry, max: usize, ttl: Duration) -> Self {
        let me_json = piece(&me);
        Self {
            me_json,
            max: max.max(1),
            ttl_ms: ttl.as_millis() as u64,
            inner: Mutex::new(Book {
                entries: HashMap::new(),
                sockets: HashMap::new(),
                cache: None,
                clock: 0,
            }),
        }
    }

    /// How often an active socket refreshes its entry: a fifth of the TTL,
    /// at most a minute.
    pub fn refresh_every(&self) -> Duration {
        Duration::from_millis((self.ttl_ms / 5).clamp(1, 60_000))
    }

    /// A socket of `entry`'s instance connected at `now_ms`: the entry is
    /// (re)listed with `entry`'s fields. Returns the key to leave with, and
    /// whether the list's membership changed (another socket of an instance
    /// already listed only refreshes it).
    pub fn join(&self, mut entry: Entry, now_ms: u64) -> (String, Changed) {
        let key = entry.key();
        entry.ts = now_ms;
        let mut b = self.inner.guard();
        *b.sockets.entry(key.clone()).or_insert(0) += 1;
        let listed = match b.entries.get(&key) {
            Some(old) => {
                entry.online_since = old.online_since.min(entry.online_since);
                true
            }
            None => false,
        };
        self.insert(&mut b, key.clone(), entry);
        (key, !listed)
    }

    /// A socket of `key` was active at `now_ms`. An entry still listed only
    /// moves its `ts` (not a change); one evicted or expired comes back
    /// (a change), built by `entry`.
    pub fn refresh(&self, key: &str, now_ms: u64, entry: impl FnOnce() -> Entry) -> Changed {
        let mut b = self.inner.guard();
        if !b.sockets.contains_key(key) {
            return false;
        }
        b.clock += 1;
        let clock = b.clock;
        if let Some(e) = b.entries.get_mut(key) {
            e.ts = now_ms;
            e.refreshed = clock;
            e.json = None;
            b.cache = None;
            return false;
        }
        let mut e = entry();
        e.ts = now_ms;
        self.insert(&mut b, key.to_string(), e);
        true
    }

    /// A socket of `key` closed; its entry goes with its last socket.
    pub fn leave(&self, key: &str) -> Changed {
        let mut b = self.inner.guard();
        let Some(n) = b.sockets.get_mut(key) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        b.sockets.remove(key);
        let removed = b.entries.remove(key).is_some();
        if removed {
            b.cache = None;
        }
        removed
    }

    /// Drops entries not refreshed for the TTL.
    pub fn prune(&self, now_ms: u64) -> Changed {
        let mut b = self.inner.guard();
        let before = b.entries.len();
        let ttl = self.ttl_ms;
        b.entries.retain(|_, e| now_ms.saturating_sub(e.ts) < ttl);
        let changed = b.entries.len() != before;
        if changed {
            b.cache = None;
        }
        changed
    }

    /// Entries listed besides the gateway's own.
    pub fn len(&self) -> usize {
        self.inner.guard().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list as JSON (the gateway first, then newest first), serialised
    /// once per change and shared.
    pub fn list(&self) -> Arc<RawValue> {
        let mut b = self.inner.guard();
        if let Some(c) = &b.cache {
            return c.clone();
        }
        for e in b.entries.values_mut() {
            if e.json.is_none() {
                e.json = Some(piece(e));
            }
        }
        let mut list: Vec<&Entry> = b.entries.values().collect();
        list.sort_by_key(|e| std::cmp::Reverse((e.ts, e.refreshed)));
        let mut raw: Vec<&RawValue> = Vec::with_capacity(list.len() + 1);
        raw.push(&self.me_json);
        raw.extend(list.iter().filter_map(|e| e.json.as_deref()));
        // Pieces serde_json wrote itself, joined by serde_json: valid JSON
        // without parsing it again.
        let joined: Arc<RawValue> = serde_json::value::to_raw_value(&raw)
            .map(Arc::from)
            .unwrap_or_else(|_| empty_list());
        b.cache = Some(joined.clone());
        joined
    }

    fn insert(&self, b: &mut Book, key: String, mut entry: Entry) {
        b.clock += 1;
        entry.refreshed = b.clock;
        if !b.entries.contains_key(&key) && b.entries.len() >= self.max {
            // The least recently refreshed goes (O(max), max is small).
            if let Some(oldest) = b
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.ts, e.refreshed))
                .map(|(k, _)| k.clone())
            {
                b.entries.remove(&oldest);
            }
        }
        entry.json = None; // serialised afresh by the next list
        b.entries.insert(key, entry);
        b.cache = None;
    }
}

/// One entry as JSON. (An entry is strings and numbers: it always
/// serialises; the `null` fallback is never written.)
fn piece(e: &Entry) -> Box<RawValue> {
    serde_json::value::to_raw_value(e).unwrap_or_default()
}

fn empty_list() -> Arc<RawValue> {
    Arc::from(RawValue::from_string("[]".to_string()).expect("[] is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn entry(instance: &str) -> Entry {
        Entry {
            host: "h".into(),
            instance_id: Some(instance.into()),
            ..Entry::default()
        }
    }

    fn book(max: usize) -> PresenceBook {
        let me = Entry {
            mode: "gateway".into(),
            ..entry("gw")
        };
        PresenceBook::new(me, max, Duration::from_millis(1000))
    }

    fn instances(b: &PresenceBook) -> Vec<String> {
        let v: Value = serde_json::from_str(b.list().get()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["instanceId"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn keyed_by_device_then_instance_then_host() {
        let mut e = entry("Inst ");
        assert_eq!(e.key(), "inst");
        e.device_id = Some("DEV".into());
        assert_eq!(e.key(), "dev");
        let e = Entry {
            host: "Laptop".into(),
            ..Entry::default()
        };
        assert_eq!(e.key(), "laptop");
    }

    #[test]
    fn bounded_lru_with_the_gateway_first() {
        let b = book(3);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            b.join(entry(name), i as u64 + 1);
        }
        // `a` was refreshed least recently: evicted. Newest first.
        assert_eq!(instances(&b), ["gw", "d", "c", "b"]);
        // `b` refreshes, so `c` is now the oldest and goes for `e`.
        assert!(!b.refresh("b", 10, || entry("b")));
        b.join(entry("e"), 11);
        assert_eq!(instances(&b), ["gw", "e", "b", "d"]);
        // The evicted `a` still has a socket: its activity brings it back.
        assert!(b.refresh("a", 12, || entry("a")));
        assert_eq!(instances(&b)[1], "a");
    }

    #[test]
    fn several_sockets_are_one_entry_and_leave_with_the_last() {
        let b = book(10);
        let (k, changed) = b.join(entry("x"), 1);
        assert!(changed);
        assert!(!b.join(entry("X"), 2).1, "a second socket changes nothing");
        assert_eq!(b.len(), 1);
        assert!(!b.leave(&k));
        assert_eq!(b.len(), 1);
        assert!(b.leave(&k));
        assert!(b.is_empty());
        assert!(!b.leave(&k));
    }

    /// The list is rebuilt from each entry's kept serialisation: every
    /// change to an entry must reach the next list.
    #[test]
    fn each_change_to_an_entry_reaches_the_list() {
        let b = book(10);
        let field = |b: &PresenceBook, i: usize, f: &str| -> Value {
            let v: Value = serde_json::from_str(b.list().get()).unwrap();
            v[i][f].clone()
        };
        let (k, _) = b.join(entry("x"), 5);
        b.join(entry("y"), 6);
        assert_eq!(field(&b, 2, "ts"), 5);
        // A refresh moves only `ts` (and the order).
        assert!(!b.refresh(&k, 9, || entry("x")));
        assert_eq!(
            (field(&b, 1, "instanceId"), field(&b, 1, "ts")),
            ("x".into(), 9.into())
        );
        // Another socket of the instance joins with new fields.
        let newer = Entry {
            version: "2.0".into(),
            ..entry("x")
        };
        b.join(newer, 10);
        assert_eq!(field(&b, 1, "version"), "2.0");
        // The gateway's own entry stays first, as serialised at the start.
        assert_eq!(field(&b, 0, "mode"), "gateway");
        b.leave(&k);
        b.leave(&k);
        assert_eq!(instances(&b), ["gw", "y"]);
        let kept = b
            .inner
            .guard()
            .entries
            .values()
            .filter(|e| e.json.is_some())
            .count();
        assert_eq!(kept, 1, "pieces of gone entries are dropped");
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let b = book(10);
        b.join(entry("old"), 1_000);
        b.join(entry("new"), 1_600);
        assert!(!b.prune(1_900));
        assert!(b.prune(2_000));
        assert_eq!(instances(&b), ["gw", "new"]);
        // A refresh of an expired instance with an open socket relists it.
        assert!(b.refresh("old", 2_100, || entry("old")));
        assert_eq!(b.len(), 2);
    }
}
