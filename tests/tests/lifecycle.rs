//! Start-up, limits, TLS, HTTP endpoints, the `call` client and graceful
//! shutdown, against the real daemon.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_tests::*;

#[test]
fn unknown_config_key_is_named() {
    let (code, err) = Daemon::builder()
        .config("[gateway]\nprot = 1\n")
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("prot"), "{err}");
    assert!(err.contains("switchboard.toml"), "{err}");
    // Logged, then printed plainly as the last thing said.
    let logged = err.find("ERROR switchboard: invalid config file");
    let plain = err.rfind("\nerror: invalid config file");
    assert!(
        matches!((logged, plain), (Some(l), Some(p)) if l < p),
        "the log line, then the plain one: {err}"
    );
}

/// A state directory the daemon creates is private (`0700`) under the
/// usual umask, whichever part of the daemon creates it first (the
/// compiled-plugin cache inside it did, with the umask's `0755`), and
/// nothing warns about it.
#[tokio::test]
async fn a_state_directory_the_daemon_creates_is_private() {
    use std::os::unix::fs::PermissionsExt;
    // The usual umask, whatever the suite runs under: it is what leaves
    // a directory created without a mode open to every user.
    // SAFETY: umask has no preconditions; 022 is every test's default.
    unsafe { libc::umask(0o022) };
    // With no state_dir, the test kit points --state-dir at a directory
    // that does not exist yet.
    let d = Daemon::builder().config("").start().unwrap();
    let state = d.config_path.parent().unwrap().join("state");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", d.log_text());
    let cache = std::fs::metadata(state.join("cache")).unwrap();
    assert_eq!(cache.permissions().mode() & 0o777, 0o700);
    assert!(
        !d.log_text().contains("open to other users"),
        "{}",
        d.log_text()
    );
}

/// A config file every user may write is refused at start (whoever writes
/// it sets the credentials and the plugins run); one every user may read
/// that holds secrets written out is started with a warning naming them
/// (not the values); one readable by its owner only, or holding only
/// `${VAR}` references, without.
#[tokio::test]
async fn a_config_file_open_to_every_user_is_refused_or_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    let write = |text: &str, mode: u32| {
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let secret = "[gateway.auth]\ntoken = \"open-s3cret\"\n";
    write(secret, 0o666);
    let (code, err) = Daemon::builder()
        .config_file(&file)
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("is writable by every user (mode 0666)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("`chmod o-w {}`", file.display())),
        "{err}"
    );

    let warned =
        "is readable by every user (mode 0644) and holds secrets written out (gateway.auth.token)";
    write(secret, 0o644);
    let d = Daemon::builder().config_file(&file).start().unwrap();
    d.wait_log(warned, Duration::from_secs(5)).await.unwrap();
    assert!(!d.log_text().contains("open-s3cret"));
    drop(d);
    for (text, mode) in [
        (secret, 0o600),
        ("[gateway.auth]\ntoken = \"${PATH}\"\n", 0o644),
    ] {
        write(text, mode);
        let d = Daemon::builder().config_file(&file).start().unwrap();
        d.wait_log("gateway listening", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            !d.log_text().contains("is readable by every user"),
            "{}",
            d.log_text()
        );
    }
}

#[test]
fn lan_without_auth_is_refused_with_a_hint() {
    let (code, err) = Daemon::builder()
        .arg("--bind")
        .arg("lan")
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("without authentication"), "{err}");
    assert!(err.contains("SWITCHBOARD_TOKEN"), "{err}");
}

#[test]
fn a_trusted_proxy_that_is_not_an_address_is_named() {
    let (code, err) = Daemon::builder()
        .config("[gateway]\ntrusted_proxies = [\"10.0.0.0/8\", \"nginx.internal\"]\n")
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("gateway.trusted_proxies[1]: `nginx.internal` is not an IP address"),
        "{err}"
    );
}

#[test]
fn missing_env_var_in_config_is_named() {
    let (code, err) = Daemon::builder()
        .config("[gateway.auth]\ntoken = \"${SB_TEST_UNSET_VAR}\"\n")
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("SB_TEST_UNSET_VAR"), "{err}");
    assert!(err.contains("gateway.auth.token"), "{err}");
}

