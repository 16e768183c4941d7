//! A channel that misbehaves on purpose. `send` does what the message text
//! says: `spin` loops forever, `hog` allocates without bound, `trap` panics,
//! `sleep:<ms>` sleeps that long, `as:<account>` delivers a message and
//! pushes to the outbox in the name of `<account>` and answers what the host
//! said to each, `flap:<n>` flips the account's state n times 5 ms apart,
//! `longerr`, `longid` and `longstate` answer an error, ids
//! or an account-state detail far longer than the host keeps, `kvfill:<n>`
//! writes n keys of 100 KiB, `fields:<n>:<k>` holds n `wasi:http` fields
//! of k KiB each (host memory, outside its own), `logspam:<n>` logs
//! n lines each way (the `log` import, stdout) and then one long line each
//! way, anything else succeeds. `run` panics when the account sets
//! `crash_run`. A webhook is answered what its body says: a status line,
//! `name: value` header lines, an empty line, then the response's body;
//! one with no body is answered its method, path and query.

use serde::Deserialize;
use switchboard_sdk::{
    export_channel, Account, Channel, ChannelError, Delivery, HttpRequest, HttpResponse,
    OutboundMessage, PluginInfo,
};

#[derive(Deserialize, Default)]
struct Settings {
    #[serde(default)]
    crash_run: bool,
}

struct Misbehave;

/// What `GET /hooks/misbehave/<account>/page` answers: a page whose script
/// tries to take the control page's token and an operator connection.
const HOSTILE_PAGE: &str = r#"<!doctype html><title>plugin page</title><script>
document.title = "ran";
try { document.title = "ran, token " + sessionStorage.getItem("switchboard.token"); } catch (e) {}
try {
  const ws = new WebSocket("ws://" + location.host + "/");
  ws.onopen = () => { document.title += ", socket open"; };
} catch (e) {}
</script>"#;

