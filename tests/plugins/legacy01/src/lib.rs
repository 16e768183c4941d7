//! A channel built against the frozen contract `switchboard:channel@0.1.0`
//! with `wit-bindgen` directly, as a plugin compiled with SDK 0.1 was: the
//! host must load it next to 0.2 plugins. `send` delivers the text back as
//! an inbound message (like echo); `run` reports connected and waits.
wit_bindgen::generate!({
    path: "../../../host/wit/v0.1.0",
    world: "channel-plugin",
});

use exports::switchboard::channel::channel::{
    Account, ChannelError, Delivery, Guest, HttpRequest, HttpResponse, OutboundMessage, PluginInfo,
};
use switchboard::channel::host;
use switchboard::channel::types::{AccountState, InboundMessage};

struct Legacy;

impl Guest for Legacy {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "legacy".into(),
            name: "Legacy 0.1".into(),
            version: "0.1.0".into(),
            description: "built against contract 0.1.0".into(),
            network: vec![],
        }
    }
    fn validate(_: Account) -> Result<(), ChannelError> {
        Ok(())
    }
    fn run(account: Account) -> Result<(), ChannelError> {
        host::set_state(&account.id, AccountState::Connected, None);
        loop {
            // A blocking wait the host interrupts by dropping the instance.
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        let id = format!("legacy-{}", message.text.len());
        host::deliver(&InboundMessage {
            account_id: account.id,
            chat_id: message.to.clone(),
            sender_id: "legacy".into(),
            sender_name: None,
            message_id: format!("{id}-{}", message.text),
            text: format!("legacy: {}", message.text),
            timestamp_ms: 0,
            thread_id: message.thread_id,
            reply_to_id: None,
            raw: None,
        })
        .map_err(ChannelError::Transient)?;
        Ok(Delivery {
            message_id: id,
            chat_id: Some(message.to),
        })
    }
    fn handle_webhook(_: Account, _: HttpRequest) -> HttpResponse {
        HttpResponse {
            status: 404,
            headers: vec![],
            body: vec![],
        }
    }
}

export!(Legacy);
