//! TLS client connections for plugins (`switchboard:channel/tls`, contract
//! 0.2): the host checks the destination against the channel's grants, opens
//! the TCP connection, runs the rustls handshake and hands the plugin two
//! `wasi:io` streams over the plain text.
//!
//! Trust: the system's root certificates (`SSL_CERT_FILE`, else Debian's and
//! Red Hat's bundle paths; Mozilla's roots from `webpki-roots` when none is
//! found), plus the channel's `tls_ca` PEM file when one is configured. A
//! [`Trust`] is built once per channel configuration (at start and at each
//! reload that changes the channel), not per connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::sandbox::Grants;

/// Bound on the TCP connect, and again on the TLS handshake.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a `tls_ca` came from and the client configuration it gives; or
/// why it could not be read (then every connection of the channel fails,
/// closed, with that reason: trust is never silently narrowed or widened).
#[derive(Clone)]
pub struct Trust(Arc<Result<Built, String>>);

struct Built {
    config: Arc<rustls::ClientConfig>,
    /// The operator's CA file, for error messages.
    ca: Option<PathBuf>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Ok(b) => write!(f, "Trust(system roots, ca: {:?})", b.ca),
            Err(e) => write!(f, "Trust(unusable: {e})"),
        }
    }
}

impl Default for Trust {
    /// The system roots alone.
    fn default() -> Self {
        static SYSTEM: OnceLock<Trust> = OnceLock::new();
        SYSTEM.get_or_init(|| Trust::new(None)).clone()
    }
}

/// The system's root certificates, read once.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            let candidates = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .into_iter()
                .chain(
                    [
                        "/etc/ssl/certs/ca-certificates.crt",
                        "/etc/pki/tls/certs/ca-bundle.crt",
                        "/etc/ssl/cert.pem",
                    ]
                    .map(PathBuf::from),
                );
            for p in candidates {
                if let Ok(certs) = read_pem_certs(&p) {
                    let (added, _) = store.add_parsable_certificates(certs);
                    if added > 0 {
                        tracing::debug!(file = %p.display(), roots = added, "plugin TLS: system roots");
                        return Arc::new(store);
                    }
                }
            }
            tracing::info!("plugin TLS: no system root bundle found; using Mozilla's roots (webpki-roots)");
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(store)
        })
        .clone()
}

/// Largest PEM file read (a certificate, its key, a CA bundle: a whole
/// system bundle is about 200 KiB).
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// Reads a PEM file the configuration names: a regular file (a symlink to
/// one is fine) of at most [`MAX_PEM_BYTES`]. It is opened without blocking
/// and checked once open, so a pipe or a device in its place is refused
/// rather than waited on for ever.
pub fn read_pem_file(p: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (a directory, a pipe or a device); give the path of a PEM file",
            p.display()
        ));
    }
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{} is larger than {} MiB: not a PEM file of certificates or a key; is it the right file?",
            p.display(),
            MAX_PEM_BYTES >> 20
        ));
    }
    Ok(pem)
}

/// The certificates of a PEM file; an error names the file and what is wrong.
pub fn read_pem_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file(p)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)",
            p.display()
        ));
    }
    Ok(certs)
}

impl Trust {
    /// The system roots plus the certificates of `ca`, if given.
    pub fn new(ca: Option<&Path>) -> Trust {
        Trust(Arc::new(Self::build(ca)))
    }

