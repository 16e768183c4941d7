//! A headless Chromium (Debian's `chromium` package) driven over the
//! DevTools protocol: a WebSocket speaking CDP, no browser download, no
//! extra crate. Clicks and typing go through `Input.*` (real events), not
//! through setting properties.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The Chromium binary, or the reason there is none.
pub fn chromium_binary() -> Result<PathBuf> {
    for p in [
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
    ] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!("chromium is not installed: `make test` installs it (apt-get install chromium)")
}

/// One browser with one page (tab).
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next: u64,
    session: String,
    /// Console messages and uncaught exceptions of the page, for failures.
    pub console: Arc<Mutex<Vec<String>>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and a `width`×`height`
    /// window, and opens a blank page.
    pub async fn start(width: u32, height: u32) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(chromium_binary()?)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start chromium")?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find("ws://") {
                        let _ = tx.send(line[i..].trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("chromium did not print its DevTools address within 30 s"))?;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("connect to chromium's DevTools")?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Default::default();
        let console: Arc<Mutex<Vec<String>>> = Default::default();
        let (p, c) = (pending.clone(), console.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                    continue;
                }
                match v["method"].as_str() {
                    Some("Runtime.consoleAPICalled") => {
                        let args: Vec<String> = v["params"]["args"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| {
                                        x["value"]
                                            .as_str()
                                            .map(str::to_string)
                                            .unwrap_or_else(|| x["value"].to_string())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        c.lock().unwrap().push(format!(
                            "console.{}: {}",
                            v["params"]["type"].as_str().unwrap_or("log"),
                            args.join(" ")
                        ));
                    }
                    Some("Runtime.exceptionThrown") => {
                        c.lock()
                            .unwrap()
                            .push(format!("exception: {}", v["params"]["exceptionDetails"]));
                    }
                    _ => {}
                }
            }
        });
        let mut b = Browser {
            child,
            _profile: profile,
            out,
            pending,
            next: 1,
            session: String::new(),
            console,
        };
        let t = b
            .cmd("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target = t["targetId"].as_str().context("targetId")?.to_string();
        let s = b
            .cmd(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        b.session = s["sessionId"].as_str().context("sessionId")?.to_string();
        b.page("Page.enable", json!({})).await?;
        b.page("Runtime.enable", json!({})).await?;
        b.viewport(width, height, false).await?;
        Ok(b)
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value> {
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out
            .send(Message::Text(msg.to_string().into()))
            .map_err(|_| anyhow!("DevTools connection closed"))?;
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| anyhow!("{method}: no answer from chromium within 30 s"))?
            .map_err(|_| anyhow!("{method}: DevTools connection closed"))?;
        if let Some(e) = v.get("error") {
            bail!("{method}: {e}");
        }
        Ok(v["result"].clone())
    }

    /// A browser-level command.
    pub async fn cmd(&mut self, method: &str, params: Value) -> Result<Value> {
        self.send(method, params, false).await
    }

    /// A command to the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Result<Value> {
        self.send(method, params, true).await
    }

    /// The page's viewport (`mobile`: a phone's touch screen and meta viewport).
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await?;
        Ok(())
    }

    /// Loads `url` and waits for the document to be complete.
    pub async fn goto(&mut self, url: &str) -> Result<()> {
        self.page("Page.navigate", json!({"url": url})).await?;
        self.wait(
            "document.readyState === 'complete'",
            Duration::from_secs(15),
        )
        .await?;
        Ok(())
    }

    /// Reloads the page and waits for it to be complete.
    pub async fn reload(&mut self) -> Result<()> {
        self.page("Page.reload", json!({})).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.wait(
            "document.readyState === 'complete'",
            Duration::from_secs(15),
        )
        .await?;
        Ok(())
    }

    /// Evaluates `expr` in the page (promises awaited); its value as JSON.
    pub async fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("`{expr}` threw: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expr` is truthy; the error shows its last value and the
    /// page's console.
    pub async fn wait(&mut self, expr: &str, t: Duration) -> Result<Value> {
        let t0 = Instant::now();
        let mut last = Value::Null;
        while t0.elapsed() < t {
            match self.eval(expr).await {
                Ok(v) if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) => {
                    return Ok(v)
                }
                Ok(v) => last = v,
                Err(e) => last = json!(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "waited {t:?} for `{expr}` (last: {last}); page console:\n{}",
            self.console.lock().unwrap().join("\n")
        )
    }

    /// The text of the element `selector` ("" when there is none).
    pub async fn text(&mut self, selector: &str) -> Result<String> {
        let v = self
            .eval(&format!(
                "document.querySelector({})?.textContent ?? ''",
                json!(selector)
            ))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Clicks the middle of `selector` with the mouse (scrolled into view first).
    pub async fn click(&mut self, selector: &str) -> Result<()> {
        let r = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                json!(selector)
            ))
            .await?;
        let (x, y) = match (r[0].as_f64(), r[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => bail!("no element `{selector}` to click"),
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Focuses `selector`, clears it and types `text` as keyboard input.
    pub async fn type_into(&mut self, selector: &str, text: &str) -> Result<()> {
        let ok = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; \
                 e.focus(); if ('value' in e) e.value = ''; return document.activeElement === e; }})()",
                json!(selector)
            ))
            .await?;
        if ok != json!(true) {
            bail!("cannot focus `{selector}`");
        }
        self.page("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Presses a key (`Enter`, `Tab`) on the focused element.
    pub async fn press(&mut self, key: &str) -> Result<()> {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            "Tab" => (9, ""),
            other => bail!("press: no key code for {other}"),
        };
        let mut down =
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.page("Input.dispatchKeyEvent", down).await?;
        self.page(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the whole page (beyond the viewport).
    pub async fn screenshot(&mut self, path: &Path) -> Result<()> {
        let m = self.page("Page.getLayoutMetrics", json!({})).await?;
        let size = &m["cssContentSize"];
        let r = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("screenshot data")?)
            .context("screenshot base64")?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Stops the page's JavaScript at its next statement (events queue up).
    pub async fn pause_scripts(&mut self) -> Result<()> {
        self.page("Debugger.enable", json!({})).await?;
        self.page("Debugger.pause", json!({})).await?;
        Ok(())
    }

    /// Lets the page's JavaScript run again.
    pub async fn resume_scripts(&mut self) -> Result<()> {
        self.page("Debugger.resume", json!({})).await?;
        self.page("Debugger.disable", json!({})).await?;
        Ok(())
    }
}
