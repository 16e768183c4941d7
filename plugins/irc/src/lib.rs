//! The IRC channel. `run` owns the connection: it connects (over TLS through
//! the host when `tls = true`, default port 6697), registers
//! (PASS, SASL PLAIN when configured), appends `_` to the nick on 433,
//! answers PING, joins the configured channels, turns every PRIVMSG into an
//! inbound message, and sends what `send` queued in the host outbox. When the
//! connection drops `run` fails and the host restarts it with backoff, which
//! reconnects and rejoins. A message the gateway's log refuses is held and
//! offered again (`held`, kept across connections in the key-value store by
//! `spill`): the server will not send it twice.
//!
//! `send` runs on a fresh instance and cannot reach that connection, so it
//! queues the message with `outbox::push`; the delivery id is the queue
//! number. `run` splits each message on newlines and at the 512-byte line
//! limit, paces the lines (`send_burst`, `send_interval_ms`) so the server
//! does not drop the bot for flooding, and acks the message once the server
//! has read it: a PING written after it is answered (`confirm`).

mod confirm;
mod held;
mod line;
mod spill;
mod throttle;

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;
use switchboard_sdk::wstd;
use switchboard_sdk::wstd::future::FutureExt;
use switchboard_sdk::wstd::io::{AsyncRead, AsyncWrite};
use switchboard_sdk::{
    export_channel, Account, AccountState, Channel, ChannelError, Delivery, InboundMessage,
    OutboundMessage, PluginInfo,
};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Sasl {
    username: String,
    password: String,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Settings {
    server: String,
    /// Default 6697 with `tls`, else 6667.
    port: Option<u16>,
    /// Connect over TLS (the host verifies the server's certificate against
    /// the system roots and the channel's `tls_ca`).
    #[serde(default)]
    tls: bool,
    nick: String,
    username: Option<String>,
    realname: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    /// The keys (mode `+k`) of channels in `channels` that have one, by
    /// channel (a name with `password` in it, so the gateway hides them).
    #[serde(default)]
    channel_passwords: BTreeMap<String, String>,
    /// Server password (PASS).
    password: Option<String>,
    /// SASL PLAIN credentials.
    sasl: Option<Sasl>,
    /// Flood control: lines sent at once before pacing starts.
    #[serde(default = "default_send_burst")]
    send_burst: u32,
    /// Flood control: then one line every this many milliseconds.
    #[serde(default = "default_send_interval_ms")]
    send_interval_ms: u64,
    /// Lines one `send` may become (as split for the configured nick); a
    /// longer message is refused, not sent for minutes at the paced rate
    /// while the account's other messages wait. 0: no bound.
    #[serde(default = "default_max_send_lines")]
    max_send_lines: u32,
}

impl Settings {
    fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 6697 } else { 6667 })
    }
}
fn default_send_burst() -> u32 {
    5
}
fn default_send_interval_ms() -> u64 {
    1000
}
fn default_max_send_lines() -> u32 {
    100
}

struct Irc;

fn transient(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Transient(e.to_string())
}

/// Writes one IRC line. A line that holds CR, LF or NUL is refused, not
/// written: the server would end the line there and run the rest as a
/// command of the bot's own. (What an operator sends is split at them by
/// `line::privmsg_lines` and settings are checked by `validate`, so this is
/// the last guard, for what a server echoes back, such as a PING token.)
async fn write_line(s: &mut impl AsyncWrite, line: &str) -> Result<(), ChannelError> {
    if line.contains(['\r', '\n', '\0']) {
        return Err(transient(format!(
            "refused to write an IRC line holding CR, LF or NUL: {:?}",
            line.chars().take(80).collect::<String>()
        )));
    }
    s.write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(transient)
}

/// Checks that a setting can go on an IRC line as one parameter: no CR, LF
/// or NUL anywhere (they end or cut the line), and for a `middle` parameter
/// (`NICK x`, `JOIN x`) no space, comma or leading `:` either.
fn check_param(account: &str, key: &str, v: &str, middle: bool) -> Result<(), ChannelError> {
    let bad = if v.contains(['\r', '\n', '\0']) {
        Some("a CR, LF or NUL")
    } else if middle && v.contains([' ', ',']) {
        Some("a space or comma")
    } else if middle && v.starts_with(':') {
        Some("a leading `:`")
    } else {
        None
    };
    match bad {
        Some(what) => Err(ChannelError::InvalidConfig(format!(
            "channels.irc.accounts.{account}.{key} holds {what}, which IRC cannot carry there: the server would read it as the end of the value or of the command"
        ))),
        None => Ok(()),
    }
}

