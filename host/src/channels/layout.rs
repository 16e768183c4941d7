//! The configured channels as the manager serves them ([`Layout`]: the
//! `[channels]` tables and what every plugin call of each account needs,
//! prepared once), the status-board entries they start with, and the diff
//! between two configurations that a reload applies account by account.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::ChannelConfig;
use crate::outbox::{AccountQueue, Outbox};
use crate::plugins::contract::Account;
use crate::plugins::imports::Imports;
use crate::plugins::{Network, Trust};
use crate::store::StateStore;

use super::inbox::{AccountInbox, DeliveryRate, Inbox};
use super::status::{AccountSnapshot, AccountStatus, ChannelEntry, StatusBoard};

/// The `[channels]` tables in force and their prepared calls. Swapped
/// whole by a reload; a call takes the one current when it starts.
pub(super) struct Layout {
    pub config: BTreeMap<String, ChannelConfig>,
    pub bound: HashMap<String, BoundChannel>,
}

/// A channel as its plugin calls see it.
pub(super) struct BoundChannel {
    pub plugin: String,
    /// `[channels.<name>] network`, parsed; `None`: the plugin's own list.
    pub network: Option<Network>,
    /// The system roots plus `[channels.<name>] tls_ca`, read when the
    /// channel's configuration is applied.
    pub trust: Trust,
    pub accounts: HashMap<String, BoundAccount>,
}

/// An account as its plugin calls see it.
pub(super) struct BoundAccount {
    /// `id` and the settings as the plugin gets them (JSON).
    pub account: Account,
    pub imports: Imports,
    /// The secrets among the settings ([`crate::config::secret_values`]),
    /// hidden in what the plugin says about the account.
    pub secrets: Arc<[String]>,
}

/// What the import handles of an account are made from.
pub(super) struct Handles {
    pub inbox: Arc<Inbox>,
    pub board: Arc<StatusBoard>,
    pub outbox: Arc<Outbox>,
    pub kv_store: Arc<dyn StateStore>,
}

fn settings_json(table: &toml::Table) -> String {
    let mut t = table.clone();
    t.remove("enabled");
    serde_json::to_string(&t).unwrap_or_else(|_| "{}".into())
}

/// The plugin serving channel `name`.
pub(super) fn plugin_id(name: &str, c: &ChannelConfig) -> String {
    c.plugin.clone().unwrap_or_else(|| name.to_string())
}

/// Whether account `t` of channel `c` is enabled by the configuration.
pub(super) fn account_enabled(c: &ChannelConfig, t: &toml::Table) -> bool {
    c.enabled && t.get("enabled").and_then(|v| v.as_bool()).unwrap_or(true)
}

impl Layout {
    pub fn build(config: BTreeMap<String, ChannelConfig>, h: &Handles) -> Layout {
        let bound = config
            .iter()
            .map(|(name, c)| {
                let rate = h.inbox.rate(name, c.max_messages_per_second);
                let accounts = c
                    .accounts
                    .iter()
                    .map(|(id, t)| (id.clone(), bind_account(name, id, t, h, &rate)))
                    .collect();
                let bc = BoundChannel {
                    plugin: plugin_id(name, c),
                    network: c.network.as_deref().map(Network::parse),
                    trust: match &c.tls_ca {
                        Some(p) => Trust::new(Some(p)),
                        None => Trust::default(),
                    },
                    accounts,
                };
                (name.clone(), bc)
            })
            .collect();
        Layout { config, bound }
    }
}

fn bind_account(
    name: &str,
    id: &str,
    t: &toml::Table,
    h: &Handles,
    rate: &Arc<DeliveryRate>,
) -> BoundAccount {
    let (name, id) = (name.to_string(), id.to_string());
    let secrets: Arc<[String]> = crate::config::secret_values(t).into();
    let imports = Imports {
        inbox: Arc::new(AccountInbox {
            inbox: h.inbox.clone(),
            channel: name.clone(),
            rate: rate.clone(),
        }),
        state: Arc::new(AccountStatus {
            board: h.board.clone(),
            channel: name.clone(),
            account: id.clone(),
            secrets: secrets.clone(),
        }),
        outbox: Arc::new(AccountQueue {
            outbox: h.outbox.clone(),
            channel: name.clone(),
            account: id.clone(),
        }),
        kv: Arc::new(super::kv::ChannelKv {
            store: h.kv_store.clone(),
            channel: name.clone(),
        }),
        channel: name,
        account: id.clone(),
        secrets: secrets.clone(),
    };
    let account = Account {
        id,
        settings: settings_json(t),
    };
    BoundAccount {
        account,
        imports,
        secrets,
    }
}

