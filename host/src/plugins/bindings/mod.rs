//! The generated bindings, one module per contract version (the way Zed's
//! `extension_host` keeps one module per extension API version): `v0_1`
//! binds the frozen `host/wit/v0.1.0/`, `v0_2` the SDK's `sdk/wit/`. Each
//! converts between its generated types and [`contract`]'s and implements
//! its `host` interface by calling the shared host functions below, so the
//! rest of `plugins/` is the same for every version. A component is bound
//! by the version of the `channel` interface it exports.

pub mod v0_1;
pub mod v0_2;

use std::future::Future;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::contract::{
    self, Account, Action, ChannelError, Delivery, HttpRequest, HttpResponse, OutboundMessage,
};
use super::logs::plugin_event;
use super::sandbox::PluginState;

/// A call on a fresh instance.
pub enum Request {
    Validate(Account),
    Send(Account, OutboundMessage),
    Webhook(Account, HttpRequest),
    Act(Account, Action),
}

/// Its answer.
pub enum Answer {
    Validate(Result<(), ChannelError>),
    Send(Result<Delivery, ChannelError>),
    Webhook(HttpResponse),
    Act(Result<(), ChannelError>),
}

/// A pre-instantiated plugin, of the contract version it was built for.
pub enum Pre {
    V0_1(v0_1::ChannelPluginPre<PluginState>),
    V0_2(v0_2::ChannelPluginPre<PluginState>),
}

/// The contract versions this host serves, newest first.
pub const CONTRACTS: &[&str] = &[v0_2::CONTRACT, v0_1::CONTRACT];

/// Links the `host` interface of every version.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)
}

/// The contract version whose `channel` interface `component` exports.
pub fn contract_of(component: &Component, engine: &Engine) -> Option<&'static str> {
    let ty = component.component_type();
    let names: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    CONTRACTS.iter().copied().find(|v| {
        let want = format!("switchboard:channel/channel@{v}");
        names.contains(&want)
    })
}

impl Pre {
    /// Binds `pre` as `contract`'s `channel-plugin` (the error names a
    /// missing export).
    pub fn new(
        contract: &str,
        pre: wasmtime::component::InstancePre<PluginState>,
    ) -> wasmtime::Result<Pre> {
        Ok(if contract == v0_1::CONTRACT {
            Pre::V0_1(v0_1::ChannelPluginPre::new(pre)?)
        } else {
            Pre::V0_2(v0_2::ChannelPluginPre::new(pre)?)
        })
    }

    /// The contract version it was built for.
    pub fn contract(&self) -> &'static str {
        match self {
            Pre::V0_1(_) => v0_1::CONTRACT,
            Pre::V0_2(_) => v0_2::CONTRACT,
        }
    }
}

/// `info` on a fresh instance; the error says which step failed.
pub async fn info(
    pre: &Pre,
    store: &mut Store<PluginState>,
) -> Result<contract::PluginInfo, (&'static str, wasmtime::Error)> {
    match pre {
        Pre::V0_1(p) => v0_1::info(p, store).await,
        Pre::V0_2(p) => v0_2::info(p, store).await,
    }
}

/// One call on a fresh instance.
pub async fn invoke(
    pre: &Pre,
    store: &mut Store<PluginState>,
    req: Request,
) -> wasmtime::Result<Answer> {
    match pre {
        Pre::V0_1(p) => v0_1::invoke(p, store, req).await,
        Pre::V0_2(p) => v0_2::invoke(p, store, req).await,
    }
}

/// `run` on a long-lived instance.
pub async fn run(
    pre: &Pre,
    store: &mut Store<PluginState>,
    account: Account,
) -> wasmtime::Result<Result<(), ChannelError>> {
    match pre {
        Pre::V0_1(p) => v0_1::run(p, store, account).await,
        Pre::V0_2(p) => v0_2::run(p, store, account).await,
    }
}