impl Channel for Irc {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "irc".into(),
            name: "IRC".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "IRC over TCP: channels and direct messages".into(),
            // The server is per account; grant it with [channels.irc] network.
            network: vec![],
            // Media URLs go as links; there are no threads or reactions.
            capabilities: switchboard_sdk::Capabilities::MEDIA,
        }
    }

    fn validate(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        if s.nick.is_empty() {
            return Err(ChannelError::InvalidConfig(format!(
                "channels.irc.accounts.{}.nick is empty",
                account.id
            )));
        }
        let id = &account.id;
        check_param(id, "nick", &s.nick, true)?;
        if let Some(u) = &s.username {
            check_param(id, "username", u, true)?;
        }
        if let Some(r) = &s.realname {
            check_param(id, "realname", r, false)?;
        }
        if let Some(p) = &s.password {
            check_param(id, "password", p, true)?;
        }
        if let Some(sasl) = &s.sasl {
            check_param(id, "sasl.username", &sasl.username, false)?;
            check_param(id, "sasl.password", &sasl.password, false)?;
        }
        if s.send_burst == 0 {
            return Err(ChannelError::InvalidConfig(format!(
                "account `{}`: send_burst must be at least 1",
                account.id
            )));
        }
        for c in &s.channels {
            check_param(id, "channels", c, true)?;
            if !c.starts_with(['#', '&']) {
                return Err(ChannelError::InvalidConfig(format!(
                    "account `{}`: channel `{c}` must start with # or &",
                    account.id
                )));
            }
        }
        for (c, key) in &s.channel_passwords {
            if configured(&s, c).is_none() {
                return Err(ChannelError::InvalidConfig(format!(
                    "channels.irc.accounts.{id}.channel_passwords names `{c}`, which is not in channels: add it there, or drop its password"
                )));
            }
            check_param(id, &format!("channel_passwords.\"{c}\""), key, true)?;
        }
        Ok(())
    }

    fn run(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        wstd::runtime::block_on(async {
            switchboard_sdk::set_state(&account.id, AccountState::Starting, None);
            let addr = format!("{}:{}", s.server, s.port());
            if s.tls {
                let stream = switchboard_sdk::tls::connect(&s.server, s.port())
                    .await
                    .map_err(transient)?;
                session(&account.id, &s, &addr, stream).await
            } else {
                let stream = wstd::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| transient(format!("connect {addr}: {e}")))?;
                session(&account.id, &s, &addr, stream).await
            }
        })
    }

    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        let s: Settings = account.settings()?;
        if message.to.is_empty()
            || message.to.starts_with(':')
            || message.to.contains([' ', ',', '\r', '\n', '\0'])
        {
            return Err(ChannelError::InvalidConfig(format!(
                "{:?} is not a channel or nick: give one name, with no space, comma, CR, LF, NUL or leading `:`",
                message.to
            )));
        }
        let to = message.to.clone();
        // IRC carries text: a media URL goes as a link on its own line; an
        // uploaded file cannot go at all.
        let mut message = message;
        for a in std::mem::take(&mut message.attachments) {
            match a.source {
                switchboard_sdk::AttachmentSource::Url(u) => {
                    if !message.text.is_empty() {
                        message.text.push('\n');
                    }
                    message.text.push_str(&u);
                }
                switchboard_sdk::AttachmentSource::Bytes(_) => {
                    return Err(ChannelError::InvalidConfig(
                        "IRC carries text only: an uploaded file (`buffer`) cannot be sent; give a media URL instead (it is sent as a link)".into(),
                    ))
                }
            }
        }
        let lines = line::privmsg_lines(&to, &message.text, &s.nick).len();
        if s.max_send_lines > 0 && lines > s.max_send_lines as usize {
            return Err(ChannelError::InvalidConfig(format!(
                "this message is {lines} IRC lines, more than the account's max_send_lines ({}): at the paced rate it would hold the account's other messages back; split it, or raise channels.irc.accounts.{}.max_send_lines (0: no bound)",
                s.max_send_lines, account.id
            )));
        }
        let n = switchboard_sdk::outbox::push(&account.id, &message)
            .map_err(ChannelError::Transient)?;
        Ok(Delivery {
            message_id: format!("irc-out-{n}"),
            chat_id: Some(to),
        })
    }
}