#[tokio::test]
async fn env_var_expansion_and_env_token() {
    // ${VAR} in the file.
    let d = Daemon::builder()
        .config("[gateway.auth]\ntoken = \"${SB_TEST_TOKEN}\"\n")
        .env("SB_TEST_TOKEN", "from-env")
        .start()
        .unwrap();
    connect(&d.url(), Some("from-env"), &["operator.read"])
        .await
        .unwrap();
    // SWITCHBOARD_TOKEN overrides the file.
    let d = Daemon::builder()
        .config("[gateway.auth]\ntoken = \"file\"\n")
        .env("SWITCHBOARD_TOKEN", "env-wins")
        .start()
        .unwrap();
    connect(&d.url(), Some("env-wins"), &["operator.read"])
        .await
        .unwrap();
    assert!(connect(&d.url(), Some("file"), &["operator.read"])
        .await
        .is_err());
}

#[tokio::test]
async fn http_endpoints() {
    let d = Daemon::builder().start().unwrap();
    let h: Value = reqwest::get(d.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h, json!({"ok": true, "status": "live"}));
    let r = reqwest::get(d.http("/ready")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r, json!({"ready": true, "failing": []}));
    let (_c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let m = reqwest::get(d.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("switchboard_connections{role=\"operator\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("# TYPE switchboard_frames_in_total counter"),
        "{m}"
    );
    // A plain GET on / is the control page (tests/control_ui.rs).
    let r = reqwest::get(d.http("/")).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// `status` shows the port the gateway listens on, also when the system
/// chose it (`--port 0`).
#[tokio::test]
async fn status_shows_the_port_bound() {
    let d = Daemon::builder().port(0).start().unwrap();
    assert_ne!(d.addr.port(), 0);
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let s = c.request("1", "status", json!({})).await.unwrap();
    assert_eq!(s["payload"]["gateway"]["port"], d.addr.port(), "{s}");
}

#[tokio::test]
async fn methods_answer_with_their_shapes() {
    let d = Daemon::builder().start().unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let h = c.request("1", "health", json!({})).await.unwrap();
    let h = &h["payload"];
    assert_eq!(h["ok"], true);
    assert_eq!(h["channels"], json!({}));
    assert_eq!(h["channelOrder"], json!([]));
    assert_eq!(h["plugins"], json!({"loaded": [], "errors": []}));
    let s = c.request("2", "status", json!({})).await.unwrap();
    assert_eq!(s["payload"]["connections"]["total"], 1);
    assert_eq!(s["payload"]["protocol"], 4);
    let cs = c.request("3", "channels.status", json!({})).await.unwrap();
    assert_eq!(
        cs["payload"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        [
            "channelAccounts",
            "channelDefaultAccountId",
            "channelLabels",
            "channelOrder",
            "channels",
            "ts"
        ]
    );
    let bad = c
        .request("4", "channels.status", json!({"channel": "telegram"}))
        .await
        .unwrap();
    assert!(bad["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown channel: telegram"));
    let bad = c.request("5", "status", json!({"x": 1})).await.unwrap();
    assert_eq!(bad["error"]["code"], "INVALID_REQUEST");
    // A frame that is not a request after connect closes with 1008.
    c.send_text("{\"type\":\"res\",\"id\":\"1\",\"ok\":true}")
        .await
        .unwrap();
    let (closed, _) = c.expect_close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed.code, 1008);
}

#[tokio::test]
async fn sigterm_broadcasts_shutdown_then_1012_then_exit_0() {
    let mut d = Daemon::builder().start().unwrap();
    let (mut a, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let (mut b, _) = connect(&d.url(), None, &[]).await.unwrap();
    d.signal("TERM");
    for c in [&mut a, &mut b] {
        let (closed, frames) = c.expect_close(Duration::from_secs(10)).await.unwrap();
        let shutdown = frames
            .iter()
            .find(|f| f["event"] == "shutdown")
            .expect("shutdown event before close");
        assert!(shutdown["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("SIGTERM"));
        assert_eq!(closed.code, 1012);
    }
    assert_eq!(d.wait_exit(Duration::from_secs(15)).unwrap(), 0);
    let log = d.log_text();
    let mut pos = 0;
    for step in [
        "shutdown 1/5",
        "shutdown 2/5",
        "shutdown 3/5",
        "shutdown 4/5",
        "shutdown 5/5",
    ] {
        let at = log[pos..]
            .find(step)
            .unwrap_or_else(|| panic!("{step} missing:\n{log}"));
        pos += at;
    }
}

#[tokio::test]
async fn sigint_with_a_stuck_client_still_exits_in_bound() {
    let mut d = Daemon::builder()
        .config("[gateway.limits]\nshutdown_timeout_ms = 2000\n")
        .start()
        .unwrap();
    // A client mid-handshake and one connected that never reads.
    let _half = Client::open(&d.url()).await.unwrap();
    let (_idle, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let t0 = Instant::now();
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).unwrap(), 0);
    assert!(t0.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_second_signal_ends_a_slow_shutdown_at_once() {
    let mut d = Daemon::builder()
        .config("[gateway.limits]\nshutdown_timeout_ms = 60000\n")
        .start()
        .unwrap();
    let _half = Client::open(&d.url()).await.unwrap();
    let _stuck = stuck_client(&d, None).await;
    d.signal("INT");
    d.wait_log("shutdown 4/5", Duration::from_secs(10))
        .await
        .unwrap();
    // The sequence waits for the clients, within its 60 s bound ...
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.wait_exit(Duration::from_millis(10)).is_err());
    // ... and a second signal ends it.
    let t0 = Instant::now();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(5)).unwrap(), 1);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let log = d.log_text();
    assert!(log.contains("second stop signal"), "{log}");
    assert!(log.contains("signal=\"SIGTERM\""), "{log}");
}

#[tokio::test]
async fn a_config_file_that_is_a_pipe_is_read_once_and_the_daemon_still_stops() {
    // `--config <(generate-config)`: a pipe, read at start; reading it
    // again would wait for a writer that is gone.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("switchboard.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let text = format!(
        "state_dir = \"{}\"\n[gateway.auth]\ntoken = \"from-the-pipe\"\n",
        dir.path().join("state").display()
    );
    let f = fifo.clone();
    let writer = std::thread::spawn(move || std::fs::write(f, text));
    let mut d = Daemon::builder().config_file(&fifo).start().unwrap();
    writer.join().unwrap().unwrap();
    // The pipe's configuration is in force: its token is required.
    let (mut c, _) = connect(&d.url(), Some("from-the-pipe"), &["operator.read"])
        .await
        .unwrap();
    d.wait_log("not a regular file", Duration::from_secs(5))
        .await
        .unwrap();
    // SIGHUP does not read the pipe again: health stays ok and no error.
    d.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let h = c.request("h", "health", json!({})).await.unwrap();
    assert_eq!(h["ok"], true, "{h}");
    assert!(h["payload"]["configError"].is_null(), "{h}");
    assert!(
        !d.log_text().contains("configuration not reloaded"),
        "{}",
        d.log_text()
    );
    drop(c);
    let t0 = Instant::now();
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).unwrap(), 0);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// Under systemd (`Type=notify`): READY=1 once it listens, RELOADING=1 and
/// READY=1 around a SIGHUP's reload, WATCHDOG=1 every half of
/// `WatchdogSec=`, STOPPING=1 when it stops.
#[tokio::test]
async fn systemd_is_notified_of_readiness_reloads_liveness_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut d = Daemon::builder()
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start()
        .unwrap();
    // Everything before READY=1 is what the daemon sent first.
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=listening on ws://{}", d.addr)),
        "{ready}"
    );
    // The watchdog, every 200 ms.
    let t0 = Instant::now();
    let mut beats = 0;
    while beats < 3 {
        if next() == "WATCHDOG=1" {
            beats += 1;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    d.signal("HUP");
    let mut seen = Vec::new();
    while !seen.contains(&"READY=1".to_string()) {
        let m = next();
        if m != "WATCHDOG=1" {
            seen.push(m);
        }
    }
    assert_eq!(seen, ["RELOADING=1", "READY=1"]);
    d.signal("TERM");
    loop {
        let m = next();
        if m == "STOPPING=1" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    assert_eq!(d.wait_exit(Duration::from_secs(10)).unwrap(), 0);
}

/// `NOTIFY_SOCKET` may name a socket in Linux's abstract namespace (`@…`),
/// as systemd does in some set-ups.
#[test]
fn systemd_notifications_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let name = format!("switchboard-test-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", &format!("@{name}"))
        .start()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("READY=1 in time");
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("READY=1\n"), "{got}");
    drop(d);
}

/// The shipped unit file parses cleanly (every key known, every value
/// valid), pointed at the binary under test.
#[test]
fn the_example_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(workspace_root().join("examples/switchboard.service")).unwrap();
    assert!(unit.contains("Type=notify"), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/switchboard",
            &binary().display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[tokio::test]
async fn max_connections_is_held_for_the_socket_life() {
    let d = Daemon::builder()
        .config("[gateway.limits]\nmax_connections = 2\n")
        .start()
        .unwrap();
    let (a, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    let (_b, _) = connect(&d.url(), None, &["operator.read"]).await.unwrap();
    // Both slots are held by upgraded sockets: a third gets 503.
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("max_connections"), "{resp}");
    // Closing one frees its slot.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if reqwest::get(d.http("/health"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The previous HTTP request's socket may still hold the free slot for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rejected = loop {
        if let Ok(v) = d.metric("switchboard_connections_rejected_total").await {
            break v;
        }
        assert!(Instant::now() < deadline, "metrics unreachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rejected >= 1);
}

#[test]
fn slow_headers_are_cut_off() {
    let d = Daemon::builder()
        .config("[gateway.limits]\nheader_read_timeout_ms = 300\n")
        .start()
        .unwrap();
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finished
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(r.is_ok(), "connection was not closed: {r:?}");
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_millis(200) && e < Duration::from_secs(4),
        "{e:?}"
    );
}

#[tokio::test]
async fn tls_with_a_generated_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .start()
        .unwrap();
    d.wait_log("url=wss://", Duration::from_secs(1))
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let url = format!("wss://localhost:{}", d.addr.port());
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        url.as_str(),
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(client_cfg))),
    )
    .await
    .unwrap();
    let mut c = Client::after_upgrade(ws).await.unwrap();
    let res = c
        .request("c1", "connect", connect_params(None, &["operator.read"]))
        .await
        .unwrap();
    assert_eq!(res["payload"]["type"], "hello-ok");
    assert_eq!(
        c.request("h", "health", json!({})).await.unwrap()["ok"],
        true
    );
    // Plain HTTP on the TLS port does not get through.
    assert!(reqwest::get(d.http("/health")).await.is_err());
}

