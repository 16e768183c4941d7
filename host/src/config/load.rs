//! Reading the configuration: the file, `${VAR}` expansion, overrides from
//! flags and the environment, validation with errors that name the key, and
//! `describe` (the effective settings `status` reports).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::secrets::{is_secret_key, literal_secrets, names_own, secret_below};
use super::*;

/// Where the configuration comes from: the file and the overrides of the
/// command line and environment. A reload reads it again the same way.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// `--config` / `SWITCHBOARD_CONFIG`; `None`: `./switchboard.toml` if present.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
    /// The file's bytes as the last [`Source::load`] read them, valid or
    /// not: the reloader compares the file with them, so an edit made while
    /// the daemon was starting (before its watcher existed) is not missed.
    pub read: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl Source {
    /// A source reading `path` (see [`Source::path`]) with `overrides`.
    pub fn new(path: Option<PathBuf>, overrides: Overrides) -> Self {
        Source {
            path,
            overrides,
            read: Default::default(),
        }
    }

    /// The bytes the last load read (`None` before any, or without a file).
    pub fn last_read(&self) -> Option<Vec<u8>> {
        crate::sync::MutexExt::guard(&*self.read).clone()
    }

    /// The file read, if any.
    pub fn file(&self) -> Option<PathBuf> {
        match &self.path {
            Some(p) => Some(p.clone()),
            None => {
                let default = Path::new("switchboard.toml");
                default.is_file().then(|| default.to_path_buf())
            }
        }
    }

    /// Reads, expands, overrides and validates. An error names the key and,
    /// when it comes from the file, its line.
    pub fn load(&self) -> Result<Config> {
        let file = self.file();
        let text =
            match &file {
                Some(p) => {
                    let again = crate::sync::MutexExt::guard(&*self.read).is_some();
                    let bytes = read_config_file(p, again)?;
                    *crate::sync::MutexExt::guard(&*self.read) = Some(bytes.clone());
                    Some(String::from_utf8(bytes).with_context(|| {
                        format!("config file {} is not UTF-8 text", p.display())
                    })?)
                }
                None => None,
            };
        let mut config = match (&file, &text) {
            (Some(p), Some(t)) => {
                let c = Config::from_toml_str(t, |k| std::env::var(k).ok())
                    .with_context(|| format!("invalid config file {}", p.display()))?;
                warn_if_secrets_are_readable(p, t);
                c
            }
            _ => Config::default(),
        };
        config.apply(&self.overrides);
        if let Err(e) = config.validate() {
            let msg = e.to_string();
            return Err(
                match (&file, text.as_deref().and_then(|t| locate(t, &msg))) {
                    (Some(p), Some(line)) => {
                        anyhow::anyhow!("invalid config file {} (line {line}): {msg}", p.display())
                    }
                    (Some(p), None) => {
                        anyhow::anyhow!("invalid config file {}: {msg}", p.display())
                    }
                    _ => e,
                },
            );
        }
        Ok(config)
    }
}

/// The largest config file read: a configuration is a few KiB, and this
/// stops a wrong path (a log, `/dev/zero`) from filling memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads the config file at `p`. At start (`again` false) it may be a pipe
/// (`--config <(…)`); read again (a reload) it must be a regular file, as
/// reading a pipe nobody writes would never end.
pub fn read_config_file(p: &Path, again: bool) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta =
        std::fs::metadata(p).with_context(|| format!("cannot read config file {}", p.display()))?;
    if again && !meta.is_file() {
        bail!(
            "config file {} is not a regular file (a pipe or a device): it was read at start, but a reload reads only a regular file; point --config at one to reload it",
            p.display()
        );
    }
    if meta.is_dir() {
        bail!(
            "config file {} is a directory; give the path of the file",
            p.display()
        );
    }
    #[cfg(unix)]
    if meta.is_file() {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        // Whoever may write it sets the credentials and the plugins loaded.
        if mode & 0o002 != 0 {
            bail!(
                "config file {} is writable by every user (mode {mode:04o}): anyone could set the gateway's credentials or the plugins it runs; `chmod o-w {}`",
                p.display(),
                p.display()
            );
        }
    }
    let file = std::fs::File::open(p)
        .with_context(|| format!("cannot read config file {}", p.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read config file {}", p.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        bail!(
            "config file {} is larger than {} MiB; is it the right file?",
            p.display(),
            MAX_CONFIG_BYTES >> 20
        );
    }
    Ok(bytes)
}

