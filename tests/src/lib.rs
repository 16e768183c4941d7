//! The project's own test helpers: the public test kit
//! (`switchboard-testkit`), re-exported, so every test says
//! `use switchboard_tests::*`.

pub use switchboard_testkit::*;

pub mod browser;

/// Runs `cmd`, asserting it succeeds (the message names `what` and shows
/// its output); returns stdout and stderr together.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}