/// A fresh status-board account: configured, not running.
pub(super) fn fresh_account(id: &str, enabled: bool) -> AccountSnapshot {
    AccountSnapshot {
        account_id: id.to_string(),
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
        outbox: None,
    }
}

/// `default` if configured, else the first account.
pub(super) fn default_account<V>(accounts: &BTreeMap<String, V>) -> Option<String> {
    if accounts.contains_key("default") {
        Some("default".to_string())
    } else {
        accounts.keys().next().cloned()
    }
}

/// The status-board entry channel `name` starts with.
pub(super) fn board_entry(name: &str, c: &ChannelConfig) -> ChannelEntry {
    let accounts: BTreeMap<String, AccountSnapshot> = c
        .accounts
        .iter()
        .map(|(id, t)| (id.clone(), fresh_account(id, account_enabled(c, t))))
        .collect();
    ChannelEntry {
        label: name.to_string(),
        plugin: plugin_id(name, c),
        default_account: default_account(&accounts),
        accounts,
    }
}

/// What a new configuration does to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    Added,
    Removed,
    /// Its settings, its channel's plugin or grants, or whether it is
    /// enabled changed: the words say which.
    Changed(Vec<&'static str>),
}

/// Every account whose configuration differs between `old` and `new`, in
/// channel and account order.
pub(super) fn diff(
    old: &BTreeMap<String, ChannelConfig>,
    new: &BTreeMap<String, ChannelConfig>,
) -> Vec<(String, String, AccountChange)> {
    let mut out = Vec::new();
    let empty = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        let oa = o.map(|c| &c.accounts).unwrap_or(&empty);
        let na = n.map(|c| &c.accounts).unwrap_or(&empty);
        let ids: std::collections::BTreeSet<&String> = oa.keys().chain(na.keys()).collect();
        for id in ids {
            let change = match (o.zip(oa.get(id)), n.zip(na.get(id))) {
                (None, Some(_)) => AccountChange::Added,
                (Some(_), None) => AccountChange::Removed,
                (Some((oc, ot)), Some((nc, nt))) => {
                    let mut why = Vec::new();
                    if account_enabled(oc, ot) != account_enabled(nc, nt) {
                        why.push("enabled");
                    }
                    if settings_json(ot) != settings_json(nt) {
                        why.push("settings");
                    }
                    if plugin_id(name, oc) != plugin_id(name, nc) {
                        why.push("plugin");
                    }
                    if oc.network != nc.network {
                        why.push("network");
                    }
                    if oc.tls_ca != nc.tls_ca {
                        why.push("tls_ca");
                    }
                    if why.is_empty() {
                        continue;
                    }
                    AccountChange::Changed(why)
                }
                (None, None) => continue,
            };
            out.push((name.clone(), id.clone(), change));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(toml: &str) -> BTreeMap<String, ChannelConfig> {
        crate::config::Config::from_toml_str(toml, |_| None)
            .unwrap()
            .channels
    }

    #[test]
    fn the_diff_names_each_account_and_why() {
        let old = channels(
            "[channels.a.accounts.x]\nk = 1\n[channels.a.accounts.y]\nk = 1\n\
             [channels.b]\nnetwork = [\"h:1\"]\n[channels.b.accounts.z]\n[channels.gone.accounts.q]\n",
        );
        let new = channels(
            "[channels.a.accounts.x]\nk = 2\n[channels.a.accounts.y]\nk = 1\nenabled = false\n\
             [channels.b]\nnetwork = [\"h:2\"]\nwebhook_max_body_bytes = 5\n[channels.b.accounts.z]\n[channels.new.accounts.n]\n",
        );
        let d = diff(&old, &new);
        assert_eq!(
            d,
            vec![
                (
                    "a".into(),
                    "x".into(),
                    AccountChange::Changed(vec!["settings"])
                ),
                (
                    "a".into(),
                    "y".into(),
                    AccountChange::Changed(vec!["enabled"])
                ),
                (
                    "b".into(),
                    "z".into(),
                    AccountChange::Changed(vec!["network"])
                ),
                ("gone".into(), "q".into(), AccountChange::Removed),
                ("new".into(), "n".into(), AccountChange::Added),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
