//! `switchboard plugins new`: the crate it writes builds as a component,
//! passes `switchboard plugins check`, and its own test (through
//! `switchboard-testkit`) runs it in the real daemon and passes.

use std::process::Command;

use switchboard_tests::*;

#[test]
fn a_scaffolded_plugin_builds_checks_and_passes_its_test() {
    let root = workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-chan");
    let out = run_ok(
        Command::new(binary())
            .args(["plugins", "new", "my-chan", "--dir"])
            .arg(&dir)
            .arg("--sdk")
            .arg(root.join("sdk"))
            .arg("--testkit")
            .arg(root.join("testkit")),
        "switchboard plugins new",
    );
    assert!(
        out.contains("wrote") && dir.join("src/lib.rs").exists(),
        "{out}"
    );
    // The workspace's lockfile: the same dependency versions, resolved offline.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    // Shared between runs: building the test kit's dependencies is the slow part.
    let target = root.join("target").join("scaffold");
    let cargo = env!("CARGO");
    run_ok(
        Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&dir),
        "cargo build of the scaffolded plugin",
    );
    let wasm = target.join("wasm32-wasip2/release/my_chan.wasm");
    let out = run_ok(
        Command::new(binary()).args(["plugins", "check"]).arg(&wasm),
        "switchboard plugins check",
    );
    assert!(out.starts_with("ok: my-chan 0.1.0"), "{out}");
    assert!(out.contains("contract: switchboard:channel@0.2.0"), "{out}");
    let out = run_ok(
        Command::new(cargo)
            .arg("test")
            .env("CARGO_TARGET_DIR", &target)
            .env("SWITCHBOARD_BIN", binary())
            .current_dir(&dir),
        "cargo test of the scaffolded plugin",
    );
    assert!(
        out.contains("test the_plugin_runs_in_the_daemon ... ok"),
        "{out}"
    );

    // A name that cannot be an id, and an existing directory, write nothing.
    let bad = Command::new(binary())
        .args(["plugins", "new", "My_Chan", "--dir"])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("[a-z0-9-]"));
    assert!(!tmp.path().join("bad").exists());
    let again = Command::new(binary())
        .args(["plugins", "new", "my-chan", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