impl Channel for Misbehave {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "misbehave".into(),
            name: "Misbehave".into(),
            version: "0.1.0".into(),
            // With a terminal escape and a line of its own, for `plugins
            // check` to print escaped.
            description: "misbehaves on purpose\x1b]0;owned\x07\nok: forged".into(),
            network: vec![],
            capabilities: switchboard_sdk::Capabilities::empty(),
        }
    }

    fn run(account: Account) -> Result<(), ChannelError> {
        let s: Settings = account.settings()?;
        if s.crash_run {
            panic!("run crashed on purpose");
        }
        switchboard_sdk::set_state(&account.id, switchboard_sdk::AccountState::Connected, None);
        switchboard_sdk::wstd::runtime::block_on(async {
            loop {
                switchboard_sdk::wstd::task::sleep(
                    switchboard_sdk::wstd::time::Duration::from_secs(3600),
                )
                .await;
            }
        })
    }

    fn handle_webhook(account: Account, request: HttpRequest) -> HttpResponse {
        // A hostile plugin's page: served on the gateway's origin, its
        // script would read the control page's token and open an operator
        // connection, if the gateway let it run.
        if request.body.is_empty() && request.path == "/page" {
            return HttpResponse {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: HOSTILE_PAGE.as_bytes().to_vec(),
            };
        }
        // A webhook whose handling fails, with the account's settings in
        // the panic message (a secret the sender must not get back).
        if request.body == b"panic" {
            panic!("webhook panicked; settings {}", account.settings);
        }
        if request.body.is_empty() {
            let said = format!("{} {}?{}", request.method, request.path, request.query);
            return HttpResponse {
                status: 200,
                headers: vec![],
                body: said.into_bytes(),
            };
        }
        let text = String::from_utf8_lossy(&request.body);
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(200);
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HttpResponse {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {
        match message.text.as_str() {
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "hog" => {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                loop {
                    keep.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&keep);
                }
            }
            "trap" => panic!("trapped on purpose"),
            // Writes N distinct keys of 100 KiB each, then counts how many
            // the store kept (a hostile plugin filling the disk).
            // Answers and a state detail far past what the host keeps.
            "longerr" => Err(ChannelError::Fatal("e".repeat(100_000))),
            // Quotes the account's settings (its secrets among them) in its
            // log, its stdout, a state detail and its error, as a careless
            // plugin might.
            "leak" => {
                switchboard_sdk::info!("logged settings {}", account.settings);
                println!("printed settings {}", account.settings);
                switchboard_sdk::set_state(
                    &account.id,
                    switchboard_sdk::AccountState::Error,
                    Some(&format!("state with settings {}", account.settings)),
                );
                Err(ChannelError::Fatal(format!(
                    "failed with settings {}",
                    account.settings
                )))
            }
            "longid" => Ok(Delivery {
                message_id: "i".repeat(5000),
                chat_id: Some("c".repeat(5000)),
            }),
            "longstate" => {
                switchboard_sdk::set_state(
                    "default",
                    switchboard_sdk::AccountState::Error,
                    Some(&"d".repeat(100_000)),
                );
                Ok(Delivery {
                    message_id: "stated".into(),
                    chat_id: None,
                })
            }
            t if t.starts_with("flap:") => {
                // The account's state, flipped n times 5 ms apart.
                let n: u32 = t[5..].parse().unwrap_or(0);
                for i in 0..n {
                    let state = if i % 2 == 0 {
                        switchboard_sdk::AccountState::Disconnected
                    } else {
                        switchboard_sdk::AccountState::Connected
                    };
                    switchboard_sdk::set_state("default", state, Some(&format!("flap {i}")));
                    switchboard_sdk::wstd::runtime::block_on(async {
                        switchboard_sdk::wstd::task::sleep(
                            switchboard_sdk::wstd::time::Duration::from_millis(5),
                        )
                        .await
                    });
                }
                Ok(Delivery {
                    message_id: format!("flapped {n}"),
                    chat_id: None,
                })
            }
            t if t.starts_with("logspam:") => {
                // N lines through the `log` import and N on stdout, then a
                // 100 000-byte line each way.
                let n: usize = t[8..].parse().unwrap_or(0);
                for i in 0..n {
                    switchboard_sdk::info!("spam {i}");
                    println!("out {i}");
                }
                let long = "x".repeat(100_000);
                switchboard_sdk::info!("long {long}");
                println!("outlong {long}");
                Ok(Delivery {
                    message_id: format!("logged {}", 2 * n + 2),
                    chat_id: None,
                })
            }
            t if t.starts_with("fields:") => {
                let mut args = t[7..].split(':').map(|a| a.parse::<usize>().unwrap_or(0));
                let (n, kib) = (args.next().unwrap_or(0), args.next().unwrap_or(0));
                let value = vec![b'a'; 1024];
                let mut held = Vec::new();
                let mut bytes = 0;
                let mut refused = None;
                for _ in 0..n {
                    let f = wasip2::http::types::Fields::new();
                    for j in 0..kib {
                        match f.append(&format!("x-{j}"), &value) {
                            Ok(()) => bytes += 1024,
                            Err(e) => {
                                refused = Some(format!("{e:?}"));
                                break;
                            }
                        }
                    }
                    held.push(f);
                }
                Ok(Delivery {
                    message_id: format!(
                        "held {} fields of {bytes} bytes; refused: {refused:?}",
                        held.len()
                    ),
                    chat_id: None,
                })
            }
            t if t.starts_with("kvfill:") => {
                let n: usize = t[7..].parse().unwrap_or(0);
                let value = vec![7u8; 100 * 1024];
                for i in 0..n {
                    switchboard_sdk::kv::set(&format!("fill-{i}"), &value);
                }
                let kept = (0..n)
                    .filter(|i| switchboard_sdk::kv::get(&format!("fill-{i}")).is_some())
                    .count();
                Ok(Delivery {
                    message_id: format!("kept {kept} of {n}"),
                    chat_id: None,
                })
            }
            t if t.starts_with("as:") => {
                let other = &t[3..];
                let delivered = switchboard_sdk::deliver(switchboard_sdk::InboundMessage {
                    account_id: other.into(),
                    chat_id: "c".into(),
                    sender_id: "s".into(),
                    sender_name: None,
                    message_id: format!("as-{other}"),
                    text: format!("delivered as {other}"),
                    timestamp_ms: 0,
                    thread_id: None,
                    reply_to_id: None,
                    raw: None,
                    attachments: vec![],
                });
                let pushed = switchboard_sdk::outbox::push(
                    other,
                    &OutboundMessage {
                        to: "x".into(),
                        text: "queued".into(),
                        thread_id: None,
                        reply_to_id: None,
                        attachments: vec![],
                    },
                );
                Ok(Delivery {
                    message_id: format!("deliver: {delivered:?}; outbox-push: {pushed:?}"),
                    chat_id: None,
                })
            }
            t if t.starts_with("sleep:") => {
                let ms: u64 = t[6..].parse().unwrap_or(0);
                switchboard_sdk::wstd::runtime::block_on(async move {
                    switchboard_sdk::wstd::task::sleep(
                        switchboard_sdk::wstd::time::Duration::from_millis(ms),
                    )
                    .await
                });
                Ok(Delivery {
                    message_id: "slept".into(),
                    chat_id: None,
                })
            }
            _ => Ok(Delivery {
                message_id: "ok".into(),
                chat_id: None,
            }),
        }
    }
}

export_channel!(Misbehave);