    fn build(ca: Option<&Path>) -> Result<Built, String> {
        let mut roots = (*system_roots()).clone();
        if let Some(p) = ca {
            let certs = read_pem_certs(p)?;
            let (added, bad) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "{}: none of its {bad} certificates is a usable CA certificate",
                    p.display()
                ));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Built {
            config: Arc::new(config),
            ca: ca.map(Path::to_path_buf),
        })
    }

    /// Opens `host:port` for a plugin of the channel these grants belong to:
    /// grants checked by name (the name is what the certificate is checked
    /// against), TCP connect, TLS handshake. The error is for the plugin
    /// and the operator: it names the host and what to change.
    pub async fn connect(
        &self,
        log: &super::logs::PluginLog,
        grants: &Grants,
        host: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, String> {
        let dest = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if !grants.allows_name(host, port) {
            grants.deny(log, "TLS connection", &dest);
            return Err(format!(
                "TLS connection to {dest} denied: {}",
                grants.how_to_allow(&dest)
            ));
        }
        grants.reached_out();
        let built = self.0.as_ref().as_ref().map_err(|e| {
            format!("TLS connection to {dest} not attempted: the channel's tls_ca is unusable: {e}")
        })?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| {
                format!("TLS connection to {dest}: `{host}` is not a host name or IP address")
            })?
            .to_owned();
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| {
                format!(
                    "TLS connection to {dest}: no TCP connection within {}s",
                    STEP_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("TLS connection to {dest}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(built.config.clone());
        let tls = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| {
                format!(
                    "TLS connection to {dest}: no TLS handshake within {}s (is it a TLS port?)",
                    STEP_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| handshake_error(&dest, host, &grants.channel, built.ca.as_deref(), &e))?;
        super::logs::plugin_event!(log, tracing::Level::DEBUG, destination = %dest, "plugin TLS connection established");
        Ok(tls)
    }
}

/// A failed handshake, in words that say what to do about it.
fn handshake_error(
    dest: &str,
    host: &str,
    channel: &str,
    ca: Option<&Path>,
    e: &std::io::Error,
) -> String {
    let cert = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(c) => Some(c.clone()),
            _ => None,
        });
    match cert {
        Some(c) => {
            let trust = match ca {
                Some(p) => format!("the system roots or {}", p.display()),
                None => "the system roots".to_string(),
            };
            let fix = match (&c, ca) {
                (rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }, _) => format!(
                    "connect with the name the certificate was issued for, or give the server a certificate for `{host}`"
                ),
                (_, None) => format!("if the server uses a private or self-signed CA, set `tls_ca` in [channels.{channel}] to its PEM file"),
                (_, Some(_)) => format!("check that `tls_ca` in [channels.{channel}] is the CA that signed the server's certificate"),
            };
            format!("TLS connection to {dest}: the server's certificate for `{host}` is not trusted ({c:?}; checked against {trust}): {fix}")
        }
        None => format!("TLS connection to {dest}: handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_not_pem_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = read_pem_certs(&p).unwrap_err();
        assert!(e.contains("ca.pem") && e.contains("no certificate"), "{e}");
        let e = read_pem_certs(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        // A channel whose CA file is unusable connects nowhere (fails closed).
        let t = Trust::new(Some(&p));
        assert!(format!("{t:?}").contains("unusable"));
        // A directory is named as one, not read.
        let e = read_pem_certs(dir.path()).unwrap_err();
        assert!(e.contains("is not a regular file"), "{e}");
        // A pipe nobody writes is refused at once, not waited on.
        let fifo = dir.path().join("ca.fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()));
        let e = read_pem_certs(&fifo).unwrap_err();
        assert!(
            e.contains("ca.fifo") && e.contains("is not a regular file"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_ungranted_destination_is_refused_before_connecting() {
        let grants = Grants::new(
            "irc",
            super::super::Network::parse(&["h:1".into()]),
            Trust::default(),
            Default::default(),
        );
        let e = Trust::default()
            .connect(
                &crate::plugins::logs::PluginLog::new("irc", 0, None),
                &grants,
                "127.0.0.1",
                9,
            )
            .await
            .unwrap_err();
        assert!(
            e.contains("denied") && e.contains("[channels.irc]") && e.contains("127.0.0.1:9"),
            "{e}"
        );
        assert_eq!(grants.denied().as_deref(), Some("127.0.0.1:9"));
    }
}