/// Warns when the config file can be read by every user and holds secrets
/// written out (not `${VAR}` references): the gateway's token and password,
/// a bot token. Not refused: the file may be shared on purpose, and it is
/// the administrator's to keep.
fn warn_if_secrets_are_readable(p: &Path, text: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_file() || mode & 0o004 == 0 {
            return;
        }
        let keys = literal_secrets(text);
        if !keys.is_empty() {
            tracing::warn!(
                "config file {} is readable by every user (mode {mode:04o}) and holds secrets written out ({}): `chmod o-r {}`, or give them as ${{VARIABLES}} from the environment",
                p.display(),
                keys.join(", "),
                p.display()
            );
        }
    }
}

/// The line (1-based) of the first dotted key `msg` names, e.g.
/// `gateway.limits.max_buffered_bytes` or `channels.irc.network`.
fn locate(text: &str, msg: &str) -> Option<usize> {
    let key = msg
        .split(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | '(' | ')' | '`'))
        .find(|w| {
            w.contains('.')
                && w.split('.').count() >= 2
                && w.split('.').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
                && w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        })?;
    let parts: Vec<&str> = key.split('.').collect();
    let mut table: Vec<String> = Vec::new();
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            let h = h.trim_start_matches('[');
            table = h
                .split('.')
                .map(|p| p.trim().trim_matches('"').to_string())
                .collect();
            if table == parts {
                header_line.get_or_insert(i + 1);
            }
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let mut full = table.clone();
        full.extend(
            k.trim()
                .split('.')
                .map(|p| p.trim().trim_matches('"').to_string()),
        );
        if full == parts {
            return Some(i + 1);
        }
    }
    header_line
}

