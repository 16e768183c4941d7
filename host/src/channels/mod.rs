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
mod lifecycle;
mod send;
mod status;

pub use send::{SendError, SendReceipt};
pub use status::{AccountSnapshot, ChannelEntry, ChannelsSnapshot};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{Notify, OnceCell};

use crate::broadcast::Broadcaster;
use crate::config::ChannelConfig;
use crate::outbox::{AccountQueue, Outbox};
use crate::plugins::contract::Account;
use crate::plugins::imports::Imports;
use crate::plugins::{Network, Plugin, PluginManager, Target};
use crate::store::{HistoryQuery, MessageLog, Page, StateStore, StoreError};
use inbox::{AccountInbox, Inbox};
use status::{AccountStatus, StatusBoard};

/// Backoff of a failing `run` loop: 1 s doubling to 5 min.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A `run` that lasted this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);

type Key = (String, String);
/// idempotency key → the result of the call in flight, once there is one.
type InFlight = HashMap<String, Arc<OnceCell<SendReceipt>>>;

pub struct ChannelManager {
    config: BTreeMap<String, ChannelConfig>,
    plugins: Arc<PluginManager>,
    board: Arc<StatusBoard>,
    inbox: Arc<Inbox>,
    /// Running `run` loops.
    tasks: Mutex<HashMap<Key, tokio::task::AbortHandle>>,
    /// Accounts an operator or the config wants running.
    wanted: Mutex<std::collections::HashSet<Key>>,
    /// `send`s in flight, by idempotency key.
    in_flight: Mutex<InFlight>,
    /// Messages `send` handed to a `run` loop (`outbox-push`/`outbox-pop`),
    /// kept on disk until taken.
    outbox: Arc<Outbox>,
    /// What each plugin call needs, prepared once here rather than on every
    /// call: per channel its plugin and parsed grants, per account its
    /// settings (JSON) and its import handles.
    bound: HashMap<String, BoundChannel>,
}

/// A channel as its plugin calls see it.
struct BoundChannel {
    plugin: String,
    /// `[channels.<name>] network`, parsed; `None`: the plugin's own list.
    network: Option<Network>,
    accounts: HashMap<String, BoundAccount>,
}

/// An account as its plugin calls see it.
struct BoundAccount {
    /// `id` and the settings as the plugin gets them (JSON).
    account: Account,
    imports: Imports,
}

/// A call's plugin, its target and the account it is for.
type Call = (Arc<Plugin>, Target, Account);

fn settings_json(table: &toml::Table) -> String {
    let mut t = table.clone();
    t.remove("enabled");
    serde_json::to_string(&t).unwrap_or_else(|_| "{}".into())
}

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
        let mut state = BTreeMap::new();
        for (name, c) in &config {
            let accounts = c
                .accounts
                .iter()
                .map(|(id, t)| {
                    let enabled =
                        c.enabled && t.get("enabled").and_then(|v| v.as_bool()).unwrap_or(true);
                    (
                        id.clone(),
                        AccountSnapshot {
                            account_id: id.clone(),
                            enabled,
                            configured: true,
                            running: false,
                            connected: false,
                            last_error: None,
                            last_start_at: None,
                            last_stop_at: None,
                            reconnect_attempts: 0,
                            last_inbound_at: None,
                            last_outbound_at: None,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>();
            let default_account = if accounts.contains_key("default") {
                Some("default".to_string())
            } else {
                accounts.keys().next().cloned()
            };
            state.insert(
                name.clone(),
                ChannelEntry {
                    label: name.clone(),
                    plugin: c.plugin.clone().unwrap_or_else(|| name.clone()),
                    default_account,
                    accounts,
                },
            );
        }
        let board = Arc::new(StatusBoard::new(state, health));
        let inbox = Arc::new(Inbox::new(log, broadcaster, board.clone()));
        let outbox = Arc::new(outbox);
        let bound = config
            .iter()
            .map(|(name, c)| {
                let accounts = c
                    .accounts
                    .iter()
                    .map(|(id, t)| {
                        let imports = Imports {
                            inbox: Arc::new(AccountInbox {
                                inbox: inbox.clone(),
                                channel: name.clone(),
                            }),
                            state: Arc::new(AccountStatus {
                                board: board.clone(),
                                channel: name.clone(),
                                account: id.clone(),
                            }),
                            outbox: Arc::new(AccountQueue {
                                outbox: outbox.clone(),
                                channel: name.clone(),
                                account: id.clone(),
                            }),
                            kv: Arc::new(kv::ChannelKv {
                                store: kv_store.clone(),
                                channel: name.clone(),
                            }),
                            channel: name.clone(),
                            account: id.clone(),
                        };
                        let account = Account {
                            id: id.clone(),
                            settings: settings_json(t),
                        };
                        (id.clone(), BoundAccount { account, imports })
                    })
                    .collect();
                let bc = BoundChannel {
                    plugin: c.plugin.clone().unwrap_or_else(|| name.clone()),
                    network: c.network.as_deref().map(Network::parse),
                    accounts,
                };
                (name.clone(), bc)
            })
            .collect();
        Arc::new(Self {
            bound,
            config,
            plugins,
            inbox,
            board,
            tasks: Mutex::new(HashMap::new()),
            wanted: Mutex::new(Default::default()),
            in_flight: Mutex::new(HashMap::new()),
            outbox,
        })
    }

    /// `messages.history`: a page of the message log.
    pub fn history(&self, q: &HistoryQuery) -> Result<Page, StoreError> {
        self.inbox.history(q)
    }

    /// Why the message log cannot be written now, if it cannot.
    pub fn store_failure(&self) -> Option<String> {
        self.inbox.failure()
    }

    pub fn snapshot(&self) -> ChannelsSnapshot {
        ChannelsSnapshot {
            channels: self.board.read().clone(),
        }
    }

    fn update(&self, channel: &str, account: &str, f: impl FnOnce(&mut AccountSnapshot)) {
        self.board.update(channel, account, f)
    }

    /// The plugin serving `channel`, the target a call of it for `account`
    /// gets (its import handles and network grants) and the account's
    /// settings: everything prepared, nothing parsed or serialised here.
    /// The error says which of channel, account or plugin is missing.
    fn call_for(&self, channel: &str, account: &str) -> Result<Call, SendError> {
        let bc = self
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
        };
        Ok((plugin, target, ba.account.clone()))
    }

    /// What `plugin` may reach when it serves `channel`: the channel's
    /// `network`, else the plugin's own list (as configured, for display).
    pub fn grants_for(&self, channel: &str, plugin: &Plugin) -> Vec<String> {
        self.config
            .get(channel)
            .and_then(|c| c.network.clone())
            .unwrap_or_else(|| plugin.loaded.info.network.clone())
    }

    /// `plugins.list`'s `grants` of a plugin: channel → what it may reach.
    pub fn plugin_grants(&self, plugin: &Plugin) -> Value {
        let s = self.board.read();
        Value::Object(
            s.iter()
                .filter(|(_, e)| e.plugin == plugin.id())
                .map(|(c, _)| (c.clone(), json!(self.grants_for(c, plugin))))
                .collect(),
        )
    }

    /// `channels.<name>.webhook_max_body_bytes`, or `None` for an unknown channel.
    pub fn webhook_body_limit(&self, channel: &str) -> Option<usize> {
        self.config.get(channel).map(|c| c.webhook_max_body_bytes)
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
