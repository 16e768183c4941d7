//! Interop: the official OpenClaw client library (`@openclaw/gateway-client`,
//! installed into tests/interop by `make test`) connects to the real daemon
//! with a token, with and without a device identity, and calls the read methods.

use std::process::Command;

use serde_json::Value;
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
    let out = Command::new("node")
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
    // The daemon verified the device proof (it logs the device id it derived).
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("connection open")
            && l.contains("device_id=")
            && !l.contains("device_id=\"-\"")),
        "{log}"
    );
}
