//! `switchboard plugins check`: loads a file the way the daemon does and
//! prints what it is, or why it is refused. Uses the components `make
//! plugins` builds (target/plugins, target/test-plugins).

use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard_tests::*;

fn built(dir: &str, name: &str) -> PathBuf {
    let p = workspace_root().join("target").join(dir).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` (make test does)",
        p.display()
    );
    p
}

fn check(file: &Path) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["plugins", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(file: &Path, reason: &str) {
    let (code, out, err) = check(file);
    assert_eq!(
        code,
        1,
        "{} should be refused; stdout {out}",
        file.display()
    );
    assert!(
        err.contains(reason),
        "{}: expected {reason:?} in {err}",
        file.display()
    );
}

#[test]
fn echo_plugin_passes() {
    let (code, out, err) = check(&built("plugins", "echo.wasm"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: echo 0.1.0 (Echo)"), "{out}");
    assert!(out.contains("network: none requested"), "{out}");
    assert!(out.contains("contract: switchboard:channel@0.2.0"), "{out}");
    assert!(out.contains("sha256: "), "{out}");
}

/// What a plugin says of itself is printed escaped: a hostile file's
/// description cannot drive the terminal of whoever checks it, nor fake a
/// line of the output.
#[test]
fn a_plugin_s_own_words_are_printed_escaped() {
    let (code, out, err) = check(&built("test-plugins", "misbehave.wasm"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("description: misbehaves on purpose\\x1b]0;owned\\x07\\nok: forged\n"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "{out:?}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok: ")).count(),
        1,
        "{out}"
    );
}

#[test]
fn broken_files_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let echo = std::fs::read(built("plugins", "echo.wasm")).unwrap();

    let half = dir.path().join("half.wasm");
    std::fs::write(&half, &echo[..echo.len() / 2]).unwrap();
    refused(&half, "truncated or corrupt");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    refused(&core, "a core WebAssembly module, not a component");

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all, just text").unwrap();
    refused(&garbage, "not a WebAssembly file");

    refused(
        &built("test-plugins", "wrong-export.wasm"),
        "does not export switchboard:channel/channel at a version this host serves (0.2.0, 0.1.0)",
    );
    refused(
        &built("test-plugins", "extra-import.wasm"),
        "acme:missing/api",
    );

    let link = dir.path().join("link.wasm");
    std::os::unix::fs::symlink(built("plugins", "echo.wasm"), &link).unwrap();
    refused(&link, "is a symbolic link");

    refused(&dir.path().join("absent.wasm"), "cannot read");
}
