//! Secrets in the configuration: which keys name one, the secrets written
//! out in a config file, an account's secret values and hiding them in
//! text, and the configuration with its secrets redacted.

use serde_json::Value;

use super::Config;

/// The dotted keys of secrets written out in `text` (strings under a key
/// that names a secret, not `${VAR}` references), at most five.
pub(super) fn literal_secrets(text: &str) -> Vec<String> {
    let Ok(v) = toml::from_str::<toml::Value>(text) else {
        return Vec::new();
    };
    let v = serde_json::to_value(v).unwrap_or_default();
    let mut out = Vec::new();
    each_secret(&v, &mut |path, x| {
        if x.as_str()
            .is_some_and(|s| !s.is_empty() && !s.trim().starts_with("${"))
        {
            out.push(dotted(path));
        }
    });
    out.sort();
    out.truncate(5);
    out
}

/// The values in an account's settings that are secrets ([`each_secret`]:
/// `token`, `sasl = { password }`, everything in `credentials = { login,
/// host }`, …), longest first. Values under 4 characters are left out:
/// hiding them would hide ordinary words.
pub fn secret_values(t: &toml::Table) -> Vec<String> {
    let v = serde_json::to_value(t).unwrap_or_default();
    let mut out = Vec::new();
    each_secret(&v, &mut |_, x| match x {
        Value::String(s) => out.push(s.clone()),
        other => out.push(other.to_string()),
    });
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

/// Does a key name a secret? One that holds `token`, `password`,
/// `passwd`, `passphrase`, `secret`, `api_key`, `apikey`, `credential` or
/// `private` (`bot_token`, `sasl_password`, `credentials`, …), or is
/// `pass`, `pwd` or `pin`, in any case.
pub(super) fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "token",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "api_key",
        "apikey",
        "credential",
        "private",
    ]
    .iter()
    .any(|s| k.contains(s))
        || ["pass", "pwd", "pin"].contains(&k.as_str())
}

/// Is the value under `key` in a table secret? It is when the key names a
/// secret, and when the table is itself under such a key (`within`) unless
/// the table names its own secrets (`names_own`): everything in
/// `credentials = { login, host }` is secret, while a scoped token's `name`
/// and `scopes` stay visible beside its `token` (and a `user` beside a
/// `pass`). The one rule for all that
/// hides, redacts or warns about secrets.
pub(super) fn secret_below(within: bool, names_own: bool, key: &str) -> bool {
    is_secret_key(key) || (within && !names_own)
}

/// Does a table with these keys name its own secrets (`names_own` of
/// [`secret_below`])?
pub(super) fn names_own<'a>(mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| is_secret_key(k))
}

/// One step of the path to a value: a table's key or an array's index.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Calls `found` with the path and the value of every secret in `v`: each
/// string and number that [`secret_below`] makes secret, at any depth.
fn each_secret<'a>(v: &'a Value, found: &mut dyn FnMut(&[Step<'a>], &'a Value)) {
    fn walk<'a>(
        v: &'a Value,
        secret: bool,
        path: &mut Vec<Step<'a>>,
        found: &mut dyn FnMut(&[Step<'a>], &'a Value),
    ) {
        match v {
            Value::String(_) | Value::Number(_) if secret => found(path, v),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk(x, secret, path, found);
                    path.pop();
                }
            }
            Value::Object(o) => {
                let own = names_own(o.keys());
                for (k, x) in o {
                    path.push(Step::Key(k));
                    walk(x, secret_below(secret, own, k), path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    walk(v, false, &mut Vec::new(), found)
}

/// `gateway.auth.tokens[0].token`.
fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `/gateway/auth/tokens/0/token` (RFC 6901).
fn pointer(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        out.push('/');
        match step {
            Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

/// The configuration as JSON with every secret ([`each_secret`]) replaced
/// by `"<redacted>"`: the auth token and password, scoped tokens, account
/// settings such as a bot token, a SASL password or all of a
/// `credentials` table. `config.get` answers it.
pub fn redacted(config: &Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    let mut at = Vec::new();
    each_secret(&v, &mut |path, _| at.push(pointer(path)));
    for p in at {
        if let Some(x) = v.pointer_mut(&p) {
            *x = Value::String("<redacted>".into());
        }
    }
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
             [channels.irc.accounts.a]\nnick = \"bot\"\nsasl = { username = \"u\", password = \"p\" }\n\
             [channels.irc.accounts.b]\ncredentials = { user = \"u\", key = \"${P}\" }\n",
        );
        assert_eq!(
            keys,
            [
                "channels.irc.accounts.a.sasl.password",
                "channels.irc.accounts.b.credentials.user",
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
             sasl = { username = \"u\", password = \"hunter22\" }\n[[upstreams]]\napi_key = \"k-0042\"\n\
             [credentials]\nuser = \"ops-bob\"\nwords = [\"w1 w2 w3\", 4321]\n\
             [[credentials.extra]]\nname = \"xname\"\ntoken = \"xtok-7\"\n",
        )
        .unwrap();
        assert_eq!(
            secret_values(&t),
            [
                "123456:ABC-def",
                "98127364",
                "hunter22",
                "w1 w2 w3",
                "ops-bob",
                "k-0042",
                "xtok-7",
                "4321"
            ]
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
        assert_eq!(
            v["gateway"]["auth"]["tokens"][0]["scopes"][0],
            "operator.read"
        );
        assert_eq!(v["channels"]["tg"]["accounts"]["a"]["chat"], "c");
    }

    #[test]
    fn everything_under_a_secret_is_redacted_but_a_table_that_names_its_own() {
        let c = Config::from_toml_str(
            "[channels.x.accounts.a]\nnick = \"bot\"\napi_key = 12345678\npin = \"4321\"\n\
             credentials = { user = \"ops-bob\", login = \"hunter22\", nested = { k = \"deep-1\" } }\n\
             login = { user = \"login-user\", pass = \"login-pw\" }\n\
             sasl = { username = \"sasl-user\", password = \"sasl-pw\" }\n\
             [[channels.x.accounts.a.secrets]]\nlabel = \"shown\"\ntoken = \"tok-9\"\n\
             [channels.x.accounts.a.\"a/b~c\"]\npassword = \"slashed\"\n",
            |_| None,
        )
        .unwrap();
        let v = redacted(&c);
        let a = &v["channels"]["x"]["accounts"]["a"];
        let text = a.to_string();
        for s in [
            "12345678", "4321", "ops-bob", "hunter22", "deep-1", "sasl-pw", "tok-9", "slashed",
            "login-pw",
        ] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(a["api_key"], "<redacted>");
        assert_eq!(a["credentials"]["user"], "<redacted>");
        assert_eq!(a["credentials"]["nested"]["k"], "<redacted>");
        assert_eq!(a["a/b~c"]["password"], "<redacted>");
        assert_eq!(a["nick"], "bot");
        assert_eq!(a["sasl"]["username"], "sasl-user");
        // These tables name their secrets themselves: the rest is not one.
        assert_eq!(a["login"]["user"], "login-user");
        assert_eq!(a["secrets"][0]["label"], "shown");
    }
}