impl Config {
    /// Loads the configuration: `path` if given (it must exist), else
    /// `./switchboard.toml` if present, else defaults; then applies `overrides`
    /// and validates the result.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config> {
        Source::new(path.map(Path::to_path_buf), overrides.clone()).load()
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text, |k| std::env::var(k).ok())
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses TOML text, expanding `${VAR}` in every string value with `env`.
    pub fn from_toml_str(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        // Checked on the text first, where an error (an unknown key, a wrong
        // type) carries its line: expansion only fills strings, so it cannot
        // make a valid file invalid or the reverse.
        if let Err(e) = toml::from_str::<Config>(text) {
            anyhow::bail!("{}", toml_error(text, &e));
        }
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", toml_error(text, &e)))?;
        expand_env(&mut value, "", false, &env)?;
        // Deserialising from the expanded Value loses line numbers but keeps the
        // key names, which is what the error needs.
        Config::deserialize(value).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(p) = o.port {
            self.gateway.port = p;
        }
        if let Some(b) = &o.bind {
            self.gateway.bind = b.clone();
        }
        if let Some(t) = &o.token {
            self.gateway.auth.token = Some(t.clone());
        }
        if let Some(p) = &o.password {
            self.gateway.auth.password = Some(p.clone());
        }
        if let Some(d) = &o.plugins_dir {
            self.plugins.dir = d.clone();
        }
        if let Some(d) = &o.state_dir {
            self.state_dir = Some(d.clone());
        }
    }

    /// Checks what serde cannot: bind address, auth when reachable beyond
    /// loopback, TLS files, limits.
    pub fn validate(&mut self) -> Result<()> {
        // Empty secrets are as good as none; treat them so.
        if self.gateway.auth.token.as_deref() == Some("") {
            self.gateway.auth.token = None;
        }
        if self.gateway.auth.password.as_deref() == Some("") {
            self.gateway.auth.password = None;
        }
        let ip = self.bind_ip()?;
        if !ip.is_loopback() && !self.has_auth() {
            bail!(
                "refusing to listen on {ip} without authentication: anyone on the network could \
                 control this gateway. Set a token with `--token`, SWITCHBOARD_TOKEN or \
                 `[gateway.auth] token = \"${{SWITCHBOARD_TOKEN}}\"` (or a password with \
                 `--password` / `[gateway.auth] password`), or bind to loopback (`--bind loopback`)"
            );
        }
        crate::gateway::forwarded::parse_list(&self.gateway.trusted_proxies)
            .map_err(anyhow::Error::msg)?;
        for (i, t) in self.gateway.auth.tokens.iter().enumerate() {
            if t.token.is_empty() {
                bail!("gateway.auth.tokens[{i}] ({}) has an empty token", t.name);
            }
            for s in &t.scopes {
                if !crate::scopes::KNOWN_SCOPES.contains(&s.as_str()) {
                    bail!(
                        "gateway.auth.tokens[{i}] ({}): unknown scope `{s}`; known scopes: {}",
                        t.name,
                        crate::scopes::KNOWN_SCOPES.join(", ")
                    );
                }
            }
            for r in &t.roles {
                if r != "operator" && r != "node" {
                    bail!(
                        "gateway.auth.tokens[{i}] ({}): unknown role `{r}`; use operator or node",
                        t.name
                    );
                }
            }
        }
        let l = &self.gateway.limits;
        if l.max_connections == 0 {
            bail!("gateway.limits.max_connections must be at least 1");
        }
        if l.send_queue_frames == 0 {
            bail!("gateway.limits.send_queue_frames must be at least 1");
        }
        if l.max_webhook_bodies == 0 || l.body_read_timeout_ms == 0 {
            bail!("gateway.limits.max_webhook_bodies and body_read_timeout_ms must be at least 1");
        }
        if l.max_buffered_bytes < 64 * 1024 {
            bail!("gateway.limits.max_buffered_bytes must be at least 65536");
        }
        if l.max_reply_bytes_total < l.max_buffered_bytes {
            bail!(
                "gateway.limits.max_reply_bytes_total ({}) must be at least gateway.limits.max_buffered_bytes ({}): one connection may hold that much",
                l.max_reply_bytes_total,
                l.max_buffered_bytes
            );
        }
        if l.max_inflight_requests == 0 {
            bail!("gateway.limits.max_inflight_requests must be at least 1");
        }
        if l.preauth_max_frame_bytes < 1024 {
            bail!("gateway.limits.preauth_max_frame_bytes must be at least 1024");
        }
        if l.max_payload_bytes < l.preauth_max_frame_bytes {
            bail!("gateway.limits.max_payload_bytes must be at least preauth_max_frame_bytes");
        }
        if self.gateway.presence.max_entries == 0 || self.gateway.presence.ttl_ms < 1000 {
            bail!("gateway.presence.max_entries must be at least 1 and gateway.presence.ttl_ms at least 1000");
        }
        if self.gateway.tick_interval_ms == 0 {
            bail!("gateway.tick_interval_ms must be at least 1");
        }
        // One entry of the largest size must fit.
        let kv_min = (crate::plugins::imports::MAX_KEY_BYTES
            + crate::plugins::imports::MAX_VALUE_BYTES) as u64
            + crate::store::sqlite::KV_ENTRY_OVERHEAD;
        if self.store.kv_max_bytes < kv_min {
            bail!(
                "store.kv_max_bytes must be at least {kv_min} (one entry of the largest key and value); it is {}",
                self.store.kv_max_bytes
            );
        }
        let (ping, idle) = (self.gateway.ping_interval_ms, self.gateway.idle_timeout_ms);
        if ping < 100 {
            bail!("gateway.ping_interval_ms must be at least 100 (it is {ping})");
        }
        if idle <= ping {
            bail!(
                "gateway.idle_timeout_ms ({idle}) must be more than gateway.ping_interval_ms ({ping}): \
                 a client needs time to answer a ping (the defaults are 90000 and 30000)"
            );
        }
        for (name, ch) in &self.channels {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                bail!(
                    "channels.{name}: a channel name is 1-64 characters of [A-Za-z0-9_-] \
                     (it is used in URLs and on disk); rename the table"
                );
            }
            if ch.webhook_max_body_bytes == 0 {
                bail!("channels.{name}.webhook_max_body_bytes must be at least 1");
            }
            if let Some(net) = &ch.network {
                for n in net {
                    crate::plugins::parse_host_port(n)
                        .map_err(|e| anyhow::anyhow!("channels.{name}.network: {e}"))?;
                }
            }
            if let Some(p) = &ch.tls_ca {
                crate::plugins::tls_client::read_pem_certs(p)
                    .map_err(|e| anyhow::anyhow!("channels.{name}.tls_ca: {e}"))?;
            }
            for (id, acct) in &ch.accounts {
                if let Some(v) = acct.get("enabled") {
                    if !v.is_bool() {
                        bail!("channels.{name}.accounts.{id}.enabled must be true or false");
                    }
                }
            }
        }
        if self.plugins.max_concurrent_calls == 0 {
            bail!("plugins.max_concurrent_calls must be at least 1");
        }
        if self.plugins.max_sockets == 0 {
            bail!("plugins.max_sockets must be at least 1");
        }
        if self.plugins.memory_mb == 0 || self.plugins.call_timeout_ms == 0 {
            bail!("plugins.memory_mb and plugins.call_timeout_ms must be at least 1");
        }
        if self.gateway.health_check_interval_ms == 0 {
            bail!("gateway.health_check_interval_ms must be at least 1");
        }
        Ok(())
    }

    pub fn has_auth(&self) -> bool {
        self.gateway.auth.token.is_some()
            || self.gateway.auth.password.is_some()
            || !self.gateway.auth.tokens.is_empty()
    }

    pub fn bind_ip(&self) -> Result<IpAddr> {
        match self.gateway.bind.as_str() {
            "loopback" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "lan" => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            other => other.parse().with_context(|| {
                format!("gateway.bind: `{other}` is not `loopback`, `lan` or an IP address")
            }),
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr> {
        Ok(SocketAddr::new(self.bind_ip()?, self.gateway.port))
    }

    /// The state directory (see `state_dir`).
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("switchboard");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".local/state/switchboard"),
            None => PathBuf::from(".switchboard-state"),
        }
    }

    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.gateway.tick_interval_ms)
    }
}

