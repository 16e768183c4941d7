//! Each account's runtime state (the [`StatusBoard`]), the handle a plugin
//! reports its connection through ([`AccountStatus`]), and what
//! `channels.status`, `health` and `/ready` show of it.

use crate::sync::RwLockExt;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::Serialize;
use tokio::sync::Notify;

use crate::plugins::contract::AccountState;
use crate::plugins::imports::StateReporter;

/// Every channel's accounts and their state. A change wakes the health
/// monitor, which broadcasts `health` when what it shows changed.
pub struct StatusBoard {
    channels: RwLock<BTreeMap<String, ChannelEntry>>,
    health: Arc<Notify>,
}

impl StatusBoard {
    pub fn new(channels: BTreeMap<String, ChannelEntry>, health: Arc<Notify>) -> Self {
        Self {
            channels: RwLock::new(channels),
            health,
        }
    }

    /// What wakes the health monitor.
    pub fn health_notify(&self) -> Arc<Notify> {
        self.health.clone()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, ChannelEntry>> {
        self.channels.reader()
    }

    /// Changes which channels and accounts there are (a configuration
    /// reload); wakes the health monitor.
    pub fn reshape(&self, f: impl FnOnce(&mut BTreeMap<String, ChannelEntry>)) {
        f(&mut self.channels.writer());
        self.health.notify_one();
    }

    /// Changes one account's state (nothing if it is not configured). The
    /// health monitor is woken only when something `health` or `/ready`
    /// shows changed, not for the per-message timestamps.
    pub fn update(&self, channel: &str, account: &str, f: impl FnOnce(&mut AccountSnapshot)) {
        let mut s = self.channels.writer();
        let Some(a) = s.get_mut(channel).and_then(|c| c.accounts.get_mut(account)) else {
            return;
        };
        let shown = |a: &AccountSnapshot| (a.enabled, a.running, a.connected, a.last_error.clone());
        let before = shown(a);
        f(a);
        let changed = shown(a) != before;
        drop(s);
        if changed {
            self.health.notify_one();
        }
    }
}

/// `set-state` of one account's instances.
pub struct AccountStatus {
    pub board: Arc<StatusBoard>,
    pub channel: String,
    pub account: String,
    /// Hidden in the detail (every `operator.read` client sees it).
    pub secrets: Arc<[String]>,
}

impl StateReporter for AccountStatus {
    fn report(&self, state: AccountState, detail: Option<String>) {
        let detail = detail.map(|d| crate::config::hide_secrets(d, &self.secrets));
        self.board.update(&self.channel, &self.account, |a| {
            a.connected = matches!(state, AccountState::Connected);
            match state {
                AccountState::Error => a.last_error = detail.or(Some("error".into())),
                AccountState::Connected => a.last_error = None,
                _ => {
                    if detail.is_some() {
                        a.last_error = detail;
                    }
                }
            }
        });
    }
}

/// One account's runtime state, as `channels.status` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccountSnapshot {
    pub account_id: String,
    pub enabled: bool,
    pub configured: bool,
    pub running: bool,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_start_at: Option<u64>,
    pub last_stop_at: Option<u64>,
    pub reconnect_attempts: u64,
    pub last_inbound_at: Option<u64>,
    pub last_outbound_at: Option<u64>,
    /// What the account's outbox holds (accounts whose plugin queues its
    /// sends, IRC's; filled for `channels.status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<crate::outbox::Depth>,
}

#[derive(Debug, Clone)]
pub struct ChannelEntry {
    pub label: String,
    pub plugin: String,
    pub default_account: Option<String>,
    pub accounts: BTreeMap<String, AccountSnapshot>,
}

/// `channels.status`'s answer, borrowing a [`ChannelsSnapshot`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelsStatus<'a> {
    ts: u64,
    channel_order: Vec<&'a str>,
    channel_labels: BTreeMap<&'a str, &'a str>,
    channels: BTreeMap<&'a str, ChannelSummary<'a>>,
    channel_accounts: BTreeMap<&'a str, Vec<&'a AccountSnapshot>>,
    channel_default_account_id: BTreeMap<&'a str, &'a str>,
}

/// One channel in `channels.status`'s `channels`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChannelSummary<'a> {
    configured: bool,
    running: bool,
    connected: bool,
    plugin: &'a str,
    accounts: usize,
    running_accounts: usize,
    connected_accounts: usize,
}

/// The runtime snapshot of every channel, ordered by channel id.
#[derive(Debug, Clone, Default)]
pub struct ChannelsSnapshot {
    pub channels: BTreeMap<String, ChannelEntry>,
}

impl ChannelsSnapshot {
    pub fn order(&self) -> Vec<String> {
        self.channels.keys().cloned().collect()
    }

    /// The `channels.status` result, optionally for one channel.
    pub fn status_payload(&self, only: Option<&str>, ts: u64) -> ChannelsStatus<'_> {
        let mut out = ChannelsStatus {
            ts,
            channel_order: Vec::new(),
            channel_labels: BTreeMap::new(),
            channels: BTreeMap::new(),
            channel_accounts: BTreeMap::new(),
            channel_default_account_id: BTreeMap::new(),
        };
        for (id, e) in &self.channels {
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let id = id.as_str();
            let list: Vec<&AccountSnapshot> = e.accounts.values().collect();
            let running = list.iter().filter(|a| a.running).count();
            let connected = list.iter().filter(|a| a.connected).count();
            out.channel_order.push(id);
            out.channel_labels.insert(id, &e.label);
            out.channels.insert(
                id,
                ChannelSummary {
                    configured: !list.is_empty(),
                    running: running > 0,
                    connected: connected > 0,
                    plugin: &e.plugin,
                    accounts: list.len(),
                    running_accounts: running,
                    connected_accounts: connected,
                },
            );
            out.channel_accounts.insert(id, list);
            if let Some(d) = &e.default_account {
                out.channel_default_account_id.insert(id, d);
            }
        }
        out
    }

    /// Accounts that should be running and are in error (for `/ready`).
    pub fn failing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, e) in &self.channels {
            for (id, a) in &e.accounts {
                if a.enabled && a.last_error.is_some() && !a.connected {
                    out.push(format!("channel:{k}/{id}"));
                }
            }
        }
        out
    }
}

/// `health`'s `channels`: `{<id>: {accounts: {<account>: {running,
/// connected, lastError?}}}}`, serialised from the board as it is.
pub struct HealthChannels<'a>(pub &'a BTreeMap<String, ChannelEntry>);

impl Serialize for HealthChannels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, e)| {
            (
                k,
                HealthChannel {
                    accounts: HealthAccounts(&e.accounts),
                },
            )
        }))
    }
}

#[derive(Serialize)]
struct HealthChannel<'a> {
    accounts: HealthAccounts<'a>,
}

struct HealthAccounts<'a>(&'a BTreeMap<String, AccountSnapshot>);

impl Serialize for HealthAccounts<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(id, a)| {
            (
                id,
                HealthAccount {
                    running: a.running,
                    connected: a.connected,
                    last_error: a.last_error.as_deref(),
                },
            )
        }))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthAccount<'a> {
    running: bool,
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<&'a str>,
}

/// `channelOrder`: the channel ids in order.
pub struct ChannelOrder<'a>(pub &'a BTreeMap<String, ChannelEntry>);

impl Serialize for ChannelOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.keys())
    }
}

/// `channelLabels`: `{<id>: <label>}`.
pub struct ChannelLabels<'a>(pub &'a BTreeMap<String, ChannelEntry>);

impl Serialize for ChannelLabels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, e)| (k, &e.label)))
    }
}
