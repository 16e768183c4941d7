//! # switchboard-sdk
//!
//! Write a Switchboard messaging channel as a
//! WebAssembly component: implement [`Channel`], call [`export_channel!`], and
//! build with `cargo build --target wasm32-wasip2 --release`.
//!
//! ```no_run
//! use switchboard_sdk::{export_channel, Account, Channel, ChannelError, Delivery, OutboundMessage, PluginInfo};
//!
//! struct Echo;
//!
//! impl Channel for Echo {
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             id: "echo".into(),
//!             name: "Echo".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             description: "Sends every message back as an inbound one".into(),
//!             network: vec![],
//!             capabilities: switchboard_sdk::Capabilities::empty(),
//!         }
//!     }
//!
//!     fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
//!         let id = format!("echo-{}", switchboard_sdk::now_ms());
//!         switchboard_sdk::deliver(switchboard_sdk::InboundMessage {
//!             account_id: account.id.clone(),
//!             chat_id: message.to.clone(),
//!             sender_id: "echo".into(),
//!             sender_name: None,
//!             message_id: id.clone(),
//!             text: message.text,
//!             timestamp_ms: switchboard_sdk::now_ms(),
//!             thread_id: message.thread_id,
//!             reply_to_id: None,
//!             raw: None,
//!             attachments: vec![],
//!         })
//!         .map_err(ChannelError::Transient)?;
//!         Ok(Delivery { message_id: id, chat_id: Some(message.to) })
//!     }
//! }
//!
//! export_channel!(Echo);
//! ```
//!
//! The WIT bindings stay private: the types below are the WIT records under
//! their UpperCamelCase names, host calls are plain functions, and the
//! sandbox-capable HTTP client and TCP stream come from [`wstd`], re-exported.

#![deny(missing_docs)]

// The README's example is compiled as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc(hidden)]
#[allow(missing_docs)]
pub mod __private {
    wit_bindgen::generate!({
        path: "wit",
        world: "channel-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_channel_plugin",
        default_bindings_module: "switchboard_sdk::__private",
        // The streams `tls.connect` returns are wstd's own types.
        with: {
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
        },
    });
    pub use self::exports::switchboard::channel::channel::Guest;
}

use __private::switchboard::channel::{host, types};

pub use types::{
    Account, AccountState, AttachmentKind, AttachmentSource, Capabilities, ChannelError, Delivery,
    Edit, HttpRequest, HttpResponse, InboundAttachment, InboundMessage, LogLevel, MessageAction,
    MessageRef, OutboundAttachment, OutboundMessage, PluginInfo, Reaction,
};
/// An async standard library for WASI 0.2 components: HTTP client
/// (`wstd::http`), TCP (`wstd::net`), timers (`wstd::task`) and a runtime
/// (`wstd::runtime::block_on`). Network access is limited to the hosts the
/// plugin is granted.
pub use wstd;

/// A messaging channel. Only [`info`](Channel::info) and
/// [`send`](Channel::send) are required.
pub trait Channel {
    /// Static facts: id, name, version, the network the plugin needs.
    fn info() -> PluginInfo;

    /// Checks an account's settings before it is started. Default: accept.
    fn validate(account: Account) -> Result<(), ChannelError> {
        let _ = account;
        Ok(())
    }

    /// The account's receive loop; the host cancels it when the account
    /// stops. Default: report `connected` and wait (a send-only channel).
    fn run(account: Account) -> Result<(), ChannelError> {
        set_state(&account.id, AccountState::Connected, None);
        wstd::runtime::block_on(async {
            loop {
                wstd::task::sleep(wstd::time::Duration::from_secs(3600)).await;
            }
        })
    }

    /// Sends one message.
    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError>;

    /// Reacts to, edits or deletes a message. The host calls it only for
    /// the actions whose capability [`info`](Channel::info) declares
    /// (`Capabilities::REACTIONS`, `EDIT`, `DELETE`). Default: refuse.
    fn act(account: Account, action: MessageAction) -> Result<(), ChannelError> {
        let _ = (account, action);
        Err(ChannelError::Fatal(
            "this channel does not support message actions".into(),
        ))
    }

    /// Handles `POST /hooks/<channel>/<account>`. Default: 404.
    fn handle_webhook(account: Account, request: HttpRequest) -> HttpResponse {
        let _ = (account, request);
        HttpResponse {
            status: 404,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"error":"this channel does not accept webhooks"}"#.to_vec(),
        }
    }
}

