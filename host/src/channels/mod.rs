//! The channel manager: messaging-channel accounts from `[channels.<name>]`.
//! This file holds the manager's state and its lookups; `lifecycle`
//! (start = `validate` then the `run` loop, restarted with backoff; stop =
//! cancel), `send` (resolve, idempotency, send, webhooks, `SendError`),
//! `inbox` (where a received message enters the system) and `status` (each
//! account's state, and what `channels.status` and `health` show) add to
//! it. A plugin instance reaches the manager only through the handles
//! [`ChannelManager::target`] binds to its store for one account.
//!
//! Plugin code always runs on the plugin runtime; a `run` loop is one task
//! there, cancelled by aborting it (which drops its store).
//!
//! It may use `plugins`, `outbox`, `broadcast` and `config`; it does not know
//! the gateway or the protocol's error shapes (`gateway::methods` maps its
//! errors).

mod inbox;
mod kv;
mod layout;
mod lifecycle;
mod send;
mod status;

pub use send::{SendError, SendReceipt};
pub use status::{
    AccountSnapshot, ChannelEntry, ChannelLabels, ChannelOrder, ChannelsSnapshot, HealthChannels,
};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};

use crate::broadcast::Broadcaster;
use crate::config::ChannelConfig;
use crate::outbox::Outbox;
use crate::plugins::contract::Account;
use crate::plugins::{Plugin, PluginManager, Target};
use crate::store::{HistoryQuery, MessageLog, Page, StateStore, StoreError};
use crate::sync::RwLockExt;
use inbox::Inbox;
use layout::{Handles, Layout};
use status::StatusBoard;

/// Backoff of a failing `run` loop: 1 s doubling to 5 min.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A `run` that lasted this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);

type Key = (String, String);
/// idempotency key → the result of the call in flight, once there is one.
type InFlight = HashMap<String, Arc<OnceCell<send::Receipt>>>;

/// `messages.history` pages read at once, whoever asks: each holds a
/// blocking thread, a reader connection of the log and up to
/// `store::sqlite::HISTORY_PAGE_BYTES` of messages while it is read. More
/// requests wait their turn (the store keeps as many reader connections).
pub const HISTORY_READS: usize = 4;

pub struct ChannelManager {
    plugins: Arc<PluginManager>,
    board: Arc<StatusBoard>,
    inbox: Arc<Inbox>,
    /// Running `run` loops.
    tasks: Mutex<HashMap<Key, tokio::task::AbortHandle>>,
    /// Accounts an operator or the config wants running.
    wanted: Mutex<std::collections::HashSet<Key>>,
    /// Keyed calls (`send`, actions) in flight, by idempotency key.
    in_flight: Mutex<InFlight>,
    /// History pages being read at once ([`HISTORY_READS`]).
    history_reads: tokio::sync::Semaphore,
    /// Receipts of sends that went out and whose record the log could not
    /// take yet, by idempotency key (`send::MAX_UNRECORDED` at most).
    unrecorded: Mutex<HashMap<String, send::Unrecorded>>,
    /// Sends cut off after their plugin reached out whose mark the log
    /// could not take, by idempotency key: their retries are refused for
    /// this run (the next start marks them interrupted anyway).
    cut_off: Mutex<HashMap<String, send::CutOff>>,
    /// Messages `send` handed to a `run` loop (`outbox-push`/`outbox-pop`),
    /// kept on disk until taken.
    outbox: Arc<Outbox>,
    /// The `[channels]` in force and what each plugin call needs, prepared
    /// once per account rather than on every call (swapped by a reload).
    layout: RwLock<Arc<Layout>>,
    /// What a reload binds the handles of new accounts to.
    handles: Handles,
}

/// A call's plugin, its target and the account it is for.
type Call = (Arc<Plugin>, Target, Account);

impl ChannelManager {
    pub fn new(
        config: BTreeMap<String, ChannelConfig>,
        plugins: Arc<PluginManager>,
        broadcaster: Arc<Broadcaster>,
        health: Arc<Notify>,
        outbox: Outbox,
        log: Arc<dyn MessageLog>,
        kv_store: Arc<dyn StateStore>,
    ) -> Arc<Self> {
        let state = config
            .iter()
            .map(|(name, c)| (name.clone(), layout::board_entry(name, c)))
            .collect();
        let board = Arc::new(StatusBoard::new(state, health));
        let handles = Handles {
            inbox: Arc::new(Inbox::new(log, broadcaster, board.clone())),
            board: board.clone(),
            outbox: Arc::new(outbox),
            kv_store,
        };
        let layout = Layout::build(config, &handles);
        Arc::new(Self {
            layout: RwLock::new(Arc::new(layout)),
            plugins,
            inbox: handles.inbox.clone(),
            outbox: handles.outbox.clone(),
            board,
            tasks: Mutex::new(HashMap::new()),
            wanted: Mutex::new(Default::default()),
            in_flight: Mutex::new(HashMap::new()),
            history_reads: tokio::sync::Semaphore::new(HISTORY_READS),
            unrecorded: Mutex::new(HashMap::new()),
            cut_off: Mutex::new(HashMap::new()),
            handles,
        })
    }

    /// The `[channels]` in force now.
    fn layout(&self) -> Arc<Layout> {
        self.layout.reader().clone()
    }

