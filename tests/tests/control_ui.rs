//! The control page at `/`, in a real browser: Debian's Chromium, headless,
//! driven over the DevTools protocol (`switchboard_tests::browser`), against
//! the real daemon with the echo and webhook plugins. A screenshot of each
//! state is saved under `target/screenshots/control-ui/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_tests::browser::Browser;
use switchboard_tests::*;

const TOKEN: &str = "ui-test-token-5b1e";
const T: Duration = Duration::from_secs(20);

fn shots() -> PathBuf {
    workspace_root().join("target/screenshots/control-ui")
}

fn daemon(dir: &std::path::Path, port: u16) -> Daemon {
    Daemon::builder()
        .port(port)
        .with_plugins(
            dir,
            &[("plugins", "echo.wasm"), ("plugins", "webhook.wasm")],
            &format!(
                "[gateway.auth]\ntoken = \"{TOKEN}\"\n\
                 [channels.echo.accounts.default]\ninterval_secs = 0\n\
                 [channels.webhook.accounts.default]\n\
                 [channels.webhook.accounts.broken]\nsurl = \"typo\"\n"
            ),
        )
        .start()
        .unwrap()
}

/// The seqs of the messages shown, in page order.
async fn shown_seqs(b: &mut Browser) -> Vec<u64> {
    let v = b
        .eval("[...document.querySelectorAll('#messages li')].map(li => Number(li.dataset.seq))")
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn has_message(direction: &str, text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages li[data-direction=\"{direction}\"] .text')]\
         .some(e => e.textContent === {})",
        json!(text)
    )
}

fn account_state(channel: &str, account: &str) -> String {
    format!(
        "document.querySelector('#channels tr[data-channel=\"{channel}\"][data-account=\"{account}\"] .state')?.dataset.state"
    )
}

/// Waits until the page shows `channel`/`account` in `state`.
async fn wait_account(b: &mut Browser, channel: &str, account: &str, state: &str) {
    b.wait(
        &format!("{} === '{state}'", account_state(channel, account)),
        T,
    )
    .await
    .unwrap();
}

/// Waits until the page says it is connected.
async fn wait_page_connected(b: &mut Browser) {
    b.wait(
        "document.getElementById('conn-state').dataset.state === 'connected'",
        T,
    )
    .await
    .unwrap();
}

/// Saves a screenshot of the page as `name` (a PNG) among the artifacts.
async fn shot(b: &mut Browser, name: &str) {
    b.screenshot(&shots().join(name)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_embedded_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), free_port());
    let http = reqwest::Client::new();
    let r = http.get(d.http("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    assert!(html.contains("<script type=\"module\" src=\"/ui/app.js\"></script>"));
    for (path, ct) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = http.get(d.http(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ct, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(
        http.get(d.http("/ui/nothing.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The gateway's Origin rules stay: a foreign page cannot open the socket.
    assert!(Client::open_with_origin(&d.url(), "https://evil.example")
        .await
        .is_err());

    // Turned off: `GET /` explains the WebSocket instead, no assets.
    let off = Daemon::builder()
        .config("[gateway]\ncontrol_ui = false\n")
        .start()
        .unwrap();
    let r = http.get(off.http("/")).send().await.unwrap();
    assert_eq!(r.status(), 426);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("connect with a WebSocket client"));
    let r = http.get(off.http("/ui/app.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("gateway.control_ui = false"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_sends_controls_and_resumes_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = daemon(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}/");
    let mut b = Browser::start(1280, 800).await.unwrap();
    b.goto(&url).await.unwrap();
    b.wait("document.getElementById('login').checkVisibility()", T)
        .await
        .unwrap();

    // A wrong token: a clear error, nothing kept.
    b.type_into("#login-token", "not-the-token").await.unwrap();
    b.press("Enter").await.unwrap();
    let e = b
        .wait("document.getElementById('login-error').textContent", T)
        .await
        .unwrap();
    let e = e.as_str().unwrap();
    assert!(
        e.contains("refused this token") && e.contains("[gateway.auth]"),
        "{e}"
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('switchboard.token')")
            .await
            .unwrap(),
        Value::Null
    );
    assert_eq!(
        b.eval("document.getElementById('app').checkVisibility()")
            .await
            .unwrap(),
        false,
        "the panels show before login"
    );
    shot(&mut b, "01-wrong-token.png").await;

    // The right token: connected, the channels and plugins shown.
    b.type_into("#login-token", TOKEN).await.unwrap();
    b.click("#login-submit").await.unwrap();
    wait_page_connected(&mut b).await;
    for ch in ["echo", "webhook"] {
        wait_account(&mut b, ch, "default", "connected").await;
        b.wait(
            &format!(
                "document.querySelector('#plugins tr[data-plugin=\"{ch}\"] td:nth-child(3)')?.textContent === '0.2.0'"
            ),
            T,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        b.eval("document.getElementById('login').checkVisibility()")
            .await
            .unwrap(),
        false
    );
    // The token lives in this tab's session storage, never in the URL.
    assert_eq!(
        b.eval("sessionStorage.getItem('switchboard.token')")
            .await
            .unwrap(),
        TOKEN
    );
    assert_eq!(
        b.eval("localStorage.length").await.unwrap(),
        0,
        "nothing in localStorage"
    );
    let href = b.eval("location.href").await.unwrap();
    assert_eq!(href, url.as_str());
    b.wait(
        "document.getElementById('status-version').textContent.includes('protocol 4')",
        T,
    )
    .await
    .unwrap();
    let conns: u64 = b
        .text("#status-connections")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(conns >= 1);
    assert!(b
        .text("#status-scopes")
        .await
        .unwrap()
        .contains("operator.admin"));
    // An account whose settings the plugin refuses: its error, and health.
    wait_account(&mut b, "webhook", "broken", "error").await;
    let err = b
        .text("#channels tr[data-channel=\"webhook\"][data-account=\"broken\"] td.err")
        .await
        .unwrap();
    assert!(err.contains("surl"), "{err}");
    b.wait(
        "document.getElementById('status-health').textContent === 'degraded (1 account error)'",
        T,
    )
    .await
    .unwrap();
    shot(&mut b, "02-connected.png").await;

    // Send through echo: the outbound message and the echoed inbound one.
    b.eval("(() => { const s = document.getElementById('send-channel'); s.value = 'echo'; s.dispatchEvent(new Event('change')); })()")
        .await
        .unwrap();
    b.type_into("#send-to", "ui-chat").await.unwrap();
    b.type_into("#send-text", "hello from the page")
        .await
        .unwrap();
    b.click("#send-submit").await.unwrap();
    b.wait(&has_message("outbound", "hello from the page"), T)
        .await
        .unwrap();
    b.wait(&has_message("inbound", "hello from the page"), T)
        .await
        .unwrap();
    assert!(b
        .text("#send-result")
        .await
        .unwrap()
        .starts_with("Sent through echo"));
    shot(&mut b, "03-sent-through-echo.png").await;

    // A webhook POST appears, with its attachment named.
    let r = reqwest::Client::new()
        .post(d.http("/hooks/webhook/default"))
        .json(&json!({"chatId": "web-1", "senderId": "carol", "text": "posted to the hook",
                      "attachments": [{"kind": "image", "mimeType": "image/png", "fileName": "cat.png", "url": "https://img.example/cat.png"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    b.wait(&has_message("inbound", "posted to the hook"), T)
        .await
        .unwrap();
    let att = b
        .eval("[...document.querySelectorAll('#messages .att')].map(e => e.textContent).join('|')")
        .await
        .unwrap();
    assert!(
        att.as_str()
            .unwrap()
            .contains("Attachment: cat.png (image, image/png)"),
        "{att}"
    );
    shot(&mut b, "04-webhook-message.png").await;

    // Stop and start an account from the page.
    b.click("#channels tr[data-channel=\"echo\"][data-account=\"default\"] button")
        .await
        .unwrap();
    wait_account(&mut b, "echo", "default", "stopped").await;
    let (mut op, _) = connect(&d.url(), Some(TOKEN), &["operator.read"])
        .await
        .unwrap();
    let a = op.account_status("echo", "default").await.unwrap();
    assert_eq!(a["running"], false, "{a}");
    shot(&mut b, "05-account-stopped.png").await;
    b.click("#channels tr[data-channel=\"echo\"][data-account=\"default\"] button")
        .await
        .unwrap();
    wait_account(&mut b, "echo", "default", "connected").await;
    shot(&mut b, "06-account-started.png").await;

    // Reload a plugin from the page (the note comes from plugins.reload's answer).
    b.click("#plugins tr[data-plugin=\"echo\"] button")
        .await
        .unwrap();
    b.wait(
        "document.getElementById('plugins-note').textContent === 'Reloaded echo.'",
        T,
    )
    .await
    .unwrap();
    let list = op.request("p", "plugins.list", json!({})).await.unwrap();
    let echo = list["payload"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "echo")
        .cloned()
        .unwrap();
    assert_eq!(echo["state"], "loaded", "{echo}");

    // Reload: logged in still (same tab), the history is back.
    b.reload().await.unwrap();
    wait_page_connected(&mut b).await;
    for (dir, text) in [
        ("outbound", "hello from the page"),
        ("inbound", "hello from the page"),
        ("inbound", "posted to the hook"),
    ] {
        b.wait(&has_message(dir, text), T).await.unwrap();
    }
    shot(&mut b, "07-after-reload.png").await;

    // A reconnect resumes without gaps or doubles: the page is frozen while
    // the daemon restarts and messages go through, then let go.
    b.pause_scripts().await.unwrap();
    drop(op);
    drop(d);
    let d = daemon(dir.path(), port);
    let (mut op, _) = connect(&d.url(), Some(TOKEN), &["operator.write"])
        .await
        .unwrap();
    op.wait_connected("echo", "default", T).await.unwrap();
    for i in 0..3 {
        let r = op
            .send_message("echo", "ui-chat", &format!("while away {i}"))
            .await
            .unwrap();
        assert_eq!(r["ok"], true, "{r}");
    }
    b.resume_scripts().await.unwrap();
    wait_page_connected(&mut b).await;
    for i in 0..3 {
        let text = format!("while away {i}");
        b.wait(&has_message("outbound", &text), T).await.unwrap();
        b.wait(&has_message("inbound", &text), T).await.unwrap();
    }
    let log: Vec<u64> = op
        .history_after(0)
        .await
        .unwrap()
        .iter()
        .map(|m| m["messageSeq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        shown_seqs(&mut b).await,
        log,
        "the page shows the log exactly once, in order"
    );
    shot(&mut b, "08-resumed-after-restart.png").await;

    // Messages keep coming while the page reloads (live events and the
    // first history page overlap): each is shown once, in order, with no
    // hole; scrolling back then loads earlier ones from the history. The
    // log first gets more than a page (50) of messages, so that there are
    // earlier ones however early the first page comes.
    {
        let (mut c, _) = connect(&d.url(), Some(TOKEN), &["operator.write"])
            .await
            .unwrap();
        for i in 0..30 {
            c.send_message("echo", "bulk", &format!("before {i}"))
                .await
                .unwrap();
        }
    }
    let url2 = d.url();
    let bulk = tokio::spawn(async move {
        let (mut c, _) = connect(&url2, Some(TOKEN), &["operator.write"])
            .await
            .unwrap();
        for i in 0..60 {
            c.send_message("echo", "bulk", &format!("bulk {i}"))
                .await
                .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.reload().await.unwrap();
    bulk.await.unwrap();
    b.wait(&has_message("inbound", "bulk 59"), T).await.unwrap();
    b.wait(&has_message("outbound", "bulk 59"), T)
        .await
        .unwrap();
    let log: Vec<u64> = op
        .history_after(0)
        .await
        .unwrap()
        .iter()
        .map(|m| m["messageSeq"].as_u64().unwrap())
        .collect();
    let before = shown_seqs(&mut b).await;
    assert!(
        before.len() >= 50,
        "the first page is the newest 50, then live ones"
    );
    assert!(
        log.ends_with(&before),
        "the page shows a tail of the log, each once, without holes: {before:?}"
    );
    b.eval("document.getElementById('messages').scrollTop = 0")
        .await
        .unwrap();
    b.wait(
        &format!(
            "document.querySelectorAll('#messages li').length > {}",
            before.len()
        ),
        T,
    )
    .await
    .unwrap();
    let after = shown_seqs(&mut b).await;
    assert!(
        log.ends_with(&after),
        "scrolled back: still a tail of the log: {after:?}"
    );
    assert!(after.len() > before.len());

    // A phone screen: one column, nothing wider than the screen.
    assert_eq!(
        b.eval("document.documentElement.scrollWidth <= 1280")
            .await
            .unwrap(),
        true
    );
    b.viewport(390, 844, true).await.unwrap();
    if let Err(e) = b
        .wait("document.documentElement.scrollWidth <= 390", T)
        .await
    {
        b.screenshot(&shots().join("09-phone-overflow.png"))
            .await
            .unwrap();
        let wide = b
            .eval(
                "[document.documentElement.scrollWidth, window.innerWidth, ...[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391 && !e.parentElement.closest('.scroll-x'))\
                 .slice(0, 10).map(e => `${e.tagName}#${e.id}.${e.className} right=${e.getBoundingClientRect().right}`)]",
            )
            .await
            .unwrap();
        panic!("{e}\nwider than the phone: {wide}");
    }
    shot(&mut b, "09-phone.png").await;

    // Every control is labelled, and Tab reaches the send box.
    let unlabelled = b
        .eval(
            "[...document.querySelectorAll('input, select, textarea, button')]\
             .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))\
             .map(e => e.id || e.outerHTML)",
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "controls without a label");
    b.eval("document.activeElement?.blur(); document.getElementById('messages').focus()")
        .await
        .unwrap();
    let mut reached = Vec::new();
    for _ in 0..8 {
        b.press("Tab").await.unwrap();
        reached.push(b.eval("document.activeElement.id").await.unwrap());
    }
    for id in [
        "send-channel",
        "send-account",
        "send-to",
        "send-text",
        "send-submit",
    ] {
        assert!(
            reached.contains(&json!(id)),
            "Tab did not reach {id}: {reached:?}"
        );
    }
    let console = b.console.lock().unwrap().join("\n");
    assert!(!console.contains("exception"), "page errors:\n{console}");
}

/// A plugin's webhook answer is served on the control page's own origin,
/// where the page keeps its token (`sessionStorage`). A page a plugin
/// answers with must not run script there: misbehave's `/page` tries to
/// read the token and open an operator connection. The gateway serves
/// every plugin answer sandboxed (`Content-Security-Policy: sandbox`, an
/// origin of its own, no script) and `nosniff`, so in a real browser,
/// in the tab an operator is logged in on, the script does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_s_page_cannot_run_script_on_the_gateway_s_origin() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::builder()
        .port(port)
        .with_plugins(
            dir.path(),
            &[("test-plugins", "misbehave.wasm")],
            &format!(
                "[gateway.auth]\ntoken = \"{TOKEN}\"\n[channels.misbehave.accounts.default]\n"
            ),
        )
        .start()
        .unwrap();
    let page = d.http("/hooks/misbehave/default/page");
    let r = reqwest::get(&page).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.headers()["content-security-policy"], "sandbox");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    let mut b = Browser::start(1280, 800).await.unwrap();
    b.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    b.type_into("#login-token", TOKEN).await.unwrap();
    b.press("Enter").await.unwrap();
    wait_page_connected(&mut b).await;
    assert_eq!(
        b.eval("sessionStorage.getItem('switchboard.token')")
            .await
            .unwrap(),
        TOKEN
    );
    // The same tab goes to the plugin's page.
    b.goto(&page).await.unwrap();
    b.wait(
        "location.pathname.endsWith('/page') && document.readyState === 'complete'",
        T,
    )
    .await
    .unwrap();
    // Time for a script's socket to open, had it run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.eval("document.title").await.unwrap(), "plugin page");
    assert_eq!(b.eval("self.origin").await.unwrap(), "null");
}
