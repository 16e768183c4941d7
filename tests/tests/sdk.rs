//! The SDK as a plugin author gets it: `cargo package -p switchboard-sdk`
//! succeeds, and `examples/echo` builds against the packaged crate (the
//! unpacked `.crate`, outside this workspace — not the workspace path) into
//! a component that `switchboard plugins check` accepts.

use std::path::Path;
use std::process::Command;

use switchboard_tests::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn echo_builds_against_the_packaged_sdk() {
    let root = workspace_root();
    // Kept between runs (and shared by `make test` runs): the build of the
    // wasm dependencies is the slow part.
    let work = root.join("target").join("sdk-package");
    // The SDK's own version (it follows the contract, not the workspace).
    let manifest = std::fs::read_to_string(root.join("sdk/Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("sdk/Cargo.toml has its own version")
        .to_string();
    run_ok(
        Command::new(env!("CARGO"))
            .args([
                "package",
                "-p",
                "switchboard-sdk",
                "--allow-dirty",
                "--no-verify",
            ])
            .arg("--target-dir")
            .arg(&work)
            .current_dir(&root),
        "cargo package -p switchboard-sdk",
    );
    let krate = work
        .join("package")
        .join(format!("switchboard-sdk-{version}.crate"));
    // Unpack the .crate anew: what a registry would hand an author.
    let unpacked = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("tar")
            .arg("xzf")
            .arg(&krate)
            .arg("-C")
            .arg(unpacked.path()),
        "unpack the .crate",
    );
    let sdk = unpacked.path().join(format!("switchboard-sdk-{version}"));
    assert!(
        sdk.join("wit/world.wit").exists(),
        "the WIT is not in the package"
    );

    // examples/echo on its own, depending on the unpacked crate.
    let author = tempfile::tempdir().unwrap();
    let echo = author.path().join("echo");
    copy_dir(&root.join("examples/echo/src"), &echo.join("src"));
    std::fs::write(
        echo.join("Cargo.toml"),
        format!(
            "[package]\nname = \"switchboard-echo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\
             serde_json = \"1\"\nswitchboard-sdk = {{ path = \"{}\" }}\n\n[workspace]\n",
            sdk.display()
        ),
    )
    .unwrap();
    // The workspace's lockfile pins the same dependency versions.
    std::fs::copy(root.join("Cargo.lock"), echo.join("Cargo.lock")).unwrap();
    run_ok(
        Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .arg("--target-dir")
            .arg(work.join("echo"))
            .current_dir(&echo),
        "cargo build of examples/echo against the packaged SDK",
    );
    let wasm = work.join("echo/wasm32-wasip2/release/switchboard_echo.wasm");
    let out = run_ok(
        Command::new(binary()).args(["plugins", "check"]).arg(&wasm),
        "switchboard plugins check",
    );
    assert!(out.starts_with("ok: echo "), "{out}");
}