/// A TOML error as the log, the CLI and `health` show it: TOML's own text
/// (the line, a caret under the fault, the message), unless the line may
/// hold a secret's value: it names a secret (`password`, `token`, … —
/// anywhere, so `sasl = { password = … }` counts), or it is a line of a
/// value written over several. Then the line is not shown and whatever the
/// message quotes is left out: `health` is answered to every
/// `operator.read` client, and a log may be shipped elsewhere, while an
/// error on such a line (`password = 123456`, a missing quote) would quote
/// the secret.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return e.to_string();
    };
    let at = (0..=at)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].split('\n').next().unwrap_or_default();
    let t = line.trim_start();
    // The table the line is in: everything in `[….credentials]` is a
    // secret, as under a `credentials = { … }` key.
    let table = text[..line_start]
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .unwrap_or_default();
    let shown = if let Some((key, _)) = line.split_once('=') {
        // The whole line (`sasl = { password = … }`), and the key alone
        // (`pin = 1234`, whose name is a secret only as a whole word).
        let last = key.trim().rsplit('.').next().unwrap_or_default();
        !is_secret_key(line)
            && !is_secret_key(last.trim().trim_matches(['"', '\'']))
            && !is_secret_key(table)
    } else {
        // A table header, a comment or a blank line holds no value; any
        // other line without `=` is part of a value that began above.
        t.is_empty() || t.starts_with(['[', '#'])
    };
    if shown {
        return e.to_string();
    }
    let line_no = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..at].chars().count() + 1;
    // What the message quotes (`…`) may be the value.
    let mut message = String::new();
    for (i, part) in e.message().split('`').enumerate() {
        message.push_str(if i % 2 == 1 { "`…`" } else { part });
    }
    format!(
        "TOML parse error at line {line_no}, column {column} (the line is not shown: it may hold a secret)\n{message}"
    )
}