/// Exports `$t` (a type implementing [`Channel`]) as the component's `channel`.
#[macro_export]
macro_rules! export_channel {
    ($t:ty) => {
        const _: () = {
            struct __SwitchboardChannel;
            impl $crate::__private::Guest for __SwitchboardChannel {
                fn info() -> $crate::PluginInfo {
                    <$t as $crate::Channel>::info()
                }
                fn validate(account: $crate::Account) -> Result<(), $crate::ChannelError> {
                    <$t as $crate::Channel>::validate(account)
                }
                fn run(account: $crate::Account) -> Result<(), $crate::ChannelError> {
                    <$t as $crate::Channel>::run(account)
                }
                fn send(
                    account: $crate::Account,
                    message: $crate::OutboundMessage,
                ) -> Result<$crate::Delivery, $crate::ChannelError> {
                    <$t as $crate::Channel>::send(account, message)
                }
                fn act(
                    account: $crate::Account,
                    action: $crate::MessageAction,
                ) -> Result<(), $crate::ChannelError> {
                    <$t as $crate::Channel>::act(account, action)
                }
                fn handle_webhook(
                    account: $crate::Account,
                    request: $crate::HttpRequest,
                ) -> $crate::HttpResponse {
                    <$t as $crate::Channel>::handle_webhook(account, request)
                }
            }
            $crate::__private::__export_channel_plugin!(__SwitchboardChannel with_types_in $crate::__private);
        };
    };
}

impl Account {
    /// Parses the account's settings into `T`; a mismatch becomes
    /// `ChannelError::InvalidConfig` naming the account, the setting and
    /// the problem, but not the value: serde would quote it
    /// (``invalid type: integer `12345678` ``), it may be a secret (a
    /// password written without quotes), and the error is shown in
    /// `channels.status`, which every `operator.read` client can call.
    ///
    /// ```no_run
    /// # use switchboard_sdk::{Account, ChannelError};
    /// #[derive(serde::Deserialize)]
    /// #[serde(deny_unknown_fields)] // a typo in the config is an error, not a silent default
    /// struct Settings {
    ///     server: String,
    ///     #[serde(default)]
    ///     tls: bool,
    /// }
    ///
    /// fn validate(account: Account) -> Result<(), ChannelError> {
    ///     let s: Settings = account.settings()?;
    ///     if s.server.is_empty() {
    ///         return Err(ChannelError::InvalidConfig(format!("account `{}`: empty server", account.id)));
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, ChannelError> {
        let de = &mut serde_json::Deserializer::from_str(&self.settings);
        serde_path_to_error::deserialize(de)
            .map_err(|e| ChannelError::InvalidConfig(settings_error(&self.id, e)))
    }
}