    /// `messages.history`: a page of the message log, read on a blocking
    /// thread once one of [`HISTORY_READS`] permits is free. Waiting costs
    /// no thread: a burst of requests from any number of connections holds
    /// at most that many threads, reader connections and pages at once.
    pub async fn history(&self, q: HistoryQuery) -> Result<Page, StoreError> {
        let _permit = self
            .history_reads
            .acquire()
            .await
            .map_err(|_| StoreError("the message log is closed".into()))?;
        let inbox = self.inbox.clone();
        tokio::task::spawn_blocking(move || inbox.history(&q))
            .await
            .map_err(|e| StoreError(format!("reading the message log failed: {e}")))?
    }

    /// Why the message log cannot be written now, if it cannot.
    pub fn store_failure(&self) -> Option<String> {
        self.inbox.failure()
    }

    /// The channels refused for their share of the log near the disk's
    /// floor, with why.
    pub fn refused_shares(&self) -> Vec<(String, String)> {
        self.inbox.refused_shares()
    }

    /// `f` on the board as it is, under its read lock (no copy): for
    /// serialising `health` straight from it.
    pub fn with_board<R>(&self, f: impl FnOnce(&BTreeMap<String, ChannelEntry>) -> R) -> R {
        f(&self.board.read())
    }

    pub fn snapshot(&self) -> ChannelsSnapshot {
        ChannelsSnapshot {
            channels: self.board.read().clone(),
        }
    }

    /// [`ChannelManager::snapshot`] with each account's outbox depth, for
    /// `channels.status`.
    pub fn status_snapshot(&self) -> ChannelsSnapshot {
        let mut snap = self.snapshot();
        for (channel, e) in &mut snap.channels {
            for (account, a) in &mut e.accounts {
                a.outbox = self.outbox.depth(channel, account);
            }
        }
        snap
    }

    fn update(&self, channel: &str, account: &str, f: impl FnOnce(&mut AccountSnapshot)) {
        self.board.update(channel, account, f)
    }

    /// The plugin serving `channel`, the target a call of it for `account`
    /// gets (its import handles and network grants) and the account's
    /// settings: everything prepared, nothing parsed or serialised here.
    /// The error says which of channel, account or plugin is missing.
    fn call_for(&self, channel: &str, account: &str) -> Result<Call, SendError> {
        let layout = self.layout();
        let bc = layout
            .bound
            .get(channel)
            .ok_or_else(|| SendError::UnknownTarget(format!("unknown channel {channel}")))?;
        let ba = bc.accounts.get(account).ok_or_else(|| {
            SendError::UnknownTarget(format!("unknown account {account} of channel {channel}"))
        })?;
        let plugin = self
            .plugins
            .get(&bc.plugin)
            .ok_or_else(|| SendError::PluginNotLoaded {
                channel: channel.to_string(),
                plugin: bc.plugin.clone(),
            })?;
        let network = match &bc.network {
            Some(n) => n.clone(),
            None => plugin.loaded.network.clone(),
        };
        let target = Target {
            imports: ba.imports.clone(),
            network,
            trust: bc.trust.clone(),
        };
        Ok((plugin, target, ba.account.clone()))
    }

    /// `text` (a plugin's error about `account`) with the account's
    /// secrets hidden ([`crate::config::hide_secrets`]).
    fn hide_secrets(&self, channel: &str, account: &str, text: String) -> String {
        let layout = self.layout();
        match layout
            .bound
            .get(channel)
            .and_then(|c| c.accounts.get(account))
        {
            Some(a) => crate::config::hide_secrets(text, &a.secrets),
            None => text,
        }
    }

    /// What `plugin` may reach when it serves `channel`: the channel's
    /// `network`, else the plugin's own list (as configured, for display).
    pub fn grants_for(&self, channel: &str, plugin: &Plugin) -> Vec<String> {
        self.layout()
            .config
            .get(channel)
            .and_then(|c| c.network.clone())
            .unwrap_or_else(|| plugin.loaded.info.network.clone())
    }

    /// `plugins.list`'s `grants` of a plugin: channel → what it may reach.
    pub fn plugin_grants(&self, plugin: &Plugin) -> BTreeMap<String, Vec<String>> {
        let s = self.board.read();
        s.iter()
            .filter(|(_, e)| e.plugin == plugin.id())
            .map(|(c, _)| (c.clone(), self.grants_for(c, plugin)))
            .collect()
    }

    /// `channels.<name>.webhook_max_body_bytes`, or `None` for an unknown channel.
    pub fn webhook_body_limit(&self, channel: &str) -> Option<usize> {
        self.layout()
            .config
            .get(channel)
            .map(|c| c.webhook_max_body_bytes)
    }

    /// Resolves `channel`/`accountId` of a request (defaults when there is one choice).
    pub fn resolve(
        &self,
        channel: Option<&str>,
        account: Option<&str>,
    ) -> Result<(String, String), SendError> {
        let s = self.board.read();
        let channel = match channel {
            Some(c) => c.to_string(),
            None if s.len() == 1 => s.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(SendError::UnknownTarget(format!(
                    "channel is required (configured: {})",
                    if s.is_empty() {
                        "none".to_string()
                    } else {
                        s.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                )))
            }
        };
        let entry = s.get(&channel).ok_or_else(|| {
            SendError::UnknownTarget(format!(
                "unknown channel: {channel}; add [channels.{channel}] to the config"
            ))
        })?;
        let account = match account {
            Some(a) => a.to_string(),
            None => entry.default_account.clone().ok_or_else(|| {
                SendError::UnknownTarget(format!(
                    "channel {channel} has no accounts; add [channels.{channel}.accounts.default]"
                ))
            })?,
        };
        if !entry.accounts.contains_key(&account) {
            return Err(SendError::UnknownTarget(format!(
                "unknown account {account} of channel {channel} (configured: {})",
                entry
                    .accounts
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok((channel, account))
    }
}