/// The `host` interface, once for every version (each version's `Host`
/// impl converts its types and calls these).
impl PluginState {
    /// The `log` import: within the plugin's log budget, cut to
    /// `logs::MAX_LINE` bytes.
    fn host_log(&self, level: tracing::Level, message: &str) {
        use tracing::Level;
        let log = &self.log;
        // The account's secrets, should the plugin log them.
        let message = match self.imports() {
            Ok(i) => crate::config::hide_secrets_in(message, &i.secrets),
            Err(_) => message.into(),
        };
        let m = || super::logs::bounded(&message);
        match level {
            Level::TRACE => plugin_event!(log, Level::TRACE, "{}", m()),
            Level::DEBUG => plugin_event!(log, Level::DEBUG, "{}", m()),
            Level::INFO => plugin_event!(log, Level::INFO, "{}", m()),
            Level::WARN => plugin_event!(log, Level::WARN, "{}", m()),
            _ => plugin_event!(log, Level::ERROR, "{}", m()),
        }
    }

    fn host_deliver(
        &mut self,
        m: contract::InboundMessage,
    ) -> impl Future<Output = Result<u64, String>> + Send + 'static {
        let delivering = self
            .imports()
            .and_then(|i| i.of(&m.account_id))
            .map(|i| i.inbox.deliver(m));
        async move { delivering?.await }
    }

    fn host_set_state(
        &mut self,
        account_id: &str,
        state: contract::AccountState,
        detail: Option<String>,
    ) {
        if let Some(i) = self.imports_of(account_id) {
            // It reaches `channels.status` and every `health` event.
            let detail = detail.map(|d| contract::cut_owned(d, contract::MAX_MESSAGE_BYTES));
            i.state.report(state, detail)
        }
    }

    fn host_outbox_push(
        &mut self,
        account_id: &str,
        message: OutboundMessage,
    ) -> impl Future<Output = Result<u64, String>> + Send + 'static {
        let pushing = self
            .imports()
            .and_then(|i| i.of(account_id))
            .map(|i| i.outbox.push(message));
        let grants = self.grants().clone();
        async move {
            // Queued: the account's `run` sends it, whatever this call does next.
            pushing?.await.inspect(|_| grants.reached_out())
        }
    }

    fn host_outbox_pop(&mut self, account_id: &str) -> Option<(u64, OutboundMessage)> {
        self.imports_of(account_id)?.outbox.pop()
    }

    fn host_outbox_ack(&mut self, account_id: &str, seq: u64) {
        if let Some(i) = self.imports_of(account_id) {
            i.outbox.ack(seq)
        }
    }

    fn host_kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.imports().ok()?.kv.get(key)
    }

    fn host_kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (log, imports) = (self.log.clone(), self.imports().ok().cloned());
        async move {
            let Some(i) = imports else { return };
            if let Err(e) = i.kv.set(&key, value).await {
                plugin_event!(log, tracing::Level::ERROR, channel = %i.channel, "kv-set failed: {e}");
            }
        }
    }

    fn host_kv_delete(&mut self, key: &str) -> impl Future<Output = ()> + Send + 'static {
        let deleting = self.imports().ok().map(|i| i.kv.delete(key));
        async move {
            if let Some(d) = deleting {
                d.await
            }
        }
    }

    fn host_kv_claim(
        &mut self,
        key: String,
        ttl_ms: u64,
    ) -> impl Future<Output = bool> + Send + 'static {
        let (log, imports) = (self.log.clone(), self.imports().ok().cloned());
        async move {
            let Some(i) = imports else { return false };
            i.kv.claim(&key, ttl_ms).await.unwrap_or_else(|e| {
                plugin_event!(log, tracing::Level::ERROR, channel = %i.channel, "kv-claim failed: {e}");
                false
            })
        }
    }

    fn host_kv_unclaim(&mut self, key: &str) -> impl Future<Output = ()> + Send + 'static {
        let unclaiming = self.imports().ok().map(|i| i.kv.unclaim(key));
        async move {
            if let Some(u) = unclaiming {
                u.await
            }
        }
    }
}