/// One connection (plain TCP or TLS): register, then read and send until it
/// fails.
async fn session(
    account: &str,
    s: &Settings,
    addr: &str,
    mut stream: impl AsyncRead + AsyncWrite,
) -> Result<(), ChannelError> {
    let mut nick = s.nick.clone();
    if s.sasl.is_some() {
        write_line(&mut stream, "CAP REQ :sasl").await?;
    }
    if let Some(p) = &s.password {
        write_line(&mut stream, &format!("PASS {p}")).await?;
    }
    write_line(&mut stream, &format!("NICK {nick}")).await?;
    let user = s.username.clone().unwrap_or_else(|| s.nick.clone());
    let real = s.realname.clone().unwrap_or_else(|| s.nick.clone());
    write_line(&mut stream, &format!("USER {user} 0 * :{real}")).await?;

    let mut registered = false;
    let mut sasl_done = false;
    // Configured channels the server would not let us into, by lower-case
    // name, with why: the account shows an error while any is left.
    let mut unjoined: BTreeMap<String, String> = BTreeMap::new();
    let mut throttle =
        throttle::Throttle::new(s.send_burst, s.send_interval_ms, switchboard_sdk::now_ms());
    let mut sending: Sending = None;
    let mut confirm = confirm::Confirm::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut counter: u64 = 0;
    let mut chunk = [0u8; 4096];
    let mut held = HeldFor::load(account);
    loop {
        let read = stream
            .read(&mut chunk)
            .timeout(wstd::time::Duration::from_millis(100))
            .await;
        match read {
            Ok(Ok(0)) => return Err(transient(format!("{addr} closed the connection"))),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(transient(format!("read from {addr}: {e}"))),
            Err(_) => {} // timeout: go check the outbox
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(transient(format!(
                "{addr} sent a line longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            // A line ends with \r\n, or a bare \n from lax servers.
            let raw: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let Some(msg) = line::parse(&text) else {
                continue;
            };
            match msg.command.as_str() {
                "PING" => {
                    write_line(
                        &mut stream,
                        &format!("PONG :{}", msg.params.last().cloned().unwrap_or_default()),
                    )
                    .await?
                }
                // The server has read every line before our PING: the
                // messages written before it leave the outbox.
                "PONG" => {
                    let token = msg.params.last().map(String::as_str).unwrap_or_default();
                    for seq in confirm.pong(token) {
                        switchboard_sdk::outbox::ack(account, seq);
                    }
                }
                "CAP" if msg.params.get(1).map(String::as_str) == Some("ACK") => {
                    write_line(&mut stream, "AUTHENTICATE PLAIN").await?;
                }
                "CAP" if msg.params.get(1).map(String::as_str) == Some("NAK") => {
                    // Going on unauthenticated would run the bot under an
                    // identity the operator did not configure.
                    return Err(ChannelError::Unauthorized(format!(
                        "{addr} does not offer SASL (CAP NAK); remove `sasl` from the account or use a server with SASL"
                    )));
                }
                "AUTHENTICATE" if msg.params.first().map(String::as_str) == Some("+") => {
                    if let Some(sasl) = &s.sasl {
                        let token = line::base64(
                            format!("{0}\0{0}\0{1}", sasl.username, sasl.password).as_bytes(),
                        );
                        for l in line::authenticate_lines(&token) {
                            write_line(&mut stream, &l).await?;
                        }
                    }
                }
                "903" => {
                    sasl_done = true;
                    write_line(&mut stream, "CAP END").await?
                }
                "904" | "905" | "902" => {
                    return Err(ChannelError::Unauthorized(format!(
                        "SASL authentication failed (check `sasl.username` and `sasl.password`): {text}"
                    )));
                }
                "464" => {
                    return Err(ChannelError::Unauthorized(format!(
                        "server password rejected (check `password`): {text}"
                    )))
                }
                "433" if !registered => {
                    nick.push('_');
                    write_line(&mut stream, &format!("NICK {nick}")).await?;
                }
                "001" if s.sasl.is_some() && !sasl_done => {
                    // A server without CAP registers us straight away.
                    return Err(ChannelError::Unauthorized(format!(
                        "{addr} registered the bot without SASL (it may not support CAP); remove `sasl` from the account or use a server with SASL"
                    )));
                }
                "001" => {
                    registered = true;
                    if let Some(n) = msg.params.first() {
                        nick = n.clone();
                    }
                    for join in joins(s) {
                        write_line(&mut stream, &join).await?;
                    }
                    switchboard_sdk::set_state(account, AccountState::Connected, None);
                    switchboard_sdk::info!("{account}: registered as {nick} on {addr}");
                }
                // Servers such as ngircd answer a wrong PASS with ERROR, not 464.
                "ERROR"
                    if !registered
                        && s.password.is_some()
                        && text.to_ascii_lowercase().contains("password") =>
                {
                    return Err(ChannelError::Unauthorized(format!(
                        "server password rejected (check `password`): {text}"
                    )));
                }
                "ERROR" => return Err(transient(format!("{addr}: {text}"))),
                // A configured channel the server would not let us into: the
                // bot stays on (direct messages and other channels work),
                // and the account says which channel and why.
                "403" | "405" | "471" | "473" | "474" | "475"
                    if registered
                        && msg
                            .params
                            .get(1)
                            .is_some_and(|c| configured(s, c).is_some()) =>
                {
                    let channel = msg.params.get(1).map(String::as_str).unwrap_or("?");
                    let hint = match msg.command.as_str() {
                        "475" => {
                            format!("; set channel_passwords.\"{channel}\" to the channel's key")
                        }
                        "473" => "; invite the bot, or drop the channel from channels".into(),
                        _ => String::new(),
                    };
                    let reason = msg.params.last().map(String::as_str).unwrap_or("");
                    let why = format!("could not join {channel}: {reason}{hint}");
                    out_of(account, &mut unjoined, channel, why);
                }
                // Kicked from a configured channel: the account says so
                // until the bot is back in it (an INVITE, or the next
                // connection).
                "KICK"
                    if msg
                        .params
                        .get(1)
                        .is_some_and(|v| v.eq_ignore_ascii_case(&nick))
                        && msg
                            .params
                            .first()
                            .is_some_and(|c| configured(s, c).is_some()) =>
                {
                    let channel = msg.params.first().map(String::as_str).unwrap_or("?");
                    let by = msg.nick().unwrap_or_else(|| "the server".into());
                    let reason = msg.params.get(2).map(String::as_str).unwrap_or("");
                    let why = format!(
                        "kicked from {channel} by {by}: {reason}; invite the bot back, or stop and start the account"
                    );
                    out_of(account, &mut unjoined, channel, why);
                }
                // Invited into a configured channel (one that is invite
                // only): join it now.
                "INVITE" if registered => {
                    let channel = msg.params.get(1).map(String::as_str).unwrap_or("");
                    if let Some(c) = configured(s, channel) {
                        switchboard_sdk::info!("{account}: invited into {c}; joining");
                        write_line(&mut stream, &join_line(s, &[c.as_str()])).await?;
                    }
                }
                // We joined a channel that had refused us: once none is
                // left, the account is well again.
                "JOIN" if msg.nick().is_some_and(|n| n.eq_ignore_ascii_case(&nick)) => {
                    let channel = msg.params.first().map(|c| c.to_ascii_lowercase());
                    if channel.is_some_and(|c| unjoined.remove(&c).is_some()) {
                        match unjoined.values().next() {
                            Some(why) => switchboard_sdk::set_state(
                                account,
                                AccountState::Error,
                                Some(why.as_str()),
                            ),
                            None => {
                                switchboard_sdk::set_state(account, AccountState::Connected, None)
                            }
                        }
                    }
                }
                // The server renamed us (or confirmed our NICK).
                "NICK" if msg.nick().is_some_and(|n| n.eq_ignore_ascii_case(&nick)) => {
                    if let Some(n) = msg.params.first() {
                        nick = n.clone();
                    }
                }
                "PRIVMSG" => {
                    counter += 1;
                    let id = format!("{}-{counter}", switchboard_sdk::now_ms());
                    if let Some(m) = inbound(account, &text, id, switchboard_sdk::now_ms()) {
                        held.push(m);
                    }
                }
                _ => {}
            }
        }
        held.offer();
        if registered {
            let mut out = Outgoing {
                sending: &mut sending,
                confirm: &mut confirm,
                throttle: &mut throttle,
            };
            out.send_queued(account, &mut stream, &nick).await?;
        }
    }
}

/// `channel` as `channels` spells it, if it is one of them (IRC channel
/// names are case-insensitive).
fn configured<'a>(s: &'a Settings, channel: &str) -> Option<&'a String> {
    s.channels.iter().find(|c| c.eq_ignore_ascii_case(channel))
}

/// The bot is not in `channel`, a configured one, for `why`: logged, shown
/// as the account's error, and kept in `unjoined` until it is back in it.
/// (Only configured channels are kept, so the map is bounded by the
/// configuration, whatever the server sends.)
fn out_of(account: &str, unjoined: &mut BTreeMap<String, String>, channel: &str, why: String) {
    switchboard_sdk::warn!("{account}: {why}");
    switchboard_sdk::set_state(account, AccountState::Error, Some(&why));
    unjoined.insert(channel.to_ascii_lowercase(), why);
}

/// The JOIN lines for the configured channels: one for each that has a
/// key (`JOIN #c key`), one for all the others.
fn joins(s: &Settings) -> Vec<String> {
    let (keyed, open): (Vec<&str>, Vec<&str>) = s
        .channels
        .iter()
        .map(String::as_str)
        .partition(|c| key_of(s, c).is_some());
    let mut lines: Vec<String> = keyed.iter().map(|c| join_line(s, &[c])).collect();
    if !open.is_empty() {
        lines.push(join_line(s, &open));
    }
    lines
}

/// `JOIN` for `channels`, with the key of the first if it has one (the
/// caller gives a keyed channel alone).
fn join_line(s: &Settings, channels: &[&str]) -> String {
    let list = channels.join(",");
    match channels.first().and_then(|c| key_of(s, c)) {
        Some(k) => format!("JOIN {list} {k}"),
        None => format!("JOIN {list}"),
    }
}

/// The key (`channel_passwords`) of `channel`, if it has one.
fn key_of<'a>(s: &'a Settings, channel: &str) -> Option<&'a str> {
    s.channel_passwords
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(channel))
        .map(|(_, v)| v.as_str())
}

