//! Secrets in the configuration: which keys name one, the secrets written
//! out in a config file, an account's secret values and hiding them in
//! text, and the configuration with its secrets redacted.

use super::Config;

/// The dotted keys of secrets written out in `text` (strings under a key
/// that names a secret, not `${VAR}` references), at most five.
pub(super) fn literal_secrets(text: &str) -> Vec<String> {
    fn walk(v: &toml::Value, path: &str, secret: bool, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) if secret && !s.trim().starts_with("${") && !s.is_empty() => {
                out.push(path.to_string())
            }
            toml::Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    walk(x, &format!("{path}[{i}]"), secret, out);
                }
            }
            toml::Value::Table(t) => {
                for (k, x) in t {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x, &p, is_secret_key(k), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = toml::from_str::<toml::Value>(text) {
        walk(&v, "", false, &mut out);
    }
    out.truncate(5);
    out
}

/// The values in an account's settings that are secrets: every string and
/// number under a key that names one (`token`, `sasl = { password }`, …),
/// longest first. Values under 4 characters are left out: hiding them would
/// hide ordinary words.
pub fn secret_values(t: &toml::Table) -> Vec<String> {
    fn all(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) => out.push(s.clone()),
            toml::Value::Integer(i) => out.push(i.to_string()),
            toml::Value::Array(a) => a.iter().for_each(|x| all(x, out)),
            toml::Value::Table(t) => t.values().for_each(|x| all(x, out)),
            _ => {}
        }
    }
    fn walk(t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            match v {
                _ if is_secret_key(k) => all(v, out),
                toml::Value::Table(inner) => walk(inner, out),
                toml::Value::Array(a) => {
                    for x in a {
                        if let toml::Value::Table(inner) = x {
                            walk(inner, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(t, &mut out);
    out.retain(|s| s.chars().count() >= 4);
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// `text` with each of `secrets` replaced by `<redacted>` (not copied when
/// it holds none): what a plugin says about an account (an error, a state
/// detail) is shown to every `operator.read` client, and a plugin may quote
/// its settings by mistake (a URL with its token, a settings dump).
pub fn hide_secrets(text: String, secrets: &[String]) -> String {
    match hide_secrets_in(&text, secrets) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(hidden) => hidden,
    }
}

/// [`hide_secrets`] of a borrowed text.
pub fn hide_secrets_in<'a>(text: &'a str, secrets: &[String]) -> std::borrow::Cow<'a, str> {
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut hidden = text.to_string();
    for s in secrets {
        if hidden.contains(s.as_str()) {
            hidden = hidden.replace(s.as_str(), "<redacted>");
        }
    }
    std::borrow::Cow::Owned(hidden)
}

/// Does a key name a secret? (`token`, `password`, `sasl_password`,
/// `secret_token`, `api_key`, …)
pub(super) fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "token",
        "password",
        "passwd",
        "secret",
        "api_key",
        "apikey",
        "credential",
        "private",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The configuration as JSON with every secret replaced by `"<redacted>"`:
/// each string under a key that names a secret, at any depth (the auth
/// token and password, scoped tokens, account settings such as a bot
/// token or a SASL password). `config.get` answers it.
pub fn redacted(config: &Config) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value, secret: bool) {
        match v {
            serde_json::Value::String(s) if secret => *s = "<redacted>".into(),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, secret)),
            serde_json::Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    walk(x, is_secret_key(k));
                }
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(config).unwrap_or_default();
    walk(&mut v, false);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_written_out_are_found_and_references_are_not() {
        let keys = literal_secrets(
            "[gateway.auth]\ntoken = \"t0k\"\npassword = \"${PW}\"\n\
             [[gateway.auth.tokens]]\nname = \"ro\"\ntoken = \"s2\"\n\
             [channels.irc.accounts.a]\nnick = \"bot\"\nsasl = { username = \"u\", password = \"p\" }\n",
        );
        assert_eq!(
            keys,
            [
                "channels.irc.accounts.a.sasl.password",
                "gateway.auth.token",
                "gateway.auth.tokens[0].token"
            ]
        );
        assert!(literal_secrets("[gateway.auth]\ntoken = \"${T}\"\n").is_empty());
    }

    #[test]
    fn an_account_s_secret_values_are_found_and_hidden() {
        let t: toml::Table = toml::from_str(
            "token = \"123456:ABC-def\"\nnick = \"bot\"\npassword = 98127364\npin = \"abc\"\n\
             sasl = { username = \"u\", password = \"hunter22\" }\n[[upstreams]]\napi_key = \"k-0042\"\n",
        )
        .unwrap();
        assert_eq!(
            secret_values(&t),
            ["123456:ABC-def", "98127364", "hunter22", "k-0042"]
        );
        let s = secret_values(&t);
        assert_eq!(
            hide_secrets("GET /bot123456:ABC-def/getMe: 401 (pw 98127364)".into(), &s),
            "GET /bot<redacted>/getMe: 401 (pw <redacted>)"
        );
        assert_eq!(hide_secrets("bot and abc".into(), &s), "bot and abc");
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let c = Config::from_toml_str(
            "[gateway.auth]\ntoken = \"s1\"\n[[gateway.auth.tokens]]\nname = \"ro\"\ntoken = \"s2\"\nscopes = [\"operator.read\"]\n\
             [channels.tg.accounts.a]\nbot_token = \"s3\"\nsasl_password = \"s4\"\nchat = \"c\"\n",
            |_| None,
        )
        .unwrap();
        let v = redacted(&c);
        let text = v.to_string();
        for s in ["s1", "s2", "s3", "s4"] {
            assert!(!text.contains(&format!("\"{s}\"")), "{s} in {text}");
        }
        assert_eq!(v["gateway"]["auth"]["tokens"][0]["name"], "ro");
        assert_eq!(v["channels"]["tg"]["accounts"]["a"]["chat"], "c");
    }
}
