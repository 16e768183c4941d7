//! The IRC channel (plugins/irc) against a real ngircd started by the test,
//! with a real IRC client in the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Ngircd {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Extra `[Global]` lines, e.g. `Password = ...`.
    global: String,
    /// Seconds of silence before ngircd PINGs a client (and again before it
    /// drops one that did not answer); 5 is ngircd's minimum.
    ping_timeout: u32,
    /// A TLS port too: (port, `[SSL]` section).
    tls: Option<(u16, String)>,
}

fn ngircd_binary() -> PathBuf {
    for p in ["/usr/sbin/ngircd", "/usr/bin/ngircd"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("ngircd is not installed: `make test` installs it (apt-get install ngircd)");
}

impl Ngircd {
    fn start() -> Ngircd {
        Ngircd::start_with("", 120)
    }

    fn start_with(global: &str, ping_timeout: u32) -> Ngircd {
        Ngircd::start_checked(|| Ngircd {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            global: global.to_string(),
            ping_timeout,
            tls: None,
        })
    }

    /// Starts the server `make` builds, on ports picked free, again on
    /// other ports when it exits at start (see [`stays_up`]).
    fn start_checked(make: impl Fn() -> Ngircd) -> Ngircd {
        stays_up(
            "ngircd",
            || {
                let mut n = make();
                n.spawn();
                n
            },
            |n| {
                let status = n.child.as_mut().map(|c| c.try_wait());
                let log = || std::fs::read_to_string(n.dir.path().join("ngircd.log"));
                match status {
                    Some(Ok(None)) => None,
                    status => Some(format!("{status:?}, {}", log().unwrap_or_default())),
                }
            },
        )
    }

    /// ngircd with a TLS port as well, serving `cert_pem`/`key_pem`.
    fn start_tls(cert_pem: &str, key_pem: &str) -> Ngircd {
        let n = Ngircd::start_checked(|| {
            let dir = tempfile::tempdir().unwrap();
            // ngircd drops to ServerUID before it reads them.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
            for (p, text) in [(&cert, cert_pem), (&key, key_pem)] {
                std::fs::write(p, text).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            let tls_port = free_port();
            Ngircd {
                child: None,
                port: free_port(),
                dir,
                global: String::new(),
                ping_timeout: 120,
                tls: Some((
                    tls_port,
                    format!(
                        "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {tls_port}\n",
                        cert.display(),
                        key.display()
                    ),
                )),
            }
        });
        if let Some((tls_port, _)) = &n.tls {
            wait_listening(*tls_port, "ngircd's TLS port");
        }
        n
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("ngircd.conf");
        std::fs::write(
            &conf,
            format!(
                "[Global]\nName = irc.test\nInfo = switchboard test\nListen = 127.0.0.1\nPorts = {}\n\
                 MotdPhrase = \"test\"\nServerUID = 65534\nServerGID = 65534\n{}\n\
                 [Limits]\nPingTimeout = {}\nPongTimeout = {}\nMaxNickLength = 30\n\
                 [Options]\nPAM = no\nIdent = no\nDNS = no\n{}",
                self.port,
                self.global,
                self.ping_timeout,
                self.ping_timeout.min(20),
                self.tls.as_ref().map(|t| t.1.as_str()).unwrap_or_default()
            ),
        )
        .unwrap();
        let child = Command::new("stdbuf")
            .arg("-oL")
            .arg(ngircd_binary())
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("ngircd.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ngircd");
        self.child = Some(child);
        wait_listening(self.port, "ngircd");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something listens on `port`. A connection to a port nobody
/// listens on can succeed as a TCP self-connect (its source port picked
/// equal to the destination), which would also hold the port the server
/// is about to bind: such a connection does not count.
/// Starts a server with `start` until it is still running 300 ms later
/// (`exited`: why it is not, its status and output), three attempts. A
/// port picked free can be taken before the server binds it (by another
/// test's server, or as the source port of a connection): `wait_listening`
/// then sees the other listener, and the server exits.
fn stays_up<T>(what: &str, start: impl Fn() -> T, exited: impl Fn(&mut T) -> Option<String>) -> T {
    for attempt in 1..=3 {
        let mut server = start();
        std::thread::sleep(Duration::from_millis(300));
        match exited(&mut server) {
            None => return server,
            Some(why) => eprintln!("{what} exited at start (attempt {attempt}): {why}"),
        }
    }
    panic!("{what} did not stay up in three attempts (its output is above)");
}

fn wait_listening(port: u16, what: &str) {
    let t0 = std::time::Instant::now();
    let listening = || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
    };
    while !listening() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain IRC client.
struct IrcClient {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl IrcClient {
    async fn connect(port: u16, nick: &str, join: Option<&str>) -> IrcClient {
        IrcClient::connect_with(port, nick, None, join).await
    }

    async fn connect_with(
        port: u16,
        nick: &str,
        pass: Option<&str>,
        join: Option<&str>,
    ) -> IrcClient {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, w) = s.into_split();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut c = IrcClient { lines: rx, w };
        if let Some(p) = pass {
            c.send(&format!("PASS {p}")).await;
        }
        c.send(&format!("NICK {nick}")).await;
        c.send(&format!("USER {nick} 0 * :{nick}")).await;
        c.wait(|l| l.contains(" 001 ")).await;
        if let Some(ch) = join {
            c.send(&format!("JOIN {ch}")).await;
            c.wait(|l| l.contains(" 366 ")).await;
        }
        c
    }

    /// `tester`, who creates `channel` (so is its operator) and sets
    /// `mode` on it (`+k key`, `+i`).
    async fn with_mode(port: u16, channel: &str, mode: &str) -> IrcClient {
        let mut c = IrcClient::connect(port, "tester", Some(channel)).await;
        c.send(&format!("MODE {channel} {mode}")).await;
        let flag = mode.split(' ').next().unwrap_or(mode).to_string();
        c.wait(|l| l.contains(&format!("MODE {channel} {flag}")))
            .await;
        c
    }

    async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads and answers PINGs for `d`, so the server keeps us.
    async fn idle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(l)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            if let Some(p) = l.strip_prefix("PING ") {
                self.send(&format!("PONG {p}")).await;
            }
        }
    }

    /// Waits (asking with NAMES) until `nick` is in `channel`.
    async fn wait_member(&mut self, channel: &str, nick: &str) {
        let t0 = std::time::Instant::now();
        loop {
            self.send(&format!("NAMES {channel}")).await;
            let names = self
                .wait(|l| l.contains(" 353 ") || l.contains(" 366 "))
                .await;
            if names.contains(" 353 ") {
                let members = names.rsplit(':').next().unwrap_or("");
                if members
                    .split(' ')
                    .any(|m| m.trim_start_matches(['@', '+']) == nick)
                {
                    return;
                }
                self.wait(|l| l.contains(" 366 ")).await;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{nick} never joined {channel}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Expects exactly these messages in `channel`, in order (a QUIT of
    /// anyone in between fails, such as the bot dropped for flooding).
    async fn expect_lines(&mut self, channel: &str, lines: &[String]) {
        for l in lines {
            let got = self
                .wait(|x| x.contains(&format!("PRIVMSG {channel} :")) || x.contains(" QUIT "))
                .await;
            assert!(
                got.ends_with(&format!("PRIVMSG {channel} :{l}")),
                "expected `{l}`, got {got}"
            );
        }
    }

    /// Waits for a line matching `pred` (answering PINGs), within 20 s.
    async fn wait(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let l = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .expect("IRC line in time")
                .expect("IRC connection open");
            if let Some(p) = l.strip_prefix("PING ") {
                self.send(&format!("PONG {p}")).await;
                continue;
            }
            if pred(&l) {
                return l;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_relays_both_ways_and_rejoins_after_a_server_restart() {
    let mut irc = Ngircd::start();
    let port = irc.port;
    // Someone already holds the bot's nick: the plugin must take another.
    let _squatter = IrcClient::connect(port, "sbbot", None).await;
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "irc.wasm")],
            &format!(
                "[channels.irc]\nnetwork = [\"127.0.0.1:{port}\"]\n\
                 [channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nchannels = [\"#room\"]\n"
            ),
        )
        .start()
        .unwrap();
    // The bot joins, as sbbot_ because sbbot is taken.
    let join = human
        .wait(|l| l.contains(" JOIN ") && l.contains("#room") && l.starts_with(":sbbot"))
        .await;
    assert!(join.starts_with(":sbbot_!"), "{join}");

    // The human's message reaches an operator.
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    human.send("PRIVMSG #room :hello bot").await;
    let m = op.next_message(Duration::from_secs(10)).await.unwrap();
    assert_eq!(m["text"], "hello bot");
    assert_eq!(m["chatId"], "#room");
    assert_eq!(m["senderId"], "tester");
    assert_eq!(m["channel"], "irc");

    // send reaches the human, in the channel and directly; newlines split lines.
    let r = op
        .request(
            "s1",
            "send",
            json!({"to": "#room", "message": "hi humans\nsecond line", "idempotencyKey": "i1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    human.wait(|l| l.contains("PRIVMSG #room :hi humans")).await;
    human
        .wait(|l| l.contains("PRIVMSG #room :second line"))
        .await;
    let r = op
        .request(
            "s2",
            "send",
            json!({"to": "tester", "message": "psst", "idempotencyKey": "i2"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    human.wait(|l| l.contains("PRIVMSG tester :psst")).await;
    // A media URL goes as a link on its own line; an upload is refused by name.
    let r = op
        .request(
            "s3",
            "send",
            json!({"to": "#room", "message": "a picture", "mediaUrl": "https://img.example/p.png", "idempotencyKey": "i3"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    human.wait(|l| l.contains("PRIVMSG #room :a picture")).await;
    human
        .wait(|l| l.contains("PRIVMSG #room :https://img.example/p.png"))
        .await;
    let r = op
        .request(
            "s4",
            "send",
            json!({"to": "#room", "buffer": "aGk=", "idempotencyKey": "i4"}),
        )
        .await
        .unwrap();
    assert_refused_saying(&r, "uploaded file (`buffer`) cannot be sent");

    // Kill the server and bring it back: the plugin reconnects and rejoins.
    irc.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    irc.spawn();
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    // The bot may rejoin before or after the human does, so ask the server
    // who is in the channel rather than wait for a JOIN line.
    // The squatter is gone with the old server, so the bot is sbbot again.
    human.wait_member("#room", "sbbot").await;
    human.send("PRIVMSG #room :welcome back").await;
    op.message_with_text("welcome back", Duration::from_secs(15))
        .await
        .unwrap();
    let st = op
        .request("cs", "channels.status", json!({"channel": "irc"}))
        .await
        .unwrap();
    let acct = &st["payload"]["channelAccounts"]["irc"][0];
    assert_eq!(acct["connected"], true, "{st}");
    assert!(acct["reconnectAttempts"].as_u64().unwrap() >= 1, "{st}");
}

fn irc_daemon(dir: &tempfile::TempDir, port: u16, accounts: &str) -> Daemon {
    Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "irc.wasm")],
            &format!("[channels.irc]\nnetwork = [\"127.0.0.1:{port}\"]\n{accounts}"),
        )
        .start()
        .unwrap()
}

/// A channel with a key (mode `+k`): the bot joins it with the key from
/// `channel_passwords`, hidden in `config.get`; without the key the account
/// says which channel it could not join and what to set, and the bot stays
/// on for the rest. A password for a channel not in `channels` is refused
/// by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_with_a_key_is_joined_with_its_password() {
    let irc = Ngircd::start();
    let port = irc.port;
    let mut human = IrcClient::with_mode(port, "#vault", "+k sesame").await;
    let dir = tempfile::tempdir().unwrap();
    let account = |name: &str, extra: &str| {
        format!(
            "[channels.irc.accounts.{name}]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sb{name}\"\n\
             channels = [\"#vault\", \"#open\"]\n{extra}"
        )
    };
    let d = irc_daemon(
        &dir,
        port,
        &[
            account("keyed", "channel_passwords = { \"#VAULT\" = \"sesame\" }\n"),
            account("nokey", ""),
            account("stray", "channel_passwords = { \"#elsewhere\" = \"x\" }\n"),
        ]
        .concat(),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    human.wait_member("#vault", "sbkeyed").await;
    human.wait_member("#open", "sbnokey").await;
    let e = op
        .wait_account_error("irc", "nokey", "#vault", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(
        e.contains("could not join #vault") && e.contains("channel_passwords.\"#vault\""),
        "{e}"
    );
    let e = op
        .wait_account_error("irc", "stray", "#elsewhere", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(e.contains("not in channels"), "{e}");
    // The keyed account relays the channel; its key is not shown.
    human.send("PRIVMSG #vault :behind the door").await;
    let m = op
        .message_with_text("behind the door", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m["chatId"], "#vault");
    assert_eq!(m["accountId"], "keyed");
    let config = op.request("c", "config.get", json!({})).await.unwrap();
    assert!(!config.to_string().contains("sesame"), "{config}");
    let a = op.account_status("irc", "nokey").await.unwrap();
    assert_eq!(a["running"], true, "{a}");
}

/// An invite-only channel (mode `+i`): the account says it could not join
/// it and that the bot needs an invitation; an INVITE from the channel's
/// operator has the bot join, and the account is well again. A KICK is
/// an error too, until the bot is invited back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_only_channel_is_joined_once_the_bot_is_invited() {
    let irc = Ngircd::start();
    let port = irc.port;
    let mut human = IrcClient::with_mode(port, "#club", "+i").await;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\n\
             channels = [\"#club\", \"#open\"]\n"
        ),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let e = op
        .wait_account_error("irc", "default", "#club", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(
        e.contains("could not join #club") && e.contains("invite the bot"),
        "{e}"
    );
    human.wait_member("#open", "sbbot").await;
    human.send("INVITE sbbot #club").await;
    human.wait_member("#club", "sbbot").await;
    wait_well(&mut op).await;
    human.send("PRIVMSG #club :members only").await;
    let m = op
        .message_with_text("members only", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m["chatId"], "#club");
    // Kicked, the bot says so; invited back, it joins and is well again.
    human.send("KICK #club sbbot :out you go").await;
    let e = op
        .wait_account_error("irc", "default", "kicked", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(e.contains("kicked from #club by tester: out you go"), "{e}");
    human.send("INVITE sbbot #club").await;
    human.wait_member("#club", "sbbot").await;
    wait_well(&mut op).await;
}

/// Waits until the `default` IRC account is connected with no error.
async fn wait_well(op: &mut Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = op.account_status("irc", "default").await.unwrap();
        if a["connected"] == true && a["lastError"].is_null() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still unwell: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_password_direct_messages_and_ping_answers() {
    // ngircd requires a password and PINGs anyone silent for 5 s, dropping
    // those that do not answer within 5 s more.
    let irc = Ngircd::start_with("Password = hunter2", 5);
    let port = irc.port;
    let mut human = IrcClient::connect_with(port, "tester", Some("hunter2"), Some("#room")).await;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\n\
             password = \"hunter2\"\nchannels = [\"#room\"]\n\
             [channels.irc.accounts.wrong]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbwrong\"\npassword = \"nope\"\n"
        ),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();

    // The right password gets in; the wrong one is reported as such.
    human.wait_member("#room", "sbbot").await;
    let e = op
        .wait_account_error("irc", "wrong", "password", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(e.contains("check `password`"), "{e}");

    // A direct message becomes an inbound message whose chat is the sender.
    human.send("PRIVMSG sbbot :just for you").await;
    let m = op.next_message(Duration::from_secs(10)).await.unwrap();
    assert_eq!(m["text"], "just for you");
    assert_eq!(m["chatId"], "tester");
    assert_eq!(m["senderId"], "tester");
    assert_eq!(m["accountId"], "default");

    // Stay silent for longer than ngircd's ping and pong timeouts together:
    // the bot answers the server's PINGs, so it is never dropped.
    human.idle(Duration::from_secs(13)).await;
    let a = op.account_status("irc", "default").await.unwrap();
    assert_eq!(a["connected"], true, "{a}\n{}", d.log_text());
    assert_eq!(a["reconnectAttempts"], 0, "the bot was dropped: {a}");
    human.send("PRIVMSG sbbot :still there?").await;
    op.message_with_text("still there?", Duration::from_secs(10))
        .await
        .unwrap();
}

/// Text cannot run IRC commands as the bot. ngircd ends a command at a lone
/// CR, so a CR left inside a PRIVMSG would make the rest of the text a
/// command of the bot's own: here a JOIN and a private PRIVMSG. The plugin
/// ends a line of text there instead, drops NUL, refuses a target that
/// would be read as more than one parameter, and refuses settings that
/// would put a CR or LF on the wire, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_cannot_run_irc_commands_as_the_bot() {
    let irc = Ngircd::start();
    let port = irc.port;
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    human.send("JOIN #evil").await;
    human
        .wait(|l| l.contains(" 366 ") && l.contains("#evil"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nchannels = [\"#room\"]\n\
             [channels.irc.accounts.crlf]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbcrlf\"\n\
             channels = [\"#room\\r\\nJOIN #evil\"]\n"
        ),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    human.wait_member("#room", "sbbot").await;

    let r = send_to_room(
        &mut op,
        "k1",
        "hi\rJOIN #evil\rPRIVMSG tester :owned\0!\r\nlast",
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // Every line up to the last, as the human sees it.
    let mut seen = Vec::new();
    loop {
        let l = human.wait(|_| true).await;
        let done = l.ends_with("PRIVMSG #room :last");
        seen.push(l);
        if done {
            break;
        }
    }
    let texts: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.split_once("PRIVMSG #room :").map(|(_, t)| t))
        .collect();
    assert_eq!(
        texts,
        ["hi", "JOIN #evil", "PRIVMSG tester :owned!", "last"],
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| {
            let w: Vec<&str> = l.split(' ').take(3).collect();
            w.get(1) == Some(&"JOIN") || w.get(1..3) == Some(&["PRIVMSG", "tester"][..])
        }),
        "the text ran as commands: {seen:?}"
    );
    // The config's CR LF did not reach the wire either: that account is
    // refused by name and never joins #evil.
    let e = op
        .wait_account_error(
            "irc",
            "crlf",
            "channels.irc.accounts.crlf.channels",
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert!(e.contains("CR, LF or NUL"), "{e}");
    human.send("NAMES #evil").await;
    let names = human.wait(|l| l.contains(" 353 ")).await;
    assert!(names.ends_with(":@tester"), "{names}");

    // A target read as more than one parameter is refused, not sent.
    for to in [":tester hi", "tester\0", "a,b"] {
        let r = op
            .request(
                "t",
                "send",
                json!({"to": to, "message": "x", "idempotencyKey": format!("t{to}")}),
            )
            .await
            .unwrap();
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{to:?}: {r}");
        assert_refused_saying(&r, "is not a channel or nick");
    }
}

/// InspIRCd linked to Atheme services: a real network with accounts and SASL,
/// and InspIRCd's flood control (a client whose unread lines pass `recvq`
/// bytes is dropped with "RecvQ exceeded").
struct InspNet {
    children: Vec<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl InspNet {
    /// Starts the network on free ports, again on other ports when
    /// inspircd exits at start (see [`stays_up`]).
    fn start() -> InspNet {
        stays_up("inspircd", InspNet::start_once, |net| {
            match net.children[0].try_wait() {
                Ok(None) => None,
                status => {
                    let out = std::fs::read_to_string(net._dir.path().join("inspircd.out"));
                    Some(format!("{status:?}, {}", out.unwrap_or_default()))
                }
            }
        })
    }

    fn start_once() -> InspNet {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (port, link) = (free_port(), free_port());
        let ircd_conf = format!(
            r#"<server name="irc.test" description="switchboard test" network="Testnet" id="001">
<admin name="test" nick="test" email="test@irc.test">
<bind address="127.0.0.1" port="{port}" type="clients">
<bind address="127.0.0.1" port="{link}" type="servers">
<connect allow="*" timeout="60" pingfreq="120" recvq="8192" softsendq="65536" hardsendq="1048576" localmax="50" globalmax="50" resolvehostnames="no" useident="no">
<dns server="127.0.0.1" timeout="1">
<pid file="{d}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{d}/inspircd.log">
<module name="cap">
<module name="spanningtree">
<module name="sasl">
<module name="services_account">
<link name="services.test" ipaddr="127.0.0.1" port="{link}" allowmask="127.0.0.0/8" sendpass="linkpw" recvpass="linkpw">
<uline server="services.test" silent="yes">
<sasl target="services.test">
"#
        );
        std::fs::write(dir.path().join("inspircd.conf"), ircd_conf).unwrap();
        let services_conf = format!(
            r##"loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/register";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";
serverinfo {{
  name = "services.test"; desc = "test services"; numeric = "00A"; recontime = 1;
  netname = "Testnet"; hidehostsuffix = "users.test"; adminname = "test";
  adminemail = "test@irc.test"; registeremail = "noreply@irc.test"; auth = none;
  casemapping = rfc1459; mta = "/bin/true"; loglevel = {{ admin; error; info; network; }};
  maxlogins = 5; maxusers = 5; maxchans = 5; mdlimit = 30; emaillimit = 100; emailtime = 300;
}};
uplink "irc.test" {{ host = "127.0.0.1"; password = "linkpw"; port = {link}; }};
nickserv {{ nick = "NickServ"; user = "NickServ"; host = "services.test"; real = "Nickname Services"; }};
saslserv {{ nick = "SaslServ"; user = "SaslServ"; host = "services.test"; real = "SASL Agent"; }};
general {{
  helpchan = "#help"; permissive_mode = no; maxcusers = 100; commit_interval = 5;
  default_clonelimit = 100; uflags = {{ hidemail; }}; cflags = {{ }}; raw = no;
  flood_msgs = 7; flood_time = 10; kline_time = 7; vhost_change = 30;
  operstring = "is an IRC Operator"; servicestring = "is a Network Service";
}};
logfile "{d}/atheme.log" {{ error; info; admin; network; }};
"##
        );
        std::fs::write(dir.path().join("atheme.conf"), services_conf).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let root = dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(root.join(name)).unwrap();
        let ircd = Command::new("/usr/sbin/inspircd")
            .args(["--nofork", "--runasroot"])
            .arg(format!("--config={d}/inspircd.conf"))
            .stdin(Stdio::null())
            .stdout(log("inspircd.out"))
            .stderr(log("inspircd.err"))
            .spawn()
            .expect("start inspircd: `make test` installs it (apt-get install inspircd)");
        let mut net = InspNet {
            children: vec![ircd],
            port,
            _dir: dir,
        };
        wait_listening(port, "inspircd");
        let services = Command::new("atheme-services")
            .arg("-n")
            .arg("-c")
            .arg(format!("{d}/atheme.conf"))
            .arg("-D")
            .arg(format!("{d}/data"))
            .arg("-p")
            .arg(format!("{d}/atheme.pid"))
            .stdin(Stdio::null())
            .stdout(log("atheme.out"))
            .stderr(log("atheme.err"))
            .spawn()
            .expect(
                "start atheme-services: `make test` installs it (apt-get install atheme-services)",
            );
        net.children.push(services);
        net
    }

    /// Connects `nick` and registers it as a services account once NickServ is there.
    async fn register(&self, nick: &str, password: &str) -> IrcClient {
        let mut c = IrcClient::connect(self.port, nick, None).await;
        let t0 = std::time::Instant::now();
        loop {
            c.send("WHOIS NickServ").await;
            let l = c.wait(|l| l.contains(" 311 ") || l.contains(" 401 ")).await;
            if l.contains(" 311 ") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "the services never linked"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.send(&format!(
            "PRIVMSG NickServ :REGISTER {password} {nick}@example.test"
        ))
        .await;
        c.wait(|l| l.contains("is now registered")).await;
        c
    }
}

impl Drop for InspNet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_logs_the_bot_in_to_its_account() {
    let net = InspNet::start();
    let port = net.port;
    let mut owner = net.register("sbacct", "hunter22").await;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nchannels = [\"#sasl\"]\n\
             sasl = {{ username = \"sbacct\", password = \"hunter22\" }}\n\
             [channels.irc.accounts.bad]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbad\"\n\
             sasl = {{ username = \"sbacct\", password = \"wrong\" }}\n"
        ),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    // The server says the bot is logged in to the account (WHOIS 330).
    let t0 = std::time::Instant::now();
    loop {
        owner.send("WHOIS sbbot").await;
        let l = owner
            .wait(|l| l.contains(" 330 ") || l.contains(" 318 ") || l.contains(" 401 "))
            .await;
        if l.contains(" 330 ") {
            assert!(l.contains(" sbbot sbacct "), "{l}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "sbbot never logged in\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let a = op.account_status("irc", "default").await.unwrap();
    assert_eq!(a["connected"], true, "{a}");
    // A wrong SASL password is reported, and the bot does not get on unauthenticated.
    let e = op
        .wait_account_error(
            "irc",
            "bad",
            "SASL authentication failed",
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert!(e.contains("sasl.password"), "{e}");
    owner.send("WHOIS sbbad").await;
    let l = owner
        .wait(|l| l.contains(" 311 sbacct sbbad ") || l.contains(" 401 sbacct sbbad "))
        .await;
    assert!(l.contains(" 401 "), "sbbad got on without SASL: {l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_on_a_server_without_it_is_refused_clearly() {
    let irc = Ngircd::start();
    let port = irc.port;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\n\
             sasl = {{ username = \"sbbot\", password = \"x\" }}\n"
        ),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let e = op
        .wait_account_error(
            "irc",
            "default",
            "does not offer SASL",
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert!(e.contains("remove `sasl`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_queued_while_the_server_is_down_survives_a_daemon_restart() {
    let mut irc = Ngircd::start();
    let port = irc.port;
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    let dir = tempfile::tempdir().unwrap();
    let accounts = format!(
        "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nchannels = [\"#room\"]\n"
    );
    let mut d1 = irc_daemon(&dir, port, &accounts);
    human.wait_member("#room", "sbbot").await;

    // The server goes away; send still accepts (the message is queued).
    irc.kill();
    let (mut op, _) = connect(&d1.url(), None, &["operator.admin"]).await.unwrap();
    let r = op
        .request(
            "q",
            "send",
            json!({"to": "#room", "message": "queued while down", "idempotencyKey": "q1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    // The daemon restarts before the server is back.
    d1.signal("TERM");
    assert_eq!(d1.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    irc.spawn();
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    let d2 = irc_daemon(&dir, port, &accounts);
    human
        .wait(|l| l.contains("PRIVMSG #room :queued while down"))
        .await;
    d2.wait_log("queued again", Duration::from_secs(10))
        .await
        .unwrap();
}

/// `send` of `text` to `#room` with `key` as its idempotency key (and id).
async fn send_to_room(op: &mut Client, key: &str, text: &str) -> Value {
    op.request(
        key,
        "send",
        json!({"to": "#room", "message": text, "idempotencyKey": key}),
    )
    .await
    .unwrap()
}

/// An account whose server is away queues its sends up to the outbox's
/// 128 MiB: twelve messages of 10 MiB go in, the thirteenth is refused by
/// name (`UNAVAILABLE`, retryable), and the daemon answers meanwhile. The
/// queued messages are on disk, not in the daemon's memory: a restart with
/// 120 MiB queued starts at the memory of an idle daemon, and still counts
/// them against the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_takes_128_mib_and_refuses_the_next_message_by_name() {
    // Nothing listens on this port: the account never connects.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // Messages of 10 MiB are far more lines than the default bound allows.
    let accounts = format!(
        "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nmax_send_lines = 0\n"
    );
    let mut d = irc_daemon(&dir, port, &accounts);
    let idle_kib = d.rss_kib();
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let text = "x".repeat(10 << 20);
    for i in 0..12 {
        let r = send_to_room(&mut op, &format!("big-{i}"), &text).await;
        assert_eq!(r["ok"], true, "message {i}: {r}");
    }
    let refused = |r: &Value| {
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
        let m = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("outbox of irc/default is full") && m.contains("134217728"),
            "{m}"
        );
    };
    let r = send_to_room(&mut op, "big-12", &text).await;
    refused(&r);
    // channels.status shows what the outbox holds.
    let depth = |a: &Value| {
        (
            a["outbox"]["messages"].as_u64().unwrap_or(0),
            a["outbox"]["bytes"].as_u64().unwrap_or(0),
        )
    };
    let held = depth(&op.account_status("irc", "default").await.unwrap());
    assert_eq!(held.0, 12, "{held:?}");
    assert!(held.1 >= 12 * (10 << 20) && held.1 <= 128 << 20, "{held:?}");
    let h = op.request("h", "health", json!({})).await.unwrap();
    assert_eq!(h["ok"], true, "{h}");
    // Nor does one of 8 MiB: the bound is on bytes (13 messages are far
    // from the 1000 the outbox holds).
    let r = send_to_room(&mut op, "big-13", &"x".repeat(8 << 20)).await;
    refused(&r);
    drop(op);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(15)).unwrap(), 0);

    let d = irc_daemon(&dir, port, &accounts);
    d.wait_log("queued again", Duration::from_secs(10))
        .await
        .unwrap();
    let grew_kib = d.rss_kib().saturating_sub(idle_kib);
    assert!(
        grew_kib < 32 << 10,
        "a daemon with 120 MiB queued holds {grew_kib} KiB more than an idle one: the queued messages are in its memory"
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let r = send_to_room(&mut op, "big-14", &text).await;
    refused(&r);
    assert_eq!(
        depth(&op.account_status("irc", "default").await.unwrap()),
        held
    );
}

/// A message that would be more than `max_send_lines` IRC lines (default
/// 100) is refused by name before it is queued; one of 100 lines is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_more_lines_than_max_send_lines_is_refused_by_name() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\n\
             [channels.irc.accounts.small]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbsmall\"\nmax_send_lines = 2\n"
        ),
    );
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    let lines = |n: usize| {
        (0..n)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let send = |id: &'static str, account: &'static str, text: String| json!({"to": "#room", "message": text, "accountId": account, "idempotencyKey": id});
    let cases = [
        ("a", "default", lines(101), Some(101)),
        // One line of 60 KiB: split at the line limit, far more than 100.
        ("b", "default", "y".repeat(60 << 10), None),
        ("c", "small", lines(3), Some(3)),
    ];
    for (id, account, text, n) in cases {
        let r = op
            .request(id, "send", send(id, account, text))
            .await
            .unwrap();
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
        let m = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(&format!("channels.irc.accounts.{account}.max_send_lines")),
            "{m}"
        );
        if let Some(n) = n {
            assert!(m.contains(&format!("this message is {n} IRC lines")), "{m}");
        }
    }
    // Those refused were not queued: the first message taken has the
    // outbox's first queue number.
    for (id, account, text, seq) in [("d", "default", lines(100), 1), ("e", "small", lines(2), 2)] {
        let r = op
            .request(id, "send", send(id, account, text))
            .await
            .unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["payload"]["messageId"], format!("irc-out-{seq}"), "{r}");
    }
}

/// A setting of the wrong type is named in `channels.status` (which every
/// `operator.read` client may call) without its value: a server password
/// written without quotes is a number, and serde's error quoted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_setting_is_named_without_its_value() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\npassword = 98127364\n\
             [channels.irc.accounts.deep]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbdeep\"\n\
             sasl = {{ username = \"u\", password = 4242424242 }}\n"
        ),
    );
    let (mut reader, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    for (account, path, secret) in [
        ("default", "`password`", "98127364"),
        ("deep", "`sasl.password`", "4242424242"),
    ] {
        let e = reader
            .wait_account_error("irc", account, path, Duration::from_secs(15))
            .await
            .unwrap();
        assert!(
            e.contains("invalid type: integer, expected a string"),
            "{e}"
        );
        assert!(!e.contains(secret), "{e}");
    }
    assert!(
        !d.log_text().contains("98127364"),
        "the password is in the log"
    );
}

/// ngircd, a tester in `#room` and a bot whose state directory is a 48 MiB
/// tmpfs with `store.min_free_mb = 16`, so that the test can put the log's
/// disk below its floor (`fill`) and give it room again (`free`).
struct OnASmallDisk {
    irc: Ngircd,
    human: IrcClient,
    d: Daemon,
    op: Client,
    filler: PathBuf,
    _unmount: Tmpfs,
    _dir: tempfile::TempDir,
}

impl OnASmallDisk {
    async fn start() -> Self {
        let irc = Ngircd::start();
        let port = irc.port;
        let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let unmount = Tmpfs::mount(&state, "48m");
        let d = irc_daemon(
            &dir,
            port,
            &format!(
                "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nchannels = [\"#room\"]\n\
                 [store]\nmin_free_mb = 16\n"
            ),
        );
        human.wait_member("#room", "sbbot").await;
        let (op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
        OnASmallDisk {
            irc,
            human,
            d,
            op,
            filler: state.join("filler"),
            _unmount: unmount,
            _dir: dir,
        }
    }

    /// The disk drops below the floor: new messages are refused.
    async fn fill(&self) {
        std::fs::write(&self.filler, vec![0u8; 40 << 20]).unwrap();
        // The log reads the free space at most every 100 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }

    /// The tester says `lines` and the bot starts holding them.
    async fn say_while_refused(&mut self, lines: &[String]) {
        for l in lines {
            self.human.send(&format!("PRIVMSG #room :{l}")).await;
        }
        self.d
            .wait_log("holding messages", Duration::from_secs(10))
            .await
            .unwrap();
    }

    /// `lines` arrive, in order, and the log says it takes messages again.
    async fn expect_delivered(&mut self, lines: &[String]) {
        for l in lines {
            let m = self.op.next_message(Duration::from_secs(10)).await.unwrap();
            assert_eq!(m["text"], l.as_str(), "{m}");
            assert_eq!(m["chatId"], "#room", "{m}");
        }
        self.d
            .wait_log("takes messages again", Duration::from_secs(5))
            .await
            .unwrap();
    }
}

/// The message log refuses messages (its disk below `store.min_free_mb`)
/// while people talk: IRC will not send those lines again, so the plugin
/// holds them, stays connected, and delivers them in order once the disk
/// has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_log_refuses_are_held_and_delivered_once_the_disk_has_room() {
    let mut t = OnASmallDisk::start().await;
    t.human.send("PRIVMSG #room :before").await;
    t.op.message_with_text("before", Duration::from_secs(10))
        .await
        .unwrap();
    t.fill().await;
    let during: Vec<String> = (1..=3).map(|i| format!("during {i}")).collect();
    t.say_while_refused(&during).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.free();
    t.expect_delivered(&during).await;
    let a = t.op.account_status("irc", "default").await.unwrap();
    assert_eq!(a["reconnectAttempts"], 0, "the bot reconnected: {a}");
    let all = t.op.history_after(0).await.unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
}

/// Held messages outlive their connection: the server goes away while the
/// log refuses messages, the bot reconnects, and once the disk has room
/// the messages said before arrive, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_outlive_a_dropped_connection() {
    let mut t = OnASmallDisk::start().await;
    t.fill().await;
    let during: Vec<String> = (1..=3).map(|i| format!("held {i}")).collect();
    t.say_while_refused(&during).await;
    // The server goes away, with the messages still held; it comes back
    // once the bot has noticed.
    t.irc.kill();
    let t0 = std::time::Instant::now();
    while t.op.account_status("irc", "default").await.unwrap()["reconnectAttempts"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the bot never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.irc.spawn();
    t.d.wait_log("refused earlier are still held", Duration::from_secs(30))
        .await
        .unwrap();
    t.free();
    t.expect_delivered(&during).await;
    let all = t.op.history_after(0).await.unwrap();
    assert_eq!(all.len(), 3, "each once: {all:?}");
}

/// A scripted IRC "server" on a free port: `conn` runs for each connection
/// (numbered from 1). Returns the port.
async fn scripted_server<F, Fut>(conn: F) -> u16
where
    F: Fn(u32, TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((s, _)) = server.accept().await {
            n += 1;
            tokio::spawn(conn(n, s));
        }
    });
    port
}

/// A daemon whose IRC account `default` (nick `sbbot`) connects to
/// `127.0.0.1:port`, and an admin operator of it.
async fn bot_against(dir: &tempfile::TempDir, port: u16) -> (Daemon, Client) {
    let d = irc_daemon(
        dir,
        port,
        &format!("[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\n"),
    );
    let (op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    (d, op)
}

/// A hostile server that sends bytes without a line end: the plugin does
/// not buffer them without bound, it ends the connection and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_line_without_end_is_cut_off() {
    let port = scripted_server(|_, mut s| async move {
        let junk = vec![b'a'; 8192];
        for _ in 0..64 {
            if s.write_all(&junk).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut op) = bot_against(&dir, port).await;
    let e = op
        .wait_account_error(
            "irc",
            "default",
            "longer than 65536 bytes",
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_is_paced_so_the_server_keeps_the_bot() {
    let net = InspNet::start();
    let port = net.port;
    let mut human = IrcClient::connect(port, "tester", Some("#flood")).await;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbflood\"\n\
             channels = [\"#flood\"]\nsend_interval_ms = 500\n"
        ),
    );
    human.wait_member("#flood", "sbflood").await;
    // 24 lines of ~410 bytes: about 10 KB, more than the server's 8 KB recvq
    // if they were written at once.
    let lines: Vec<String> = (0..24)
        .map(|i| format!("{i:02} {}", "x".repeat(400)))
        .collect();
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    send_lines(&mut op, "#flood", &lines).await;
    human.expect_lines("#flood", &lines).await;
    let a = op.account_status("irc", "default").await.unwrap();
    assert_eq!(a["reconnectAttempts"], 0, "the bot was dropped: {a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cut_off_by_a_dropped_connection_is_sent_again() {
    let mut irc = Ngircd::start();
    let port = irc.port;
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    let dir = tempfile::tempdir().unwrap();
    let d = irc_daemon(
        &dir,
        port,
        &format!(
            "[channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\n\
             channels = [\"#room\"]\nsend_burst = 1\nsend_interval_ms = 400\n"
        ),
    );
    human.wait_member("#room", "sbbot").await;
    let lines: Vec<String> = (0..8).map(|i| format!("line {i}")).collect();
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    send_lines(&mut op, "#room", &lines).await;
    // The server goes down after two lines, halfway through the message.
    human.wait(|l| l.ends_with("PRIVMSG #room :line 1")).await;
    irc.kill();
    // The tester must be back in the channel before the bot is, or it
    // misses the first lines sent again: wait until the bot has failed to
    // reconnect twice (its next attempt is 4 s away, the backoff doubling
    // from 1 s) before the server comes back.
    let t0 = std::time::Instant::now();
    loop {
        let a = op.account_status("irc", "default").await.unwrap();
        if a["reconnectAttempts"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the bot never retried: {a}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    irc.spawn();
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    // After reconnecting the bot sends the unconfirmed message again, whole.
    human.expect_lines("#room", &lines).await;
}

/// A message is acked (leaves the outbox) only once the server answers a
/// PING written after it: a scripted server reads the message, and drops
/// the connection at the PING without answering; the next connection gets
/// the message again and answers; the one after gets nothing more. (Bytes
/// written to a socket that then dies may never have been read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leaves_the_outbox_once_the_server_answers_the_ping_after_it() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, String)>();
    let port = scripted_server(move |conn, s| {
        let tx = tx.clone();
        async move {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send((conn, l.clone()));
                if l.starts_with("USER ") {
                    let _ = w.write_all(b":fake 001 sbbot :welcome\r\n").await;
                }
                if let Some(token) = l.strip_prefix("PING ") {
                    if conn == 1 {
                        return; // dies without answering
                    }
                    let pong = format!(":fake PONG fake {token}\r\n");
                    let _ = w.write_all(pong.as_bytes()).await;
                    if conn == 2 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return;
                    }
                }
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (d, mut op) = bot_against(&dir, port).await;
    let r = op
        .request(
            "s",
            "send",
            json!({"to": "#room", "message": "hello", "idempotencyKey": "once"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let mut seen: Vec<(u32, String)> = Vec::new();
    // Until the third connection has registered, and 2 s after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut third_at: Option<tokio::time::Instant> = None;
    loop {
        let left = match third_at {
            Some(t) => {
                (t + Duration::from_secs(2)).saturating_duration_since(tokio::time::Instant::now())
            }
            None => deadline.saturating_duration_since(tokio::time::Instant::now()),
        };
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((conn, l))) => {
                if conn == 3 && l.starts_with("USER ") {
                    third_at = Some(tokio::time::Instant::now());
                }
                seen.push((conn, l));
            }
            _ => break,
        }
    }
    assert!(
        third_at.is_some(),
        "no third connection: {seen:?}\n{}",
        d.log_text()
    );
    let on = |conn: u32| -> Vec<&str> {
        seen.iter()
            .filter(|(c, l)| *c == conn && (l.starts_with("PRIVMSG") || l.starts_with("PING")))
            .map(|(_, l)| l.as_str())
            .collect()
    };
    assert_eq!(on(1), ["PRIVMSG #room :hello", "PING :sb-1"], "{seen:?}");
    assert_eq!(
        on(2),
        ["PRIVMSG #room :hello", "PING :sb-1"],
        "the unconfirmed message is sent again: {seen:?}"
    );
    assert_eq!(
        on(3),
        Vec::<&str>::new(),
        "the confirmed message left the outbox: {seen:?}"
    );
}

/// `send`s `lines` as one multi-line message to `to`.
async fn send_lines(op: &mut Client, to: &str, lines: &[String]) {
    let r = op
        .request(
            "sl",
            "send",
            json!({"to": to, "message": lines.join("\n"), "idempotencyKey": format!("lines-{to}")}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
}

/// A CA made in the test and a server certificate it signs for `localhost`
/// (PEM: CA, server certificate, server key).
fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "switchboard test CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = p.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registers_joins_and_relays_and_refuses_an_untrusted_certificate() {
    let (ca_pem, cert_pem, key_pem) = test_ca();
    let irc = Ngircd::start_tls(&cert_pem, &key_pem);
    let tls_port = irc.tls.as_ref().unwrap().0;
    // The human uses the plain port; the bot only TLS.
    let mut human = IrcClient::connect(irc.port, "tester", Some("#room")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let account = |nick: &str| {
        format!(
            "server = \"localhost\"\nport = {tls_port}\ntls = true\nnick = \"{nick}\"\nchannels = [\"#room\"]\n"
        )
    };
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "irc.wasm")],
            &format!(
                "[channels.irc]\nnetwork = [\"localhost:{tls_port}\"]\ntls_ca = \"{}\"\n\
                 [channels.irc.accounts.default]\n{}\n\
                 [channels.plain]\nplugin = \"irc\"\nnetwork = [\"localhost:{tls_port}\"]\n\
                 [channels.plain.accounts.default]\n{}\n",
                ca.display(),
                account("sbbot"),
                account("sbnoca"),
            ),
        )
        .start()
        .unwrap();
    let (mut op, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();

    // Registration and join over TLS.
    human.wait_member("#room", "sbbot").await;
    // Receive: the human's line reaches an operator.
    human.send("PRIVMSG #room :over tls?").await;
    let m = op
        .message_with_text("over tls?", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m["channel"], "irc");
    assert_eq!(m["chatId"], "#room");
    assert_eq!(m["senderId"], "tester");
    // Send: an operator's message reaches the human.
    let r = op
        .request(
            "s1",
            "send",
            json!({"channel": "irc", "to": "#room", "message": "yes, over tls", "idempotencyKey": "t1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    human
        .wait(|l| l.starts_with(":sbbot!") && l.contains("PRIVMSG #room :yes, over tls"))
        .await;

    // Without the CA, the same server's certificate is refused, clearly.
    let e = op
        .wait_account_error("plain", "default", "not trusted", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(e.contains("localhost"), "{e}");
    assert!(e.contains("tls_ca"), "{e}");
    let log = std::fs::read_to_string(irc.dir.path().join("ngircd.log")).unwrap_or_default();
    assert!(
        !log.contains("sbnoca"),
        "the untrusted connection registered: {log}"
    );
}