/// The longest line read from the server (IRCv3 allows 8191 bytes of tags
/// and 512 of message): a server sending more without a newline is cut off.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// An inbound message from a PRIVMSG line (`None` for another line): in a
/// channel its chat is the channel, in a direct message the sender.
fn inbound(account: &str, text: &str, message_id: String, at_ms: u64) -> Option<InboundMessage> {
    let msg = line::parse(text)?;
    if msg.command != "PRIVMSG" || msg.params.len() < 2 {
        return None;
    }
    let sender = msg.nick().unwrap_or_default();
    let target = &msg.params[0];
    let chat = if target.starts_with(['#', '&']) {
        target.clone()
    } else {
        sender.clone()
    };
    Some(InboundMessage {
        account_id: account.to_string(),
        chat_id: chat,
        sender_id: sender.clone(),
        sender_name: Some(sender),
        message_id,
        text: msg.params[1].clone(),
        timestamp_ms: at_ms,
        thread_id: None,
        reply_to_id: None,
        raw: Some(text.to_string()),
        attachments: vec![],
    })
}

/// One account's inbound messages on their way to the log. Normally each
/// goes straight through; while the log refuses them they are held, in
/// memory and in the key-value store (`spill`), and offered again every
/// second, so that a dropped connection or a restart does not lose them.
struct HeldFor<'a> {
    account: &'a str,
    /// Each with its number in the spill.
    held: held::Held<(u64, InboundMessage)>,
    spill: spill::Spill,
    /// The log refused the last offer (logged once per spell).
    refusing: bool,
}

