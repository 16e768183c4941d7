//! Contract `switchboard:channel@0.2.0` (`sdk/wit/`): the generated bindings,
//! the conversions between their types and [`contract`]'s, the host side of
//! the `host` interface, and the calls into the `channel` interface.

/// The contract version these bindings serve.
pub const CONTRACT: &str = "0.2.0";

use wasmtime::component::Linker;
use wasmtime::Store;

use super::super::contract;
use super::super::sandbox::PluginState;
use super::{Answer, Request};

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "channel-plugin",
    exports: { default: async },
    // Writes wait for the store's commit without holding a thread.
    imports: {
        "switchboard:channel/host.deliver": async,
        "switchboard:channel/host.outbox-push": async,
        "switchboard:channel/host.kv-set": async,
        "switchboard:channel/host.kv-delete": async,
        "switchboard:channel/host.kv-claim": async,
        "switchboard:channel/host.kv-unclaim": async,
        // Connecting and the handshake wait on the network.
        "switchboard:channel/tls.connect": async,
    },
    // `tls.connect` returns wasmtime-wasi's own streams.
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

use self::exports::switchboard::channel::channel::{
    Account, ChannelError, Delivery, HttpRequest, HttpResponse, MessageAction, OutboundMessage,
    PluginInfo,
};
use self::switchboard::channel::types::{
    AccountState, AttachmentKind, AttachmentSource, Capabilities, Edit, InboundAttachment,
    InboundMessage, LogLevel, MessageRef, OutboundAttachment, Reaction,
};

/// Links the `host` interface of this version.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    // Interface by interface: `wasi:io` is wasmtime-wasi's, linked with the
    // rest of WASI.
    use wasmtime::component::HasSelf;
    switchboard::channel::types::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    switchboard::channel::host::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    switchboard::channel::tls::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
}

/// `info` on a fresh instance; the error says which step failed.
pub async fn info(
    pre: &ChannelPluginPre<PluginState>,
    store: &mut Store<PluginState>,
) -> Result<contract::PluginInfo, (&'static str, wasmtime::Error)> {
    let inst = pre
        .instantiate_async(&mut *store)
        .await
        .map_err(|e| ("instantiation failed", e))?;
    let info = inst
        .switchboard_channel_channel()
        .call_info(store)
        .await
        .map_err(|e| ("`info` failed", e))?;
    Ok(info.into())
}

/// One call on a fresh instance.
pub async fn invoke(
    pre: &ChannelPluginPre<PluginState>,
    store: &mut Store<PluginState>,
    req: Request,
) -> wasmtime::Result<Answer> {
    let inst = pre.instantiate_async(&mut *store).await?;
    let c = inst.switchboard_channel_channel();
    Ok(match req {
        Request::Validate(a) => {
            Answer::Validate(c.call_validate(store, &a.into()).await?.map_err(Into::into))
        }
        Request::Send(a, m) => Answer::Send(
            c.call_send(store, &a.into(), &m.into())
                .await?
                .map(Into::into)
                .map_err(Into::into),
        ),
        Request::Webhook(a, r) => Answer::Webhook(
            c.call_handle_webhook(store, &a.into(), &r.into())
                .await?
                .into(),
        ),
        Request::Act(a, x) => Answer::Act(
            c.call_act(store, &a.into(), &x.into())
                .await?
                .map_err(Into::into),
        ),
    })
}

/// `run` on a long-lived instance.
pub async fn run(
    pre: &ChannelPluginPre<PluginState>,
    store: &mut Store<PluginState>,
    account: contract::Account,
) -> wasmtime::Result<Result<(), contract::ChannelError>> {
    let inst = pre.instantiate_async(&mut *store).await?;
    let r = inst
        .switchboard_channel_channel()
        .call_run(store, &account.into())
        .await?;
    Ok(r.map_err(Into::into))
}

impl switchboard::channel::types::Host for PluginState {}

