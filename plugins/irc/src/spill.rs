//! The held messages of one account, kept in the channel's key-value store
//! as well as in memory, so that a dropped connection or a daemon restart
//! does not lose them: the next connection loads them and offers them
//! again. A queue of numbered entries between `head` and `tail`:
//! `held:<account>:<n>` is one message, `held:<account>:head` and
//! `...:tail` the bounds (u64, little-endian). Only ever written while the
//! gateway's log refuses messages.

/// One account's spilled queue.
pub struct Spill {
    prefix: String,
    head: u64,
    tail: u64,
}

/// Where a spill keeps its entries: the channel's key-value store, or (in
/// unit tests) a map.
pub trait Store {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&mut self, key: &str, value: &[u8]);
    fn delete(&mut self, key: &str);
}

/// The plugin's key-value store.
pub struct Kv;

impl Store for Kv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        switchboard_sdk::kv::get(key)
    }
    fn set(&mut self, key: &str, value: &[u8]) {
        switchboard_sdk::kv::set(key, value)
    }
    fn delete(&mut self, key: &str) {
        switchboard_sdk::kv::delete(key)
    }
}

fn read_u64(s: &impl Store, key: &str) -> u64 {
    s.get(key)
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

impl Spill {
    /// The account's queue and the entries in it with their numbers,
    /// oldest first (an entry whose write had failed is skipped).
    pub fn load(s: &impl Store, account: &str) -> (Spill, Vec<(u64, String)>) {
        let prefix = format!("held:{account}:");
        let head = read_u64(s, &format!("{prefix}head"));
        let tail = read_u64(s, &format!("{prefix}tail")).max(head);
        let entries = (head..tail)
            .filter_map(|n| {
                s.get(&format!("{prefix}{n}"))
                    .map(|b| (n, String::from_utf8_lossy(&b).into_owned()))
            })
            .collect();
        (Spill { prefix, head, tail }, entries)
    }

    /// Adds an entry at the back; returns its number.
    pub fn push(&mut self, s: &mut impl Store, entry: &str) -> u64 {
        let n = self.tail;
        s.set(&format!("{}{n}", self.prefix), entry.as_bytes());
        self.tail += 1;
        s.set(&format!("{}tail", self.prefix), &self.tail.to_le_bytes());
        n
    }

    /// Removes the entries before number `first` (delivered, or dropped to
    /// stay in bounds); `None`: every entry.
    pub fn keep_from(&mut self, s: &mut impl Store, first: Option<u64>) {
        let first = first.unwrap_or(self.tail).min(self.tail);
        if first <= self.head {
            return;
        }
        for n in self.head..first {
            s.delete(&format!("{}{n}", self.prefix));
        }
        self.head = first;
        if self.head == self.tail {
            // Empty: nothing of it stays in the store.
            s.delete(&format!("{}head", self.prefix));
            s.delete(&format!("{}tail", self.prefix));
            self.head = 0;
            self.tail = 0;
        } else {
            s.set(&format!("{}head", self.prefix), &self.head.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Map(HashMap<String, Vec<u8>>);

    impl Store for Map {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.get(key).cloned()
        }
        fn set(&mut self, key: &str, value: &[u8]) {
            self.0.insert(key.into(), value.to_vec());
        }
        fn delete(&mut self, key: &str) {
            self.0.remove(key);
        }
    }

    #[test]
    fn entries_survive_a_reload_in_order_and_leave_nothing_once_taken() {
        let mut m = Map::default();
        let (mut s, loaded) = Spill::load(&m, "a");
        assert!(loaded.is_empty());
        let n: Vec<u64> = ["one", "two", "three"]
            .iter()
            .map(|e| s.push(&mut m, e))
            .collect();
        s.keep_from(&mut m, Some(n[1]));
        // Another account's queue is its own.
        let (mut b, _) = Spill::load(&m, "b");
        b.push(&mut m, "other");
        let (mut s, loaded) = Spill::load(&m, "a");
        assert_eq!(loaded, [(1, "two".into()), (2, "three".into())]);
        let four = s.push(&mut m, "four");
        assert_eq!(four, 3);
        let (mut s, loaded) = Spill::load(&m, "a");
        assert_eq!(loaded.len(), 3);
        s.keep_from(&mut m, None);
        assert!(Spill::load(&m, "a").1.is_empty());
        assert!(
            m.0.keys().all(|k| k.starts_with("held:b:")),
            "an empty queue leaves no key: {:?}",
            m.0.keys()
        );
        b.keep_from(&mut m, None);
        assert!(m.0.is_empty());
    }

    #[test]
    fn a_lost_entry_is_skipped_and_the_rest_stay_in_step() {
        let mut m = Map::default();
        let (mut s, _) = Spill::load(&m, "a");
        for e in ["one", "two", "three"] {
            s.push(&mut m, e);
        }
        m.0.remove("held:a:0");
        let (mut s, loaded) = Spill::load(&m, "a");
        assert_eq!(loaded, [(1, "two".into()), (2, "three".into())]);
        // "two" delivered: the queue keeps "three" from number 2 on.
        s.keep_from(&mut m, Some(2));
        assert_eq!(Spill::load(&m, "a").1, [(2, "three".into())]);
    }
}