/// `account `x`: `path`: what is wrong`, without the value serde quotes in
/// an `invalid type` or `invalid value` (`integer `5``, `string "x"`)
/// and without serde_json's position in the JSON the host built.
fn settings_error(account: &str, e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let mut message = inner.to_string();
    let at = format!(" at line {} column {}", inner.line(), inner.column());
    if let Some(m) = message.strip_suffix(&at) {
        message = m.to_string();
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let kind = got.split(['`', '"']).next().unwrap_or(got).trim();
        message = if expected.is_empty() {
            format!("{prefix}{kind}")
        } else {
            format!("{prefix}{kind}, expected {expected}")
        };
        break;
    }
    // An unknown field at the top names itself.
    let top_unknown = message.starts_with("unknown field") && !path.contains('.');
    if path == "." || path.is_empty() || top_unknown {
        format!("account `{account}`: {message}")
    } else {
        format!("account `{account}`: `{path}`: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        server: String,
        password: Option<String>,
        port: Option<u16>,
        sasl: Option<Sasl>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sasl {
        password: String,
    }

    fn err(settings: &str) -> String {
        let a = Account {
            id: "a".into(),
            settings: settings.into(),
        };
        match a.settings::<Settings>() {
            Err(ChannelError::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_settings_error_names_the_setting_not_the_value() {
        let e = err(r#"{"server": "s", "password": 98127364}"#);
        assert_eq!(
            e,
            "account `a`: `password`: invalid type: integer, expected a string"
        );
        let e = err(r#"{"server": "s", "sasl": {"password": 4242424242}}"#);
        assert_eq!(
            e,
            "account `a`: `sasl.password`: invalid type: integer, expected a string"
        );
        let e = err(r#"{"server": "s", "port": "s3cr3t"}"#);
        assert_eq!(e, "account `a`: `port`: invalid type: string, expected u16");
        let e = err(r#"{"server": "s", "port": 70000}"#);
        assert!(
            !e.contains("70000") && e.contains("`port`: invalid value: integer"),
            "{e}"
        );
        // What names the problem stays.
        let e = err(r#"{"server": "s", "pasword": "x"}"#);
        assert!(
            e.starts_with("account `a`: unknown field `pasword`, expected one of `server`"),
            "{e}"
        );
        let e = err(r#"{}"#);
        assert_eq!(e, "account `a`: missing field `server`");
    }
}

/// Hands a received message to the gateway; returns its sequence number.
/// Advance your upstream offset only after this returns `Ok`.
///
/// ```no_run
/// # use switchboard_sdk::{ChannelError, InboundMessage};
/// # fn f(update_id: u64, chat: &str, text: &str) -> Result<(), ChannelError> {
/// switchboard_sdk::deliver(InboundMessage {
///     account_id: "default".into(),
///     chat_id: chat.into(),
///     sender_id: "alice".into(),
///     sender_name: Some("Alice".into()),
///     // The channel's own id: the gateway drops a second delivery of it.
///     message_id: update_id.to_string(),
///     text: text.into(),
///     timestamp_ms: switchboard_sdk::now_ms(),
///     thread_id: None,
///     reply_to_id: None,
///     raw: None,
///     attachments: vec![],
/// })
/// .map_err(ChannelError::Transient)?;
/// // Only now: the message is on the gateway's disk.
/// switchboard_sdk::kv::set("offset", &(update_id + 1).to_le_bytes());
/// # Ok(()) }
/// ```
pub fn deliver(message: InboundMessage) -> Result<u64, String> {
    host::deliver(&message)
}

/// Reports an account's connection state (shown in `channels.status`).
///
/// ```no_run
/// use switchboard_sdk::AccountState;
/// switchboard_sdk::set_state("default", AccountState::Starting, None);
/// // ... connected:
/// switchboard_sdk::set_state("default", AccountState::Connected, None);
/// // ... lost it; `run` returns an error and the host restarts it with backoff:
/// switchboard_sdk::set_state("default", AccountState::Disconnected, Some("server closed the connection"));
/// ```
pub fn set_state(account_id: &str, state: AccountState, detail: Option<&str>) {
    host::set_state(account_id, state, detail)
}

/// Writes a log line under the plugin's id (see also [`info!`] and friends).
/// Stdout and stderr lines are logged too. The host keeps at most
/// `plugins.log_lines_per_second` of a plugin's lines per second (50 by
/// default, in bursts of up to 10 seconds' worth), dropping and counting the
/// rest, and cuts each line to 8 KiB.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message)
}

/// Milliseconds since the Unix epoch, from the host's wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Outgoing HTTP in one call: send with timeouts, read the answer as text.
///
/// The request goes through `wasi:http`, so the host checks it against the
/// channel's network grants.
pub mod http {
    use super::ChannelError;
    use wstd::http::{Body, Client, Request};
    use wstd::time::Duration;

    /// An answer read whole.
    #[derive(Debug, Clone)]
    pub struct TextResponse {
        /// The HTTP status code.
        pub status: u16,
        /// The body as text (invalid UTF-8 replaced).
        pub text: String,
    }

    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::ChannelError> {
    /// use switchboard_sdk::wstd::{http::Request, time::Duration};
    /// let req = Request::post("https://api.example.com/send")
    ///     .header("content-type", "application/json")
    ///     .body(r#"{"text":"hi"}"#.to_string())
    ///     .map_err(|e| switchboard_sdk::ChannelError::InvalidConfig(e.to_string()))?;
    /// let r = switchboard_sdk::http::send_text(req, "POST /send", Duration::from_secs(10)).await?;
    /// if r.status == 429 {
    ///     return Err(switchboard_sdk::ChannelError::RateLimited(1000)); // retry in 1 s
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Sends `req`, allowing `timeout` to connect and again for the first
    /// byte of the answer, and reads the whole body, up to
    /// [`MAX_TEXT_BYTES`]. A request that cannot be sent or answered, or
    /// whose answer is larger, is [`ChannelError::Transient`], with `what`
    /// (say, the method and URL with any secret left out) at the front of
    /// the message; any status, 4xx and 5xx included, is a
    /// [`TextResponse`].
    pub async fn send_text<B: Into<Body>>(
        req: Request<B>,
        what: &str,
        timeout: Duration,
    ) -> Result<TextResponse, ChannelError> {
        use http_body_util::BodyExt;
        let mut client = Client::new();
        client.set_connect_timeout(timeout);
        client.set_first_byte_timeout(timeout);
        let mut resp = client
            .send(req)
            .await
            .map_err(|e| ChannelError::Transient(format!("{what}: {e:?}")))?;
        let status = resp.status().as_u16();
        let too_large = |n: String| {
            ChannelError::Transient(format!(
                "{what}: the answer has {n} bytes; send_text reads at most {MAX_TEXT_BYTES}"
            ))
        };
        if let Some(n) = resp
            .body()
            .content_length()
            .filter(|n| *n > MAX_TEXT_BYTES as u64)
        {
            return Err(too_large(n.to_string()));
        }
        // Read in frames, so that a larger answer is refused at the bound,
        // not after it has filled the instance's memory.
        let mut body = std::mem::replace(resp.body_mut(), Body::empty()).into_boxed_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ChannelError::Transient(format!("{what}: reading the answer: {e:?}"))
            })?;
            if let Ok(chunk) = frame.into_data() {
                if data.len() + chunk.len() > MAX_TEXT_BYTES {
                    return Err(too_large(format!("more than {MAX_TEXT_BYTES}")));
                }
                data.extend_from_slice(&chunk);
            }
        }
        Ok(TextResponse {
            status,
            text: match String::from_utf8(data) {
                Ok(t) => t,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            },
        })
    }

    /// The most [`send_text`] reads of an answer: 8 MiB (an instance has
    /// `plugins.memory_mb`, 64 MiB by default, for the text and what is
    /// parsed from it).
    pub const MAX_TEXT_BYTES: usize = 8 << 20;
}

/// TLS client connections for socket channels: a [`tls::TlsStream`] reads
/// and writes like [`wstd::net::TcpStream`].
///
/// The host opens the TCP connection (checked against the channel's network
/// grants) and runs the handshake, verifying the server's certificate for
/// `host` against the system roots plus the channel's `tls_ca` file.
///
/// ```no_run
/// # async fn f() -> Result<(), switchboard_sdk::ChannelError> {
/// use switchboard_sdk::wstd::io::{AsyncRead, AsyncWrite};
///
/// let mut s = switchboard_sdk::tls::connect("irc.libera.chat", 6697)
///     .await
///     .map_err(switchboard_sdk::ChannelError::Transient)?;
/// s.write_all(b"NICK bot\r\n").await.map_err(|e| switchboard_sdk::ChannelError::Transient(e.to_string()))?;
/// let mut buf = [0u8; 512];
/// let n = s.read(&mut buf).await.map_err(|e| switchboard_sdk::ChannelError::Transient(e.to_string()))?;
/// # let _ = n;
/// # Ok(())
/// # }
/// ```
pub mod tls {
    use super::__private::switchboard::channel::tls as wit;
    use wstd::io::{AsyncInputStream, AsyncOutputStream, AsyncRead, AsyncWrite};

    /// A TLS connection: plain text in and out; dropping it closes it.
    pub struct TlsStream {
        input: AsyncInputStream,
        output: AsyncOutputStream,
    }

    /// Connects to `host:port` over TCP and TLS (see the module). The error
    /// names the host and what failed: not granted (and the grant to add),
    /// unreachable, or a certificate that is not trusted.
    pub async fn connect(host: &str, port: u16) -> Result<TlsStream, String> {
        let (input, output) = wit::connect(host, port)?;
        Ok(TlsStream {
            input: AsyncInputStream::new(input),
            output: AsyncOutputStream::new(output),
        })
    }

    impl AsyncRead for TlsStream {
        async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf).await
        }

        fn as_async_input_stream(&self) -> Option<&AsyncInputStream> {
            Some(&self.input)
        }
    }

    impl AsyncWrite for TlsStream {
        async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf).await
        }

        async fn flush(&mut self) -> std::io::Result<()> {
            self.output.flush().await
        }

        fn as_async_output_stream(&self) -> Option<&AsyncOutputStream> {
            Some(&self.output)
        }
    }
}

/// Hands messages from `send` (fresh instance) to the account's `run` loop,
/// for channels whose connection is owned by `run` (such as IRC).
///
/// ```no_run
/// # use switchboard_sdk::{Account, ChannelError, Delivery, OutboundMessage};
/// // In `send`: queue it; the delivery id is the queue number.
/// fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
///     let n = switchboard_sdk::outbox::push(&account.id, &message).map_err(ChannelError::Transient)?;
///     Ok(Delivery { message_id: format!("out-{n}"), chat_id: Some(message.to) })
/// }
///
/// // In `run`, on the connection: pop, write, and ack once written.
/// fn drain(account: &str, mut write: impl FnMut(&OutboundMessage) -> std::io::Result<()>) -> std::io::Result<()> {
///     while let Some((seq, m)) = switchboard_sdk::outbox::pop(account) {
///         write(&m)?; // on failure `run` ends: the host gives `m` out again next time
///         switchboard_sdk::outbox::ack(account, seq);
///     }
///     Ok(())
/// }
/// ```
pub mod outbox {
    use super::{host, OutboundMessage};

    /// Queues `message` for `account_id`'s `run` loop; returns its queue number.
    pub fn push(account_id: &str, message: &OutboundMessage) -> Result<u64, String> {
        host::outbox_push(account_id, message)
    }

    /// Takes the oldest queued message for `account_id`, with its queue
    /// number. Call [`ack`] with that number once it is sent: until then the
    /// host keeps it, and gives it out again (first) when the account's
    /// `run` starts anew, so nothing is lost when a connection drops midway.
    pub fn pop(account_id: &str) -> Option<(u64, OutboundMessage)> {
        host::outbox_pop(account_id)
    }

    /// Confirms that the message popped under `seq` was sent.
    pub fn ack(account_id: &str, seq: u64) {
        host::outbox_ack(account_id, seq)
    }
}

/// The channel's private key-value store (each channel a plugin serves has
/// its own); it survives reloads and restarts. A write is on the disk once
/// the call that made it returns (or with the next `deliver`; in `run`,
/// within 50 ms), and is never lost while a later `deliver` is kept.
///
/// ```no_run
/// // Refuse a replayed webhook: its signature's nonce is claimed for 5 minutes.
/// # fn handle(nonce: &str) -> Result<(), String> {
/// if !switchboard_sdk::kv::claim(&format!("nonce:{nonce}"), 5 * 60 * 1000) {
///     return Err("replayed request".into());
/// }
/// // A cursor kept across restarts.
/// let offset = switchboard_sdk::kv::get("offset")
///     .and_then(|b| b.try_into().ok())
///     .map(u64::from_le_bytes)
///     .unwrap_or(0);
/// # let _ = offset; Ok(()) }
/// ```
pub mod kv {
    use super::host;

    /// The value stored under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }
    /// Stores `value` under `key`. A channel's store is bounded (64 MiB by
    /// default, the host's `store.kv_max_bytes`): a write that would grow it
    /// past that is not stored, so read the key back where that matters.
    pub fn set(key: &str, value: &[u8]) {
        host::kv_set(key, value)
    }
    /// Removes `key`.
    pub fn delete(key: &str) {
        host::kv_delete(key)
    }
    /// Records `key` as seen for `ttl_ms` (at most 24 h) unless it already
    /// is: `true` the first time, `false` while it is remembered (or when the
    /// host could not record it). Atomic across concurrent calls and kept
    /// across restarts: use it to refuse replayed requests.
    pub fn claim(key: &str, ttl_ms: u64) -> bool {
        host::kv_claim(key, ttl_ms)
    }
    /// Forgets a claim, so that a retry of work that failed is accepted.
    pub fn unclaim(key: &str) {
        host::kv_unclaim(key)
    }
}

/// Logs at info level: `switchboard_sdk::info!("connected to {}", host)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Info, &format!($($arg)*)) };
}
/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Warn, &format!($($arg)*)) };
}
/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Error, &format!($($arg)*)) };
}
/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Debug, &format!($($arg)*)) };
}