impl switchboard::channel::tls::Host for PluginState {
    async fn connect(
        &mut self,
        host: String,
        port: u16,
    ) -> Result<
        (
            wasmtime::component::Resource<wasmtime_wasi::p2::DynInputStream>,
            wasmtime::component::Resource<wasmtime_wasi::p2::DynOutputStream>,
        ),
        String,
    > {
        let stream = self.tls_connect(host, port).await?;
        self.push_streams(stream)
    }
}

impl switchboard::channel::host::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.host_log(level.into(), &message)
    }
    fn deliver(
        &mut self,
        message: InboundMessage,
    ) -> impl std::future::Future<Output = Result<u64, String>> + Send {
        self.host_deliver(message.into())
    }
    fn set_state(&mut self, account_id: String, state: AccountState, detail: Option<String>) {
        self.host_set_state(&account_id, state.into(), detail)
    }
    fn outbox_push(
        &mut self,
        account_id: String,
        message: OutboundMessage,
    ) -> impl std::future::Future<Output = Result<u64, String>> + Send {
        self.host_outbox_push(&account_id, message.into())
    }
    fn outbox_pop(&mut self, account_id: String) -> Option<(u64, OutboundMessage)> {
        let (seq, m) = self.host_outbox_pop(&account_id)?;
        Some((seq, m.into()))
    }
    fn outbox_ack(&mut self, account_id: String, seq: u64) {
        self.host_outbox_ack(&account_id, seq)
    }
    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.host_kv_get(&key)
    }
    fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.host_kv_set(key, value)
    }
    fn kv_delete(&mut self, key: String) -> impl std::future::Future<Output = ()> + Send {
        self.host_kv_delete(&key)
    }
    fn kv_claim(
        &mut self,
        key: String,
        ttl_ms: u64,
    ) -> impl std::future::Future<Output = bool> + Send {
        self.host_kv_claim(key, ttl_ms)
    }
    fn kv_unclaim(&mut self, key: String) -> impl std::future::Future<Output = ()> + Send {
        self.host_kv_unclaim(&key)
    }
}

// Conversions between the generated types and the contract's.

impl From<contract::Account> for Account {
    fn from(a: contract::Account) -> Self {
        Self {
            id: a.id,
            settings: a.settings,
        }
    }
}