impl<'a> HeldFor<'a> {
    /// The account's messages a previous connection or run left held.
    fn load(account: &'a str) -> Self {
        let (spill, entries) = spill::Spill::load(&spill::Kv, account);
        let mut me = HeldFor {
            account,
            held: held::Held::default(),
            spill,
            refusing: false,
        };
        let found = entries.len();
        for (n, entry) in entries {
            // `<message id>\n<ms>\n<the PRIVMSG line>`
            let mut parts = entry.splitn(3, '\n');
            let (Some(id), Some(at), Some(raw)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if let Some(m) = inbound(account, raw, id.to_string(), at.parse().unwrap_or(0)) {
                me.held.push((n, m), 2 * raw.len() + 256);
            }
        }
        me.spill
            .keep_from(&mut spill::Kv, me.held.front().map(|(n, _)| *n));
        if found > 0 {
            switchboard_sdk::warn!(
                "{account}: {found} message(s) the gateway's message log refused earlier are still held; offering them again"
            );
            me.refusing = true;
        }
        me
    }

    /// A message from the server: to the log, behind any held ones.
    fn push(&mut self, m: InboundMessage) {
        if self.held.is_empty() && switchboard_sdk::deliver(m.clone()).is_ok() {
            return;
        }
        let raw = m.raw.clone().unwrap_or_default();
        let n = self.spill.push(
            &mut spill::Kv,
            &format!("{}\n{}\n{raw}", m.message_id, m.timestamp_ms),
        );
        let dropped = self.held.push((n, m), 2 * raw.len() + 256);
        if dropped > 0 {
            self.spill
                .keep_from(&mut spill::Kv, self.held.front().map(|(n, _)| *n));
            switchboard_sdk::error!(
                "{}: {dropped} message(s) lost: the gateway's message log has refused them for too long and {} are held already (the most kept)",
                self.account,
                self.held.len()
            );
        }
    }

    /// Delivers the held messages, in order, unless the log refused one
    /// less than a second ago; logs when the log starts and stops refusing.
    fn offer(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let f = self.held.flush(switchboard_sdk::now_ms(), |(_, m)| {
            switchboard_sdk::deliver(m.clone()).map(|_| ())
        });
        if f.delivered > 0 {
            self.spill
                .keep_from(&mut spill::Kv, self.held.front().map(|(n, _)| *n));
        }
        let account = self.account;
        match f.refused {
            Some(why) if !self.refusing => {
                self.refusing = true;
                switchboard_sdk::warn!(
                    "{account}: the gateway's message log refused a message ({why}); holding messages (at most {} or {} MiB, kept across reconnects) and offering them again every second",
                    held::MAX_MESSAGES,
                    held::MAX_BYTES >> 20
                );
            }
            None if self.refusing && self.held.is_empty() => {
                self.refusing = false;
                switchboard_sdk::info!(
                    "{account}: the gateway's message log takes messages again; every held message is delivered"
                );
            }
            _ => {}
        }
    }
}

/// The message being sent: its queue number and the lines still to write.
type Sending = Option<(u64, VecDeque<String>)>;

/// What one connection sends: the message being written, what the server
/// has not confirmed reading, and the pace.
struct Outgoing<'a> {
    sending: &'a mut Sending,
    confirm: &'a mut confirm::Confirm,
    throttle: &'a mut throttle::Throttle,
}

