//! Each account's runtime state (the [`StatusBoard`]), the handle a plugin
//! reports its connection through ([`AccountStatus`]), and what
//! `channels.status`, `health` and `/ready` show of it.

use crate::sync::RwLockExt;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::Serialize;
use serde_json::{json, Value};
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
}

impl StateReporter for AccountStatus {
    fn report(&self, state: AccountState, detail: Option<String>) {
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
}

#[derive(Debug, Clone)]
pub struct ChannelEntry {
    pub label: String,
    pub plugin: String,
    pub default_account: Option<String>,
    pub accounts: BTreeMap<String, AccountSnapshot>,
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
    pub fn status_payload(&self, only: Option<&str>, ts: u64) -> Value {
        let selected: Vec<(&String, &ChannelEntry)> = self
            .channels
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
            .collect();
        let mut channels = serde_json::Map::new();
        let mut accounts = serde_json::Map::new();
        let mut defaults = serde_json::Map::new();
        let mut labels = serde_json::Map::new();
        for (id, e) in &selected {
            let list: Vec<&AccountSnapshot> = e.accounts.values().collect();
            let running = list.iter().filter(|a| a.running).count();
            let connected = list.iter().filter(|a| a.connected).count();
            channels.insert(
                (*id).clone(),
                json!({"configured": !list.is_empty(), "running": running > 0, "connected": connected > 0,
                       "plugin": e.plugin, "accounts": list.len(), "runningAccounts": running, "connectedAccounts": connected}),
            );
            accounts.insert((*id).clone(), json!(list));
            labels.insert((*id).clone(), json!(e.label));
            if let Some(d) = &e.default_account {
                defaults.insert((*id).clone(), json!(d));
            }
        }
        json!({
            "ts": ts,
            "channelOrder": selected.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "channelLabels": labels,
            "channels": channels,
            "channelAccounts": accounts,
            "channelDefaultAccountId": defaults,
        })
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
