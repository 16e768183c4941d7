//! `switchboard plugins new <name>`: writes a ready plugin crate — a
//! Cargo.toml depending on the SDK (and the test kit for its test), a
//! `src/lib.rs` with every export of the contract implemented sensibly (a
//! channel that accepts every `send`, reports itself connected, and says
//! plainly what is left to write), a test that builds the component and runs
//! it in the real daemon, and a README. It builds and passes
//! `switchboard plugins check` as written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the scaffold's crates come from: a path (a Switchboard checkout)
/// or, without one, the registry version.
pub struct Sources {
    pub sdk: Option<PathBuf>,
    pub testkit: Option<PathBuf>,
}

impl Sources {
    /// The checkout this binary was built from, when it is still there.
    pub fn from_build() -> Sources {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf);
        let found = |d: &str| {
            root.as_ref()
                .map(|r| r.join(d))
                .filter(|p| p.join("Cargo.toml").is_file())
        };
        Sources {
            sdk: found("sdk"),
            testkit: found("testkit"),
        }
    }
}

/// A plugin id: 1-64 of `[a-z0-9-]`, starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("`{name}` cannot be a plugin id: use 1-64 characters of [a-z0-9-], starting with a letter (it names the channel, the crate and the .wasm)");
    }
    Ok(())
}

fn dep(name: &str, version: &str, path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{name} = {{ path = \"{}\" }}", p.display()),
        None => format!("{name} = \"{version}\""),
    }
}

/// Writes the crate into `dir` (which must not exist yet); returns the
/// files written.
pub fn write(name: &str, dir: &Path, src: &Sources) -> Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() {
        bail!(
            "{} already exists: choose another --dir (nothing was written)",
            dir.display()
        );
    }
    let lib = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, src)),
        ("src/lib.rs", lib_rs(name)),
        ("tests/plugin.rs", test_rs(name)),
        ("README.md", readme(name, &lib)),
        (".gitignore", "/target\n".to_string()),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

fn cargo_toml(name: &str, src: &Sources) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
description = "A Switchboard channel plugin"

[lib]
crate-type = ["cdylib"]

[dependencies]
serde = {{ version = "1", features = ["derive"] }}
{sdk}

[dev-dependencies]
{testkit}
tokio = {{ version = "1", features = ["macros", "rt-multi-thread"] }}
serde_json = "1"

# Its own workspace, wherever it is created.
[workspace]
"#,
        sdk = dep("switchboard-sdk", "0.2", &src.sdk),
        testkit = dep("switchboard-testkit", "0.1", &src.testkit),
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r##"//! The `{name}` channel. Each function below is one export of the
//! channel contract; replace the bodies with calls to your upstream.

use serde::Deserialize;
use switchboard_sdk::{{
    export_channel, Account, AccountState, Capabilities, Channel, ChannelError, Delivery,
    HttpRequest, HttpResponse, MessageAction, OutboundMessage, PluginInfo,
}};

/// The account's settings: `[channels.{name}.accounts.<id>]` in the
/// daemon's config, without `enabled`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {{
    /// An example setting; add what your upstream needs (an API base,
    /// a token from `${{ENV_VAR}}`, …).
    #[serde(default)]
    greeting: Option<String>,
}}

struct Plugin;

impl Channel for Plugin {{
    fn info() -> PluginInfo {{
        PluginInfo {{
            id: "{name}".into(),
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A new Switchboard channel".into(),
            // `host:port`s it must reach, e.g. "api.example.com:443".
            network: vec![],
            // Declare what you implement: MEDIA, REACTIONS, EDIT, DELETE, THREADS.
            capabilities: Capabilities::empty(),
        }}
    }}

    fn validate(account: Account) -> Result<(), ChannelError> {{
        account.settings::<Settings>().map(|_| ())
    }}

    fn run(account: Account) -> Result<(), ChannelError> {{
        let settings: Settings = account.settings()?;
        // Connect to your upstream here, then deliver what arrives with
        // `switchboard_sdk::deliver` (advance your offset only after it
        // returns Ok).
        switchboard_sdk::set_state(&account.id, AccountState::Connected, None);
        if let Some(g) = settings.greeting {{
            switchboard_sdk::info!("{{g}}");
        }}
        switchboard_sdk::wstd::runtime::block_on(async {{
            loop {{
                switchboard_sdk::wstd::task::sleep(switchboard_sdk::wstd::time::Duration::from_secs(3600)).await;
            }}
        }})
    }}

    fn send(account: Account, message: OutboundMessage) -> Result<Delivery, ChannelError> {{
        // Send `message.text` to `message.to` upstream here and return the
        // id it gives. Until then the message is only logged.
        switchboard_sdk::info!(
            "account {{}}: would send {{}} characters to {{}}",
            account.id,
            message.text.chars().count(),
            message.to
        );
        Ok(Delivery {{
            message_id: format!("{name}-{{}}", switchboard_sdk::now_ms()),
            chat_id: Some(message.to),
        }})
    }}

    fn act(_account: Account, _action: MessageAction) -> Result<(), ChannelError> {{
        // Called only for capabilities `info` declares.
        Err(ChannelError::Fatal("{name} does not support message actions yet".into()))
    }}

    fn handle_webhook(_account: Account, _request: HttpRequest) -> HttpResponse {{
        HttpResponse {{
            status: 404,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{{"error":"{name} does not accept webhooks yet"}}"#.to_vec(),
        }}
    }}
}}

export_channel!(Plugin);
"##
    )
}

fn test_rs(name: &str) -> String {
    format!(
        r#"//! Runs the plugin in the real daemon (`switchboard` on PATH, or
//! `$SWITCHBOARD_BIN`): it starts, reports itself connected, and accepts a send.

use std::time::Duration;

use switchboard_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_runs_in_the_daemon() {{
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let d = Daemon::builder()
        .config("[channels.{name}.accounts.default]\ngreeting = \"hello from the test\"\n")
        .with_wasm(&wasm)
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.admin"]).await.unwrap();
    c.wait_connected("{name}", "default", Duration::from_secs(10))
        .await
        .unwrap();
    let r = c.send_message("{name}", "chat-1", "hi").await.unwrap();
    assert_eq!(r["ok"], true, "{{r}}\n{{}}", d.log_text());
    assert!(d.log_text().contains("hello from the test"));
}}
"#
    )
}

fn readme(name: &str, lib: &str) -> String {
    format!(
        r#"# {name}

A Switchboard channel plugin (made with `switchboard plugins new`).

```sh
rustup target add wasm32-wasip2
cargo build --target wasm32-wasip2 --release
switchboard plugins check target/wasm32-wasip2/release/{lib}.wasm
cargo test            # runs it in the real daemon (switchboard on PATH, or SWITCHBOARD_BIN)
cp target/wasm32-wasip2/release/{lib}.wasm /path/to/plugins/{name}.wasm
```

Then configure an account in the daemon's config:

```toml
[channels.{name}.accounts.default]
greeting = "hello"
```

`src/lib.rs` has one function per export of the channel contract; `send`
only logs until you write it. See the SDK's README for the contract,
capabilities, attachments, actions and what each `ChannelError` makes the
host do.
"#
    )
}
