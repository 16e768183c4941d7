//! Property-based fuzzing of what reads bytes from outside the process:
//! the pre-auth WebSocket frame reader, the request frame parser, the
//! config parser and the reading of proxy headers. Each must answer every input with a value or an error,
//! never a panic, and never allocate more than its bound.
//!
//! `make test` runs a short bounded pass (proptest's default case count);
//! `make fuzz` runs a long one (`PROPTEST_CASES`).

use proptest::prelude::*;
use switchboard::config::{ClientIpHeader, Config};
use switchboard::frames::RequestFrame;
use switchboard::gateway::preauth::{read_message, PreauthRead};
use tokio::io::AsyncWriteExt;

const MAX: usize = 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Feeds `bytes` to the pre-auth reader (then EOF) and returns its answer.
fn preauth(bytes: &[u8]) -> std::io::Result<PreauthRead> {
    rt().block_on(async {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(bytes).await?;
        drop(b);
        read_message(&mut a, MAX).await
    })
}

/// A client frame header with an arbitrary length field.
fn frame(first: u8, len: u64, form: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    match form % 3 {
        0 => v.push(0x80 | (len.min(125) as u8)),
        1 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            v.push(0x80 | 127);
            v.extend_from_slice(&len.to_be_bytes());
        }
    }
    v.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    v.extend_from_slice(payload);
    v
}

/// Cases per property: `PROPTEST_CASES`, else a bounded pass that still
/// finds the known pre-auth length overflow when it is put back.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn preauth_reader_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = preauth(&bytes);
    }

    /// Sequences of frames with hostile headers and lengths (the overflow
    /// that once panicked is among them: a fragment, then u64::MAX-ish).
    #[test]
    fn preauth_reader_bounds_lengths(
        frames in proptest::collection::vec(
            (
                // Mostly real opcodes (text, continuation, ping; FIN or not).
                prop_oneof![Just(0x01u8), Just(0x81), Just(0x80), Just(0x00), Just(0x89), any::<u8>()],
                // The payload's own length (a well-formed frame), or a
                // declared length near every boundary and near u64::MAX.
                prop_oneof![
                    3 => Just(None),
                    1 => (0..200u64).prop_map(Some),
                    1 => (65_530..65_540u64).prop_map(Some),
                    2 => ((u64::MAX - 4096)..=u64::MAX).prop_map(Some),
                    1 => any::<u64>().prop_map(Some),
                ],
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..200),
            ),
            1..6,
        )
    ) {
        let mut bytes = Vec::new();
        for (first, len, form, payload) in &frames {
            let (len, form) = match len {
                Some(n) => (*n, *form),
                // Exact: the smallest form that holds the length.
                None => (payload.len() as u64, if payload.len() < 126 { 0 } else { 1 }),
            };
            bytes.extend(frame(*first, len, form, payload));
        }
        match preauth(&bytes) {
            Ok(PreauthRead::Text(t)) => prop_assert!(t.len() <= MAX),
            Ok(PreauthRead::TooLarge(n)) => prop_assert!(n > MAX as u64),
            _ => {}
        }
    }

    #[test]
    fn request_parser_survives_any_text(s in ".{0,512}") {
        let _ = RequestFrame::parse(&s);
    }

    /// JSON-shaped input reaches deeper than random text.
    #[test]
    fn request_parser_survives_json_shapes(
        id in proptest::option::of(".{0,20}"),
        method in proptest::option::of("[a-z.]{0,20}"),
        kind in proptest::option::of(prop_oneof![Just("req".to_string()), ".{0,5}"]),
        params in prop_oneof![Just("null".to_string()), Just("{}".to_string()), Just("[1,2]".to_string()), "[0-9]{1,30}", Just("\"x\"".to_string())],
        extra in proptest::option::of("[a-z]{1,8}"),
    ) {
        let mut fields = Vec::new();
        if let Some(k) = kind { fields.push(format!("\"type\":{}", serde_json::Value::String(k))); }
        if let Some(i) = id { fields.push(format!("\"id\":{}", serde_json::Value::String(i))); }
        if let Some(m) = method { fields.push(format!("\"method\":\"{m}\"")); }
        fields.push(format!("\"params\":{params}"));
        if let Some(e) = extra { fields.push(format!("\"{e}\":1")); }
        let _ = RequestFrame::parse(&format!("{{{}}}", fields.join(",")));
    }

    #[test]
    fn config_parser_survives_any_text(s in ".{0,512}") {
        if let Ok(mut c) = Config::from_toml_str(&s, |_| None) {
            let _ = c.validate();
        }
    }

    /// Real keys with arbitrary values, including `${VAR}` references.
    #[test]
    fn config_parser_survives_real_keys(
        lines in proptest::collection::vec(
            (
                prop_oneof![
                    Just("[gateway]"), Just("[gateway.limits]"), Just("[gateway.auth]"),
                    Just("[plugins]"), Just("[channels.x]"), Just("[channels.x.accounts.a]"), Just(""),
                ],
                prop_oneof![
                    Just("port"), Just("bind"), Just("token"), Just("max_connections"),
                    Just("max_buffered_bytes"), Just("webhook_max_body_bytes"), Just("network"),
                    Just("allowed_hosts"), Just("memory_mb"), Just("enabled"), Just("state_dir"),
                ],
                prop_oneof![
                    "-?[0-9]{1,20}", Just("true".to_string()), Just("[]".to_string()),
                    "\"[a-z0-9:.${}]{0,20}\"", Just("[\"a:1\", 2]".to_string()),
                ],
            ),
            0..12,
        )
    ) {
        let text: String = lines
            .iter()
            .map(|(section, key, value)| format!("{section}\n{key} = {value}\n"))
            .collect();
        if let Ok(mut c) = Config::from_toml_str(&text, |_| Some("v".into())) {
            let _ = c.validate();
        }
    }

    /// Any proxy headers, from a trusted proxy, in each reading: an
    /// answer, never local, and an address named in them or the proxy's.
    #[test]
    fn proxy_headers_name_a_client_they_hold_or_the_proxy(
        values in proptest::collection::vec(
            (0..3usize, "[a-zA-Z0-9:.,;=\"\\[\\] _-]{0,60}"),
            0..6,
        ),
        which in 0..3usize,
    ) {
        use switchboard::gateway::forwarded::{client, parse_list};
        let names = ["x-forwarded-for", "x-real-ip", "forwarded"];
        let mut headers = axum::http::HeaderMap::new();
        for (h, v) in &values {
            if let Ok(v) = v.parse() {
                headers.append(names[*h], v);
            }
        }
        let header = [
            ClientIpHeader::XForwardedFor,
            ClientIpHeader::XRealIp,
            ClientIpHeader::Forwarded,
        ][which];
        let proxy: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let trusted = parse_list(&["127.0.0.1".into()]).unwrap();
        let c = client(proxy, &headers, &trusted, header);
        prop_assert!(!c.is_local() || headers.is_empty());
        let text: String = values.iter().map(|(_, v)| v.as_str()).collect();
        prop_assert!(
            // (IPv6 and IPv4-mapped text has many spellings.)
            c.ip == proxy || text.contains(&c.ip.to_string()) || c.ip.is_ipv6() || text.contains("::"),
            "{c:?} from {values:?}"
        );
    }
}
