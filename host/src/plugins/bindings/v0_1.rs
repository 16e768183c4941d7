//! The generated bindings of `switchboard:channel@0.1.0` (`wit/`), and the
//! names the host uses for its types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "channel-plugin",
    exports: { default: async },
});

pub use self::exports::switchboard::channel::channel::{
    Account, ChannelError, Delivery, HttpRequest, HttpResponse, OutboundMessage, PluginInfo,
};
pub use self::switchboard::channel::types::{AccountState, InboundMessage, LogLevel};
