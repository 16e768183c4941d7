//! The IRC channel (plugins/irc) against a real ngircd started by the test,
//! with a real IRC client in the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use switchboard_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Ngircd {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = Ngircd {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("ngircd.conf");
        std::fs::write(
            &conf,
            format!(
                "[Global]\nName = irc.test\nInfo = switchboard test\nListen = 127.0.0.1\nPorts = {}\n\
                 MotdPhrase = \"test\"\nServerUID = 65534\nServerGID = 65534\n\
                 [Limits]\nPingTimeout = 120\nPongTimeout = 20\nMaxNickLength = 30\n\
                 [Options]\nPAM = no\nIdent = no\nDNS = no\n",
                self.port
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
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "ngircd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// A plain IRC client.
struct IrcClient {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl IrcClient {
    async fn connect(port: u16, nick: &str, join: Option<&str>) -> IrcClient {
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
        c.send(&format!("NICK {nick}")).await;
        c.send(&format!("USER {nick} 0 * :{nick}")).await;
        c.wait(|l| l.contains(" 001 ")).await;
        if let Some(ch) = join {
            c.send(&format!("JOIN {ch}")).await;
            c.wait(|l| l.contains(" 366 ")).await;
        }
        c
    }

    async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
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
    std::fs::copy(
        built_plugin("plugins", "irc.wasm"),
        dir.path().join("irc.wasm"),
    )
    .unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "state_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n[channels.irc]\nnetwork = [\"127.0.0.1:{port}\"]\n\
             [channels.irc.accounts.default]\nserver = \"127.0.0.1\"\nport = {port}\nnick = \"sbbot\"\nchannels = [\"#room\"]\n",
            dir.path().join("state").display(),
            dir.path().display()
        ))
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
    let m = op
        .next_event("message", Duration::from_secs(10))
        .await
        .unwrap()["payload"]
        .clone();
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

    // Kill the server and bring it back: the plugin reconnects and rejoins.
    irc.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    irc.spawn();
    let mut human = IrcClient::connect(port, "tester", Some("#room")).await;
    // The bot may rejoin before or after the human does, so ask the server
    // who is in the channel rather than wait for a JOIN line.
    let t0 = std::time::Instant::now();
    loop {
        human.send("NAMES #room").await;
        let names = human
            .wait(|l| l.contains(" 353 ") || l.contains(" 366 "))
            .await;
        if names.contains(" 353 ") && names.contains("sbbot") {
            break;
        }
        if names.contains(" 353 ") {
            human.wait(|l| l.contains(" 366 ")).await;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the bot never rejoined #room"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    human.send("PRIVMSG #room :welcome back").await;
    loop {
        let m = op
            .next_event("message", Duration::from_secs(15))
            .await
            .unwrap()["payload"]
            .clone();
        if m["text"] == "welcome back" {
            break;
        }
    }
    let st = op
        .request("cs", "channels.status", json!({"channel": "irc"}))
        .await
        .unwrap();
    let acct = &st["payload"]["channelAccounts"]["irc"][0];
    assert_eq!(acct["connected"], true, "{st}");
    assert!(acct["reconnectAttempts"].as_u64().unwrap() >= 1, "{st}");
}
