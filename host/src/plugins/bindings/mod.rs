//! The generated bindings, one module per contract version (the way Zed's
//! `extension_host` keeps one module per extension API version): a `v0_2`
//! sits next to `v0_1` when the contract changes. Each converts between its
//! generated types and [`contract`](super::contract)'s, so the rest of
//! `plugins/` is the same for every version.

pub mod v0_1;

use super::contract::{
    Account, ChannelError, Delivery, HttpRequest, HttpResponse, OutboundMessage,
};

/// A call on a fresh instance.
pub enum Request {
    Validate(Account),
    Send(Account, OutboundMessage),
    Webhook(Account, HttpRequest),
}

/// Its answer.
pub enum Answer {
    Validate(Result<(), ChannelError>),
    Send(Result<Delivery, ChannelError>),
    Webhook(HttpResponse),
}

/// A pre-instantiated plugin of some contract version.
pub type Pre = v0_1::ChannelPluginPre<super::sandbox::PluginState>;