impl From<contract::OutboundMessage> for OutboundMessage {
    fn from(m: contract::OutboundMessage) -> Self {
        Self {
            to: m.to,
            text: m.text,
            thread_id: m.thread_id,
            reply_to_id: m.reply_to_id,
            attachments: m.attachments.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<OutboundMessage> for contract::OutboundMessage {
    fn from(m: OutboundMessage) -> Self {
        Self {
            to: m.to,
            text: m.text,
            thread_id: m.thread_id,
            reply_to_id: m.reply_to_id,
            attachments: m.attachments.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<InboundMessage> for contract::InboundMessage {
    fn from(m: InboundMessage) -> Self {
        Self {
            account_id: m.account_id,
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            message_id: m.message_id,
            text: m.text,
            timestamp_ms: m.timestamp_ms,
            thread_id: m.thread_id,
            reply_to_id: m.reply_to_id,
            raw: m.raw,
            attachments: m.attachments.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Delivery> for contract::Delivery {
    fn from(d: Delivery) -> Self {
        Self {
            message_id: d.message_id,
            chat_id: d.chat_id,
        }
    }
}

impl From<ChannelError> for contract::ChannelError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::InvalidConfig(m) => Self::InvalidConfig(m),
            ChannelError::Unauthorized(m) => Self::Unauthorized(m),
            ChannelError::NotFound(m) => Self::NotFound(m),
            ChannelError::RateLimited(ms) => Self::RateLimited(ms),
            ChannelError::Transient(m) => Self::Transient(m),
            ChannelError::Fatal(m) => Self::Fatal(m),
        }
    }
}

impl From<PluginInfo> for contract::PluginInfo {
    fn from(i: PluginInfo) -> Self {
        Self {
            id: i.id,
            name: i.name,
            version: i.version,
            description: i.description,
            network: i.network,
            capabilities: contract::Capabilities {
                media: i.capabilities.contains(Capabilities::MEDIA),
                reactions: i.capabilities.contains(Capabilities::REACTIONS),
                edit: i.capabilities.contains(Capabilities::EDIT),
                delete: i.capabilities.contains(Capabilities::DELETE),
                threads: i.capabilities.contains(Capabilities::THREADS),
            },
        }
    }
}

impl From<contract::HttpRequest> for HttpRequest {
    fn from(r: contract::HttpRequest) -> Self {
        Self {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<HttpResponse> for contract::HttpResponse {
    fn from(r: HttpResponse) -> Self {
        Self {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<AccountState> for contract::AccountState {
    fn from(s: AccountState) -> Self {
        match s {
            AccountState::Starting => Self::Starting,
            AccountState::Connected => Self::Connected,
            AccountState::Disconnected => Self::Disconnected,
            AccountState::Error => Self::Error,
        }
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Trace => Self::TRACE,
            LogLevel::Debug => Self::DEBUG,
            LogLevel::Info => Self::INFO,
            LogLevel::Warn => Self::WARN,
            LogLevel::Error => Self::ERROR,
        }
    }
}

impl From<AttachmentKind> for contract::AttachmentKind {
    fn from(k: AttachmentKind) -> Self {
        match k {
            AttachmentKind::Image => Self::Image,
            AttachmentKind::Video => Self::Video,
            AttachmentKind::Audio => Self::Audio,
            AttachmentKind::Voice => Self::Voice,
            AttachmentKind::Document => Self::Document,
            AttachmentKind::Sticker => Self::Sticker,
            AttachmentKind::Animation => Self::Animation,
            AttachmentKind::Other => Self::Other,
        }
    }
}

impl From<contract::AttachmentKind> for AttachmentKind {
    fn from(k: contract::AttachmentKind) -> Self {
        use contract::AttachmentKind as K;
        match k {
            K::Image => Self::Image,
            K::Video => Self::Video,
            K::Audio => Self::Audio,
            K::Voice => Self::Voice,
            K::Document => Self::Document,
            K::Sticker => Self::Sticker,
            K::Animation => Self::Animation,
            K::Other => Self::Other,
        }
    }
}

impl From<contract::OutboundAttachment> for OutboundAttachment {
    fn from(a: contract::OutboundAttachment) -> Self {
        Self {
            kind: a.kind.into(),
            mime_type: a.mime_type,
            file_name: a.file_name,
            source: match a.source {
                contract::AttachmentSource::Url(u) => AttachmentSource::Url(u),
                contract::AttachmentSource::Bytes(b) => AttachmentSource::Bytes(b),
            },
        }
    }
}

impl From<OutboundAttachment> for contract::OutboundAttachment {
    fn from(a: OutboundAttachment) -> Self {
        Self {
            kind: a.kind.into(),
            mime_type: a.mime_type,
            file_name: a.file_name,
            source: match a.source {
                AttachmentSource::Url(u) => contract::AttachmentSource::Url(u),
                AttachmentSource::Bytes(b) => contract::AttachmentSource::Bytes(b),
            },
        }
    }
}

impl From<InboundAttachment> for contract::InboundAttachment {
    fn from(a: InboundAttachment) -> Self {
        Self {
            kind: a.kind.into(),
            mime_type: a.mime_type,
            file_name: a.file_name,
            size: a.size,
            file_id: a.file_id,
            url: a.url,
        }
    }
}

impl From<contract::MessageRef> for MessageRef {
    fn from(r: contract::MessageRef) -> Self {
        Self {
            chat_id: r.chat_id,
            message_id: r.message_id,
        }
    }
}

impl From<contract::Action> for MessageAction {
    fn from(a: contract::Action) -> Self {
        match a {
            contract::Action::React {
                target,
                emoji,
                remove,
            } => Self::React(Reaction {
                target: target.into(),
                emoji,
                remove,
            }),
            contract::Action::Edit { target, text } => Self::Edit(Edit {
                target: target.into(),
                text,
            }),
            contract::Action::Delete(r) => Self::Delete(r.into()),
        }
    }
}