/// Expands `${VAR}` in every string of `value`; `$${` stands for a literal
/// `${`. Under a secret (`secret`, see `secret_below`), an error does not
/// quote the string.
fn expand_env(
    value: &mut toml::Value,
    path: &str,
    secret: bool,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<()> {
    match value {
        toml::Value::String(s) => {
            *s = expand_str(s, secret, env).with_context(|| format!("in `{path}`"))?;
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_env(v, &format!("{path}[{i}]"), secret, env)?;
            }
        }
        toml::Value::Table(t) => {
            let own = names_own(t.keys());
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand_env(v, &p, secret_below(secret, own, k), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, secret: bool, env: &impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(stripped) = after.strip_prefix("${") {
            let end = stripped.find('}').with_context(|| {
                if secret {
                    "unterminated `${` (write `$${` for a literal `${`)".to_string()
                } else {
                    format!("unterminated `${{` in \"{s}\"")
                }
            })?;
            let name = &stripped[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                if secret {
                    bail!("a `${{…}}` reference holds more than letters, digits and `_` (write `$${{` for a literal `${{`)");
                }
                bail!("`${{{name}}}` is not a valid environment variable reference");
            }
            let v = env(name).with_context(|| {
                format!("environment variable {name} is not set (referenced as `${{{name}}}`)")
            })?;
            out.push_str(&v);
            rest = &stripped[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// What `status` shows of the gateway's settings.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Described<'a> {
    pub bind: &'a str,
    pub port: u16,
    pub tls: bool,
    /// `token`, `password`, `token+password`, `scoped-tokens` or `none`.
    pub auth: &'static str,
    #[serde(serialize_with = "lossy_path")]
    pub plugins_dir: &'a std::path::Path,
}

/// A path as text, whatever bytes it holds (as `Path::display` shows it).
pub fn lossy_path<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

/// What `status` shows of the gateway's settings.
pub fn describe(config: &Config) -> Described<'_> {
    let auth = &config.gateway.auth;
    Described {
        bind: &config.gateway.bind,
        port: config.gateway.port,
        tls: config.gateway.tls.is_some(),
        auth: match (auth.token.is_some(), auth.password.is_some()) {
            (true, true) => "token+password",
            (true, false) => "token",
            (false, true) => "password",
            (false, false) if !auth.tokens.is_empty() => "scoped-tokens",
            _ => "none",
        },
        plugins_dir: &config.plugins.dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "TOK" => Some("s3cret".into()),
            _ => None,
        }
    }

    #[test]
    fn config_files_are_read_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "[gateway]\nport = 1\n").unwrap();
        assert_eq!(
            read_config_file(&ok, true).unwrap(),
            b"[gateway]\nport = 1\n"
        );
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = format!("{:#}", read_config_file(&big, false).unwrap_err());
        assert!(e.contains("larger than 4 MiB"), "{e}");
        let e = format!("{:#}", read_config_file(dir.path(), false).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        // A device is read at start, never again.
        let dev = Path::new("/dev/null");
        assert!(read_config_file(dev, false).unwrap().is_empty());
        let e = format!("{:#}", read_config_file(dev, true).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn expands_variables_and_escapes() {
        let c = Config::from_toml_str(
            "[gateway.auth]\ntoken = \"${TOK}\"\npassword = \"a$${b}c$d\"\n",
            env,
        )
        .unwrap();
        assert_eq!(c.gateway.auth.token.as_deref(), Some("s3cret"));
        assert_eq!(c.gateway.auth.password.as_deref(), Some("a${b}c$d"));
    }

    #[test]
    fn missing_variable_names_it_and_the_key() {
        let e = Config::from_toml_str("[gateway.auth]\ntoken = \"${NOPE}\"\n", env).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("NOPE"), "{msg}");
        assert!(msg.contains("gateway.auth.token"), "{msg}");
    }

    #[test]
    fn an_unusable_tls_ca_is_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "nothing here").unwrap();
        let text = format!("[channels.irc]\ntls_ca = \"{}\"\n", ca.display());
        let e = Config::from_toml_str(&text, |_| None)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("channels.irc.tls_ca: ") && e.contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[gateway]\nport = 1\n\n[gateway.limits]\nmax_buffered_bytes = 10\n",
        )
        .unwrap();
        let src = Source::new(Some(p.clone()), Overrides::default());
        let e = format!("{:#}", src.load().unwrap_err());
        assert!(
            e.contains("(line 5)") && e.contains("gateway.limits.max_buffered_bytes"),
            "{e}"
        );
        std::fs::write(&p, "[gateway]\nport = 1\nbogus = 2\n").unwrap();
        let e = format!("{:#}", src.load().unwrap_err());
        assert!(e.contains("line 3") && e.contains("bogus"), "{e}");
        // The total for all connections holds at least one connection's.
        std::fs::write(
            &p,
            "[gateway.limits]\nmax_buffered_bytes = 1048576\nmax_reply_bytes_total = 65536\n",
        )
        .unwrap();
        let e = format!("{:#}", src.load().unwrap_err());
        assert!(
            e.contains("max_reply_bytes_total (65536) must be at least gateway.limits.max_buffered_bytes (1048576)"),
            "{e}"
        );
    }

    #[test]
    fn an_error_on_a_line_that_may_hold_a_secret_does_not_show_it() {
        let err = |text: &str| format!("{:#}", Config::from_toml_str(text, |_| None).unwrap_err());
        for (text, secret, line) in [
            ("[gateway.auth]\npassword = 98127364\n", "98127364", 2),
            ("[gateway.auth]\ntoken = \"s3cr3t\n", "s3cr3t", 2),
            (
                "[channels.x.accounts.a]\nsasl = { user = \"u\", password = \"pw9 }\n",
                "pw9",
                2,
            ),
            // A key that names a secret only as a whole word.
            ("[channels.x.accounts.a]\npin = 98x1\n", "98x1", 2),
            (
                "[channels.x.accounts.a]\nlogin.\"pass\" = 98x2\n",
                "98x2",
                2,
            ),
            // A line in a table under a secret key.
            (
                "[channels.x.accounts.a.credentials]\nhost = \"h\"\nlogin = 98x3\n",
                "98x3",
                3,
            ),
            // A line of a value written over several lines.
            (
                "[gateway]\nallowed_origins = [\n  \"https://a\",\n  s3cr3t\n]\n",
                "s3cr3t",
                4,
            ),
        ] {
            let e = err(text);
            assert!(!e.contains(secret), "{text:?}: {e}");
            assert!(
                e.contains(&format!("line {line}, column")) && e.contains("the line is not shown"),
                "{text:?}: {e}"
            );
        }
        // Any other line is shown as TOML shows it.
        let e = err("[gateway]\nprot = 1\n");
        assert!(
            e.contains("2 | prot = 1") && e.contains("unknown field `prot`"),
            "{e}"
        );
        let e = err("[gateway]\nbind = \"${NOPE\"\n");
        assert!(e.contains("unterminated `${` in \"${NOPE\""), "{e}");
        // Under a secret key, everything is a secret.
        let e = err("[channels.x.accounts.a]\ncredentials = { user = \"u-${NOPE\" }\n");
        assert!(e.contains("unterminated `${`") && !e.contains("u-$"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_config_file_every_user_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("switchboard.toml");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = format!("{:#}", read_config_file(&p, false).unwrap_err());
        assert!(
            e.contains("is writable by every user (mode 0666)") && e.contains("chmod o-w"),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
        read_config_file(&p, false).unwrap();
    }

    #[test]
    fn client_ip_header_takes_the_three_headers_in_either_spelling() {
        use crate::config::ClientIpHeader;
        let of = |v: &str| {
            Config::from_toml_str(&format!("[gateway]\nclient_ip_header = \"{v}\"\n"), env)
                .map(|c| c.gateway.client_ip_header)
        };
        assert_eq!(
            Config::default().gateway.client_ip_header,
            ClientIpHeader::XForwardedFor
        );
        assert_eq!(of("x-real-ip").unwrap(), ClientIpHeader::XRealIp);
        assert_eq!(of("X-Real-IP").unwrap(), ClientIpHeader::XRealIp);
        assert_eq!(of("forwarded").unwrap(), ClientIpHeader::Forwarded);
        let e = format!("{:#}", of("x-client-ip").unwrap_err());
        assert!(
            e.contains("client_ip_header")
                && e.contains("x-forwarded-for")
                && e.contains("x-real-ip"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("[gateway]\nprot = 1\n", env).unwrap_err();
        assert!(format!("{e:#}").contains("prot"), "{e:#}");
    }

    #[test]
    fn lan_without_auth_is_refused() {
        let mut c = Config::default();
        c.gateway.bind = "lan".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--token"), "{e}");
        c.gateway.auth.token = Some("x".into());
        c.validate().unwrap();
    }

    #[test]
    fn bad_bind_is_explained() {
        let mut c = Config::default();
        c.gateway.bind = "everywhere".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gateway.bind"));
    }

    #[test]
    fn a_kv_bound_below_one_entry_is_refused() {
        let mut c = Config::default();
        c.store.kv_max_bytes = 1_049_151;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("store.kv_max_bytes must be at least 1049152"),
            "{e}"
        );
        c.store.kv_max_bytes = 1_049_152;
        c.validate().unwrap();
    }

    #[test]
    fn no_sockets_for_plugins_is_refused() {
        let mut c = Config::default();
        c.plugins.max_sockets = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("plugins.max_sockets must be at least 1"), "{e}");
    }
}