fn call(d: &Daemon, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("call")
        .args(args)
        .arg("--url")
        .arg(d.url())
        .env_remove("SWITCHBOARD_TOKEN");
    if let Some(t) = token {
        cmd.env("SWITCHBOARD_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn call_subcommand() {
    let d = Daemon::builder()
        .config("[gateway.auth]\ntoken = \"cli-tok\"\n")
        .start()
        .unwrap();
    let (code, out, err) = call(&d, &["health"], Some("cli-tok"));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let (code, out, _) = call(&d, &["channels.status", "--params", "{}"], Some("cli-tok"));
    assert_eq!(code, 0);
    assert!(out.contains("channelAccounts"));
    let (code, _, err) = call(&d, &["health"], Some("wrong"));
    assert_eq!(code, 1);
    assert!(
        err.contains("INVALID_REQUEST") && err.contains("AUTH_TOKEN_MISMATCH"),
        "{err}"
    );
    let (code, _, err) = call(&d, &["no.such.method"], Some("cli-tok"));
    assert_eq!(code, 1);
    assert!(err.contains("unknown method: no.such.method"), "{err}");
    let (code, _, err) = call(&d, &["health", "--params", "{oops"], Some("cli-tok"));
    assert_eq!(code, 2);
    assert!(err.contains("--params"), "{err}");
}

/// `switchboard call` (and `tail`) say how to mend an address they cannot
/// connect to: nothing listening, an http:// URL, no URL at all.
#[test]
fn call_names_how_to_mend_a_bad_address() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = |url: &str| {
        let out = Command::new(binary())
            .args(["call", "health", "--url", url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&format!("ws://127.0.0.1:{port}"));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("is the gateway running there?"), "{err}");
    let (code, err) = run(&format!("HTTPS://127.0.0.1:{port}/"));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("(use wss://127.0.0.1:{port}/)")),
        "{err}"
    );
    for url in ["ftp://127.0.0.1:1", "127.0.0.1:1"] {
        let (_, err) = run(url);
        assert!(err.contains("must look like ws://127.0.0.1:18789"), "{err}");
    }
    // `tail` retries what a retry can mend, not this: it exits.
    let mut child = Command::new(binary())
        .args(["tail", "--url", &format!("http://127.0.0.1:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("tail kept retrying a URL that is not a gateway's");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!("(use ws://127.0.0.1:{port})")),
        "{err}"
    );
}
