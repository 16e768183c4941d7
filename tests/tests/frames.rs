//! The writer's hand-made frames, checked by an independent client:
//! Python's `websockets` decodes payloads of 0, 125, 126, 65535, 65536 and
//! 5 MB bytes (responses and pongs) interleaved with events, checks every
//! event's `seq`, and reads a 1008 close frame (`tests/py/ws_frames.py`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use switchboard_tests::*;

#[test]
fn python_websockets_decodes_every_frame_size() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py_path = root.join("target/tools/py");
    assert!(
        py_path.join("websockets").is_dir(),
        "Python websockets is missing: run `make py-deps` (make test does)"
    );
    let d = Daemon::builder()
        .config("[gateway]\ntick_interval_ms = 20\n[gateway.auth]\ntoken = \"pt\"\n")
        .start()
        .unwrap();
    let out = Command::new("python3")
        .arg(root.join("tests/py/ws_frames.py"))
        .arg(d.url())
        .arg("pt")
        .env("PYTHONPATH", &py_path)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ws_frames.py failed:\n{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    for size in ["125", "126", "65535", "65536", "5242880"] {
        assert_eq!(summary["responses"][size].to_string(), size, "{summary}");
    }
    assert_eq!(summary["pongs"], serde_json::json!([0, 125]));
    assert!(summary["events"].as_u64().unwrap() >= 3, "{summary}");
    assert_eq!(summary["close"]["code"], 1008, "{summary}");
    assert_eq!(summary["close"]["reason"], "invalid request frame");
}
