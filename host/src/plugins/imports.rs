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
use super::kv::KvStore;

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
    fn push(&self, message: OutboundMessage) -> Result<u64, String>;
    fn pop(&self) -> Option<(u64, OutboundMessage)>;
    fn ack(&self, seq: u64);
}

/// `kv-*`: the key-value store of one channel.
#[derive(Clone)]
pub struct ChannelKv {
    store: Arc<KvStore>,
    channel: String,
}

impl ChannelKv {
    pub fn new(store: Arc<KvStore>, channel: &str) -> Self {
        Self {
            store,
            channel: channel.to_string(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.store.get(&self.channel, key)
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.store.set(&self.channel, key, value)
    }

    pub fn delete(&self, key: &str) {
        self.store.delete(&self.channel, key)
    }

    pub fn claim(&self, key: &str, ttl_ms: u64) -> Result<bool, String> {
        self.store
            .claim(&self.channel, key, ttl_ms, crate::now_ms())
    }

    pub fn unclaim(&self, key: &str) {
        self.store.unclaim(&self.channel, key)
    }
}

/// Every import of one instance, for one account of one channel.
#[derive(Clone)]
pub struct Imports {
    pub channel: String,
    pub account: String,
    pub inbox: Arc<dyn Inbox>,
    pub state: Arc<dyn StateReporter>,
    pub outbox: Arc<dyn AccountOutbox>,
    pub kv: ChannelKv,
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