impl Outgoing<'_> {
    /// Writes queued messages as far as the throttle allows, then a PING
    /// when one is due: a message is acked when the PING after it is
    /// answered; if the connection fails first, the host gives it to the
    /// next connection again.
    async fn send_queued(
        &mut self,
        account: &str,
        stream: &mut impl AsyncWrite,
        nick: &str,
    ) -> Result<(), ChannelError> {
        loop {
            if self.sending.is_none() {
                *self.sending = switchboard_sdk::outbox::pop(account).map(|(seq, m)| {
                    (
                        seq,
                        VecDeque::from(line::privmsg_lines(&m.to, &m.text, nick)),
                    )
                });
            }
            let Some((seq, lines)) = self.sending else {
                return self.ask(stream, true).await;
            };
            match lines.front() {
                None => {
                    self.confirm.written(*seq);
                    *self.sending = None;
                    self.ask(stream, false).await?;
                }
                Some(l) if self.throttle.take(switchboard_sdk::now_ms()) => {
                    write_line(stream, l).await?;
                    lines.pop_front();
                }
                Some(_) => return Ok(()),
            }
        }
    }

    /// Writes a PING if one is due (`idle`: nothing more is queued) and the
    /// pace allows it (else it goes on a later turn).
    async fn ask(&mut self, stream: &mut impl AsyncWrite, idle: bool) -> Result<(), ChannelError> {
        if !self.confirm.due(idle) || !self.throttle.take(switchboard_sdk::now_ms()) {
            return Ok(());
        }
        if let Some(token) = self.confirm.ask(idle) {
            write_line(stream, &format!("PING :{token}")).await?;
        }
        Ok(())
    }
}

export_channel!(Irc);
