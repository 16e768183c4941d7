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

/// A Wasm custom section (id 0): a component stays valid with one appended.
pub fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0];
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}
