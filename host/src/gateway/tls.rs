//! TLS for the gateway's port: the server certificate and key, and an
//! optional client CA (`[gateway.tls] ca`: every client must then present a
//! certificate it signed, or the TLS handshake fails). The files are
//! re-read when they change (polled: an ACME client renames or re-links
//! them, which directory watchers see unreliably), and on `SIGHUP`; a set
//! of files that does not load keeps the running one and says why in the
//! log. Each connection takes the acceptor current when it arrives.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::sync::{MutexExt, RwLockExt};

/// How often the files are checked for a change.
pub const TLS_POLL: Duration = Duration::from_secs(1);

/// The gateway's TLS: the current acceptor and the files it came from.
pub struct Tls {
    files: TlsConfig,
    current: RwLock<TlsAcceptor>,
    /// What the files looked like when they were last loaded.
    stamps: Mutex<Vec<Stamp>>,
}

/// A file's identity for change detection (size, modification time, inode).
type Stamp = Option<(u64, SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

impl Tls {
    /// Loads the files of `[gateway.tls]`; the error names the key and file.
    pub fn load(files: &TlsConfig) -> Result<Self> {
        let stamps = Self::stamps_of(files);
        let acceptor = build(files)?;
        Ok(Self {
            files: files.clone(),
            current: RwLock::new(acceptor),
            stamps: Mutex::new(stamps),
        })
    }

    fn stamps_of(files: &TlsConfig) -> Vec<Stamp> {
        let mut v = vec![stamp(&files.cert), stamp(&files.key)];
        if let Some(ca) = &files.ca {
            v.push(stamp(ca));
        }
        v
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.reader().clone()
    }

    /// Re-reads the files if they changed since they were loaded (or
    /// always, with `force`). `Ok(true)`: a new certificate is in use.
    pub fn reload(&self, force: bool) -> Result<bool> {
        let now = Self::stamps_of(&self.files);
        {
            let mut seen = self.stamps.guard();
            if !force && *seen == now {
                return Ok(false);
            }
            // Whatever the outcome, this state of the files is handled:
            // a broken file is reported once, not every second.
            *seen = now;
        }
        *self.current.writer() = build(&self.files)?;
        Ok(true)
    }
}

/// Warns when the private key can be read by every user: whoever reads
/// it can pose as the gateway. Not refused (a certificate tool may have
/// written it so, and stopping would take the gateway down).
fn warn_if_readable_by_all(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(key) {
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            tracing::warn!(
                "gateway.tls.key: {} is readable by every user (mode {mode:04o}): whoever reads it can pose as this gateway; `chmod o-r {}`",
                key.display(),
                key.display()
            );
        }
    }
}

/// Polls the files every [`TLS_POLL`] and swaps in what changed.
pub async fn run_tls_reloader(tls: Arc<Tls>) {
    let mut every = tokio::time::interval(TLS_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        reload_logged(&tls, false, "files changed").await;
    }
}

/// Re-reads the files off the async runtime (all of them with `force`,
/// else only when they changed) and logs the outcome.
pub async fn reload_logged(tls: &Arc<Tls>, force: bool, trigger: &str) {
    let t = tls.clone();
    match tokio::task::spawn_blocking(move || t.reload(force)).await {
        Ok(Ok(true)) => tracing::info!(
            cert = %tls.files.cert.display(),
            trigger,
            "TLS certificate reloaded: new connections use it"
        ),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::error!(
            trigger,
            "TLS files do not load; the previous certificate stays in use: {e:#}"
        ),
        Err(e) => tracing::error!("TLS reload task failed: {e}"),
    }
}

fn read(key: &str, p: &Path) -> Result<Vec<u8>> {
    crate::plugins::tls_client::read_pem_file(p)
        .map_err(|e| anyhow::anyhow!("gateway.tls.{key}: {e}"))
}

fn build(files: &TlsConfig) -> Result<TlsAcceptor> {
    let cert_pem = read("cert", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    warn_if_readable_by_all(&files.key);
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("gateway.tls.cert: {} is not PEM", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "gateway.tls.cert: {} holds no certificate",
            files.cert.display()
        );
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("gateway.tls.key: {} is not PEM", files.key.display()))?
        .with_context(|| {
            format!(
                "gateway.tls.key: {} holds no private key",
                files.key.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = read("ca", ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c =
                    c.with_context(|| format!("gateway.tls.ca: {} is not PEM", ca.display()))?;
                roots.add(c).with_context(|| {
                    format!(
                        "gateway.tls.ca: {} holds a certificate that is not a usable CA",
                        ca.display()
                    )
                })?;
            }
            if roots.is_empty() {
                anyhow::bail!("gateway.tls.ca: {} holds no certificate", ca.display());
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .with_context(|| format!("gateway.tls.ca: {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder
        .with_single_cert(certs, key)
        .context("gateway.tls: certificate and key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
