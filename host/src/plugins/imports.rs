//! What a plugin's host imports reach, bound when its store is made (the
//! shape of wasmtime-wasi's `WasiView` and Spin's factors): one small
//! handle per capability — the inbox, the state reporter, the outbox, the
//! key-value store — each created by the channel manager for the one channel
//! and account the instance serves. A store made to load a plugin (its
//! `info` call, `plugins check`) has none of them.
//!
//! This module may not name wasmtime or a generated type; the `bindings`
//! module of each contract version calls into these handles.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::contract::{AccountState, InboundMessage, OutboundMessage};

/// A `deliver` on its way: resolves to the message's sequence number once
/// it is durable, or to why it was not accepted.
pub type Delivering = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

/// `deliver`: where a received message enters the system.
pub trait Inbox: Send + Sync {
    fn deliver(&self, message: InboundMessage) -> Delivering;
}

/// `set-state`: what the plugin reports of its connection.
pub trait StateReporter: Send + Sync {
    fn report(&self, state: AccountState, detail: Option<String>);
}

/// `outbox-push`/`outbox-pop`/`outbox-ack`: the account's queue of messages
/// for its `run` loop.
pub trait AccountOutbox: Send + Sync {
    /// Resolves to the message's queue number once it is durable.
    fn push(&self, message: OutboundMessage) -> Writing<Result<u64, String>>;
    fn pop(&self) -> Option<(u64, OutboundMessage)>;
    fn ack(&self, seq: u64);
}

/// A host write on its way: resolves once it is durable.
pub type Writing<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `kv-*`: the key-value store of one channel (limits: [`MAX_KEY_BYTES`],
/// [`MAX_VALUE_BYTES`], claims held at most [`MAX_CLAIM_TTL_MS`]).
pub trait Kv: Send + Sync {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&self, key: &str, value: Vec<u8>) -> Writing<Result<(), String>>;
    fn delete(&self, key: &str) -> Writing<()>;
    /// Records `key` as seen for `ttl_ms` unless it already is: `true` the
    /// first time. Atomic across instances, kept across restarts.
    fn claim(&self, key: &str, ttl_ms: u64) -> Writing<Result<bool, String>>;
    fn unclaim(&self, key: &str) -> Writing<()>;
    /// Resolves once every write above is durable. Writes resolve once
    /// committed (safe from a crash of the daemon); the host settles them
    /// at the end of every call but `run`, before it uses the call's
    /// result, so nothing a call answers outruns its writes to the disk.
    fn settle(&self) -> Writing<Result<(), String>>;
}

/// Largest key and value a plugin may store.
pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest time a claim may be held (`kv-claim`'s `ttl-ms` is capped to it).
pub const MAX_CLAIM_TTL_MS: u64 = 24 * 3600 * 1000;

/// Every import of one instance, for one account of one channel.
#[derive(Clone)]
pub struct Imports {
    pub channel: String,
    pub account: String,
    pub inbox: Arc<dyn Inbox>,
    pub state: Arc<dyn StateReporter>,
    pub outbox: Arc<dyn AccountOutbox>,
    pub kv: Arc<dyn Kv>,
    /// The account's secrets, hidden in the lines its instances log
    /// (`crate::config::secret_values`).
    pub secrets: Arc<[String]>,
}

impl Imports {
    /// These imports, if they serve `account` (a plugin names the account
    /// in `deliver`, `set-state` and the outbox calls).
    pub fn of(&self, account: &str) -> Result<&Self, String> {
        if account == self.account {
            Ok(self)
        } else {
            Err(format!(
                "this instance serves account `{}` of channel {}, not `{account}`",
                self.account, self.channel
            ))
        }
    }
}
