//! TLS on the gateway's port: client certificates (`[gateway.tls] ca`:
//! with, without, and from another CA) and certificates rotated on disk
//! while the daemon runs (seen by the next connection; a broken set of
//! files keeps the running certificate). Certificates are generated here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::json;
use switchboard_tests::*;

/// A CA that signs server and client certificates.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key, PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    fn sign(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        let cert = p.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

fn client_config(trust: &[CertificateDer<'static>], me: Option<&Leaf>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in trust {
        roots.add(c.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match me {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key_der.clone())),
            )
            .unwrap(),
    }
}

/// Opens a WebSocket over TLS and completes `connect`.
async fn wss_connect(d: &Daemon, cfg: rustls::ClientConfig) -> anyhow::Result<Client> {
    let url = format!("wss://localhost:{}", d.addr.port());
    let tcp = tokio::net::TcpStream::connect(d.addr).await?;
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        url.as_str(),
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(cfg))),
    )
    .await?;
    let mut c = Client::after_upgrade(ws).await?;
    let res = c
        .request("c1", "connect", connect_params(None, &["operator.read"]))
        .await?;
    anyhow::ensure!(res["ok"] == true, "connect: {res}");
    Ok(c)
}

/// The certificate the server presents to a new TLS connection.
async fn served_cert(d: &Daemon, trust: &[CertificateDer<'static>]) -> CertificateDer<'static> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(trust, None)));
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let s = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    // As an ACME client does: write aside, then rename over the old file.
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

#[tokio::test]
async fn a_client_ca_admits_its_certificates_and_refuses_the_rest() {
    let (ca, other) = (Ca::new("clients"), Ca::new("someone else"));
    let server_ca = Ca::new("server");
    let server = server_ca.sign("localhost");
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &server.cert_pem);
    let key = write(dir.path(), "key.pem", &server.key_pem);
    // Readable by everyone, as a umask of 022 leaves it: said at load.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            cert.display(),
            key.display(),
            ca_file.display()
        ))
        .start()
        .unwrap();
    let trust = [server_ca.der()];

    // Signed by the configured CA: in, and served.
    let good = ca.sign("operator-laptop");
    let mut c = wss_connect(&d, client_config(&trust, Some(&good)))
        .await
        .unwrap();
    assert_eq!(
        c.request("h", "health", json!({})).await.unwrap()["ok"],
        true
    );

    // No certificate, or one from another CA: the TLS handshake fails.
    let none = wss_connect(&d, client_config(&trust, None)).await;
    assert!(none.is_err(), "a client without a certificate got in");
    let foreign = other.sign("intruder");
    let bad = wss_connect(&d, client_config(&trust, Some(&foreign))).await;
    assert!(bad.is_err(), "a certificate of another CA got in");
    let line = d
        .wait_log("refused TLS handshake", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(line.contains("certificate"), "{line}");
    // Plain HTTP does not get in either.
    assert!(reqwest::get(d.http("/health")).await.is_err());
    // The key is readable by everyone: said, by name.
    d.wait_log(
        &format!(
            "gateway.tls.key: {} is readable by every user (mode 0644)",
            key.display()
        ),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_the_next_connection() {
    let ca = Ca::new("server");
    let (first, second) = (ca.sign("localhost"), ca.sign("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &first.cert_pem);
    let key = write(dir.path(), "key.pem", &first.key_pem);
    let d = Daemon::builder()
        .config(&format!(
            "[gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .start()
        .unwrap();
    let trust = [ca.der()];
    assert_eq!(served_cert(&d, &trust).await, first.der);
    let mut open = wss_connect(&d, client_config(&trust, None)).await.unwrap();

    // Broken files: the running certificate stays, and the log says why.
    write(dir.path(), "cert.pem", "not a certificate");
    d.wait_log(
        "do not load; the previous certificate stays in use",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(served_cert(&d, &trust).await, first.der);

    // The new pair (key first, then the certificate, as a renewal writes).
    write(dir.path(), "key.pem", &second.key_pem);
    write(dir.path(), "cert.pem", &second.cert_pem);
    d.wait_log("TLS certificate reloaded", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(served_cert(&d, &trust).await, second.der);
    // The connection made before the rotation is untouched.
    assert_eq!(
        open.request("h", "health", json!({})).await.unwrap()["ok"],
        true
    );
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    assert!(std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success());
}

/// A TLS file that is a pipe or far too large is refused by name, at start
/// and at a reload, instead of being waited on (a pipe nobody writes) or
/// read whole; at a reload the running certificate stays in use.
#[tokio::test]
async fn a_tls_file_that_is_a_pipe_or_too_large_is_refused_not_waited_on() {
    let ca = Ca::new("server");
    let leaf = ca.sign("localhost");
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &leaf.cert_pem);
    let key = write(dir.path(), "key.pem", &leaf.key_pem);
    let fifo = dir.path().join("key.fifo");
    mkfifo(&fifo);
    let config = |key: &Path| {
        format!(
            "[gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    // At start: a pipe, then a 5 MiB file.
    let (code, err) = Daemon::builder()
        .config(&config(&fifo))
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("gateway.tls.key") && err.contains("is not a regular file"),
        "{err}"
    );
    let big = dir.path().join("big.pem");
    std::fs::write(&big, "x".repeat(5 << 20)).unwrap();
    let (code, err) = Daemon::builder()
        .config(&config(&big))
        .run_expect_exit()
        .unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("is larger than 4 MiB"), "{err}");

    // At a reload: the certificate file becomes a pipe.
    let d = Daemon::builder().config(&config(&key)).start().unwrap();
    let trust = [ca.der()];
    assert_eq!(served_cert(&d, &trust).await, leaf.der);
    mkfifo(&cert);
    let line = d
        .wait_log("not a regular file", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(line.contains("gateway.tls.cert"), "{line}");
    assert!(line.contains("previous certificate stays in use"), "{line}");
    assert_eq!(served_cert(&d, &trust).await, leaf.der);
    // And SIGHUP's forced re-read does not hang on it either: it reports.
    d.signal("HUP");
    let t0 = std::time::Instant::now();
    while !d
        .log_text()
        .lines()
        .any(|l| l.contains("SIGHUP") && l.contains("not a regular file"))
    {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = wss_connect(&d, client_config(&trust, None)).await.unwrap();
    assert_eq!(
        c.request("h", "health", json!({})).await.unwrap()["ok"],
        true
    );
}
